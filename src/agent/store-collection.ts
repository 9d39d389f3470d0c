/**
 * A prefix of the Trellis store (SQLite or etcd) as a collection the reflector follows
 * (kube/informer.ts): listed whole at one revision, watched from the revision after it, each
 * entry versioned by its last change. A watch whose history was compacted lists again at once.
 */
import type { Collection } from "../kube/informer.js";
import { KvCompactedError, type KvEntry, type KvStore } from "../store/kv.js";

export function storeCollection(store: KvStore, prefix: string): Collection<KvEntry, number> {
  return {
    async list() {
      const { entries, revision } = await store.list(prefix);
      return { items: entries.map((entry) => ({ key: entry.key, version: String(entry.modRevision), object: entry })), from: revision + 1 };
    },
    async watch(from, event, signal) {
      const watch = store.watch(prefix, from);
      const stop = () => watch.stop();
      signal.addEventListener("abort", stop, { once: true });
      if (signal.aborted) watch.stop();
      let next = from;
      try {
        for await (const change of watch) {
          next = change.revision + 1;
          // A watch event does not carry the key's creation: its own revision stands in for it.
          const entry = change.type === "delete" ? undefined : { key: change.key, value: change.value, createRevision: change.revision, modRevision: change.revision };
          event(change.key, entry, String(change.revision));
        }
      } finally {
        signal.removeEventListener("abort", stop);
      }
      if (signal.aborted) return next;
      throw new Error(`the watch of ${prefix} in ${store.spec} ended`);
    },
    expired: (error) => error instanceof KvCompactedError,
  };
}

/** How long the store's followers wait at most between attempts while it is unreachable. */
export const STORE_MAX_RETRY_MS = 30_000;
