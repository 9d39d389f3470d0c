/**
 * The `nft -f` text of the model: for `nft -c` checks, for reading, and for writing where the
 * netlink writer is not there. Every name and number is checked as it is written.
 */
import { familyBits, formatIp, type IpAddress, type IpPrefix } from "../net/ip.js";
import {
  datumText, verdictText, type BaseChain, type Element, type Match, type Op, type Rule, type SetDefinition, type Statement, type TableFamily,
} from "./model.js";
import { checkInteger, checkLogPrefix, checkName, checkRuleShape, ctEventMask } from "./names.js";

/** Steps as an `nft -f` script, one line each; "" for none (unless a header is given). */
export function renderOps(ops: readonly Op[], header?: string): string {
  if (!ops.length && header === undefined) return "";
  const lines = header === undefined ? [] : [header];
  for (const op of ops) lines.push(opText(op));
  return lines.join("\n") + "\n";
}

export function opText(op: Op): string {
  const t = tableText(op.family, op.table);
  switch (op.op) {
    case "add table":
    case "delete table":
      return `${op.op} ${t}`;
    case "add chain":
      return `add chain ${t} ${checkName("chain", op.name)}${op.base ? ` ${baseChainText(op.base)}` : ""}`;
    case "flush chain":
    case "delete chain":
      return `${op.op} ${t} ${checkName("chain", op.name)}`;
    case "add counter":
    case "delete counter":
      return `${op.op} ${t} ${checkName("counter", op.name)}`;
    case "add rule":
      return `add rule ${t} ${checkName("chain", op.chain)} ${ruleText(op.rule)}`;
    case "add set":
      return `add ${op.set.kind} ${t} ${checkName("set", op.name)} ${setDefinitionText(op.set)}`;
    case "delete set":
      return `delete ${op.kind} ${t} ${checkName("set", op.name)}`;
    case "add element":
    case "delete element": {
      const items = op.elements.map((element) => elementText(element, op.op === "add element" && op.set.kind === "map"));
      return `${op.op === "add element" ? "add" : "delete"} element ${t} ${checkName("set", op.name)} { ${items.join(", ")} }`;
    }
  }
}

export function tableText(family: TableFamily, name: string): string {
  if (family !== "ip" && family !== "ip6" && family !== "inet") throw new Error(`nftables table family ${JSON.stringify(family)} is not ip, ip6 or inet`);
  return `${family} ${checkName("table", name)}`;
}

export function baseChainText(base: BaseChain): string {
  return `{ type ${base.type} hook ${base.hook} priority ${checkInteger("chain priority", base.priority, -1000, 1000)}; policy accept; }`;
}

export function setDefinitionText(set: SetDefinition): string {
  const parts = set.targets
    ? [`typeof numgen random mod ${checkInteger("numgen modulus", set.targets.modulus, 1, 65536)} : ${set.targets.family === 4 ? "ip" : "ip6"} daddr . ${protocol(set.targets.protocol)} dport;`]
    : [`type ${set.key.join(" . ")}${set.kind === "map" ? ` : ${set.value ?? "verdict"}` : ""};`];
  if (set.flags.length) parts.push(`flags ${set.flags.join(",")};`);
  if (set.timeoutSeconds !== undefined) parts.push(`timeout ${checkInteger("set timeout", set.timeoutSeconds, 1, 86400 * 365)}s;`);
  return `{ ${parts.join(" ")} }`;
}

function elementText(element: Element, withValue: boolean): string {
  const key = element.key.map(checkedDatum).join(" . ");
  if (withValue && element.target) return `${key} : ${formatIp(element.target[0])} . ${checkInteger("port", element.target[1], 1, 65535)}`;
  return withValue && element.value ? `${key} : ${verdictText(checkedVerdict(element.value))}` : key;
}

/** Rules' text, kept: the diff compares rules by it, and a full sync renders each once. */
const texts = new WeakMap<Rule, string>();

/** A rule as nft writes it. */
export function ruleText(rule: Rule): string {
  let text = texts.get(rule);
  if (text === undefined) {
    const words: string[] = [];
    for (const match of rule.match) words.push(matchText(match));
    for (const statement of rule.statements) words.push(statementText(statement));
    checkRuleShape(rule);
    text = words.join(" ");
    texts.set(rule, text);
  }
  return text;
}

/** `FIRST-LAST`, checked: ports, the first below the last (one port is a "port" match). */
function portRange(first: number, last: number): string {
  checkInteger("port", first, 0, 65535);
  checkInteger("port", last, 0, 65535);
  if (first >= last) throw new Error(`port range ${first}-${last}: the first port must be below the last`);
  return `${first}-${last}`;
}

function matchText(match: Match): string {
  switch (match.match) {
    case "address":
      return `${match.field} ${match.negate ? "!= " : ""}${addressOrPrefix(match.value)}`;
    case "protocol":
      return `meta l4proto ${protocol(match.protocol)}`;
    case "port":
      return `${match.field} ${checkInteger("port", match.port, 0, 65535)}`;
    case "port range":
      return `${match.field} ${portRange(match.first, match.last)}`;
    case "in set":
      return `${match.key.join(" . ")} ${match.negate ? "!= " : ""}@${checkName("set", match.set)}`;
    case "ct state":
      if (!match.states.length) throw new Error("ct state needs at least one state");
      return `ct state ${match.states.join(",")}`;
    case "ct status dnat":
      return "ct status dnat";
    case "numgen":
      checkInteger("numgen modulus", match.modulus, 1, 0xffffffff);
      return `numgen random mod ${match.modulus} == ${checkInteger("numgen value", match.value, 0, match.modulus - 1)}`;
    case "fib local":
      return `fib ${match.field} type local`;
    case "mark":
      return `meta mark & ${hex(match.mask)} == ${hex(match.value)}`;
  }
}

function statementText(statement: Statement): string {
  switch (statement.statement) {
    case "verdict":
      return verdictText(checkedVerdict(statement.verdict));
    case "vmap":
      return `${statement.key.join(" . ")} vmap @${checkName("map", statement.map)}`;
    case "reject":
      return statement.tcpReset ? "reject with tcp reset" : "reject";
    case "masquerade":
      return statement.fullyRandom ? "masquerade fully-random" : "masquerade";
    case "mark":
      return `meta mark set meta mark ${statement.op === "or" ? "|" : "^"} ${hex(statement.bits)}`;
    case "ct event":
      ctEventMask(statement.events);
      return `ct event set ${statement.events.join(",")}`;
    case "update":
      return `update @${checkName("set", statement.set)} { ${statement.key} }`;
    case "dnat":
      return `dnat ${statement.family === 4 ? "ip" : "ip6"} to ${target(statement.address, statement.port)}`;
    case "dnat numgen map":
      return `dnat ${statement.family === 4 ? "ip" : "ip6"} addr . port to numgen random mod ${checkInteger("numgen modulus", statement.modulus, 1, 65536)} map @${checkName("map", statement.map)}`;
    case "counter":
      return `counter name "${checkName("counter", statement.name)}"`;
    case "limit":
      return `limit rate ${checkInteger("limit rate", statement.rate, 1, 1_000_000)}/second burst ${checkInteger("limit burst", statement.burst, 1, 1_000_000)} packets`;
    case "log":
      return `log prefix "${checkLogPrefix(statement.prefix)}" group ${checkInteger("log group", statement.group, 0, 65535)}`;
  }
}

function target(address: IpAddress, port: number): string {
  checkInteger("port", port, 1, 65535);
  return address.family === 4 ? `${formatIp(address)}:${port}` : `[${formatIp(address)}]:${port}`;
}

function addressOrPrefix(value: IpAddress | IpPrefix): string {
  if ("length" in value) {
    checkInteger("prefix length", value.length, 0, familyBits(value.family));
    return value.length === familyBits(value.family) ? formatIp({ family: value.family, value: value.network }) : datumText(value);
  }
  return formatIp(value);
}

function checkedDatum(datum: Element["key"][number]): string {
  if (typeof datum === "string") return protocol(datum);
  if (typeof datum === "number") return String(checkInteger("element value", datum, 0, 0xffffffff));
  return datumText(datum);
}

function checkedVerdict(verdict: Element["value"] & object): typeof verdict {
  if (verdict.verdict === "jump" || verdict.verdict === "goto") checkName("chain", verdict.chain);
  else if (verdict.verdict !== "accept" && verdict.verdict !== "drop" && verdict.verdict !== "return") throw new Error(`nftables verdict ${JSON.stringify(verdict)} is not one Trellis writes`);
  return verdict;
}

function protocol(name: string): string {
  if (name !== "tcp" && name !== "udp" && name !== "sctp") throw new Error(`protocol ${JSON.stringify(name)} is not tcp, udp or sctp`);
  return name;
}

function hex(value: number): string {
  return `0x${checkInteger("mark", value, 0, 0xffffffff).toString(16).padStart(8, "0")}`;
}
