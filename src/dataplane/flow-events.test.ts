import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { parsePrefix } from "../net/ip.js";
import { ruleText } from "../nft/text.js";
import { flowEventsTable } from "./flow-events.js";

describe("the flow events table", () => {
  // Catches the node's own connections masked too (any end, not the cluster's), a family left
  // out, the mask set before DNAT (a NodePort's connection would keep every event) or after
  // conntrack confirms it (too late for its new event), and overlapping prefixes in an interval set.
  it("masks the events of connections with a pod or Service address at either end, after DNAT, per family", () => {
    const table = flowEventsTable([parsePrefix("10.244.0.0/16"), parsePrefix("10.96.0.0/16"), parsePrefix("10.244.1.0/24"), parsePrefix("fd00:10:244::/56")], ["destroy", "update", "new"])!;
    assert.deepEqual([...table.baseChains].map(([name, base]) => `${name} ${base.hook} ${base.priority}`), ["postrouting postrouting 200", "input input 200"]);
    assert.deepEqual(table.chains.get("postrouting")!.map(ruleText), [
      "ct state new ip saddr @cluster-4 ct event set new,reply,destroy",
      "ct state new ip daddr @cluster-4 ct event set new,reply,destroy",
      "ct state new ip6 saddr @cluster-6 ct event set new,reply,destroy",
      "ct state new ip6 daddr @cluster-6 ct event set new,reply,destroy",
    ]);
    assert.deepEqual([...table.sets.get("cluster-4")!.elements.keys()].length, 2, "10.244.1.0/24 merged into 10.244.0.0/16");
    assert.equal(flowEventsTable([]), undefined);
    assert.deepEqual([...flowEventsTable([parsePrefix("10.244.0.0/16")])!.sets.keys()], ["cluster-4"]);
    // Catches an event kind the agent reads left out of the mask (no record of it would come).
    assert.equal(ruleText(flowEventsTable([parsePrefix("10.244.0.0/16")], ["new", "destroy"])!.chains.get("input")![0]), "ct state new ip saddr @cluster-4 ct event set new,destroy");
  });
});
