import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { endpointSlicesForService, MAX_ENDPOINTS_PER_SLICE } from "./endpoints-controller.js";
import type { EndpointSlice, Pod, Service } from "./types.js";
import { normalizePod, normalizeService, validateEndpointSlice } from "./validate.js";

interface PodOptions {
  readonly namespace?: string;
  readonly labels?: Record<string, string>;
  readonly ips?: readonly string[];
  readonly ready?: boolean;
  readonly phase?: string;
  readonly deleting?: boolean;
  readonly ports?: readonly object[];
  readonly node?: string;
  readonly spec?: object;
}

function pod(name: string, options: PodOptions = {}): Pod {
  const ips = options.ips ?? ["10.244.1.5"];
  return normalizePod({
    apiVersion: "v1",
    kind: "Pod",
    metadata: {
      name,
      namespace: options.namespace ?? "default",
      uid: `uid-${name}`,
      labels: options.labels ?? { app: "web" },
      ...(options.deleting ? { deletionTimestamp: "2025-01-01T00:00:00Z" } : {}),
    },
    spec: { nodeName: options.node ?? "node-1", containers: [{ name: "app", ports: options.ports ?? [{ name: "http", containerPort: 8080 }] }], ...options.spec },
    status: {
      phase: options.phase ?? "Running",
      podIPs: ips.map((ip) => ({ ip })),
      conditions: [{ type: "Ready", status: options.ready === false ? "False" : "True" }],
    },
  });
}

/** A Service as the allocator leaves it: ClusterIPs and ipFamilies filled in. */
function service(spec: object = {}, metadata: object = {}): Service {
  const normalized = normalizeService({ apiVersion: "v1", kind: "Service", metadata: { name: "web", ...metadata }, spec: { selector: { app: "web" }, ports: [{ port: 80, targetPort: 8080 }], ...spec } });
  const families = normalized.spec.ipFamilies ?? ["IPv4"];
  const clusterIPs = normalized.spec.clusterIPs ?? families.map((family) => (family === "IPv4" ? "10.96.0.10" : "fd00:10:96::a"));
  return { ...normalized, spec: { ...normalized.spec, ipFamilies: families, clusterIPs, clusterIP: clusterIPs[0] } };
}

function addressesOf(slice: EndpointSlice): string[] {
  return slice.endpoints.flatMap((endpoint) => endpoint.addresses);
}

describe("endpoint slices: which pods", () => {
  // Catches the selector ignored, another namespace's pods taken, or pods sorted unstably.
  it("takes the pods of the Service's namespace whose labels match its selector", () => {
    const slices = endpointSlicesForService(service(), [
      pod("web-2", { ips: ["10.244.2.7"] }),
      pod("web-1", { ips: ["10.244.1.5"], labels: { app: "web", tier: "front" } }),
      pod("db-1", { ips: ["10.244.1.9"], labels: { app: "db" } }),
      pod("web-other", { ips: ["10.244.3.4"], namespace: "other" }),
    ]);
    assert.equal(slices.length, 1);
    assert.deepEqual(addressesOf(slices[0]), ["10.244.1.5", "10.244.2.7"]);
    assert.deepEqual(slices[0].endpoints.map((endpoint) => endpoint.targetRef), [
      { kind: "Pod", namespace: "default", name: "web-1", uid: "uid-web-1" },
      { kind: "Pod", namespace: "default", name: "web-2", uid: "uid-web-2" },
    ]);
  });

  // Catches a pod without an IP (not yet started) or a finished one published as an endpoint.
  it("leaves out pods without an IP and pods that have finished", () => {
    const slices = endpointSlicesForService(service(), [
      pod("web-1"),
      pod("web-pending", { ips: [] }),
      pod("web-done", { ips: ["10.244.1.6"], phase: "Succeeded" }),
      pod("web-failed", { ips: ["10.244.1.7"], phase: "Failed" }),
    ]);
    assert.deepEqual(addressesOf(slices[0]), ["10.244.1.5"]);
  });

  // Catches a selectorless Service given slices that would hide its hand-written ones.
  it("computes nothing for a Service without a selector", () => {
    assert.deepEqual(endpointSlicesForService(service({ selector: undefined }), [pod("web-1")]), []);
  });

  // Catches no slice at all when no pod matches, which Kubernetes marks with an empty placeholder per family.
  it("keeps one empty slice per family when no pod matches", () => {
    const slices = endpointSlicesForService(service({ ipFamilyPolicy: "RequireDualStack", ipFamilies: ["IPv4", "IPv6"] }), []);
    assert.deepEqual(slices.map((slice) => [slice.metadata.name, slice.addressType, slice.endpoints.length, slice.ports.length]), [
      ["web-ipv4", "IPv4", 0, 0],
      ["web-ipv6", "IPv6", 0, 0],
    ]);
  });
});

describe("endpoint slices: ports", () => {
  // Catches a numeric targetPort not used as is, or the port name/protocol/appProtocol lost.
  it("publishes a numeric targetPort with the Service port's name, protocol and appProtocol", () => {
    const slices = endpointSlicesForService(service({ ports: [{ name: "http", port: 80, targetPort: 8080, appProtocol: "http" }, { name: "dns", port: 53, protocol: "UDP" }] }), [pod("web-1")]);
    assert.deepEqual(slices[0].ports, [
      { name: "http", protocol: "TCP", port: 8080, appProtocol: "http" },
      { name: "dns", protocol: "UDP", port: 53 },
    ]);
  });

  // Catches a named targetPort resolved once for all pods, by name alone ignoring protocol, or not at all.
  it("resolves a named targetPort in each pod, by name and protocol", () => {
    const named = service({ ports: [{ name: "web", port: 80, targetPort: "http" }] });
    const slices = endpointSlicesForService(named, [
      pod("web-1", { ips: ["10.244.1.5"], ports: [{ name: "http", containerPort: 8080 }] }),
      pod("web-2", { ips: ["10.244.1.6"], ports: [{ name: "http", containerPort: 9090 }] }),
      pod("web-3", { ips: ["10.244.1.7"], ports: [{ name: "http", containerPort: 7070, protocol: "UDP" }, { name: "metrics", containerPort: 8080 }] }),
    ]);
    assert.deepEqual(slices.map((slice) => [slice.metadata.name, slice.ports, addressesOf(slice)]), [
      ["web-ipv4", [{ name: "web", protocol: "TCP", port: 8080 }], ["10.244.1.5"]],
      ["web-ipv4-2", [{ name: "web", protocol: "TCP", port: 9090 }], ["10.244.1.6"]],
      ["web-ipv4-3", [], ["10.244.1.7"]],
    ]);
  });

  // Catches a pod dropped from every port because it lacks one named port, instead of only from that port.
  it("groups pods by the ports they resolve, as Kubernetes does", () => {
    const two = service({ ports: [{ name: "web", port: 80, targetPort: "http" }, { name: "admin", port: 81, targetPort: "admin" }] });
    const slices = endpointSlicesForService(two, [
      pod("web-1", { ips: ["10.244.1.5"], ports: [{ name: "http", containerPort: 8080 }, { name: "admin", containerPort: 8081 }] }),
      pod("web-2", { ips: ["10.244.1.6"], ports: [{ name: "http", containerPort: 8080 }] }),
      pod("web-3", { ips: ["10.244.1.7"], ports: [{ name: "admin", containerPort: 8081 }, { name: "http", containerPort: 8080 }] }),
    ]);
    assert.deepEqual(slices.map((slice) => [slice.metadata.name, slice.ports.map((port) => `${port.name}:${port.port}`), addressesOf(slice)]), [
      ["web-ipv4", ["web:8080", "admin:8081"], ["10.244.1.5", "10.244.1.7"]],
      ["web-ipv4-2", ["web:8080"], ["10.244.1.6"]],
    ]);
  });
});

describe("endpoint slices: conditions", () => {
  // Catches readiness taken from the phase, terminating pods marked ready, or serving tied to terminating.
  it("derives ready, serving and terminating from the Ready condition and deletion", () => {
    const slices = endpointSlicesForService(service(), [
      pod("web-1", { ips: ["10.244.1.5"] }),
      pod("web-2", { ips: ["10.244.1.6"], ready: false }),
      pod("web-3", { ips: ["10.244.1.7"], deleting: true }),
      pod("web-4", { ips: ["10.244.1.8"], deleting: true, ready: false }),
    ]);
    assert.deepEqual(slices[0].endpoints.map((endpoint) => endpoint.conditions), [
      { ready: true, serving: true, terminating: false },
      { ready: false, serving: false, terminating: false },
      { ready: false, serving: true, terminating: true },
      { ready: false, serving: false, terminating: true },
    ]);
  });

  // Catches publishNotReadyAddresses ignored (StatefulSet peers never finding each other).
  it("makes every endpoint ready when the Service publishes not-ready addresses", () => {
    const slices = endpointSlicesForService(service({ publishNotReadyAddresses: true }), [pod("web-1", { ready: false }), pod("web-2", { ips: ["10.244.1.6"], deleting: true })]);
    assert.deepEqual(slices[0].endpoints.map((endpoint) => endpoint.conditions.ready), [true, true]);
    assert.deepEqual(slices[0].endpoints.map((endpoint) => endpoint.conditions.serving), [false, true]);
  });

  // Catches nodeName lost (local traffic policy needs it) or a hostname published for a pod of another subdomain.
  it("carries the node name, and the hostname of pods in the Service's subdomain", () => {
    const slices = endpointSlicesForService(service({ clusterIP: "None" }), [
      pod("web-0", { ips: ["10.244.1.5"], node: "node-2", spec: { hostname: "web-0", subdomain: "web" } }),
      pod("web-x", { ips: ["10.244.1.6"], spec: { hostname: "web-x", subdomain: "other" } }),
    ]);
    assert.deepEqual(slices[0].endpoints.map((endpoint) => [endpoint.nodeName, endpoint.hostname]), [["node-2", "web-0"], ["node-1", undefined]]);
  });
});

describe("endpoint slices: families, names and labels", () => {
  // Catches a dual-stack Service given one mixed slice, or a single-stack pod's address put in the other family's slice.
  it("splits a dual-stack Service into one slice per family, in ipFamilies order", () => {
    const dual = service({ ipFamilyPolicy: "RequireDualStack", ipFamilies: ["IPv6", "IPv4"] });
    const slices = endpointSlicesForService(dual, [pod("web-1", { ips: ["10.244.1.5", "fd00:10:244:1::5"] }), pod("web-2", { ips: ["10.244.2.5"] })]);
    assert.deepEqual(slices.map((slice) => [slice.metadata.name, slice.addressType, addressesOf(slice)]), [
      ["web-ipv6", "IPv6", ["fd00:10:244:1::5"]],
      ["web-ipv4", "IPv4", ["10.244.1.5", "10.244.2.5"]],
    ]);
  });

  // Catches slices without the labels kube-proxy and Trellis find them by, or the Service's labels overriding them.
  it("labels each slice with its Service, its manager, and the Service's own labels", () => {
    const labelled = service({}, { labels: { team: "a", "kubernetes.io/service-name": "spoof" } });
    assert.deepEqual(endpointSlicesForService(labelled, [pod("web-1")])[0].metadata, {
      name: "web-ipv4",
      namespace: "default",
      labels: { team: "a", "kubernetes.io/service-name": "web", "endpointslice.kubernetes.io/managed-by": "trellis" },
    });
    const headless = endpointSlicesForService(service({ clusterIP: "None" }), [pod("web-1")])[0];
    assert.equal(headless.metadata.labels?.["service.kubernetes.io/headless"], "");
  });

  // Catches a slice over the controller's size, or endpoints lost when splitting.
  it("splits more than 100 endpoints into several slices", () => {
    const pods = Array.from({ length: MAX_ENDPOINTS_PER_SLICE + 5 }, (_, i) => pod(`web-${String(i).padStart(3, "0")}`, { ips: [`10.244.${i >> 6}.${(i & 63) + 1}`] }));
    const slices = endpointSlicesForService(service(), pods);
    assert.deepEqual(slices.map((slice) => [slice.metadata.name, slice.endpoints.length]), [["web-ipv4", 100], ["web-ipv4-2", 5]]);
  });

  // Catches output that depends on the order pods were listed in, or slices the apiserver would refuse.
  it("is deterministic and gives valid slices", () => {
    const pods = [
      pod("web-1", { ips: ["10.244.1.10", "fd00:10:244:1::10"] }),
      pod("web-2", { ips: ["10.244.1.9", "fd00:10:244:1::9"], ready: false }),
      pod("web-3", { ips: ["10.244.2.1", "fd00:10:244:2::1"], deleting: true }),
    ];
    const dual = service({ ipFamilyPolicy: "PreferDualStack", ipFamilies: ["IPv4", "IPv6"] });
    const forward = endpointSlicesForService(dual, pods);
    assert.deepEqual(endpointSlicesForService(dual, [...pods].reverse()), forward);
    assert.deepEqual(addressesOf(forward[0]), ["10.244.1.9", "10.244.1.10", "10.244.2.1"]);
    for (const slice of forward) validateEndpointSlice(slice);
  });
});

describe("endpoint slices: trafficDistribution hints", () => {
  const zones = new Map([["node-1", "zone-a"], ["node-2", "zone-b"]]);
  const zoneOf = (node: string) => zones.get(node);
  const pods = [pod("a", { node: "node-1", ips: ["10.244.1.5"] }), pod("b", { node: "node-2", ips: ["10.244.2.5"] }), pod("c", { node: "node-3", ips: ["10.244.3.5"] }), pod("d", { node: "node-2", ips: ["10.244.2.6"], ready: false })];
  const endpoints = (spec: object) => endpointSlicesForService(service(spec), pods, zoneOf)[0].endpoints;

  // Bug caught: hints written without a trafficDistribution (every proxy would narrow traffic the
  // Service did not ask to narrow), or zones left out of the endpoints.
  it("gives every endpoint its node's zone, and no hints without a trafficDistribution", () => {
    const plain = endpoints({});
    // By address: a (node-1), b and d (node-2), c (node-3, no zone).
    assert.deepEqual(plain.map((endpoint) => endpoint.zone), ["zone-a", "zone-b", "zone-b", undefined]);
    assert.ok(plain.every((endpoint) => endpoint.hints === undefined));
  });

  // Bug caught: hints that are not the endpoint's own zone and node (traffic kept in the wrong
  // zone), node hints for PreferSameZone, hints on a not-ready endpoint, or a zone hint made up
  // for a node without a zone (k8s.io/endpointslice's trafficdist gives none).
  it("hints each ready endpoint for its own zone, and its own node under PreferSameNode", () => {
    for (const distribution of ["PreferClose", "PreferSameZone"]) {
      assert.deepEqual(endpoints({ trafficDistribution: distribution }).map((endpoint) => endpoint.hints), [
        { forZones: [{ name: "zone-a" }] }, { forZones: [{ name: "zone-b" }] }, undefined, undefined,
      ], distribution);
      assert.equal(endpoints({ trafficDistribution: distribution })[2].conditions.ready, false, "d is not ready: no hint");
    }
    assert.deepEqual(endpoints({ trafficDistribution: "PreferSameNode" }).map((endpoint) => endpoint.hints), [
      { forZones: [{ name: "zone-a" }], forNodes: [{ name: "node-1" }] },
      { forZones: [{ name: "zone-b" }], forNodes: [{ name: "node-2" }] },
      undefined,
      { forNodes: [{ name: "node-3" }] },
    ]);
    for (const slice of endpointSlicesForService(service({ trafficDistribution: "PreferSameNode" }), pods, zoneOf)) validateEndpointSlice(slice);
  });
});
