/**
 * The checks on what reaches nftables from outside: names of tables, chains and sets, and
 * numbers. Both encodings call them, so a name that could end a statement, open a comment or
 * be read as another token never reaches `nft -f` or the kernel.
 */

import type { Rule } from "./model.js";

/** nft keeps names in 256 bytes with the terminating NUL. */
export const NAME_MAX = 255;
const NAME = /^[A-Za-z_.][A-Za-z0-9_./-]*$/;

export class NftNameError extends Error {}

/** Names already checked: a full sync names each table and chain thousands of times. */
const checked = new Set<string>();

export function checkName(what: string, name: string): string {
  if (checked.has(name)) return name;
  if (typeof name !== "string" || name.length > NAME_MAX || !NAME.test(name)) {
    throw new NftNameError(`nftables ${what} name ${JSON.stringify(name)} is not allowed: expected at most ${NAME_MAX} of [A-Za-z0-9_./-], starting with a letter, "_" or "."`);
  }
  if (checked.size > 1_000_000) checked.clear();
  checked.add(name);
  return name;
}

/** A log prefix: a name (no quote, space or newline to end it early) that nflog carries whole (127 bytes). */
export function checkLogPrefix(prefix: string): string {
  checkName("log prefix", prefix);
  if (prefix.length > 127) throw new NftNameError(`nftables log prefix ${JSON.stringify(prefix)} is longer than the 127 bytes nflog carries`);
  return prefix;
}

export function isName(name: string): boolean {
  return name.length <= NAME_MAX && NAME.test(name);
}

export function checkInteger(what: string, value: number, min: number, max: number): number {
  if (!Number.isInteger(value) || value < min || value > max) throw new RangeError(`nftables ${what} ${value} is outside ${min}-${max}`);
  return value;
}

/**
 * What nft refuses of a rule as a whole (no statement; a NAT to a port without a protocol test
 * before it), and what nft would write otherwise than it reads: two equality tests of one header
 * in a row (`th sport 1 th dport 2`), which nft merges into one load of both, in its own order.
 */
export function checkRuleShape(rule: Rule): void {
  if (!rule.statements.length) throw new Error("an nftables rule needs a statement");
  for (let i = 1; i < rule.match.length; i++) {
    const [a, b] = [rule.match[i - 1], rule.match[i]];
    const header = (m: typeof a) => (m.match === "port" || m.match === "port range" ? "th" : m.match === "address" && !m.negate ? m.field.split(" ")[0] : undefined);
    if (header(a) !== undefined && header(a) === header(b)) throw new Error(`an nftables rule with two tests of the ${header(a)} header in a row: give them as a set lookup`);
  }
  for (const statement of rule.statements) {
    if ((statement.statement === "dnat" || statement.statement === "dnat numgen map") && !rule.match.some((match) => match.match === "protocol")) {
      throw new Error("a DNAT to a port needs a protocol test (meta l4proto) before it");
    }
  }
}

/** conntrack's event bits (IPCT_*) of the events `ct event set` may name. */
const CT_EVENT_BITS: Record<string, number> = { new: 1 << 0, related: 1 << 1, destroy: 1 << 2, reply: 1 << 3 };

/** The mask of `ct event set`'s events; throws on none, an unknown one, or one named twice. */
export function ctEventMask(events: readonly string[]): number {
  let mask = 0;
  for (const event of events) {
    const bit = CT_EVENT_BITS[event];
    if (bit === undefined || mask & bit) throw new Error(`ct event ${JSON.stringify(event)} is not one of ${Object.keys(CT_EVENT_BITS).join(", ")} (each once)`);
    mask |= bit;
  }
  if (!mask) throw new Error("ct event set needs at least one event");
  return mask;
}
