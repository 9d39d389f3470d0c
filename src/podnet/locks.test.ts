import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { keyedMutex } from "./locks.js";

/** A promise settled from outside, so a test decides when each task finishes. */
function gate(): { promise: Promise<void>; open: () => void; fail: (error: Error) => void } {
  let open!: () => void;
  let fail!: (error: Error) => void;
  const promise = new Promise<void>((resolve, reject) => {
    open = resolve;
    fail = reject;
  });
  return { promise, open, fail };
}

/** Lets every already-queued promise reaction run. */
const settle = () => new Promise<void>((resolve) => setImmediate(resolve));

describe("podnet/locks", () => {
  it("runs tasks of the same key one after another, in call order", async () => {
    // Catches: no serialization (ADD and DEL of one attachment interleaving in the kernel), or
    // tasks queued behind the first one only, so the third overtakes the second.
    const mutex = keyedMutex();
    const log: string[] = [];
    const gates = [gate(), gate(), gate()];
    const runs = gates.map((g, i) =>
      mutex.run("pods/abc/eth0", async () => {
        log.push(`start ${i}`);
        await g.promise;
        log.push(`end ${i}`);
        return i;
      }),
    );
    await settle();
    assert.deepEqual(log, ["start 0"]);
    gates[2].open();
    gates[1].open();
    await settle();
    assert.deepEqual(log, ["start 0"], "later tasks wait even when they could finish at once");
    gates[0].open();
    assert.deepEqual(await Promise.all(runs), [0, 1, 2]);
    assert.deepEqual(log, ["start 0", "end 0", "start 1", "end 1", "start 2", "end 2"]);
  });

  it("runs tasks of different keys concurrently", async () => {
    // Catches: one global lock, which makes every pod's ADD on the node wait for the slowest one.
    const mutex = keyedMutex();
    const log: string[] = [];
    const slow = gate();
    const first = mutex.run("pods/a/eth0", async () => {
      log.push("a starts");
      await slow.promise;
      log.push("a ends");
    });
    const second = mutex.run("pods/b/eth0", async () => {
      log.push("b runs");
      return "b";
    });
    assert.equal(await second, "b", "b finishes while a is still running");
    assert.deepEqual(log, ["a starts", "b runs"]);
    slow.open();
    await first;
    assert.deepEqual(log, ["a starts", "b runs", "a ends"]);
  });

  it("passes a task's rejection to its caller only, and runs the next task of the key", async () => {
    // Catches: a failed ADD leaving the key locked forever (every later CNI call on that pod
    // hangs), or its error delivered to the next caller instead.
    const mutex = keyedMutex();
    const failing = gate();
    const first = mutex.run("pods/abc/eth0", async () => {
      await failing.promise;
      return "never";
    });
    const second = mutex.run("pods/abc/eth0", async () => "second ran");
    failing.fail(new Error("ADD failed"));
    await assert.rejects(first, { message: "ADD failed" });
    assert.equal(await second, "second ran");
    assert.equal(await mutex.run("pods/abc/eth0", async () => "third ran"), "third ran");
  });

  it("runs the next task after one that throws synchronously", async () => {
    // Catches: a task that throws before its first await (a non-async function) breaking the chain.
    const mutex = keyedMutex();
    const throwing = mutex.run("k", (() => {
      throw new Error("thrown at once");
    }) as () => Promise<never>);
    await assert.rejects(throwing, { message: "thrown at once" });
    assert.equal(await mutex.run("k", async () => 42), 42);
  });
});
