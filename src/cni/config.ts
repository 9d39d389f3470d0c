/**
 * The network configuration a runtime passes on stdin, validated into what the verbs use.
 * Every problem is an error that names the field, the bad value and what is allowed.
 */
import type { HostPortMapping } from "../dataplane/hostports.js";
import type { PodRoute } from "../dataplane/pod-attachment.js";
import {
  familyBits, formatIp, formatPrefix, nthAddress, prefixContains, tryParseInterfaceAddress, tryParseIp, type IpAddress, type IpPrefix,
} from "../net/ip.js";
import type { PodIpRange, PodIpRangeSet } from "../podipam/pod-ips.js";
import { DEFAULT_STATE_DIR } from "../podipam/state.js";
import { interfaceNameProblem } from "./env.js";
import { CniCode, CniError } from "../podnet/errors.js";
import { isObject, parseResult, type CniDns, type CniResult } from "./result.js";
import { compareVersions, requireSupportedVersion } from "./version.js";

export const DEFAULT_BRIDGE = "trellis0";

export interface BuiltinIpam {
  readonly kind: "builtin";
  readonly ranges: readonly PodIpRangeSet[];
  readonly routes: readonly PodRoute[];
  readonly dataDir: string;
}

export interface DelegatedIpam {
  readonly kind: "delegated";
  readonly type: string;
}

export interface AttachmentRef {
  readonly containerId: string;
  readonly ifname: string;
}

export interface NetConf {
  readonly cniVersion: string;
  readonly name: string;
  readonly bridge: string;
  readonly mtu?: number;
  readonly hairpinMode: boolean;
  readonly ipMasq: boolean;
  /** Destinations that keep a pod's own address under ipMasq (the cluster's pod and Service CIDRs). */
  readonly nonMasqueradeCidrs: readonly IpPrefix[];
  readonly isDefaultGateway: boolean;
  readonly ipam: BuiltinIpam | DelegatedIpam;
  readonly dns?: CniDns;
  /** Where the node state database lives, and the key that said so. */
  readonly stateDir: string;
  readonly stateField: "ipam.dataDir" | "dataDir";
  readonly requestedIps: readonly IpAddress[];
  readonly mac?: string;
  /** `runtimeConfig.portMappings` (the portMappings capability): hostPorts to DNAT to the pod. */
  readonly portMappings: readonly HostPortMapping[];
  readonly prevResult?: CniResult;
  /** GC's `cni.dev/valid-attachments` (or `cni.dev/attachments`). */
  readonly validAttachments?: readonly AttachmentRef[];
  /** The agent socket a native plugin forwards to: set in configs the agent writes. */
  readonly agentSocket?: string;
  /** The config as received, forwarded unchanged to a delegated IPAM plugin. */
  readonly raw: Record<string, unknown>;
}

const NETWORK_NAME = /^[A-Za-z0-9][A-Za-z0-9_.\-]*$/;
/** Network names become nftables chain names and interface aliases, both limited to 255 bytes. */
const MAX_NETWORK_NAME = 200;
const MAC = /^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$/;

/** Parses stdin. `cniArgs` is the parsed CNI_ARGS (for `IP=` and `MAC=`). */
export function parseNetConf(stdin: string, cniArgs: ReadonlyMap<string, string>): NetConf {
  let raw: unknown;
  try {
    raw = JSON.parse(stdin);
  } catch (error) {
    throw new CniError(CniCode.decodeFailure, `network configuration on stdin is not valid JSON: ${(error as Error).message}`);
  }
  if (!isObject(raw)) throw new CniError(CniCode.decodeFailure, "network configuration on stdin is not a JSON object");
  const cniVersion = requireSupportedVersion(raw.cniVersion);
  const name = raw.name;
  if (typeof name !== "string" || !NETWORK_NAME.test(name)) {
    throw invalid(`name ${JSON.stringify(name)} is invalid: it must start with a letter or digit and hold only letters, digits, "_", "." and "-"`);
  }
  if (name.length > MAX_NETWORK_NAME) throw invalid(`name is ${name.length} characters long; at most ${MAX_NETWORK_NAME} are allowed`);
  const bridge = optional(raw, "bridge", "string", DEFAULT_BRIDGE);
  const bridgeProblem = interfaceNameProblem(bridge);
  if (bridgeProblem) throw invalid(`bridge ${JSON.stringify(bridge)} is not a usable interface name: ${bridgeProblem}`);
  if (/^trv[0-9a-f]{12}$/.test(bridge)) throw invalid(`bridge ${JSON.stringify(bridge)} has the form of a pod's host veth name (trv + 12 hex digits); choose another name`);
  const mtu = raw.mtu === undefined ? undefined : raw.mtu;
  if (mtu !== undefined && (!Number.isInteger(mtu) || (mtu as number) < 68 || (mtu as number) > 65535)) {
    throw invalid(`mtu ${JSON.stringify(mtu)} is invalid: expected an integer from 68 to 65535`);
  }
  const runtimeConfig = objectField(raw, "runtimeConfig");
  const args = objectField(objectField(raw, "args"), "cni", "args.cni");
  const ipam = parseIpam(raw, runtimeConfig);
  if (mtu !== undefined && (mtu as number) < 1280 && ipam.kind === "builtin" && ipam.ranges.some((set) => set[0].subnet.family === 6)) {
    throw invalid(`mtu ${mtu} is too small for the IPv6 range ${formatPrefix(ipam.ranges.find((set) => set[0].subnet.family === 6)![0].subnet)}: a network with IPv6 needs an mtu of at least 1280`);
  }
  const stateDir = ipam.kind === "builtin" ? ipam.dataDir : optional(raw, "dataDir", "string", DEFAULT_STATE_DIR);
  return {
    cniVersion,
    name,
    bridge,
    mtu: mtu as number | undefined,
    hairpinMode: optional(raw, "hairpinMode", "boolean", false),
    ipMasq: optional(raw, "ipMasq", "boolean", false),
    nonMasqueradeCidrs: parseCidrList(raw.nonMasqueradeCidrs, "nonMasqueradeCidrs"),
    isDefaultGateway: optional(raw, "isDefaultGateway", "boolean", true),
    ipam,
    dns: parseDns(raw.dns),
    stateDir,
    stateField: ipam.kind === "builtin" ? "ipam.dataDir" : "dataDir",
    requestedIps: requestedIps(runtimeConfig, args, cniArgs),
    mac: requestedMac(runtimeConfig, args, cniArgs),
    portMappings: parsePortMappings(runtimeConfig.portMappings),
    prevResult: raw.prevResult === undefined ? undefined : parseResult(raw.prevResult, "prevResult"),
    validAttachments: parseValidAttachments(raw),
    agentSocket: parseAgentSocket(raw.agentSocket),
    raw,
  };
}

function parseIpam(raw: Record<string, unknown>, runtimeConfig: Record<string, unknown>): BuiltinIpam | DelegatedIpam {
  if (raw.ipam === undefined) throw invalid('ipam is missing: give "ipam": {"ranges": [[{"subnet": "10.244.1.0/24"}]]}');
  if (!isObject(raw.ipam)) throw invalid(`ipam ${JSON.stringify(raw.ipam)} is not an object`);
  const ipam = raw.ipam;
  const type = ipam.type ?? "trellis";
  if (typeof type !== "string" || type === "") throw invalid(`ipam.type ${JSON.stringify(ipam.type)} is not a plugin name`);
  if (type !== "trellis") {
    if (!NETWORK_NAME.test(type)) throw invalid(`ipam.type ${JSON.stringify(type)} is not a plugin name`);
    return { kind: "delegated", type };
  }
  const sets: unknown[] = [];
  if (runtimeConfig.ipRanges !== undefined) {
    if (!Array.isArray(runtimeConfig.ipRanges)) throw invalid("runtimeConfig.ipRanges is not a list of range sets");
    sets.push(...runtimeConfig.ipRanges);
  }
  if (ipam.subnet !== undefined) sets.push([pickRange(ipam)]);
  if (ipam.ranges !== undefined) {
    if (!Array.isArray(ipam.ranges)) throw invalid('ipam.ranges is not a list of range sets, e.g. [[{"subnet": "10.244.1.0/24"}]]');
    sets.push(...ipam.ranges);
  }
  if (sets.length === 0) throw invalid('ipam.ranges is empty: give at least one range set, e.g. [[{"subnet": "10.244.1.0/24"}]]');
  const ranges = sets.map((set, index) => parseRangeSet(set, `ipam.ranges[${index}]`));
  const all = ranges.flat();
  for (let i = 0; i < all.length; i++) {
    for (let j = i + 1; j < all.length; j++) {
      if (all[i].subnet.family === all[j].subnet.family && all[i].start.value <= all[j].end.value && all[j].start.value <= all[i].end.value) {
        throw invalid(`ipam range ${formatIp(all[i].start)}-${formatIp(all[i].end)} overlaps ${formatIp(all[j].start)}-${formatIp(all[j].end)}`);
      }
    }
  }
  return {
    kind: "builtin",
    ranges,
    routes: parseRoutes(ipam.routes),
    dataDir: optional(ipam, "dataDir", "string", DEFAULT_STATE_DIR, "ipam.dataDir"),
  };
}

function pickRange(source: Record<string, unknown>): Record<string, unknown> {
  const { subnet, rangeStart, rangeEnd, gateway } = source;
  return { subnet, rangeStart, rangeEnd, gateway };
}

function parseRangeSet(set: unknown, where: string): PodIpRangeSet {
  if (!Array.isArray(set) || set.length === 0) throw invalid(`${where} must be a non-empty list of ranges, e.g. [{"subnet": "10.244.1.0/24"}]`);
  const ranges = set.map((range, index) => parseRange(range, `${where}[${index}]`));
  const family = ranges[0].subnet.family;
  const other = ranges.find((range) => range.subnet.family !== family);
  if (other) throw invalid(`${where} mixes IPv4 and IPv6 (${formatPrefix(ranges[0].subnet)} and ${formatPrefix(other.subnet)}); use one range set per family`);
  return ranges;
}

function parseRange(range: unknown, where: string): PodIpRange {
  if (!isObject(range)) throw invalid(`${where} is not an object with a subnet`);
  if (typeof range.subnet !== "string") throw invalid(`${where}.subnet is missing: give a CIDR such as 10.244.1.0/24`);
  const parsed = tryParseInterfaceAddress(range.subnet);
  if (!parsed) throw invalid(`${where}.subnet ${JSON.stringify(range.subnet)} is not a CIDR such as 10.244.1.0/24 or fd00:10:244:1::/64`);
  const subnet = parsed.prefix;
  if (parsed.address.value !== subnet.network) {
    throw invalid(`${where}.subnet ${range.subnet} has host bits set: did you mean ${formatPrefix(subnet)}?`);
  }
  const bits = familyBits(subnet.family);
  if (subnet.length > bits - 2) {
    throw invalid(`${where}.subnet ${range.subnet} is too small: the prefix length must be at most /${bits - 2} to hold a gateway and a pod`);
  }
  const lastUsable = subnet.family === 4 ? nthAddress(subnet, -2n) : nthAddress(subnet, -1n);
  const firstUsable = nthAddress(subnet, 1n);
  const address = (key: string, fallback: IpAddress): IpAddress => {
    const value = range[key];
    if (value === undefined) return fallback;
    const ip = typeof value === "string" ? tryParseIp(value) : undefined;
    if (!ip) throw invalid(`${where}.${key} ${JSON.stringify(value)} is not an IP address`);
    if (!prefixContains(subnet, ip)) throw invalid(`${where}.${key} ${value} is outside subnet ${formatPrefix(subnet)}`);
    if (ip.value < firstUsable.value || ip.value > lastUsable.value) {
      throw invalid(`${where}.${key} ${value} is not a usable address of ${formatPrefix(subnet)}: allowed ${formatIp(firstUsable)}-${formatIp(lastUsable)}`);
    }
    return ip;
  };
  const start = address("rangeStart", firstUsable);
  const end = address("rangeEnd", lastUsable);
  const gateway = address("gateway", firstUsable);
  if (start.value > end.value) throw invalid(`${where}.rangeStart ${formatIp(start)} is after rangeEnd ${formatIp(end)}`);
  if (start.value === end.value && start.value === gateway.value) {
    throw invalid(`${where} holds only its gateway ${formatIp(gateway)}: no address is left for pods`);
  }
  return { subnet, start, end, gateway };
}

function parseRoutes(routes: unknown): PodRoute[] {
  if (routes === undefined) return [];
  if (!Array.isArray(routes)) throw invalid('ipam.routes is not a list such as [{"dst": "0.0.0.0/0"}]');
  return routes.map((route, index) => {
    if (!isObject(route) || typeof route.dst !== "string" || !tryParseInterfaceAddress(route.dst)) {
      throw invalid(`ipam.routes[${index}].dst ${JSON.stringify(isObject(route) ? route.dst : route)} is not a CIDR`);
    }
    const dst = tryParseInterfaceAddress(route.dst)!;
    if (route.gw !== undefined) {
      const gw = typeof route.gw === "string" ? tryParseIp(route.gw) : undefined;
      if (!gw) throw invalid(`ipam.routes[${index}].gw ${JSON.stringify(route.gw)} is not an IP address`);
      if (gw.family !== dst.prefix.family) throw invalid(`ipam.routes[${index}].gw ${route.gw} is not of the same family as dst ${route.dst}`);
      return { dst: dst.prefix, gateway: gw };
    }
    return { dst: dst.prefix };
  });
}

/** A list of canonical CIDRs such as ["10.244.0.0/16", "10.96.0.0/16"]. */
function parseCidrList(value: unknown, where: string): IpPrefix[] {
  if (value === undefined) return [];
  if (!Array.isArray(value)) throw invalid(`${where} ${JSON.stringify(value)} is not a list of CIDRs such as ["10.244.0.0/16", "10.96.0.0/16"]`);
  return value.map((item, index) => {
    const parsed = typeof item === "string" ? tryParseInterfaceAddress(item) : undefined;
    if (!parsed) throw invalid(`${where}[${index}] ${JSON.stringify(item)} is not a CIDR such as 10.244.0.0/16`);
    if (parsed.address.value !== parsed.prefix.network) throw invalid(`${where}[${index}] ${item} has host bits set: did you mean ${formatPrefix(parsed.prefix)}?`);
    return parsed.prefix;
  });
}

function parseDns(dns: unknown): CniDns | undefined {
  if (dns === undefined) return undefined;
  if (!isObject(dns)) throw invalid(`dns ${JSON.stringify(dns)} is not an object`);
  for (const key of ["nameservers", "search", "options"]) {
    const value = dns[key];
    if (value !== undefined && (!Array.isArray(value) || value.some((item) => typeof item !== "string"))) {
      throw invalid(`dns.${key} ${JSON.stringify(value)} is not a list of strings`);
    }
  }
  if (dns.domain !== undefined && typeof dns.domain !== "string") throw invalid(`dns.domain ${JSON.stringify(dns.domain)} is not a string`);
  return dns as CniDns;
}

function requestedIps(runtimeConfig: Record<string, unknown>, args: Record<string, unknown>, cniArgs: ReadonlyMap<string, string>): IpAddress[] {
  const sources: Array<[string, unknown[]]> = [];
  const list = (value: unknown, where: string): unknown[] => {
    if (value === undefined) return [];
    if (!Array.isArray(value)) throw invalid(`${where} ${JSON.stringify(value)} is not a list of IP addresses`);
    return value;
  };
  sources.push(["runtimeConfig.ips", list(runtimeConfig.ips, "runtimeConfig.ips")]);
  sources.push(["args.cni.ips", list(args.ips, "args.cni.ips")]);
  const fromEnv = cniArgs.get("IP");
  if (fromEnv !== undefined) sources.push(["CNI_ARGS IP", fromEnv.split(",")]);
  const seen = new Map<string, IpAddress>();
  for (const [where, values] of sources) {
    for (const value of values) {
      const text = typeof value === "string" ? value : "";
      const ip = tryParseIp(text) ?? tryParseInterfaceAddress(text)?.address;
      if (!ip) throw invalid(`${where} entry ${JSON.stringify(value)} is not an IP address`);
      seen.set(formatIp(ip), ip);
    }
  }
  return [...seen.values()];
}

function requestedMac(runtimeConfig: Record<string, unknown>, args: Record<string, unknown>, cniArgs: ReadonlyMap<string, string>): string | undefined {
  const candidates: Array<[string, unknown]> = [
    ["runtimeConfig.mac", runtimeConfig.mac],
    ["args.cni.mac", args.mac],
    ["CNI_ARGS MAC", cniArgs.get("MAC")],
  ];
  for (const [where, value] of candidates) {
    if (value === undefined) continue;
    if (typeof value !== "string" || !MAC.test(value)) throw invalid(`${where} ${JSON.stringify(value)} is not a MAC address such as 0a:58:0a:f4:01:05`);
    if (parseInt(value.slice(0, 2), 16) & 1) throw invalid(`${where} ${value} is a multicast MAC address; a unicast address is required`);
    return value.toLowerCase();
  }
  return undefined;
}

/** At most this many port mappings per pod: far above any real pod, and a bound on the rules one ADD writes. */
const MAX_PORT_MAPPINGS = 1024;

/**
 * A field of a runtime's object as Go's encoding/json finds it: by its exact name, else by the
 * one key equal to it but for case. containerd 1.6 (go-cni) sends port mappings with Go's field
 * names (`HostPort`, `ContainerPort`, `Protocol`, `HostIP`), and the reference plugins, in Go,
 * read them so. Two keys differing only in case leave the field ambiguous (Go would take the
 * last), and are refused.
 */
function goField(item: Record<string, unknown>, key: string, where: string): unknown {
  const matches = Object.keys(item).filter((candidate) => candidate.toLowerCase() === key.toLowerCase());
  if (matches.length > 1) throw invalid(`${where} has ${matches.map((match) => JSON.stringify(match)).join(" and ")}: give ${key} once`);
  return matches.length === 1 ? item[matches[0]] : undefined;
}

function parsePortMappings(value: unknown): HostPortMapping[] {
  if (value === undefined || value === null) return [];
  if (!Array.isArray(value)) throw invalid("runtimeConfig.portMappings is not a list of {hostPort, containerPort, protocol, hostIP} objects");
  if (value.length > MAX_PORT_MAPPINGS) throw invalid(`runtimeConfig.portMappings has ${value.length} entries; at most ${MAX_PORT_MAPPINGS} are allowed`);
  return value.map((item, index) => {
    const where = `runtimeConfig.portMappings[${index}]`;
    if (!isObject(item)) throw invalid(`${where} is not an object with hostPort, containerPort, protocol and hostIP`);
    const port = (key: "hostPort" | "containerPort") => {
      const number = goField(item, key, where);
      if (!Number.isInteger(number) || (number as number) < 1 || (number as number) > 65535) throw invalid(`${where}.${key} ${JSON.stringify(number)} is invalid: expected an integer from 1 to 65535`);
      return number as number;
    };
    const protocolValue = goField(item, "protocol", where);
    const protocolText = protocolValue === undefined || protocolValue === "" ? "tcp" : protocolValue;
    const protocol = typeof protocolText === "string" ? protocolText.toLowerCase() : "";
    if (protocol !== "tcp" && protocol !== "udp" && protocol !== "sctp") throw invalid(`${where}.protocol ${JSON.stringify(protocolValue)} is invalid: expected tcp, udp or sctp`);
    const hostIpValue = goField(item, "hostIP", where);
    let hostIP: IpAddress | undefined;
    if (hostIpValue !== undefined && hostIpValue !== "" && hostIpValue !== "0.0.0.0" && hostIpValue !== "::") {
      hostIP = typeof hostIpValue === "string" ? tryParseIp(hostIpValue) : undefined;
      if (!hostIP) throw invalid(`${where}.hostIP ${JSON.stringify(hostIpValue)} is not an IP address (leave it out or give "" for every address of the node)`);
    }
    return { hostPort: port("hostPort"), containerPort: port("containerPort"), protocol, ...(hostIP ? { hostIP } : {}) };
  });
}

function parseValidAttachments(raw: Record<string, unknown>): AttachmentRef[] | undefined {
  const key = raw["cni.dev/valid-attachments"] !== undefined ? "cni.dev/valid-attachments" : "cni.dev/attachments";
  const value = raw[key];
  if (value === undefined) return undefined;
  if (!Array.isArray(value)) throw invalid(`${key} is not a list of {"containerID", "ifname"} objects`);
  return value.map((item, index) => {
    if (!isObject(item) || typeof item.containerID !== "string" || typeof item.ifname !== "string") {
      throw invalid(`${key}[${index}] ${JSON.stringify(item)} needs string fields containerID and ifname`);
    }
    return { containerId: item.containerID, ifname: item.ifname };
  });
}

function parseAgentSocket(value: unknown): string | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== "string" || !value.startsWith("/") || /[\0\n]/.test(value)) throw invalid(`agentSocket ${JSON.stringify(value)} is not an absolute path`);
  return value;
}

function objectField(source: Record<string, unknown>, key: string, where = key): Record<string, unknown> {
  const value = source[key];
  if (value === undefined || value === null) return {};
  if (!isObject(value)) throw invalid(`${where} ${JSON.stringify(value)} is not an object`);
  return value;
}

function optional<T extends string | boolean>(source: Record<string, unknown>, key: string, type: "string" | "boolean", fallback: T, where = key): T {
  const value = source[key];
  if (value === undefined) return fallback;
  if (typeof value !== type) throw invalid(`${where} ${JSON.stringify(value)} is not a ${type}`);
  return value as T;
}

function invalid(message: string): CniError {
  return new CniError(CniCode.invalidConfig, message);
}

/** True when the version has the CHECK verb (0.4.0 and later). */
export function versionHasCheck(version: string): boolean {
  return compareVersions(version, "0.4.0") >= 0;
}
