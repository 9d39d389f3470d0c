import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { proxyHealthz } from "./proxy-health.js";

describe("agent/proxy-health", () => {
  it("answers kube-proxy's /healthz: 503 before the first sync and while a sync is stuck, 200 with lastUpdated after", () => {
    // Bugs caught: a load balancer sending traffic to a node whose proxy has written no rule yet,
    // or the body without kube-proxy's lastUpdated (the upstream e2e reads it).
    const now = Date.parse("2026-12-07T16:00:00.000Z");
    const before = proxyHealthz({ lastSyncAt: () => 0, unhealthy: () => undefined }, now);
    assert.equal(before.status, 503);
    assert.equal((JSON.parse(before.body) as { problem: string }).problem, "the Service rules are not synced yet");
    const synced = proxyHealthz({ lastSyncAt: () => now - 1000, unhealthy: () => undefined }, now);
    assert.equal(synced.status, 200);
    assert.deepEqual(JSON.parse(synced.body), { lastUpdated: "2026-12-07T15:59:59.000Z", currentTime: "2026-12-07T16:00:00.000Z", nodeEligible: true });
    const stuck = proxyHealthz({ lastSyncAt: () => now - 1000, unhealthy: () => "a sync has run for 130 s" }, now);
    assert.equal(stuck.status, 503);
  });
});
