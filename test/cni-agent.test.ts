/**
 * The native plugin and the agent's CNI socket under load and faults: 200 ADDs at once, the
 * agent down (fallback to the standalone plugin), the agent killed in a burst and in the middle
 * of one ADD (code 11, nothing leaked after GC), hostile clients on the socket, and a socket
 * that only root can use.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { chmodSync, existsSync, lstatSync, mkdirSync, readdirSync, writeFileSync } from "node:fs";
import { createConnection } from "node:net";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { execCniPlugin, type CniCommand, type CniOutcome } from "./support/cni-exec.js";
import { inNetns, NetnsPool, processAlive, sweepStaleNamespaces, type TestNetns } from "./support/netns.js";
import { nativePluginDir, startNodeAgent, type NodeAgent } from "./support/node-agent.js";
import { addressesOf, hostVeths, recordedPods, tempDir, type PodAttachmentResult } from "./support/trellis-cni.js";

const WITH_FALLBACK = () => join(nativePluginDir({ standalone: true }), "trellis");
const AGENT_ONLY = () => join(nativePluginDir({ standalone: false }), "trellis");

function call(plugin: string, command: CniCommand, node: TestNetns, config: object, pod?: { id: string; netns: string }, cniPath = "/usr/lib/cni"): Promise<CniOutcome> {
  return execCniPlugin({ command, plugin, cniPath, config, node, containerId: pod?.id, netns: pod?.netns, ifname: pod ? "eth0" : undefined, timeoutMs: 120_000 });
}

function cniCode(outcome: CniOutcome): number | undefined {
  if (outcome.code === 0) return 0;
  try {
    return (JSON.parse(outcome.stdout) as { code?: number }).code;
  } catch {
    return undefined;
  }
}

/**
 * Pings every address from the node, in parallel; returns those that did not answer. Those that
 * did not answer the first storm (hundreds of pings at once on two CPUs) get a second try.
 */
function unreachable(node: TestNetns, addresses: string[]): string[] {
  const script = `for a in "$@"; do (ping -c 1 -W 2 "$a" >/dev/null 2>&1 || echo "$a") & done; wait`;
  const storm = (targets: string[]) => (targets.length ? inNetns(node, "sh", ["-c", script, "sh", ...targets], { timeoutMs: 60_000 }).split("\n").filter(Boolean) : []);
  return storm(storm(addresses));
}

/** How many CNI calls the agent's log says it served or failed. */
function servedCalls(agent: NodeAgent): number {
  const text = spawnSync("cat", [agent.log], { encoding: "utf8" }).stdout;
  return text.split("\n").filter((line) => line.includes('"CNI call served"') || line.includes('"CNI call failed"')).length;
}

describe("the native plugin and the agent's CNI socket", () => {
  const pool = new NetnsPool();
  const state = tempDir("cni-agent");
  let node: TestNetns;
  let agent: NodeAgent;
  let config: Record<string, unknown>;

  before(async () => {
    sweepStaleNamespaces();
    node = pool.create("node");
    agent = await startNodeAgent(node);
    config = {
      cniVersion: "1.1.0", name: "agentnet", type: "trellis", agentSocket: agent.socket,
      ipam: { ranges: [[{ subnet: "10.244.80.0/23" }], [{ subnet: "fd00:10:244:80::/64" }]], dataDir: state.path },
    };
  });
  after(() => {
    pool.removeAll();
    state.remove();
  });

  // Bug caught: calls serialized behind one another or racing on the open state in the agent,
  // handing out an address twice or failing under load.
  it("serves 200 concurrent ADDs with distinct addresses, all reachable, then 200 DELs", { timeout: 600_000 }, async () => {
    const served = servedCalls(agent);
    const pods = Array.from({ length: 200 }, (_, i) => ({ id: `many-${i}`, netns: pool.create("pod").path }));
    const outcomes = await Promise.all(pods.map((pod) => call(AGENT_ONLY(), "ADD", node, config, pod)));
    assert.deepEqual(outcomes.filter((outcome) => outcome.code !== 0).map((outcome) => outcome.stdout), [], "no ADD failed");
    assert.equal(servedCalls(agent) - served, 200, "the agent served every call");
    let dels: CniOutcome[] = [];
    try {
      const addresses = outcomes.map((outcome) => addressesOf(JSON.parse(outcome.stdout) as PodAttachmentResult));
      for (const family of [0, 1]) assert.equal(new Set(addresses.map((pair) => pair[family])).size, 200, `200 distinct addresses in family ${family}`);
      assert.deepEqual(unreachable(node, addresses.flat()), [], "every pod answers on both families");
      assert.equal(hostVeths(node).length, 200);
    } finally {
      // Also when an assertion failed: the tests after this one start from an empty network.
      dels = await Promise.all(pods.map((pod) => call(AGENT_ONLY(), "DEL", node, config, pod)));
    }
    assert.deepEqual(dels.filter((outcome) => outcome.code !== 0).map((outcome) => outcome.stdout), []);
    assert.deepEqual(recordedPods(state.path, "agentnet"), []);
    assert.deepEqual(hostVeths(node), []);
  });

  // Bug caught: a hostile or broken client (a length of 2 GiB, a request cut short, text that is
  // not JSON, a connection storm) crashing the agent or leaving it unable to serve.
  it("answers oversize, truncated and garbage requests with CNI errors, survives 1,000 dropped connections, and then serves a correct ADD", async () => {
    const pid = agent.process.pid!;
    const exchange = (bytes: Buffer, halfClose: boolean): Promise<string> =>
      new Promise((resolve, reject) => {
        const socket = createConnection(agent.socket);
        const chunks: Buffer[] = [];
        socket.on("data", (chunk: Buffer) => chunks.push(chunk));
        socket.on("error", reject);
        socket.on("close", () => resolve(Buffer.concat(chunks).subarray(4).toString("utf8")));
        socket.write(bytes, () => {
          if (halfClose) socket.end();
        });
      });
    const framed = (body: string, declared = Buffer.byteLength(body)) => {
      const size = Buffer.alloc(4);
      size.writeUInt32BE(declared);
      return Buffer.concat([size, Buffer.from(body)]);
    };
    const answers: Array<[string, Buffer, boolean, number, RegExp]> = [
      ["oversize", framed("", 2 ** 31), false, 7, /the request is 2147483648 bytes; at most 1048576 are allowed/],
      ["truncated", framed('{"env":{}', 100), true, 6, /the request ended after 9 of 100 bytes/],
      ["not JSON", framed("\u0000\u00ff%d%n../../etc"), false, 6, /the request is not JSON/],
      ["wrong shape", framed('{"env":"CNI_COMMAND=ADD","stdin":1}'), false, 6, /the request must be \{"env"/],
      ["env not strings", framed('{"env":{"CNI_COMMAND":7},"stdin":"{}"}'), false, 6, /env\.CNI_COMMAND is not a string/],
      ["longer than it says", framed('{"env":{},"stdin":""}xx', 21), false, 6, /more bytes than its length says/],
    ];
    for (const [what, bytes, halfClose, code, message] of answers) {
      const reply = JSON.parse(await exchange(bytes, halfClose)) as { exitCode: number; stdout: string };
      assert.equal(reply.exitCode, 1, what);
      const error = JSON.parse(reply.stdout) as { code: number; msg: string };
      assert.equal(error.code, code, `${what}: ${error.msg}`);
      assert.match(error.msg, message, what);
    }
    // 1,000 connections opened and dropped, a tenth of them after half a length prefix.
    for (let batch = 0; batch < 10; batch++) {
      await Promise.all(Array.from({ length: 100 }, (_, i) => new Promise<void>((resolve) => {
        const socket = createConnection(agent.socket);
        socket.on("error", () => resolve());
        socket.on("connect", () => {
          if (i % 10 === 0) socket.write(Buffer.from([0, 0]));
          socket.destroy();
          resolve();
        });
      })));
    }
    assert.ok(processAlive(pid), "the agent lives on");
    const pod = { id: "after-hostile", netns: pool.create("pod").path };
    const add = await call(AGENT_ONLY(), "ADD", node, config, pod);
    assert.equal(add.code, 0, add.stdout + add.stderr);
    assert.deepEqual(unreachable(node, addressesOf(JSON.parse(add.stdout) as PodAttachmentResult)), []);
    assert.equal(agent.process.pid, pid, "served by the same agent process");
    assert.equal((await call(AGENT_ONLY(), "DEL", node, config, pod)).code, 0);
  });

  // Bug caught: a socket (or its directory) that other users can open: any local user could
  // then attach, detach or GC pods as root.
  it("is a socket that only root can use", () => {
    const stat = lstatSync(agent.socket);
    assert.ok(stat.isSocket());
    assert.equal(stat.mode & 0o777, 0o600);
    assert.equal(stat.uid, 0);
    // Let everyone reach the directory, so only the socket's own mode stands in the way.
    chmodSync(agent.dir, 0o755);
    const probe = `const s=require("net").createConnection(process.argv[1]);s.on("connect",()=>{console.log("connected");process.exit(0)});s.on("error",e=>{console.log(e.code);process.exit(0)})`;
    const asNobody = spawnSync(process.execPath, ["-e", probe, agent.socket], { uid: 65534, gid: 65534, encoding: "utf8", timeout: 10_000 });
    assert.equal(asNobody.stdout.trim(), "EACCES", asNobody.stderr);
    chmodSync(agent.dir, 0o700);
  });

  // Bug caught: the agent dying with an ADD in flight, leaving the runtime a hang or a success
  // for a pod that was never finished, or leaking its addresses and veth.
  it("answers 11 when the agent dies during an ADD; GC then leaves nothing and the pod attaches again", async () => {
    const gate = join(state.path, "gate");
    const plugins = join(state.path, "plugins");
    mkdirSync(plugins, { recursive: true });
    // ADD reads its input, says so, waits at the gate, then takes its lease through host-local.
    writeFileSync(join(plugins, "slow-host-local"), `#!/bin/sh\nif [ "$CNI_COMMAND" != ADD ]; then exec /usr/lib/cni/host-local "$@"; fi\nconfig=$(cat)\ntouch ${gate}.waiting\ni=0; while [ ! -e ${gate} ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done\nprintf '%s' "$config" | /usr/lib/cni/host-local "$@"\n`, { mode: 0o755 });
    const slow = { cniVersion: "1.0.0", name: "slow", type: "trellis", agentSocket: agent.socket, dataDir: state.path, ipam: { type: "slow-host-local", dataDir: join(state.path, "leases"), ranges: [[{ subnet: "10.244.84.0/24" }]] } };
    const pod = { id: "in-flight", netns: pool.create("pod").path };
    const cniPath = `${plugins}:/usr/lib/cni`;
    const add = call(WITH_FALLBACK(), "ADD", node, slow, pod, cniPath);
    // Killed while its IPAM plugin runs: the record is written and the lease is being taken.
    while (!existsSync(`${gate}.waiting`)) await new Promise((resolve) => setTimeout(resolve, 20));
    assert.equal(recordedPods(state.path, "slow")[0]?.state, "adding");
    await agent.kill();
    const outcome = await add;
    assert.equal(cniCode(outcome), 11, outcome.stdout + outcome.stderr);
    assert.match(JSON.parse(outcome.stdout).msg, /closed the connection before answering/);
    // The dead agent's IPAM child is still waiting at the gate: let it finish first, as it
    // would on a node, so GC also has its lease to release.
    writeFileSync(gate, "");
    while (spawnSync("pgrep", ["-f", "slow-host-local"]).status === 0) await new Promise((resolve) => setTimeout(resolve, 20));
    // With the agent gone, the plugin falls back to the standalone one: GC works.
    const gc = await call(WITH_FALLBACK(), "GC", node, { ...slow, "cni.dev/valid-attachments": [] }, undefined, cniPath);
    assert.equal(gc.code, 0, gc.stdout + gc.stderr);
    assert.deepEqual(recordedPods(state.path, "slow"), []);
    assert.deepEqual(hostVeths(node), []);
    assert.doesNotMatch(inNetns({ name: "pod", path: pod.netns }, "ip", ["-o", "link"]), /eth0/);
    assert.deepEqual(readdirSync(join(state.path, "leases", "slow")).filter((name) => /^\d+\./.test(name)), [], "no host-local lease of the dead ADD is left");
    await agent.restart();
    const again = await call(AGENT_ONLY(), "ADD", node, slow, pod, cniPath);
    assert.equal(again.code, 0, again.stdout + again.stderr);
    assert.equal((await call(AGENT_ONLY(), "DEL", node, slow, pod, cniPath)).code, 0);
  });

  // Bug caught: an ADD the dying agent had finished but not answered, kept while the runtime saw
  // a failure (a leak), or a failed call answered with anything a runtime would not retry.
  it("under a burst of 40 ADDs with the agent killed mid-burst: every call succeeded or got 11, and GC leaves exactly the pods that succeeded", { timeout: 300_000 }, async (t) => {
    const pods = Array.from({ length: 40 }, (_, i) => ({ id: `burst-${i}`, netns: pool.create("pod").path }));
    let finished = 0;
    // Installed as on a node: calls made after the kill fall back to the standalone plugin.
    const adds = Promise.all(pods.map((pod) => call(WITH_FALLBACK(), "ADD", node, config, pod).finally(() => finished++)));
    while (finished < 1) await new Promise((resolve) => setTimeout(resolve, 2));
    await agent.kill();
    const outcomes = await adds;
    const codes = outcomes.map(cniCode);
    assert.deepEqual(codes.filter((code) => code !== 0 && code !== 11), [], outcomes.filter((outcome) => ![0, 11].includes(cniCode(outcome) ?? -1)).map((outcome) => outcome.stdout).join("\n"));
    const succeeded = pods.filter((_, i) => codes[i] === 0);
    assert.ok(succeeded.length < 40, "the kill caught ADDs in flight");
    t.diagnostic(`${succeeded.length} of 40 ADDs succeeded, ${40 - succeeded.length} got 11`);
    await agent.restart();
    const valid = succeeded.map((pod) => ({ containerID: pod.id, ifname: "eth0" }));
    const gc = await call(AGENT_ONLY(), "GC", node, { ...config, "cni.dev/valid-attachments": valid });
    assert.equal(gc.code, 0, gc.stdout + gc.stderr);
    const recorded = recordedPods(state.path, "agentnet");
    assert.deepEqual(recorded.map((pod) => pod.containerId).sort(), succeeded.map((pod) => pod.id).sort(), "exactly the pods whose ADD succeeded are kept");
    assert.ok(recorded.every((pod) => pod.state === "ready"));
    assert.equal(hostVeths(node).length, succeeded.length, "one veth per kept pod");
    const kept = outcomes.filter((outcome) => outcome.code === 0).flatMap((outcome) => addressesOf(JSON.parse(outcome.stdout) as PodAttachmentResult));
    assert.deepEqual(recorded.flatMap((pod) => pod.addresses).sort(), [...kept].sort(), "their leases are exactly the addresses they were given");
    assert.deepEqual(unreachable(node, kept), []);
    for (const [i, pod] of pods.entries()) {
      if (codes[i] !== 0) assert.doesNotMatch(inNetns({ name: pod.id, path: pod.netns }, "ip", ["-o", "link"]), /eth0/, `${pod.id} has no interface left`);
    }
    const gcAll = await call(AGENT_ONLY(), "GC", node, { ...config, "cni.dev/valid-attachments": [] });
    assert.equal(gcAll.code, 0);
    assert.deepEqual(hostVeths(node), []);
  });

  // Bug caught: a node whose agent is down (never started, or crashed leaving its socket file)
  // unable to attach or detach pods.
  it("falls back to the standalone plugin when no agent answers, with the same results", async () => {
    await agent.kill();
    const podStale = { id: "fallback-stale", netns: pool.create("pod").path };
    const stale = await call(WITH_FALLBACK(), "ADD", node, config, podStale);
    assert.equal(stale.code, 0, stale.stdout + stale.stderr);
    const absent = { ...config, agentSocket: join(state.path, "no-agent-here.sock") };
    const podAbsent = { id: "fallback-absent", netns: pool.create("pod").path };
    const add = await call(WITH_FALLBACK(), "ADD", node, absent, podAbsent);
    assert.equal(add.code, 0, add.stdout + add.stderr);
    const result = JSON.parse(add.stdout) as PodAttachmentResult;
    const check = await call(WITH_FALLBACK(), "CHECK", node, { ...absent, prevResult: result }, podAbsent);
    assert.equal(check.code, 0, check.stdout + check.stderr);
    // STATUS of a network served by an agent says the agent is not running.
    const status = await call(WITH_FALLBACK(), "STATUS", node, absent);
    assert.equal(cniCode(status), 50);
    assert.match(JSON.parse(status.stdout).msg, /agent .* is not running/);
    await agent.restart();
    // What the standalone plugin attached, the agent sees and detaches.
    for (const pod of [podStale, podAbsent]) {
      const del = await call(AGENT_ONLY(), "DEL", node, config, pod);
      assert.equal(del.code, 0, del.stdout + del.stderr);
    }
    assert.deepEqual(recordedPods(state.path, "agentnet"), []);
    assert.deepEqual(hostVeths(node), []);
  });
});

describe("STATUS through the agent before its routes are in place", () => {
  const pool = new NetnsPool();
  const state = tempDir("cni-agent-status");
  after(() => {
    pool.removeAll();
    state.remove();
  });

  // Bugs caught: an agent that calls the network ready (conflist written, STATUS 0) after a sync
  // whose route changes the kernel refused; and such a failing sync retried in a tight loop.
  it("answers 50 while the kernel refuses its VXLAN device, and 0 once a resync has put it in place", { timeout: 120_000 }, async () => {
    sweepStaleNamespaces();
    const node = pool.create("node");
    // A veth holds the name of the agent's IPv4 VXLAN device (as if taken by hand), so creating it fails.
    inNetns(node, "ip", ["link", "add", "trellis-vx4", "type", "veth", "peer", "name", "trvxblock"]);
    const agent = await startNodeAgent(node, { mode: "vxlan", resyncSeconds: 1, untilSocket: true });
    const config = {
      cniVersion: "1.1.0", name: "statusnet", type: "trellis", agentSocket: agent.socket,
      ipam: { ranges: [[{ subnet: "10.244.90.0/24" }]], dataDir: state.path },
    };
    const failedSyncs = () => spawnSync("cat", [agent.log], { encoding: "utf8" }).stdout.split("\n").filter((line) => line.includes("some changes failed")).length;
    const deadline = Date.now() + 10_000;
    while (failedSyncs() === 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 50));
    assert.ok(failedSyncs() > 0, "the agent tried and failed to create its VXLAN device");
    const notReady = await call(AGENT_ONLY(), "STATUS", node, config);
    assert.equal(cniCode(notReady), 50, notReady.stdout + notReady.stderr);
    assert.match(JSON.parse(notReady.stdout).msg, /^network statusnet is not ready: its routes to the other nodes are not programmed yet$/);
    const conflist = join(agent.dir, "net.d", "10-trellis.conflist");
    assert.equal(existsSync(conflist), false, "no conflist while the routes are not in place");
    await new Promise((resolve) => setTimeout(resolve, 2_500));
    assert.ok(failedSyncs() <= 6, `a failing sync is retried by the 1 s resync, not in a loop (${failedSyncs()} failures in about 3 s)`);

    inNetns(node, "ip", ["link", "delete", "trellis-vx4"]);
    const until = Date.now() + 10_000;
    while (!existsSync(conflist) && Date.now() < until) await new Promise((resolve) => setTimeout(resolve, 50));
    assert.ok(existsSync(conflist), "the conflist is written once a resync has put the device in place");
    const ready = await call(AGENT_ONLY(), "STATUS", node, config);
    assert.equal(ready.code, 0, ready.stdout + ready.stderr);
  });
});
