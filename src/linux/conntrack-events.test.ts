import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { formatIp } from "../net/ip.js";
import { CONNTRACK_RECORD, decodeConntrackRecord, encodeConntrackRecord as conntrackRecord, RECORD } from "./conntrack-events.js";

describe("the conntrack reader's records", () => {
  // Catches the tuples read in the wrong order (the reply taken for the original loses the
  // DNAT), counters or ids misplaced, IPv6 read as IPv4, and malformed records taken as events.
  it("reads both families, both tuples, counters, status and id", () => {
    const v4 = decodeConntrackRecord(conntrackRecord({ kind: 3, protocol: 6, from: "10.244.0.2", sport: 40000, to: "10.96.0.10", dport: 80, replyFrom: "10.244.1.5", replySport: 8080, packets: [5, 3], bytes: [274, 164], status: 526, id: 2877860519 }));
    assert.ok(v4 && v4 !== "lost");
    assert.equal(v4.kind, "destroy");
    assert.deepEqual([formatIp(v4.original.source), v4.original.sport, formatIp(v4.original.destination), v4.original.dport], ["10.244.0.2", 40000, "10.96.0.10", 80]);
    assert.deepEqual([formatIp(v4.reply.source), v4.reply.sport, formatIp(v4.reply.destination), v4.reply.dport], ["10.244.1.5", 8080, "10.244.0.2", 40000]);
    assert.deepEqual([v4.packets, v4.bytes, v4.status, v4.id], [[5, 3], [274, 164], 526, 2877860519]);
    const v6 = decodeConntrackRecord(conntrackRecord({ kind: 1, protocol: 58, from: "fd00:10:244::2", sport: 0, to: "fd00:10:244:1::2", dport: 0, replyFrom: "fd00:10:244:1::2", replySport: 0 }));
    assert.ok(v6 && v6 !== "lost");
    assert.deepEqual([v6.kind, v6.family, v6.protocol, formatIp(v6.original.destination)], ["new", 6, 58, "fd00:10:244:1::2"]);
    const lost = Buffer.alloc(CONNTRACK_RECORD);
    lost[0] = 255;
    assert.equal(decodeConntrackRecord(lost), "lost");
  });

  it("refuses anything else", () => {
    const good = conntrackRecord({ kind: 1, protocol: 6, from: "10.244.0.2", sport: 1, to: "10.244.1.2", dport: 2, replyFrom: "10.244.1.2", replySport: 2 });
    assert.ok(decodeConntrackRecord(good));
    const changed = (at: number, value: number) => {
      const copy = Buffer.from(good);
      copy[at] = value;
      return copy;
    };
    for (const bad of [changed(RECORD.kind, 0), changed(RECORD.kind, 4), changed(RECORD.family, 5), good.subarray(0, CONNTRACK_RECORD - 1)]) {
      assert.equal(decodeConntrackRecord(bad), undefined);
    }
  });
});
