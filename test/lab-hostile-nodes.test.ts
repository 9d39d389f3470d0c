/**
 * A running cluster against hostile node records: whoever can write the Trellis store (a
 * compromised node's agent, a careless operator) writes nodes that claim another node's pod
 * CIDR, addresses outside the cluster, another node's VTEP MAC or address, or thousands of
 * addresses. The lab is direct and VXLAN at once (auto mode over two underlay subnets),
 * dual-stack, with a 2 s resync; the records go straight into its store.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { vtepMac } from "../src/dataplane/node-network.js";
import { openStore } from "../src/store/open.js";
import type { KvStore } from "../src/store/kv.js";
import { agentLogEntries, downAll, labCheck, labExec, labName, labStatus, runTrellis, waitFor, type LabStatus } from "./support/lab.js";

after(downAll);

/** Every route of the main table in a member's namespace, both families, as ip prints it. */
function mainRoutes(name: string, member: string): string {
  return ["-4", "-6"].map((family) => labExec(name, member, ["ip", family, "route", "show", "table", "main"])).join("");
}

function fdb(name: string, node: string, dev: string): string[] {
  return (JSON.parse(labExec(name, node, ["bridge", "-json", "fdb", "show", "dev", dev])) as Array<{ mac: string; dst?: string }>)
    .filter((entry) => entry.dst)
    .map((entry) => `${entry.mac} dst ${entry.dst}`)
    .sort();
}

/** The agent's /metrics, read from inside the node (it listens on the node's own loopback). */
function metrics(name: string, node: string): string {
  return labExec(name, node, ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9656 && printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3"]);
}

describe("a lab's agents against hostile node records", { timeout: 600_000 }, () => {
  const name = labName("hn");
  let status: LabStatus;
  let store: KvStore;
  let routesBefore: Map<string, string>;
  const nodes = () => status.nodes.map((node) => node.name);
  const allRoutes = () => new Map(nodes().map((node) => [node, mainRoutes(name, node)]));
  const refusals = (node: string) => agentLogEntries(status.nodes.find((entry) => entry.name === node)!.agentLog, "refused");
  const syncs = (node: string) => agentLogEntries(status.nodes.find((entry) => entry.name === node)!.agentLog, "some changes failed").length;

  /** Writes a node record as an agent would, with a live heartbeat. */
  const writeNode = async (node: string, podCidrs: unknown, network: Record<string, unknown>) => {
    const record = { name: node, podCidrs, network: { mtu: 1500, agent: { id: `hostile-${node}`, host: "elsewhere", bootId: "none", pid: 1, startTime: "0" }, vteps: [], ...network } };
    await store.txn({
      compares: [],
      operations: [
        { type: "put", key: `/nodes/${node}`, value: JSON.stringify(record) },
        { type: "put", key: `/heartbeats/${node}`, value: JSON.stringify({ agent: `hostile-${node}`, at: Date.now() }) },
      ],
    });
  };
  const removeNode = async (node: string) => {
    await store.txn({ compares: [], operations: [{ type: "delete", key: `/nodes/${node}` }, { type: "delete", key: `/heartbeats/${node}` }] });
  };
  /** Two resyncs (2 s each) and a little: what the agents would do, they have done. */
  const settle = () => new Promise((resolve) => setTimeout(resolve, 4_500));
  const refusedEverywhere = async (node: string, reason: string) => {
    await waitFor(`every agent refuses ${node} (${reason})`, () => nodes().every((each) => refusals(each).some((entry) => entry.object === node && entry.reason === reason)), 10_000);
  };

  before(async () => {
    const up = runTrellis(["lab", "up", "--name", name, "--mode", "auto", "--subnets", "2", "--pods-per-node", "1"]);
    assert.equal(up.status, 0, up.stdout + up.stderr);
    status = labStatus(name);
    store = await openStore(status.store);
    routesBefore = allRoutes();
  });
  after(async () => {
    await store?.close();
  });

  // Bugs caught: a peer pod CIDR installed unchecked, so `route replace` overwrites node1's own
  // route to its pods (on node1) and the connected underlay route (on every node of that
  // subnet), or sends node1's pods' traffic to the thief (elsewhere); and deleting the records
  // then withdraws those routes, leaving the victims without their original ones.
  it("records claiming node1's pod CIDRs, 192.0.0.0/8 and the underlay change no route, and their deletion leaves every route as it was", async () => {
    const node1 = status.nodes.find((node) => node.name === "node1")!;
    await writeNode("thief", node1.podCidrs, { addresses: ["198.18.0.21", "fd00:198:18::21"] });
    await writeNode("wide", ["192.0.0.0/8"], { addresses: ["198.18.0.22"] });
    await writeNode("under", ["198.18.0.0/24", "fd00:198:18::/64"], { addresses: ["198.18.0.23"] });
    await refusedEverywhere("thief", "pod-cidr-conflict");
    await refusedEverywhere("wide", "pod-cidr-outside-cluster");
    await refusedEverywhere("under", "pod-cidr-outside-cluster");
    const message = refusals("node2").find((entry) => entry.object === "thief")!.message as string;
    assert.match(message, new RegExp(`node thief: pod CIDR ${node1.podCidrs[0].replace(/[.]/g, "\\.")} overlaps node node1's pod CIDR .*claimed earlier; the older claim keeps it`));
    await settle();
    assert.deepEqual(allRoutes(), routesBefore, "no node's routes changed");
    const check = labCheck(name);
    assert.equal(check.ok, true, JSON.stringify(check.probes.filter((probe) => !probe.ok)));
    for (const node of ["thief", "wide", "under"]) await removeNode(node);
    await settle();
    assert.deepEqual(allRoutes(), routesBefore, "deleting the records took no route with them");
  });

  // Bug caught: an impostor publishing node2's VTEP MAC makes node1's FDB entry for that MAC
  // flap between node2 and the impostor (part of node2's pod traffic goes to the impostor); the
  // zero MAC is taken, fails in the kernel and is retried at every resync forever.
  it("a node publishing node2's VTEP MAC, or the zero MAC, is given the MAC its name gives; node2's FDB entries never move", async () => {
    const node1 = status.nodes.find((node) => node.name === "node1")!;
    const node2 = status.nodes.find((node) => node.name === "node2")!;
    const before = fdb(name, "node1", "trellis-vx4");
    assert.ok(before.some((entry) => entry.startsWith(`${vtepMac("node2", 4)} dst ${node2.addresses[0]}`)), `node1 reaches node2 over VXLAN: ${before.join("; ")}`);
    const failuresBefore = syncs("node1");
    // On node2's subnet, so that node1 (on the other) reaches it over VXLAN.
    await writeNode("impostor", ["10.244.60.0/24", "fd00:10:244:60::/64"], {
      addresses: ["198.18.1.30", "fd00:198:18:1::30"],
      vteps: [{ family: 4, mac: vtepMac("node2", 4) }, { family: 6, mac: "00:00:00:00:00:00" }],
    });
    await refusedEverywhere("impostor", "vtep-mac-mismatch");
    const mine = `${vtepMac("impostor", 4)} dst 198.18.1.30`;
    await waitFor("node1 has the impostor's own FDB entry", () => fdb(name, "node1", "trellis-vx4").includes(mine), 10_000);
    await settle();
    assert.deepEqual(fdb(name, "node1", "trellis-vx4"), [...before, mine].sort(), "node2's MAC still leads to node2 alone");
    assert.ok(fdb(name, "node1", "trellis-vx6").includes(`${vtepMac("impostor", 6)} dst fd00:198:18:1::30`), "the IPv6 VTEP got the derived MAC, not the zero one");
    assert.equal(syncs("node1"), failuresBefore, "no kernel change failed, so nothing is retried at every resync");
    const probe = labCheck(name);
    assert.equal(probe.ok, true, JSON.stringify(probe.probes.filter((entry) => !entry.ok)));
    await removeNode("impostor");
    await waitFor("the impostor's FDB entry withdrawn", () => fdb(name, "node1", "trellis-vx4").join() === before.join(), 10_000);
    assert.ok(node1);
  });

  // Bug caught: node addresses taken whole: another node's address (its FDB and route then
  // point at the liar), an address outside the cluster's node CIDRs and 15,000 addresses all
  // become masquerade exclusions on every node, so pods lose their egress to those hosts.
  it("node addresses of another node, outside the node CIDRs, or by the thousand are refused and never excluded from masquerade", async () => {
    const node3 = status.nodes.find((node) => node.name === "node3")!;
    const masquerade = () => labExec(name, "node1", ["nft", "list", "chain", "inet", "trellis-agent", "masq-pods"]);
    const masqueradeBefore = masquerade();
    await writeNode("liar", ["10.244.61.0/24"], { addresses: [node3.addresses[0]] });
    await writeNode("outsider", ["10.244.62.0/24"], { addresses: ["203.0.113.7"] });
    await writeNode("hoarder", ["10.244.63.0/24"], { addresses: Array.from({ length: 15_000 }, (_, i) => `203.0.${i >> 8}.${i & 255}`) });
    await refusedEverywhere("liar", "address-conflict");
    await refusedEverywhere("outsider", "address-outside-node-cidrs");
    await refusedEverywhere("hoarder", "address-count");
    await settle();
    assert.equal(masquerade(), masqueradeBefore, "the masquerade exclusions did not change");
    assert.doesNotMatch(masquerade(), /203\.0\.113\.7/);
    assert.deepEqual(allRoutes(), routesBefore, "node3 is still routed to through its own address");
    const counted = metrics(name, "node1");
    for (const reason of ["pod-cidr-conflict", "vtep-mac-mismatch", "address-conflict", "address-outside-node-cidrs", "address-count"]) {
      assert.match(counted, new RegExp(`trellis_rejected_objects_total\\{kind="Node",reason="${reason}"\\} [1-9]`), `counted: ${reason}`);
    }
    const check = labCheck(name);
    assert.equal(check.ok, true, JSON.stringify(check.probes.filter((probe) => !probe.ok)));
    for (const node of ["liar", "outsider", "hoarder"]) await removeNode(node);
  });
});
