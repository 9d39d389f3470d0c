import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { planProbes } from "./check.js";
import type { LabState } from "./state.js";
import { labLayout, parseLabOptions } from "./topology.js";

/** A lab's state as `lab up` leaves it, with pod IPs assigned by hand. */
function labState(options: Record<string, string>): LabState {
  const layout = labLayout(parseLabOptions(options));
  return {
    name: layout.name,
    phase: "up",
    createdAt: "",
    dir: "/run/trellis/lab/t",
    store: "sqlite:/run/trellis/lab/t/cluster.db",
    planFile: "/run/trellis/lab/t/plan.json",
    family: parseLabOptions(options).family,
    families: layout.families,
    mode: parseLabOptions(options).mode,
    probePort: 7777,
    underlay: { netnsName: layout.underlayNetns, netnsPath: `/var/run/netns/${layout.underlayNetns}`, subnets: layout.subnets },
    nodes: layout.nodes.map((node) => ({ ...node, netnsPath: `/var/run/netns/${node.netnsName}`, cniConfDir: "", cniDataDir: "" })),
    pods: layout.pods.map((pod, i) => ({
      ...pod,
      netnsPath: `/var/run/netns/${pod.netnsName}`,
      addresses: layout.families.map((family) => (family === 4 ? `10.244.${pod.node.slice(4)}.${2 + (i % 2)}` : `fd00:10:244:${pod.node.slice(4)}::${2 + (i % 2)}`)),
    })),
    external: { ...layout.external, netnsPath: `/var/run/netns/${layout.external.netnsName}` },
  };
}

describe("lab/check", () => {
  it("plans pod to pod ICMP, TCP and UDP per family, node to pod the same, pod to external TCP expecting the node address", () => {
    const plans = planProbes(labState({ name: "t", nodes: "2", podsPerNode: "2", mode: "direct" }));
    // 4 pods x 3 peers x 2 families x 3 kinds, 4 pods x 2 families to external, 2 nodes x 4 pods x 2 families x 3 kinds
    assert.equal(plans.length, 72 + 8 + 48);
    const udp = plans.find((plan) => plan.from === "node1-pod0" && plan.to === "node2-pod1" && plan.kind === "udp" && plan.family === "IPv4");
    assert.equal(udp?.expectedSource, "10.244.1.2", "UDP sees the sender's pod IP too");
    const tcp = plans.find((plan) => plan.from === "node1-pod0" && plan.to === "node2-pod1" && plan.kind === "tcp" && plan.family === "IPv6");
    assert.deepEqual(tcp, {
      from: "node1-pod0", to: "node2-pod1", fromNode: "node1", toNode: "node2", kind: "tcp", family: "IPv6", address: "fd00:10:244:2::3",
      expectedSource: "fd00:10:244:1::2", expectedServer: "node2-pod1", note: undefined,
    });
    const external = plans.filter((plan) => plan.from === "node2-pod0" && plan.to === "external");
    assert.deepEqual(external.map((plan) => [plan.address, plan.expectedSource, plan.expectedServer]), [
      ["198.18.0.200", "198.18.0.12", "external"],
      ["fd00:198:18::200", "fd00:198:18::12", "external"],
    ]);
    const fromNode = plans.filter((plan) => plan.from === "node1");
    assert.deepEqual([...new Set(fromNode.map((plan) => plan.kind))].sort(), ["icmp", "tcp", "udp"]);
    assert.ok(fromNode.every((plan) => plan.expectedSource === undefined && (plan.kind === "icmp" || plan.expectedServer === plan.to)), "a node's source address is not judged");
    assert.ok(!plans.some((plan) => plan.from === plan.to));
  });

  it("notes in direct mode that a pod on another underlay subnet is out of reach of direct routing", () => {
    const direct = planProbes(labState({ name: "t", nodes: "2", podsPerNode: "1", subnets: "2", mode: "direct", family: "ipv4" }));
    const across = direct.find((plan) => plan.from === "node1-pod0" && plan.to === "node2-pod0");
    assert.equal(across?.note, "unreachable by direct routing: node1 and node2 are on different underlay subnets");
    const auto = planProbes(labState({ name: "t", nodes: "2", podsPerNode: "1", subnets: "2", mode: "auto", family: "ipv4" }));
    assert.ok(auto.every((plan) => plan.note === undefined));
  });

  it("plans external to each routed external IP of a Service: any endpoint for Cluster, the routed-to node's for Local", () => {
    // Catches: external IPs never probed, or a Local Service probed through a node without an
    // endpoint (where its traffic is dropped by design) and reported broken.
    const state = { ...labState({ name: "t", nodes: "2", podsPerNode: "1", mode: "direct" }), externalIps: { ranges: ["198.19.0.0/24", "fd00:198:19::/64"], node: "node1" } };
    const port = (name: string, policy: "Cluster" | "Local", endpoints: Array<{ pod: string; node: string }>) => ({
      service: `default/${name}`, protocol: "TCP" as const, port: 80, clusterIPs: ["10.96.0.10"], externalTrafficPolicy: policy,
      externalIPs: ["198.19.0.10", "fd00:198:19::10"], sessionAffinity: false, endpoints,
    });
    const plans = planProbes(state, [
      port("cluster", "Cluster", [{ pod: "node2-pod0", node: "node2" }]),
      port("local", "Local", [{ pod: "node1-pod0", node: "node1" }, { pod: "node2-pod0", node: "node2" }]),
      port("elsewhere", "Local", [{ pod: "node2-pod0", node: "node2" }]),
    ]).filter((plan) => plan.from === "external" && plan.address.includes("19"));
    assert.deepEqual(plans.map((plan) => [plan.to, plan.address, plan.toNode, plan.expectedServers, plan.expectedSource]), [
      ["svc/cluster", "198.19.0.10", "node1", ["node2-pod0"], undefined],
      ["svc/cluster", "fd00:198:19::10", "node1", ["node2-pod0"], undefined],
      ["svc/local", "198.19.0.10", "node1", ["node1-pod0"], "198.18.0.200"],
      ["svc/local", "fd00:198:19::10", "node1", ["node1-pod0"], "fd00:198:18::200"],
    ]);
    assert.equal(planProbes({ ...state, externalIps: undefined }, [port("cluster", "Cluster", [{ pod: "node2-pod0", node: "node2" }])]).filter((plan) => plan.address.includes("198.19")).length, 0, "a lab made before routes none");
  });

  it("plans 20 connections in a row from every pod to a ClientIP-affinity Service, one endpoint to answer them all", () => {
    // Catches: affinity never checked across nodes, or checked with one connection (which any endpoint passes).
    const state = labState({ name: "t", nodes: "2", podsPerNode: "1", mode: "direct", family: "ipv4" });
    const sticky = {
      service: "default/sticky", protocol: "TCP" as const, port: 80, clusterIPs: ["10.96.0.20"], externalTrafficPolicy: "Cluster" as const, externalIPs: [],
      sessionAffinity: true, endpoints: [{ pod: "node1-pod0", node: "node1" }, { pod: "node2-pod0", node: "node2" }],
    };
    const plans = planProbes(state, [sticky]).filter((plan) => plan.expectOneServerOf !== undefined);
    assert.deepEqual(plans.map((plan) => [plan.from, plan.address, plan.expectOneServerOf]), [["node1-pod0", "10.96.0.20", 20], ["node2-pod0", "10.96.0.20", 20]]);
    // Through a NodePort too: from external, on each node's address.
    const viaNodePort = planProbes(state, [{ ...sticky, nodePort: 30080 }]).filter((plan) => plan.expectOneServerOf !== undefined && plan.from === "external");
    assert.deepEqual(viaNodePort.map((plan) => [plan.toNode, plan.address, plan.port, plan.expectOneServerOf]), [["node1", "198.18.0.11", 30080, 20], ["node2", "198.18.0.12", 30080, 20]]);
  });

  it("plans 20 connections from every pod to a trafficDistribution Service, each to be answered from the pod's zone (or node) while it has endpoints", () => {
    // Catches: hints never checked (one connection, which any endpoint might pass), a zone
    // without endpoints expected to answer from itself (kube-proxy falls back to all), or
    // PreferSameNode judged by zone.
    const state = { ...labState({ name: "t", nodes: "3", podsPerNode: "1", mode: "direct", family: "ipv4" }), zones: 2 };
    const near = {
      service: "default/near", protocol: "TCP" as const, port: 80, clusterIPs: ["10.96.0.30"], externalTrafficPolicy: "Cluster" as const, externalIPs: [], sessionAffinity: false,
      trafficDistribution: "PreferSameZone", endpoints: [{ pod: "node1-pod0", node: "node1" }, { pod: "node2-pod0", node: "node2" }, { pod: "node3-pod0", node: "node3" }],
    };
    const each = (port: typeof near) => planProbes(state, [port]).filter((plan) => plan.expectEachServerOf !== undefined).map((plan) => [plan.from, plan.expectEachServerOf, plan.expectedServers]);
    // node1 and node3 are zone-1, node2 zone-2.
    assert.deepEqual(each(near), [["node1-pod0", 20, ["node1-pod0", "node3-pod0"]], ["node2-pod0", 20, ["node2-pod0"]], ["node3-pod0", 20, ["node1-pod0", "node3-pod0"]]]);
    const zoneOneOnly = { ...near, endpoints: near.endpoints.filter((endpoint) => endpoint.node !== "node2") };
    assert.deepEqual(each(zoneOneOnly)[1], ["node2-pod0", 20, ["node1-pod0", "node3-pod0"]], "zone-2 has no endpoint: every endpoint");
    assert.deepEqual(each({ ...near, trafficDistribution: "PreferSameNode" }).map(([, , servers]) => servers), [["node1-pod0"], ["node2-pod0"], ["node3-pod0"]]);
    assert.deepEqual(each({ ...near, trafficDistribution: undefined as unknown as string }), [], "no trafficDistribution: nothing to prefer");
    assert.deepEqual(planProbes({ ...state, zones: undefined }, [near]).filter((plan) => plan.expectEachServerOf !== undefined), [], "a lab without zones");
  });
});
