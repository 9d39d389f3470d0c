import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { assertBandConsistent, testPlan } from "../../test/support/cluster.js";
import { startTestBackend, type BackendName, type TestBackend } from "../../test/support/store-backends.js";
import { claimNodePort, nodePortBands, releaseNodePort } from "./node-ports.js";
import { addService } from "./services.js";
import { stagedView } from "./staged.js";
import { openCluster } from "./state.js";

const plan = testPlan({ podCidrs: ["10.244.0.0/16"], serviceCidrs: ["10.96.0.0/16"], nodePortRange: "30000-30015" });

for (const name of ["sqlite", "etcd"] as BackendName[]) {
  describe(`several claims from one band in one transaction (${name})`, () => {
    let backend: TestBackend;
    before(async () => {
      backend = await startTestBackend(name);
    });
    after(async () => {
      await backend?.cleanup();
    });

    // A requested port first: a random claim before it may take that port. Bug caught: joining two claims' fragments as they are (both rewrite the same free run, so
    // the second undoes the first, or both take one port), or a key twice in one etcd transaction.
    test("16 NodePorts claimed in one transaction are distinct, and the band stays consistent", async () => {
      const { store } = await backend.fresh();
      await openCluster(store, plan);
      const view = stagedView(store);
      const ports: number[] = [];
      for (let i = 0; i < 16; i++) {
        const claimed = await claimNodePort(view.store, plan, i === 0 ? 30010 : undefined, `default/multi`);
        view.stage(claimed.fragment);
        ports.push(claimed.port);
      }
      assert.equal((await store.txn(view.transaction())).succeeded, true);
      assert.deepEqual([...ports].sort((a, b) => a - b), Array.from({ length: 16 }, (_, i) => 30000 + i));
      const bands = nodePortBands(plan);
      await assertBandConsistent(store, bands.dynamicBand);
      await assert.rejects(claimNodePort(store, plan, undefined, "default/other"), /NodePort range 30000-30015 is full/);

      // Release and claim again in one view: the freed ports merge back into runs correctly.
      const again = stagedView(store);
      for (const port of [30001, 30002, 30003]) again.stage((await releaseNodePort(again.store, plan, port, "default/multi"))!);
      const reclaimed = await claimNodePort(again.store, plan, undefined, "default/multi");
      again.stage(reclaimed.fragment);
      assert.ok([30001, 30002, 30003].includes(reclaimed.port));
      assert.equal((await store.txn(again.transaction())).succeeded, true);
      await assertBandConsistent(store, bands.dynamicBand);
    });

    // Bug caught: compares dropped or taken from the staged state, so a claim committed by
    // someone else meanwhile is overwritten.
    test("a staged transaction fails when another claim lands in between", async () => {
      const { store } = await backend.fresh();
      const cluster = await openCluster(store, plan);
      const view = stagedView(store);
      view.stage((await claimNodePort(view.store, plan, 30005, "default/late")).fragment);
      view.stage((await claimNodePort(view.store, plan, 30006, "default/late")).fragment);
      await addService(cluster, { name: "early", type: "NodePort", nodePort: 30006 });
      assert.equal((await store.txn(view.transaction())).succeeded, false);
      await assertBandConsistent(store, nodePortBands(plan).dynamicBand);
    });
  });
}
