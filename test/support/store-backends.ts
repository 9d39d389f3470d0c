/**
 * Both store backends for tests that must run against each: a SQLite file in a temp dir, and a
 * real etcd started for the test file. Each `open()` returns an empty store: a new file, or a new
 * key namespace in the shared etcd. `cleanup()` closes everything and removes what was made.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { KvStore } from "../../src/store/kv.js";
import { openStore } from "../../src/store/open.js";
import { startTestEtcd, type TestEtcd } from "./etcd.js";

export type BackendName = "sqlite" | "etcd";

export interface TestBackend {
  readonly name: BackendName;
  /** A fresh, empty store, with the spec a child process can open it by (and its namespace). */
  fresh(): Promise<TestStore>;
  cleanup(): Promise<void>;
}

export interface TestStore {
  readonly store: KvStore;
  /** What `openStore` takes to reach the same data, e.g. from a worker process. */
  readonly spec: string;
  /** The etcd key namespace, when the backend is etcd. */
  readonly namespace?: string;
  /** Opens another handle on the same data. */
  reopen(): Promise<KvStore>;
}

export async function startTestBackend(name: BackendName): Promise<TestBackend> {
  return name === "sqlite" ? startSqliteBackend() : startEtcdBackend();
}

function startSqliteBackend(): TestBackend {
  const dir = mkdtempSync(join(tmpdir(), "trellis-store-"));
  const opened: KvStore[] = [];
  let counter = 0;
  const track = async (spec: string): Promise<KvStore> => {
    const store = await openStore(spec, { sqlite: { pollIntervalMs: 10 } });
    opened.push(store);
    return store;
  };
  return {
    name: "sqlite",
    fresh: async () => {
      const spec = `sqlite:${join(dir, `store-${counter++}.db`)}`;
      return { store: await track(spec), spec, reopen: () => track(spec) };
    },
    cleanup: async () => {
      for (const store of opened.splice(0)) await store.close().catch(() => undefined);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

async function startEtcdBackend(): Promise<TestBackend> {
  const etcd: TestEtcd = await startTestEtcd();
  const opened: KvStore[] = [];
  let counter = 0;
  const track = async (namespace: string): Promise<KvStore> => {
    const store = await openStore(etcd.spec, { etcd: { namespace } });
    opened.push(store);
    return store;
  };
  return {
    name: "etcd",
    fresh: async () => {
      const namespace = `/test-${process.pid}-${counter++}`;
      return { store: await track(namespace), spec: etcd.spec, namespace, reopen: () => track(namespace) };
    },
    cleanup: async () => {
      for (const store of opened.splice(0)) await store.close().catch(() => undefined);
      await etcd.stop();
    },
  };
}
