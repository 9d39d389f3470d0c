/**
 * `trellis agent` refuses bad input with a message naming the value, exits non-zero and writes
 * nothing: no store file, no node record, no CNI config.
 */
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { existsSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { freeLoopbackPort } from "./support/etcd.js";
import { inNetns, NetnsPool, sweepStaleNamespaces, type TestNetns } from "./support/netns.js";
import { TRELLIS, tempDir } from "./support/trellis-cni.js";

describe("trellis agent with bad input", () => {
  const pool = new NetnsPool();
  const dir = tempDir("agent-input");
  const plan = join(dir.path, "plan.yaml");
  const otherPlan = join(dir.path, "other.yaml");
  const store = `sqlite:${join(dir.path, "cluster.db")}`;
  let node: TestNetns;
  let running: ReturnType<typeof spawn> | undefined;
  let log = "";

  const agent = (args: string[], env: Record<string, string> = {}) =>
    spawnSync("nsenter", [`--net=${node.path}`, TRELLIS, "agent", "--node-name", "node1", "--cni-conf-dir", join(dir.path, "net.d"), "--cni-data-dir", join(dir.path, "cni"), "--cni-socket", join(dir.path, "cni.sock"), ...args], {
      encoding: "utf8",
      timeout: 30_000,
      env: { PATH: process.env.PATH!, ...env },
    });

  before(() => {
    sweepStaleNamespaces();
    node = pool.create("node");
    inNetns(node, "ip", ["link", "add", "eth0", "type", "veth", "peer", "name", "peer0"]);
    inNetns(node, "ip", ["address", "add", "198.18.0.10/24", "dev", "eth0"]);
    inNetns(node, "ip", ["link", "set", "eth0", "up"]);
    writeFileSync(plan, "podCidrs: [10.244.0.0/16]\nserviceCidrs: [10.96.0.0/16]\n");
    writeFileSync(otherPlan, "podCidrs: [10.245.0.0/16]\nserviceCidrs: [10.96.0.0/16]\n");
  });
  after(() => {
    running?.kill("SIGKILL");
    pool.removeAll();
    dir.remove();
  });

  const refusedWithoutTrace = (run: ReturnType<typeof agent>, message: RegExp) => {
    assert.notEqual(run.status, 0, "exits non-zero");
    assert.match(run.stderr, message);
    assert.ok(!existsSync(join(dir.path, "net.d")), "no CNI config written");
  };

  // Bug caught: a typo in --mode started an agent that routed nothing.
  it("refuses an unknown mode before opening the store", () => {
    refusedWithoutTrace(agent(["--store", store, "--plan", plan, "--node-ip", "198.18.0.10", "--mode", "bgp"]), /--mode "bgp" is not a routing mode: expected one of direct, vxlan, auto/);
    assert.ok(!existsSync(join(dir.path, "cluster.db")), "no store file created");
  });

  // Bug caught: an address of another host published as this node's, so peers route its pods elsewhere.
  it("refuses a --node-ip that is not on this node", () => {
    refusedWithoutTrace(agent(["--store", store, "--plan", plan, "--node-ip", "198.18.0.99"]), /--node-ip 198\.18\.0\.99 is not an address of this node \(its addresses: 198\.18\.0\.10\)/);
    assert.ok(!existsSync(join(dir.path, "cluster.db")));
  });

  it("refuses a store that does not exist without a plan", () => {
    refusedWithoutTrace(agent(["--store", store, "--node-ip", "198.18.0.10"]), /the store sqlite:\S+ does not exist yet: give a cluster plan/);
    assert.ok(!existsSync(join(dir.path, "cluster.db")));
  });

  it("refuses an unreachable store, naming it", async () => {
    const port = await freeLoopbackPort();
    refusedWithoutTrace(agent(["--store", `etcd://127.0.0.1:${port}`, "--plan", plan, "--node-ip", "198.18.0.10"]), new RegExp(`etcd at 127\\.0\\.0\\.1:${port} is unreachable`));
  });

  // Bug caught: a second agent for one node name takes over its pod CIDRs while the first still routes them.
  it("refuses a node name a live agent serves, and a plan other than the stored one", async () => {
    running = spawn("nsenter", [`--net=${node.path}`, TRELLIS, "agent", "--node-name", "node1", "--node-ip", "198.18.0.10", "--store", store, "--plan", plan,
      "--cni-conf-dir", join(dir.path, "live", "net.d"), "--cni-data-dir", join(dir.path, "live", "cni"), "--cni-socket", join(dir.path, "live", "cni.sock")], { stdio: ["ignore", "ignore", "pipe"] });
    running.stderr!.on("data", (chunk: Buffer) => (log += chunk.toString()));
    for (let i = 0; i < 200 && !log.includes("CNI config written"); i++) await new Promise((resolve) => setTimeout(resolve, 50));
    assert.match(log, /CNI config written/);
    const second = agent(["--store", store, "--node-ip", "198.18.0.10"]);
    refusedWithoutTrace(second, /node node1 is served by a live agent \(pid \d+ on \S+, last heartbeat \d+ s ago\); stop that agent, or give this one another --node-name/);
    const changed = agent(["--store", store, "--plan", otherPlan, "--node-ip", "198.18.0.10", "--node-name", "node2"]);
    refusedWithoutTrace(changed, /already holds a different cluster plan: podCidrs is 10\.244\.0\.0\/16 in the store but 10\.245\.0\.0\/16 in \S+other\.yaml/);
    assert.equal(running.exitCode, null, "the live agent keeps running");
    assert.deepEqual(readdirSync(join(dir.path, "live", "net.d")), ["10-trellis.conflist"]);
  });

  // Bug caught: a node whose agent had not yet published its addresses (the record exists from
  // the moment its pod CIDRs are allocated) logged as unreachable by every peer, for good.
  it("does not call a node no agent has claimed yet unreachable", async () => {
    assert.equal(running?.exitCode, null, "the agent of the test before runs");
    const added = spawnSync(TRELLIS, ["node", "add", "node7", "--store", store], { encoding: "utf8", env: { PATH: process.env.PATH! } });
    assert.equal(added.status, 0, added.stderr);
    await new Promise((resolve) => setTimeout(resolve, 1500));
    assert.doesNotMatch(log, /peer unreachable/);
  });
});
