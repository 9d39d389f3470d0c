import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { formatIp, formatPrefix, parseIp, parsePrefix } from "../net/ip.js";
import { vtepMac, type NodeEndpoint } from "./node-network.js";
import { admitPeers, type PeerClaim, type PeerPlan } from "./peer-admission.js";

/*
 * This node is node-a (198.18.0.10 on 198.18.0.0/24, pods 10.244.0.0/24 and fd00:10:244::/64);
 * the cluster's pod CIDRs are 10.244.0.0/16 and fd00:10:244::/56, its Service CIDRs
 * 10.96.0.0/16 and fd00:10:96::/112.
 */
const SELF: NodeEndpoint = {
  name: "node-a",
  addresses: [parseIp("198.18.0.10"), parseIp("fd00:198:18::10")],
  podCidrs: [parsePrefix("10.244.0.0/24"), parsePrefix("fd00:10:244::/64")],
  vteps: [{ family: 4, mac: vtepMac("node-a", 4) }, { family: 6, mac: vtepMac("node-a", 6) }],
};
const PLAN: PeerPlan = {
  self: SELF,
  clusterPodCidrs: [parsePrefix("10.244.0.0/16"), parsePrefix("fd00:10:244::/56")],
  serviceCidrs: [parsePrefix("10.96.0.0/16"), parsePrefix("fd00:10:96::/112")],
  nodeCidrs: [],
  connected: [parsePrefix("198.18.0.0/24"), parsePrefix("fd00:198:18::/64")],
};

let clock = 1000;
/** A well-behaved peer number `n`: its own pod CIDRs and address, VTEPs as its agent publishes them. */
function peer(n: number, change: Partial<PeerClaim> = {}): PeerClaim {
  const name = change.name ?? `node-${n}`;
  return {
    name,
    since: clock++,
    published: true,
    podCidrs: [`10.244.${n}.0/24`, `fd00:10:244:${n.toString(16)}::/64`],
    addresses: [`198.18.0.${10 + n}`, `fd00:198:18::${(10 + n).toString(16)}`],
    vteps: [{ family: 4, mac: vtepMac(name, 4) }, { family: 6, mac: vtepMac(name, 6) }],
    ...change,
  };
}

const shown = (endpoint: NodeEndpoint | undefined) =>
  endpoint && { addresses: endpoint.addresses.map(formatIp), podCidrs: endpoint.podCidrs.map(formatPrefix), vteps: endpoint.vteps.map((vtep) => `${vtep.family} ${vtep.mac}`) };
const reasons = (admission: ReturnType<typeof admitPeers>) => admission.refusals.map((refusal) => `${refusal.peer} ${refusal.reason}`);

describe("admitPeers", () => {
  test("a well-behaved peer is taken whole, its VTEP MACs derived from its name", () => {
    const admission = admitPeers(PLAN, [peer(1)]);
    assert.deepEqual(admission.refusals, []);
    assert.deepEqual(shown(admission.peers.get("node-1")), {
      addresses: ["198.18.0.11", "fd00:198:18::b"],
      podCidrs: ["10.244.1.0/24", "fd00:10:244:1::/64"],
      vteps: [`4 ${vtepMac("node-1", 4)}`, `6 ${vtepMac("node-1", 6)}`],
    });
  });

  // Bug caught: a Node claiming this node's own pod CIDR gets a route that replaces the kernel's
  // route to this node's pods.
  test("a pod CIDR overlapping this node's is refused, whatever the claim's age", () => {
    const admission = admitPeers(PLAN, [peer(1, { since: 0, podCidrs: ["10.244.0.0/24", "fd00:10:244::/60"] })]);
    assert.deepEqual(shown(admission.peers.get("node-1"))?.podCidrs, []);
    assert.deepEqual(reasons(admission), ["node-1 pod-cidr-conflict", "node-1 pod-cidr-conflict"]);
    assert.match(admission.refusals[0].message, /^node node-1: pod CIDR 10\.244\.0\.0\/24 overlaps this node's pod CIDR 10\.244\.0\.0\/24/);
  });

  // Bugs caught: a pod CIDR outside the cluster (192.0.0.0/8) or over the underlay (198.18.0.0/24)
  // or a Service CIDR installed as a route, taking traffic for addresses that are not pods.
  test("pod CIDRs outside the cluster's, over a Service CIDR, a connected subnet or this node's address are refused", () => {
    const plan: PeerPlan = { ...PLAN, clusterPodCidrs: [parsePrefix("10.0.0.0/8")], serviceCidrs: [parsePrefix("10.96.0.0/16")], connected: [parsePrefix("198.18.0.0/24"), parsePrefix("10.1.0.0/24")] };
    const admission = admitPeers({ ...plan, self: { ...SELF, addresses: [parseIp("10.2.0.5")] } }, [
      peer(1, { podCidrs: ["192.0.0.0/8"] }),
      peer(2, { podCidrs: ["198.18.0.0/24"] }),
      peer(3, { podCidrs: ["10.96.0.0/24"] }),
      peer(4, { podCidrs: ["10.1.0.0/16"] }),
      peer(5, { podCidrs: ["10.2.0.0/24"] }),
    ]);
    assert.deepEqual(reasons(admission), ["node-1 pod-cidr-outside-cluster", "node-2 pod-cidr-outside-cluster", "node-3 pod-cidr-reserved", "node-4 pod-cidr-reserved", "node-5 pod-cidr-reserved"]);
    assert.match(admission.refusals[0].message, /pod CIDR 192\.0\.0\.0\/8 is outside the cluster's pod CIDRs 10\.0\.0\.0\/8/);
    assert.match(admission.refusals[3].message, /overlaps 10\.1\.0\.0\/24, a subnet connected to this node/);
    assert.match(admission.refusals[4].message, /holds this node's address 10\.2\.0\.5/);
    for (const name of ["node-1", "node-2", "node-3", "node-4", "node-5"]) assert.deepEqual(admission.peers.get(name)?.podCidrs, []);
  });

  // Bug caught: two Nodes claiming overlapping pod CIDRs, the last one written winning (so a new
  // Node can take an existing node's pods' traffic).
  test("of two overlapping pod CIDRs the older claim keeps it, in whichever order they come, and the newer gets it when the older goes", () => {
    const older = peer(1, { since: 10 });
    const newer = peer(2, { since: 20, podCidrs: ["10.244.0.0/23"] });
    for (const claims of [[older, newer], [newer, older]]) {
      const admission = admitPeers({ ...PLAN, self: { ...SELF, podCidrs: [parsePrefix("10.244.4.0/24")] } }, claims);
      assert.deepEqual(shown(admission.peers.get("node-1"))?.podCidrs, ["10.244.1.0/24", "fd00:10:244:1::/64"]);
      assert.deepEqual(shown(admission.peers.get("node-2"))?.podCidrs, []);
      assert.match(admission.refusals[0].message, /node node-2: pod CIDR 10\.244\.0\.0\/23 overlaps node node-1's pod CIDR 10\.244\.1\.0\/24, claimed earlier; the older claim keeps it/);
    }
    const alone = admitPeers({ ...PLAN, self: { ...SELF, podCidrs: [parsePrefix("10.244.4.0/24")] } }, [newer]);
    assert.deepEqual(shown(alone.peers.get("node-2"))?.podCidrs, ["10.244.0.0/23"]);
  });

  // Bug caught: a Node whose agent has not published yet (its pod CIDR allocated, no addresses)
  // left out of the conflict check, so a newer Node takes its block in the meantime.
  test("an unpublished peer's pod CIDRs count as taken, but it is not routed and not reported", () => {
    const admission = admitPeers(PLAN, [peer(1, { since: 1, published: false, addresses: [] }), peer(2, { since: 2, podCidrs: ["10.244.1.0/24"] })]);
    assert.equal(admission.peers.has("node-1"), false);
    assert.deepEqual(shown(admission.peers.get("node-2"))?.podCidrs, []);
    assert.deepEqual(reasons(admission), ["node-2 pod-cidr-conflict"]);
  });

  test("claims of equal age are ordered by name", () => {
    const admission = admitPeers(PLAN, [peer(2, { name: "node-b", since: 5, podCidrs: ["10.244.9.0/24"] }), peer(1, { name: "node-a2", since: 5, podCidrs: ["10.244.9.0/24"] })]);
    assert.deepEqual(reasons(admission), ["node-b pod-cidr-conflict"]);
  });

  test("malformed pod CIDRs are refused by name, not thrown", () => {
    const admission = admitPeers(PLAN, [
      peer(1, { podCidrs: ["10.244.1.7/24", "nonsense\n"] }),
      peer(2, { podCidrs: ["10.244.2.0/24", "10.244.3.0/24"] }),
      peer(3, { podCidrs: [42 as unknown as string] }),
      peer(4, { podCidrs: Array.from({ length: 15_000 }, (_, i) => `10.244.${i >> 8}.${i & 255}/32`) }),
    ]);
    assert.deepEqual(reasons(admission), ["node-1 pod-cidr-invalid", "node-1 pod-cidr-invalid", "node-2 pod-cidr-invalid", "node-3 pod-cidr-invalid", "node-4 pod-cidr-invalid"]);
    assert.match(admission.refusals[1].message, /pod CIDR "nonsense\\n" is not a network prefix/);
    assert.match(admission.refusals[4].message, /claims 15000 pod CIDRs; a node has at most one per family/);
    assert.deepEqual(admission.peers.get("node-2")?.podCidrs, []);
  });

  // Bug caught: another host's address published as a node address is excluded from masquerade
  // on every node (pods lose egress to it), and 15,000 of them are all taken.
  test("node addresses: bounded, never a pod, Service, special or other node's address, inside the node CIDRs when known", () => {
    const many = Array.from({ length: 15_000 }, (_, i) => `203.0.${i >> 8}.${i & 255}`);
    const plan: PeerPlan = { ...PLAN, nodeCidrs: [parsePrefix("198.18.0.0/15"), parsePrefix("fd00:198:18::/48")] };
    const admission = admitPeers(plan, [
      peer(1, { addresses: many }),
      peer(2, { addresses: ["10.244.7.7", "fd00:10:96::1"] }),
      peer(3, { addresses: ["127.0.0.1", "fe80::1"] }),
      peer(4, { addresses: ["8.8.8.8"] }),
      peer(5, { addresses: ["198.18.0.10"] }),
      peer(6, { addresses: ["198.18.0.16", "fd00:198:18::16"] }),
      peer(7, { addresses: ["198.18.0.16", "fd00:198:18::17"] }),
      peer(8, { addresses: ["198.18.0.18", "198.18.0.19"] }),
      peer(9, { addresses: ["not-an-ip"] }),
    ]);
    assert.deepEqual(reasons(admission), [
      "node-1 address-count",
      "node-2 address-reserved", "node-2 address-reserved",
      "node-3 address-reserved", "node-3 address-reserved",
      "node-4 address-outside-node-cidrs",
      "node-5 address-conflict",
      "node-7 address-conflict",
      "node-8 address-count",
      "node-9 address-invalid",
    ]);
    assert.match(admission.refusals[0].message, /publishes 15000 node addresses; a node has at most one per family/);
    assert.match(admission.refusals[5].message, /node address 8\.8\.8\.8 is outside the cluster's node CIDRs 198\.18\.0\.0\/15/);
    assert.match(admission.refusals[6].message, /node address 198\.18\.0\.10 is this node's own/);
    assert.match(admission.refusals[7].message, /node address 198\.18\.0\.16 is node node-6's, claimed earlier/);
    assert.deepEqual(shown(admission.peers.get("node-7"))?.addresses, ["fd00:198:18::17"]);
    assert.deepEqual(shown(admission.peers.get("node-1"))?.addresses, []);
    assert.deepEqual(shown(admission.peers.get("node-1"))?.podCidrs, ["10.244.1.0/24", "fd00:10:244:1::/64"], "a peer's bad addresses cost it nothing else");
  });

  test("on the API, published addresses must be among the Node's status.addresses unless its agent was given them", () => {
    const status = { addresses: [parseIp("198.18.0.11"), parseIp("fd00:198:18::b")], nodeIpGiven: false };
    const admission = admitPeers(PLAN, [
      peer(1, { status }),
      peer(2, { addresses: ["198.18.0.99"], status: { addresses: [parseIp("198.18.0.12")], nodeIpGiven: false } }),
      peer(3, { addresses: ["198.18.0.98"], status: { addresses: [parseIp("198.18.0.13")], nodeIpGiven: true } }),
      peer(4, { addresses: ["fd00:198:18::99"], status: { addresses: [parseIp("198.18.0.14")], nodeIpGiven: false } }),
    ]);
    assert.deepEqual(reasons(admission), ["node-2 address-not-in-status"]);
    assert.match(admission.refusals[0].message, /node address 198\.18\.0\.99 is not among its Node's IPv4 status\.addresses \(198\.18\.0\.12\)/);
  });

  // Bug caught: a node publishing another node's VTEP MAC makes every FDB entry for that MAC flap
  // between the two, sending part of the victim's traffic to the impostor.
  test("VTEP MACs are derived from the name: a published one that differs is reported and ignored", () => {
    const victim = peer(1);
    const impostor = peer(2, { vteps: [{ family: 4, mac: vtepMac("node-1", 4) }, { family: 6, mac: "00:00:00:00:00:00" }] });
    const admission = admitPeers(PLAN, [victim, impostor]);
    assert.deepEqual(reasons(admission), ["node-2 vtep-mac-mismatch", "node-2 vtep-mac-mismatch"]);
    assert.deepEqual(shown(admission.peers.get("node-2"))?.vteps, [`4 ${vtepMac("node-2", 4)}`, `6 ${vtepMac("node-2", 6)}`]);
    assert.deepEqual(shown(admission.peers.get("node-1"))?.vteps, [`4 ${vtepMac("node-1", 4)}`, `6 ${vtepMac("node-1", 6)}`]);
    assert.match(admission.refusals[1].message, /publishes VTEP MAC "00:00:00:00:00:00" for IPv6; peers use the one its name gives/);
  });

  test("a peer named like this node is not a peer", () => {
    assert.equal(admitPeers(PLAN, [peer(1, { name: "node-a" })]).peers.size, 0);
  });

  test("1,000 peers with one impostor: every honest peer is taken, the impostor refused", () => {
    const claims = Array.from({ length: 1000 }, (_, i) => ({
      name: `n${i}`, since: i, published: true, podCidrs: [`10.244.${(i >> 2) + 1}.${(i & 3) * 64}/26`], addresses: [`198.18.${(i >> 8) + 1}.${i & 255}`], vteps: [],
    }));
    claims.push({ name: "zz", since: 5000, published: true, podCidrs: ["10.244.100.0/22"], addresses: ["198.18.1.7"], vteps: [] });
    const admission = admitPeers({ ...PLAN, connected: [] }, claims);
    assert.deepEqual(reasons(admission), ["zz pod-cidr-conflict", "zz address-conflict"]);
    assert.equal([...admission.peers.values()].filter((endpoint) => endpoint.podCidrs.length === 1).length, 1000);
  });
});
