/**
 * Test helpers for the cluster allocators: hand-made plans (so tests can use plans the plan
 * validator would refuse, such as pod ranges overlapping service ranges), SQLite stores in temp
 * dirs, and a consistency check of a band's free index against its items.
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parsePrefix } from "../../src/net/ip.js";
import type { ClusterPlan } from "../../src/plan/plan.js";
import type { KvStore } from "../../src/store/kv.js";
import { openSqliteStore } from "../../src/store/sqlite-kv.js";
import { freeIntervals, listLongRuns, listRuns, WINDOW, type IndexBand, type IndexInterval } from "../../src/cluster/free-runs.js";

export interface PlanText {
  readonly podCidrs: readonly string[];
  readonly serviceCidrs: readonly string[];
  readonly nodeCidrs?: readonly string[];
  readonly nodeMaskSize?: { readonly 4?: number; readonly 6?: number };
  readonly nodePortRange?: string;
}

export function testPlan(text: PlanText): ClusterPlan {
  const [first, last] = (text.nodePortRange ?? "30000-32767").split("-").map(Number);
  return {
    podCidrs: text.podCidrs.map(parsePrefix),
    serviceCidrs: text.serviceCidrs.map(parsePrefix),
    nodeCidrs: (text.nodeCidrs ?? []).map(parsePrefix),
    nodeMaskSize: { 4: text.nodeMaskSize?.[4] ?? 24, 6: text.nodeMaskSize?.[6] ?? 64 },
    nodePortRange: { first, last },
  };
}

/** SQLite stores in one temp dir; `cleanup` closes them and removes the dir. */
export function temporaryStores(): { open(): KvStore; cleanup(): Promise<void> } {
  const dir = mkdtempSync(join(tmpdir(), "trellis-cluster-"));
  const stores: KvStore[] = [];
  let counter = 0;
  return {
    open: () => {
      const store = openSqliteStore(join(dir, `cluster-${counter++}.db`));
      stores.push(store);
      return store;
    },
    cleanup: async () => {
      for (const store of stores.splice(0)) await store.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/**
 * Checks that a band's runs are exactly its free indices (every index is in one run, or has an
 * item, or is reserved; never two of these) and that the long-run index holds exactly the long
 * runs. Reads the whole band, so only for small bands.
 */
export async function assertBandConsistent(store: KvStore, band: IndexBand, reserved: readonly IndexInterval[] = []): Promise<void> {
  const runs = await listRuns(store, band);
  const longRuns = await listLongRuns(store, band);
  const taken: IndexInterval[] = [...reserved];
  for (let index = band.first; index <= band.last; index++) {
    if (await store.get(band.itemKey(index))) taken.push({ first: index, last: index });
  }
  const expected = freeIntervals(band, taken);
  assert.deepEqual(
    runs.map((run) => [run.start, run.end]),
    expected.map((interval) => [interval.first, interval.last]),
    `free runs of ${band.runPrefix} do not match its items`,
  );
  assert.deepEqual(
    longRuns.map((run) => [run.start, run.end]),
    expected.filter((interval) => interval.last - interval.first + 1n >= WINDOW).map((interval) => [interval.first, interval.last]),
    `long-run index of ${band.runPrefix} does not match its runs`,
  );
}
