/** 50 ADDs at once on one node: 50 distinct addresses per family and no error. */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { NetnsPool, sweepStaleNamespaces, type TestNetns } from "./support/netns.js";
import { addressesOf, cniSuite, hostVeths, recordedPods, tempDir, trellis } from "./support/trellis-cni.js";

const PODS = 50;

describe(cniSuite(`trellis under ${PODS} parallel ADDs`), () => {
  const pool = new NetnsPool();
  const state = tempDir("concurrency");
  let node: TestNetns;
  let pods: TestNetns[];
  const config = {
    cniVersion: "1.1.0", name: "burst", type: "trellis",
    ipam: { ranges: [[{ subnet: "10.244.7.0/24" }], [{ subnet: "fd00:10:244:7::/64" }]], dataDir: state.path },
  };

  before(() => {
    sweepStaleNamespaces();
    node = pool.create("node");
    pods = Array.from({ length: PODS }, () => pool.create("pod"));
  });
  after(() => {
    pool.removeAll();
    state.remove();
  });

  it("gives every pod its own address in each family", async () => {
    const outcomes = await Promise.all(pods.map((pod, i) => trellis("ADD", node, config, { id: `burst-${i}`, netns: pod.path })));
    const failures = outcomes.filter((outcome) => outcome.code !== 0).map((outcome) => outcome.stdout + outcome.stderr);
    assert.deepEqual(failures, [], "no ADD failed");
    const addresses = outcomes.map((outcome) => addressesOf(JSON.parse(outcome.stdout)));
    for (const family of [0, 1]) {
      const column = addresses.map((pair) => pair[family]);
      assert.equal(new Set(column).size, PODS, `${PODS} distinct addresses in family ${family}`);
    }
    assert.equal(hostVeths(node).length, PODS);
    assert.equal(recordedPods(state.path, "burst").length, PODS);
  });

  it("releases them all on parallel DELs", async () => {
    const outcomes = await Promise.all(pods.map((pod, i) => trellis("DEL", node, config, { id: `burst-${i}`, netns: pod.path })));
    assert.deepEqual(outcomes.filter((outcome) => outcome.code !== 0).map((outcome) => outcome.stdout), []);
    assert.deepEqual(hostVeths(node), []);
    assert.deepEqual(recordedPods(state.path, "burst"), []);
  });
});
