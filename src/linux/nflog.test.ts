import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { formatIp } from "../net/ip.js";
import { parseLine } from "./nflog.js";

describe("the nflog reader's lines", () => {
  // Catches a misread packet (addresses or ports swapped, a family taken for the other) and
  // anything else taken as a line: a prefix with spaces or a newline, short or long hex, numbers
  // out of range, fields missing or added.
  it("reads both families and refuses anything else", () => {
    const v4 = parseLine("denied-0123456789abcdef 4 6 0af40105 40000 0af40207 80")!;
    assert.deepEqual([v4.prefix, v4.protocol, formatIp(v4.from), v4.sport, formatIp(v4.to), v4.dport], ["denied-0123456789abcdef", 6, "10.244.1.5", 40000, "10.244.2.7", 80]);
    const v6 = parseLine("denied-x 6 17 fd000010024400000000000000000005 53 fd000010024400000000000000000207 5353")!;
    assert.deepEqual([formatIp(v6.from), formatIp(v6.to), v6.protocol], ["fd00:10:244::5", "fd00:10:244::207", 17]);
    for (const bad of [
      "denied-x 4 6 0af40105 40000 0af40207",
      "denied-x 4 6 0af40105 40000 0af40207 80 extra",
      "denied x 4 6 0af40105 40000 0af40207 80",
      "denied-x 5 6 0af40105 40000 0af40207 80",
      "denied-x 4 6 0af401 40000 0af40207 80",
      "denied-x 6 6 0af40105 40000 0af40207 80",
      "denied-x 4 6 0af40105 70000 0af40207 80",
      "denied-x 4 -1 0af40105 1 0af40207 80",
      "denied-x 4 6 0AF4010G 1 0af40207 80",
      `${"d".repeat(128)} 4 6 0af40105 1 0af40207 80`,
      "",
    ]) assert.equal(parseLine(bad), undefined, bad);
  });
});
