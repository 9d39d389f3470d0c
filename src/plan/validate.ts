/**
 * Turns a raw plan (the value a YAML or JSON file parses to) into a ClusterPlan. It collects
 * every problem instead of stopping at the first, so one `trellis plan check` shows them all.
 */
import {
  familyBits, familyName, formatPrefix, parsePrefix, prefixesOverlap, prefixSize, specialRanges, type Family, type IpPrefix, type SpecialUse,
} from "../net/ip.js";
import type { ClusterPlan, NodePortRange } from "./plan.js";

export interface PlanValidation {
  readonly plan?: ClusterPlan;
  readonly problems: string[];
}

/** kube-controller-manager's defaults for --node-cidr-mask-size-ipv4 and -ipv6. */
export const defaultNodeMaskSize: Readonly<Record<Family, number>> = Object.freeze({ 4: 24, 6: 64 });
/** kube-apiserver's default --service-node-port-range. */
export const defaultNodePortRange: NodePortRange = Object.freeze({ first: 30000, last: 32767 });

type RangeKind = "pod" | "service" | "node";

interface CidrListSpec {
  readonly key: "podCidrs" | "serviceCidrs" | "nodeCidrs";
  readonly kind: RangeKind;
  readonly required: boolean;
  readonly example: readonly [string, string];
}

interface CidrList {
  readonly cidrs: readonly IpPrefix[];
  /** Well-formed and every entry parsed: checks across lists are only meaningful then. */
  readonly complete: boolean;
}

/** A mask the file gave: a number when usable, undefined when it was already reported. */
type GivenMasks = ReadonlyMap<Family, number | undefined>;

const planKeys = ["podCidrs", "serviceCidrs", "nodeCidrs", "nodeMaskSize", "nodePortRange"] as const;
const maskKeys = ["ipv4", "ipv6"] as const;
const families: readonly Family[] = [4, 6];

const listSpecs: readonly CidrListSpec[] = [
  { key: "podCidrs", kind: "pod", required: true, example: ["10.244.0.0/16", "fd00:10:244::/56"] },
  { key: "serviceCidrs", kind: "service", required: true, example: ["10.96.0.0/16", "fd00:10:96::/112"] },
  { key: "nodeCidrs", kind: "node", required: false, example: ["198.18.0.0/15", "fd00:198:18::/64"] },
];

// Flag and field names from Kubernetes and other plugins that people carry over by habit.
const keyAliases: Readonly<Record<string, string>> = {
  clustercidr: "podCidrs",
  clustercidrs: "podCidrs",
  podsubnet: "podCidrs",
  serviceclusteriprange: "serviceCidrs",
  servicesubnet: "serviceCidrs",
  nodecidrmasksize: "nodeMaskSize",
  servicenodeportrange: "nodePortRange",
};

const specialUseNames: Readonly<Record<SpecialUse, string>> = {
  "this-network": "the \"this network\" range",
  unspecified: "the unspecified address",
  loopback: "the loopback range",
  "IPv4-mapped": "the IPv4-mapped range",
  "link-local": "the link-local range",
  multicast: "the multicast range",
};

const specialUseReasons: Readonly<Record<SpecialUse, string>> = {
  "this-network": "its addresses stand for the sender's own network (RFC 1122) and are never a destination",
  unspecified: "it means \"no address\" and is never a destination",
  loopback: "loopback addresses never leave their host",
  "IPv4-mapped": "IPv4-mapped addresses stand for IPv4 peers on IPv6 sockets and never travel as IPv6 packets",
  "link-local": "link-local addresses are valid on one link only and are never routed between nodes",
  multicast: "multicast addresses name groups of receivers, never one pod, Service or node",
};

// Kubernetes' legacy ClusterIP allocator keeps one bit per address; it caps the range at 2^20.
const maxServiceHostBits = 20;
const minServiceHostBits = 3;
// kube-controller-manager keeps one bit per node block; it caps an IPv6 split at 2^16 blocks.
const maxIpv6NodeSplitBits = 16;

export function validatePlan(raw: unknown): PlanValidation {
  if (raw === undefined || raw === null) {
    return { problems: ["the cluster plan is empty: it needs at least podCidrs and serviceCidrs"] };
  }
  if (!isMapping(raw)) {
    return { problems: [`a cluster plan must be a mapping with the keys ${planKeys.join(", ")}, got ${describeValue(raw)}`] };
  }
  const problems: string[] = [];
  for (const key of Object.keys(raw)) {
    if (!(planKeys as readonly string[]).includes(key)) problems.push(unknownKeyProblem(key, "", planKeys));
  }
  const [pods, services, nodes] = listSpecs.map((spec) => readCidrList(raw[spec.key], spec, problems));
  const masks = readNodeMaskSize(raw.nodeMaskSize, problems);
  const nodePortRange = readNodePortRange(raw.nodePortRange, problems);

  const ranges = listSpecs.flatMap((spec, index) => [pods, services, nodes][index].cidrs.map((cidr) => ({ kind: spec.kind, cidr })));
  for (const { kind, cidr } of ranges) checkSpecialRanges(kind, cidr, problems);
  checkOverlaps(ranges, problems);
  for (const cidr of services.cidrs) checkServiceSize(cidr, problems);
  if (pods.complete && services.complete) checkFamilies(pods.cidrs, services.cidrs, problems);
  checkNodeMasks(pods, masks, problems);

  if (problems.length > 0 || !nodePortRange) return { problems };
  const nodeMaskSize = Object.freeze({ 4: masks.get(4) ?? defaultNodeMaskSize[4], 6: masks.get(6) ?? defaultNodeMaskSize[6] });
  const plan: ClusterPlan = Object.freeze({
    podCidrs: Object.freeze([...pods.cidrs]),
    serviceCidrs: Object.freeze([...services.cidrs]),
    nodeCidrs: Object.freeze([...nodes.cidrs]),
    nodeMaskSize,
    nodePortRange,
  });
  return { plan, problems };
}

function readCidrList(value: unknown, spec: CidrListSpec, problems: string[]): CidrList {
  const count = spec.required
    ? "1 CIDR for a single-stack cluster or 2 (one IPv4, one IPv6) for dual-stack"
    : "at most 2 CIDRs, one per family";
  const example = JSON.stringify(spec.example).replace(",", ", ");
  if (value === undefined) {
    if (spec.required) problems.push(`${spec.key} is missing: give ${count}, such as ${example}`);
    return { cidrs: [], complete: !spec.required };
  }
  if (!Array.isArray(value)) {
    problems.push(`${spec.key} must be a list of CIDRs such as ${example}, got ${describeValue(value)}`);
    return { cidrs: [], complete: false };
  }
  if (value.length === 0 && spec.required) {
    problems.push(`${spec.key} is empty: give ${count}`);
    return { cidrs: [], complete: false };
  }
  if (value.length > 2) {
    const entries = value.map((entry) => (typeof entry === "string" ? entry : JSON.stringify(entry))).join(", ");
    problems.push(`${spec.key} has ${value.length} CIDRs (${entries}): at most 2 are allowed, one IPv4 and one IPv6`);
  }
  const cidrs: IpPrefix[] = [];
  value.forEach((entry: unknown, index) => {
    const where = `${spec.key}[${index}]`;
    if (typeof entry !== "string") {
      problems.push(`${where} must be a CIDR string such as "${spec.example[0]}", got ${describeValue(entry)}`);
      return;
    }
    try {
      cidrs.push(parsePrefix(entry));
    } catch (error) {
      problems.push(`${where}: ${error instanceof Error ? error.message : String(error)}`);
    }
  });
  // With more than 2 entries a family repeats for sure; the count problem already says so.
  if (value.length <= 2) {
    for (const family of families) {
      const same = cidrs.filter((cidr) => cidr.family === family);
      if (same.length > 1) {
        problems.push(
          `${spec.key} has two ${familyName(family)} CIDRs (${same.map(formatPrefix).join(", ")}): a list takes at most one CIDR per family`,
        );
      }
    }
  }
  return { cidrs, complete: value.length <= 2 && cidrs.length === value.length };
}

function readNodeMaskSize(value: unknown, problems: string[]): GivenMasks {
  const masks = new Map<Family, number | undefined>();
  if (value === undefined) return masks;
  if (!isMapping(value)) {
    problems.push(`nodeMaskSize must be a mapping such as {ipv4: 24, ipv6: 64}, got ${describeValue(value)}`);
    return masks;
  }
  for (const key of Object.keys(value)) {
    if (!(maskKeys as readonly string[]).includes(key)) problems.push(unknownKeyProblem(key, "nodeMaskSize ", maskKeys));
  }
  for (const family of families) {
    const key = maskKey(family);
    const mask = value[key];
    if (mask === undefined) continue;
    const bits = familyBits(family);
    masks.set(family, undefined);
    if (typeof mask !== "number" || !Number.isInteger(mask) || mask < 0 || mask > bits) {
      problems.push(`nodeMaskSize.${key} must be a prefix length from 0 to ${bits}, got ${describeValue(mask)}`);
    } else if (mask > bits - 2) {
      const reserved = family === 4 ? "network, broadcast and gateway addresses" : "network and gateway addresses";
      problems.push(`nodeMaskSize.${key} is ${mask}: a /${mask} node block has no address left for a pod after the ${reserved}; use ${bits - 2} or less`);
    } else {
      masks.set(family, mask);
    }
  }
  return masks;
}

function readNodePortRange(value: unknown, problems: string[]): NodePortRange | undefined {
  if (value === undefined) return defaultNodePortRange;
  if (typeof value !== "string") {
    problems.push(`nodePortRange must be a string "FIRST-LAST" such as "30000-32767", got ${describeValue(value)}`);
    return undefined;
  }
  const match = /^([0-9]+)-([0-9]+)$/.exec(value);
  if (!match) {
    problems.push(`nodePortRange "${value}" is not FIRST-LAST: expected two port numbers joined by "-", such as "30000-32767"`);
    return undefined;
  }
  const first = Number(match[1]);
  const last = Number(match[2]);
  const outside = [first, last].filter((port) => port < 1 || port > 65535);
  if (outside.length > 0) {
    problems.push(`nodePortRange "${value}" has port${outside.length > 1 ? "s" : ""} ${outside.join(" and ")}: ports go from 1 to 65535`);
    return undefined;
  }
  if (first > last) {
    problems.push(`nodePortRange "${value}" is reversed: the first port must not exceed the last; did you mean "${last}-${first}"?`);
    return undefined;
  }
  return Object.freeze({ first, last });
}

function checkSpecialRanges(kind: RangeKind, cidr: IpPrefix, problems: string[]): void {
  if (cidr.length === 0) {
    problems.push(
      `${kind} CIDR ${formatPrefix(cidr)} is the whole ${familyName(cidr.family)} address space: a cluster range must leave every other network reachable`,
    );
    return;
  }
  for (const special of specialRanges(cidr.family)) {
    if (prefixesOverlap(cidr, special.prefix)) {
      problems.push(
        `${kind} CIDR ${formatPrefix(cidr)} overlaps ${specialUseNames[special.use]} ${formatPrefix(special.prefix)}: ${specialUseReasons[special.use]}`,
      );
    }
  }
}

function checkOverlaps(ranges: ReadonlyArray<{ kind: RangeKind; cidr: IpPrefix }>, problems: string[]): void {
  ranges.forEach((a, i) => {
    for (const b of ranges.slice(i + 1)) {
      // Within one list only one CIDR per family is allowed, which readCidrList reports.
      if (a.kind !== b.kind && prefixesOverlap(a.cidr, b.cidr)) {
        problems.push(`${a.kind} CIDR ${formatPrefix(a.cidr)} overlaps ${b.kind} CIDR ${formatPrefix(b.cidr)}`);
      }
    }
  });
}

function checkServiceSize(cidr: IpPrefix, problems: string[]): void {
  const bits = familyBits(cidr.family);
  const hostBits = bits - cidr.length;
  if (hostBits < minServiceHostBits) {
    problems.push(
      `service CIDR ${formatPrefix(cidr)} is too small: it has ${prefixSize(cidr)} addresses and a service range needs at least 8 (/${bits - minServiceHostBits} or shorter)`,
    );
  } else if (hostBits > maxServiceHostBits) {
    problems.push(
      `service CIDR ${formatPrefix(cidr)} is too large: for ${familyName(cidr.family)} the mask must be /${bits - maxServiceHostBits} or longer (at most 2^${maxServiceHostBits} addresses), as kube-apiserver requires`,
    );
  }
}

function checkFamilies(pods: readonly IpPrefix[], services: readonly IpPrefix[], problems: string[]): void {
  const [pod, service] = [pods[0], services[0]];
  if (pod.family !== service.family) {
    problems.push(
      `primary families differ: podCidrs starts with ${familyName(pod.family)} ${formatPrefix(pod)} but serviceCidrs starts with ${familyName(service.family)} ${formatPrefix(service)}; the first CIDR of each list sets the cluster's primary family, so both lists must start with the same family`,
    );
  }
  for (const cidr of services) {
    if (pods.some((p) => p.family === cidr.family)) continue;
    const name = familyName(cidr.family);
    problems.push(
      `service CIDR ${formatPrefix(cidr)} is ${name} but podCidrs has no ${name} CIDR: an ${name} ClusterIP can only forward to ${name} pod IPs, so add an ${name} pod CIDR or remove this service CIDR`,
    );
  }
}

function checkNodeMasks(pods: CidrList, masks: GivenMasks, problems: string[]): void {
  for (const family of families) {
    if (pods.complete && masks.has(family) && !pods.cidrs.some((pod) => pod.family === family)) {
      const name = familyName(family);
      problems.push(`nodeMaskSize.${maskKey(family)} is set but podCidrs has no ${name} CIDR: remove nodeMaskSize.${maskKey(family)} or add an ${name} pod CIDR`);
    }
  }
  for (const pod of pods.cidrs) {
    const bits = familyBits(pod.family);
    const key = maskKey(pod.family);
    if (pod.length > bits - 2) {
      problems.push(`pod CIDR ${formatPrefix(pod)} is too small: it has ${prefixSize(pod)} addresses and a node block needs /${bits - 2} or shorter to hold a pod`);
      continue;
    }
    const given = masks.has(pod.family);
    const mask = given ? masks.get(pod.family) : defaultNodeMaskSize[pod.family];
    if (mask === undefined) continue;
    const label = `nodeMaskSize.${key} is ${mask}${given ? "" : " (the default)"}`;
    const longest = pod.family === 6 ? Math.min(pod.length + maxIpv6NodeSplitBits, bits - 2) : bits - 2;
    const allowed = `so set nodeMaskSize.${key} from ${pod.length} to ${longest}`;
    if (mask < pod.length) {
      problems.push(`${label}, shorter than pod CIDR ${formatPrefix(pod)}: each node's block must fit inside the cluster CIDR, ${allowed}`);
    } else if (mask > longest) {
      problems.push(
        `${label}, ${mask - pod.length} bits longer than pod CIDR ${formatPrefix(pod)}: an IPv6 cluster CIDR splits into at most 2^${maxIpv6NodeSplitBits} node blocks, ${allowed}`,
      );
    }
  }
}

function maskKey(family: Family): (typeof maskKeys)[number] {
  return family === 4 ? "ipv4" : "ipv6";
}

function unknownKeyProblem(key: string, where: string, allowed: readonly string[]): string {
  const suggestion = suggestKey(key, allowed);
  const hint = suggestion ? ` (did you mean ${suggestion}?)` : "";
  return `unknown ${where}key "${key}"${hint}: allowed keys are ${allowed.join(", ")}`;
}

function suggestKey(key: string, allowed: readonly string[]): string | undefined {
  const wanted = normalizeKey(key);
  const alias = keyAliases[wanted];
  if (alias && allowed.includes(alias)) return alias;
  let best: { key: string; distance: number } | undefined;
  for (const candidate of allowed) {
    const normal = normalizeKey(candidate);
    const distance = normal.startsWith(wanted) && wanted.length >= 4 ? 1 : editDistance(wanted, normal);
    if (distance <= 2 && (!best || distance < best.distance)) best = { key: candidate, distance };
  }
  return best?.key;
}

function normalizeKey(key: string): string {
  return key.toLowerCase().replace(/[^a-z0-9]/g, "");
}

function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      current[j] = Math.min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    previous = current;
  }
  return previous[b.length];
}

function isMapping(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function describeValue(value: unknown): string {
  if (value === undefined || value === null) return "no value";
  if (typeof value === "string") return `the string ${JSON.stringify(value)}`;
  if (typeof value === "number" || typeof value === "bigint") return `the number ${value}`;
  if (typeof value === "boolean") return `the value ${value}`;
  if (Array.isArray(value)) return `a list of ${value.length} ${value.length === 1 ? "entry" : "entries"}`;
  return "a mapping";
}
