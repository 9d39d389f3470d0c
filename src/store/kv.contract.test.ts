/**
 * The KvStore contract, run against both backends: what allocators and watchers may rely on.
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { freeLoopbackPort, startTestEtcd } from "../../test/support/etcd.js";
import { startTestBackend, type BackendName, type TestBackend } from "../../test/support/store-backends.js";
import { runWorker } from "../../test/support/workers.js";
import { KvCompactedError, MAX_TXN_OPERATIONS, type KvEvent, type KvStore, type KvWatch } from "./kv.js";
import { openStore } from "./open.js";

async function put(store: KvStore, key: string, value: string): Promise<number> {
  const result = await store.txn({ compares: [], operations: [{ type: "put", key, value }] });
  assert.equal(result.succeeded, true);
  return result.revision;
}

/** Reads `count` events, failing after `timeoutMs` instead of hanging the suite. */
async function take(watch: KvWatch, count: number, timeoutMs = 10_000): Promise<KvEvent[]> {
  const events: KvEvent[] = [];
  const timer = setTimeout(() => watch.stop(), timeoutMs);
  try {
    for await (const event of watch) {
      events.push(event);
      if (events.length === count) break;
    }
  } finally {
    clearTimeout(timer);
  }
  return events;
}

for (const name of ["sqlite", "etcd"] as BackendName[]) {
  describe(`KvStore contract (${name})`, () => {
    let backend: TestBackend;
    before(async () => {
      backend = await startTestBackend(name);
    });
    after(async () => {
      await backend?.cleanup();
    });

    test("get of an absent key is undefined; create-if-absent creates it once", async () => {
      const { store } = await backend.fresh();
      assert.equal(await store.get("/a"), undefined);
      const created = await store.txn({ compares: [{ key: "/a", modRevision: 0 }], operations: [{ type: "put", key: "/a", value: "one" }] });
      assert.equal(created.succeeded, true);
      const entry = await store.get("/a");
      assert.deepEqual(entry, { key: "/a", value: "one", createRevision: created.revision, modRevision: created.revision });
      const again = await store.txn({ compares: [{ key: "/a", modRevision: 0 }], operations: [{ type: "put", key: "/a", value: "two" }] });
      assert.equal(again.succeeded, false);
      assert.equal(again.revision, created.revision, "a failed compare does not use up a revision");
      assert.equal((await store.get("/a"))?.value, "one");
    });

    test("compare-and-swap on modRevision: the current revision wins, a stale one writes nothing", async () => {
      const { store } = await backend.fresh();
      const first = await put(store, "/k", "v1");
      const swapped = await store.txn({ compares: [{ key: "/k", modRevision: first }], operations: [{ type: "put", key: "/k", value: "v2" }] });
      assert.equal(swapped.succeeded, true);
      assert.ok(swapped.revision > first);
      const entry = await store.get("/k");
      assert.equal(entry?.modRevision, swapped.revision);
      assert.equal(entry?.createRevision, first, "an update keeps the create revision");
      const stale = await store.txn({ compares: [{ key: "/k", modRevision: first }], operations: [{ type: "put", key: "/k", value: "v3" }] });
      assert.equal(stale.succeeded, false);
      assert.equal((await store.get("/k"))?.value, "v2");
    });

    test("a transaction is all or nothing: one failing compare blocks every operation", async () => {
      const { store } = await backend.fresh();
      const revision = await put(store, "/x", "1");
      const result = await store.txn({
        compares: [
          { key: "/x", modRevision: revision },
          { key: "/y", modRevision: 12345 },
        ],
        operations: [
          { type: "put", key: "/x", value: "2" },
          { type: "put", key: "/z", value: "3" },
          { type: "delete", key: "/x2" },
        ],
      });
      assert.equal(result.succeeded, false);
      assert.equal((await store.get("/x"))?.value, "1");
      assert.equal(await store.get("/z"), undefined);
    });

    test("one transaction's changes share one new revision", async () => {
      const { store } = await backend.fresh();
      await put(store, "/gone", "x");
      const result = await store.txn({
        compares: [],
        operations: [
          { type: "put", key: "/p/1", value: "a" },
          { type: "put", key: "/p/2", value: "b" },
          { type: "delete", key: "/gone" },
        ],
      });
      const listed = await store.list("/p/");
      assert.deepEqual(listed.entries.map((entry) => entry.modRevision), [result.revision, result.revision]);
      assert.equal(listed.revision, result.revision);
      assert.equal(await store.get("/gone"), undefined);
    });

    test("delete reports whether the key existed; deleting nothing keeps the revision", async () => {
      const { store } = await backend.fresh();
      const revision = await put(store, "/d", "1");
      const removed = await store.delete("/d");
      assert.equal(removed.deleted, true);
      assert.ok(removed.revision > revision);
      const missing = await store.delete("/d");
      assert.deepEqual(missing, { deleted: false, revision: removed.revision });
      const recreated = await put(store, "/d", "2");
      assert.equal((await store.get("/d"))?.createRevision, recreated, "re-creating starts a new create revision");
    });

    test("list returns one prefix in byte order, bounded by from, to and limit", async () => {
      const { store } = await backend.fresh();
      for (const key of ["/r/b", "/r/a", "/r/c/1", "/r/é", "/rx", "/q"]) await put(store, key, key);
      const all = await store.list("/r/");
      assert.deepEqual(all.entries.map((entry) => entry.key), ["/r/a", "/r/b", "/r/c/1", "/r/é"]);
      const from = await store.list("/r/", { from: "/r/b", limit: 2 });
      assert.deepEqual(from.entries.map((entry) => entry.key), ["/r/b", "/r/c/1"]);
      const to = await store.list("/r/", { to: "/r/c" });
      assert.deepEqual(to.entries.map((entry) => entry.key), ["/r/a", "/r/b"]);
      const empty = await store.list("/r/", { from: "/r/z", to: "/r/c" });
      assert.deepEqual(empty.entries, []);
      assert.equal(empty.revision, all.revision);
      await assert.rejects(store.list("/r/", { limit: 0 }), /invalid list limit 0: expected a positive integer/);
    });

    test("a long list is one snapshot across pages", async () => {
      const { store } = await backend.fresh();
      for (let batch = 0; batch < 60; batch++) {
        const operations = Array.from({ length: 100 }, (_, i) => ({
          type: "put" as const,
          key: `/many/${String(batch * 100 + i).padStart(5, "0")}`,
          value: "x",
        }));
        await store.txn({ compares: [], operations });
      }
      const listed = await store.list("/many/");
      assert.equal(listed.entries.length, 6000);
      assert.equal(listed.entries[5999].key, "/many/05999");
    });

    test("requests neither backend can apply are refused alike", async () => {
      const { store } = await backend.fresh();
      await assert.rejects(
        store.txn({ compares: [], operations: [{ type: "put", key: "/same", value: "1" }, { type: "delete", key: "/same" }] }),
        /transaction changes key "\/same" twice/,
      );
      const tooMany = Array.from({ length: MAX_TXN_OPERATIONS + 1 }, (_, i) => ({ type: "put" as const, key: `/k${i}`, value: "" }));
      await assert.rejects(store.txn({ compares: [], operations: tooMany }), /at most 128 of each are allowed/);
      await assert.rejects(store.get(""), /invalid key "": keys are non-empty strings/);
      assert.throws(() => store.watch("/", 0), /cannot watch from revision 0: revisions start at 1/);
    });

    test("watch replays history from a revision, then follows live changes, in order, under its prefix only", async () => {
      const { store } = await backend.fresh();
      const r1 = await put(store, "/w/a", "1");
      await put(store, "/other", "ignored");
      const r3 = await store.txn({
        compares: [],
        operations: [
          { type: "put", key: "/w/b", value: "2" },
          { type: "put", key: "/w/c", value: "3" },
        ],
      });
      const watch = store.watch("/w/", r1 + 1);
      const live = (async () => {
        await new Promise((resolve) => setTimeout(resolve, 100));
        await store.delete("/w/a");
        await put(store, "/wx", "outside the prefix");
        return put(store, "/w/a", "4");
      })();
      const events = await take(watch, 4);
      const r5 = await live;
      assert.deepEqual(
        events.map((event) => [event.type, event.key, event.value]),
        [
          ["put", "/w/b", "2"],
          ["put", "/w/c", "3"],
          ["delete", "/w/a", ""],
          ["put", "/w/a", "4"],
        ],
      );
      assert.equal(events[0].revision, r3.revision);
      assert.equal(events[1].revision, r3.revision);
      assert.ok(events[2].revision > r3.revision && events[2].revision < r5);
      assert.equal(events[3].revision, r5);
    });

    test("watch sees writes made by another process", async () => {
      const { store, spec, namespace } = await backend.fresh();
      const listed = await store.list("/x/");
      const watch = store.watch("/x/", listed.revision + 1);
      const { stdout } = await runWorker("store-put.worker.ts", [spec, namespace ?? "-", "/x/from-child", "hello"]);
      const [event] = await take(watch, 1);
      assert.deepEqual(event, { type: "put", key: "/x/from-child", value: "hello", revision: Number(stdout.trim()) });
    });

    test("stop ends the iteration", async () => {
      const { store } = await backend.fresh();
      const watch = store.watch("/s/", 1);
      setTimeout(() => watch.stop(), 50);
      const events = await take(watch, 1);
      assert.deepEqual(events, []);
    });

    test("compaction: history before the compact revision cannot be watched; from it on it can", async () => {
      const { store } = await backend.fresh();
      await put(store, "/c/a", "1");
      const r2 = await put(store, "/c/a", "2");
      const r3 = await put(store, "/c/b", "3");
      await store.compact(r3);
      const old = store.watch("/c/", r2);
      await assert.rejects(take(old, 1), (error: unknown) => {
        assert.ok(error instanceof KvCompactedError);
        assert.match(error.message, new RegExp(`cannot watch "/c/" from revision ${r2}: that history has been compacted`));
        return true;
      });
      const events = await take(store.watch("/c/", r3), 1);
      assert.deepEqual(events.map((event) => [event.key, event.revision]), [["/c/b", r3]]);
      assert.equal((await store.get("/c/a"))?.value, "2", "compaction keeps current values");
    });

    test("a second handle sees the same data and revisions", async () => {
      const { store, reopen } = await backend.fresh();
      const revision = await put(store, "/shared", "1");
      const other = await reopen();
      assert.equal((await other.get("/shared"))?.modRevision, revision);
      const result = await other.txn({ compares: [{ key: "/shared", modRevision: revision }], operations: [{ type: "delete", key: "/shared" }] });
      assert.equal(result.succeeded, true);
      assert.equal(await store.get("/shared"), undefined);
    });
  });
}

describe("unreachable stores", () => {
  // A client that keeps retrying would hang the test past its timeout.
  test("etcd that is not there fails, naming the endpoint", { timeout: 6_000 }, async () => {
    const port = await freeLoopbackPort();
    await assert.rejects(openStore(`etcd://127.0.0.1:${port}`), new RegExp(`^Error: etcd at 127\\.0\\.0\\.1:${port} is unreachable: `));
  });

  test("etcd that goes away fails the next call, naming the endpoint", { timeout: 20_000 }, async () => {
    const etcd = await startTestEtcd();
    let store: KvStore | undefined;
    try {
      store = await openStore(etcd.spec, { etcd: { timeoutMs: 2_000 } });
      await put(store, "/before", "1");
      await etcd.stop();
      await assert.rejects(
        store.txn({ compares: [], operations: [{ type: "put", key: "/after", value: "1" }] }),
        new RegExp(`^Error: etcd at 127\\.0\\.0\\.1:${etcd.endpoint.port} is unreachable: `),
      );
    } finally {
      await store?.close();
      await etcd.stop();
    }
  });

  test("a SQLite path that cannot hold a database names the spec and the reason", async () => {
    const dir = mkdtempSync(join(tmpdir(), "trellis-store-"));
    try {
      writeFileSync(join(dir, "file"), "");
      await assert.rejects(
        openStore(`sqlite:${join(dir, "file", "cluster.db")}`),
        new RegExp(`store sqlite:${dir}/file/cluster\\.db cannot be opened: .*a parent of the path is a file, not a directory`),
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
