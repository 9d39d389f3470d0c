import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { parsePrefix } from "../net/ip.js";
import { nodeBlockCount, planRanges, podsPerNodeBlock, serviceIpCount } from "./capacity.js";
import { parsePlan } from "./plan.js";

describe("plan/capacity", () => {
  it("counts node blocks and pods per node, keeping network, gateway and IPv4 broadcast out", () => {
    assert.equal(nodeBlockCount(parsePrefix("10.244.0.0/16"), 24), 256n);
    assert.equal(nodeBlockCount(parsePrefix("fd00:10:244::/56"), 64), 256n);
    assert.equal(podsPerNodeBlock(4, 24), 253n);
    assert.equal(podsPerNodeBlock(4, 30), 1n);
    assert.equal(podsPerNodeBlock(6, 64), (1n << 64n) - 2n);
    assert.equal(podsPerNodeBlock(6, 126), 2n);
  });

  it("counts ClusterIPs as Kubernetes' ServiceCIDR allocator does", () => {
    assert.equal(serviceIpCount(parsePrefix("10.96.0.0/16")), 65534n);
    assert.equal(serviceIpCount(parsePrefix("10.96.0.0/29")), 6n);
    assert.equal(serviceIpCount(parsePrefix("fd00:10:96::/112")), 65535n);
    assert.equal(serviceIpCount(parsePrefix("fd00:10:96::/108")), 1048575n);
  });

  it("lists every range of a plan with its capacity", () => {
    const plan = parsePlan(
      "podCidrs: [fd00:10:244::/56, 10.244.0.0/16]\nserviceCidrs: [fd00:10:96::/112]\nnodeCidrs: [198.18.0.0/15]\nnodeMaskSize: {ipv4: 26}\n",
      "test",
    );
    assert.deepEqual(planRanges(plan), [
      { kind: "pod", range: "fd00:10:244::/56", family: 6, primary: true, size: 1n << 72n, nodeBlocks: 256n, nodeMaskSize: 64, podsPerNode: (1n << 64n) - 2n },
      { kind: "pod", range: "10.244.0.0/16", family: 4, primary: false, size: 65536n, nodeBlocks: 1024n, nodeMaskSize: 26, podsPerNode: 61n },
      { kind: "service", range: "fd00:10:96::/112", family: 6, primary: true, size: 65536n, serviceIps: 65535n },
      { kind: "node", range: "198.18.0.0/15", family: 4, primary: false, size: 131072n },
      { kind: "nodePort", range: "30000-32767", primary: false, size: 2768n, nodePorts: 2768n },
    ]);
  });
});
