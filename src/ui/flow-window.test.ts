import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { FlowRecord } from "../flows/record.js";
import { connectionKey, edgeId, FLOW_WINDOW_MS, FlowWindow } from "./flow-window.js";
import { MAX_ADDRESS_ENTITIES, OTHER_ADDRESSES, type UiTopology } from "./topology.js";

const TOPOLOGY: UiTopology = {
  title: "lab test",
  nodes: [
    { name: "node1", addresses: ["198.18.0.11"], podCidrs: ["10.244.1.0/24"], mode: "auto" },
    { name: "node2", addresses: ["198.18.0.12"], podCidrs: ["10.244.2.0/24"], mode: "auto" },
  ],
  pods: [
    { namespace: "default", name: "node1-pod0", node: "node1", addresses: ["10.244.1.2", "fd00:10:244:1::2"] },
    { namespace: "default", name: "node2-pod0", node: "node2", addresses: ["10.244.2.2"] },
  ],
  services: [{ namespace: "default", name: "web", type: "ClusterIP", clusterIPs: ["10.96.0.10"], externalIPs: [], ports: [{ port: 80, protocol: "TCP" }], endpoints: [{ address: "10.244.2.2", pod: "default/node2-pod0", ready: true }] }],
  hosts: [{ name: "external", addresses: ["198.18.0.200"] }],
};

const T0 = Date.parse("2026-12-08T00:00:00.000Z");

function flow(overrides: Partial<FlowRecord> & { at?: number } = {}): FlowRecord {
  const { at = T0, ...rest } = overrides;
  return {
    time: new Date(at).toISOString(),
    node: "node1",
    event: "new",
    verdict: "forwarded",
    protocol: "TCP",
    source: { address: "10.244.1.2", port: 40000 },
    destination: { address: "10.244.2.2", port: 7777 },
    ...rest,
  };
}

function windowAt(now: { value: number }, max?: number): FlowWindow {
  return new FlowWindow(TOPOLOGY, () => now.value, max);
}

describe("the flow window", () => {
  it("counts a connection seen by both nodes once, with the most bytes either counted", () => {
    // Catches: every connection drawn twice as thick (once per node that saw it), or bytes added
    // up across nodes that each count the whole connection.
    const now = { value: T0 };
    const window = windowAt(now);
    const counters = (bytes: number) => ({ packetsSent: 3, bytesSent: bytes, packetsReceived: 2, bytesReceived: 100 });
    window.add(flow({ node: "node1", event: "destroy", direction: "egress", counters: counters(1000) }));
    window.add(flow({ node: "node2", event: "destroy", direction: "ingress", counters: counters(900) }));
    assert.equal(window.size, 1);
    const [edge] = window.summaries();
    assert.equal(edge.id, edgeId("pod:default/node1-pod0", "pod:default/node2-pod0", "forwarded"));
    assert.equal(edge.connections, 1);
    assert.equal(edge.bytes, 1100);
    assert.equal(edge.packets, 5);
  });

  it("puts a Service's connection on the edge to the endpoint it went to, as both nodes see it", () => {
    // Catches: the sender's node (which saw the ClusterIP) and the receiver's (which saw the pod
    // address) counted as two connections, or the flow drawn to the Service instead of the pod.
    const now = { value: T0 };
    const window = windowAt(now);
    window.add(flow({ destination: { address: "10.96.0.10", port: 80 }, translated: { address: "10.244.2.2", port: 7777 }, service: "default/web" }));
    window.add(flow({ node: "node2", destination: { address: "10.244.2.2", port: 7777 } }));
    assert.equal(window.size, 1);
    const [edge] = window.summaries();
    assert.equal(edge.target, "pod:default/node2-pod0");
    assert.deepEqual(edge.services, ["default/web"]);
  });

  it("a Service without endpoints: the refused connection is an edge to the Service", () => {
    // Catches: a rejection drawn to an address box instead of the Service it was for.
    const window = windowAt({ value: T0 });
    window.add(flow({ event: "rejected", verdict: "dropped", reason: "no-endpoints", destination: { address: "10.96.0.10", port: 80 }, service: "default/web" }));
    assert.equal(window.summaries()[0].target, "svc:default/web");
  });

  it("takes the sternest verdict: denied by the receiver's node is denied, with the policy", () => {
    // Catches: a connection let out by its sender's node but denied at the receiver shown as
    // forwarded (or as two edges of different colours for one connection).
    const now = { value: T0 };
    const window = windowAt(now);
    window.add(flow({ node: "node1", direction: "egress" }));
    assert.equal(window.summaries()[0].verdict, "forwarded");
    window.takeChanges();
    window.add(flow({ node: "node2", event: "denied", verdict: "denied", policy: "NetworkPolicy default/deny", reason: "ingress" }));
    const summaries = window.summaries();
    assert.equal(summaries.length, 1);
    assert.equal(summaries[0].verdict, "denied");
    assert.deepEqual(summaries[0].policies, ["NetworkPolicy default/deny"]);
    const { changed, removed } = window.takeChanges();
    assert.deepEqual(removed, [edgeId("pod:default/node1-pod0", "pod:default/node2-pod0", "forwarded")], "the forwarded edge goes");
    assert.deepEqual(changed.map((edge) => edge.verdict), ["denied"]);
  });

  it("forgets connections a minute after they were last seen, and refuses older records", () => {
    // Catches: the map showing connections of long ago, or growing with every flow it saw.
    const now = { value: T0 };
    const window = windowAt(now);
    window.add(flow());
    now.value = T0 + FLOW_WINDOW_MS - 1;
    window.add(flow({ source: { address: "10.244.1.2", port: 40001 }, at: now.value }));
    window.expire();
    assert.equal(window.size, 2);
    now.value = T0 + FLOW_WINDOW_MS + 1;
    window.expire();
    assert.equal(window.size, 1);
    window.add(flow({ source: { address: "10.244.1.2", port: 40002 }, at: T0 }));
    assert.equal(window.size, 1, "a record older than the window is not taken");
  });

  it("holds at most its bound of connections, the oldest making room", () => {
    // Catches: a burst of connections (a scan) growing the server's memory without end.
    const now = { value: T0 };
    const window = windowAt(now, 100);
    for (let port = 1; port <= 1000; port++) window.add(flow({ source: { address: "10.244.1.2", port } }));
    assert.equal(window.size, 100);
    assert.equal(window.evicted, 900);
    const views = window.connectionsOf({ entity: "pod:default/node1-pod0" }, 1000);
    assert.equal(views.length, 100);
    assert.equal(views.at(-1)!.records[0].source.port, 901, "the newest are kept");
  });

  it("keeps one record per node of a connection, the newest", () => {
    // Catches: a long connection's updates piling up records without bound.
    const window = windowAt({ value: T0 + 10_000 });
    for (let i = 0; i < 50; i++) window.add(flow({ event: "update", at: T0 + i }));
    window.add(flow({ node: "node2", at: T0 + 60 }));
    const [view] = window.connectionsOf({ edge: window.summaries()[0].id }, 10);
    assert.deepEqual(view.records.map((record) => [record.node, record.time]), [
      ["node1", new Date(T0 + 49).toISOString()],
      ["node2", new Date(T0 + 60).toISOString()],
    ]);
  });

  it("gives addresses nobody names a box each, up to a bound, then one for the rest", () => {
    // Catches: a scan from outside adding thousands of boxes to the page.
    const window = windowAt({ value: T0 });
    for (let i = 0; i < MAX_ADDRESS_ENTITIES + 10; i++) window.add(flow({ source: { address: `192.0.2.${i}`, port: 5000 } }));
    const sources = new Set(window.summaries().map((edge) => edge.source));
    assert.equal(sources.size, MAX_ADDRESS_ENTITIES + 1);
    assert.ok(sources.has(OTHER_ADDRESSES));
    assert.ok(sources.has("addr:192.0.2.0"));
  });

  it("names ends by the topology's addresses in any spelling, and moves flows to a pod that appears", () => {
    // Catches: an IPv6 address written otherwise by the topology than by the records (leading
    // zeros, upper case) left unplaced; flows to a new pod's address drawn to a bare address.
    const window = windowAt({ value: T0 });
    window.add(flow({ source: { address: "fd00:10:244:1::2", port: 1 }, destination: { address: "FD00:0010:0244:0003:0000:0000:0000:0002", port: 7777 } }));
    assert.equal(window.summaries()[0].source, "pod:default/node1-pod0");
    assert.equal(window.summaries()[0].target, "addr:fd00:10:244:3::2");
    window.setTopology({ ...TOPOLOGY, pods: [...TOPOLOGY.pods, { namespace: "shop", name: "db", node: "node2", addresses: ["fd00:10:244:3::2"] }] });
    assert.equal(window.summaries()[0].target, "pod:shop/db");
  });

  it("puts an address of a node's pod CIDR that no pod holds on the node (its bridge)", () => {
    // Catches: a node's own gateway address drawn as an unknown outside address.
    const window = windowAt({ value: T0 });
    window.add(flow({ source: { address: "10.244.2.1", port: 5353 } }));
    assert.equal(window.summaries()[0].source, "node:node2");
  });

  it("keys a connection by where both nodes see it go", () => {
    assert.equal(connectionKey(flow({ destination: { address: "10.96.0.10", port: 80 }, translated: { address: "10.244.2.2", port: 7777 } })), connectionKey(flow()));
    assert.notEqual(connectionKey(flow({ protocol: "UDP" })), connectionKey(flow()));
  });
});
