/**
 * The cluster's plan as the store holds it. The first use writes the plan together with the
 * allocators' empty free indexes and the API server's own ClusterIP, in one transaction; every
 * later use checks that the plan it was given is the stored one, because moving ranges under
 * existing allocations would hand out addresses twice.
 *
 * Store layout (values are JSON unless said otherwise):
 *   /plan                                           the plan, canonical JSON (plan/plan.ts)
 *   /nodes/NAME                                     a node and its pod CIDRs
 *   /services/NAMESPACE/NAME                        a Service, its ClusterIPs and NodePort
 *   /ranges/nodecidrs/BLOCK                         owner of a node pod CIDR block
 *   /ranges/serviceips/IP                           owner of a ClusterIP (KEP-1880's IPAddress)
 *   /ranges/servicenodeports/PORT                   owner of a NodePort
 *   /ranges/{nodecidrs,serviceips,servicenodeports}-free/…/BAND/END       free runs (free-runs.ts)
 *   /ranges/{nodecidrs,serviceips,servicenodeports}-free/…/BAND-long/END  the runs of 256 or more
 *   /ranges/nodecidrs-next/CLUSTER-CIDR             next candidate block, as kube-controller-manager keeps it
 */
import { parsePlan, planToFile, samePlan, formatPlanFile, type ClusterPlan, type PlanFile } from "../plan/plan.js";
import type { KvStore } from "../store/kv.js";
import { nodeCidrInitOperations } from "./node-cidrs.js";
import { nodePortInitOperations } from "./node-ports.js";
import { kubernetesServiceOperations } from "./services.js";
import { serviceIpInitOperations } from "./service-ips.js";

export const PLAN_KEY = "/plan";

/** A store whose stored plan is `plan`: what every allocator works on. */
export interface Cluster {
  readonly store: KvStore;
  readonly plan: ClusterPlan;
}

/**
 * Returns the cluster the store holds. With `plan`, stores it on first use and otherwise
 * requires it to equal the stored one; without, the store must already hold a plan.
 */
export async function openCluster(store: KvStore, plan?: ClusterPlan, planSource = "the given plan"): Promise<Cluster> {
  for (;;) {
    const stored = await store.get(PLAN_KEY);
    if (stored) {
      const storedPlan = parsePlan(stored.value, `stored in ${store.spec} at ${PLAN_KEY}`);
      if (plan && !samePlan(plan, storedPlan)) throw new Error(describePlanChange(store, storedPlan, plan, planSource));
      return { store, plan: storedPlan };
    }
    if (!plan) {
      throw new Error(`the store ${store.spec} holds no cluster plan yet: give one with --plan FILE or the TRELLIS_PLAN environment variable`);
    }
    const created = await store.txn({
      compares: [{ key: PLAN_KEY, modRevision: 0 }],
      operations: [
        { type: "put", key: PLAN_KEY, value: formatPlanFile(plan) },
        ...serviceIpInitOperations(plan),
        ...nodePortInitOperations(plan),
        ...nodeCidrInitOperations(plan),
        ...kubernetesServiceOperations(plan),
      ],
    });
    if (created.succeeded) return { store, plan };
    // Another process stored a plan first: loop to compare with it.
  }
}

function describePlanChange(store: KvStore, stored: ClusterPlan, given: ClusterPlan, source: string): string {
  const before = planToFile(stored);
  const after = planToFile(given);
  const fields = Object.keys(before) as (keyof PlanFile)[];
  const changes = fields
    .filter((field) => JSON.stringify(before[field]) !== JSON.stringify(after[field]))
    .map((field) => `${field} is ${describeField(before[field])} in the store but ${describeField(after[field])} in ${source}`);
  return (
    `the store ${store.spec} already holds a different cluster plan: ${changes.join("; ")}. ` +
    "Changing ranges under existing allocations is unsafe, so the stored plan stays: use it (leave out --plan) or start a new store"
  );
}

function describeField(value: PlanFile[keyof PlanFile]): string {
  if (typeof value === "string") return value;
  if (Array.isArray(value)) return value.length === 0 ? "empty" : value.join(",");
  return JSON.stringify(value);
}
