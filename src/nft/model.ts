/**
 * nftables as typed data: the tables, chains, sets, maps and rules Trellis writes, and the
 * steps (one transaction's worth) that change them. Rules are typed expressions, not text: the
 * two encodings (text.ts for `nft -f`, netlink.ts for `trellis-nft-batch`) each handle every
 * form here, so a form one of them does not know is a compile-time error, and nothing a
 * cluster object says is ever parsed back out of a rule. Names are checked once, in names.ts.
 */
import { formatIp, type Family, type IpAddress, type IpPrefix } from "../net/ip.js";

/** nft's table families Trellis uses: `ip`, `ip6`, or `inet` for both. */
export type TableFamily = "ip" | "ip6" | "inet";

export type Protocol = "tcp" | "udp" | "sctp";

/** A packet field a rule reads: addresses by family, the layer-4 protocol, transport ports. */
export type Field = "ip saddr" | "ip daddr" | "ip6 saddr" | "ip6 daddr" | "meta l4proto" | "th dport" | "th sport";
export type AddressField = "ip saddr" | "ip daddr" | "ip6 saddr" | "ip6 daddr";

/** The type of a set key's part or of a map's data. */
export type DataType = "ipv4_addr" | "ipv6_addr" | "inet_proto" | "inet_service";

export type Verdict =
  | { readonly verdict: "accept" | "drop" | "return" }
  | { readonly verdict: "jump" | "goto"; readonly chain: string };

/** A conntrack event a connection may make (`ct event set`): what ctnetlink's listeners hear of it. */
export type CtEvent = "new" | "related" | "destroy" | "reply";

/** A conntrack state bit, as `ct state` names it. */
export type CtState = "new" | "established" | "related" | "invalid" | "untracked";

/** A test on the packet; a rule's tests all hold for its statements to run. */
export type Match =
  /** `ip daddr 10.0.0.1`, `ip daddr != 127.0.0.0/8`: an address, or a prefix (its network bits). */
  | { readonly match: "address"; readonly field: AddressField; readonly value: IpAddress | IpPrefix; readonly negate?: boolean }
  /** `meta l4proto tcp` */
  | { readonly match: "protocol"; readonly protocol: Protocol }
  /** `th dport 8080` */
  | { readonly match: "port"; readonly field: "th dport" | "th sport"; readonly port: number }
  /** `th dport 8000-9000`: first to last, both included (a NetworkPolicy's endPort, a port range). */
  | { readonly match: "port range"; readonly field: "th dport" | "th sport"; readonly first: number; readonly last: number }
  /** `ip saddr @set`, `ip saddr . ip daddr . meta l4proto . th dport @set`, `ip saddr != @set` */
  | { readonly match: "in set"; readonly key: readonly Field[]; readonly set: string; readonly negate?: boolean }
  /** `ct state new`, `ct state established,related`: any of the states. */
  | { readonly match: "ct state"; readonly states: readonly CtState[] }
  /** `ct status dnat`: the connection was destination-NATed. */
  | { readonly match: "ct status dnat" }
  /** `numgen random mod MODULUS == VALUE` */
  | { readonly match: "numgen"; readonly modulus: number; readonly value: number }
  /** `fib saddr type local`, `fib daddr type local` */
  | { readonly match: "fib local"; readonly field: "saddr" | "daddr" }
  /** `meta mark & MASK == VALUE` */
  | { readonly match: "mark"; readonly mask: number; readonly value: number };

/** What a rule does once its tests hold; a verdict, a vmap or a NAT ends the rule's work. */
export type Statement =
  | { readonly statement: "verdict"; readonly verdict: Verdict }
  /** `ip daddr . meta l4proto . th dport vmap @map` */
  | { readonly statement: "vmap"; readonly key: readonly Field[]; readonly map: string }
  /** `reject` (ICMP port unreachable), `reject with tcp reset` */
  | { readonly statement: "reject"; readonly tcpReset?: boolean }
  /** `masquerade`, `masquerade fully-random` */
  | { readonly statement: "masquerade"; readonly fullyRandom?: boolean }
  /** `meta mark set meta mark | BITS` (or) and `... ^ BITS` (xor) */
  | { readonly statement: "mark"; readonly op: "or" | "xor"; readonly bits: number }
  /** `update @set { ip saddr }` */
  | { readonly statement: "update"; readonly set: string; readonly key: AddressField }
  /** `dnat ip to 10.0.0.1:80` (in ip and ip6 tables `dnat to`) */
  | { readonly statement: "dnat"; readonly family: Family; readonly address: IpAddress; readonly port: number }
  /**
   * `dnat ip addr . port to numgen random mod N map @MAP`: one of a targets map's addresses and
   * ports (a set whose `targets` is set), uniformly; its elements change without the rule. (No
   * anonymous `map { 0 : A . P }` form: the kernel walks the whole transaction for each anonymous
   * set a rule binds, quadratic in a full write; see dataplane/service-rules.ts.)
   */
  | { readonly statement: "dnat numgen map"; readonly family: Family; readonly modulus: number; readonly map: string }
  /** `counter name "NAME"`: counts into one of the table's named counters (`counters`). */
  | { readonly statement: "counter"; readonly name: string }
  /** `limit rate RATE/second burst BURST packets`: the rest of the rule runs only within the rate. */
  | { readonly statement: "limit"; readonly rate: number; readonly burst: number }
  /** `log prefix "PREFIX" group GROUP`: a copy of the packet's start to nflog group GROUP. */
  | { readonly statement: "log"; readonly prefix: string; readonly group: number }
  /** `ct event set new,reply,destroy`: the only events the connection makes from now on. */
  | { readonly statement: "ct event"; readonly events: readonly CtEvent[] };

export interface Rule {
  readonly match: readonly Match[];
  readonly statements: readonly Statement[];
}

export interface BaseChain {
  readonly type: "nat" | "filter";
  readonly hook: "prerouting" | "input" | "forward" | "output" | "postrouting";
  /** dstnat is -100, filter 0, srcnat 100: numbers, since nft 1.0.6 refuses the name dstnat on the output hook. */
  readonly priority: number;
}

/** One piece of a key: an address (or a prefix, in an interval set), a protocol, a port. */
export type Datum = IpAddress | IpPrefix | Protocol | number;

export interface Element {
  readonly key: readonly Datum[];
  /** A verdict map's value; absent in a set. */
  readonly value?: Verdict;
  /** A targets map's value: address and port. */
  readonly target?: readonly [IpAddress, number];
}

export interface SetDefinition {
  readonly kind: "set" | "map";
  readonly key: readonly DataType[];
  /** Maps only: what elements map to. */
  readonly value?: "verdict";
  /** `interval` (prefixes), `timeout` and `dynamic` (filled by `update`). */
  readonly flags: readonly ("interval" | "timeout" | "dynamic")[];
  readonly timeoutSeconds?: number;
  /**
   * A targets map: `typeof numgen random mod MODULUS : ip daddr . tcp dport` (the protocol's own
   * port: nft cannot print a `th dport` map used after `meta l4proto udp`), keyed by the numgen
   * value (an element's key is [index]), each element's `target` an address and port of
   * `family`. `key` and `value` are then not used.
   */
  readonly targets?: { readonly family: Family; readonly modulus: number; readonly protocol: Protocol };
}

export interface NftSet extends SetDefinition {
  /** By elementId(key): the same key is one element. */
  readonly elements: ReadonlyMap<string, Element>;
}

export interface Table {
  readonly family: TableFamily;
  readonly name: string;
  /** The chains attached to a hook, with how; their rules are in `chains` like any other's. */
  readonly baseChains: ReadonlyMap<string, BaseChain>;
  /** Every chain by name, with its rules in order. */
  readonly chains: ReadonlyMap<string, readonly Rule[]>;
  readonly sets: ReadonlyMap<string, NftSet>;
  /** Named counters (`counter name` statements count into them); they keep counting across changes of the rules. */
  readonly counters?: ReadonlySet<string>;
}

/** One step of a transaction; a list of them applies whole or not at all. */
export type Op =
  | { readonly op: "add table" | "delete table"; readonly family: TableFamily; readonly table: string }
  | { readonly op: "add chain"; readonly family: TableFamily; readonly table: string; readonly name: string; readonly base?: BaseChain }
  | { readonly op: "flush chain" | "delete chain"; readonly family: TableFamily; readonly table: string; readonly name: string }
  | { readonly op: "add counter" | "delete counter"; readonly family: TableFamily; readonly table: string; readonly name: string }
  | { readonly op: "add rule"; readonly family: TableFamily; readonly table: string; readonly chain: string; readonly rule: Rule }
  | { readonly op: "add set"; readonly family: TableFamily; readonly table: string; readonly name: string; readonly set: SetDefinition }
  | { readonly op: "delete set"; readonly family: TableFamily; readonly table: string; readonly name: string; readonly kind: "set" | "map" }
  | {
      readonly op: "add element" | "delete element"; readonly family: TableFamily; readonly table: string; readonly name: string;
      readonly set: SetDefinition; readonly elements: readonly Element[];
    };

// ---- building -----------------------------------------------------------------------------

export const accept: Verdict = { verdict: "accept" };
export const drop: Verdict = { verdict: "drop" };
export const ret: Verdict = { verdict: "return" };

export function jump(chain: string): Verdict {
  return { verdict: "jump", chain };
}

export function goto(chain: string): Verdict {
  return { verdict: "goto", chain };
}

export function rule(match: readonly Match[], ...statements: Statement[]): Rule {
  return { match, statements };
}

/** A rule that ends in a verdict. */
export function verdictRule(match: readonly Match[], verdict: Verdict): Rule {
  return { match, statements: [{ statement: "verdict", verdict }] };
}

/** The `ip`/`ip6` payload name of a family. */
export function payloadOf(family: Family): "ip" | "ip6" {
  return family === 4 ? "ip" : "ip6";
}

export function addressField(family: Family, which: "saddr" | "daddr"): AddressField {
  return `${payloadOf(family)} ${which}`;
}

export function addressType(family: Family): "ipv4_addr" | "ipv6_addr" {
  return family === 4 ? "ipv4_addr" : "ipv6_addr";
}

/** The table family of an address family. */
export function tableFamilyOf(family: Family): "ip" | "ip6" {
  return family === 4 ? "ip" : "ip6";
}

/** What a field's values are. */
export function fieldType(field: Field): DataType {
  switch (field) {
    case "ip saddr":
    case "ip daddr":
      return "ipv4_addr";
    case "ip6 saddr":
    case "ip6 daddr":
      return "ipv6_addr";
    case "meta l4proto":
      return "inet_proto";
    case "th dport":
    case "th sport":
      return "inet_service";
  }
}

/** A set with these elements (`key` per element). */
export function newSet(definition: SetDefinition, elements: Iterable<Element> = []): NftSet & { elements: Map<string, Element> } {
  const map = new Map<string, Element>();
  for (const element of elements) map.set(elementId(element.key), element);
  return { ...definition, elements: map };
}

/** An element's identity in its set: the key, as text. */
export function elementId(key: readonly Datum[]): string {
  let id = "";
  for (let i = 0; i < key.length; i++) {
    if (i) id += " . ";
    id += datumText(key[i]);
  }
  return id;
}

/** A key part as nft writes it. */
export function datumText(datum: Datum): string {
  if (typeof datum === "number" || typeof datum === "string") return String(datum);
  if ("length" in datum) return `${formatAddress(datum.family, datum.network)}/${datum.length}`;
  return formatAddress(datum.family, datum.value);
}

export function verdictText(verdict: Verdict): string {
  return verdict.verdict === "jump" || verdict.verdict === "goto" ? `${verdict.verdict} ${verdict.chain}` : verdict.verdict;
}

export function sameVerdict(a: Verdict | undefined, b: Verdict | undefined): boolean {
  if (a === b) return true;
  if (!a || !b || a.verdict !== b.verdict) return false;
  return (a as { chain?: string }).chain === (b as { chain?: string }).chain;
}

export function sameSetDefinition(a: SetDefinition, b: SetDefinition): boolean {
  return a.kind === b.kind && a.value === b.value && a.timeoutSeconds === b.timeoutSeconds && sameStrings(a.key, b.key) && sameStrings(a.flags, b.flags)
    && a.targets?.family === b.targets?.family && a.targets?.modulus === b.targets?.modulus && a.targets?.protocol === b.targets?.protocol;
}

/** Whether two elements of one key hold the same value. */
export function sameValue(a: Element, b: Element): boolean {
  if (!sameVerdict(a.value, b.value)) return false;
  if (a.target === b.target) return true;
  return !!a.target && !!b.target && a.target[1] === b.target[1] && a.target[0].family === b.target[0].family && a.target[0].value === b.target[0].value;
}

export function sameBaseChain(a: BaseChain | undefined, b: BaseChain | undefined): boolean {
  if (a === b) return true;
  return !!a && !!b && a.type === b.type && a.hook === b.hook && a.priority === b.priority;
}

function sameStrings(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((item, i) => item === b[i]);
}

function formatAddress(family: Family, value: bigint): string {
  return formatIp({ family, value });
}
