import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { SyncRunner } from "./runner.js";

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe("SyncRunner", () => {
  // Bugs caught: two runs at once (two writers racing on one table), or requests made during a
  // run lost (a change never synced) or each given a run of its own (a burst costs a run each).
  test("runs one at a time, and once more after a run for every request made during it", async () => {
    let active = 0;
    let most = 0;
    let runs = 0;
    const runner = new SyncRunner({
      minIntervalMs: 0,
      run: async () => {
        runs++;
        most = Math.max(most, ++active);
        await sleep(50);
        active--;
      },
    });
    runner.request();
    await sleep(10);
    for (let i = 0; i < 5; i++) runner.request();
    await sleep(200);
    assert.equal(most, 1);
    assert.equal(runs, 2, "the first, and one for the five requests during it");
    await runner.stop();
  });

  // Bug caught: a burst of changes given a run each, faster than the interval asked for.
  test("starts runs at least the interval apart", async () => {
    const starts: number[] = [];
    const runner = new SyncRunner({ minIntervalMs: 150, run: async () => void starts.push(performance.now()) });
    runner.request();
    await sleep(20);
    runner.request();
    await sleep(300);
    assert.equal(starts.length, 2);
    assert.ok(starts[1] - starts[0] >= 140, `${starts[1] - starts[0]} ms apart`);
    await runner.stop();
  });

  // Bugs caught: a failed run never tried again, tried again at once forever, or the delay not
  // starting over after a success (a later failure waiting the longest delay).
  test("tries a failed run again after a delay that doubles, and starts over after a success", async () => {
    const starts: number[] = [];
    const told: Array<number | undefined> = [];
    let failures = 2;
    const runner = new SyncRunner({
      minIntervalMs: 0,
      firstRetryMs: 40,
      maxRetryMs: 1_000,
      run: async () => {
        starts.push(performance.now());
        if (failures-- > 0) throw new Error("refused");
      },
      failed: (_error, retryInMs) => told.push(retryInMs),
    });
    runner.request();
    await sleep(300);
    assert.equal(starts.length, 3, "two failures, then a success");
    assert.deepEqual(told, [40, 80]);
    assert.ok(starts[1] - starts[0] >= 35 && starts[2] - starts[1] >= 75, JSON.stringify(starts.map((at) => Math.round(at - starts[0]))));
    failures = 1;
    runner.request();
    await sleep(100);
    assert.deepEqual(told, [40, 80, 40], "the delay starts over");
    await runner.stop();
  });

  // Bug caught: a run started after stop (a write onto a namespace being torn down), or stop
  // returning while a run still writes.
  test("stop waits for the run under way and starts no other", async () => {
    let runs = 0;
    let ended = false;
    const runner = new SyncRunner({
      minIntervalMs: 0,
      firstRetryMs: 10,
      run: async () => {
        runs++;
        await sleep(50);
        ended = true;
      },
    });
    runner.request();
    await sleep(10);
    runner.request();
    await runner.stop();
    assert.equal(ended, true);
    runner.request();
    await sleep(80);
    assert.equal(runs, 1);
    assert.equal(runner.running, false);
  });
});
