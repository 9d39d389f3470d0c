/**
 * ipMasq on real namespaces: traffic to another node's pods keeps the pod's address, traffic
 * leaving the cluster takes the node's; the nftables rules change only when what they need
 * changes, disappear with the last pod, and CHECK compares them as data.
 */
import assert from "node:assert/strict";
import type { ChildProcess } from "node:child_process";
import { after, before, describe, it } from "node:test";
import { inNetns, NetnsPool, sweepStaleNamespaces, type TestNetns } from "./support/netns.js";
import { addPod, addressesOf, cniSuite, type PodAttachmentResult, startPeerEcho, tcpPeerSeenBy, tempDir, trellis } from "./support/trellis-cni.js";

interface NftObject {
  table?: { name: string };
  chain?: { table: string; name: string };
  rule?: { table: string; chain: string; handle: number; expr: unknown[] };
}

/** The node's Trellis masquerade table (one per state directory), as nft's JSON objects. */
function masqueradeTable(node: TestNetns): NftObject[] | undefined {
  const all = (JSON.parse(inNetns(node, "nft", ["-j", "list", "ruleset"])) as { nftables: NftObject[] }).nftables;
  const table = all.find((item) => item.table?.name.startsWith("trellis-cni"))?.table?.name;
  if (table === undefined) return undefined;
  return all.filter((item) => item.table?.name === table || item.chain?.table === table || item.rule?.table === table);
}

function chainNames(node: TestNetns): string[] {
  return (masqueradeTable(node) ?? []).flatMap((item) => (item.chain ? [item.chain.name] : [])).sort();
}

function ruleHandles(node: TestNetns): number[] {
  return (masqueradeTable(node) ?? []).flatMap((item) => (item.rule ? [item.rule.handle] : [])).sort((a, b) => a - b);
}

describe(cniSuite("masquerade with the cluster's CIDRs excluded"), () => {
  const pool = new NetnsPool();
  const state = tempDir("masq");
  const servers: ChildProcess[] = [];
  let node: TestNetns;
  let peer: TestNetns;
  const config = {
    cniVersion: "1.1.0", name: "m", type: "trellis", ipMasq: true,
    nonMasqueradeCidrs: ["10.244.0.0/16", "fd00:10:244::/56", "10.96.0.0/16"],
    ipam: { ranges: [[{ subnet: "10.244.60.0/24" }], [{ subnet: "fd00:10:244:60::/64" }]], dataDir: state.path },
  };
  const pods: Array<{ ns: TestNetns; result: PodAttachmentResult }> = [];

  before(async () => {
    sweepStaleNamespaces();
    node = pool.create("node");
    // Another node: reached over an underlay veth, holding a "remote pod" address and an address outside the cluster.
    peer = pool.create("peer");
    inNetns(node, "ip", ["link", "add", "underlay", "type", "veth", "peer", "name", "underlay", "netns", peer.path]);
    for (const [ns, v4, v6] of [[node, "198.18.0.1/24", "fd00:198:18::1/64"], [peer, "198.18.0.2/24", "fd00:198:18::2/64"]] as const) {
      inNetns(ns, "ip", ["address", "add", v4, "dev", "underlay"]);
      inNetns(ns, "ip", ["address", "add", v6, "dev", "underlay", "nodad"]);
      inNetns(ns, "ip", ["link", "set", "underlay", "up"]);
    }
    for (const address of ["10.244.61.5/32", "198.18.1.10/32", "fd00:10:244:61::5/128", "fd00:198:19::10/128"]) inNetns(peer, "ip", ["address", "add", address, "dev", "lo"]);
    inNetns(node, "ip", ["route", "add", "10.244.61.0/24", "via", "198.18.0.2"]);
    inNetns(node, "ip", ["route", "add", "198.18.1.0/24", "via", "198.18.0.2"]);
    inNetns(node, "ip", ["route", "add", "fd00:10:244:61::/64", "via", "fd00:198:18::2"]);
    inNetns(node, "ip", ["route", "add", "fd00:198:19::/64", "via", "fd00:198:18::2"]);
    inNetns(peer, "ip", ["route", "add", "10.244.60.0/24", "via", "198.18.0.1"]);
    inNetns(peer, "ip", ["route", "add", "fd00:10:244:60::/64", "via", "fd00:198:18::1"]);
    servers.push(await startPeerEcho(peer, 7070));
  });
  after(() => {
    for (const server of servers) server.kill("SIGKILL");
    pool.removeAll();
    state.remove();
  });

  // Bug caught: the exclusion set held only this node's ranges, so pod-to-pod traffic across nodes was NATed.
  it("keeps the pod's address towards another node's pods and uses the node's towards the outside", async () => {
    const ns = pool.create("pod");
    pods.push({ ns, result: await addPod(node, config, { id: "m0", netns: ns.path }) });
    const [v4, v6] = addressesOf(pods[0].result);
    assert.equal(tcpPeerSeenBy(ns, "10.244.61.5", 7070), v4, "IPv4 pod-to-pod across nodes is not masqueraded");
    assert.equal(tcpPeerSeenBy(ns, "fd00:10:244:61::5", 7070), v6, "IPv6 pod-to-pod across nodes is not masqueraded");
    assert.equal(tcpPeerSeenBy(ns, "198.18.1.10", 7070), "198.18.0.1", "IPv4 to the outside leaves with the node's address");
    assert.equal(tcpPeerSeenBy(ns, "fd00:198:19::10", 7070), "fd00:198:18::1", "IPv6 to the outside leaves with the node's address");
  });

  // Bug caught: every ADD flushed and rewrote the chain.
  it("leaves the rules alone when another pod of the network needs nothing new", async () => {
    const before = ruleHandles(node);
    const ns = pool.create("pod");
    pods.push({ ns, result: await addPod(node, config, { id: "m1", netns: ns.path }) });
    assert.deepEqual(ruleHandles(node), before, "same rules, same handles");
  });

  // Bug caught: CHECK searched nft's text for each prefix, and nft had merged adjacent ones.
  it("CHECK passes when nftables merged the network's adjacent ranges", async () => {
    const halves = { ...config, name: "halves", bridge: "tb-halves", nonMasqueradeCidrs: [], ipam: { ranges: [[{ subnet: "10.244.62.0/25" }, { subnet: "10.244.62.128/25" }]], dataDir: state.path } };
    const ns = pool.create("pod");
    const result = await addPod(node, halves, { id: "h0", netns: ns.path });
    assert.ok(JSON.stringify(masqueradeTable(node)).includes('"addr":"10.244.62.0","len":24'), "the kernel holds the two /25s as one /24");
    const check = await trellis("CHECK", node, { ...halves, prevResult: result }, { id: "h0", netns: ns.path });
    assert.equal(check.code, 0, check.stdout + check.stderr);
    const del = await trellis("DEL", node, halves, { id: "h0", netns: ns.path });
    assert.equal(del.code, 0, del.stdout);
    assert.deepEqual(chainNames(node), ["masq-m", "postrouting"], "the last pod of network halves took its chain along");
  });

  it("CHECK names a chain emptied by hand, and the next ADD restores it", async () => {
    const table = masqueradeTable(node)!.find((item) => item.table)!.table!.name;
    inNetns(node, "nft", ["flush", "chain", "inet", table, "masq-m"]);
    const check = await trellis("CHECK", node, { ...config, prevResult: pods[0].result }, { id: "m0", netns: pods[0].ns.path });
    assert.equal(JSON.parse(check.stdout).code, 105);
    assert.match(JSON.parse(check.stdout).msg, /masquerade chain masq-m of inet trellis-cni-[0-9a-f]{8} holds no rules; expected ip saddr \{ 10\.244\.60\.0\/24 \}/);
    const ns = pool.create("pod");
    pods.push({ ns, result: await addPod(node, config, { id: "m2", netns: ns.path }) });
    const again = await trellis("CHECK", node, { ...config, prevResult: pods[0].result }, { id: "m0", netns: pods[0].ns.path });
    assert.equal(again.code, 0, again.stdout);
    assert.equal(tcpPeerSeenBy(pods[0].ns, "198.18.1.10", 7070), "198.18.0.1");
  });

  // Bug caught: DEL and GC never removed what the network's pods had needed.
  it("removes the network's chain with its last pod, and the table with the last chain", async () => {
    for (const [i, pod] of pods.entries()) {
      const del = await trellis("DEL", node, config, { id: `m${i}`, netns: pod.ns.path });
      assert.equal(del.code, 0, del.stdout);
      assert.equal(masqueradeTable(node) === undefined, i === pods.length - 1, `after DEL of m${i}`);
    }
  });
});
