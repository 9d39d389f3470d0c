import assert from "node:assert/strict";
import { after, describe, test } from "node:test";
import { assertBandConsistent, temporaryStores, testPlan } from "../../test/support/cluster.js";
import { addService, removeService } from "./services.js";
import { openCluster, type Cluster } from "./state.js";
import { nodePortBands, nodePortOffset } from "./node-ports.js";

const stores = temporaryStores();
after(() => stores.cleanup());

function cluster(nodePortRange: string): Promise<Cluster> {
  return openCluster(stores.open(), testPlan({ podCidrs: ["10.244.0.0/16"], serviceCidrs: ["10.96.0.0/16"], nodePortRange }));
}

async function nodePort(c: Cluster, name: string, port?: number): Promise<number> {
  return (await addService(c, { name, type: "NodePort", nodePort: port })).result.nodePort!;
}

describe("NodePort bands (KEP-3668)", () => {
  test("the offset is min(max(16, size/32), 128), and 0 for 16 ports or fewer", () => {
    assert.equal(nodePortOffset({ first: 30000, last: 32767 }), 86);
    assert.equal(nodePortOffset({ first: 30000, last: 30015 }), 0);
    assert.equal(nodePortOffset({ first: 30000, last: 30016 }), 16);
    assert.equal(nodePortOffset({ first: 1, last: 65535 }), 128);
    const bands = nodePortBands(testPlan({ podCidrs: ["10.244.0.0/16"], serviceCidrs: ["10.96.0.0/16"] }));
    assert.deepEqual(
      [bands.staticBand.first, bands.staticBand.last, bands.dynamicBand.first, bands.dynamicBand.last],
      [30000n, 30085n, 30086n, 32767n],
      "the default range's static band is 30000-30085",
    );
  });

  test("dynamic allocation fills the upper band first, then the static band, then reports the range full", async () => {
    const c = await cluster("30000-30063");
    const upper: number[] = [];
    for (let i = 0; i < 48; i++) upper.push(await nodePort(c, `up-${i}`));
    assert.deepEqual([...upper].sort((a, b) => a - b), Array.from({ length: 48 }, (_, i) => 30016 + i));
    const lower: number[] = [];
    for (let i = 0; i < 16; i++) lower.push(await nodePort(c, `low-${i}`));
    assert.deepEqual([...lower].sort((a, b) => a - b), Array.from({ length: 16 }, (_, i) => 30000 + i));
    const before = await c.store.list("/ranges/serviceips/");
    await assert.rejects(nodePort(c, "one-more"), /^Error: NodePort range 30000-30063 is full: all 64 ports are allocated$/);
    assert.deepEqual((await c.store.list("/ranges/serviceips/")).entries, before.entries, "the ClusterIP taken with it is not kept");
    const bands = nodePortBands(c.plan);
    await assertBandConsistent(c.store, bands.staticBand);
    await assertBandConsistent(c.store, bands.dynamicBand);
  });

  test("a range of 16 ports or fewer is one dynamic band", async () => {
    const c = await cluster("30000-30009");
    const got: number[] = [];
    for (let i = 0; i < 10; i++) got.push(await nodePort(c, `s-${i}`));
    assert.deepEqual([...got].sort((a, b) => a - b), Array.from({ length: 10 }, (_, i) => 30000 + i));
  });

  test("requested ports: honoured when free and inside the range; refused with the reason otherwise", async () => {
    const c = await cluster("30000-32767");
    assert.equal(await nodePort(c, "a", 30001), 30001);
    assert.equal(await nodePort(c, "b", 32767), 32767);
    await assert.rejects(nodePort(c, "c", 30001), /^Error: NodePort 30001 is already allocated to service default\/a$/);
    await assert.rejects(nodePort(c, "c", 8080), /^Error: NodePort 8080 is outside the NodePort range 30000-32767: request a port from 30000 to 32767$/);
    await assert.rejects(
      addService(c, { name: "c", type: "ClusterIP", nodePort: 30002 }),
      /^Error: NodePort 30002 given for Service default\/c of type ClusterIP: only type NodePort Services have one$/,
    );
    await removeService(c, "a");
    assert.equal(await nodePort(c, "c", 30001), 30001);
  });
});
