import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { APPLIED_AT, ENDPOINTSLICES_PREFIX, PODS_PREFIX } from "../cluster/apply.js";
import { SERVICES_PREFIX } from "../cluster/services.js";
import { formatIp } from "../net/ip.js";
import { putStored } from "./proxy-source.js";
import { ServiceIndex } from "./service-index.js";

type Prefix = typeof SERVICES_PREFIX | typeof ENDPOINTSLICES_PREFIX | typeof PODS_PREFIX;

/** Puts a stored value into the index as the proxy's store source does. */
function put(index: ServiceIndex, prefix: Prefix, key: string, value: string | undefined): number | undefined {
  return putStored({ service: (k, o) => index.putService(k, o), slice: (k, o) => index.putSlice(k, o), pod: (k, o) => index.putPod(k, o) }, prefix, key, value);
}

function service(name: string, extra: { selector?: Record<string, string>; namespace?: string; clusterIP?: string; annotations?: Record<string, string> } = {}) {
  const namespace = extra.namespace ?? "default";
  const clusterIP = extra.clusterIP ?? "10.96.0.10";
  return [
    `${SERVICES_PREFIX}${namespace}/${name}`,
    JSON.stringify({
      apiVersion: "v1", kind: "Service",
      metadata: { name, namespace, ...(extra.annotations ? { annotations: extra.annotations } : {}) },
      spec: {
        type: "ClusterIP", clusterIP, clusterIPs: [clusterIP], ipFamilies: ["IPv4"], ipFamilyPolicy: "SingleStack",
        ports: [{ name: "http", protocol: "TCP", port: 80, targetPort: 8080 }],
        ...(extra.selector ? { selector: extra.selector } : {}),
      },
    }),
  ] as const;
}

function slice(name: string, owner: string, addresses: string[]) {
  return [
    `${ENDPOINTSLICES_PREFIX}default/${name}`,
    JSON.stringify({
      apiVersion: "discovery.k8s.io/v1", kind: "EndpointSlice",
      metadata: { name, namespace: "default", labels: { "kubernetes.io/service-name": owner } },
      addressType: "IPv4",
      endpoints: addresses.map((address) => ({ addresses: [address], conditions: { ready: true, serving: true, terminating: false } })),
      ports: [{ name: "http", protocol: "TCP", port: 9090 }],
    }),
  ] as const;
}

function pod(name: string, ip: string, labels: Record<string, string>, namespace = "default") {
  return [
    `${PODS_PREFIX}${namespace}/${name}`,
    JSON.stringify({
      apiVersion: "v1", kind: "Pod",
      metadata: { name, namespace, labels },
      spec: { nodeName: "node-a", containers: [{ name: "c" }] },
      status: { phase: "Running", podIP: ip, podIPs: [{ ip }], conditions: [{ type: "Ready", status: "True" }] },
    }),
  ] as const;
}

/** `NAMESPACE/NAME` → its endpoints as `ADDRESS:PORT`, sorted. */
function endpointsOf(index: ServiceIndex): Record<string, string[]> {
  return Object.fromEntries(index.all().map((port) => [`${port.namespace}/${port.name}`, port.endpoints.map((endpoint) => `${formatIp(endpoint.address)}:${endpoint.port}`).sort()]));
}

describe("ServiceIndex", () => {
  it("follows a selectorless Service's slices as they are labelled for it, relabelled away and deleted", () => {
    // Catches: a slice relabelled to another Service leaving its endpoints behind in the first one.
    const index = new ServiceIndex();
    put(index, SERVICES_PREFIX, ...service("a"));
    put(index, SERVICES_PREFIX, ...service("b", { clusterIP: "10.96.0.11" }));
    put(index, ENDPOINTSLICES_PREFIX, ...slice("s1", "a", ["10.244.0.5", "10.244.0.6"]));
    assert.deepEqual(endpointsOf(index), { "default/a": ["10.244.0.5:9090", "10.244.0.6:9090"], "default/b": [] });
    put(index, ENDPOINTSLICES_PREFIX, ...slice("s1", "b", ["10.244.0.5"]));
    assert.deepEqual(endpointsOf(index), { "default/a": [], "default/b": ["10.244.0.5:9090"] });
    put(index, ENDPOINTSLICES_PREFIX, slice("s1", "b", [])[0], undefined);
    assert.deepEqual(endpointsOf(index), { "default/a": [], "default/b": [] });
  });

  it("follows Pods through a selector, by labels before and after a change, in the Service's namespace only", () => {
    // Catches: a Pod whose labels no longer match staying an endpoint (only the new labels checked),
    // and a Pod of another namespace with matching labels being taken.
    const index = new ServiceIndex();
    put(index, SERVICES_PREFIX, ...service("web", { selector: { app: "web" } }));
    put(index, PODS_PREFIX, ...pod("p1", "10.244.0.5", { app: "web" }));
    put(index, PODS_PREFIX, ...pod("p2", "10.244.0.6", { app: "web" }, "other"));
    assert.deepEqual(endpointsOf(index), { "default/web": ["10.244.0.5:8080"] });
    put(index, PODS_PREFIX, ...pod("p1", "10.244.0.5", { app: "db" }));
    assert.deepEqual(endpointsOf(index), { "default/web": [] });
    put(index, PODS_PREFIX, ...pod("p3", "10.244.0.7", { app: "web", tier: "x" }));
    assert.deepEqual(endpointsOf(index), { "default/web": ["10.244.0.7:8080"] });
    put(index, PODS_PREFIX, pod("p3", "", {})[0], undefined);
    assert.deepEqual(endpointsOf(index), { "default/web": [] });
    // A slice labelled for a Service with a selector does not count: the Pods decide.
    put(index, ENDPOINTSLICES_PREFIX, ...slice("s1", "web", ["10.244.0.9"]));
    assert.deepEqual(endpointsOf(index), { "default/web": [] });
  });

  it("with the Kubernetes API's slices, takes a selector Service's endpoints from its slices, not the Pods", () => {
    // Catches: the proxy on the Kubernetes API working endpoints out from Pods it never watches
    // (every selector Service without endpoints), or ignoring the EndpointSlice controller's slices.
    const index = new ServiceIndex("slices");
    put(index, SERVICES_PREFIX, ...service("web", { selector: { app: "web" } }));
    put(index, PODS_PREFIX, ...pod("p1", "10.244.0.5", { app: "web" }));
    put(index, ENDPOINTSLICES_PREFIX, ...slice("web-abc", "web", ["10.244.0.9"]));
    assert.deepEqual(endpointsOf(index), { "default/web": ["10.244.0.9:9090"] });
  });

  it("reports as changed only the ports of the Services a change affects, old and new", () => {
    // Catches: every change reported as a change of every port (a change costs the whole cluster),
    // or a changed port reported without its old self (its old rules never removed).
    const index = new ServiceIndex();
    put(index, SERVICES_PREFIX, ...service("a"));
    put(index, SERVICES_PREFIX, ...service("b", { clusterIP: "10.96.0.11", selector: { app: "b" } }));
    put(index, ENDPOINTSLICES_PREFIX, ...slice("s1", "a", ["10.244.0.5"]));
    const first = index.changes();
    assert.deepEqual(first.removed, []);
    assert.deepEqual(first.added.map((port) => port.name).sort(), ["a", "b"]);
    assert.equal(index.changed, false);
    put(index, PODS_PREFIX, ...pod("p1", "10.244.0.8", { app: "b" }));
    assert.equal(index.changed, true);
    const { removed, added } = index.changes();
    assert.deepEqual([removed, added].map((ports) => ports.map((port) => port.name)), [["b"], ["b"]]);
    assert.equal(removed[0], first.added.find((port) => port.name === "b"), "the old object, as handed out before");
    // A Pod no Service selects marks nothing.
    put(index, PODS_PREFIX, ...pod("p2", "10.244.0.9", { app: "none" }));
    assert.equal(index.changed, false);
    // A relist that no longer has Service b: b goes, a is worked out again; nothing else.
    index.clear();
    put(index, SERVICES_PREFIX, ...service("a"));
    put(index, ENDPOINTSLICES_PREFIX, ...slice("s1", "a", ["10.244.0.5"]));
    const relisted = index.changes();
    assert.deepEqual(relisted.removed.map((port) => port.name).sort(), ["a", "b"]);
    assert.deepEqual(relisted.added.map((port) => port.name), ["a"]);
    assert.equal(index.size, 1);
  });

  it("drops deleted and headless Services, skips values that do not parse or the rules cannot hold, and reports apply times", () => {
    // Catches: a deleted Service's rules kept, a broken stored value throwing out of the watch
    // loop, a name nft refuses failing every sync of every Service.
    const refused: string[] = [];
    const index = new ServiceIndex("pods", (reason) => refused.push(reason));
    const time = "2026-11-27T10:00:00.123Z";
    assert.equal(put(index, SERVICES_PREFIX, ...service("a", { annotations: { [APPLIED_AT]: time } })), Date.parse(time));
    put(index, SERVICES_PREFIX, ...service("headless", { clusterIP: "None" }));
    put(index, SERVICES_PREFIX, `${SERVICES_PREFIX}default/broken`, "{not json");
    // Stored by hand, past apply's validation: a name nft would refuse.
    put(index, SERVICES_PREFIX, `${SERVICES_PREFIX}default/Bad_Name`, service("x")[1].replace('"name":"x"', '"name":"Bad_Name"'));
    put(index, SERVICES_PREFIX, ...service("sel", { clusterIP: "10.96.0.12", selector: { app: "x" } }));
    put(index, PODS_PREFIX, `${PODS_PREFIX}default/broken`, "[]");
    put(index, PODS_PREFIX, `${PODS_PREFIX}default/broken2`, JSON.stringify({ metadata: { name: "broken2", labels: { app: "x" } } }));
    put(index, ENDPOINTSLICES_PREFIX, `${ENDPOINTSLICES_PREFIX}default/broken`, JSON.stringify({ metadata: { name: "broken", labels: { "kubernetes.io/service-name": "a" } } }));
    assert.deepEqual(endpointsOf(index), { "default/a": [], "default/sel": [] });
    assert.match(refused.join("\n"), /Bad_Name/);
    put(index, SERVICES_PREFIX, service("a")[0], undefined);
    assert.deepEqual(endpointsOf(index), { "default/sel": [] });
    index.clear();
    assert.deepEqual(index.all(), []);
  });
});
