/**
 * openNetns (src/linux/netns.ts) tells a network namespace from every other file, read from the
 * open descriptor alone: /proc namespace files, `ip netns add`'s bind mounts, bind mounts of other
 * namespace types, and files that only look like namespaces.
 */
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { mkdtempSync, readlinkSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { openNetns } from "../src/linux/netns.js";
import { NetnsPool, sweepStaleNamespaces, type TestNetns } from "./support/netns.js";

const WORKER = join(import.meta.dirname, "support/netns-open.worker.ts");

function refusal(path: string): string | undefined {
  try {
    openNetns(path).close();
    return undefined;
  } catch (error) {
    return (error as Error).message;
  }
}

describe("openNetns", () => {
  const pool = new NetnsPool();
  const dir = mkdtempSync(join(tmpdir(), "trellis-netns-open-"));
  let pod: TestNetns;

  before(() => {
    sweepStaleNamespaces();
    pod = pool.create("pod");
  });
  after(() => {
    pool.removeAll();
    rmSync(dir, { recursive: true, force: true });
  });

  // Bug caught: a namespace of `ip netns add` (a bind mount, whose descriptor reads back as its
  // own path, not as net:[…]) refused, or a process's /proc namespace file refused.
  it("opens network namespaces: a bind mount, this process's own, another process's", async () => {
    assert.equal(refusal(pod.path), undefined);
    assert.equal(refusal("/proc/self/ns/net"), undefined);
    const sleeper = spawn("nsenter", [`--net=${pod.path}`, "sleep", "30"], { stdio: "ignore" });
    try {
      const path = `/proc/${sleeper.pid}/ns/net`;
      // nsenter enters, then execs sleep in the same process.
      while (readlinkSync(path) === readlinkSync("/proc/self/ns/net")) await new Promise((resolve) => setTimeout(resolve, 10));
      assert.equal(refusal(path), undefined, path);
    } finally {
      sleeper.kill();
    }
  });

  // Bug caught: any file on nsfs taken for a network namespace (then ip failed with EINVAL, late).
  it("refuses other namespace types from /proc, naming the type", () => {
    for (const type of ["mnt", "pid", "user", "uts", "ipc", "cgroup", "time"]) {
      assert.equal(refusal(`/proc/self/ns/${type}`), `/proc/self/ns/${type} is a ${type} namespace, not a network namespace`);
    }
    assert.equal(refusal("/proc/self/ns/pid_for_children"), "/proc/self/ns/pid_for_children is a pid namespace, not a network namespace");
  });

  // Bug caught: a bind-mounted namespace of another type passing, since only /proc files read back as type:[inode].
  it("refuses bind mounts of other namespace types, and opens a bind mount of a bind mount of a netns", () => {
    const targets = { uts: join(dir, "uts"), pid: join(dir, "pid"), net: join(dir, "net") };
    for (const target of Object.values(targets)) writeFileSync(target, "");
    // The mounts live in a private mount namespace and vanish with it, even if this test fails.
    const script = [
      `mount --bind /proc/self/ns/uts ${targets.uts}`,
      `mount --bind /proc/self/ns/pid ${targets.pid}`,
      `mount --bind ${pod.path} ${targets.net}`,
      `exec "$@"`,
    ].join(" && ");
    const output = execFileSync("unshare", ["-m", "--propagation", "private", "sh", "-c", script, "sh", process.execPath, "--import", "tsx", WORKER, ...Object.values(targets)], { encoding: "utf8" });
    const answers = output.trim().split("\n").map((line) => JSON.parse(line) as { path: string; error?: string });
    assert.deepEqual(answers, [
      { path: targets.uts, error: `${targets.uts} is a uts namespace, not a network namespace` },
      { path: targets.pid, error: `${targets.pid} is a pid namespace, not a network namespace` },
      { path: targets.net },
    ]);
  });

  // Bug caught: a file whose name has the form net:[inode] read as a namespace.
  it("refuses files that are not namespaces, whatever their name", () => {
    const ino = execFileSync("stat", ["-L", "-c", "%i", "/proc/self/ns/net"], { encoding: "utf8" }).trim();
    const lookalike = join(dir, `net:[${ino}]`);
    writeFileSync(lookalike, "");
    assert.equal(refusal(lookalike), `${lookalike} is not a network namespace`);
    assert.equal(refusal(dir), `${dir} is not a network namespace`);
    assert.equal(refusal(join(dir, "absent")), `${join(dir, "absent")} does not exist`);
  });
});
