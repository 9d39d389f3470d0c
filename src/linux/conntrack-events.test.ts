import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { formatIp } from "../net/ip.js";
import { parseConntrackLine } from "./conntrack-events.js";

describe("the conntrack reader's lines", () => {
  // Catches the tuples read in the wrong order (the reply taken for the original loses the
  // DNAT), counters or ids misplaced, and malformed lines taken as events.
  it("reads both families, both tuples, counters, status and id", () => {
    const v4 = parseConntrackLine("destroy 4 6 0af40002 40000 0a60000a 80 0af40105 8080 0af40002 40000 5 274 3 164 526 2877860519");
    assert.ok(v4 && v4 !== "lost");
    assert.equal(v4.kind, "destroy");
    assert.deepEqual([formatIp(v4.original.source), v4.original.sport, formatIp(v4.original.destination), v4.original.dport], ["10.244.0.2", 40000, "10.96.0.10", 80]);
    assert.deepEqual([formatIp(v4.reply.source), v4.reply.sport, formatIp(v4.reply.destination), v4.reply.dport], ["10.244.1.5", 8080, "10.244.0.2", 40000]);
    assert.deepEqual([v4.packets, v4.bytes, v4.status, v4.id], [[5, 3], [274, 164], 526, 2877860519]);
    const v6 = parseConntrackLine(`new 6 58 ${"fd00001002440000".padEnd(32, "0")} 0 ${"fd000010024400010000000000000002"} 0 ${"fd000010024400010000000000000002"} 0 ${"fd00001002440000".padEnd(32, "0")} 0 0 0 0 0 8 1`);
    assert.ok(v6 && v6 !== "lost");
    assert.equal(formatIp(v6.original.destination), "fd00:10:244:1::2");
    assert.equal(v6.protocol, 58);
    assert.equal(parseConntrackLine("lost"), "lost");
  });

  it("refuses anything else", () => {
    const good = "new 4 6 0af40002 40000 0a60000a 80 0af40105 8080 0af40002 40000 0 0 0 0 8 1";
    assert.ok(parseConntrackLine(good));
    for (const bad of [
      good.replace("new", "renew"), good.replace("new 4", "new 5"), good.replace("0af40002", "0af4002"), good.replace("0af40002", "0AF40002"),
      good.replace(" 40000 ", " 65536 "), good.replace(" 8 1", " 8"), `${good} 1`, good.replace(" 6 ", " 256 "), good.replace(" 8 1", " 4294967296 1"),
      good.replace("0 0 0 0", "0 -1 0 0"), "", "lost ", good.replace(" ", "  "), good.replace(" 80 ", " 8\n0 "),
    ]) assert.equal(parseConntrackLine(bad), undefined, JSON.stringify(bad));
  });
});
