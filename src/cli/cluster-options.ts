/**
 * What the cluster commands (`node`, `service`) share: `--store` (or TRELLIS_STORE) names the
 * cluster store, `--plan` (or TRELLIS_PLAN) the address plan, needed at first use and checked
 * against the stored one after; and a plain table printer.
 */
import { Option, type Command } from "commander";
import { openCluster, type Cluster } from "../cluster/state.js";
import { loadPlan, type ClusterPlan } from "../plan/plan.js";
import type { KvStore } from "../store/kv.js";
import { DEFAULT_STORE_SPEC, openStore, requireExistingStore } from "../store/open.js";

export interface ClusterOptions {
  readonly store: string;
  readonly plan?: string;
}

/** Adds --store and --plan to a command. */
export function withClusterOptions(command: Command): Command {
  return command
    .addOption(
      new Option("--store <spec>", "cluster store: sqlite:PATH or etcd://HOST:PORT").env("TRELLIS_STORE").default(DEFAULT_STORE_SPEC),
    )
    .addOption(new Option("--plan <file>", "cluster address plan (YAML or JSON); needed when the store has none yet").env("TRELLIS_PLAN"));
}

/** The plan file's content when one is given; read before anything is opened, so a bad file writes nothing. */
export async function givenPlan(options: ClusterOptions): Promise<ClusterPlan | undefined> {
  return options.plan === undefined ? undefined : loadPlan(options.plan);
}

/**
 * Runs `use` on the store, closing it after. A SQLite file that does not exist yet is not
 * created unless there is a plan to put in it, so a command refused for a missing plan leaves
 * nothing behind.
 */
export async function withStore<T>(options: ClusterOptions, plan: ClusterPlan | undefined, use: (store: KvStore) => Promise<T>): Promise<T> {
  requireExistingStore(options.store, plan !== undefined);
  const store = await openStore(options.store);
  try {
    return await use(store);
  } finally {
    await store.close();
  }
}

/** Stores or checks the plan; call it only once the request itself is known to be good. */
export function cluster(store: KvStore, plan: ClusterPlan | undefined, options: ClusterOptions): Promise<Cluster> {
  return openCluster(store, plan, options.plan);
}

