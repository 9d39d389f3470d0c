/**
 * The Service proxy's ruleset (service-rules.ts: the layout) kept up to date port by port, and
 * the steps that write it: whole, or from one ruleset to the next. Pure.
 */
import type { Family } from "../net/ip.js";
import { append, deleteTable, rewriteTable, sameBaseChains, tableChange } from "../nft/diff.js";
import { tableFamilyOf, type Element, type NftSet, type Op, type Table } from "../nft/model.js";
import { renderOps } from "../nft/text.js";
import { compareText, validateNode, validatePort, type ProxyNode, type ProxyServicePort, type PortNames } from "./service-port.js";
import {
  FRONT_MAPS, PROXY_TABLE, PROXY_TABLE_NAMES, SHARED_MAPS, frontTable, portFragment, shardTable, shardTableName, type PortFragment, type TableDraft,
} from "./service-rules.js";

export { checkServicePort, SHARDS, type ProxyEndpoint, type ProxyNode, type ProxyServicePort, type ServiceProtocol } from "./service-port.js";
export { MASQUERADE_MARK, PROXY_TABLE, PROXY_TABLE_NAMES } from "./service-rules.js";

/** A proxy table: the nftables model's. */
export type ProxyTable = Table;
/** One step of a change to the proxy's tables. */
export type ProxyOp = Op;

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

const FAMILIES: readonly Family[] = [4, 6];

/** What one Service port adds to each family's table, worked out once per port object and family. */
interface PortPart {
  readonly names: PortNames;
  readonly families: Map<Family, PortFragment>;
}

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

  /**
   * The state for `ports`, worked out in slices of about `sliceMs` of work, each followed by
   * `pause` (a turn of the event loop unless the caller says otherwise; 10,000 Services' rules
   * take 0.2-0.4 s to work out): the agent goes on answering meanwhile. The result is the
   * constructor's.
   */
  static async build(node: ProxyNode, ports: readonly ProxyServicePort[], sliceMs = 5, pause: () => Promise<void> = () => new Promise<void>((resolve) => setImmediate(resolve))): Promise<ProxyState> {
    validateNode(node);
    const entries: PortEntry[] = [];
    let sliceStart = performance.now();
    for (let i = 0; i < ports.length; i++) {
      const entry = { port: ports[i], part: { names: validatePort(ports[i]), families: new Map() } as PortPart };
      for (const family of FAMILIES) fragmentOf(family, node, entry.port, entry.part);
      entries.push(entry);
      if ((i & 31) === 31 && performance.now() - sliceStart > sliceMs) {
        await pause();
        sliceStart = performance.now();
      }
    }
    return new ProxyState(node, ports, entries);
  }

  /** `prepared`: the ports' entries, fragments worked out (from `build`). */
  constructor(
    readonly node: ProxyNode,
    ports: readonly ProxyServicePort[],
    prepared?: readonly PortEntry[],
  ) {
    validateNode(node);
    const parts = prepared ? [...prepared] : ports.map((port) => ({ port, part: { names: validatePort(port), families: new Map() } as PortPart }));
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
        for (const [name, definition] of fragment.sets) shard.table.sets.set(name, definition as NftSet & { elements: Map<string, Element> });
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
    forgetFragments(parts);
  }

  /**
   * The state for the same ports on a changed node (its addresses, zone or Service CIDRs), and
   * the steps from this state's tables to it: worked out whole, as a node changes rarely.
   */
  withNode(node: ProxyNode): { state: ProxyState; ops: ProxyOp[] } {
    const state = new ProxyState(node, [...this.ports.values()].map((entry) => entry.port));
    return { state, ops: proxyChangeOps(this.ruleset(), state.ruleset()) };
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
    forgetFragments(coming);
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
          family: table.family, name: table.name, baseChains: new Map(), chains: new Map(),
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
        for (const [name, definition] of fragment.sets) draft.sets.set(name, definition as NftSet & { elements: Map<string, Element> });
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
  readonly value: Element;
  /** The table the element goes in when this claim holds the key. */
  readonly table: string;
}

function isEmpty(fragment: PortFragment): boolean {
  return fragment.chains.length === 0 && fragment.sets.length === 0 && fragment.elements.length === 0;
}

function shardRef(family: Family, part: PortPart): string {
  return tableRef(family, shardTableName(part.names.shard));
}


interface PortEntry {
  readonly port: ProxyServicePort;
  readonly part: PortPart;
}

function splitClaim(claimed: string): [string, string] {
  const space = claimed.indexOf(" ");
  return [claimed.slice(0, space), claimed.slice(space + 1)];
}

/**
 * A port's fragments are kept only while its rules are put in place: the tables hold what they
 * need of them, and a port taken out later has them worked out again (as before, from the port
 * and the node alone). Kept, they were 10 MiB at 10,000 Services.
 */
function forgetFragments(entries: Iterable<PortEntry>): void {
  for (const entry of entries) entry.part.families.clear();
}

function fragmentOf(family: Family, node: ProxyNode, port: ProxyServicePort, part: PortPart): PortFragment {
  let fragment = part.families.get(family);
  if (!fragment) {
    fragment = portFragment(family, node, port, part.names);
    part.families.set(family, fragment);
  }
  return fragment;
}

/** `ip trellis-proxy-3`: how nft names a table, and the key of ProxyRuleset.tables. */
function tableRef(family: Family, name: string): string {
  return `${tableFamilyOf(family)} ${name}`;
}

/**
 * The steps that make the tables exactly `desired`, in one transaction, whatever they held
 * before (nothing included). ClientIP affinity is forgotten: the sets are created empty.
 */
export function proxyFullOps(desired: ProxyRuleset): ProxyOp[] {
  const ops: ProxyOp[] = [];
  for (const table of proxyFullOpsByTable(desired)) append(ops, table);
  return ops;
}

/**
 * `proxyFullOps` table by table, each worked out only when asked for: a writer that writes a
 * table per transaction never holds all the steps at once (50,000 at 10,000 Services, 25-80 ms
 * to make in one go).
 */
export function* proxyFullOpsByTable(desired: ProxyRuleset): Generator<ProxyOp[]> {
  for (const family of FAMILIES) {
    for (const name of PROXY_TABLE_NAMES) {
      const table = desired.tables.get(tableRef(family, name));
      yield table ? rewriteTable(table) : deleteTable(tableFamilyOf(family), name, false);
    }
  }
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
        if (before) append(ops, deleteTable(tableFamilyOf(family), name, true));
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
  return renderOps(proxyFullOps(desired), "# trellis-proxy: whole rewrite in one transaction; affinity sets restart empty, so clients may change endpoint once");
}

/** `proxyChangeOps` as an `nft -f` script; "" when nothing changes. */
export function renderProxyChange(previous: ProxyRuleset, desired: ProxyRuleset): string {
  return renderOps(proxyChangeOps(previous, desired));
}

/** Steps as an `nft -f` script, one line each (every name and value checked); "" for none. */
export function renderProxyOps(ops: readonly ProxyOp[], header?: string): string {
  return renderOps(ops, header);
}

/** Chains, rules and set/map elements per family, for metrics. */
export function proxyRulesetCounts(ruleset: ProxyRuleset): ProxyCounts[] {
  const counts = new Map<Family, { family: Family; chains: number; rules: number; elements: number }>();
  for (const table of ruleset.tables.values()) {
    const family: Family = table.family === "ip6" ? 6 : 4;
    const count = counts.get(family) ?? { family, chains: 0, rules: 0, elements: 0 };
    count.chains += table.chains.size;
    for (const chain of table.chains.values()) count.rules += chain.length;
    for (const set of table.sets.values()) count.elements += set.elements.size;
    counts.set(family, count);
  }
  return FAMILIES.flatMap((family) => counts.get(family) ?? []);
}

