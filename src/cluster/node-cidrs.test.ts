import assert from "node:assert/strict";
import { after, describe, test } from "node:test";
import { parsePrefix } from "../net/ip.js";
import { assertBandConsistent, temporaryStores, testPlan, type PlanText } from "../../test/support/cluster.js";
import { openCluster, type Cluster } from "./state.js";
import { addNode, listNodes, nodeCidrRanges, removeNode, serviceOverlaps } from "./node-cidrs.js";

const stores = temporaryStores();
after(() => stores.cleanup());

function cluster(text: PlanText): Promise<Cluster> {
  return openCluster(stores.open(), testPlan(text));
}

async function podCidrs(c: Cluster, name: string): Promise<readonly string[]> {
  return (await addNode(c, name)).result.podCidrs;
}

describe("node pod CIDRs", () => {
  test("blocks are handed out in order from the next candidate", async () => {
    const c = await cluster({ podCidrs: ["10.244.0.0/16"], serviceCidrs: ["10.96.0.0/16"] });
    assert.deepEqual(await podCidrs(c, "node-a"), ["10.244.0.0/24"]);
    assert.deepEqual(await podCidrs(c, "node-b"), ["10.244.1.0/24"]);
    await removeNode(c, "node-a");
    assert.deepEqual(await podCidrs(c, "node-c"), ["10.244.2.0/24"], "a freed block waits for the scan to wrap");
    assert.deepEqual(
      (await listNodes(c.store)).map((node) => [node.name, node.podCidrs]),
      [
        ["node-b", ["10.244.1.0/24"]],
        ["node-c", ["10.244.2.0/24"]],
      ],
    );
  });

  test("the scan wraps around to freed blocks, and a full range names itself and its size", async () => {
    const c = await cluster({ podCidrs: ["10.244.0.0/22"], serviceCidrs: ["10.96.0.0/16"] });
    for (const name of ["a", "b", "c", "d"]) await addNode(c, name);
    await assert.rejects(
      addNode(c, "e"),
      /^Error: CIDR allocation failed for node e; there are no remaining CIDRs left to allocate in the accepted range 10\.244\.0\.0\/22: all 4 \/24 blocks are taken$/,
    );
    await removeNode(c, "b");
    assert.deepEqual(await podCidrs(c, "e"), ["10.244.1.0/24"]);
    await assertBandConsistent(c.store, nodeCidrRanges(c.plan)[0].band);
  });

  test("blocks overlapping a service range are never handed out", async () => {
    const c = await cluster({ podCidrs: ["10.0.0.0/22"], serviceCidrs: ["10.0.1.0/24"] });
    const got = [await podCidrs(c, "a"), await podCidrs(c, "b"), await podCidrs(c, "c")].flat();
    assert.deepEqual(got, ["10.0.0.0/24", "10.0.2.0/24", "10.0.3.0/24"]);
    await assert.rejects(addNode(c, "d"), /all 4 \/24 blocks are taken; 1 of them overlap service CIDR 10\.0\.1\.0\/24 and are never handed out$/);
  });

  test("service overlaps are counted in blocks, whichever range is larger", () => {
    const pod = parsePrefix("10.0.0.0/16");
    const blocks = (service: string, mask = 24) => serviceOverlaps(pod, mask, [parsePrefix(service)]).map((r) => [r.first, r.last]);
    assert.deepEqual(blocks("10.0.4.0/22"), [[4n, 7n]]);
    assert.deepEqual(blocks("10.0.5.128/25"), [[5n, 5n]]);
    assert.deepEqual(blocks("10.0.0.0/8"), [[0n, 255n]]);
    assert.deepEqual(blocks("10.1.0.0/16"), []);
    assert.deepEqual(blocks("fd00::/64"), []);
  });

  test("dual-stack: one block per family in plan order", async () => {
    const c = await cluster({
      podCidrs: ["fd00:10:244::/56", "10.244.0.0/16"],
      serviceCidrs: ["fd00:10:96::/112", "10.96.0.0/16"],
    });
    assert.deepEqual(await podCidrs(c, "node-a"), ["fd00:10:244::/64", "10.244.0.0/24"]);
    assert.deepEqual(await podCidrs(c, "node-b"), ["fd00:10:244:1::/64", "10.244.1.0/24"]);
  });

  test("dual-stack is all or nothing: a full second family takes nothing from the first", async () => {
    const c = await cluster({
      podCidrs: ["10.244.0.0/22", "fd00:10:244::/63"],
      serviceCidrs: ["10.96.0.0/16", "fd00:10:96::/112"],
    });
    await addNode(c, "a");
    await addNode(c, "b");
    const [v4] = nodeCidrRanges(c.plan);
    const before = await c.store.list("/ranges/");
    await assert.rejects(addNode(c, "c"), /no remaining CIDRs left to allocate in the accepted range fd00:10:244::\/63: all 2 \/64 blocks are taken/);
    const afterFailure = await c.store.list("/ranges/");
    assert.deepEqual(afterFailure.entries, before.entries, "nothing of the IPv4 range was taken, not even the cursor moved");
    assert.equal(afterFailure.revision, before.revision);
    assert.equal((await listNodes(c.store)).length, 2);
    await removeNode(c, "a");
    assert.deepEqual(await podCidrs(c, "c"), ["10.244.2.0/24", "fd00:10:244::/64"]);
    await assertBandConsistent(c.store, v4.band);
  });

  test("removing a node frees its blocks; names and duplicates are checked", async () => {
    const c = await cluster({ podCidrs: ["10.244.0.0/23"], serviceCidrs: ["10.96.0.0/16"] });
    await addNode(c, "a");
    await assert.rejects(addNode(c, "a"), /^Error: node a already exists with pod CIDRs 10\.244\.0\.0\/24$/);
    await assert.rejects(removeNode(c, "zz"), /^Error: node zz does not exist$/);
    await assert.rejects(addNode(c, "Node_1"), /^Error: invalid node name "Node_1": expected a DNS subdomain/);
    const removed = await removeNode(c, "a");
    assert.deepEqual(removed.result.podCidrs, ["10.244.0.0/24"]);
    assert.deepEqual(await c.store.list("/ranges/nodecidrs/"), { entries: [], revision: removed.revision });
    await assertBandConsistent(c.store, nodeCidrRanges(c.plan)[0].band);
  });
});
