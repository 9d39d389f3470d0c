import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { NodeRecord } from "../cluster/node-cidrs.js";
import type { EndpointSlice, Pod, Service } from "../cluster/objects/types.js";
import { storeTopology, uiServices } from "./ui.js";

const service = (name: string, spec: Partial<Service["spec"]>): Service =>
  ({ apiVersion: "v1", kind: "Service", metadata: { name, namespace: "shop" }, spec: { type: "ClusterIP", clusterIPs: ["10.96.0.10"], ports: [{ port: 80, protocol: "TCP" }], ...spec } }) as unknown as Service;
const pod = (name: string, node: string, ip: string, labels: Record<string, string> = {}): Pod =>
  ({ apiVersion: "v1", kind: "Pod", metadata: { name, namespace: "shop", labels }, spec: { nodeName: node, containers: [{ name: "c" }] }, status: { phase: "Running", podIPs: [{ ip }], conditions: [{ type: "Ready", status: "True" }] } }) as unknown as Pod;

describe("the flow map's topology from the cluster", () => {
  it("gives each Service the endpoints its slices name, matched to pods by targetRef or address", () => {
    // Catches: a Service drawn without the pods that serve it, or an endpoint matched to the wrong pod.
    const slice: EndpointSlice = {
      apiVersion: "discovery.k8s.io/v1", kind: "EndpointSlice", addressType: "IPv4", ports: [],
      metadata: { name: "web-1", namespace: "shop", labels: { "kubernetes.io/service-name": "web" } },
      endpoints: [
        { addresses: ["10.244.1.2"], conditions: { ready: true }, targetRef: { kind: "Pod", name: "web-a", namespace: "shop" } },
        { addresses: ["10.244.2.2"], conditions: { ready: false } },
        { addresses: ["192.0.2.9"], conditions: {} },
      ],
    } as unknown as EndpointSlice;
    const [web] = uiServices([service("web", {})], [slice], [{ namespace: "shop", name: "web-b", node: "node2", addresses: ["10.244.2.2"] }]);
    assert.deepEqual(web.endpoints, [
      { address: "10.244.1.2", ready: true, pod: "shop/web-a" },
      { address: "10.244.2.2", ready: false, pod: "shop/web-b" },
      { address: "192.0.2.9", ready: true },
    ]);
    assert.equal(web.name, "web");
    assert.deepEqual(web.ports, [{ port: 80, protocol: "TCP" }]);
  });

  it("reads a store's nodes, scheduled pods and Services, selector Services' endpoints worked out from the pods", () => {
    // Catches: the store's map missing a Service's endpoints (the store keeps no slices for a
    // Service with a selector), or listing pods no node runs.
    const nodes: NodeRecord[] = [
      { name: "node1", podCidrs: ["10.244.1.0/24"], network: { addresses: ["198.18.0.11"], vteps: [{ family: 4, mac: "02:00:00:00:00:01" }], mtu: 1500, agent: { id: "a", host: "h", bootId: "b", pid: 1, startTime: "1" } } },
      { name: "node2", podCidrs: ["10.244.2.0/24"] },
    ];
    const topology = storeTopology("sqlite:/x.db", nodes, [pod("web-a", "node1", "10.244.1.2", { app: "web" }), { ...pod("pending", "", "10.244.1.9"), spec: { containers: [] } } as unknown as Pod], [service("web", { selector: { app: "web" } })], []);
    assert.deepEqual(topology.nodes.map((node) => [node.name, node.mode]), [["node1", "auto or vxlan (VTEPs on IPv4)"], ["node2", "no agent yet"]]);
    assert.deepEqual(topology.pods.map((each) => each.name), ["web-a"]);
    assert.deepEqual(topology.services[0].endpoints.map((endpoint) => endpoint.pod), ["shop/web-a"]);
  });
});
