import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { reflect, type Collection, type Listed } from "./informer.js";

class Expired extends Error {}
class Forbidden extends Error {}

/** A collection in memory, its lists and watches scripted by the test. */
class ScriptedCollection implements Collection<string, number> {
  items = new Map<string, { version: string; value: string }>();
  revision = 1;
  lists = 0;
  /** What the next lists do instead of answering, in order. */
  listFailures: Error[] = [];
  private watcher?: { event: (key: string, object: string | undefined, version: string) => void; fail: (error: Error) => void; end: () => void };

  async list() {
    this.lists++;
    const failure = this.listFailures.shift();
    if (failure) throw failure;
    const items: Listed<string>[] = [...this.items].map(([key, { version, value }]) => ({ key, version, object: value }));
    return { items, from: this.revision + 1 };
  }

  watch(from: number, event: (key: string, object: string | undefined, version: string) => void, signal: AbortSignal): Promise<number> {
    return new Promise<number>((resolve, reject) => {
      const end = () => {
        this.watcher = undefined;
        resolve(this.revision + 1);
      };
      signal.addEventListener("abort", end, { once: true });
      this.watcher = { event, fail: (error) => ((this.watcher = undefined), reject(error)), end };
    });
  }

  expired = (error: unknown) => error instanceof Expired;
  lasting = (error: unknown) => error instanceof Forbidden;

  put(key: string, value: string, tell = true) {
    const version = String(++this.revision);
    this.items.set(key, { version, value });
    if (tell) this.watcher?.event(key, value, version);
  }

  remove(key: string, tell = true) {
    const version = String(++this.revision);
    this.items.delete(key);
    if (tell) this.watcher?.event(key, undefined, version);
  }

  failWatch(error: Error) {
    this.watcher?.fail(error);
  }

  get watching() {
    return this.watcher !== undefined;
  }
}

const turn = () => new Promise((resolve) => setImmediate(resolve));
async function until(what: string, condition: () => boolean): Promise<void> {
  for (let i = 0; i < 500; i++) {
    if (condition()) return;
    await new Promise((resolve) => setTimeout(resolve, 2));
  }
  assert.fail(`timed out waiting for ${what}`);
}

function follow(collection: ScriptedCollection, options = { firstRetryMs: 5, maxRetryMs: 40 }) {
  const seen: Array<[string, string | undefined]> = [];
  const failures: number[] = [];
  let synced = 0;
  const informer = reflect(collection, { change: (key, value) => seen.push([key, value]), synced: () => synced++, failed: (_error, retryInMs) => failures.push(retryInMs) }, options);
  return { informer, seen, failures, synced: () => synced };
}

describe("the reflector (one list-watch loop for the API and the store)", () => {
  it("lists, then tells of every change the watch brings", async () => {
    // Catches: a change between the list and the watch lost, or a deletion not passed on.
    const collection = new ScriptedCollection();
    collection.put("a", "1", false);
    const run = follow(collection);
    await until("watching", () => collection.watching);
    assert.equal(run.synced(), 1);
    collection.put("b", "2");
    collection.remove("a");
    assert.deepEqual(run.seen, [["a", "1"], ["b", "2"], ["a", undefined]]);
    run.informer.stop();
  });

  it("after a failed watch, lists again: reports what went meanwhile gone, what changed anew, and nothing unchanged", async () => {
    // Catches: a relist that forgets deletions made while the watch was down (stale Service rules
    // or routes kept for ever), or one that reports every object again (a full rewrite each time).
    const collection = new ScriptedCollection();
    collection.put("a", "1", false);
    collection.put("b", "1", false);
    const run = follow(collection);
    await until("watching", () => collection.watching);
    run.seen.length = 0;
    collection.failWatch(new Error("connection reset"));
    collection.remove("a", false);
    collection.put("c", "1", false);
    await until("watching again", () => collection.watching && run.synced() === 2);
    assert.deepEqual(run.seen, [["a", undefined], ["c", "1"]]);
    assert.deepEqual(run.failures, [5]);
    run.informer.stop();
  });

  it("lists again at once when the watch's history is gone, without reporting a failure", async () => {
    const collection = new ScriptedCollection();
    const run = follow(collection, { firstRetryMs: 10_000, maxRetryMs: 10_000 });
    await until("watching", () => collection.watching);
    collection.failWatch(new Expired());
    await until("listed again", () => collection.lists === 2 && collection.watching);
    assert.deepEqual(run.failures, []);
    run.informer.stop();
  });

  it("backs off doubling while the source fails, to the maximum at once for a lasting refusal, and starts over after a good list", async () => {
    // Catches: a tight loop against an API server that is down, or one that stays slow after it is back.
    const collection = new ScriptedCollection();
    collection.listFailures = [new Error("down"), new Error("down"), new Error("down"), new Forbidden("no"), new Error("down")];
    const run = follow(collection);
    await until("watching", () => collection.watching);
    assert.deepEqual(run.failures, [5, 10, 20, 40, 40]);
    collection.failWatch(new Error("cut"));
    await until("watching again", () => collection.watching && run.synced() === 2);
    assert.deepEqual(run.failures.slice(5), [5]);
    run.informer.stop();
  });

  it("relist() drops the watch and lists at once, even while waiting out a backoff; stop() ends it for good", async () => {
    // Catches: an agent that knows the store is back (its heartbeat went through) still waiting
    // out a long backoff, or a stopped follower that keeps listing.
    const collection = new ScriptedCollection();
    collection.listFailures = [new Error("down")];
    const run = follow(collection, { firstRetryMs: 60_000, maxRetryMs: 60_000 });
    await until("the first failure", () => run.failures.length === 1);
    run.informer.relist();
    await until("listed", () => run.synced() === 1 && collection.watching);
    run.informer.relist();
    await until("listed again", () => run.synced() === 2 && collection.watching);
    run.informer.stop();
    await turn();
    assert.equal(collection.watching, false);
    const lists = collection.lists;
    await new Promise((resolve) => setTimeout(resolve, 30));
    assert.equal(collection.lists, lists);
    assert.equal(run.informer.synced(), true);
  });
});
