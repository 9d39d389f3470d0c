/**
 * dist/trellis-spawn, the agent's spawn helper, behind `run` in src/linux/exec.ts: outputs and
 * exit codes as a direct spawn gives them, input and output larger than a pipe at once, many
 * commands at once, deadlines, commands that cannot start, a namespace reached by descriptor,
 * and the helper dying under running commands.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { CommandError, run, start, stopSpawnHelper, useSpawnHelper } from "../src/linux/exec.js";
import { openNetns } from "../src/linux/netns.js";
import { inNetns, NetnsPool, sweepStaleNamespaces } from "./support/netns.js";

const HELPER = join(import.meta.dirname, "../dist/trellis-spawn");

describe("the spawn helper", () => {
  const pool = new NetnsPool();

  before(() => {
    sweepStaleNamespaces();
    assert.ok(useSpawnHelper(HELPER), `${HELPER} is missing: run npm run build`);
  });
  after(() => {
    stopSpawnHelper();
    pool.removeAll();
  });

  // Bug caught: stdout and stderr swapped or cut, an exit code lost, a failure reported as success.
  it("gives back stdout, stderr and the exit code", async () => {
    assert.deepEqual(await run("sh", ["-c", "printf 'out é'; printf 'err' >&2"]), { stdout: "out é", stderr: "err" });
    await assert.rejects(run("sh", ["-c", "echo bad >&2; exit 3"]), (error: unknown) => error instanceof CommandError && error.exitCode === 3 && error.stderr === "bad\n");
  });

  // Bug caught: a deadlock when a command writes more than a pipe holds before it has read all
  // its input, or bytes lost at a frame boundary.
  it("passes 4 MiB through cat both ways at once, and 100 commands at once each get their own answer", async () => {
    const input = Array.from({ length: 4 << 16 }, (_, i) => `${i.toString(16).padStart(15, "0")}\n`).join("");
    assert.equal((await run("cat", [], { input })).stdout, input);
    const answers = await Promise.all(Array.from({ length: 100 }, (_, i) => run("sh", ["-c", `sleep 0.0$((RANDOM % 5)); echo ${i}`])));
    assert.deepEqual(answers.map((answer) => answer.stdout), Array.from({ length: 100 }, (_, i) => `${i}\n`));
  });

  // Bug caught: a hung command hanging its caller forever; a missing program reported as success.
  it("kills a command past its deadline, and names a program that cannot start", async () => {
    const started = Date.now();
    await assert.rejects(run("sleep", ["30"], { timeoutMs: 200 }), /killed by signal 9/);
    assert.ok(Date.now() - started < 5_000);
    await assert.rejects(run("trellis-no-such-program", []), /cannot run trellis-no-such-program: No such file or directory/);
  });

  // Bug caught: a command started ahead killed for its deadline before it was even given its
  // input, or its input lost.
  it("starts a command ahead and gives it its input later, the deadline counting from then", async () => {
    const ahead = start("cat", [], { timeoutMs: 300 });
    await new Promise((resolve) => setTimeout(resolve, 600));
    assert.equal(ahead.ended, false);
    assert.deepEqual(await ahead.finish("later"), { stdout: "later", stderr: "" });
  });

  // Bug caught: the pod side run in the node's namespace because the descriptor did not reach it.
  it("runs ip inside a namespace given by an open handle", async () => {
    const ns = pool.create("spawn");
    inNetns(ns, "ip", ["link", "add", "trspawn0", "type", "veth", "peer", "name", "trspawn1"]);
    const handle = openNetns(ns.path);
    try {
      const { stdout } = await run("ip", ["-o", "link", "show"], { netns: handle });
      assert.match(stdout, /trspawn0/);
    } finally {
      handle.close();
    }
  });

  // Bug caught: callers left waiting forever when the helper dies; later commands failing too.
  it("fails the commands it was running when it dies, and later commands start directly", async () => {
    const running = run("sleep", ["31.25"]);
    const pids = (await run("pgrep", ["-f", "-x", HELPER])).stdout.trim().split("\n").map(Number);
    for (const pid of pids) process.kill(pid, "SIGKILL");
    await assert.rejects(running, /the spawn helper .* ended/);
    assert.deepEqual(await run("echo", ["direct"]), { stdout: "direct\n", stderr: "" });
    await run("pkill", ["-x", "-f", "sleep 31.25"]).catch(() => undefined);
  });
});
