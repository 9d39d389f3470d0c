/**
 * One process storing a cluster plan, for the stored-plan race test:
 *   cluster-plan.worker.ts PLAN_JSON SPEC NAMESPACE [SPEC NAMESPACE …]   (NAMESPACE "-" for none)
 * Opens its own handle on every store first; then, in each round `runWorkersInLockstep`
 * releases, calls openCluster on the next store and answers with one JSON line: the plan it
 * ended up with, or why it was refused.
 */
import { openCluster } from "../../src/cluster/state.js";
import { formatPlanFile, parsePlan } from "../../src/plan/plan.js";
import type { KvStore } from "../../src/store/kv.js";
import { openStore } from "../../src/store/open.js";
import { lockstepRounds } from "./workers.js";

export type PlanAnswer = { readonly plan: string } | { readonly refused: string };

const [planText, ...storeArgs] = process.argv.slice(2);
const plan = parsePlan(planText, "from the command line");
const stores: KvStore[] = [];
try {
  for (let i = 0; i < storeArgs.length; i += 2) {
    const [spec, namespace] = storeArgs.slice(i, i + 2);
    stores.push(await openStore(spec, namespace === "-" ? {} : { etcd: { namespace } }));
  }
  for await (const round of lockstepRounds()) {
    const answer: PlanAnswer = await openCluster(stores[round], plan).then(
      (cluster) => ({ plan: formatPlanFile(cluster.plan) }),
      (error: Error) => ({ refused: error.message }),
    );
    process.stdout.write(`${JSON.stringify(answer)}\n`);
  }
} finally {
  for (const store of stores) await store.close();
}
