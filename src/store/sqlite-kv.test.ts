import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { runWorker } from "../../test/support/workers.js";
import { openSqliteStore } from "./sqlite-kv.js";

describe("SQLite store watch", () => {
  const dir = mkdtempSync(join(tmpdir(), "trellis-sqlite-watch-"));
  after(() => rmSync(dir, { recursive: true, force: true }));

  test("a write by another process reaches a watcher at once, not at the next poll", async () => {
    // Catches: watchers woken only by their poll timer, so every change through the store waits
    // up to a poll interval (20 ms by default; 10 s here) before the agent sees it.
    const path = join(dir, "cluster.db");
    const store = openSqliteStore(path, { pollIntervalMs: 10_000 });
    try {
      const { revision } = await store.list("/w/");
      const watch = store.watch("/w/", revision + 1);
      const iterator = watch[Symbol.asyncIterator]();
      // The first poll, at once, finds nothing; the next is 10 s away.
      await new Promise((resolve) => setTimeout(resolve, 200));
      const started = Date.now();
      const { stdout } = await runWorker("store-put.worker.ts", [`sqlite:${path}`, "-", "/w/from-child", "hello"]);
      const written = Date.now();
      const next = await Promise.race([iterator.next(), new Promise<"late">((resolve) => setTimeout(() => resolve("late"), 3_000))]);
      assert.notEqual(next, "late", "the change came only with the poll");
      assert.deepEqual((next as IteratorResult<unknown>).value, { type: "put", key: "/w/from-child", value: "hello", revision: Number(stdout.trim()) });
      assert.ok(Date.now() - written < 1_000, `seen ${Date.now() - written} ms after the writer ended (started ${written - started} ms before)`);
      watch.stop();
    } finally {
      await store.close();
    }
  });
});
