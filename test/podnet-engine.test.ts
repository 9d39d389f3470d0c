/**
 * The attach engine as a library, as a long-lived server uses it: one handle serving many calls
 * at once, calls for one pod in order, and cancellation that leaves nothing behind. The engine
 * runs in a worker process inside a test node namespace.
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";
import { inNetns, NetnsPool, sweepStaleNamespaces, type TestNetns } from "./support/netns.js";
import { hostVeths, tempDir } from "./support/trellis-cni.js";
import { runWorkersInLockstep } from "./support/workers.js";

const execFileAsync = promisify(execFile);

async function runScenario(node: TestNetns, scenario: object): Promise<any> {
  const worker = join(import.meta.dirname, "support", "podnet-engine.worker.ts");
  const { stdout } = await execFileAsync("nsenter", [`--net=${node.path}`, process.execPath, "--import", "tsx", worker, JSON.stringify(scenario)], {
    env: { ...process.env },
    timeout: 120_000,
  });
  return JSON.parse(stdout.trim().split("\n").pop()!);
}

describe("the attach engine behind one long-lived handle", () => {
  const pool = new NetnsPool();
  const state = tempDir("engine");
  let node: TestNetns;

  before(() => {
    sweepStaleNamespaces();
    node = pool.create("node");
  });
  after(() => {
    pool.removeAll();
    state.remove();
  });

  // Bug caught: a shared handle whose transactions interleave (two ADDs on one connection) hands out one address twice.
  it("serves 20 ADDs at once with distinct addresses", async () => {
    const pods = Array.from({ length: 20 }, (_, i) => ({ id: `engine-${i}`, netns: pool.create("pod").path }));
    const outcome = await runScenario(node, { kind: "parallel", stateDir: state.path, pods });
    const failures = outcome.addresses.filter((entry: unknown) => !Array.isArray(entry));
    assert.deepEqual(failures, []);
    const flat = outcome.addresses.flat();
    assert.equal(new Set(flat).size, 40, "20 pods, two families, no address twice");
    assert.deepEqual(outcome.records, Array(20).fill("ready"));
    assert.equal(hostVeths(node).length, 20);
  });

  // Bug caught: without per-pod serialization a DEL issued with the ADD ran in the middle of it.
  it("runs an ADD and a DEL of the same pod one after the other", async () => {
    const outcome = await runScenario(node, { kind: "add-then-del", stateDir: state.path, id: "sequence-0", netns: pool.create("pod").path });
    assert.deepEqual(outcome, { add: "ok", del: "ok", records: 0, leases: 0 });
  });

  // Bug caught: a cancelled ADD kept its record, its delegated lease or its veth.
  it("rolls back a cancelled ADD, including the delegated plugin's lease", async () => {
    const pluginDir = join(state.path, "plugins");
    const gate = join(state.path, "gate");
    mkdirSync(pluginDir);
    writeFileSync(join(pluginDir, "gated-host-local"), `#!/bin/sh\nif [ "$CNI_COMMAND" = ADD ]; then i=0; while [ ! -e ${gate} ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; fi\nexec /usr/lib/cni/host-local "$@"\n`, { mode: 0o755 });
    const before = hostVeths(node);
    const pod = pool.create("pod");
    const outcome = await runScenario(node, { kind: "abort", stateDir: state.path, id: "aborted-0", netns: pod.path, pluginDir, gate, leaseDir: join(state.path, "leases") });
    assert.deepEqual(outcome.whileRunning, ["adding"]);
    assert.equal(outcome.result.code, 11);
    assert.match(outcome.result.msg, /^the ADD of container aborted-0 interface eth0 in network aborted was cancelled; nothing of it was kept$/);
    assert.equal(outcome.records, 0);
    assert.equal(outcome.delegateLeaseLeft, false, "host-local's lease was released");
    assert.deepEqual(hostVeths(node), before);
    assert.doesNotMatch(inNetns(pod, "ip", ["-o", "link"]), /eth0/);
  });
});

describe("the node-wide lock of a state directory", () => {
  const dir = tempDir("node-lock");
  after(() => dir.remove());

  // Bug caught: the lock file opened with no busy wait at all, so processes opening a new state
  // directory together failed their masquerade sync (GC: 104 "database is locked") while the
  // first of them switched the lock file to WAL.
  it("is taken by 8 processes opening a new state directory at the same moment, 10 times over", async () => {
    const answers = await runWorkersInLockstep("node-lock.worker.ts", Array.from({ length: 8 }, () => [dir.path]), 10);
    assert.deepEqual(answers.flat().filter((answer) => answer !== "ok"), []);
  });
});
