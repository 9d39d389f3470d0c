/**
 * Masquerade of pod traffic that leaves the cluster, as data: one nftables chain per network,
 * jumped to from one postrouting chain. A chain holds a rule per family: traffic from the
 * network's pod subnets to anywhere but its exclusions (pod subnets, cluster CIDRs, multicast)
 * leaves with the node's address. What the kernel holds is parsed into the same shape and
 * compared as address intervals, so nftables merging adjacent prefixes changes nothing.
 *
 * The CNI's table (one per state directory) is written whole, through the nftables model:
 *
 *   table inet trellis-cni
 *     set masq-blue-src-ip  { ipv4_addr, interval }   the network's pod subnets
 *     set masq-blue-dst-ip  { ipv4_addr, interval }   its exclusions, multicast aside
 *     (and -src-ip6, -dst-ip6)
 *     chain postrouting { nat hook postrouting priority 100 }
 *       jump masq-blue
 *     chain masq-blue
 *       ip saddr @masq-blue-src-ip ip daddr != @masq-blue-dst-ip ip daddr != 224.0.0.0/4 masquerade
 *       ip6 saddr @masq-blue-src-ip6 ip6 daddr != @masq-blue-dst-ip6 ip6 daddr != ff00::/8 masquerade
 *
 * The agent's own table (`trellis-agent`, its pods' masquerade) is written the same way, when its
 * exclusions change or a check of its chains and sets finds them otherwise.
 */
import {
  formatPrefix, intervalPrefixes, mergeIntervals, parsePrefix, prefixInterval, subtractInterval, tryParseIp, type Family, type IpInterval, type IpPrefix,
} from "../net/ip.js";
import { deleteTable, rewriteTable } from "../nft/diff.js";
import { addressField, addressType, jump, newSet, payloadOf, rule, verdictRule, type NftSet, type Op, type Rule, type Table } from "../nft/model.js";

/** What one attachment asks for; a network's chain is the union of its attachments'. */
export interface MasqueradeContribution {
  readonly network: string;
  readonly sources: readonly IpPrefix[];
  readonly exclusions: readonly IpPrefix[];
}

export interface MasqueradeRule {
  readonly family: Family;
  readonly sources: readonly IpInterval[];
  readonly exclusions: readonly IpInterval[];
}

/** A rule nftables holds that is not one Trellis writes. */
export interface ForeignRule {
  readonly family: "unknown";
}

export interface MasqueradeTable {
  /** Network chains by name, each with its rules in order. */
  readonly chains: ReadonlyMap<string, ReadonlyArray<MasqueradeRule | ForeignRule>>;
  /** Targets of the postrouting chain's jumps, in order ("" for a rule that is not a jump). */
  readonly jumps: readonly string[];
  /** Whether the postrouting chain exists with the nat hook Trellis gives it. */
  readonly hooked: boolean;
}

export const BASE_CHAIN = "postrouting";
/**
 * Never masqueraded, as the reference plugins' ipMasq leaves it. In the CNI's table it is a test
 * of its own, not in the exclusion set: ff00::/8 holds IPv6's last address, and nft/netlink.ts
 * cannot write an interval that reaches the end of the address space (nft writes its start
 * alone).
 */
const MULTICAST: Record<Family, IpPrefix> = { 4: parsePrefix("224.0.0.0/4"), 6: parsePrefix("ff00::/8") };
/**
 * IPv4's last address is in no interval, for the same reason: 255.255.255.255 is limited
 * broadcast, which no pod holds and no router forwards, so a rule about it changes nothing.
 */
const LAST_IPV4: IpInterval = { family: 4, first: 0xffffffffn, last: 0xffffffffn };
const PAYLOAD_FAMILY: Record<Family, string> = { 4: "ip", 6: "ip6" };

export function masqueradeChainName(network: string): string {
  return `masq-${network}`;
}

/** The desired table for these attachments (empty chains map: the table should not exist). */
export function desiredMasquerade(contributions: readonly MasqueradeContribution[]): MasqueradeTable {
  const byNetwork = new Map<string, { sources: IpPrefix[]; exclusions: IpPrefix[] }>();
  for (const contribution of contributions) {
    const entry = byNetwork.get(contribution.network) ?? { sources: [], exclusions: [] };
    entry.sources.push(...contribution.sources);
    entry.exclusions.push(...contribution.exclusions);
    byNetwork.set(contribution.network, entry);
  }
  const chains = new Map<string, MasqueradeRule[]>();
  for (const network of [...byNetwork.keys()].sort()) {
    const { sources, exclusions } = byNetwork.get(network)!;
    const rules: MasqueradeRule[] = [];
    for (const family of [4, 6] as const) {
      const from = sources.filter((prefix) => prefix.family === family);
      if (!from.length) continue;
      const to = [...exclusions.filter((prefix) => prefix.family === family), MULTICAST[family]];
      rules.push({ family, sources: writableIntervals(from), exclusions: writableIntervals(to) });
    }
    chains.set(masqueradeChainName(network), rules);
  }
  return { chains, jumps: [...chains.keys()], hooked: true };
}

/**
 * The CNI's table as nftables data (drawn at the top of this file); undefined when no chain is
 * wanted. Network names are at most 200 characters (cni/config.ts), so the longest set name,
 * masq-NAME-dst-ip6, has 213: within nft's 255, with no need to hash it. No set suffix ends
 * another, so two networks never name the same set.
 */
export function masqueradeNftTable(table: string, desired: MasqueradeTable): Table | undefined {
  if (desired.chains.size === 0) return undefined;
  const chains = new Map<string, readonly Rule[]>([[BASE_CHAIN, desired.jumps.map((target) => verdictRule([], jump(target)))]]);
  const sets = new Map<string, NftSet>();
  for (const [name, rules] of desired.chains) {
    chains.set(name, rules.flatMap((want) => {
      if (want.family === "unknown") return [];
      const { family } = want;
      const [source, destination] = [`${name}-src-${payloadOf(family)}`, `${name}-dst-${payloadOf(family)}`];
      const definition = { kind: "set", key: [addressType(family)], flags: ["interval"] } as const;
      const elements = (intervals: readonly IpInterval[]) => intervals.flatMap(intervalPrefixes).map((prefix) => ({ key: [prefix] }));
      sets.set(source, newSet(definition, elements(want.sources)));
      sets.set(destination, newSet(definition, elements(subtractInterval(want.exclusions, prefixInterval(MULTICAST[family])))));
      const daddr = addressField(family, "daddr");
      return [rule([
        { match: "in set", key: [addressField(family, "saddr")], set: source },
        { match: "in set", key: [daddr], set: destination, negate: true },
        { match: "address", field: daddr, value: MULTICAST[family], negate: true },
      ], { statement: "masquerade" })];
    }));
  }
  return { family: "inet", name: table, baseChains: new Map([[BASE_CHAIN, { type: "nat", hook: "postrouting", priority: 100 }]]), chains, sets };
}

/** The steps that make the CNI's table what `desired` says, written whole (or removed) whether or not it exists. */
export function masqueradeOps(table: string, desired: MasqueradeTable): Op[] {
  const model = masqueradeNftTable(table, desired);
  return model ? rewriteTable(model) : deleteTable("inet", table, false);
}

/**
 * Parses `nft -j list table inet TABLE` (its `nftables` array); undefined when the table is
 * absent. Reads both forms: sets given in the rule, and named sets (`"@NAME"`, their elements
 * in the table's `set` objects). A rule's tests of the destination exclude their union.
 */
export function parseMasqueradeTable(nftables: readonly unknown[] | undefined): MasqueradeTable | undefined {
  if (!nftables) return undefined;
  const chains = new Map<string, Array<MasqueradeRule | ForeignRule>>();
  const sets = new Map<string, unknown[]>();
  const jumps: string[] = [];
  let hooked = false;
  for (const item of nftables) {
    const chain = field(item, "chain");
    if (chain && typeof chain.name === "string") {
      if (chain.name === BASE_CHAIN) hooked = chain.type === "nat" && chain.hook === "postrouting" && chain.prio === 100 && chain.policy === "accept";
      else chains.set(chain.name, chains.get(chain.name) ?? []);
    }
    const set = field(item, "set");
    if (set && typeof set.name === "string") sets.set(set.name, Array.isArray(set.elem) ? set.elem : []);
  }
  for (const item of nftables) {
    const rule = field(item, "rule");
    if (!rule || typeof rule.chain !== "string" || !Array.isArray(rule.expr)) continue;
    if (rule.chain === BASE_CHAIN) {
      const jump = rule.expr.length === 1 ? field(rule.expr[0], "jump") : undefined;
      jumps.push(jump && typeof jump.target === "string" ? jump.target : "");
    } else {
      chains.get(rule.chain)?.push(parseMasqueradeRule(rule.expr, sets));
    }
  }
  return { chains, jumps, hooked };
}

/**
 * Whether the kernel's table (`observed`, parsed from a listing of the desired chains and their
 * sets) holds what `desired` says: the hook, each chain's rules as address intervals, the jumps.
 */
export function masqueradeMatches(desired: MasqueradeTable, observed: MasqueradeTable | undefined): boolean {
  if (desired.chains.size === 0) return observed === undefined;
  if (!observed || !observed.hooked || !sameList(observed.jumps, desired.jumps)) return false;
  for (const [name, rules] of desired.chains) {
    const current = observed.chains.get(name);
    if (!current || !sameRules(current, rules)) return false;
  }
  return true;
}

/** What differs for one network's chain; empty when the kernel holds exactly the desired chain and its jump. */
export function masqueradeProblems(table: string, network: string, desired: MasqueradeTable, observed: MasqueradeTable | undefined): string[] {
  const name = masqueradeChainName(network);
  const want = desired.chains.get(name);
  if (!want) return [];
  if (!observed) return [`nftables table inet ${table} is missing`];
  const problems: string[] = [];
  if (!observed.hooked) problems.push(`chain ${BASE_CHAIN} of inet ${table} is missing or not a nat postrouting hook`);
  const have = observed.chains.get(name);
  if (!have) return [...problems, `masquerade chain ${name} of inet ${table} is missing`];
  if (!observed.jumps.includes(name)) problems.push(`chain ${BASE_CHAIN} of inet ${table} does not jump to ${name}`);
  if (observed.jumps.includes("")) problems.push(`chain ${BASE_CHAIN} of inet ${table} holds a rule Trellis did not write`);
  if (!sameRules(have, want)) problems.push(`masquerade chain ${name} of inet ${table} holds ${describeRules(have)}; expected ${describeRules(want)}`);
  return problems;
}

function renderRule(rule: MasqueradeRule): string {
  const family = PAYLOAD_FAMILY[rule.family];
  return `${family} saddr { ${renderIntervals(rule.sources)} } ${family} daddr != { ${renderIntervals(rule.exclusions)} } masquerade`;
}

function renderIntervals(intervals: readonly IpInterval[]): string {
  return intervals.flatMap(intervalPrefixes).map(formatPrefix).join(", ");
}

function describeRules(rules: ReadonlyArray<MasqueradeRule | ForeignRule>): string {
  if (!rules.length) return "no rules";
  return rules.map((rule) => (rule.family === "unknown" ? "a rule Trellis did not write" : renderRule(rule))).join("; ");
}

function parseMasqueradeRule(expr: unknown[], sets: ReadonlyMap<string, unknown[]>): MasqueradeRule | ForeignRule {
  const foreign: ForeignRule = { family: "unknown" };
  const last = expr[expr.length - 1];
  if (expr.length < 3 || typeof last !== "object" || last === null || !("masquerade" in last)) return foreign;
  const source = parseMatch(expr[0], "saddr", "==", sets);
  if (!source) return foreign;
  const exclusions: IpInterval[] = [];
  for (const item of expr.slice(1, -1)) {
    const destination = parseMatch(item, "daddr", "!=", sets);
    if (!destination || destination.family !== source.family) return foreign;
    exclusions.push(...destination.intervals);
  }
  return { family: source.family, sources: source.intervals, exclusions: mergeIntervals(exclusions) };
}

/** `FIELD OP ADDRESS`, `FIELD OP { ELEMENTS }` or `FIELD OP @SET`. */
function parseMatch(item: unknown, fieldName: string, op: string, sets: ReadonlyMap<string, unknown[]>): { family: Family; intervals: IpInterval[] } | undefined {
  const match = field(item, "match");
  const payload = match && field(match.left, "payload");
  if (!match || match.op !== op || !payload || payload.field !== fieldName) return undefined;
  const family: Family | undefined = payload.protocol === "ip" ? 4 : payload.protocol === "ip6" ? 6 : undefined;
  if (!family) return undefined;
  const named = typeof match.right === "string" && match.right.startsWith("@") ? sets.get(match.right.slice(1)) : undefined;
  const set = field(match.right, "set");
  const elements = named ?? (Array.isArray(set) ? set : [match.right]);
  const intervals: IpInterval[] = [];
  for (const element of elements) {
    const interval = parseElement(element, family);
    if (!interval) return undefined;
    intervals.push(interval);
  }
  return { family, intervals: mergeIntervals(intervals) };
}

/** A set element: an address, `{prefix: {addr, len}}` or `{range: [a, b]}`. */
function parseElement(element: unknown, family: Family): IpInterval | undefined {
  if (typeof element === "string") {
    const ip = tryParseIp(element);
    return ip && ip.family === family ? { family, first: ip.value, last: ip.value } : undefined;
  }
  const prefix = field(element, "prefix");
  if (prefix && typeof prefix.addr === "string" && typeof prefix.len === "number") {
    const ip = tryParseIp(prefix.addr);
    if (!ip || ip.family !== family) return undefined;
    return prefixInterval({ family, network: ip.value, length: prefix.len });
  }
  const range = field(element, "range");
  if (Array.isArray(range) && range.length === 2 && typeof range[0] === "string" && typeof range[1] === "string") {
    const [first, last] = [tryParseIp(range[0]), tryParseIp(range[1])];
    if (!first || !last || first.family !== family || last.family !== family) return undefined;
    return { family, first: first.value, last: last.value };
  }
  return undefined;
}

function sameRules(a: ReadonlyArray<MasqueradeRule | ForeignRule>, b: ReadonlyArray<MasqueradeRule | ForeignRule>): boolean {
  return a.length === b.length && a.every((rule, i) => {
    const other = b[i];
    if (rule.family === "unknown" || other.family === "unknown") return false;
    return rule.family === other.family && sameIntervals(rule.sources, other.sources) && sameIntervals(rule.exclusions, other.exclusions);
  });
}

function sameIntervals(a: readonly IpInterval[], b: readonly IpInterval[]): boolean {
  const [x, y] = [mergeIntervals(a), mergeIntervals(b)];
  return x.length === y.length && x.every((interval, i) => interval.family === y[i].family && interval.first === y[i].first && interval.last === y[i].last);
}

function sameList(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((item, i) => item === b[i]);
}

function field(value: unknown, key: string): Record<string, any> | undefined {
  if (typeof value !== "object" || value === null) return undefined;
  const inner = (value as Record<string, unknown>)[key];
  return typeof inner === "object" && inner !== null ? (inner as Record<string, any>) : undefined;
}

/** The union of prefixes as intervals the netlink writer can write: none reaching IPv4's last address (see LAST_IPV4). */
function writableIntervals(prefixes: readonly IpPrefix[]): IpInterval[] {
  return subtractInterval(mergeIntervals(prefixes.map(prefixInterval)), LAST_IPV4);
}

