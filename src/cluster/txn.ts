/**
 * Optimistic transactions for the allocators: read, decide, commit with compares on what was
 * read; when another process got there first, read again. A failed attempt writes nothing.
 */
import type { KvCompare, KvOperation, KvStore } from "../store/kv.js";
import type { TxnFragment } from "./free-runs.js";

export interface Attempt<T> {
  readonly compares: readonly KvCompare[];
  readonly operations: readonly KvOperation[];
  readonly result: T;
}

export interface Committed<T> {
  readonly result: T;
  /** The store revision the change was committed at: a global order across processes and hosts. */
  readonly revision: number;
}

const MAX_ATTEMPTS = 500;

/** Runs `attempt` until its transaction applies; errors it throws (a full range, a bad request) end the loop. */
export async function commitWithRetry<T>(store: KvStore, what: string, attempt: () => Promise<Attempt<T>>): Promise<Committed<T>> {
  for (let round = 0; round < MAX_ATTEMPTS; round++) {
    const { compares, operations, result } = await attempt();
    const outcome = await store.txn({ compares, operations });
    if (outcome.succeeded) return { result, revision: outcome.revision };
    // Jittered, growing pause so that colliding processes stop colliding.
    const pause = Math.random() * Math.min(50, 1 + round * 2);
    await new Promise((resolve) => setTimeout(resolve, pause));
  }
  throw new Error(`${what}: gave up after ${MAX_ATTEMPTS} attempts, each overtaken by a concurrent change in ${store.spec}`);
}

/** Joins fragments into one transaction's compares and operations. */
export function joinFragments(fragments: readonly TxnFragment[]): { compares: KvCompare[]; operations: KvOperation[] } {
  return {
    compares: fragments.flatMap((fragment) => fragment.compares),
    operations: fragments.flatMap((fragment) => fragment.operations),
  };
}
