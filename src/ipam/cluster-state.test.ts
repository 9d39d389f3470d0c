import assert from "node:assert/strict";
import { after, describe, test } from "node:test";
import { openCluster, PLAN_KEY } from "./cluster-state.js";
import { temporaryStores, testPlan } from "./cluster-testing.js";

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

  test("two processes storing the same plan at once agree", async () => {
    const store = stores.open();
    const [a, b] = await Promise.all([openCluster(store, plan), openCluster(store, plan)]);
    assert.deepEqual(a.plan, b.plan);
  });
});
