/**
 * The page's own logic, without a browser: where the boxes go, which elements the map has, how
 * the policies are summed up, and the escaping of what the server writes into the HTML. The
 * browser test (test/ui-browser.test.ts) drives the whole page against a lab.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { ConnectionView, EdgeSummary } from "./flow-window.js";
import { escapeHtml, renderPage } from "./page-html.js";
import { boxElements, edgesToDraw, endpointEdges, OUTSIDE_GROUP, SERVICES_GROUP } from "./page/graph.js";
import { CELL_HEIGHT, CELL_WIDTH, layoutBoxes, naturalOrder, type Rect } from "./page/layout.js";
import { formatBytes, policySummary } from "./page/panel.js";
import { edgeWidth } from "./page/style.js";
import type { UiTopology } from "./topology.js";

function cluster(nodes: number, podsPerNode: number): UiTopology {
  const nodeNames = Array.from({ length: nodes }, (_, i) => `node${i + 1}`);
  return {
    title: "lab big",
    nodes: nodeNames.map((name, i) => ({ name, addresses: [`198.18.0.${11 + i}`], podCidrs: [`10.244.${i + 1}.0/24`], mode: "auto" })),
    pods: nodeNames.flatMap((node, i) => Array.from({ length: podsPerNode }, (_, k) => ({ namespace: "default", name: `${node}-pod${k}`, node, addresses: [`10.244.${i + 1}.${k + 2}`] }))),
    services: [{ namespace: "shop", name: "web", type: "ClusterIP", clusterIPs: ["10.96.0.10"], externalIPs: [], ports: [{ port: 80, protocol: "TCP" }], endpoints: [{ address: "10.244.1.2", pod: "default/node1-pod0", ready: true }, { address: "10.1.1.1", ready: true }] }],
    hosts: [{ name: "external", addresses: ["198.18.0.200"] }],
  };
}

function edge(source: string, target: string, verdict: EdgeSummary["verdict"] = "forwarded"): EdgeSummary {
  return { id: `${verdict} ${source} -> ${target}`, source, target, verdict, connections: 1, bytes: 0, packets: 0, policies: [], services: [], lastSeen: 0 };
}

describe("the page", () => {
  it("lays 20 nodes × 20 pods out in boxes that never overlap, each pod inside its node's box, in well under a frame", () => {
    // Catches: pods of one node drawn over another's, or a layout too slow for the largest lab.
    const topology = cluster(20, 20);
    const started = performance.now();
    const { layout } = boxElements(topology, []);
    const { positions, rects } = layoutBoxes(layout);
    const ms = performance.now() - started;
    assert.ok(ms < 50, `${ms} ms`);
    const edges = (rect: Rect) => ({ left: rect.x - rect.width / 2, right: rect.x + rect.width / 2, top: rect.y - rect.height / 2, bottom: rect.y + rect.height / 2 });
    for (const box of layout) {
      const own = edges(rects.get(box.id)!);
      for (const member of box.members) {
        const { x, y } = positions.get(member)!;
        assert.ok(x - CELL_WIDTH / 2 >= own.left && x + CELL_WIDTH / 2 <= own.right && y - CELL_HEIGHT / 2 >= own.top && y + CELL_HEIGHT / 2 <= own.bottom, `${member} inside ${box.id}`);
      }
      for (const other of layout) {
        if (other === box) continue;
        const them = edges(rects.get(other.id)!);
        assert.ok(own.right <= them.left || them.right <= own.left || own.bottom <= them.top || them.bottom <= own.top, `${box.id} and ${other.id} overlap`);
      }
    }
    const points = new Set([...positions.values()].map((point) => `${point.x},${point.y}`));
    assert.equal(points.size, positions.size, "no two members share a place");
    assert.equal(layout.find((box) => box.id === "node:node1")!.members.length, 20);
  });

  it("has a box per node with its pods, a box of Services and one outside for hosts and addresses flows name", () => {
    // Catches: a pod drawn outside its node, a Service or an address a flow named missing (its
    // edge would have nowhere to go), and names in the order a computer sorts (node10 before node2).
    const topology = cluster(10, 1);
    const { elements } = boxElements(topology, [edge("pod:default/node1-pod0", "addr:192.0.2.1"), edge("addr:other", "svc:shop/web")]);
    const byId = new Map(elements.map((element) => [element.id, element]));
    assert.equal(byId.get("pod:default/node2-pod0")!.box, "node:node2");
    assert.equal(byId.get("svc:shop/web")!.box, SERVICES_GROUP);
    assert.equal(byId.get("svc:shop/web")!.label, "shop/web\n10.96.0.10");
    assert.equal(byId.get("host:external")!.box, OUTSIDE_GROUP);
    assert.equal(byId.get("addr:192.0.2.1")!.box, OUTSIDE_GROUP);
    assert.equal(byId.get("addr:other")!.label, "other addresses");
    assert.equal(byId.get("node:node1")!.label, "node1\n10.244.1.0/24 · auto");
    const nodes = elements.filter((element) => element.classes === "cluster-node").map((element) => element.id);
    assert.deepEqual(nodes.slice(0, 3), ["node:node1", "node:node2", "node:node3"]);
    assert.equal(nodes.at(-1), "node:node10");
    assert.ok(naturalOrder("node2", "node10") < 0);
    assert.deepEqual(endpointEdges(topology), [{ id: "endpoint svc:shop/web -> pod:default/node1-pod0", source: "svc:shop/web", target: "pod:default/node1-pod0" }]);
  });

  it("draws the selection's edges, then the denied and dropped, then the busiest, when there are too many", () => {
    // Catches: denied flows (what a person looks for) crowded out by busy forwarded ones, a
    // selected pod whose own flows are not drawn, and edges of about equal weight taking turns.
    const many = Array.from({ length: 50 }, (_, i) => ({ ...edge(`pod:default/a${i}`, "pod:default/b"), bytes: 1000 + i }));
    const denied = { ...edge("pod:default/x", "pod:default/y", "denied"), bytes: 1 };
    const quiet = { ...edge("pod:default/z", "pod:default/y"), bytes: 0 };
    assert.deepEqual(edgesToDraw([...many, denied, quiet], 3).map((each) => each.id), [denied.id, many[49].id, many[48].id]);
    assert.deepEqual(edgesToDraw([...many, denied, quiet], 2, new Set(), "pod:default/z").map((each) => each.id), [quiet.id, denied.id]);
    assert.deepEqual(edgesToDraw([...many, denied, quiet], 2, new Set([many[0].id])).map((each) => each.id), [denied.id, many[0].id], "one drawn already stays against one not much busier");
    assert.equal(edgesToDraw([denied, quiet], 3).length, 2);
  });

  it("sums up the policies that decided a selection's connections", () => {
    // Catches: the panel not naming the policy that denied, or counting let-through connections as decided by one.
    const view = (verdict: ConnectionView["verdict"], policy?: string, reason?: string): ConnectionView => ({
      key: String(Math.random()), edge: "", verdict, bytes: 0, packets: 0, firstSeen: 0, lastSeen: 0,
      records: [{ time: "", node: "node2", event: verdict === "denied" ? "denied" : "new", verdict, protocol: "TCP", source: { address: "10.0.0.1" }, destination: { address: "10.0.0.2" }, ...(policy ? { policy } : {}), ...(reason ? { reason } : {}) }],
    });
    const lines = policySummary([view("denied", "NetworkPolicy default/deny", "ingress"), view("denied", "NetworkPolicy default/deny", "ingress"), view("forwarded"), view("dropped", undefined, "no-endpoints")]);
    assert.deepEqual(lines, [
      { text: "NetworkPolicy default/deny: denied 2 connections (ingress)", verdict: "denied" },
      { text: "dropped by no policy (no-endpoints): 1 connection", verdict: "dropped" },
      { text: "let through: 1 connection (no policy refused them)", verdict: "forwarded" },
    ]);
  });

  it("draws more bytes thicker, within bounds", () => {
    assert.equal(edgeWidth(0), 1.5);
    assert.ok(edgeWidth(10_000) > edgeWidth(1_000));
    assert.equal(edgeWidth(1e15), 12);
    assert.equal(formatBytes(1536), "1.5 KiB");
  });

  it("escapes what the server writes into the page", () => {
    // Catches: a title with markup (a store path, a lab name) running as script in the page.
    assert.equal(escapeHtml(`<img src=x onerror="alert('1')">&`), "&lt;img src=x onerror=&quot;alert(&#39;1&#39;)&quot;&gt;&amp;");
    const page = renderPage(`"><script>alert(1)</script>`);
    assert.ok(!page.includes("<script>alert"), page);
    assert.equal([...page.matchAll(/<script/g)].length, 1, "the page's own script alone");
  });
});
