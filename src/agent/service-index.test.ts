import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { APPLIED_AT, ENDPOINTSLICES_PREFIX, PODS_PREFIX } from "../cluster/apply.js";
import { SERVICES_PREFIX } from "../cluster/services.js";
import { formatIp, parsePrefix } from "../net/ip.js";
import { putStored } from "./proxy-source.js";
import { ServiceIndex } from "./service-index.js";

type Prefix = typeof SERVICES_PREFIX | typeof ENDPOINTSLICES_PREFIX | typeof PODS_PREFIX;

/** Puts a stored value into the index as the proxy's store source does. */
function put(index: ServiceIndex, prefix: Prefix, key: string, value: string | undefined): number | undefined {
  return putStored({ service: (k, o) => index.putService(k, o), slice: (k, o) => index.putSlice(k, o), pod: (k, o) => index.putPod(k, o) }, prefix, key, value);
}

function service(name: string, extra: { selector?: Record<string, string>; namespace?: string; clusterIP?: string; annotations?: Record<string, string>; labels?: Record<string, string> } = {}) {
  const namespace = extra.namespace ?? "default";
  const clusterIP = extra.clusterIP ?? "10.96.0.10";
  return [
    `${SERVICES_PREFIX}${namespace}/${name}`,
    JSON.stringify({
      apiVersion: "v1", kind: "Service",
      metadata: { name, namespace, ...(extra.annotations ? { annotations: extra.annotations } : {}), ...(extra.labels ? { labels: extra.labels } : {}) },
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
    const index = new ServiceIndex("pods", (_, rejections) => refused.push(...rejections.map((rejection) => rejection.message)));
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

  it("leaves alone a Service labelled for another proxy or as headless, and serves it once the label goes", () => {
    // Bug caught (upstream e2e "should implement service.kubernetes.io/headless" and
    // ".../service-proxy-name"): such a Service kept answering on its ClusterIP through Trellis.
    const index = new ServiceIndex("pods");
    put(index, SERVICES_PREFIX, ...service("other", { labels: { "service.kubernetes.io/service-proxy-name": "foo-bar" } }));
    put(index, SERVICES_PREFIX, ...service("quiet", { clusterIP: "10.96.0.11", labels: { "service.kubernetes.io/headless": "" } }));
    put(index, SERVICES_PREFIX, ...service("mine", { clusterIP: "10.96.0.12" }));
    assert.deepEqual(Object.keys(endpointsOf(index)), ["default/mine"]);
    put(index, SERVICES_PREFIX, ...service("quiet", { clusterIP: "10.96.0.11" }));
    assert.deepEqual(Object.keys(endpointsOf(index)).sort(), ["default/mine", "default/quiet"]);
    // The upstream spec labels the EndpointSlice, not the Service: its endpoints go.
    const slices = new ServiceIndex("slices");
    put(slices, SERVICES_PREFIX, ...service("web"));
    const [key, text] = slice("web-1", "web", ["10.244.1.5"]);
    put(slices, ENDPOINTSLICES_PREFIX, key, text);
    assert.deepEqual(endpointsOf(slices), { "default/web": ["10.244.1.5:9090"] });
    const labelled = JSON.parse(text) as { metadata: { labels: Record<string, string> } };
    labelled.metadata.labels["service.kubernetes.io/headless"] = "";
    put(slices, ENDPOINTSLICES_PREFIX, key, JSON.stringify(labelled));
    assert.deepEqual(endpointsOf(slices), { "default/web": [] });
  });
});

describe("ServiceIndex: external addresses", () => {
  const POLICY = {
    allowed: [parsePrefix("198.19.0.0/24")],
    podCidrs: [parsePrefix("10.244.0.0/16")],
    serviceCidrs: [],
    reserved: new Map([["198.18.0.11", "node node1's address"]]),
  };
  function external(name: string, clusterIP: string, externalIPs: string[], created = "2026-12-01T00:00:00Z", loadBalancer: string[] = []) {
    return [
      `${SERVICES_PREFIX}default/${name}`,
      JSON.stringify({
        apiVersion: "v1", kind: "Service",
        metadata: { name, namespace: "default", creationTimestamp: created },
        spec: { type: loadBalancer.length ? "LoadBalancer" : "ClusterIP", clusterIP, clusterIPs: [clusterIP], ports: [{ protocol: "TCP", port: 80, targetPort: 8080 }], externalIPs },
        ...(loadBalancer.length ? { status: { loadBalancer: { ingress: loadBalancer.map((ip) => ({ ip })) } } } : {}),
      }),
    ] as const;
  }
  const served = (index: ServiceIndex) =>
    Object.fromEntries(index.all().map((port) => [port.name, [...port.externalIPs, ...port.loadBalancerIPs].map(formatIp)]));

  // Bugs caught: a tenant's externalIPs set to another Service's ClusterIP, a node's address or a
  // pod's, or anywhere at all, taking that traffic from every node (and from every pod).
  it("serves an external address only inside the allowed CIDRs and when it is no ClusterIP, node, pod or special address", () => {
    const refusals = new Map<string, string[]>();
    const index = new ServiceIndex("pods", (key, rejections) => refusals.set(key, rejections.map((rejection) => `${rejection.reason}: ${rejection.message}`)));
    index.setExternalPolicy(POLICY);
    put(index, SERVICES_PREFIX, ...external("victim", "10.96.0.11", []));
    put(index, SERVICES_PREFIX, ...external("tenant", "10.96.0.10", ["10.96.0.11", "198.18.0.11", "10.244.1.5", "8.8.8.8", "127.0.0.1", "198.19.0.10"], undefined, ["10.96.0.11", "198.19.0.11"]));
    assert.deepEqual(served(index), { victim: [], tenant: ["198.19.0.10", "198.19.0.11"] });
    assert.deepEqual(refusals.get("default/tenant"), [
      "external-ip-reserved: Service default/tenant: externalIPs 10.96.0.11 is the ClusterIP of Service default/victim; it is not served",
      "external-ip-reserved: Service default/tenant: externalIPs 198.18.0.11 is node node1's address; it is not served",
      "external-ip-reserved: Service default/tenant: externalIPs 10.244.1.5 lies in the pod CIDR 10.244.0.0/16; it is not served",
      "external-ip-not-allowed: Service default/tenant: externalIPs 8.8.8.8 is outside --external-ip-cidrs 198.19.0.0/24; it is not served",
      "external-ip-reserved: Service default/tenant: externalIPs 127.0.0.1 is a loopback address; it is not served",
      "external-ip-reserved: Service default/tenant: status.loadBalancer.ingress 10.96.0.11 is the ClusterIP of Service default/victim; it is not served",
    ]);
    assert.deepEqual(refusals.get("default/victim"), []);
  });

  // Bug caught: a load balancer in ipMode Proxy (it forwards to the nodes' addresses) short-
  // circuited inside the cluster, so pods never pass through it (its PROXY protocol, its TLS).
  it("serves a load-balancer address itself only in ipMode VIP (the default), not Proxy", () => {
    const index = new ServiceIndex();
    index.setExternalPolicy(POLICY);
    const [key, value] = external("lb", "10.96.0.12", [], undefined, ["198.19.0.30", "198.19.0.31"]);
    const stored = JSON.parse(value) as { status: { loadBalancer: { ingress: Array<{ ip: string; ipMode?: string }> } } };
    stored.status.loadBalancer.ingress[1].ipMode = "Proxy";
    put(index, SERVICES_PREFIX, key, JSON.stringify(stored));
    assert.deepEqual(served(index), { lb: ["198.19.0.30"] });
  });

  // Bug caught: the check made once, when the tenant's Service is written: a ClusterIP or node
  // address that comes later (or a policy that changes) never takes the address back.
  it("works a Service out again when a ClusterIP it names comes or goes, and when the policy changes", () => {
    const index = new ServiceIndex();
    index.setExternalPolicy(POLICY);
    put(index, SERVICES_PREFIX, ...external("tenant", "10.96.0.10", ["198.19.0.20", "198.19.0.21"]));
    assert.deepEqual(served(index), { tenant: ["198.19.0.20", "198.19.0.21"] });
    put(index, SERVICES_PREFIX, ...external("odd", "198.19.0.20", []));
    const change = index.changes();
    assert.deepEqual(change.added.map((port) => `${port.name} ${port.externalIPs.map(formatIp).join(",")}`).sort(), ["odd ", "tenant 198.19.0.21"]);
    put(index, SERVICES_PREFIX, `${SERVICES_PREFIX}default/odd`, undefined);
    assert.deepEqual(served(index), { tenant: ["198.19.0.20", "198.19.0.21"] });
    index.setExternalPolicy({ ...POLICY, reserved: new Map([...POLICY.reserved, ["198.19.0.21", "node node9's address"]]) });
    assert.equal(index.changed, true);
    assert.deepEqual(served(index), { tenant: ["198.19.0.20"] });
    index.setExternalPolicy({ ...POLICY, reserved: new Map([...POLICY.reserved, ["198.19.0.21", "node node9's address"]]) });
    assert.equal(index.changed, false, "the same policy again marks nothing");
  });

  // Bug caught: two Services claiming one external address and port, the first in name order
  // winning, so a new Service in namespace "aaa" takes an address another Service serves.
  it("gives an external address and port claimed twice to the older Service, and to the other once the older goes", () => {
    const refusals = new Map<string, string[]>();
    const index = new ServiceIndex("pods", (key, rejections) => refusals.set(key, rejections.map((rejection) => rejection.message)));
    index.setExternalPolicy(POLICY);
    put(index, SERVICES_PREFIX, ...external("zz-old", "10.96.0.20", ["198.19.0.30"], "2026-12-01T00:00:00Z"));
    put(index, SERVICES_PREFIX, ...external("aa-new", "10.96.0.21", ["198.19.0.30"], "2026-12-02T00:00:00Z"));
    assert.deepEqual(served(index), { "zz-old": ["198.19.0.30"], "aa-new": [] });
    assert.deepEqual(refusals.get("default/aa-new"), ["Service default/aa-new: 198.19.0.30 port 80/TCP is taken by Service default/zz-old, which claimed it earlier; it is not served"]);
    put(index, SERVICES_PREFIX, `${SERVICES_PREFIX}default/zz-old`, undefined);
    const change = index.changes();
    assert.deepEqual(change.added.map((port) => `${port.name} ${port.externalIPs.map(formatIp).join(",")}`), ["aa-new 198.19.0.30"]);
    assert.deepEqual(change.removed.map((port) => port.name).sort(), ["aa-new", "zz-old"], "each Service once, however often it was worked out");
    assert.deepEqual(refusals.get("default/aa-new"), []);
  });

  // Bug caught: externalIPs set to the API server's address taking every node's connections to
  // the API server (the agents' own, the kubelets').
  it("on the Kubernetes API, refuses the API server's addresses: the endpoints of default/kubernetes", () => {
    const index = new ServiceIndex("slices");
    index.setExternalPolicy(POLICY);
    put(index, SERVICES_PREFIX, ...external("tenant", "10.96.0.10", ["198.19.0.40", "198.19.0.41"]));
    assert.deepEqual(served(index), { tenant: ["198.19.0.40", "198.19.0.41"] });
    put(index, SERVICES_PREFIX, ...service("kubernetes", { clusterIP: "10.96.0.1" }));
    put(index, ENDPOINTSLICES_PREFIX, ...slice("kubernetes", "kubernetes", ["198.19.0.40"]));
    assert.deepEqual(served(index), { kubernetes: [], tenant: ["198.19.0.41"] });
  });

  it("serves no external address at all before a policy is given", () => {
    const index = new ServiceIndex();
    put(index, SERVICES_PREFIX, ...external("tenant", "10.96.0.10", ["198.19.0.20"]));
    assert.deepEqual(served(index), { tenant: [] });
  });

  // Bug caught: a Service's trafficDistribution ignored on the Trellis store (its endpoints worked
  // out from Pods got no hints), or hints not worked out again when a node's zone becomes known.
  it("on the Trellis store, hints Pod endpoints with their nodes' zones for a trafficDistribution, again when zones change", () => {
    const index = new ServiceIndex("pods");
    const [key, value] = service("web", { selector: { app: "web" } });
    const spec = JSON.parse(value) as { spec: Record<string, unknown> };
    spec.spec.trafficDistribution = "PreferSameZone";
    put(index, SERVICES_PREFIX, key, JSON.stringify(spec));
    put(index, PODS_PREFIX, ...pod("a", "10.244.1.5", { app: "web" }));
    const hints = () => index.all().flatMap((port) => port.endpoints.map((endpoint) => endpoint.zoneHints));
    assert.deepEqual(hints(), [undefined], "node-a has no zone yet");
    index.setZones(new Map([["node-a", "zone-a"]]));
    assert.ok(index.changed, "the Service is worked out again");
    assert.deepEqual(hints(), [["zone-a"]]);
  });
});
