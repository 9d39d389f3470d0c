/**
 * A running cluster under faults: an agent killed and restarted, its state deleted by hand, a
 * node removed, a peer gone silent, the store going away; and large packets over VXLAN. The
 * lab is VXLAN across two underlay subnets, dual-stack, with a 2 s resync.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { after, before, describe, it } from "node:test";
import { startDetached } from "../src/lab/processes.js";
import { openStore } from "../src/store/open.js";
import { agentLogEntries, agentRoutes, downAll, labCheck, labExec, labName, labStatus, runTrellis, waitFor, type LabStatus } from "./support/lab.js";
import { TRELLIS } from "./support/trellis-cni.js";

after(downAll);

function killAgent(status: LabStatus, node: string, signal: NodeJS.Signals = "SIGKILL"): void {
  process.kill(status.nodes.find((entry) => entry.name === node)!.agentPid, signal);
}

/** Starts the node's agent again, with its own flags plus `extra`; returns its pid. */
function restartAgent(status: LabStatus, node: string, extra: string[] = []): number {
  const entry = status.nodes.find((candidate) => candidate.name === node)!;
  return startDetached(entry.netns, [...entry.agentArgv, ...extra], entry.agentLog).pid;
}

function fdb(name: string, node: string, dev: string): string[] {
  return (JSON.parse(labExec(name, node, ["bridge", "-json", "fdb", "show", "dev", dev])) as Array<{ mac: string; dst?: string }>)
    .filter((entry) => entry.dst)
    .map((entry) => `${entry.mac} dst ${entry.dst}`)
    .sort();
}

describe("a VXLAN lab under faults", { timeout: 600_000 }, () => {
  const name = labName("fx");
  let status: LabStatus;

  before(() => {
    const up = runTrellis(["lab", "up", "--name", name, "--mode", "vxlan", "--subnets", "2"]);
    assert.equal(up.status, 0, up.stdout + up.stderr);
    status = labStatus(name);
  });

  // Bug caught: a pod MTU that ignores VXLAN's overhead black-holes full-size packets across nodes.
  it("carries a 1 MB TCP transfer and 2,000-byte UDP datagrams across nodes on both families", () => {
    const to = status.pods.find((pod) => pod.node === "node2")!;
    for (const address of to.addresses) {
      const tcp = JSON.parse(labExec(name, "node1-pod0", [TRELLIS, "probe", "connect", address, "7777", "--bytes", "1048576", "--json", "--timeout", "10000"]));
      assert.equal(tcp.bytes, 1048576, `TCP to ${address}`);
      const udp = JSON.parse(labExec(name, "node1-pod0", [TRELLIS, "probe", "connect", address, "7777", "--udp", "--bytes", "2000", "--json"]));
      assert.equal(udp.bytes, 2000, `UDP to ${address}`);
    }
  });

  // Bug caught: the dataplane depending on the agent process (routes or devices removed when it dies).
  it("keeps pods reaching each other across nodes after kill -9 of an agent", () => {
    const before = agentRoutes(name, "node1");
    killAgent(status, "node1");
    const check = labCheck(name);
    assert.equal(check.ok, true, JSON.stringify(check.probes.filter((probe) => !probe.ok)));
    assert.deepEqual(agentRoutes(name, "node1"), before);
  });

  // Bug caught: a restarted agent that removes and re-adds its routes (a gap for established traffic).
  it("a restarted agent changes nothing that was already right", async () => {
    const monitor = spawn("nsenter", [`--net=${status.nodes[0].netns}`, "ip", "monitor", "route", "neigh"], { stdio: ["ignore", "pipe", "ignore"] });
    let events = "";
    monitor.stdout.on("data", (chunk: Buffer) => (events += chunk.toString()));
    try {
      const claimedBefore = agentLogEntries(status.nodes[0].agentLog, "node claimed").length;
      const pid = restartAgent(status, "node1");
      await waitFor("the restarted agent claims its node", () => agentLogEntries(status.nodes[0].agentLog, "node claimed").length > claimedBefore, 10_000);
      await new Promise((resolve) => setTimeout(resolve, 3000));
      assert.equal(events.split("\n").filter((line) => / proto 153|lladdr .* PERMANENT/.test(line)).join("\n"), "", "no route or neighbour of the agent's changed");
      status.nodes[0].agentPid = pid;
    } finally {
      monitor.kill();
    }
    const check = labCheck(name);
    assert.equal(check.ok, true, JSON.stringify(check.probes.filter((probe) => !probe.ok)));
  });

  // Bug caught: state deleted by hand staying deleted (no resync) until the next peer change.
  it("puts back a route and a VXLAN FDB entry deleted by hand within one resync", async () => {
    const routes = agentRoutes(name, "node1");
    const entries = fdb(name, "node1", "trellis-vx4");
    const victim = routes.find((route) => route.includes("trellis-vx4"))!.split(" ")[0];
    const updatesBefore = agentLogEntries(status.nodes[0].agentLog, "routes updated").length;
    labExec(name, "node1", ["ip", "route", "del", victim, "proto", "153"]);
    const [mac, , dst] = entries[0].split(" ");
    labExec(name, "node1", ["bridge", "fdb", "del", mac, "dev", "trellis-vx4", "dst", dst, "self"]);
    const took = await waitFor("route and FDB restored", () => agentRoutes(name, "node1").join() === routes.join() && fdb(name, "node1", "trellis-vx4").join() === entries.join(), 4000);
    assert.ok(took <= 4000, `restored after ${took} ms`);
    // The agent put them back (the resync may even beat the first look at the table).
    const changes = agentLogEntries(status.nodes[0].agentLog, "routes updated").slice(updatesBefore).flatMap((entry) => entry.changes as string[]);
    assert.ok(changes.some((change) => change.startsWith(`route ${victim} `)), `the agent restored ${victim}: ${changes.join("; ")}`);
    assert.ok(changes.some((change) => change.startsWith(`fdb ${mac} -> ${dst}`)), `the agent restored the FDB entry: ${changes.join("; ")}`);
  });

  // Bug caught: the pod bridge deleted by hand (and with it every pod port on it) staying gone
  // until the next ADD on that node: the agent's resync must put it back with its pods.
  it("puts back the pod bridge deleted by hand, with its pods on it, within one resync", async () => {
    const bridgeOf = () => labExec(name, "node1", ["ip", "-o", "link", "show", "master", "trellis0"]).split("\n").filter(Boolean).length;
    const ports = bridgeOf();
    assert.ok(ports >= 1, "node1's pods are on its bridge");
    labExec(name, "node1", ["ip", "link", "del", "trellis0"]);
    const took = await waitFor("bridge and its ports back", () => {
      try {
        return bridgeOf() === ports;
      } catch {
        return false;
      }
    }, 4000);
    assert.ok(took <= 4000, `restored after ${took} ms`);
    const check = labCheck(name);
    assert.deepEqual(check.probes.filter((probe) => !probe.ok && (probe.fromNode === "node1" || probe.toNode === "node1")).map((probe) => `${probe.from} -> ${probe.to} ${probe.kind}: ${probe.error}`), []);
  });

  // Bug caught: the agent's masquerade check, which lists its chains one by one, missing a chain
  // emptied by hand (pods' traffic to the outside leaves with their own address) or failing on a
  // table deleted by hand instead of falling back to writing it whole.
  it("puts back its masquerade chain emptied by hand, and its table deleted by hand, within one resync", async () => {
    const chain = () => {
      try {
        return labExec(name, "node1", ["nft", "list", "chain", "inet", "trellis-agent", "masq-pods"]);
      } catch {
        return "";
      }
    };
    const rules = () => chain().split("\n").filter((line) => / masquerade$/.test(line.trim())).length;
    const masqueradeRules = rules();
    assert.ok(masqueradeRules >= 2, `both families' masquerade rules:\n${chain()}`);
    const updates = () => agentLogEntries(status.nodes[0].agentLog, "masquerade updated").length;
    const before = updates();
    // The repair may beat the first look (a resync every 2 s): the agent's log says it wrote it.
    labExec(name, "node1", ["nft", "flush", "chain", "inet", "trellis-agent", "masq-pods"]);
    const refilled = await waitFor("masquerade chain refilled", () => rules() === masqueradeRules && updates() > before, 4000);
    assert.ok(refilled <= 4000, `refilled after ${refilled} ms`);
    const between = updates();
    labExec(name, "node1", ["nft", "delete", "table", "inet", "trellis-agent"]);
    const rewritten = await waitFor("masquerade table rewritten", () => rules() === masqueradeRules && updates() > between, 4000);
    assert.ok(rewritten <= 4000, `rewritten after ${rewritten} ms`);
    const listing = labExec(name, "node1", ["nft", "list", "table", "inet", "trellis-agent"]);
    assert.equal(listing.split("\n").filter((line) => /jump masq-pods/.test(line)).length, 1, `one jump to the chain:\n${listing}`);
  });

  // Bug caught: a peer that died keeps attracting traffic forever (routes never withdrawn on a lapsed heartbeat).
  it("withdraws the routes of a peer whose heartbeat lapsed, and restores them when it beats again", async () => {
    killAgent(status, "node1", "SIGTERM");
    await waitFor("node1's agent stopped", () => !labStatus(name).nodes[0].agentRunning, 5000);
    status.nodes[0].agentPid = restartAgent(status, "node1", ["--heartbeat-interval", "1", "--peer-grace", "3"]);
    const node3 = status.nodes[2];
    await waitFor("node1 routes to node3", () => agentRoutes(name, "node1").some((route) => route.startsWith(node3.podCidrs[0])), 10_000);
    killAgent(status, "node3");
    await waitFor("node1 withdraws node3's routes after the grace period", () => !agentRoutes(name, "node1").some((route) => route.startsWith(node3.podCidrs[0])), 10_000);
    status.nodes[2].agentPid = restartAgent(status, "node3");
    await waitFor("node1 routes to node3 again", () => agentRoutes(name, "node1").some((route) => route.startsWith(node3.podCidrs[0])), 10_000);
  });

  // Bug caught: a removed node's pod CIDRs keep routes on its peers, attracting traffic for addresses that may be reused.
  it("drops the routes of a stopped node within 2 s of `trellis node rm`", async () => {
    const node3 = status.nodes[2];
    killAgent(status, "node3");
    const rm = runTrellis(["node", "rm", "node3", "--store", status.store]);
    assert.equal(rm.status, 0, rm.stderr);
    const gone = (node: string) => () => !agentRoutes(name, node).some((route) => node3.podCidrs.some((cidr) => route.startsWith(cidr)));
    const [took1, took2] = await Promise.all([waitFor("node1 drops node3", gone("node1"), 2000), waitFor("node2 drops node3", gone("node2"), 2000)]);
    assert.ok(took1 <= 2000 && took2 <= 2000);
  });
});

describe("a lab whose store holds bad node records", { timeout: 300_000 }, () => {
  const name = labName("bd");

  // Bug caught: one corrupt or hostile record in the store (a MAC with shell text, not JSON at all) breaking every agent's sync.
  it("ignores what does not parse and keeps routing to every good peer", async () => {
    const up = runTrellis(["lab", "up", "--name", name, "--mode", "vxlan", "--subnets", "2"]);
    assert.equal(up.status, 0, up.stdout + up.stderr);
    const status = labStatus(name);
    const before = agentRoutes(name, "node1");
    const store = await openStore(status.store);
    try {
      const evil = { name: "evil", podCidrs: ["10.244.99.0/24", "not a cidr"], network: { addresses: ["198.18.0.99"], vteps: [{ family: 4, mac: "02:00:00:00:00:01 dst 1.2.3.4; reboot" }], mtu: 1500 } };
      await store.txn({ compares: [], operations: [{ type: "put", key: "/nodes/evil", value: JSON.stringify(evil) }, { type: "put", key: "/nodes/garbage", value: "not json" }] });
    } finally {
      await store.close();
    }
    await waitFor("node1 warns about the record that is not JSON", () => agentLogEntries(status.nodes[0].agentLog, "a node record in the store is not valid JSON of a node; it is ignored").length > 0, 5000);
    await new Promise((resolve) => setTimeout(resolve, 2500));
    // The record's one valid pod CIDR is routed to its own address, over VXLAN with the MAC its
    // name gives (its published one is text, reported and ignored); its other pod CIDR is refused.
    assert.deepEqual(agentRoutes(name, "node1"), [...before, "10.244.99.0/24 via 10.244.99.0 dev trellis-vx4"].sort(), "the good peers' routes are untouched");
    const refused = agentLogEntries(status.nodes[0].agentLog, "refused").filter((entry) => entry.object === "evil").map((entry) => entry.reason);
    assert.deepEqual(refused.sort(), ["pod-cidr-invalid", "vtep-mac-mismatch"]);
    assert.ok(labStatus(name).nodes.every((node) => node.agentRunning));
    const check = labCheck(name);
    assert.equal(check.ok, true, JSON.stringify(check.probes.filter((probe) => !probe.ok)));
  });
});

describe("a lab on etcd while etcd is down", { timeout: 600_000 }, () => {
  const name = labName("ed");

  // Bug caught: an agent that exits, withdraws routes or stops following the store after an outage.
  it("keeps traffic flowing while etcd is stopped, and the agents follow the store again when it returns", async () => {
    const up = runTrellis(["lab", "up", "--name", name, "--mode", "auto", "--subnets", "2", "--store", "etcd"]);
    assert.equal(up.status, 0, up.stdout + up.stderr);
    const status = labStatus(name);
    assert.ok(status.etcd, "the lab runs its etcd");
    process.kill(status.etcd!.pid, "SIGKILL");
    await new Promise((resolve) => setTimeout(resolve, 7000));
    const during = labCheck(name);
    assert.equal(during.ok, true, JSON.stringify(during.probes.filter((probe) => !probe.ok)));
    for (const node of status.nodes) {
      assert.ok(labStatus(name).nodes.find((entry) => entry.name === node.name)!.agentRunning, `${node.name}'s agent runs on`);
      assert.ok(agentLogEntries(node.agentLog, "heartbeat not written; the store is unreachable; keeping every peer's routes meanwhile").length > 0, `${node.name} says the store is gone`);
    }
    startDetached(status.external.netns, status.etcd!.argv, status.etcd!.log);
    for (const node of status.nodes) {
      await waitFor(`${node.name} writes its heartbeat again`, () => agentLogEntries(node.agentLog, "heartbeat written again").length > 0, 30_000);
    }
    const node3 = status.nodes[2];
    process.kill(node3.agentPid, "SIGKILL");
    // The lab's etcd is reachable only inside the lab: ask it from the external host's namespace.
    labExec(name, "external", [TRELLIS, "node", "rm", "node3", "--store", status.store]);
    await waitFor("node1 follows the store again and drops node3", () => !agentRoutes(name, "node1").some((route) => route.startsWith(node3.podCidrs[0])), 4_000);
  });
});
