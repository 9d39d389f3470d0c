import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { runningChildren, sleep, startDetached, stopProcesses } from "./processes.js";

describe("the lab's detached processes", () => {
  const dir = mkdtempSync(join(tmpdir(), "trellis-processes-"));
  after(() => rmSync(dir, { recursive: true, force: true }));

  it("are known as running from their start until they end, so a failed lab up can stop them", async () => {
    // Catches: a daemon started a moment before `lab up` was interrupted, still the shell that
    // joins its control groups, missed by lab down (found by group and command line) and left
    // running in a removed lab, writing into its directory.
    const started = startDetached(undefined, ["sh", "-c", "exec sleep 30"], join(dir, "sleep.log"));
    assert.ok(runningChildren().includes(started.pid));
    await stopProcesses(runningChildren().filter((pid) => pid === started.pid));
    for (let i = 0; i < 100 && started.ended() === undefined; i++) await sleep(20);
    assert.equal(started.ended(), "killed by SIGTERM");
    assert.ok(!runningChildren().includes(started.pid));
  });
});
