import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { FlowRecord } from "./record.js";
import { FlowRing } from "./ring.js";

function record(i: number, verdict: FlowRecord["verdict"] = "forwarded"): FlowRecord {
  return {
    time: new Date(Date.UTC(2026, 11, 8, 10, 0, 0, i)).toISOString(), node: "node1", event: "new", verdict, protocol: "UDP",
    source: { address: "10.244.0.2", port: 1000 + i }, destination: { address: "10.244.1.2", port: 53 },
  };
}
const ports = (records: readonly FlowRecord[]) => records.map((r) => r.source.port);

describe("the flow ring", () => {
  // Catches an off-by-one at the wrap (the oldest kept, a record twice, or the order broken)
  // and a limit that keeps the oldest instead of the newest.
  it("keeps the newest records in order across the wrap, and a limit keeps the newest", () => {
    const ring = new FlowRing(5);
    for (let i = 0; i < 3; i++) ring.push(record(i));
    assert.deepEqual(ports(ring.recent({})), [1000, 1001, 1002]);
    for (let i = 3; i < 13; i++) ring.push(record(i));
    assert.equal(ring.length, 5);
    assert.deepEqual(ports(ring.recent({})), [1008, 1009, 1010, 1011, 1012]);
    assert.deepEqual(ports(ring.recent({}, 2)), [1011, 1012]);
    ring.push(record(13, "denied"));
    assert.deepEqual(ports(ring.recent({ verdict: "denied" })), [1013]);
    assert.throws(() => new FlowRing(0), /at least one record, not 0/);
  });

  // Catches a follower whose queue grows without bound while its reader stalls (the agent's
  // memory), drops that go uncounted, and a follower left subscribed after it stopped.
  it("bounds what a follower that does not read holds, counting what it missed", () => {
    const ring = new FlowRing(10);
    let signals = 0;
    const follower = ring.follow({ verdict: "forwarded" }, 4, () => signals++);
    for (let i = 0; i < 100; i++) ring.push(record(i, i % 10 === 0 ? "denied" : "forwarded"));
    assert.equal(follower.pending, 4);
    assert.equal(signals, 1, "told once until it takes");
    const taken = follower.take();
    assert.deepEqual(ports(taken.records), [1001, 1002, 1003, 1004]);
    assert.equal(taken.dropped, 90 - 4, "the forwarded ones beyond the bound");
    assert.equal(follower.dropped, 86);
    ring.push(record(200));
    assert.equal(signals, 2);
    assert.equal(follower.take().dropped, 0);
    follower.stop();
    assert.equal(ring.followerCount, 0);
    ring.push(record(201));
    assert.equal(follower.pending, 0);
  });
});
