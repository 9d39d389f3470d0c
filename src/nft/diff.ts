/**
 * From one desired table to the next: the steps of one transaction that change only the
 * chains and elements that differ. Pure; the same steps go to either encoding.
 */
import {
  sameBaseChain, sameSetDefinition, sameValue, type Element, type Op, type Rule, type Table, type TableFamily,
} from "./model.js";
import { ruleText } from "./text.js";

/** The steps that write `table` whole, replacing whatever table of its name there was (or none). */
export function rewriteTable(table: Table): Op[] {
  const { family, name: tableName } = table;
  const t = { family, table: tableName };
  const ops: Op[] = [{ op: "add table", ...t }, { op: "delete table", ...t }, { op: "add table", ...t }];
  for (const name of table.chains.keys()) ops.push({ op: "add chain", ...t, name, base: table.baseChains.get(name) });
  for (const name of table.counters ?? []) ops.push({ op: "add counter", ...t, name });
  for (const [name, set] of table.sets) ops.push({ op: "add set", ...t, name, set: set });
  for (const [chain, rules] of table.chains) for (const rule of rules) ops.push({ op: "add rule", ...t, chain, rule });
  for (const [name, set] of table.sets) {
    if (set.elements.size) ops.push({ op: "add element", ...t, name, set: set, elements: [...set.elements.values()] });
  }
  return ops;
}

/** The steps that remove a table; `add` first, so that they succeed whether or not it exists (unless it certainly does). */
export function deleteTable(family: TableFamily, table: string, exists: boolean): Op[] {
  return exists ? [{ op: "delete table", family, table }] : [{ op: "add table", family, table }, { op: "delete table", family, table }];
}

/**
 * The steps from a table holding `before` to one holding `after` (either may be absent: the
 * table is made or removed). A table whose base chains differ is rewritten whole.
 */
export function tableOps(before: Table | undefined, after: Table | undefined): Op[] {
  if (!after) return before ? deleteTable(before.family, before.name, true) : [];
  if (!before || !sameBaseChains(before, after)) return rewriteTable(after);
  return tableChange(before, after);
}

/**
 * Order matters to the kernel: objects exist before anything points to them, and nothing points
 * to an object when it is deleted (a chain referenced by a rule or a map element is busy).
 */
export function tableChange(before: Table, after: Table): Op[] {
  const family = after.family;
  const table = after.name;
  const newChains = [...after.chains.keys()].filter((name) => !before.chains.has(name));
  const removedChains = [...before.chains.keys()].filter((name) => !after.chains.has(name));
  const newSets = [...after.sets.keys()].filter((name) => !before.sets.has(name));
  const removedSets = [...before.sets.keys()].filter((name) => !after.sets.has(name));
  // A set's type, flags or timeout cannot be changed in place: it is deleted and made again,
  // after the chains that refer to it are emptied.
  const redefinedSets = new Set([...after.sets].filter(([name, definition]) => {
    const old = before.sets.get(name);
    return old !== undefined && !sameSetDefinition(old, definition);
  }).map(([name]) => name));
  const rewritten = new Set<string>();
  for (const [name, rules] of after.chains) {
    const old = before.chains.get(name);
    if (old && (!sameRules(old, rules) || (redefinedSets.size > 0 && old.some((rule) => refersToAny(rule, redefinedSets))))) rewritten.add(name);
  }

  const ops: Op[] = [];
  for (const name of newChains) ops.push({ op: "add chain", family, table, name, base: after.baseChains.get(name) });
  for (const name of after.counters ?? []) if (!before.counters?.has(name)) ops.push({ op: "add counter", family, table, name });
  for (const name of newSets) ops.push({ op: "add set", family, table, name, set: after.sets.get(name)! });
  for (const name of [...rewritten, ...removedChains]) ops.push({ op: "flush chain", family, table, name });
  for (const [name, set] of after.sets) {
    const old = before.sets.get(name);
    if (!old || redefinedSets.has(name) || old.elements === set.elements) continue;
    const stale: Element[] = [];
    for (const [id, element] of old.elements) if (!sameElement(set.elements.get(id), element)) stale.push(element);
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
    const added: Element[] = [];
    for (const [id, element] of set.elements) if (fresh || !sameElement(old!.elements.get(id), element)) added.push(element);
    if (added.length) ops.push({ op: "add element", family, table, name, set: set, elements: added });
  }
  // Maps go before chains: a removed map's elements may point to removed chains.
  for (const name of removedSets) ops.push({ op: "delete set", family, table, name, kind: before.sets.get(name)!.kind });
  for (const name of removedChains) ops.push({ op: "delete chain", family, table, name });
  // Last: no rule counts into a counter once it goes.
  for (const name of before.counters ?? []) if (!after.counters?.has(name)) ops.push({ op: "delete counter", family, table, name });
  return ops;
}

export function sameBaseChains(a: Table, b: Table): boolean {
  if (a.baseChains.size !== b.baseChains.size) return false;
  for (const [name, base] of a.baseChains) if (!sameBaseChain(base, b.baseChains.get(name))) return false;
  return true;
}

export function sameRules(a: readonly Rule[], b: readonly Rule[]): boolean {
  return a === b || (a.length === b.length && a.every((rule, i) => rule === b[i] || ruleText(rule) === ruleText(b[i])));
}

function sameElement(a: Element | undefined, b: Element): boolean {
  return a !== undefined && (a === b || sameValue(a, b));
}

/** Whether a rule names one of `sets` (a lookup, a vmap, an update). */
function refersToAny(rule: Rule, sets: ReadonlySet<string>): boolean {
  for (const match of rule.match) if (match.match === "in set" && sets.has(match.set)) return true;
  for (const statement of rule.statements) {
    if (statement.statement === "vmap" && sets.has(statement.map)) return true;
    if (statement.statement === "update" && sets.has(statement.set)) return true;
    if (statement.statement === "dnat numgen map" && sets.has(statement.map)) return true;
  }
  return false;
}

/** Spread arguments overflow the stack for the hundreds of thousands of steps of a large cluster. */
export function append<T>(list: T[], more: readonly T[]): void {
  for (const item of more) list.push(item);
}
