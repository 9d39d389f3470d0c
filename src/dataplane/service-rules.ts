/**
 * Services as nftables rules, laid out as kube-proxy v1.37's nftables mode lays them out: fixed
 * chains dispatch through verdict maps keyed by destination, protocol and port, so a packet
 * costs one map lookup however many Services exist; a Service port's chain DNATs through a
 * numgen map (`dnat to numgen random mod N map @eps-CHAIN`, a plain `dnat to` for one
 * endpoint); endpoint chains exist only where ClientIP affinity needs them; and a pod reaching
 * itself through a Service is found at postrouting, in a set of local endpoints' connections.
 * Pure: one port's rules, the fixed tables they go in.
 *
 * Per family, table `ip|ip6 trellis-proxy` (the front) and shard tables `trellis-proxy-0` to `-3f`:
 *   front  nat-postrouting (srcnat)      jump masquerading: what carries MASQUERADE_MARK, and
 *                                        hairpin connections (@hairpin-connections)
 *          filter-input/-forward/-output ct state new: reject or drop what the no-endpoint maps name
 *   shard  nat-prerouting, nat-output    jump services
 *          services                      daddr . l4proto . dport vmap @service-ips;
 *                                        daddr @nodeport-ips, l4proto . dport vmap @service-nodeports
 *          svc-*  a port's cluster-wide endpoints   local-*  its endpoints on this node
 *          ext-*  NodePort, external and LB IP traffic
 *          eps-*  a port chain's endpoints, by numgen value (a chain with two or more)
 *          ep-*, aff-*  one endpoint of a port with ClientIP affinity, and its set
 *
 * The numgen map is a named data map (`typeof numgen random mod N : ip daddr . tcp dport`), one
 * per port chain, not a verdict map and not anonymous. Verdict maps: the kernel checks a table's
 * verdict maps for loops at each rule it adds (198 s of kernel time for a 10,000-Service x
 * 5-endpoint write with a numgen vmap per port, kubernetes/kubernetes#139513). Anonymous maps
 * (kube-proxy's `map { 0 : A . P, ... }` in the rule): the kernel walks the whole transaction
 * for every anonymous set it binds to a rule (__nft_set_trans_bind, 93 % of the time in perf),
 * so a full write is quadratic: 5.6 s at 10,000 x 5 here, against 1.0 s for the chain-per-endpoint
 * cascade before. A named map is found by name and bound without that walk; an endpoint replaced
 * is two element changes, the chain untouched. Measured figures: bench/svc.ts and the issue note.
 * Affinity keeps a chain per endpoint: `ip saddr @aff-X goto ep-X` must come before the random
 * choice; the choice among those chains is a cascade of `numgen random mod K == 0 goto`
 * (1/N, then 1/(N-1) of the rest, ...: uniform), again without a verdict map.
 */
import { formatIp, mergePrefixes, specialRangeOf, type Family, type IpAddress } from "../net/ip.js";
import {
  addressField, addressType, drop, elementId, goto, jump, newSet, payloadOf, rule, tableFamilyOf, verdictRule,
  type BaseChain, type Element, type Match, type NftSet, type Rule, type Statement, type Table, type Verdict,
} from "../nft/model.js";
import { checkName } from "../nft/names.js";
import {
  SHARDS, clusterEndpoints as topologyEndpoints, uniqueAddresses, uniqueEndpoints, usableEndpoints, type PortNames, type ProxyEndpoint, type ProxyNode, type ProxyServicePort,
} from "./service-port.js";

/**
 * The front table: the filter hooks (refusing what has no endpoint), masquerade at postrouting.
 * The Service ports live in SHARDS shard tables beside it, each with its own NAT hooks and
 * dispatch maps: the kernel checks a whole table's graph of jumps at every transaction that
 * touches it (150 ms for one table of 10,000 Services x 5 endpoints), so a change to one Service
 * should touch a table of a sixty-fourth of them.
 */
export const PROXY_TABLE = "trellis-proxy";
/** Every table name the proxy may use, the front first. */
export const PROXY_TABLE_NAMES: readonly string[] = [PROXY_TABLE, ...Array.from({ length: SHARDS }, (_, shard) => shardTableName(shard))];
/** The packet mark bit that asks nat-postrouting to masquerade. */
export const MASQUERADE_MARK = 0x4000;

export function shardTableName(shard: number): string {
  return `${PROXY_TABLE}-${shard.toString(16)}`;
}

/** The nflog group the proxy logs connections it refuses for want of endpoints to (the agent's flow records read it). */
export const SERVICE_NFLOG_GROUP = 2710;
/** Their log prefix. */
export const NO_ENDPOINTS_PREFIX = "no-endpoints";
/** Refused packets a second logged at most (twice as many in a burst). */
const SERVICE_LOG_RATE = 100;

const REJECT = goto("reject-chain");
const MARK_FOR_MASQUERADE: Statement = { statement: "verdict", verdict: jump("mark-for-masquerade") };

const FRONT_BASE_CHAINS: ReadonlyMap<string, BaseChain> = new Map<string, BaseChain>([
  ["nat-postrouting", { type: "nat", hook: "postrouting", priority: 100 }],
  // After DNAT on every path, output included: a host process's connection to an external IP
  // of an eTP=Local Service without local endpoints is short-circuited to the cluster chain,
  // and must not meet that address's `drop` first (as it would before nat-output).
  ["filter-input", { type: "filter", hook: "input", priority: 0 }],
  ["filter-forward", { type: "filter", hook: "forward", priority: 0 }],
  ["filter-output", { type: "filter", hook: "output", priority: 0 }],
]);

const SHARD_BASE_CHAINS: ReadonlyMap<string, BaseChain> = new Map<string, BaseChain>([
  ["nat-prerouting", { type: "nat", hook: "prerouting", priority: -100 }],
  ["nat-output", { type: "nat", hook: "output", priority: -100 }],
]);

/** The sets every Service port adds elements to. */
export const SHARED_MAPS = ["service-ips", "service-nodeports", "no-endpoint-services", "no-endpoint-nodeports", "hairpin-connections", "cluster-ips"] as const;
/** Those of them in the front table; the others are in the port's shard. */
export const FRONT_MAPS: ReadonlySet<string> = new Set(["no-endpoint-services", "no-endpoint-nodeports", "hairpin-connections", "cluster-ips"]);

/** A table being built: its maps filled as ports claim their keys. */
export interface TableDraft extends Table {
  readonly chains: Map<string, readonly Rule[]>;
  readonly sets: Map<string, NftSet & { readonly elements: Map<string, Element> }>;
}

/** What one Service port adds to a family's tables. */
export interface PortFragment {
  readonly chains: ReadonlyArray<readonly [string, readonly Rule[]]>;
  readonly sets: ReadonlyArray<readonly [string, NftSet]>;
  /** Elements of the shared maps, as [map, element id, element, rank], in the order the port claims them; see `claimRank`. */
  readonly elements: ReadonlyArray<readonly [string, string, Element, string]>;
}

/** The front table of a family: refusals of what has no endpoint, and masquerade. */
export function frontTable(family: Family, node: ProxyNode): TableDraft {
  const ip = payloadOf(family);
  const address = addressType(family);
  const serviceKey = [addressField(family, "daddr"), "meta l4proto", "th dport"] as const;
  const chains = new Map<string, readonly Rule[]>([
    ["nat-postrouting", [verdictRule([], jump("masquerading"))]],
    ["filter-input", [verdictRule([NEW], jump("nodeport-endpoints-check")), verdictRule([NEW], jump("service-endpoints-check"))]],
    ["filter-forward", [verdictRule([NEW], jump("service-endpoints-check")), verdictRule([NEW], jump("cluster-ips-check"))]],
    ["filter-output", [verdictRule([NEW], jump("service-endpoints-check")), verdictRule([NEW], jump("cluster-ips-check"))]],
    ["service-endpoints-check", [rule([], { statement: "vmap", key: serviceKey, map: "no-endpoint-services" })]],
    ["nodeport-endpoints-check", [rule([{ match: "in set", key: [addressField(family, "daddr")], set: "nodeport-ips" }], { statement: "vmap", key: ["meta l4proto", "th dport"], map: "no-endpoint-nodeports" })]],
    // After DNAT: a packet still addressed to a ClusterIP asked for a port it does not have
    // (rejected), and one to another address of the Service CIDRs for a ClusterIP no Service
    // holds (dropped, as kube-proxy drops it); either would otherwise leave by the default route.
    ["cluster-ips-check", [
      rule([{ match: "in set", key: [addressField(family, "daddr")], set: "cluster-ips" }], { statement: "verdict", verdict: REJECT }),
      verdictRule([{ match: "in set", key: [addressField(family, "daddr")], set: "service-cidrs" }], drop),
    ]],
    // A TCP client gets a reset and fails at once; UDP and SCTP get ICMP port unreachable. The
    // first packets are logged for the flow records (a few a second: nothing reads them otherwise).
    ["reject-chain", [
      rule([], { statement: "limit", rate: SERVICE_LOG_RATE, burst: SERVICE_LOG_RATE * 2 }, { statement: "log", prefix: NO_ENDPOINTS_PREFIX, group: SERVICE_NFLOG_GROUP }),
      rule([{ match: "protocol", protocol: "tcp" }], { statement: "reject", tcpReset: true }),
      rule([], { statement: "reject" }),
    ]],
    ["masquerading", [
      // Hairpin: a local endpoint reached through a Service from its own address must see
      // another source, or it would answer itself directly, past the DNAT.
      rule([{ match: "ct status dnat" }, { match: "in set", key: [`${ip} saddr`, `${ip} daddr`, "meta l4proto", "th dport"], set: "hairpin-connections" }], { statement: "masquerade", fullyRandom: true }),
      verdictRule([{ match: "mark", mask: MASQUERADE_MARK, value: 0 }], { verdict: "return" }),
      rule([], { statement: "mark", op: "xor", bits: MASQUERADE_MARK }),
      rule([], { statement: "masquerade", fullyRandom: true }),
    ]],
  ]);
  const sets = new Map<string, NftSet & { elements: Map<string, Element> }>([
    ["nodeport-ips", addressSet(family, nodePortAddresses(family, node))],
    ["no-endpoint-services", newSet({ kind: "map", key: [address, "inet_proto", "inet_service"], value: "verdict", flags: [] })],
    ["no-endpoint-nodeports", newSet({ kind: "map", key: ["inet_proto", "inet_service"], value: "verdict", flags: [] })],
    ["hairpin-connections", newSet({ kind: "set", key: [address, address, "inet_proto", "inet_service"], flags: [] })],
    ["cluster-ips", newSet({ kind: "set", key: [address], flags: [] })],
    ["service-cidrs", newSet(
      { kind: "set", key: [address], flags: ["interval"] },
      mergePrefixes((node.serviceCidrs ?? []).filter((prefix) => prefix.family === family)).map((prefix) => ({ key: [prefix] })),
    )],
  ]);
  return { family: tableFamilyOf(family), name: PROXY_TABLE, baseChains: FRONT_BASE_CHAINS, chains, sets };
}

/** A shard table of a family: NAT hooks dispatching to its Service ports' chains. */
export function shardTable(family: Family, node: ProxyNode, name: string): TableDraft {
  const address = addressType(family);
  const daddr = addressField(family, "daddr");
  const chains = new Map<string, readonly Rule[]>([
    ["nat-prerouting", [verdictRule([], jump("services"))]],
    ["nat-output", [verdictRule([], jump("services"))]],
    ["services", [
      rule([], { statement: "vmap", key: [daddr, "meta l4proto", "th dport"], map: "service-ips" }),
      rule([{ match: "in set", key: [daddr], set: "nodeport-ips" }], { statement: "vmap", key: ["meta l4proto", "th dport"], map: "service-nodeports" }),
    ]],
    ["mark-for-masquerade", [rule([], { statement: "mark", op: "or", bits: MASQUERADE_MARK })]],
  ]);
  const prefixSet = (prefixes: typeof node.podCidrs) => newSet(
    { kind: "set", key: [address], flags: ["interval"] },
    mergePrefixes(prefixes.filter((prefix) => prefix.family === family)).map((prefix) => ({ key: [prefix] })),
  );
  const sets = new Map<string, NftSet & { elements: Map<string, Element> }>([
    ["pod-cidrs", prefixSet(node.podCidrs)],
    ["own-pod-cidrs", prefixSet(node.ownPodCidrs ?? [])],
    ["nodeport-ips", addressSet(family, nodePortAddresses(family, node))],
    ["service-ips", newSet({ kind: "map", key: [address, "inet_proto", "inet_service"], value: "verdict", flags: [] })],
    ["service-nodeports", newSet({ kind: "map", key: ["inet_proto", "inet_service"], value: "verdict", flags: [] })],
  ]);
  return { family: tableFamilyOf(family), name, baseChains: SHARD_BASE_CHAINS, chains, sets };
}

const NEW: Match = { match: "ct state", states: ["new"] };

function addressSet(family: Family, addresses: readonly IpAddress[]): NftSet & { elements: Map<string, Element> } {
  return newSet({ kind: "set", key: [addressType(family)], flags: [] }, addresses.map((ip) => ({ key: [ip] })));
}

/** The node's addresses NodePorts answer on. Loopback never: a NodePort on 127.0.0.1 would be reachable by anything that can reach localhost. */
function nodePortAddresses(family: Family, node: ProxyNode): IpAddress[] {
  return uniqueAddresses(node.addresses.filter((ip) => ip.family === family && specialRangeOf(ip)?.use !== "loopback"));
}

/** One port's chains, sets and shared-map elements in one family (nothing when it has no ClusterIP there). */
export function portFragment(family: Family, node: ProxyNode, port: ProxyServicePort, names: PortNames): PortFragment {
  const inFamily = (ip: IpAddress) => ip.family === family;
  const clusterIPs = uniqueAddresses(port.clusterIPs.filter(inFamily));
  if (!clusterIPs.length) return { chains: [], sets: [], elements: [] };
  const chains: Array<readonly [string, readonly Rule[]]> = [];
  const sets: Array<readonly [string, NftSet]> = [];
  const elements: Array<readonly [string, string, Element, string]> = [];
  const claimed = new Set<string>();
  const clusterRank = claimRank(port, names, true);
  const externalRank = claimRank(port, names, false);
  const claim = (map: (typeof SHARED_MAPS)[number], element: Element, rank: string) => {
    const id = elementId(element.key);
    if (claimed.has(`${map} ${id}`)) return;
    claimed.add(`${map} ${id}`);
    elements.push([map, id, element, rank]);
  };
  const addChain = (name: string, rules: readonly Rule[]) => chains.push([checkName("chain", name), rules]);

  const ip = payloadOf(family);
  const protocol = names.protocol;
  const externalIPs = uniqueAddresses([...port.externalIPs, ...port.loadBalancerIPs].filter(inFamily));
  const endpoints = uniqueEndpoints(port.endpoints.filter((endpoint) => inFamily(endpoint.address)));
  const clusterEndpoints = topologyEndpoints(endpoints, node);
  const localEndpoints = usableEndpoints(endpoints.filter((endpoint) => endpoint.nodeName === node.name));

  const internalLocal = port.internalTrafficPolicy === "Local";
  const externalLocal = port.externalTrafficPolicy === "Local";
  const externallyReachable = port.nodePort !== undefined || externalIPs.length > 0;
  const hasEndpoints = clusterEndpoints.length > 0;
  const hasLocal = localEndpoints.length > 0;
  // eTP=Local still needs the cluster chain: pods and the node itself are sent there.
  const usesClusterChain = hasEndpoints && (!internalLocal || externallyReachable);
  const usesLocalChain = hasLocal && (internalLocal || (externallyReachable && externalLocal));
  const usesExternalChain = hasEndpoints && externallyReachable;
  const hasInternalEndpoints = internalLocal ? hasLocal : hasEndpoints;
  const hasExternalEndpoints = externalLocal ? hasLocal : hasEndpoints;
  const internalChain = internalLocal ? names.local : names.cluster;
  // No endpoint anywhere: reject. Endpoints, none on this node, Local policy: drop what the
  // external chain did not send to the cluster chain, as kube-proxy does. ClusterIP traffic
  // under iTP=Local with no local endpoint is rejected rather than dropped (kube-proxy drops):
  // a client in the cluster learns at once that this node cannot serve it.
  const externalNoEndpoint: Verdict = hasEndpoints ? drop : REJECT;

  for (const clusterIP of clusterIPs) {
    claim("cluster-ips", { key: [clusterIP] }, clusterRank);
    const key = [clusterIP, protocol, port.port];
    if (hasInternalEndpoints) claim("service-ips", { key, value: goto(internalChain) }, clusterRank);
    else claim("no-endpoint-services", { key, value: REJECT }, clusterRank);
  }
  for (const externalIP of externalIPs) {
    const key = [externalIP, protocol, port.port];
    if (usesExternalChain) claim("service-ips", { key, value: goto(names.external) }, externalRank);
    if (!hasExternalEndpoints) claim("no-endpoint-services", { key, value: externalNoEndpoint }, externalRank);
  }
  if (port.nodePort !== undefined) {
    const key = [protocol, port.nodePort];
    if (usesExternalChain) claim("service-nodeports", { key, value: goto(names.external) }, externalRank);
    if (!hasExternalEndpoints) claim("no-endpoint-nodeports", { key, value: externalNoEndpoint }, externalRank);
  }

  const affinity = port.sessionAffinityTimeoutSeconds;
  const nameParts = new Map(endpoints.map((endpoint) => [endpoint, `${names.base}__${endpointNamePart(endpoint)}`]));
  const endpointChain = (endpoint: ProxyEndpoint) => `ep-${nameParts.get(endpoint)}`;
  const affinitySet = (endpoint: ProxyEndpoint) => `aff-${nameParts.get(endpoint)}`;
  const l4: Match = { match: "protocol", protocol };
  // Off-cluster clients of a ClusterIP (a node routing the service CIDR to us) are masqueraded,
  // so that replies come back through this node to be un-DNATed.
  const masqueradeOffCluster = clusterIPs.map((clusterIP) => rule(
    [{ match: "address", field: `${ip} daddr`, value: clusterIP }, { match: "in set", key: [`${ip} saddr`], set: "pod-cidrs", negate: true }],
    MARK_FOR_MASQUERADE,
  ));
  const dispatch = (chosen: readonly ProxyEndpoint[], chain: string): Rule[] => {
    if (affinity !== undefined) {
      return [
        ...chosen.map((endpoint) => verdictRule([{ match: "in set", key: [`${ip} saddr`], set: affinitySet(endpoint) }], goto(endpointChain(endpoint)))),
        ...chosen.map((endpoint, i) => verdictRule(i < chosen.length - 1 ? [{ match: "numgen", modulus: chosen.length - i, value: 0 }] : [], goto(endpointChain(endpoint)))),
      ];
    }
    if (chosen.length === 1) return [rule([l4], { statement: "dnat", family, address: chosen[0].address, port: chosen[0].port })];
    const map = checkName("map", `eps-${chain}`);
    const targets = chosen.map((endpoint, i): Element => ({ key: [i], target: [endpoint.address, endpoint.port] }));
    sets.push([map, newSet({ kind: "map", key: [], flags: [], targets: { family, modulus: chosen.length, protocol } }, targets)]);
    return [rule([l4], { statement: "dnat numgen map", family, modulus: chosen.length, map })];
  };

  if (usesClusterChain) addChain(names.cluster, [...(internalLocal ? [] : masqueradeOffCluster), ...dispatch(clusterEndpoints, names.cluster)]);
  if (usesLocalChain) addChain(names.local, [...(internalLocal ? masqueradeOffCluster : []), ...dispatch(localEndpoints, names.local)]);
  if (usesExternalChain) {
    addChain(names.external, externalLocal
      ? [
          // Pods and the node itself reach external addresses as if through an outside load
          // balancer: any endpoint will do. The node's own source would be a local address
          // the endpoint cannot answer, so it is masqueraded; the others keep their source.
          verdictRule([{ match: "in set", key: [`${ip} saddr`], set: "pod-cidrs" }], goto(names.cluster)),
          rule([{ match: "fib local", field: "saddr" }], MARK_FOR_MASQUERADE),
          verdictRule([{ match: "fib local", field: "saddr" }], goto(names.cluster)),
          ...(hasLocal ? [verdictRule([], goto(names.local))] : []),
        ]
      : [
          // Clients are masqueraded, so that replies come back through this node to be
          // un-DNATed; other nodes' pods too: the endpoint may be on a third node, and a pod's
          // own address would send the reply straight to the pod's node, past this one (seen:
          // the upstream NodePort session affinity specs). This node's own pods keep their
          // address: their replies pass here anyway.
          rule([{ match: "in set", key: [`${ip} saddr`], set: "own-pod-cidrs", negate: true }], MARK_FOR_MASQUERADE),
          verdictRule([], goto(names.cluster)),
        ]);
  }
  const reachable = new Set<ProxyEndpoint>([...(usesClusterChain ? clusterEndpoints : []), ...(usesLocalChain ? localEndpoints : [])]);
  for (const endpoint of reachable) {
    // Local endpoints: a connection from one to itself through the Service is masqueraded.
    if (endpoint.nodeName === node.name) claim("hairpin-connections", { key: [endpoint.address, endpoint.address, protocol, endpoint.port] }, clusterRank);
    if (affinity === undefined) continue;
    sets.push([checkName("set", affinitySet(endpoint)), newSet({ kind: "set", key: [addressType(family)], flags: ["dynamic", "timeout"], timeoutSeconds: affinity })]);
    addChain(endpointChain(endpoint), [
      rule([], { statement: "update", set: affinitySet(endpoint), key: `${ip} saddr` }),
      rule([l4], { statement: "dnat", family, address: endpoint.address, port: endpoint.port }),
    ]);
  }
  return { chains, sets, elements };
}

/**
 * How a port's claim of a map key ranks against other ports' claims of it: a ClusterIP before
 * any external address or NodePort (a Service's externalIPs can never take another's ClusterIP
 * traffic), then the older Service (a newer one cannot take an address or port already served),
 * then the port's id.
 */
function claimRank(port: ProxyServicePort, names: PortNames, clusterIP: boolean): string {
  return `${clusterIP ? 0 : 1} ${port.createdAt ?? "~"} ${names.id}`;
}

/**
 * An endpoint in a chain name: nft names allow [A-Za-z0-9_./-], so IPv6's colons become "_"
 * ("." would make ::ffff:1.2.3.4 and ::ffff:1:2:3:4 one name), then "/PORT".
 */
function endpointNamePart(endpoint: ProxyEndpoint): string {
  return `${formatIp(endpoint.address).replaceAll(":", "_")}/${endpoint.port}`;
}
