import assert from "node:assert/strict";
import { after, describe, test } from "node:test";
import type { KvStore } from "../store/kv.js";
import {
  claimSlot,
  countFree,
  findFreeAt,
  findFreeFrom,
  freeIntervals,
  initialRunOperations,
  randomBelow,
  releaseIndex,
  type IndexBand,
} from "./free-runs.js";
import { assertBandConsistent, temporaryStores } from "../../test/support/cluster.js";

const stores = temporaryStores();
after(() => stores.cleanup());

function band(first: bigint, last: bigint): IndexBand {
  return { runPrefix: "/test/free/", first, last, itemKey: (index) => `/test/items/${index}` };
}

async function setUp(b: IndexBand, taken: { first: bigint; last: bigint }[] = []): Promise<KvStore> {
  const store = stores.open();
  await store.txn({ compares: [], operations: initialRunOperations(b, taken) });
  return store;
}

async function take(store: KvStore, b: IndexBand, start: bigint): Promise<bigint | undefined> {
  const slot = await findFreeFrom(store, b, start);
  if (!slot) return undefined;
  const fragment = claimSlot(b, slot, "{}");
  const result = await store.txn({ compares: fragment.compares, operations: fragment.operations });
  assert.equal(result.succeeded, true);
  return slot.index;
}

async function give(store: KvStore, b: IndexBand, index: bigint): Promise<void> {
  const fragment = await releaseIndex(store, b, index, () => true);
  assert.ok(fragment, `index ${index} is not taken`);
  const result = await store.txn({ compares: fragment.compares, operations: fragment.operations });
  assert.equal(result.succeeded, true);
}

describe("free runs", () => {
  test("freeIntervals is the band minus what is taken", () => {
    const interval = (first: number, last: number) => ({ first: BigInt(first), last: BigInt(last) });
    assert.deepEqual(freeIntervals(interval(0, 9), []), [interval(0, 9)]);
    assert.deepEqual(freeIntervals(interval(0, 9), [interval(3, 4), interval(0, 0), interval(9, 12)]), [interval(1, 2), interval(5, 8)]);
    assert.deepEqual(freeIntervals(interval(0, 9), [interval(-5, 20)]), []);
    assert.deepEqual(freeIntervals(interval(5, 4), []), []);
  });

  test("the scan takes the first free index at or after the start, then wraps to the lowest", async () => {
    const b = band(0n, 7n);
    const store = await setUp(b, [{ first: 2n, last: 2n }]);
    assert.equal(await take(store, b, 1n), 1n);
    assert.equal(await take(store, b, 1n), 3n, "1 and 2 are taken, so 3");
    assert.equal(await take(store, b, 7n), 7n);
    assert.equal(await take(store, b, 7n), 0n, "nothing at or after 7: wrap to 0");
    assert.equal(await take(store, b, 100n), 4n, "a start past the band wraps too");
    assert.equal(await countFree(store, b), 2n);
    await assertBandConsistent(store, b, [{ first: 2n, last: 2n }]);
  });

  test("an exact index is free only inside a run", async () => {
    const b = band(10n, 20n);
    const store = await setUp(b, [{ first: 15n, last: 15n }]);
    assert.ok(await findFreeAt(store, b, 14n));
    assert.equal(await findFreeAt(store, b, 15n), undefined);
    assert.equal(await findFreeAt(store, b, 21n), undefined);
  });

  test("a full band has no slot; an empty band has no runs", async () => {
    const b = band(0n, 2n);
    const store = await setUp(b);
    for (let i = 0; i < 3; i++) assert.notEqual(await take(store, b, 0n), undefined);
    assert.equal(await findFreeFrom(store, b, 0n), undefined);
    assert.deepEqual(initialRunOperations(band(1n, 0n), []), []);
  });

  test("a stale claim fails its compare instead of taking an index twice", async () => {
    const b = band(0n, 7n);
    const store = await setUp(b);
    const first = await findFreeFrom(store, b, 3n);
    const second = await findFreeFrom(store, b, 3n);
    const one = claimSlot(b, first!, "{}");
    const two = claimSlot(b, second!, "{}");
    assert.equal((await store.txn(one)).succeeded, true);
    assert.equal((await store.txn(two)).succeeded, false);
    await assertBandConsistent(store, b);
  });

  test("random takes and gives keep the runs equal to the free set", async () => {
    const b = band(100n, 163n);
    const reserved = [{ first: 120n, last: 123n }];
    const store = await setUp(b, reserved);
    const held = new Set<bigint>();
    for (let step = 0; step < 400; step++) {
      if (held.size > 0 && (Math.random() < 0.45 || held.size === 60)) {
        const victim = [...held][Number(randomBelow(BigInt(held.size)))];
        await give(store, b, victim);
        held.delete(victim);
      } else {
        const index = await take(store, b, b.first + randomBelow(64n));
        assert.ok(index !== undefined && !held.has(index) && (index < 120n || index > 123n), `took ${index}`);
        held.add(index);
      }
      if (step % 50 === 0) await assertBandConsistent(store, b, reserved);
    }
    await assertBandConsistent(store, b, reserved);
    for (const index of held) await give(store, b, index);
    assert.deepEqual(
      (await store.list(b.runPrefix)).entries.length,
      2,
      "everything given back: the runs around the reserved indices merge into two",
    );
  });

  test("long runs are found from inside them, and the scan gallops over long taken stretches", async () => {
    const b = band(0n, 4095n);
    const store = await setUp(b, [
      { first: 100n, last: 2000n },
      { first: 2003n, last: 4000n },
    ]);
    assert.equal(await take(store, b, 150n), 2001n, "1,900 taken indices, then a short run");
    assert.equal(await take(store, b, 3000n), 4001n, "a run past the window's end");
    assert.equal(await take(store, b, 4095n), 4095n);
    await assertBandConsistent(store, b, [
      { first: 100n, last: 2000n },
      { first: 2003n, last: 4000n },
      { first: 2001n, last: 2001n },
      { first: 4001n, last: 4001n },
      { first: 4095n, last: 4095n },
    ]);
    const empty = band(0n, 99_999n);
    const fresh = await setUp(empty);
    assert.equal(await take(fresh, empty, 77_777n), 77_777n, "inside one long run, no gallop needed");
    assert.equal(await findFreeAt(fresh, empty, 77_777n), undefined);
    assert.ok(await findFreeAt(fresh, empty, 99_999n));
    await give(fresh, empty, 77_777n);
    assert.deepEqual(
      (await fresh.list("/test/free/")).entries.map((entry) => entry.value),
      ["0".repeat(32)],
      "given back: one run again",
    );
  });

  test("random takes and gives over a band with long runs keep both indexes right", async () => {
    const b = band(0n, 2999n);
    const store = await setUp(b);
    const held: bigint[] = [];
    for (let step = 0; step < 300; step++) {
      if (held.length > 0 && Math.random() < 0.3) {
        const [victim] = held.splice(Number(randomBelow(BigInt(held.length))), 1);
        await give(store, b, victim);
      } else {
        // Clustered starts make long taken stretches and long free runs side by side.
        const start = Math.random() < 0.5 ? randomBelow(3000n) : 1000n + randomBelow(50n);
        const index = await take(store, b, start);
        assert.ok(index !== undefined && !held.includes(index));
        held.push(index);
      }
      if (step % 60 === 0) await assertBandConsistent(store, b);
    }
    await assertBandConsistent(store, b);
  });

  test("randomBelow stays below its bound, also past 2^48", () => {
    for (const n of [1n, 7n, 1n << 48n, (1n << 100n) + 3n]) {
      for (let i = 0; i < 50; i++) {
        const value = randomBelow(n);
        assert.ok(value >= 0n && value < n);
      }
    }
  });
});
