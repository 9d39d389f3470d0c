import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { formatPlanFile } from "../plan/plan.js";
import type { KvEntry } from "../store/kv.js";
import { temporaryStores, testPlan } from "../../test/support/cluster.js";
import type { PlanAnswer } from "../../test/support/cluster-plan.worker.js";
import { startTestBackend, type BackendName, type TestBackend, type TestStore } from "../../test/support/store-backends.js";
import { runWorkersInLockstep } from "../../test/support/workers.js";
import { serviceKey } from "./services.js";
import { openCluster, PLAN_KEY } from "./state.js";

const stores = temporaryStores();
after(() => stores.cleanup());

const plan = testPlan({ podCidrs: ["10.244.0.0/16"], serviceCidrs: ["10.96.0.0/16"] });

describe("the stored cluster plan", () => {
  test("is stored at first use and used when no plan is given later", async () => {
    const store = stores.open();
    await openCluster(store, plan);
    assert.ok(await store.get(PLAN_KEY));
    const again = await openCluster(store);
    assert.deepEqual(again.plan, plan);
    const same = await openCluster(store, testPlan({ podCidrs: ["10.244.0.0/16"], serviceCidrs: ["10.96.0.0/16"] }));
    assert.deepEqual(same.plan, plan);
  });

  test("a different plan later is refused, naming what differs", async () => {
    const store = stores.open();
    await openCluster(store, plan);
    const other = testPlan({ podCidrs: ["10.244.0.0/16"], serviceCidrs: ["10.97.0.0/16"], nodePortRange: "30000-30100" });
    await assert.rejects(
      openCluster(store, other, "plan.yaml"),
      new RegExp(
        `^Error: the store ${store.spec} already holds a different cluster plan: serviceCidrs is 10\\.96\\.0\\.0/16 in the store but 10\\.97\\.0\\.0/16 in plan\\.yaml; ` +
          "nodePortRange is 30000-32767 in the store but 30000-30100 in plan\\.yaml\\. Changing ranges under existing allocations is unsafe",
      ),
    );
  });

  test("a store without a plan needs one", async () => {
    const store = stores.open();
    await assert.rejects(openCluster(store), /holds no cluster plan yet: give one with --plan FILE or the TRELLIS_PLAN environment variable/);
    assert.equal(await store.get(PLAN_KEY), undefined);
  });
});

/**
 * Separate processes, each with its own handle, as `trellis` commands on several hosts would be.
 * Catches a non-atomic "store the plan if absent" (a read, then a write without a compare): both
 * processes would see no plan and both would write it with its initial allocations, and with
 * different plans the later writer would silently replace the plan the first had already handed
 * out addresses under. Also catches a loser that fails instead of reading the winner's plan.
 * One race is over in well under a millisecond, so the two processes race on several fresh
 * stores, released together for each.
 */
const RACES = 20;

for (const name of ["sqlite", "etcd"] as BackendName[]) {
  describe(`the stored cluster plan across processes (${name})`, () => {
    let backend: TestBackend;
    before(async () => {
      backend = await startTestBackend(name);
    });
    after(async () => {
      await backend?.cleanup();
    });

    test("two processes storing the same plan at once agree, and a third with another plan is refused", { timeout: 120_000 }, async () => {
      const fresh: TestStore[] = [];
      for (let i = 0; i < RACES; i++) fresh.push(await backend.fresh());
      const storeArgs = fresh.flatMap(({ spec, namespace }) => [spec, namespace ?? "-"]);
      const planJson = formatPlanFile(plan);

      const [first, second] = await runWorkersInLockstep("cluster-plan.worker.ts", [[planJson, ...storeArgs], [planJson, ...storeArgs]], RACES);
      const storedPlans: KvEntry[] = [];
      for (const [race, { store }] of fresh.entries()) {
        assert.deepEqual(JSON.parse(first[race]), { plan: planJson }, `race ${race}, first process`);
        assert.deepEqual(JSON.parse(second[race]), { plan: planJson }, `race ${race}, second process`);
        const stored = await store.get(PLAN_KEY);
        assert.ok(stored, `race ${race}: no plan stored`);
        assert.equal(stored.value, planJson);
        assert.equal(stored.modRevision, stored.createRevision, `race ${race}: the plan was written more than once`);
        const kubernetes = await store.get(serviceKey("default", "kubernetes"));
        assert.equal(kubernetes?.modRevision, stored.createRevision, `race ${race}: the initial allocations were not written once, with the plan`);
        storedPlans.push(stored);
      }

      const other = formatPlanFile(testPlan({ podCidrs: ["10.244.0.0/16"], serviceCidrs: ["10.97.0.0/16"] }));
      const [third] = await runWorkersInLockstep("cluster-plan.worker.ts", [[other, ...storeArgs]], RACES);
      for (const [race, { store }] of fresh.entries()) {
        const answer = JSON.parse(third[race]) as PlanAnswer;
        assert.ok("refused" in answer, `race ${race}: the third process was not refused`);
        assert.match(answer.refused, /already holds a different cluster plan: serviceCidrs is 10\.96\.0\.0\/16 in the store but 10\.97\.0\.0\/16/);
        assert.deepEqual(await store.get(PLAN_KEY), storedPlans[race], `race ${race}: the refused process changed the plan`);
      }
    });
  });
}
