/**
 * A Service port as the proxy sees it (its addresses, policies and endpoints), its validation,
 * and the names its chains and sets get. Pure.
 */
import { createHash } from "node:crypto";
import { familyBits, formatIp, type IpAddress, type IpPrefix } from "../net/ip.js";

export type ServiceProtocol = "TCP" | "UDP" | "SCTP";

export interface ProxyEndpoint {
  /** One family; a port's endpoints may mix families. */
  readonly address: IpAddress;
  /** The resolved target port. */
  readonly port: number;
  readonly ready: boolean;
  readonly serving: boolean;
  readonly terminating: boolean;
  readonly nodeName?: string;
  /** The EndpointSlice's hints (trafficDistribution): the zones and nodes this endpoint should serve. */
  readonly zoneHints?: readonly string[];
  readonly nodeHints?: readonly string[];
}

export interface ProxyServicePort {
  readonly namespace: string;
  /** The Service's name. */
  readonly name: string;
  /** "" when the port is unnamed. */
  readonly portName: string;
  readonly protocol: ServiceProtocol;
  readonly port: number;
  readonly nodePort?: number;
  readonly clusterIPs: readonly IpAddress[];
  readonly externalIPs: readonly IpAddress[];
  /** status.loadBalancer.ingress[].ip */
  readonly loadBalancerIPs: readonly IpAddress[];
  /** Set: sessionAffinity ClientIP with this timeout. */
  readonly sessionAffinityTimeoutSeconds?: number;
  readonly externalTrafficPolicy: "Cluster" | "Local";
  readonly internalTrafficPolicy: "Cluster" | "Local";
  readonly endpoints: readonly ProxyEndpoint[];
  /** The Service's health check port (type LoadBalancer, externalTrafficPolicy Local); served by the agent, not by rules. */
  readonly healthCheckNodePort?: number;
  /** The Service's creation time (RFC 3339): where two ports claim one map key, the older keeps it. */
  readonly createdAt?: string;
}

export interface ProxyNode {
  readonly name: string;
  /** The node's addresses: NodePorts answer on these (never on loopback). */
  readonly addresses: readonly IpAddress[];
  /** The cluster's pod CIDRs: a source inside is "in the cluster". */
  readonly podCidrs: readonly IpPrefix[];
  /** This node's own pod CIDRs: replies to its pods come back through it, so they need no masquerade to. */
  readonly ownPodCidrs?: readonly IpPrefix[];
  /** Its topology.kubernetes.io/zone: endpoints hinted for it are preferred (trafficDistribution). */
  readonly zone?: string;
  /**
   * The cluster's Service CIDRs (the plan's, or the API's ServiceCIDR objects): a connection to
   * an address in them that no ClusterIP holds is dropped, as kube-proxy drops it, instead of
   * following the node's default route out.
   */
  readonly serviceCidrs?: readonly IpPrefix[];
}

export interface PortNames {
  /** `namespace/name/protocol/portName`: unique per port, and only [a-z0-9/-]. */
  readonly id: string;
  readonly protocol: "tcp" | "udp" | "sctp";
  readonly cluster: string;
  readonly local: string;
  readonly external: string;
  /** `HASH-id`: the hash makes chains of different ports look different at a glance. */
  readonly base: string;
  /** The shard table the port lives in: 0 to SHARDS-1, from the same hash. */
  readonly shard: number;
}

/** Shard tables the Service ports are spread over (see service-rules.ts). */
export const SHARDS = 64;
export const MAX_AFFINITY_SECONDS = 86400;
const DNS_LABEL = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;
/** A port's part of its chain and set names, at most: nft's 255 less the longest prefix and endpoint suffix. */
const MAX_BASE_LENGTH = 255 - "aff-".length - "__ffff_ffff_ffff_ffff_ffff_ffff_ffff_ffff/65535".length;

/** Ready endpoints; when none is, the ones still serving while terminating. */
export function usableEndpoints(endpoints: readonly ProxyEndpoint[]): ProxyEndpoint[] {
  const ready = endpoints.filter((endpoint) => endpoint.ready);
  return ready.length ? ready : endpoints.filter((endpoint) => endpoint.serving && endpoint.terminating);
}

/**
 * The endpoints traffic from anywhere is spread over, as kube-proxy's CategorizeEndpoints picks
 * them: the ready ones, narrowed by their hints when every ready endpoint has a hint of a kind
 * and some name this node (node hints, PreferSameNode) or its zone (zone hints); otherwise all
 * of them (a node the hints leave out, or a zone no endpoint serves, falls back to every
 * endpoint). With none ready, the ones still serving while terminating.
 */
export function clusterEndpoints(endpoints: readonly ProxyEndpoint[], node: ProxyNode): ProxyEndpoint[] {
  const ready = endpoints.filter((endpoint) => endpoint.ready);
  if (!ready.length) return usableEndpoints(endpoints);
  const hinted = (hints: (endpoint: ProxyEndpoint) => readonly string[] | undefined, name: string | undefined) => {
    if (name === undefined || !ready.every((endpoint) => hints(endpoint)?.length)) return undefined;
    const chosen = ready.filter((endpoint) => hints(endpoint)!.includes(name));
    return chosen.length ? chosen : undefined;
  };
  return hinted((endpoint) => endpoint.nodeHints, node.name) ?? hinted((endpoint) => endpoint.zoneHints, node.zone) ?? ready;
}

/** Sorted by address and port, one per address and port (a ready one when there is). */
export function uniqueEndpoints(endpoints: readonly ProxyEndpoint[]): ProxyEndpoint[] {
  const sorted = [...endpoints].sort((a, b) => compareAddress(a.address, b.address) || a.port - b.port || Number(b.ready) - Number(a.ready));
  return sorted.filter((endpoint, i) => i === 0 || compareAddress(endpoint.address, sorted[i - 1].address) !== 0 || endpoint.port !== sorted[i - 1].port);
}

export function uniqueAddresses(addresses: readonly IpAddress[]): IpAddress[] {
  const sorted = [...addresses].sort(compareAddress);
  return sorted.filter((ip, i) => i === 0 || compareAddress(ip, sorted[i - 1]) !== 0);
}

export function compareAddress(a: IpAddress, b: IpAddress): number {
  return a.family - b.family || (a.value < b.value ? -1 : a.value > b.value ? 1 : 0);
}

export function compareText(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

export function portNames(namespace: string, name: string, protocol: ServiceProtocol, portName: string): PortNames {
  const lower = protocol.toLowerCase() as PortNames["protocol"];
  // "/" cannot occur in namespaces, names or port names, so the id (and every name built on it) is unique per port.
  const id = `${namespace}/${name}/${lower}/${portName}`;
  const digest = createHash("sha256").update(id).digest("hex");
  const hash = digest.slice(0, 8);
  // Names are the hash and the id, readable in `nft list`. The longest derived name adds 51
  // characters (`aff-` and an endpoint's `__ADDRESS/PORT`) and nft takes 255: an id too long for
  // that (names of 63 each) keeps its first characters beside 64 bits of its hash, still unique.
  const base = hash.length + 1 + id.length <= MAX_BASE_LENGTH ? `${hash}-${id}` : `${digest.slice(0, 16)}-${id.slice(0, MAX_BASE_LENGTH - 17)}`;
  return { id, protocol: lower, base, shard: Number.parseInt(hash.slice(0, 4), 16) % SHARDS, cluster: `svc-${base}`, local: `local-${base}`, external: `ext-${base}` };
}

export function validateNode(node: ProxyNode): void {
  for (const ip of node.addresses) checkedAddress(`node ${node.name} address`, ip);
  for (const prefix of [...node.podCidrs, ...(node.ownPodCidrs ?? []), ...(node.serviceCidrs ?? [])]) {
    const bits = familyBits(prefix.family);
    if (!Number.isInteger(prefix.length) || prefix.length < 0 || prefix.length > bits) throw new Error(`pod CIDR of node ${node.name} has length ${prefix.length}: expected 0-${bits}`);
    checkedAddress(`pod CIDR of node ${node.name}`, { family: prefix.family, value: prefix.network });
  }
}

/** Throws, naming the value, when a port could not go into the ruleset (a name nft refuses, a port out of range, ...). */
export function checkServicePort(port: ProxyServicePort): void {
  validatePort(port);
}

export function validatePort(port: ProxyServicePort): PortNames {
  const what = `service port ${port.namespace}/${port.name}:${port.portName || port.port}`;
  if (!DNS_LABEL.test(port.namespace)) throw new Error(`${what}: namespace ${JSON.stringify(port.namespace)} is not a DNS label (lowercase letters, digits and "-", at most 63)`);
  if (!DNS_LABEL.test(port.name)) throw new Error(`${what}: name ${JSON.stringify(port.name)} is not a DNS label (lowercase letters, digits and "-", at most 63)`);
  // A Service's port names are DNS labels (the API validates them so); only container port names,
  // which targetPorts name, are IANA service names of at most 15.
  if (port.portName !== "" && !DNS_LABEL.test(port.portName)) {
    throw new Error(`${what}: port name ${JSON.stringify(port.portName)} is not a DNS label (lowercase letters, digits and "-", at most 63)`);
  }
  if (port.protocol !== "TCP" && port.protocol !== "UDP" && port.protocol !== "SCTP") throw new Error(`${what}: protocol ${JSON.stringify(port.protocol)} is not TCP, UDP or SCTP`);
  checkedInteger(`${what}: port`, port.port, 1, 65535);
  if (port.nodePort !== undefined) checkedInteger(`${what}: nodePort`, port.nodePort, 1, 65535);
  if (port.sessionAffinityTimeoutSeconds !== undefined) checkedInteger(`${what}: session affinity timeout`, port.sessionAffinityTimeoutSeconds, 1, MAX_AFFINITY_SECONDS);
  for (const [field, policy] of [["externalTrafficPolicy", port.externalTrafficPolicy], ["internalTrafficPolicy", port.internalTrafficPolicy]]) {
    if (policy !== "Cluster" && policy !== "Local") throw new Error(`${what}: ${field} ${JSON.stringify(policy)} is not Cluster or Local`);
  }
  for (const ip of [...port.clusterIPs, ...port.externalIPs, ...port.loadBalancerIPs]) checkedAddress(what, ip);
  for (const endpoint of port.endpoints) {
    checkedAddress(`${what} endpoint`, endpoint.address);
    checkedInteger(`${what}: endpoint ${formatIp(endpoint.address)} port`, endpoint.port, 1, 65535);
  }
  return portNames(port.namespace, port.name, port.protocol, port.portName);
}

export function checkedAddress(what: string, ip: IpAddress): IpAddress {
  if ((ip.family !== 4 && ip.family !== 6) || typeof ip.value !== "bigint" || ip.value < 0n || ip.value >> BigInt(familyBits(ip.family)) !== 0n) {
    throw new Error(`${what}: ${String(ip.value)} is not an IPv${ip.family} address`);
  }
  return ip;
}

export function checkedInteger(what: string, value: number, min: number, max: number): number {
  if (!Number.isInteger(value) || value < min || value > max) throw new Error(`${what} ${value} is outside ${min}-${max}`);
  return value;
}

