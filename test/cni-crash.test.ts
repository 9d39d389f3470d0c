/**
 * kill -9 the plugin at random points of ADD, many times; then GC with the attachments that
 * survived. The store must hold exactly those, and no host veth may be left behind.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { after, before, describe, it } from "node:test";
import { pluginBaseEnv } from "./support/cni-exec.js";
import { NetnsPool, sweepStaleNamespaces, type TestNetns } from "./support/netns.js";
import { TRELLIS, addressesOf, hostVeths, recordedPods, tempDir, trellis } from "./support/trellis-cni.js";

const ROUNDS = 40;

interface Attempt {
  id: string;
  completed: boolean;
  result?: { ips: Array<{ address: string }> };
}

/** Starts ADD and SIGKILLs it after `killAfterMs`; reports whether it finished first. */
function addKilledAfter(node: TestNetns, pod: TestNetns, id: string, config: object, killAfterMs: number): Promise<Attempt> {
  return new Promise((resolve) => {
    const child = spawn("nsenter", [`--net=${node.path}`, TRELLIS], {
      env: { ...pluginBaseEnv(), CNI_COMMAND: "ADD", CNI_CONTAINERID: id, CNI_NETNS: pod.path, CNI_IFNAME: "eth0", CNI_PATH: "/usr/lib/cni" },
      stdio: ["pipe", "pipe", "ignore"],
    });
    let stdout = "";
    child.stdout.on("data", (chunk: Buffer) => (stdout += chunk.toString()));
    const timer = setTimeout(() => child.kill("SIGKILL"), killAfterMs);
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve(code === 0 ? { id, completed: true, result: JSON.parse(stdout) } : { id, completed: false });
    });
    child.stdin.end(JSON.stringify(config));
  });
}

describe(`trellis killed mid-ADD ${ROUNDS} times, then GC`, () => {
  const pool = new NetnsPool();
  const state = tempDir("crash");
  let node: TestNetns;
  const config = {
    cniVersion: "1.1.0", name: "crashy", type: "trellis", ipMasq: true,
    ipam: { ranges: [[{ subnet: "10.244.9.0/24" }], [{ subnet: "fd00:10:244:9::/64" }]], dataDir: state.path },
  };
  const attempts: Attempt[] = [];

  before(async () => {
    sweepStaleNamespaces();
    node = pool.create("node");
    // An uninterrupted ADD measures how long one takes here, so kill points spread over all of it.
    const probe = pool.create("pod");
    const started = Date.now();
    const first = await trellis("ADD", node, config, { id: "crash-probe", netns: probe.path });
    assert.equal(first.code, 0, first.stdout);
    attempts.push({ id: "crash-probe", completed: true, result: JSON.parse(first.stdout) });
    const span = (Date.now() - started) * 1.3;
    for (let round = 0; round < ROUNDS; round++) {
      const pod = pool.create("pod");
      attempts.push(await addKilledAfter(node, pod, `crash-${round}`, config, Math.random() * span));
    }
  });
  after(() => {
    pool.removeAll();
    state.remove();
  });

  it("killed some ADDs and let some finish", () => {
    const done = attempts.filter((attempt) => attempt.completed).length;
    assert.ok(done >= 1 && done < attempts.length, `${done} of ${attempts.length} ADDs finished`);
  });

  it("GC with the survivors leaves exactly them in the store and on the node", async () => {
    const survivors = attempts.filter((attempt) => attempt.completed);
    const gc = await trellis("GC", node, { ...config, "cni.dev/valid-attachments": survivors.map((s) => ({ containerID: s.id, ifname: "eth0" })) });
    assert.equal(gc.code, 0, gc.stdout + gc.stderr);
    const recorded = recordedPods(state.path, "crashy");
    assert.deepEqual(recorded.map((pod) => pod.containerId).sort(), survivors.map((s) => s.id).sort());
    for (const survivor of survivors) {
      const pod = recorded.find((record) => record.containerId === survivor.id)!;
      assert.deepEqual([...pod.addresses].sort(), addressesOf(survivor.result as never).sort(), `${survivor.id} keeps its addresses`);
    }
    assert.deepEqual(hostVeths(node), recorded.map((pod) => pod.hostIfname).sort(), "only the survivors' veths are left");
  });

  it("GC twice changes nothing, and the survivors' addresses stay unique", async () => {
    const survivors = attempts.filter((attempt) => attempt.completed);
    const gc = await trellis("GC", node, { ...config, "cni.dev/attachments": survivors.map((s) => ({ containerID: s.id, ifname: "eth0" })) });
    assert.equal(gc.code, 0, gc.stdout);
    const all = recordedPods(state.path, "crashy").flatMap((pod) => pod.addresses);
    assert.equal(new Set(all).size, all.length);
    assert.equal(all.length, survivors.length * 2);
  });
});
