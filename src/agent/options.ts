/**
 * The agent's settings: flags, each also an environment variable, checked before anything is
 * opened or written so that bad input changes nothing.
 */
import { hostname } from "node:os";
import { isAbsolute } from "node:path";
import { checkNodeName } from "../cluster/node-cidrs.js";
import { ROUTING_MODES, type RoutingMode } from "../dataplane/node-network.js";
import { FLOW_EVENT_KINDS, type FlowEventKind } from "../dataplane/flow-events.js";
import { formatIp, formatPrefix, prefixesOverlap, tryParseInterfaceAddress, tryParseIp, type IpAddress, type IpPrefix } from "../net/ip.js";
import { parseStoreSpec } from "../store/open.js";
import { isValidLabelValue } from "../cluster/objects/syntax.js";
import { DEFAULT_STATE_DIR } from "../podipam/state.js";
import { LOG_LEVELS, type LogLevel } from "./log.js";

export interface AgentOptions {
  readonly nodeName: string;
  /**
   * With the Trellis store: the node's zone (its topology.kubernetes.io/zone), published for
   * trafficDistribution; with the Kubernetes API the Node's label says it.
   */
  readonly zone?: string;
  /** Empty: the addresses of the default route's interface. */
  readonly nodeIps: readonly IpAddress[];
  /** Where the cluster is kept: the Trellis store (`--store`), or the Kubernetes API. */
  readonly datastore: Datastore;
  readonly store: string;
  readonly plan?: string;
  /** With the Kubernetes API: a kubeconfig file; undefined: the pod's ServiceAccount (in-cluster). */
  readonly kubeconfig?: string;
  /** With the Kubernetes API: the cluster's pod CIDRs, one per family (the Trellis store has them in its plan). */
  readonly clusterCidrs: readonly IpPrefix[];
  readonly mode: RoutingMode;
  /** The underlay MTU; undefined: the underlay interface's. */
  readonly mtu?: number;
  readonly cniConfDir: string;
  /** The CNI plugin's state directory, written into the conflist. */
  readonly cniDataDir: string;
  /** Where the agent serves CNI calls for the native plugin; named in the conflist. */
  readonly cniSocket: string;
  readonly masquerade: boolean;
  readonly resyncSeconds: number;
  readonly heartbeatSeconds: number;
  /** A peer whose heartbeat has not changed for this long loses its routes. */
  readonly peerGraceSeconds: number;
  /** `debug` also logs every sync with its duration. */
  readonly logLevel: LogLevel;
  /** Whether the agent implements Services (its nftables proxy). */
  readonly proxy: boolean;
  /** The least time between two syncs of the Service rules; changes made meanwhile go together. */
  readonly proxySyncIntervalMs: number;
  /** Flow records the agent keeps (agent/flows.ts); 0: none, and no conntrack reader. */
  readonly flowBuffer: number;
  /** conntrack's events the flow records come from. */
  readonly flowEvents: readonly FlowEventKind[];
  /** Where /metrics, /healthz and /readyz are served; undefined: nowhere. */
  readonly metricsAddress?: { readonly host: string; readonly port: number };
  /** Where kube-proxy's /healthz and /livez are served for the proxy (kube-proxy's 10256); undefined: nowhere. */
  readonly proxyHealthzAddress?: { readonly host: string; readonly port: number };
  /** Where kube-proxy's /proxyMode is served (kube-proxy's 10249); undefined: nowhere. */
  readonly proxyStatusAddress?: { readonly host: string; readonly port: number };
  /** Where Services' external addresses (externalIPs, load-balancer ingress) may be; empty: nowhere. */
  readonly externalIpCidrs: readonly IpPrefix[];
}

/** Raw values as commander hands them over (flag, else environment variable, else default). */
export interface AgentFlags {
  nodeName?: string;
  zone?: string;
  nodeIp?: string;
  datastore: string;
  store: string;
  plan?: string;
  kubeconfig?: string;
  clusterCidr?: string;
  mode: string;
  mtu?: string;
  cniConfDir: string;
  cniDataDir: string;
  cniSocket: string;
  masquerade: boolean | string;
  resyncInterval: string;
  heartbeatInterval: string;
  peerGrace: string;
  logLevel: string;
  proxy: boolean | string;
  proxySyncInterval: string;
  flowBuffer: string;
  flowEvents: string;
  metricsBindAddress: string;
  proxyHealthzBindAddress: string;
  proxyStatusBindAddress: string;
  externalIpCidrs?: string;
}

export const DATASTORES = ["trellis", "kubernetes"] as const;
export type Datastore = (typeof DATASTORES)[number];

export const AGENT_DEFAULTS = {
  datastore: "trellis",
  cniConfDir: "/etc/cni/net.d",
  cniDataDir: DEFAULT_STATE_DIR,
  cniSocket: "/run/trellis/cni.sock",
  mode: "auto",
  resyncInterval: "10",
  heartbeatInterval: "5",
  peerGrace: "60",
  logLevel: "info",
  proxySyncInterval: "1",
  flowBuffer: "4096",
  flowEvents: "new,destroy",
  metricsBindAddress: "127.0.0.1:9656",
  proxyHealthzBindAddress: "off",
  proxyStatusBindAddress: "off",
} as const;

export function parseAgentOptions(flags: AgentFlags): AgentOptions {
  const nodeName = flags.nodeName ?? hostname();
  named("--node-name", () => checkNodeName(nodeName));
  const zone = flags.zone === undefined || flags.zone === "" ? undefined : flags.zone;
  if (zone !== undefined) {
    const problems = isValidLabelValue(zone);
    if (problems.length) throw new Error(`--zone ${JSON.stringify(zone)} is not a label value: ${problems.join("; ")}`);
  }
  const nodeIps = flags.nodeIp === undefined || flags.nodeIp === "" ? [] : flags.nodeIp.split(",").map((text) => {
    const ip = tryParseIp(text.trim());
    if (!ip) throw new Error(`--node-ip ${JSON.stringify(text)} is not an IP address: give one address per family, e.g. 198.18.0.10,fd00:198:18::10`);
    return ip;
  });
  if (nodeIps.length > 2 || new Set(nodeIps.map((ip) => ip.family)).size !== nodeIps.length) {
    throw new Error(`--node-ip ${nodeIps.map(formatIp).join(",")} must hold at most one address per family`);
  }
  if (!(DATASTORES as readonly string[]).includes(flags.datastore)) {
    throw new Error(`--datastore ${JSON.stringify(flags.datastore)} is not a datastore: expected one of ${DATASTORES.join(", ")}`);
  }
  const datastore = flags.datastore as Datastore;
  let clusterCidrs: IpPrefix[] = [];
  if (datastore === "kubernetes") {
    if (zone !== undefined) throw new Error(`--zone is for the Trellis store: on the Kubernetes API the Node's label ${"topology.kubernetes.io/zone"} gives the zone`);
    if (flags.plan !== undefined) throw new Error("--plan is for the Trellis store: with --datastore kubernetes the API server and node IPAM hold the cluster's addresses");
    if (flags.kubeconfig !== undefined && (!flags.kubeconfig || /[\0\n]/.test(flags.kubeconfig))) throw new Error(`--kubeconfig ${JSON.stringify(flags.kubeconfig)} is not a file name`);
    clusterCidrs = parseClusterCidrs(flags.clusterCidr);
  } else {
    named("--store", () => parseStoreSpec(flags.store));
    if (flags.kubeconfig !== undefined || flags.clusterCidr !== undefined) throw new Error("--kubeconfig and --cluster-cidr are for --datastore kubernetes; the Trellis store has the cluster's addresses in its plan");
  }
  if (!(ROUTING_MODES as readonly string[]).includes(flags.mode)) {
    throw new Error(`--mode ${JSON.stringify(flags.mode)} is not a routing mode: expected one of ${ROUTING_MODES.join(", ")}`);
  }
  const mtu = flags.mtu === undefined ? undefined : integer("--mtu", flags.mtu, 1280, 65535);
  for (const [flag, dir] of [["--cni-conf-dir", flags.cniConfDir], ["--cni-data-dir", flags.cniDataDir], ["--cni-socket", flags.cniSocket]] as const) {
    if (!isAbsolute(dir) || /[\0\n]/.test(dir)) throw new Error(`${flag} ${JSON.stringify(dir)} is not an absolute path`);
  }
  const masquerade = typeof flags.masquerade === "boolean" ? flags.masquerade : parseBoolean("TRELLIS_MASQUERADE", flags.masquerade);
  const resyncSeconds = integer("--resync-interval", flags.resyncInterval, 1, 3600);
  const heartbeatSeconds = integer("--heartbeat-interval", flags.heartbeatInterval, 1, 3600);
  const peerGraceSeconds = integer("--peer-grace", flags.peerGrace, 1, 86400);
  if (peerGraceSeconds <= heartbeatSeconds) {
    throw new Error(`--peer-grace ${peerGraceSeconds} must be longer than --heartbeat-interval ${heartbeatSeconds}, or live peers would lose their routes`);
  }
  const proxy = typeof flags.proxy === "boolean" ? flags.proxy : parseBoolean("TRELLIS_PROXY", flags.proxy);
  if (!/^[0-9]+(\.[0-9]{1,3})?$/.test(flags.proxySyncInterval) || Number(flags.proxySyncInterval) > 60) {
    throw new Error(`--proxy-sync-interval ${JSON.stringify(flags.proxySyncInterval)} is not a number of seconds from 0 to 60 (at most 3 decimals, e.g. 0.25)`);
  }
  const metricsAddress = parseBindAddress("--metrics-bind-address", flags.metricsBindAddress, 9656);
  const proxyHealthzAddress = parseBindAddress("--proxy-healthz-bind-address", flags.proxyHealthzBindAddress, 10256);
  const proxyStatusAddress = parseBindAddress("--proxy-status-bind-address", flags.proxyStatusBindAddress, 10249);

  const externalIpCidrs = parseExternalIpCidrs(flags.externalIpCidrs);
  if (!(LOG_LEVELS as readonly string[]).includes(flags.logLevel)) {
    throw new Error(`--log-level ${JSON.stringify(flags.logLevel)} is not a log level: expected one of ${LOG_LEVELS.join(", ")}`);
  }
  return {
    logLevel: flags.logLevel as LogLevel,
    nodeName,
    ...(zone === undefined ? {} : { zone }),
    nodeIps,
    datastore,
    store: flags.store,
    plan: flags.plan,
    ...(flags.kubeconfig === undefined ? {} : { kubeconfig: flags.kubeconfig }),
    clusterCidrs,
    mode: flags.mode as RoutingMode,
    mtu,
    cniConfDir: flags.cniConfDir,
    cniDataDir: flags.cniDataDir,
    cniSocket: flags.cniSocket,
    masquerade,
    resyncSeconds,
    heartbeatSeconds,
    peerGraceSeconds,
    proxy,
    proxySyncIntervalMs: Math.round(Number(flags.proxySyncInterval) * 1000),
    // A record's slot is some 170 bytes: 100,000 of them are 17 MiB.
    flowBuffer: integer("--flow-buffer", flags.flowBuffer, 0, 100_000),
    flowEvents: parseFlowEvents(flags.flowEvents),
    ...(metricsAddress ? { metricsAddress } : {}),
    // They speak for the agent's proxy: with --no-proxy, another proxy answers there.
    ...(proxyHealthzAddress && proxy ? { proxyHealthzAddress } : {}),
    ...(proxyStatusAddress && proxy ? { proxyStatusAddress } : {}),
    externalIpCidrs,
  };
}

/** `--flow-events`: some of new, update and destroy, comma-separated, new among them. */
function parseFlowEvents(text: string): FlowEventKind[] {
  const kinds = text.split(",");
  const allowed: readonly string[] = FLOW_EVENT_KINDS;
  if (!kinds.includes("new") || kinds.some((kind, i) => !allowed.includes(kind) || kinds.indexOf(kind) !== i)) {
    throw new Error(`--flow-events ${JSON.stringify(text)} is not a list of conntrack events: expected new and any of update, destroy, comma-separated (such as new,destroy)`);
  }
  return kinds as FlowEventKind[];
}

/** Most prefixes `--external-ip-cidrs` takes: far more than any cluster's pools. */
const MAX_EXTERNAL_IP_CIDRS = 64;

/** `--external-ip-cidrs`: network prefixes, comma-separated; none (the default) allows no external address. */
function parseExternalIpCidrs(text: string | undefined): IpPrefix[] {
  if (text === undefined || text.trim() === "") return [];
  const parts = text.split(",");
  if (parts.length > MAX_EXTERNAL_IP_CIDRS) throw new Error(`--external-ip-cidrs holds ${parts.length} prefixes: at most ${MAX_EXTERNAL_IP_CIDRS}`);
  return parts.map((part) => {
    const parsed = tryParseInterfaceAddress(part.trim());
    if (!parsed || parsed.address.value !== parsed.prefix.network) {
      throw new Error(`--external-ip-cidrs ${JSON.stringify(part.slice(0, 100))} is not a network prefix: give where Services' external addresses may be, e.g. 198.19.0.0/24,fd00:198:19::/64`);
    }
    return parsed.prefix;
  });
}

/** `--cluster-cidr`: one or two prefixes, at most one per family, not overlapping. */
function parseClusterCidrs(text: string | undefined): IpPrefix[] {
  if (text === undefined || text === "") {
    throw new Error("--cluster-cidr is needed with --datastore kubernetes: give the cluster's pod CIDRs, one per family, as kube-controller-manager's --cluster-cidr (e.g. 10.244.0.0/16,fd00:10:244::/56)");
  }
  const cidrs = text.split(",").map((part) => {
    const parsed = tryParseInterfaceAddress(part.trim());
    if (!parsed || parsed.address.value !== parsed.prefix.network) throw new Error(`--cluster-cidr ${JSON.stringify(part)} is not a network prefix such as 10.244.0.0/16`);
    return parsed.prefix;
  });
  if (cidrs.length > 2 || new Set(cidrs.map((cidr) => cidr.family)).size !== cidrs.length || (cidrs.length === 2 && prefixesOverlap(cidrs[0], cidrs[1]))) {
    throw new Error(`--cluster-cidr ${cidrs.map(formatPrefix).join(",")} must hold at most one prefix per family`);
  }
  return cidrs;
}

/** `HOST:PORT` with an IPv4 address, `[IPv6]:PORT`, or `off`. */
function parseBindAddress(flag: string, text: string, examplePort: number): { host: string; port: number } | undefined {
  if (text === "off") return undefined;
  const match = /^(?:\[([0-9a-fA-F:.]+)\]|([0-9.]+)):([0-9]{1,5})$/.exec(text);
  const host = match?.[1] ?? match?.[2];
  const ip = host === undefined ? undefined : tryParseIp(host);
  const port = Number(match?.[3]);
  if (!ip || (match?.[1] !== undefined) !== (ip.family === 6) || port < 1 || port > 65535) {
    throw new Error(`${flag} ${JSON.stringify(text)} is not HOST:PORT: expected an IPv4 address and port (127.0.0.1:${examplePort}), [IPv6]:PORT ([::1]:${examplePort}), or off`);
  }
  return { host: formatIp(ip), port };
}

/** Runs a shared check, its message prefixed with the flag that held the value. */
function named(flag: string, check: () => unknown): void {
  try {
    check();
  } catch (error) {
    throw new Error(`${flag}: ${(error as Error).message}`);
  }
}

function integer(flag: string, text: string, min: number, max: number): number {
  if (!/^[0-9]+$/.test(text) || Number(text) < min || Number(text) > max) throw new Error(`${flag} ${JSON.stringify(text)} is not a whole number from ${min} to ${max}`);
  return Number(text);
}

function parseBoolean(name: string, text: string): boolean {
  if (text === "true" || text === "1") return true;
  if (text === "false" || text === "0") return false;
  throw new Error(`${name} ${JSON.stringify(text)} is not a boolean: expected true or false`);
}
