/**
 * Services as nftables, laid out the way kube-proxy's nftables mode lays them out: one table
 * per family whose fixed chains dispatch through verdict maps keyed by destination, protocol
 * and port, so a packet costs one map lookup however many Services exist, and a Service change
 * is a change of map elements and of that Service's own chains, never of a shared rule list.
 * Pure: the desired ruleset as data, the script that writes it whole, and the script from one
 * desired ruleset to the next.
 *
 * Per family, table `ip|ip6 trellis-proxy`:
 *   nat-prerouting, nat-output (dstnat)  jump services
 *   nat-postrouting (srcnat)             jump masquerading (masquerade what carries MASQUERADE_MARK)
 *   filter-input/-forward/-output        ct state new: reject or drop what the no-endpoint maps name
 *   services                             daddr . l4proto . dport vmap @service-ips;
 *                                        daddr @nodeport-ips, l4proto . dport vmap @service-nodeports
 *   svc-*    a port's cluster-wide endpoints      local-*  its endpoints on this node
 *   ext-*    NodePort, external and LB IP traffic ep-*     one endpoint: hairpin mark, DNAT
 *   aff-*    ClientIP affinity, one set per endpoint of the port
 *
 * Unlike kube-proxy, a port's chain picks its endpoint with a cascade of `numgen random mod K
 * == 0 goto` rules (1/N, then 1/(N-1) of the rest, ...: uniform), not a per-port `numgen vmap`.
 * Each such vmap is an anonymous map, and the kernel scans a table's maps when rules are
 * added: a 10,000-Service x 5-endpoint transaction took 198 s of kernel time in `nft -c` here
 * with them, 7 s without (kubernetes/kubernetes#139513; kube-proxy now drops the map for
 * single-endpoint Services). The cascade costs up to N-1 comparisons on a connection's first
 * packet, still independent of the number of Services.
 */
import { createHash } from "node:crypto";
import { familyBits, formatIp, formatPrefix, mergePrefixes, specialRangeOf, type Family, type IpAddress, type IpPrefix } from "../net/ip.js";

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
}

export interface ProxyBaseChain {
  readonly type: "nat" | "filter";
  readonly hook: "prerouting" | "input" | "forward" | "output" | "postrouting";
  /** dstnat is -100, filter 0, srcnat 100: numbers, since nft 1.0.6 refuses the name dstnat on the output hook. */
  readonly priority: number;
}

/** A named set or map; `elements` maps a key to its value ("" in a set). */
export interface ProxySet {
  readonly kind: "set" | "map";
  readonly type: string;
  readonly flags: readonly string[];
  readonly timeoutSeconds?: number;
  readonly elements: ReadonlyMap<string, string>;
}

export interface ProxyTable {
  readonly family: Family;
  /** PROXY_TABLE (the front) or a shard's name (PROXY_TABLE-0 to -3f). */
  readonly name: string;
  /** The chains attached to a hook, with how; their rules are in `chains` like any other's. */
  readonly baseChains: ReadonlyMap<string, ProxyBaseChain>;
  /** Every chain by name, with its rules in order. */
  readonly chains: ReadonlyMap<string, readonly string[]>;
  readonly sets: ReadonlyMap<string, ProxySet>;
}

/**
 * The tables that should exist, by `FAMILY NAME` as nft names them (`ip trellis-proxy-3`); a
 * table of the proxy's not here should not exist.
 */
export interface ProxyRuleset {
  readonly tables: ReadonlyMap<string, ProxyTable>;
}

export interface ProxyCounts {
  readonly family: Family;
  readonly chains: number;
  readonly rules: number;
  readonly elements: number;
}

/**
 * The front table: the filter hooks (refusing what has no endpoint), masquerade at postrouting.
 * The Service ports live in SHARDS shard tables beside it, `trellis-proxy-0` to `-3f`, each with
 * its own NAT hooks and dispatch maps: the kernel checks a whole table's graph of jumps at every
 * transaction that touches it (150 ms for one table of 10,000 Services x 5 endpoints), so a
 * change to one Service should touch a table of a sixty-fourth of them. Measured at 10,000 x 5,
 * kernel time per change: 14.2 ms with 32 shards, 12.0 ms with 64 (the rest is the commit's
 * walk over every chain of the namespace, whatever the layout). More shards cost a new
 * connection more NAT chains to pass, each one map lookup, and a full write more time (the
 * kernel finds a table by name in a list: 2.9 s with 32, 3.3 s with 64).
 */
export const PROXY_TABLE = "trellis-proxy";
export const SHARDS = 64;
/** Every table name the proxy may use, the front first. */
export const PROXY_TABLE_NAMES: readonly string[] = [PROXY_TABLE, ...Array.from({ length: SHARDS }, (_, shard) => shardTableName(shard))];
/** The packet mark bit that asks nat-postrouting to masquerade. */
export const MASQUERADE_MARK = 0x4000;

const FAMILIES: readonly Family[] = [4, 6];
const PAYLOAD: Record<Family, "ip" | "ip6"> = { 4: "ip", 6: "ip6" };
const ADDRESS_TYPE: Record<Family, string> = { 4: "ipv4_addr", 6: "ipv6_addr" };
const MARK = `0x${MASQUERADE_MARK.toString(16).padStart(8, "0")}`;
const REJECT = "goto reject-chain";
/** nft keeps names in 256 bytes with the terminating NUL. */
const NAME_MAX = 255;
const NAME = /^[A-Za-z_.][A-Za-z0-9_./-]*$/;
const DNS_LABEL = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;
/** A port's part of its chain and set names, at most: nft's 255 less the longest prefix and endpoint suffix. */
const MAX_BASE_LENGTH = 255 - "aff-".length - "__ffff_ffff_ffff_ffff_ffff_ffff_ffff_ffff/65535".length;
const MAX_AFFINITY_SECONDS = 86400;

const FRONT_BASE_CHAINS: ReadonlyMap<string, ProxyBaseChain> = new Map<string, ProxyBaseChain>([
  ["nat-postrouting", { type: "nat", hook: "postrouting", priority: 100 }],
  // After DNAT on every path, output included: a host process's connection to an external IP
  // of an eTP=Local Service without local endpoints is short-circuited to the cluster chain,
  // and must not meet that address's `drop` first (as it would before nat-output).
  ["filter-input", { type: "filter", hook: "input", priority: 0 }],
  ["filter-forward", { type: "filter", hook: "forward", priority: 0 }],
  ["filter-output", { type: "filter", hook: "output", priority: 0 }],
]);

const SHARD_BASE_CHAINS: ReadonlyMap<string, ProxyBaseChain> = new Map<string, ProxyBaseChain>([
  ["nat-prerouting", { type: "nat", hook: "prerouting", priority: -100 }],
  ["nat-output", { type: "nat", hook: "output", priority: -100 }],
]);

/** What one Service port adds to each family's table, worked out once per port object and family. */
interface PortPart {
  readonly names: PortNames;
  readonly families: Map<Family, PortFragment>;
}

interface PortFragment {
  readonly chains: ReadonlyArray<readonly [string, readonly string[]]>;
  readonly sets: ReadonlyArray<readonly [string, ProxySet]>;
  /** Elements of the shared maps, as [map, key, value, rank], in the order the port claims them; see `claimRank`. */
  readonly elements: ReadonlyArray<readonly [string, string, string, string]>;
}

/** The maps every Service port adds elements to. */
const SHARED_MAPS = ["service-ips", "service-nodeports", "no-endpoint-services", "no-endpoint-nodeports"] as const;
/** Those of them in the front table; the others are in the port's shard. */
const FRONT_MAPS: ReadonlySet<string> = new Set(["no-endpoint-services", "no-endpoint-nodeports"]);

/**
 * The ruleset that implements `ports` on `node`. The input's order does not matter: where two
 * ports claim the same address, protocol and port (or the same NodePort), a ClusterIP keeps it
 * over an external address, then the older Service, then the first in (namespace, name,
 * protocol, port name) order.
 */
export function desiredProxyRuleset(node: ProxyNode, ports: readonly ProxyServicePort[]): ProxyRuleset {
  return new ProxyState(node, ports).ruleset();
}

/**
 * The proxy's ruleset kept up to date port by port: `update` with the ports that went and came
 * costs those ports' work and gives the steps from the ruleset before to the one after, the same
 * steps `proxyChangeOps` would find by comparing the two whole rulesets, so that a change to one
 * Service among 10,000 does not cost 10,000.
 */
export class ProxyState {
  private readonly ports = new Map<string, { port: ProxyServicePort; part: PortPart }>();
  /** By `FAMILY NAME`. */
  private readonly tables = new Map<string, TableDraft>();
  /**
   * Per family, per shared map and key (`MAP KEY`), the ports claiming it in id order: the first
   * holds it, in the front table or in its own shard's.
   */
  private readonly claims = new Map<Family, Map<string, Claim[]>>();
  /** Per shard table, how many ports have something in it: a shard table exists while some do. */
  private readonly members = new Map<string, number>();

  constructor(
    readonly node: ProxyNode,
    ports: readonly ProxyServicePort[],
  ) {
    validateNode(node);
    const parts = ports.map((port) => ({ port, part: { names: validatePort(port), families: new Map() } as PortPart }));
    parts.sort((a, b) => compareText(a.part.names.id, b.part.names.id));
    for (const entry of parts) {
      if (this.ports.has(entry.part.names.id)) throw new Error(`service port ${entry.part.names.id} is listed twice`);
      this.ports.set(entry.part.names.id, entry);
    }
    for (const family of this.usedFamilies()) {
      this.tables.set(tableRef(family, PROXY_TABLE), frontTable(family, node));
      const claims = new Map<string, Claim[]>();
      for (const { port, part } of parts) {
        const fragment = fragmentOf(family, node, port, part);
        if (isEmpty(fragment)) continue;
        const shard = this.shardTable(family, part);
        this.members.set(shard.ref, (this.members.get(shard.ref) ?? 0) + 1);
        for (const [name, rules] of fragment.chains) shard.table.chains.set(name, rules);
        for (const [name, definition] of fragment.sets) shard.table.sets.set(name, definition as ProxySet & { elements: Map<string, string> });
        for (const [map, key, value, rank] of fragment.elements) {
          const claimed = `${map} ${key}`;
          const list = claims.get(claimed);
          const claim = { id: part.names.id, rank, value, table: FRONT_MAPS.has(map) ? tableRef(family, PROXY_TABLE) : shard.ref };
          if (list) list.push(claim);
          else claims.set(claimed, [claim]);
        }
      }
      for (const [claimed, list] of claims) {
        if (list.length > 1) list.sort((a, b) => compareText(a.rank, b.rank));
        const [map, key] = splitClaim(claimed);
        this.tables.get(list[0].table)!.sets.get(map)!.elements.set(key, list[0].value);
      }
      this.claims.set(family, claims);
    }
  }

  /** The ruleset as it stands (live: it changes with the next update). */
  ruleset(): ProxyRuleset {
    return { tables: this.tables };
  }

  /**
   * Takes `removed` out and puts `added` in (a changed port is in both: its old and its new
   * object) and returns the steps that take the tables from before to after. A port whose id is
   * already present (and not removed) is refused, and nothing changes.
   */
  update(removed: readonly ProxyServicePort[], added: readonly ProxyServicePort[]): ProxyOp[] {
    const gone = removed.map((port) => {
      const entry = this.ports.get(validatePort(port).id);
      if (!entry) throw new Error(`service port ${validatePort(port).id} is not in the ruleset`);
      return entry;
    });
    const goneIds = new Set(gone.map((entry) => entry.part.names.id));
    const coming = added.map((port) => ({ port, part: { names: validatePort(port), families: new Map() } as PortPart }));
    const comingIds = new Set<string>();
    for (const { part } of coming) {
      const id = part.names.id;
      if (comingIds.has(id) || (this.ports.has(id) && !goneIds.has(id))) throw new Error(`service port ${id} is listed twice`);
      comingIds.add(id);
    }
    const remaining = () => [...this.ports.values()].filter((entry) => !goneIds.has(entry.part.names.id)).map((entry) => entry.port).concat(added);
    if (this.tablesChange(gone, coming)) {
      // A table comes or goes (a family's first ClusterIP, a shard's first or last port): worked
      // out whole, as the kernel's tables change whole. Only while shards fill, or for a family
      // the node has no address in.
      const before = desiredProxyRuleset(this.node, [...this.ports.values()].map((entry) => entry.port));
      const next = new ProxyState(this.node, remaining());
      this.replaceWith(next);
      return proxyChangeOps(before, next.ruleset());
    }
    const ops: ProxyOp[] = [];
    for (const family of FAMILIES) {
      if (this.tables.has(tableRef(family, PROXY_TABLE))) append(ops, this.updateFamily(family, gone, coming));
    }
    for (const id of goneIds) this.ports.delete(id);
    for (const entry of coming) this.ports.set(entry.part.names.id, entry);
    return ops;
  }

  /** Whether taking `gone` out and putting `coming` in makes a table appear or disappear. */
  private tablesChange(gone: readonly PortEntry[], coming: readonly PortEntry[]): boolean {
    const goneIds = new Set(gone.map((entry) => entry.part.names.id));
    for (const family of FAMILIES) {
      const uses = (port: ProxyServicePort) => port.clusterIPs.some((ip) => ip.family === family);
      const front = this.tables.has(tableRef(family, PROXY_TABLE));
      if (!front) {
        if (coming.some((entry) => uses(entry.port))) return true;
        continue;
      }
      const nodeUses = this.node.addresses.some((ip) => ip.family === family) || this.node.podCidrs.some((prefix) => prefix.family === family);
      if (!nodeUses && gone.some((entry) => uses(entry.port))) {
        const left = [...this.ports.values()].some((entry) => !goneIds.has(entry.part.names.id) && uses(entry.port)) || coming.some((entry) => uses(entry.port));
        if (!left) return true;
      }
      const count = new Map<string, number>();
      for (const entry of gone) if (!isEmpty(fragmentOf(family, this.node, entry.port, entry.part))) count.set(shardRef(family, entry.part), (count.get(shardRef(family, entry.part)) ?? 0) - 1);
      for (const entry of coming) if (!isEmpty(fragmentOf(family, this.node, entry.port, entry.part))) count.set(shardRef(family, entry.part), (count.get(shardRef(family, entry.part)) ?? 0) + 1);
      for (const [ref, delta] of count) {
        const before = this.members.get(ref) ?? 0;
        if ((before > 0) !== (before + delta > 0)) return true;
      }
    }
    return false;
  }

  private updateFamily(family: Family, gone: readonly PortEntry[], coming: readonly PortEntry[]): ProxyOp[] {
    const claims = this.claims.get(family)!;
    const front = tableRef(family, PROXY_TABLE);
    /** Per table touched, what the steps see of it before and after: the ports' own chains and sets, and the shared map keys they claim. */
    const partial = new Map<string, { before: TableDraft; after: TableDraft }>();
    const touched = (ref: string) => {
      let entry = partial.get(ref);
      if (!entry) {
        const table = this.tables.get(ref)!;
        const empty = (): TableDraft => ({
          family, name: table.name, baseChains: new Map(), chains: new Map(),
          sets: new Map([...table.sets].filter(([name]) => (SHARED_MAPS as readonly string[]).includes(name)).map(([name, definition]) => [name, { ...definition, elements: new Map() }])),
        });
        entry = { before: empty(), after: empty() };
        partial.set(ref, entry);
      }
      return entry;
    };
    const keys = new Set<string>();
    const oldFragments = gone.map((entry) => fragmentOf(family, this.node, entry.port, entry.part));
    const newFragments = coming.map((entry) => fragmentOf(family, this.node, entry.port, entry.part));
    for (const [side, entries, fragments] of [["before", gone, oldFragments], ["after", coming, newFragments]] as const) {
      entries.forEach((entry, i) => {
        const fragment = fragments[i];
        if (isEmpty(fragment)) return;
        const draft = touched(shardRef(family, entry.part))[side];
        for (const [name, rules] of fragment.chains) draft.chains.set(name, rules);
        for (const [name, definition] of fragment.sets) draft.sets.set(name, definition as ProxySet & { elements: Map<string, string> });
        for (const [map, key] of fragment.elements) keys.add(`${map} ${key}`);
      });
    }
    // Each claimed key as it is held now, and as it will be (its holder may change table).
    const holder = (claimed: string) => claims.get(claimed)?.[0];
    const place = (side: "before" | "after", claimed: string) => {
      const claim = holder(claimed);
      if (!claim) return;
      const [map, key] = splitClaim(claimed);
      touched(claim.table)[side].sets.get(map)!.elements.set(key, claim.value);
    };
    for (const claimed of keys) place("before", claimed);
    gone.forEach((entry, i) => {
      for (const [map, key] of oldFragments[i].elements) {
        const claimed = `${map} ${key}`;
        const list = claims.get(claimed)!.filter((claim) => claim.id !== entry.part.names.id);
        if (list.length) claims.set(claimed, list);
        else claims.delete(claimed);
      }
    });
    coming.forEach((entry, i) => {
      for (const [map, key, value, rank] of newFragments[i].elements) {
        const claimed = `${map} ${key}`;
        const list = claims.get(claimed) ?? [];
        let at = 0;
        while (at < list.length && compareText(list[at].rank, rank) < 0) at++;
        list.splice(at, 0, { id: entry.part.names.id, rank, value, table: FRONT_MAPS.has(map) ? front : shardRef(family, entry.part) });
        claims.set(claimed, list);
      }
    });
    // A key whose holder moves to another table: the old one is in `before` of its table (placed
    // above), absent from its `after`, so the steps delete it there and add it in the new one.
    for (const claimed of keys) place("after", claimed);
    const ops: ProxyOp[] = [];
    // The front first (its name is a prefix of the shards'), then the shards.
    for (const [ref, { before, after }] of [...partial].sort(([a], [b]) => compareText(a, b))) {
      append(ops, tableChange(before, after));
      // The table itself, brought to what the steps make of it.
      const table = this.tables.get(ref)!;
      for (const name of before.chains.keys()) table.chains.delete(name);
      for (const name of before.sets.keys()) if (!SHARED_MAPS.includes(name as (typeof SHARED_MAPS)[number])) table.sets.delete(name);
      for (const [name, rules] of after.chains) table.chains.set(name, rules);
      for (const [name, definition] of after.sets) if (!SHARED_MAPS.includes(name as (typeof SHARED_MAPS)[number])) table.sets.set(name, definition);
      for (const map of SHARED_MAPS) {
        const [was, will] = [before.sets.get(map)?.elements, after.sets.get(map)?.elements];
        if (!was || !will) continue;
        for (const key of was.keys()) if (!will.has(key)) table.sets.get(map)!.elements.delete(key);
        for (const [key, value] of will) table.sets.get(map)!.elements.set(key, value);
      }
    }
    for (const [entries, fragments, delta] of [[gone, oldFragments, -1], [coming, newFragments, 1]] as const) {
      entries.forEach((entry, i) => {
        if (isEmpty(fragments[i])) return;
        const ref = shardRef(family, entry.part);
        this.members.set(ref, (this.members.get(ref) ?? 0) + delta);
      });
    }
    return ops;
  }

  /** The shard table a port goes in, made when it is the first. */
  private shardTable(family: Family, part: PortPart): { ref: string; table: TableDraft } {
    const ref = shardRef(family, part);
    let table = this.tables.get(ref);
    if (!table) {
      table = shardTable(family, this.node, shardTableName(part.names.shard));
      this.tables.set(ref, table);
    }
    return { ref, table };
  }

  /** The families that get a table: those of the node's addresses and pod CIDRs, and of any ClusterIP. */
  private usedFamilies(): Family[] {
    return FAMILIES.filter((family) => {
      const inFamily = (ip: { family: Family }) => ip.family === family;
      return this.node.addresses.some(inFamily) || this.node.podCidrs.some(inFamily) || [...this.ports.values()].some(({ port }) => port.clusterIPs.some(inFamily));
    });
  }

  private replaceWith(next: ProxyState): void {
    for (const [target, source] of [[this.ports, next.ports], [this.tables, next.tables], [this.claims, next.claims], [this.members, next.members]] as const) {
      (target as Map<unknown, unknown>).clear();
      for (const [key, value] of source as Map<unknown, unknown>) (target as Map<unknown, unknown>).set(key, value);
    }
  }
}

interface Claim {
  readonly id: string;
  /** Orders the claims of one key: the lowest holds it (`claimRank`). */
  readonly rank: string;
  readonly value: string;
  /** The table the element goes in when this claim holds the key. */
  readonly table: string;
}

function isEmpty(fragment: PortFragment): boolean {
  return fragment.chains.length === 0 && fragment.sets.length === 0 && fragment.elements.length === 0;
}

function shardRef(family: Family, part: PortPart): string {
  return tableRef(family, shardTableName(part.names.shard));
}

function shardTableName(shard: number): string {
  return `${PROXY_TABLE}-${shard.toString(16)}`;
}

interface PortEntry {
  readonly port: ProxyServicePort;
  readonly part: PortPart;
}

function splitClaim(claimed: string): [string, string] {
  const space = claimed.indexOf(" ");
  return [claimed.slice(0, space), claimed.slice(space + 1)];
}

function fragmentOf(family: Family, node: ProxyNode, port: ProxyServicePort, part: PortPart): PortFragment {
  let fragment = part.families.get(family);
  if (!fragment) {
    fragment = portFragment(family, node, port, part.names);
    part.families.set(family, fragment);
  }
  return fragment;
}

/** One port's chains, sets and map elements in one family, worked out on a table of its own. */
function portFragment(family: Family, node: ProxyNode, port: ProxyServicePort, names: PortNames): PortFragment {
  const draft: TableDraft = {
    family,
    name: "",
    baseChains: new Map(),
    chains: new Map(),
    sets: new Map(SHARED_MAPS.map((name) => [name, set("map", "", [], [])])),
  };
  addServicePort(draft, family, node, port, names);
  const shared = new Set<string>(SHARED_MAPS);
  const clusterKeys = new Set(port.clusterIPs.map((ip) => `${formatIp(ip)} . `));
  const isClusterKey = (key: string) => clusterKeys.has(key.slice(0, key.indexOf(" . ") + 3));
  return {
    chains: [...draft.chains],
    sets: [...draft.sets].filter(([name]) => !shared.has(name)),
    elements: SHARED_MAPS.flatMap((map) => [...draft.sets.get(map)!.elements].map(([key, value]) => [map, key, value, claimRank(port, names, isClusterKey(key))] as const)),
  };
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
 * One step of a change to the proxy's tables, as data: rendered as an `nft -f` script line by
 * renderProxyOps, or encoded for netlink by linux/. A list of them is one transaction.
 */
export type ProxyOp =
  | { readonly op: "add table" | "delete table"; readonly family: Family; readonly table: string }
  | { readonly op: "add chain"; readonly family: Family; readonly table: string; readonly name: string; readonly base?: ProxyBaseChain }
  | { readonly op: "flush chain" | "delete chain"; readonly family: Family; readonly table: string; readonly name: string }
  | { readonly op: "add rule"; readonly family: Family; readonly table: string; readonly chain: string; readonly rule: string }
  | { readonly op: "add set"; readonly family: Family; readonly table: string; readonly name: string; readonly set: ProxySet }
  | { readonly op: "delete set"; readonly family: Family; readonly table: string; readonly name: string; readonly kind: "set" | "map" }
  /** Elements of a set (`value` "") or map; `set` is its definition, for the key and value types. */
  | {
      readonly op: "add element" | "delete element"; readonly family: Family; readonly table: string; readonly name: string; readonly set: ProxySet;
      readonly elements: ReadonlyArray<readonly [string, string]>;
    };

/**
 * The steps that make the tables exactly `desired`, in one transaction, whatever they held
 * before (nothing included). ClientIP affinity is forgotten: the sets are created empty.
 */
export function proxyFullOps(desired: ProxyRuleset): ProxyOp[] {
  const ops: ProxyOp[] = [];
  for (const family of FAMILIES) {
    for (const name of PROXY_TABLE_NAMES) {
      const table = desired.tables.get(tableRef(family, name));
      append(ops, table ? rewriteTable(table) : deleteTable(family, name, false));
    }
  }
  return ops;
}

/**
 * The steps that turn tables holding `previous` into `desired`, touching only the elements and
 * chains that differ (affinity sets that did not change keep their content); none when nothing does.
 */
export function proxyChangeOps(previous: ProxyRuleset, desired: ProxyRuleset): ProxyOp[] {
  const ops: ProxyOp[] = [];
  for (const family of FAMILIES) {
    for (const name of PROXY_TABLE_NAMES) {
      const ref = tableRef(family, name);
      const [before, after] = [previous.tables.get(ref), desired.tables.get(ref)];
      if (!after) {
        if (before) append(ops, deleteTable(family, name, true));
      } else if (!before || !sameBaseChains(before, after)) {
        append(ops, rewriteTable(after));
      } else {
        append(ops, tableChange(before, after));
      }
    }
  }
  return ops;
}

/** `proxyFullOps` as an `nft -f` script. */
export function renderProxyFull(desired: ProxyRuleset): string {
  return renderProxyOps(proxyFullOps(desired), "# trellis-proxy: whole rewrite in one transaction; affinity sets restart empty, so clients may change endpoint once");
}

/** `proxyChangeOps` as an `nft -f` script; "" when nothing changes. */
export function renderProxyChange(previous: ProxyRuleset, desired: ProxyRuleset): string {
  return renderProxyOps(proxyChangeOps(previous, desired));
}

/** Steps as an `nft -f` script, one line each (every name and value checked); "" for none. */
export function renderProxyOps(ops: readonly ProxyOp[], header?: string): string {
  if (!ops.length && header === undefined) return "";
  const lines = header === undefined ? [] : [header];
  for (const op of ops) lines.push(opLine(op));
  return lines.join("\n") + "\n";
}

function opLine(op: ProxyOp): string {
  const t = tableRef(op.family, checkedName("table", op.table));
  switch (op.op) {
    case "add table":
    case "delete table":
      return `${op.op} ${t}`;
    case "add chain":
      return addChainLine(t, op.name, op.base);
    case "flush chain":
    case "delete chain":
      return `${op.op} ${t} ${checkedName("chain", op.name)}`;
    case "add rule":
      return addRuleLine(t, op.chain, op.rule);
    case "add set":
      return addSetLine(t, op.name, op.set);
    case "delete set":
      return `delete ${op.kind} ${t} ${checkedName("set", op.name)}`;
    case "add element":
    case "delete element":
      return elementLine(op.op === "add element" ? "add" : "delete", t, op.name, op.elements, op.op === "add element" ? op.set.kind : "set");
  }
}

/** Chains, rules and set/map elements per family, for metrics. */
export function proxyRulesetCounts(ruleset: ProxyRuleset): ProxyCounts[] {
  const counts = new Map<Family, { family: Family; chains: number; rules: number; elements: number }>();
  for (const table of ruleset.tables.values()) {
    const count = counts.get(table.family) ?? { family: table.family, chains: 0, rules: 0, elements: 0 };
    count.chains += table.chains.size;
    for (const chain of table.chains.values()) count.rules += chain.length;
    for (const set of table.sets.values()) count.elements += set.elements.size;
    counts.set(table.family, count);
  }
  return FAMILIES.flatMap((family) => counts.get(family) ?? []);
}

interface PortNames {
  /** `namespace/name/protocol/portName`: unique per port, and only [a-z0-9/-]. */
  readonly id: string;
  readonly protocol: string;
  readonly cluster: string;
  readonly local: string;
  readonly external: string;
  /** `HASH-id`: the hash makes chains of different ports look different at a glance. */
  readonly base: string;
  /** The shard table the port lives in: 0 to SHARDS-1, from the same hash. */
  readonly shard: number;
}

interface TableDraft {
  readonly family: Family;
  readonly name: string;
  readonly baseChains: ReadonlyMap<string, ProxyBaseChain>;
  readonly chains: Map<string, readonly string[]>;
  readonly sets: Map<string, ProxySet & { readonly elements: Map<string, string> }>;
}

/** The front table of a family: refusals of what has no endpoint, and masquerade. */
function frontTable(family: Family, node: ProxyNode): TableDraft {
  const ip = PAYLOAD[family];
  const address = ADDRESS_TYPE[family];
  const chains = new Map<string, readonly string[]>([
    ["nat-postrouting", ["jump masquerading"]],
    ["filter-input", ["ct state new jump nodeport-endpoints-check", "ct state new jump service-endpoints-check"]],
    ["filter-forward", ["ct state new jump service-endpoints-check"]],
    ["filter-output", ["ct state new jump service-endpoints-check"]],
    ["service-endpoints-check", [`${ip} daddr . meta l4proto . th dport vmap @no-endpoint-services`]],
    ["nodeport-endpoints-check", [`${ip} daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports`]],
    // A TCP client gets a reset and fails at once; UDP and SCTP get ICMP port unreachable.
    ["reject-chain", ["meta l4proto tcp reject with tcp reset", "reject"]],
    ["masquerading", [`meta mark & ${MARK} == 0 return`, `meta mark set meta mark ^ ${MARK}`, "masquerade fully-random"]],
  ]);
  const sets = new Map<string, ProxySet & { elements: Map<string, string> }>([
    ["nodeport-ips", set("set", address, [], nodePortAddresses(family, node))],
    ["no-endpoint-services", set("map", `${address} . inet_proto . inet_service : verdict`, [], [])],
    ["no-endpoint-nodeports", set("map", "inet_proto . inet_service : verdict", [], [])],
  ]);
  return { family, name: PROXY_TABLE, baseChains: FRONT_BASE_CHAINS, chains, sets };
}

/** A shard table of a family: NAT hooks dispatching to its Service ports' chains. */
function shardTable(family: Family, node: ProxyNode, name: string): TableDraft {
  const ip = PAYLOAD[family];
  const address = ADDRESS_TYPE[family];
  const chains = new Map<string, readonly string[]>([
    ["nat-prerouting", ["jump services"]],
    ["nat-output", ["jump services"]],
    ["services", [
      `${ip} daddr . meta l4proto . th dport vmap @service-ips`,
      `${ip} daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports`,
    ]],
    ["mark-for-masquerade", [`meta mark set meta mark | ${MARK}`]],
  ]);
  const podCidrs = mergePrefixes(node.podCidrs.filter((prefix) => prefix.family === family));
  const sets = new Map<string, ProxySet & { elements: Map<string, string> }>([
    ["pod-cidrs", set("set", address, ["interval"], podCidrs.map(formatPrefix))],
    ["own-pod-cidrs", set("set", address, ["interval"], mergePrefixes((node.ownPodCidrs ?? []).filter((prefix) => prefix.family === family)).map(formatPrefix))],
    ["nodeport-ips", set("set", address, [], nodePortAddresses(family, node))],
    ["service-ips", set("map", `${address} . inet_proto . inet_service : verdict`, [], [])],
    ["service-nodeports", set("map", "inet_proto . inet_service : verdict", [], [])],
  ]);
  return { family, name, baseChains: SHARD_BASE_CHAINS, chains, sets };
}

/** The node's addresses NodePorts answer on. Loopback never: a NodePort on 127.0.0.1 would be reachable by anything that can reach localhost. */
function nodePortAddresses(family: Family, node: ProxyNode): string[] {
  return uniqueAddresses(node.addresses.filter((ip) => ip.family === family && specialRangeOf(ip)?.use !== "loopback")).map(formatIp);
}

function set(kind: "set" | "map", type: string, flags: string[], keys: string[]): ProxySet & { elements: Map<string, string> } {
  return { kind, type, flags, elements: new Map(keys.map((key) => [key, ""])) };
}

/** One port's elements and chains in one family's table (nothing when it has no ClusterIP there). */
function addServicePort(table: TableDraft, family: Family, node: ProxyNode, port: ProxyServicePort, names: PortNames): void {
  const inFamily = (ip: IpAddress) => ip.family === family;
  const clusterIPs = uniqueAddresses(port.clusterIPs.filter(inFamily));
  if (!clusterIPs.length) return;
  const ip = PAYLOAD[family];
  const externalIPs = uniqueAddresses([...port.externalIPs, ...port.loadBalancerIPs].filter(inFamily));
  const endpoints = uniqueEndpoints(port.endpoints.filter((endpoint) => inFamily(endpoint.address)));
  const clusterEndpoints = usableEndpoints(endpoints);
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
  const externalNoEndpoint = hasEndpoints ? "drop" : REJECT;

  const serviceIps = table.sets.get("service-ips")!.elements;
  const noEndpointServices = table.sets.get("no-endpoint-services")!.elements;
  for (const clusterIP of clusterIPs) {
    const key = `${formatIp(clusterIP)} . ${names.protocol} . ${port.port}`;
    if (hasInternalEndpoints) claim(serviceIps, key, `goto ${internalChain}`);
    else claim(noEndpointServices, key, REJECT);
  }
  for (const externalIP of externalIPs) {
    const key = `${formatIp(externalIP)} . ${names.protocol} . ${port.port}`;
    if (usesExternalChain) claim(serviceIps, key, `goto ${names.external}`);
    if (!hasExternalEndpoints) claim(noEndpointServices, key, externalNoEndpoint);
  }
  if (port.nodePort !== undefined) {
    const key = `${names.protocol} . ${port.nodePort}`;
    if (usesExternalChain) claim(table.sets.get("service-nodeports")!.elements, key, `goto ${names.external}`);
    if (!hasExternalEndpoints) claim(table.sets.get("no-endpoint-nodeports")!.elements, key, externalNoEndpoint);
  }

  const affinity = port.sessionAffinityTimeoutSeconds;
  const nameParts = new Map(endpoints.map((endpoint) => [endpoint, `${names.base}__${endpointNamePart(endpoint)}`]));
  const endpointChain = (endpoint: ProxyEndpoint) => `ep-${nameParts.get(endpoint)}`;
  const affinitySet = (endpoint: ProxyEndpoint) => `aff-${nameParts.get(endpoint)}`;
  // Off-cluster clients of a ClusterIP (a node routing the service CIDR to us) are masqueraded,
  // so that replies come back through this node to be un-DNATed.
  const masqueradeOffCluster = clusterIPs.map((clusterIP) => `${ip} daddr ${formatIp(clusterIP)} ${ip} saddr != @pod-cidrs jump mark-for-masquerade`);
  const dispatch = (chosen: readonly ProxyEndpoint[]) => [
    ...(affinity === undefined ? [] : chosen.map((endpoint) => `${ip} saddr @${affinitySet(endpoint)} goto ${endpointChain(endpoint)}`)),
    ...chosen.map((endpoint, i) => (i < chosen.length - 1 ? `numgen random mod ${chosen.length - i} == 0 ` : "") + `goto ${endpointChain(endpoint)}`),
  ];

  if (usesClusterChain) addChain(table, names.cluster, [...(internalLocal ? [] : masqueradeOffCluster), ...dispatch(clusterEndpoints)]);
  if (usesLocalChain) addChain(table, names.local, [...(internalLocal ? masqueradeOffCluster : []), ...dispatch(localEndpoints)]);
  if (usesExternalChain) {
    addChain(table, names.external, externalLocal
      ? [
          // Pods and the node itself reach external addresses as if through an outside load
          // balancer: any endpoint will do. The node's own source would be a local address
          // the endpoint cannot answer, so it is masqueraded; the others keep their source.
          `${ip} saddr @pod-cidrs goto ${names.cluster}`,
          "fib saddr type local jump mark-for-masquerade",
          `fib saddr type local goto ${names.cluster}`,
          ...(hasLocal ? [`goto ${names.local}`] : []),
        ]
      : [
          // Clients are masqueraded, so that replies come back through this node to be
          // un-DNATed; other nodes' pods too: the endpoint may be on a third node, and a pod's
          // own address would send the reply straight to the pod's node, past this one (seen:
          // the upstream NodePort session affinity specs). This node's own pods keep their
          // address: their replies pass here anyway.
          `${ip} saddr != @own-pod-cidrs jump mark-for-masquerade`,
          `goto ${names.cluster}`,
        ]);
  }
  const reachable = new Map<string, ProxyEndpoint>();
  for (const endpoint of [...(usesClusterChain ? clusterEndpoints : []), ...(usesLocalChain ? localEndpoints : [])]) reachable.set(endpointChain(endpoint), endpoint);
  for (const [chain, endpoint] of reachable) {
    const address = formatIp(endpoint.address);
    const destination = family === 4 ? `${address}:${endpoint.port}` : `[${address}]:${endpoint.port}`;
    if (affinity !== undefined) {
      addSet(table, affinitySet(endpoint), { kind: "set", type: ADDRESS_TYPE[family], flags: ["dynamic", "timeout"], timeoutSeconds: affinity, elements: new Map() });
    }
    addChain(table, chain, [
      // Hairpin: an endpoint reaching itself through the Service must see another source.
      `${ip} saddr ${address} jump mark-for-masquerade`,
      ...(affinity === undefined ? [] : [`update @${affinitySet(endpoint)} { ${ip} saddr }`]),
      `meta l4proto ${names.protocol} dnat to ${destination}`,
    ]);
  }
}

/** Ready endpoints; when none is, the ones still serving while terminating. */
function usableEndpoints(endpoints: readonly ProxyEndpoint[]): ProxyEndpoint[] {
  const ready = endpoints.filter((endpoint) => endpoint.ready);
  return ready.length ? ready : endpoints.filter((endpoint) => endpoint.serving && endpoint.terminating);
}

/** Sorted by address and port, one per address and port (a ready one when there is). */
function uniqueEndpoints(endpoints: readonly ProxyEndpoint[]): ProxyEndpoint[] {
  const sorted = [...endpoints].sort((a, b) => compareAddress(a.address, b.address) || a.port - b.port || Number(b.ready) - Number(a.ready));
  return sorted.filter((endpoint, i) => i === 0 || compareAddress(endpoint.address, sorted[i - 1].address) !== 0 || endpoint.port !== sorted[i - 1].port);
}

function uniqueAddresses(addresses: readonly IpAddress[]): IpAddress[] {
  const sorted = [...addresses].sort(compareAddress);
  return sorted.filter((ip, i) => i === 0 || compareAddress(ip, sorted[i - 1]) !== 0);
}

/**
 * An endpoint in a chain name: nft names allow [A-Za-z0-9_./-], so IPv6's colons become "_"
 * ("." would make ::ffff:1.2.3.4 and ::ffff:1:2:3:4 one name), then "/PORT".
 */
function endpointNamePart(endpoint: ProxyEndpoint): string {
  return `${formatIp(endpoint.address).replaceAll(":", "_")}/${endpoint.port}`;
}

function claim(elements: Map<string, string>, key: string, value: string): void {
  if (!elements.has(key)) elements.set(key, value);
}

function addChain(table: TableDraft, name: string, rules: readonly string[]): void {
  assertName("chain", name);
  table.chains.set(name, rules);
}

function addSet(table: TableDraft, name: string, definition: ProxySet & { elements: Map<string, string> }): void {
  assertName("set", name);
  table.sets.set(name, definition);
}

function rewriteTable(table: ProxyTable): ProxyOp[] {
  const { family, name: tableName } = table;
  const t = { family, table: tableName };
  const ops: ProxyOp[] = [{ op: "add table", ...t }, { op: "delete table", ...t }, { op: "add table", ...t }];
  for (const name of table.chains.keys()) ops.push({ op: "add chain", ...t, name, base: table.baseChains.get(name) });
  for (const [name, set] of table.sets) ops.push({ op: "add set", ...t, name, set });
  for (const [chain, rules] of table.chains) for (const rule of rules) ops.push({ op: "add rule", ...t, chain, rule });
  for (const [name, set] of table.sets) {
    if (set.elements.size) ops.push({ op: "add element", ...t, name, set, elements: [...set.elements] });
  }
  return ops;
}

/** `add` first, so that the delete succeeds whether or not the table exists (unless it certainly does). */
function deleteTable(family: Family, table: string, exists: boolean): ProxyOp[] {
  return exists ? [{ op: "delete table", family, table }] : [{ op: "add table", family, table }, { op: "delete table", family, table }];
}

/**
 * Order matters to the kernel: objects exist before anything points to them, and nothing points
 * to an object when it is deleted (a chain referenced by a rule or a map element is busy).
 */
function tableChange(before: ProxyTable, after: ProxyTable): ProxyOp[] {
  const family = after.family;
  const table = after.name;
  const newChains = [...after.chains.keys()].filter((name) => !before.chains.has(name));
  const removedChains = [...before.chains.keys()].filter((name) => !after.chains.has(name));
  const newSets = [...after.sets.keys()].filter((name) => !before.sets.has(name));
  const removedSets = [...before.sets.keys()].filter((name) => !after.sets.has(name));
  // A set's type, flags or timeout cannot be changed in place: it is deleted and created again,
  // after the chains that refer to it are emptied.
  const redefinedSets = new Set([...after.sets].filter(([name, definition]) => {
    const old = before.sets.get(name);
    return old !== undefined && !sameSetDefinition(old, definition);
  }).map(([name]) => name));
  const rewritten = new Set<string>();
  for (const [name, rules] of after.chains) {
    const old = before.chains.get(name);
    if (old && (!sameList(old, rules) || (redefinedSets.size > 0 && old.some((rule) => refersToAny(rule, redefinedSets))))) rewritten.add(name);
  }

  const ops: ProxyOp[] = [];
  for (const name of newChains) ops.push({ op: "add chain", family, table, name, base: after.baseChains.get(name) });
  for (const name of newSets) ops.push({ op: "add set", family, table, name, set: after.sets.get(name)! });
  for (const name of [...rewritten, ...removedChains]) ops.push({ op: "flush chain", family, table, name });
  for (const [name, set] of after.sets) {
    const old = before.sets.get(name);
    if (!old || redefinedSets.has(name) || old.elements === set.elements) continue;
    const stale = [...old.elements].filter(([key, value]) => set.elements.get(key) !== value).map(([key]) => [key, ""] as const);
    if (stale.length) ops.push({ op: "delete element", family, table, name, set: old, elements: stale });
  }
  for (const name of redefinedSets) {
    ops.push({ op: "delete set", family, table, name, kind: before.sets.get(name)!.kind }, { op: "add set", family, table, name, set: after.sets.get(name)! });
  }
  for (const chain of [...newChains, ...rewritten]) for (const rule of after.chains.get(chain)!) ops.push({ op: "add rule", family, table, chain, rule });
  for (const [name, set] of after.sets) {
    const old = before.sets.get(name);
    const fresh = !old || redefinedSets.has(name);
    if (!fresh && old.elements === set.elements) continue;
    const added = [...set.elements].filter(([key, value]) => fresh || old!.elements.get(key) !== value);
    if (added.length) ops.push({ op: "add element", family, table, name, set, elements: added });
  }
  // Maps go before chains: a removed map's elements may point to removed chains.
  for (const name of removedSets) ops.push({ op: "delete set", family, table, name, kind: before.sets.get(name)!.kind });
  for (const name of removedChains) ops.push({ op: "delete chain", family, table, name });
  return ops;
}

/** `ip trellis-proxy-3`: how nft names a table, and the key of ProxyRuleset.tables. */
function tableRef(family: Family, name: string): string {
  return `${PAYLOAD[family]} ${name}`;
}

function addChainLine(t: string, name: string, base: ProxyBaseChain | undefined): string {
  const hook = base ? ` { type ${base.type} hook ${base.hook} priority ${checkedInteger("chain priority", base.priority, -1000, 1000)}; policy accept; }` : "";
  return `add chain ${t} ${checkedName("chain", name)}${hook}`;
}

function addSetLine(t: string, name: string, definition: ProxySet): string {
  const parts = [`type ${checkedText("set type", definition.type)};`];
  if (definition.flags.length) parts.push(`flags ${definition.flags.map((flag) => checkedName("set flag", flag)).join(",")};`);
  if (definition.timeoutSeconds !== undefined) parts.push(`timeout ${checkedInteger("set timeout", definition.timeoutSeconds, 1, MAX_AFFINITY_SECONDS)}s;`);
  return `add ${definition.kind} ${t} ${checkedName("set", name)} { ${parts.join(" ")} }`;
}

function addRuleLine(t: string, chain: string, rule: string): string {
  return `add rule ${t} ${checkedName("chain", chain)} ${checkedText("rule", rule)}`;
}

function elementLine(verb: "add" | "delete", t: string, name: string, elements: ReadonlyArray<readonly [string, string]>, kind: "set" | "map"): string {
  const items = elements.map(([key, value]) => (kind === "map" ? `${checkedElement(key)} : ${checkedElement(value)}` : checkedElement(key)));
  return `${verb} element ${t} ${checkedName("set", name)} { ${items.join(", ")} }`;
}

function sameBaseChains(a: ProxyTable, b: ProxyTable): boolean {
  if (a.baseChains.size !== b.baseChains.size) return false;
  for (const [name, base] of a.baseChains) {
    const other = b.baseChains.get(name);
    if (!other || other.type !== base.type || other.hook !== base.hook || other.priority !== base.priority) return false;
  }
  return true;
}

function sameSetDefinition(a: ProxySet, b: ProxySet): boolean {
  return a.kind === b.kind && a.type === b.type && a.timeoutSeconds === b.timeoutSeconds && sameList(a.flags, b.flags);
}

function refersToAny(rule: string, sets: ReadonlySet<string>): boolean {
  for (const match of rule.matchAll(/@([A-Za-z0-9_./-]+)/g)) if (sets.has(match[1])) return true;
  return false;
}

/** Spread arguments overflow the stack for the hundreds of thousands of steps of a large cluster. */
function append<T>(list: T[], more: readonly T[]): void {
  for (const item of more) list.push(item);
}

function sameList(a: readonly string[], b: readonly string[]): boolean {
  return a === b || (a.length === b.length && a.every((item, i) => item === b[i]));
}

function compareAddress(a: IpAddress, b: IpAddress): number {
  return a.family - b.family || (a.value < b.value ? -1 : a.value > b.value ? 1 : 0);
}

function compareText(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

function portNames(namespace: string, name: string, protocol: ServiceProtocol, portName: string): PortNames {
  const lower = protocol.toLowerCase();
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

function validateNode(node: ProxyNode): void {
  for (const ip of node.addresses) checkedAddress(`node ${node.name} address`, ip);
  for (const prefix of [...node.podCidrs, ...(node.ownPodCidrs ?? [])]) {
    const bits = familyBits(prefix.family);
    if (!Number.isInteger(prefix.length) || prefix.length < 0 || prefix.length > bits) throw new Error(`pod CIDR of node ${node.name} has length ${prefix.length}: expected 0-${bits}`);
    checkedAddress(`pod CIDR of node ${node.name}`, { family: prefix.family, value: prefix.network });
  }
}

/** Throws, naming the value, when a port could not go into the ruleset (a name nft refuses, a port out of range, ...). */
export function checkServicePort(port: ProxyServicePort): void {
  validatePort(port);
}

function validatePort(port: ProxyServicePort): PortNames {
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

function checkedAddress(what: string, ip: IpAddress): IpAddress {
  if ((ip.family !== 4 && ip.family !== 6) || typeof ip.value !== "bigint" || ip.value < 0n || ip.value >> BigInt(familyBits(ip.family)) !== 0n) {
    throw new Error(`${what}: ${String(ip.value)} is not an IPv${ip.family} address`);
  }
  return ip;
}

function checkedInteger(what: string, value: number, min: number, max: number): number {
  if (!Number.isInteger(value) || value < min || value > max) throw new Error(`${what} ${value} is outside ${min}-${max}`);
  return value;
}

function assertName(what: string, name: string): void {
  if (name.length > NAME_MAX || !NAME.test(name)) {
    throw new Error(`nftables ${what} name ${JSON.stringify(name)} is not allowed: expected at most ${NAME_MAX} of [A-Za-z0-9_./-], starting with a letter, "_" or "."`);
  }
}

function checkedName(what: string, name: string): string {
  assertName(what, name);
  return name;
}

/** Rule and type text: one line, and nothing that ends a statement or starts a comment. */
function checkedText(what: string, text: string): string {
  if (!text || /[\n\r;#]/.test(text)) throw new Error(`nftables ${what} ${JSON.stringify(text)} is not allowed: expected one statement on one line`);
  return text;
}

/** Element keys and values: addresses, protocols, numbers, "." and ":" separators, verdicts. */
function checkedElement(text: string): string {
  if (!/^[A-Za-z0-9_.:/ -]+$/.test(text)) throw new Error(`nftables element ${JSON.stringify(text)} is not allowed: expected addresses, protocols, ports and verdicts`);
  return text;
}
