/**
 * Several allocations in one transaction. The allocators each read the store and return a
 * fragment (compares and operations) for the caller's transaction; two claims from one band
 * cannot simply be joined, since both would rewrite the same free run. A staged view reads
 * through the fragments staged so far (read-your-writes), so the second claim sees the first
 * one's result, and the joined transaction holds each key's final operation once (etcd refuses
 * a key twice in one transaction).
 *
 * Compares on keys a staged fragment wrote are dropped: what the view returned for them is the
 * staged state, not the store's, and the fragment that wrote them compared what it read first.
 */
import type { KvCompare, KvEntry, KvList, KvListOptions, KvOperation, KvStore, KvTxn } from "../store/kv.js";

/** The modRevision a staged key reads with: no store revision is ever negative. */
const STAGED = -1;

export interface StagedView {
  /** Reads as the store would after the staged fragments. */
  readonly store: Pick<KvStore, "get" | "list" | "spec">;
  /** Adds a fragment computed from this view's reads. */
  stage(fragment: KvTxn): void;
  /** The staged fragments as one transaction: the first compare of each key not written here, each key's last operation. */
  transaction(): KvTxn;
  /** A way back to what is staged now: calling it forgets every fragment staged since. */
  snapshot(): () => void;
}

export function stagedView(base: KvStore): StagedView {
  const writes = new Map<string, KvOperation>();
  const compares = new Map<string, KvCompare>();
  const staged = (key: string): KvEntry | undefined | null => {
    const write = writes.get(key);
    if (!write) return null;
    return write.type === "put" ? { key, value: write.value, createRevision: STAGED, modRevision: STAGED } : undefined;
  };
  const store: StagedView["store"] = {
    spec: base.spec,
    async get(key) {
      const entry = staged(key);
      return entry === null ? base.get(key) : entry;
    },
    async list(prefix: string, options: KvListOptions = {}): Promise<KvList> {
      const inRange = (key: string) => key.startsWith(prefix) && (options.from === undefined || key >= options.from) && (options.to === undefined || key < options.to);
      const touched = [...writes.keys()].filter(inRange);
      // Staged deletes may hide listed keys: read as many more as there are.
      const limit = options.limit === undefined ? undefined : options.limit + touched.length;
      const listed = await base.list(prefix, { ...options, limit });
      const merged = new Map(listed.entries.map((entry) => [entry.key, entry]));
      for (const key of touched) {
        const entry = staged(key);
        if (entry) merged.set(key, entry);
        else merged.delete(key);
      }
      const entries = [...merged.values()].sort((a, b) => compareKeys(a.key, b.key));
      return { entries: options.limit === undefined ? entries : entries.slice(0, options.limit), revision: listed.revision };
    },
  };
  return {
    store,
    stage(fragment) {
      for (const compare of fragment.compares) {
        if (compare.modRevision === STAGED || writes.has(compare.key) || compares.has(compare.key)) continue;
        compares.set(compare.key, compare);
      }
      for (const operation of fragment.operations) {
        writes.delete(operation.key);
        writes.set(operation.key, operation);
      }
    },
    transaction() {
      return { compares: [...compares.values()], operations: [...writes.values()] };
    },
    snapshot() {
      const [savedWrites, savedCompares] = [new Map(writes), new Map(compares)];
      return () => {
        writes.clear();
        compares.clear();
        for (const [key, value] of savedWrites) writes.set(key, value);
        for (const [key, value] of savedCompares) compares.set(key, value);
      };
    },
  };
}

/** Keys ordered by their UTF-8 bytes, as the stores order them. */
function compareKeys(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a), Buffer.from(b));
}
