/*
 * The nftables model's two encodings against nft itself: the same steps written as `nft -f`
 * text in one new network namespace and as a netlink batch through `trellis-nft-batch` in
 * another must leave the same ruleset, as `nft list ruleset` prints it. Every match and
 * statement form of src/nft/model.ts is here, in ip, ip6 and inet tables. Every namespace is
 * made by `unshare -n` for one shell and ends with it.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { after, describe, it } from "node:test";
import { tableOps } from "../src/nft/diff.js";
import {
  accept, drop, goto, jump, newSet, ret, rule, verdictRule, type BaseChain, type Match, type NftSet, type Op, type Rule, type Statement, type Table, type TableFamily,
} from "../src/nft/model.js";
import { encodeBatch } from "../src/nft/netlink.js";
import { renderOps } from "../src/nft/text.js";
import { parseIp, parsePrefix } from "../src/net/ip.js";

const WRITER = resolve("dist/trellis-nft-batch");
const dir = mkdtempSync(join(tmpdir(), "trellis-nft-model-"));
after(() => rmSync(dir, { recursive: true, force: true }));

let files = 0;
function file(content: string | Buffer): string {
  const path = join(dir, `f${files++}`);
  writeFileSync(path, content);
  return path;
}

function inNewNetns(script: string): { status: number | null; stdout: string; stderr: string } {
  const result = spawnSync("unshare", ["-n", "sh", "-ec", script], { encoding: "utf8", maxBuffer: 1 << 28 });
  return { status: result.status, stdout: result.stdout, stderr: result.stderr };
}

/** Applies each list of steps in turn, as text and as batches; both listings. */
function both(...steps: Op[][]): { text: string; netlink: string } {
  const byText = inNewNetns(steps.map((ops) => `nft -f ${file(renderOps(ops))}`).join("; ") + "; nft list ruleset");
  assert.equal(byText.status, 0, byText.stderr);
  const byNetlink = inNewNetns(steps.map((ops) => `${WRITER} < ${file(encodeBatch(ops))}`).join("; ") + "; nft list ruleset");
  assert.equal(byNetlink.status, 0, byNetlink.stderr);
  return { text: byText.stdout, netlink: byNetlink.stdout };
}

const ip4 = parseIp;

/** A listing's sets and chains, each whole, sorted: a set made again is listed after the others. */
function blocks(listing: string): string[] {
  return [...listing.matchAll(/^\t(?:set|map|chain) [^\n]*\{\n[\s\S]*?^\t\}$/gm)].map((match) => match[0]).sort();
}

const NAT_PRE: BaseChain = { type: "nat", hook: "prerouting", priority: -100 };
const FILTER_FWD: BaseChain = { type: "filter", hook: "forward", priority: 0 };
const POST: BaseChain = { type: "nat", hook: "postrouting", priority: 100 };

function table(family: TableFamily, name: string, chains: Array<[string, Rule[], BaseChain?]>, sets: Array<[string, NftSet]>, counters?: string[]): Table {
  return {
    family, name,
    ...(counters ? { counters: new Set(counters) } : {}),
    baseChains: new Map(chains.flatMap(([chain, , base]) => (base ? [[chain, base] as const] : []))),
    chains: new Map(chains.map(([chain, rules]) => [chain, rules])),
    sets: new Map(sets),
  };
}

/** Every form, in one family's table. */
function familyTable(family: 4 | 6, name: string): Table {
  const ip = family === 4 ? "ip" : "ip6";
  const a = (text4: string, text6: string) => parseIp(family === 4 ? text4 : text6);
  const p = (text4: string, text6: string) => parsePrefix(family === 4 ? text4 : text6);
  const addr = family === 4 ? "ipv4_addr" : "ipv6_addr";
  const matches: Match[][] = [
    [{ match: "address", field: `${ip} daddr`, value: a("10.96.0.1", "fd00:10:96::1") }],
    [{ match: "address", field: `${ip} saddr`, value: p("10.0.0.0/8", "fd00::/8"), negate: true }],
    [{ match: "address", field: `${ip} saddr`, value: p("10.240.0.0/12", "fd00:10:240::/44") }],
    [{ match: "protocol", protocol: "sctp" }, { match: "port", field: "th dport", port: 9000 }],
    [{ match: "port", field: "th sport", port: 53 }],
    [{ match: "protocol", protocol: "tcp" }, { match: "port range", field: "th dport", first: 8000, last: 9000 }],
    [{ match: "port range", field: "th sport", first: 0, last: 1023 }],
    [{ match: "in set", key: [`${ip} saddr`], set: "cidrs" }],
    [{ match: "in set", key: [`${ip} saddr`], set: "cidrs", negate: true }],
    [{ match: "ct state", states: ["new"] }],
    [{ match: "ct state", states: ["established", "related"] }],
    [{ match: "ct status dnat" }, { match: "in set", key: [`${ip} saddr`, `${ip} daddr`, "meta l4proto", "th dport"], set: "hairpin" }],
    [{ match: "numgen", modulus: 3, value: 1 }],
    [{ match: "fib local", field: "saddr" }],
    [{ match: "fib local", field: "daddr" }],
    [{ match: "mark", mask: 0x4000, value: 0 }],
  ];
  const statements: Statement[] = [
    { statement: "verdict", verdict: accept },
    { statement: "verdict", verdict: drop },
    { statement: "verdict", verdict: ret },
    { statement: "verdict", verdict: jump("target") },
    { statement: "verdict", verdict: goto("target") },
    { statement: "reject" },
    { statement: "reject", tcpReset: true },
    { statement: "masquerade" },
    { statement: "masquerade", fullyRandom: true },
    { statement: "mark", op: "or", bits: 0x4000 },
    { statement: "mark", op: "xor", bits: 0x4000 },
    { statement: "update", set: "affinity", key: `${ip} saddr` },
  ];
  const filter: Rule[] = [
    ...matches.map((match) => verdictRule(match, accept)),
    ...statements.filter((s) => s.statement !== "masquerade").map((statement) => rule([], statement)),
    rule([], { statement: "vmap", key: [`${ip} daddr`, "meta l4proto", "th dport"], map: "services" }),
    rule([], { statement: "vmap", key: ["meta l4proto", "th dport"], map: "nodeports" }),
  ];
  const nat: Rule[] = [
    rule([{ match: "protocol", protocol: "tcp" }], { statement: "dnat", family, address: a("10.244.1.5", "fd00:10:244::5"), port: 8080 }),
    rule([{ match: "protocol", protocol: "udp" }], { statement: "dnat numgen map", family, modulus: 3, map: "targets" }),
  ];
  const post: Rule[] = [rule([], { statement: "masquerade" }), rule([], { statement: "masquerade", fullyRandom: true })];
  return table(family === 4 ? "ip" : "ip6", name, [["forward", filter, FILTER_FWD], ["prerouting", nat, NAT_PRE], ["postrouting", post, POST], ["target", [verdictRule([], ret)]]], [
    // The last one runs to the end of the address space: nft writes its start alone, open.
    ["cidrs", newSet({ kind: "set", key: [addr], flags: ["interval"] }, [{ key: [p("10.244.0.0/16", "fd00:10:244::/56")] }, { key: [p("10.96.0.0/12", "fd00:10:96::/108")] }, { key: [p("240.0.0.0/4", "ff00::/8")] }])],
    ["hairpin", newSet({ kind: "set", key: [addr, addr, "inet_proto", "inet_service"], flags: [] }, [{ key: [a("10.244.0.5", "fd00:10:244::5"), a("10.244.0.5", "fd00:10:244::5"), "tcp", 8080] }])],
    ["affinity", newSet({ kind: "set", key: [addr], flags: ["dynamic", "timeout"], timeoutSeconds: 10800 })],
    ["services", newSet({ kind: "map", key: [addr, "inet_proto", "inet_service"], value: "verdict", flags: [] }, [
      { key: [a("10.96.0.10", "fd00:10:96::a"), "udp", 53], value: goto("target") },
      { key: [a("10.96.0.11", "fd00:10:96::b"), "tcp", 80], value: drop },
    ])],
    ["nodeports", newSet({ kind: "map", key: ["inet_proto", "inet_service"], value: "verdict", flags: [] }, [{ key: ["tcp", 30080], value: jump("target") }])],
    ["targets", newSet({ kind: "map", key: [], flags: [], targets: { family, modulus: 3, protocol: "udp" } }, [0, 1, 2].map((i) => ({ key: [i], target: [a(`10.244.4.${i + 1}`, `fd00:10:244::4:${i + 1}`), 8080 + i] as const })))],
  ]);
}

/** inet: both families' fields in one table, each rule in one family. */
function inetTable(): Table {
  return table("inet", "model-inet", [
    ["prerouting", [
      verdictRule([{ match: "fib local", field: "daddr" }], jump("hostports")),
    ], { type: "nat", hook: "prerouting", priority: -101 }],
    ["hostports", [
      rule([{ match: "address", field: "ip daddr", value: parsePrefix("127.0.0.0/8"), negate: true }, { match: "protocol", protocol: "tcp" }, { match: "port", field: "th dport", port: 8080 }],
        { statement: "mark", op: "or", bits: 0x2000 }, { statement: "dnat", family: 4, address: ip4("10.244.0.5"), port: 80 }),
      rule([{ match: "address", field: "ip6 daddr", value: parseIp("::1"), negate: true }, { match: "protocol", protocol: "udp" }, { match: "port", field: "th dport", port: 8080 }],
        { statement: "dnat", family: 6, address: parseIp("fd00:10:244::5"), port: 80 }),
      rule([{ match: "address", field: "ip daddr", value: ip4("198.18.0.1") }, { match: "protocol", protocol: "tcp" }], { statement: "dnat numgen map", family: 4, modulus: 2, map: "targets4" }),
    ]],
    ["postrouting", [
      rule([{ match: "mark", mask: 0x2000, value: 0x2000 }, { match: "in set", key: ["ip saddr"], set: "own4" }], { statement: "masquerade" }),
      rule([{ match: "mark", mask: 0x2000, value: 0x2000 }, { match: "in set", key: ["ip6 saddr"], set: "own6" }], { statement: "masquerade" }),
    ], { type: "nat", hook: "postrouting", priority: 99 }],
    ["input", [
      rule([{ match: "ct state", states: ["invalid"] }], { statement: "reject" }),
      rule([{ match: "protocol", protocol: "udp" }], { statement: "counter", name: "denied-1" }, { statement: "limit", rate: 10, burst: 20 }, { statement: "log", prefix: "trellis-denied-1", group: 7 }),
      rule([{ match: "protocol", protocol: "udp" }], { statement: "counter", name: "denied-2" }, { statement: "verdict", verdict: drop }),
    ], { type: "filter", hook: "input", priority: 0 }],
    ["flow-events", [
      rule([{ match: "ct state", states: ["new"] }, { match: "in set", key: ["ip saddr"], set: "own4" }], { statement: "ct event", events: ["new", "reply", "destroy"] }),
    ], { type: "filter", hook: "prerouting", priority: -150 }],
  ], [
    ["own4", newSet({ kind: "set", key: ["ipv4_addr"], flags: ["interval"] }, [{ key: [parsePrefix("10.244.0.0/24")] }])],
    ["own6", newSet({ kind: "set", key: ["ipv6_addr"], flags: ["interval"] }, [{ key: [parsePrefix("fd00:10:244::/64")] }])],
    ["targets4", newSet({ kind: "map", key: [], flags: [], targets: { family: 4, modulus: 2, protocol: "tcp" } }, [{ key: [0], target: [ip4("10.244.0.5"), 80] }, { key: [1], target: [ip4("10.244.0.6"), 80] }])],
  ], ["denied-1", "denied-2"]);
}

describe("nftables model: nft -f text and the netlink batch", () => {
  it("write the same tables: every match and statement, ip, ip6 and inet", () => {
    // Catches: an expression encoded otherwise than nft encodes it (a register, a byte order, a
    // flag, a prefix's mask, a targets map's types or user data), which `nft list` shows as
    // another rule, or the kernel refuses; and text that nft reads otherwise than the model means.
    const tables = [familyTable(4, "model-4"), familyTable(6, "model-6"), inetTable()];
    const { text, netlink } = both(tables.flatMap((t) => tableOps(undefined, t)));
    assert.equal(netlink, text);
    assert.match(text, /ip saddr 10\.240\.0\.0\/12 accept/);
    assert.match(text, /elements = \{ 10\.96\.0\.0\/12, 10\.244\.0\.0\/16,\s+240\.0\.0\.0\/4 \}/);
    assert.match(text, /ff00::\/8 \}/);
    assert.match(text, /ip daddr != 127\.0\.0\.0\/8 tcp dport 8080 meta mark set meta mark \| 0x00002000 dnat ip to 10\.244\.0\.5:80/);
    assert.match(text, /ct state established,related accept/);
    assert.match(text, /tcp dport 8000-9000/);
    assert.match(text, /th sport 0-1023/);
    assert.match(text, /ct status dnat ip saddr \. ip daddr \. meta l4proto \. th dport @hairpin accept/);
    assert.match(text, /typeof numgen random mod 3 : ip daddr \. udp dport\n\t\telements = \{ 0 : 10\.244\.4\.1 \. 8080, 1 : 10\.244\.4\.2 \. 8081,/);
    assert.match(text, /meta l4proto udp dnat ip to numgen random mod 3 map @targets/);
    assert.match(text, /meta l4proto udp counter name "denied-1" limit rate 10\/second burst 20 packets log prefix "trellis-denied-1" group 7/);
    assert.match(text, /counter denied-2 \{\n\t\tpackets 0 bytes 0\n\t\}/);
    assert.match(text, /ct state new ip saddr @own4 ct event set new,destroy,reply/);
  });

  it("change named counters the same way: added with their rules, removed after them, kept counting otherwise", () => {
    // Catches: a counter deleted while a rule still counts into it (the kernel refuses the
    // batch), or made again on every change (its count lost at each policy change).
    const before = inetTable();
    const input = [rule([], { statement: "counter", name: "denied-3" }, { statement: "verdict", verdict: drop })];
    const later: Table = { ...before, chains: new Map([...before.chains, ["input", input]]), counters: new Set(["denied-3"]) };
    const change = tableOps(before, later);
    assert.deepEqual(change.filter((op) => op.op.endsWith("counter")).map((op) => `${op.op} ${(op as { name: string }).name}`), ["add counter denied-3", "delete counter denied-1", "delete counter denied-2"]);
    assert.ok(change.findIndex((op) => op.op === "delete counter") > change.findIndex((op) => op.op === "flush chain"));
    const { text, netlink } = both(tableOps(undefined, before), change);
    assert.equal(netlink, text);
    assert.match(text, /counter denied-3 /);
    assert.doesNotMatch(text, /denied-1/);
    assert.deepEqual(tableOps(later, { ...later, chains: new Map(later.chains) }).filter((op) => op.op.endsWith("counter")), [], "an unchanged counter is left alone");
  });

  it("change tables the same way: chains rewritten, elements replaced, sets redefined, chains and sets removed", () => {
    // Catches: a diff that leaves a stale element or rule, deletes a chain still referenced, or
    // orders steps so the kernel refuses them; and an encoding of a change unlike nft's.
    const before = familyTable(4, "model-4");
    const chains = new Map(before.chains);
    chains.set("prerouting", [rule([{ match: "protocol", protocol: "udp" }], { statement: "dnat numgen map", family: 4, modulus: 3, map: "targets" })]);
    chains.set("extra", [verdictRule([{ match: "in set", key: ["ip daddr"], set: "fresh" }], drop)]);
    chains.set("forward", [...before.chains.get("forward")!.slice(0, 3), verdictRule([], jump("extra"))]);
    chains.delete("target");
    const sets = new Map(before.sets);
    sets.set("services", newSet(before.sets.get("services")!, [{ key: [ip4("10.96.0.10"), "udp", 53], value: drop }, { key: [ip4("10.96.0.12"), "tcp", 443], value: accept }]));
    sets.set("nodeports", newSet(before.sets.get("nodeports")!, []));
    sets.set("cidrs", newSet({ kind: "set", key: ["ipv4_addr"], flags: ["interval"] }, [{ key: [parsePrefix("10.244.0.0/16")] }]));
    sets.set("fresh", newSet({ kind: "set", key: ["ipv4_addr"], flags: [] }, [{ key: [ip4("192.0.2.1")] }]));
    sets.delete("hairpin");
    sets.set("targets", newSet(before.sets.get("targets")!, [{ key: [0], target: [ip4("10.244.4.1"), 8080] }, { key: [1], target: [ip4("10.244.4.9"), 8080] }, { key: [2], target: [ip4("10.244.4.3"), 8082] }]));
    sets.set("affinity", newSet({ kind: "set", key: ["ipv4_addr"], flags: ["dynamic", "timeout"], timeoutSeconds: 60 }));
    const later: Table = { ...before, chains, sets };
    const change = tableOps(before, later);
    assert.ok(change.some((op) => op.op === "delete chain") && change.some((op) => op.op === "delete set") && change.some((op) => op.op === "delete element"));
    assert.ok(!change.some((op) => op.op === "delete table"), "a change, not a rewrite");
    const { text, netlink } = both(tableOps(undefined, before), change);
    assert.equal(netlink, text);
    const whole = both(tableOps(undefined, later));
    assert.deepEqual(blocks(text), blocks(whole.text), "the change leaves what writing the later table whole leaves (in another order)");
    assert.deepEqual(tableOps(later, later), [], "nothing to do when nothing differs");
  });

  it("refuses what cannot be written, in both encodings, before anything is sent", () => {
    // Catches: a name that would end a statement or start a comment reaching nft or the kernel;
    // a value of the wrong family or range encoded as something else.
    const t = { family: "ip" as const, table: "t" };
    const bad: Op[][] = [
      [{ op: "add chain", ...t, name: "a b" }],
      [{ op: "add chain", ...t, name: "x;flush ruleset" }],
      [{ op: "add chain", ...t, name: "c\nadd table ip evil" }],
      [{ op: "add table", family: "ip", table: "%d" }],
      [{ op: "add table", family: "ip", table: "-x" }],
      [{ op: "add rule", ...t, chain: "c", rule: rule([], { statement: "dnat", family: 4, address: parseIp("10.0.0.1"), port: 80 }) }],
      [{ op: "add rule", ...t, chain: "c", rule: verdictRule([{ match: "port", field: "th sport", port: 1 }, { match: "port", field: "th dport", port: 2 }], accept) }],
      [{ op: "add chain", ...t, name: "x".repeat(256) }],
      [{ op: "add rule", ...t, chain: "c", rule: verdictRule([], goto("no#comment")) }],
      [{ op: "add rule", ...t, chain: "c", rule: rule([], { statement: "dnat", family: 4, address: parseIp("fd00::1"), port: 80 }) }],
      [{ op: "add rule", ...t, chain: "c", rule: rule([{ match: "port", field: "th dport", port: 70000 }], { statement: "verdict", verdict: accept }) }],
      [{ op: "add rule", ...t, chain: "c", rule: rule([{ match: "port range", field: "th dport", first: 90, last: 80 }], { statement: "verdict", verdict: accept }) }],
      [{ op: "add rule", ...t, chain: "c", rule: rule([{ match: "port range", field: "th dport", first: 80, last: 65536 }], { statement: "verdict", verdict: accept }) }],
      [{ op: "add rule", ...t, chain: "c", rule: rule([{ match: "protocol", protocol: "tcp" }], { statement: "dnat numgen map", family: 4, modulus: 0, map: "m" }) }],
      [{ op: "add rule", ...t, chain: "c", rule: { match: [], statements: [] } }],
      [{ op: "add rule", ...t, chain: "c", rule: rule([], { statement: "mark", op: "or", bits: -1 }) }],
      [{ op: "add element", ...t, name: "s", set: { kind: "set", key: ["ipv4_addr"], flags: [] }, elements: [{ key: [parseIp("fd00::1")] }] }],
      [{ op: "add element", ...t, name: "s", set: { kind: "set", key: ["ipv4_addr"], flags: ["interval"] }, elements: [{ key: [{ family: 4, network: 1n, length: 8 }] }] }],
      [{ op: "add element", ...t, name: "m", set: { kind: "map", key: [], flags: [], targets: { family: 4, modulus: 2, protocol: "tcp" } }, elements: [{ key: [2], target: [parseIp("10.0.0.1"), 80] }] }],
      [{ op: "add element", ...t, name: "m", set: { kind: "map", key: [], flags: [], targets: { family: 4, modulus: 2, protocol: "tcp" } }, elements: [{ key: [0], target: [parseIp("fd00::1"), 80] }] }],
    ];
    for (const ops of bad) {
      assert.throws(() => encodeBatch(ops), Error, `netlink took ${JSON.stringify(ops, (_k, v) => (typeof v === "bigint" ? String(v) : v))}`);
    }
    for (const ops of bad.slice(0, 16)) {
      assert.throws(() => renderOps(ops), Error, `text took ${JSON.stringify(ops, (_k, v) => (typeof v === "bigint" ? String(v) : v))}`);
    }
  });
});
