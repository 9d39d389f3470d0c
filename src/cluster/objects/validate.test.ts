import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  formatFieldError, normalizeEndpointSlice, normalizePod, normalizeService, ObjectInvalidError, validateEndpointSlice, validatePod, validateService,
  type FieldError,
} from "./validate.js";
import type { Service } from "./types.js";

type Kind = "Service" | "EndpointSlice" | "Pod";

function service(spec: object = {}, metadata: object = {}, rest: object = {}): object {
  return { apiVersion: "v1", kind: "Service", metadata: { name: "web", ...metadata }, spec: { selector: { app: "web" }, ports: [{ port: 80 }], ...spec }, ...rest };
}

function slice(fields: object = {}, metadata: object = {}): object {
  return {
    apiVersion: "discovery.k8s.io/v1",
    kind: "EndpointSlice",
    metadata: { name: "web-abc12", labels: { "kubernetes.io/service-name": "web" }, ...metadata },
    addressType: "IPv4",
    endpoints: [{ addresses: ["10.244.1.5"] }],
    ports: [{ port: 8080 }],
    ...fields,
  };
}

function pod(spec: object = {}, status: object = {}, metadata: object = {}): object {
  return {
    apiVersion: "v1",
    kind: "Pod",
    metadata: { name: "web-1", labels: { app: "web" }, ...metadata },
    spec: { nodeName: "node-1", containers: [{ name: "app", ports: [{ name: "http", containerPort: 8080 }] }], ...spec },
    status: { phase: "Running", podIP: "10.244.1.5", ...status },
  };
}

const normalize: Record<Kind, (input: unknown) => unknown> = { Service: normalizeService, EndpointSlice: normalizeEndpointSlice, Pod: normalizePod };

function refusal(kind: Kind, manifest: unknown): ObjectInvalidError {
  try {
    normalize[kind](manifest);
  } catch (error) {
    if (error instanceof ObjectInvalidError) return error;
    throw error;
  }
  assert.fail(`${kind} was accepted: ${JSON.stringify(manifest)}`);
}

function pairs(errors: readonly FieldError[]): string[] {
  return errors.map((error) => `${error.path} ${error.type}`);
}

interface Case {
  readonly bug: string;
  readonly kind: Kind;
  readonly manifest: object;
  /** Every error, as "path type", in order. */
  readonly errors: readonly string[];
  readonly message?: string;
}

const dualStack = { ipFamilyPolicy: "RequireDualStack" };

// Each case names the bug it catches: a check missing, at the wrong path, or of the wrong type.
const cases: readonly Case[] = [
  // Service ports.
  {
    bug: "a port above 65535 accepted (and the apiserver's exact wording)",
    kind: "Service", manifest: service({ ports: [{ port: 70000, targetPort: 8080 }] }),
    errors: ["spec.ports[0].port Invalid value"],
    message: 'The Service "web" is invalid: spec.ports[0].port: Invalid value: 70000: must be between 1 and 65535, inclusive',
  },
  { bug: "a Service with no ports accepted", kind: "Service", manifest: service({ ports: [] }), errors: ["spec.ports Required value"], message: 'The Service "web" is invalid: spec.ports: Required value' },
  {
    bug: "two ports with one name accepted",
    kind: "Service", manifest: service({ ports: [{ name: "http", port: 80 }, { name: "http", port: 8080 }] }),
    errors: ["spec.ports[1].name Duplicate value"],
    message: 'The Service "web" is invalid: spec.ports[1].name: Duplicate value: "http"',
  },
  { bug: "an unnamed port beside another accepted", kind: "Service", manifest: service({ ports: [{ name: "http", port: 80 }, { port: 443 }] }), errors: ["spec.ports[1].name Required value"] },
  { bug: "a port name that is no DNS label accepted", kind: "Service", manifest: service({ ports: [{ name: "HTTP", port: 80 }] }), errors: ["spec.ports[0].name Invalid value"] },
  { bug: "the same port and protocol twice accepted", kind: "Service", manifest: service({ ports: [{ name: "a", port: 80 }, { name: "b", port: 80, targetPort: 81 }] }), errors: ["spec.ports[1] Duplicate value"] },
  { bug: "a targetPort name that is no IANA_SVC_NAME accepted", kind: "Service", manifest: service({ ports: [{ port: 80, targetPort: "web_http" }] }), errors: ["spec.ports[0].targetPort Invalid value"] },
  { bug: "a numeric targetPort above 65535 accepted", kind: "Service", manifest: service({ ports: [{ port: 80, targetPort: 65536 }] }), errors: ["spec.ports[0].targetPort Invalid value"] },
  { bug: "a nodePort on a ClusterIP Service accepted", kind: "Service", manifest: service({ ports: [{ port: 80, nodePort: 30080 }] }), errors: ["spec.ports[0].nodePort Forbidden"] },
  { bug: "a nodePort that is no port number accepted", kind: "Service", manifest: service({ type: "NodePort", ports: [{ port: 80, nodePort: 70000 }] }), errors: ["spec.ports[0].nodePort Invalid value"] },
  { bug: "a protocol other than TCP, UDP, SCTP accepted", kind: "Service", manifest: service({ ports: [{ port: 80, protocol: "HTTP" }] }), errors: ["spec.ports[0].protocol Unsupported value"] },
  { bug: "an appProtocol that is no qualified name accepted", kind: "Service", manifest: service({ ports: [{ port: 80, appProtocol: "a/b/c" }] }), errors: ["spec.ports[0].appProtocol Invalid value"] },
  // Service type.
  {
    bug: "an unknown type accepted, or listed unlike the apiserver",
    kind: "Service", manifest: service({ type: "Foo" }),
    errors: ["spec.type Unsupported value"],
    message: 'The Service "web" is invalid: spec.type: Unsupported value: "Foo": supported values: "ClusterIP", "ExternalName", "LoadBalancer", "NodePort"',
  },
  {
    bug: "ExternalName accepted though nothing proxies it",
    kind: "Service", manifest: service({ type: "ExternalName", externalName: "db.example.com", ports: [] }),
    errors: ["spec.type Unsupported value"],
    message: 'The Service "web" is invalid: spec.type: Unsupported value: "ExternalName": not supported by Trellis: an ExternalName Service is a DNS alias (CNAME) that no network plugin proxies; supported values: "ClusterIP", "LoadBalancer", "NodePort"',
  },
  // ClusterIPs and families.
  { bug: "a clusterIP that is no address accepted", kind: "Service", manifest: service({ clusterIP: "10.96.0.300" }), errors: ["spec.clusterIPs[0] Invalid value"] },
  { bug: "a clusterIP with leading zeros read as another address", kind: "Service", manifest: service({ clusterIP: "10.96.0.010" }), errors: ["spec.clusterIPs[0] Invalid value"] },
  {
    bug: "two ClusterIPs of one family accepted",
    kind: "Service", manifest: service({ ...dualStack, clusterIP: "10.96.0.10", clusterIPs: ["10.96.0.10", "10.96.0.11"] }),
    errors: ["spec.clusterIPs Invalid value"],
    message: 'The Service "web" is invalid: spec.clusterIPs: Invalid value: []string{"10.96.0.10", "10.96.0.11"}: may specify no more than one IP for each IP family',
  },
  { bug: "two ClusterIPs under SingleStack accepted", kind: "Service", manifest: service({ clusterIPs: ["10.96.0.10", "fd00:10:96::a"] }), errors: ["spec.ipFamilyPolicy Invalid value"] },
  { bug: "two families under SingleStack accepted", kind: "Service", manifest: service({ ipFamilyPolicy: "SingleStack", ipFamilies: ["IPv4", "IPv6"] }), errors: ["spec.ipFamilyPolicy Invalid value"] },
  { bug: "a ClusterIP of the other family than ipFamilies[0] accepted", kind: "Service", manifest: service({ clusterIP: "10.96.0.10", ipFamilies: ["IPv6"] }), errors: ["spec.clusterIPs[0] Invalid value"] },
  { bug: "one family listed twice accepted", kind: "Service", manifest: service({ ...dualStack, ipFamilies: ["IPv4", "IPv4"] }), errors: ["spec.ipFamilies[1] Duplicate value"] },
  { bug: "an unknown family accepted", kind: "Service", manifest: service({ ipFamilies: ["IPv5"] }), errors: ["spec.ipFamilies[0] Unsupported value"] },
  { bug: "an unknown ipFamilyPolicy accepted", kind: "Service", manifest: service({ ipFamilyPolicy: "DualStack" }), errors: ["spec.ipFamilyPolicy Unsupported value"] },
  { bug: "None beside an address accepted", kind: "Service", manifest: service({ ...dualStack, clusterIP: "None", clusterIPs: ["None", "10.96.0.10"] }), errors: ["spec.clusterIPs Invalid value"] },
  { bug: "clusterIP and clusterIPs[0] allowed to disagree", kind: "Service", manifest: service({ clusterIP: "10.96.0.10", clusterIPs: ["10.96.0.11"] }), errors: ["spec.clusterIPs Invalid value"] },
  { bug: "a headless NodePort Service accepted", kind: "Service", manifest: service({ type: "NodePort", clusterIP: "None" }), errors: ["spec.clusterIPs[0] Invalid value"] },
  // External addresses and traffic policies.
  { bug: "an externalIP that is no address accepted", kind: "Service", manifest: service({ externalIPs: ["198.18.0"] }), errors: ["spec.externalIPs[0] Invalid value"] },
  { bug: "a loopback externalIP accepted", kind: "Service", manifest: service({ externalIPs: ["127.0.0.1"] }), errors: ["spec.externalIPs[0] Invalid value"] },
  { bug: "an unknown sessionAffinity accepted", kind: "Service", manifest: service({ sessionAffinity: "Sticky" }), errors: ["spec.sessionAffinity Unsupported value"] },
  {
    bug: "a ClientIP timeout above a day accepted",
    kind: "Service", manifest: service({ sessionAffinity: "ClientIP", sessionAffinityConfig: { clientIP: { timeoutSeconds: 86401 } } }),
    errors: ["spec.sessionAffinityConfig.clientIP.timeoutSeconds Invalid value"],
  },
  { bug: "a zero ClientIP timeout accepted", kind: "Service", manifest: service({ sessionAffinity: "ClientIP", sessionAffinityConfig: { clientIP: { timeoutSeconds: 0 } } }), errors: ["spec.sessionAffinityConfig.clientIP.timeoutSeconds Invalid value"] },
  { bug: "externalTrafficPolicy on an internal-only Service accepted", kind: "Service", manifest: service({ externalTrafficPolicy: "Local" }), errors: ["spec.externalTrafficPolicy Invalid value"] },
  { bug: "an unknown externalTrafficPolicy accepted", kind: "Service", manifest: service({ type: "NodePort", externalTrafficPolicy: "Global" }), errors: ["spec.externalTrafficPolicy Unsupported value"] },
  { bug: "an unknown internalTrafficPolicy accepted", kind: "Service", manifest: service({ internalTrafficPolicy: "Node" }), errors: ["spec.internalTrafficPolicy Unsupported value"] },
  { bug: "healthCheckNodePort on a NodePort Service accepted", kind: "Service", manifest: service({ type: "NodePort", externalTrafficPolicy: "Local", healthCheckNodePort: 30100 }), errors: ["spec.healthCheckNodePort Invalid value"] },
  { bug: "healthCheckNodePort with externalTrafficPolicy Cluster accepted", kind: "Service", manifest: service({ type: "LoadBalancer", healthCheckNodePort: 30100 }), errors: ["spec.healthCheckNodePort Invalid value"] },
  { bug: "allocateLoadBalancerNodePorts outside LoadBalancer accepted", kind: "Service", manifest: service({ type: "NodePort", allocateLoadBalancerNodePorts: false }), errors: ["spec.allocateLoadBalancerNodePorts Forbidden"] },
  { bug: "loadBalancerSourceRanges silently ignored (an open firewall)", kind: "Service", manifest: service({ type: "LoadBalancer", loadBalancerSourceRanges: ["203.0.113.0/24"] }), errors: ["spec.loadBalancerSourceRanges Forbidden"] },
  // Labels, selectors, names.
  { bug: "a selector key with two slashes accepted", kind: "Service", manifest: service({ selector: { "a/b/c": "web" } }), errors: ["spec.selector Invalid value"] },
  { bug: "a selector value over 63 characters accepted", kind: "Service", manifest: service({ selector: { app: "w".repeat(64) } }), errors: ["spec.selector Invalid value"] },
  { bug: "a label key prefix that is no DNS subdomain accepted", kind: "Service", manifest: service({}, { labels: { "Example.com/app": "web" } }), errors: ["metadata.labels Invalid value"] },
  { bug: "a Service name starting with a digit accepted (not a DNS-1035 label)", kind: "Service", manifest: service({}, { name: "1web" }), errors: ["metadata.name Invalid value"] },
  { bug: "a Service name of 64 characters accepted", kind: "Service", manifest: service({}, { name: "w".repeat(64) }), errors: ["metadata.name Invalid value"] },
  { bug: "a Service without a name accepted", kind: "Service", manifest: service({}, { name: undefined }), errors: ["metadata.name Required value"] },
  { bug: "a namespace that is no DNS label accepted", kind: "Service", manifest: service({}, { namespace: "Prod" }), errors: ["metadata.namespace Invalid value"] },
  // Status, decoding, kind.
  { bug: "a load-balancer ingress IP that is no address accepted", kind: "Service", manifest: service({ type: "LoadBalancer" }, {}, { status: { loadBalancer: { ingress: [{ ip: "lb" }] } } }), errors: ["status.loadBalancer.ingress[0].ip Invalid value"] },
  { bug: "an unknown trafficDistribution accepted (hints written for nothing)", kind: "Service", manifest: service({ trafficDistribution: "PreferFar" }), errors: ["spec.trafficDistribution Unsupported value"] },
  { bug: "an ipMode without an ip accepted", kind: "Service", manifest: service({ type: "LoadBalancer" }, {}, { status: { loadBalancer: { ingress: [{ hostname: "lb.example.com", ipMode: "Proxy" }] } } }), errors: ["status.loadBalancer.ingress[0].ipMode Forbidden"] },
  { bug: "an unknown ipMode accepted", kind: "Service", manifest: service({ type: "LoadBalancer" }, {}, { status: { loadBalancer: { ingress: [{ ip: "203.0.113.7", ipMode: "Tunnel" }] } } }), errors: ["status.loadBalancer.ingress[0].ipMode Unsupported value"] },
  { bug: "load-balancer ingress on a ClusterIP Service accepted", kind: "Service", manifest: service({}, {}, { status: { loadBalancer: { ingress: [{ ip: "203.0.113.7" }] } } }), errors: ["status.loadBalancer.ingress Forbidden"] },
  { bug: "a misspelled field silently ignored (a Service with no selector)", kind: "Service", manifest: service({ selector: undefined, seletor: { app: "web" } }), errors: ["spec.seletor Forbidden"] },
  { bug: "a port given as a string read as a number", kind: "Service", manifest: service({ ports: [{ port: "80" }] }), errors: ["spec.ports[0].port Invalid value"] },
  { bug: "a Pod manifest taken as a Service", kind: "Service", manifest: { ...service(), kind: "Pod" }, errors: ["kind Unsupported value"] },
  { bug: "another apiVersion taken as v1", kind: "Service", manifest: { ...service(), apiVersion: "v2" }, errors: ["apiVersion Unsupported value"] },

  // EndpointSlice.
  {
    bug: "FQDN slices accepted though nothing can forward to a name",
    kind: "EndpointSlice", manifest: slice({ addressType: "FQDN", endpoints: [{ addresses: ["db.example.com"] }] }),
    errors: ["addressType Unsupported value"],
    message: 'The EndpointSlice "web-abc12" is invalid: addressType: Unsupported value: "FQDN": not supported by Trellis: a network plugin forwards to addresses, not names; supported values: "IPv4", "IPv6"',
  },
  { bug: "nine zone hints accepted", kind: "EndpointSlice", manifest: slice({ endpoints: [{ addresses: ["10.244.1.5"], hints: { forZones: Array.from({ length: 9 }, (_, i) => ({ name: `z${i}` })) } }] }), errors: ["endpoints[0].hints.forZones Too many"] },
  { bug: "a zone hint named twice accepted", kind: "EndpointSlice", manifest: slice({ endpoints: [{ addresses: ["10.244.1.5"], hints: { forZones: [{ name: "a" }, { name: "a" }] } }] }), errors: ["endpoints[0].hints.forZones[1].name Duplicate value"] },
  { bug: "a node hint that is no node name accepted", kind: "EndpointSlice", manifest: slice({ endpoints: [{ addresses: ["10.244.1.5"], hints: { forNodes: [{ name: "Node_1" }] } }] }), errors: ["endpoints[0].hints.forNodes[0].name Invalid value"] },
  { bug: "a zone that is no label value accepted", kind: "EndpointSlice", manifest: slice({ endpoints: [{ addresses: ["10.244.1.5"], zone: "zone a" }] }), errors: ["endpoints[0].zone Invalid value"] },
  { bug: "the deprecated IP addressType accepted", kind: "EndpointSlice", manifest: slice({ addressType: "IP" }), errors: ["addressType Unsupported value"] },
  { bug: "a slice without addressType accepted", kind: "EndpointSlice", manifest: slice({ addressType: undefined }), errors: ["addressType Required value"] },
  { bug: "an IPv6 address in an IPv4 slice accepted", kind: "EndpointSlice", manifest: slice({ endpoints: [{ addresses: ["fd00:10:244:1::5"] }] }), errors: ["endpoints[0].addresses[0] Invalid value"] },
  { bug: "a loopback endpoint accepted", kind: "EndpointSlice", manifest: slice({ endpoints: [{ addresses: ["127.0.0.1"] }] }), errors: ["endpoints[0].addresses[0] Invalid value"] },
  { bug: "an endpoint without addresses accepted", kind: "EndpointSlice", manifest: slice({ endpoints: [{ addresses: [] }] }), errors: ["endpoints[0].addresses Required value"] },
  {
    bug: "more than 1000 endpoints accepted",
    kind: "EndpointSlice", manifest: slice({ endpoints: Array.from({ length: 1001 }, (_, i) => ({ addresses: [`10.244.${i >> 8}.${(i & 255) + 1}`] })) }),
    errors: ["endpoints Too many"],
  },
  { bug: "more than 100 ports accepted", kind: "EndpointSlice", manifest: slice({ ports: Array.from({ length: 101 }, (_, i) => ({ name: `p${i}`, port: 1000 + i })) }), errors: ["ports Too many"] },
  { bug: "two unnamed ports in one slice accepted", kind: "EndpointSlice", manifest: slice({ ports: [{ port: 80 }, { port: 81 }] }), errors: ["ports[1].name Duplicate value"] },
  { bug: "an unknown port protocol accepted", kind: "EndpointSlice", manifest: slice({ ports: [{ port: 80, protocol: "ICMP" }] }), errors: ["ports[0].protocol Unsupported value"] },
  { bug: "a port name that is no DNS label accepted", kind: "EndpointSlice", manifest: slice({ ports: [{ name: "Web", port: 80 }] }), errors: ["ports[0].name Invalid value"] },
  { bug: "a slice name that is no DNS subdomain accepted", kind: "EndpointSlice", manifest: slice({}, { name: "web_abc" }), errors: ["metadata.name Invalid value"] },
  { bug: "an endpoint nodeName that is no DNS subdomain accepted", kind: "EndpointSlice", manifest: slice({ endpoints: [{ addresses: ["10.244.1.5"], nodeName: "Node 1" }] }), errors: ["endpoints[0].nodeName Invalid value"] },

  // Pod.
  { bug: "a pod IP that is no address accepted", kind: "Pod", manifest: pod({}, { podIP: "10.244.1" }), errors: ["status.podIPs[0] Invalid value"] },
  { bug: "two pod IPs of one family accepted", kind: "Pod", manifest: pod({}, { podIPs: [{ ip: "10.244.1.5" }, { ip: "10.244.1.6" }] }), errors: ["status.podIPs Invalid value"] },
  { bug: "podIP disagreeing with podIPs[0] accepted", kind: "Pod", manifest: pod({}, { podIPs: [{ ip: "10.244.1.6" }] }), errors: ["status.podIPs[0].ip Invalid value"] },
  { bug: "one pod IP listed twice accepted", kind: "Pod", manifest: pod({}, { podIPs: [{ ip: "10.244.1.5" }, { ip: "fd00:10:244:1::5" }, { ip: "10.244.1.5" }] }), errors: ["status.podIPs Invalid value", "status.podIPs[2] Duplicate value"] },
  { bug: "a hostPort above 65535 accepted", kind: "Pod", manifest: pod({ containers: [{ name: "app", ports: [{ containerPort: 80, hostPort: 70000 }] }] }), errors: ["spec.containers[0].ports[0].hostPort Invalid value"] },
  { bug: "a containerPort above 65535 accepted", kind: "Pod", manifest: pod({ containers: [{ name: "app", ports: [{ containerPort: 70000 }] }] }), errors: ["spec.containers[0].ports[0].containerPort Invalid value"] },
  { bug: "a container port without a number accepted", kind: "Pod", manifest: pod({ containers: [{ name: "app", ports: [{ name: "http" }] }] }), errors: ["spec.containers[0].ports[0].containerPort Required value"] },
  { bug: "a container port name that is no IANA_SVC_NAME accepted", kind: "Pod", manifest: pod({ containers: [{ name: "app", ports: [{ name: "8080", containerPort: 8080 }] }] }), errors: ["spec.containers[0].ports[0].name Invalid value"] },
  {
    bug: "two containers binding one host port accepted",
    kind: "Pod", manifest: pod({ containers: [{ name: "a", ports: [{ containerPort: 80, hostPort: 8080 }] }, { name: "b", ports: [{ containerPort: 81, hostPort: 8080 }] }] }),
    errors: ["spec.containers[1].ports[0].hostPort Duplicate value"],
  },
  { bug: "a host-network hostPort unlike its containerPort accepted", kind: "Pod", manifest: pod({ hostNetwork: true, containers: [{ name: "app", ports: [{ containerPort: 80, hostPort: 8080 }] }] }), errors: ["spec.containers[0].ports[0].hostPort Invalid value"] },
  { bug: "a pod without containers accepted", kind: "Pod", manifest: pod({ containers: [] }), errors: ["spec.containers Required value"] },
  { bug: "a pod name that is no DNS subdomain accepted", kind: "Pod", manifest: pod({}, {}, { name: "Web-1" }), errors: ["metadata.name Invalid value"] },
  { bug: "an unknown pod phase accepted", kind: "Pod", manifest: pod({}, { phase: "Done" }), errors: ["status.phase Unsupported value"] },
];

describe("objects: invalid manifests are refused at the field the apiserver names", () => {
  for (const { bug, kind, manifest, errors, message } of cases) {
    it(`${kind}: ${bug}`, () => {
      const error = refusal(kind, manifest);
      assert.equal(error.kind, kind);
      assert.deepEqual(pairs(error.errors), errors);
      if (message !== undefined) assert.equal(error.message, message);
    });
  }

  // Catches a refusal table that is too thin to mean anything.
  it("covers at least 25 refusals", () => {
    assert.ok(cases.length >= 25);
  });
});

describe("objects: Service defaults", () => {
  // Catches a default left out or one the apiserver does not apply (externalTrafficPolicy on ClusterIP).
  it("fills protocol, targetPort, type, affinity, policies and namespace, and nothing the allocator owns", () => {
    assert.deepEqual(normalizeService(service()), {
      apiVersion: "v1",
      kind: "Service",
      metadata: { name: "web", namespace: "default" },
      spec: {
        type: "ClusterIP",
        ipFamilyPolicy: "SingleStack",
        ports: [{ protocol: "TCP", port: 80, targetPort: 80 }],
        selector: { app: "web" },
        sessionAffinity: "None",
        internalTrafficPolicy: "Cluster",
        publishNotReadyAddresses: false,
      },
    });
  });

  // Catches an external policy missing where outside clients reach the Service.
  it("gives NodePort, LoadBalancer and externalIPs Services externalTrafficPolicy Cluster", () => {
    assert.equal(normalizeService(service({ type: "NodePort" })).spec.externalTrafficPolicy, "Cluster");
    assert.equal(normalizeService(service({ type: "LoadBalancer" })).spec.externalTrafficPolicy, "Cluster");
    assert.equal(normalizeService(service({ externalIPs: ["198.18.0.10"] })).spec.externalTrafficPolicy, "Cluster");
    assert.equal(normalizeService(service({ type: "NodePort", externalTrafficPolicy: "Local" })).spec.externalTrafficPolicy, "Local");
  });

  // Catches allocateLoadBalancerNodePorts defaulted on the wrong types or overriding false.
  it("defaults allocateLoadBalancerNodePorts to true for LoadBalancer only", () => {
    assert.equal(normalizeService(service({ type: "LoadBalancer" })).spec.allocateLoadBalancerNodePorts, true);
    assert.equal(normalizeService(service({ type: "LoadBalancer", allocateLoadBalancerNodePorts: false })).spec.allocateLoadBalancerNodePorts, false);
    assert.equal("allocateLoadBalancerNodePorts" in normalizeService(service({ type: "NodePort" })).spec, false);
  });

  // Catches the ClientIP timeout default missing, an explicit one overridden, or a stale config kept under None.
  it("gives ClientIP affinity a 10800 s timeout and drops the config under None", () => {
    assert.deepEqual(normalizeService(service({ sessionAffinity: "ClientIP" })).spec.sessionAffinityConfig, { clientIP: { timeoutSeconds: 10800 } });
    assert.deepEqual(
      normalizeService(service({ sessionAffinity: "ClientIP", sessionAffinityConfig: { clientIP: { timeoutSeconds: 86400 } } })).spec.sessionAffinityConfig,
      { clientIP: { timeoutSeconds: 86400 } },
    );
    assert.equal("sessionAffinityConfig" in normalizeService(service({ sessionAffinityConfig: { clientIP: { timeoutSeconds: 60 } } })).spec, false);
  });

  // Catches clusterIP and clusterIPs drifting apart when the manifest gives only one.
  it("fills clusterIPs from clusterIP and clusterIP from clusterIPs", () => {
    const single = normalizeService(service({ clusterIP: "10.96.0.10" })).spec;
    assert.deepEqual([single.clusterIP, single.clusterIPs], ["10.96.0.10", ["10.96.0.10"]]);
    const dual = normalizeService(service({ ...dualStack, clusterIPs: ["fd00:10:96::a", "10.96.0.10"] })).spec;
    assert.deepEqual([dual.clusterIP, dual.clusterIPs], ["fd00:10:96::a", ["fd00:10:96::a", "10.96.0.10"]]);
    const headless = normalizeService(service({ clusterIP: "None", ports: [] })).spec;
    assert.deepEqual([headless.clusterIP, headless.clusterIPs, headless.ports], ["None", ["None"], []]);
  });

  // Catches a named targetPort replaced by the port, or an explicit zero not defaulted.
  it("keeps a named targetPort and defaults an empty one to the port", () => {
    const ports = normalizeService(service({ ports: [{ name: "http", port: 80, targetPort: "http" }, { name: "dns", port: 53, protocol: "UDP", targetPort: 0 }] })).spec.ports;
    assert.deepEqual(ports, [
      { name: "http", protocol: "TCP", port: 80, targetPort: "http" },
      { name: "dns", protocol: "UDP", port: 53, targetPort: 53 },
    ]);
  });

  // Catches the same port number refused across protocols (DNS serves 53 on TCP and UDP).
  it("accepts one port number on TCP and UDP", () => {
    assert.equal(normalizeService(service({ ports: [{ name: "dns", port: 53, protocol: "UDP" }, { name: "dns-tcp", port: 53 }] })).spec.ports.length, 2);
  });

  // Catches generateName refused beside a name (it only matters without one), or refused silently without one.
  it("takes generateName beside a name and refuses it alone", () => {
    assert.equal(normalizeService(service({}, { generateName: "web-" })).metadata.name, "web");
    assert.deepEqual(pairs(refusal("Service", service({}, { name: undefined, generateName: "web-" })).errors), ["metadata.generateName Forbidden"]);
  });

  // Catches kubectl's dry-run output (null fields, empty status) refused.
  it("reads null as absent, as `kubectl create --dry-run -o yaml` writes it", () => {
    const normalized = normalizeService(service({ clusterIP: null, selector: null }, { creationTimestamp: null, labels: null }, { status: { loadBalancer: {} } }));
    assert.deepEqual(normalized.metadata, { name: "web", namespace: "default" });
    assert.equal("selector" in normalized.spec, false);
    assert.equal("status" in normalized, false);
  });

  // Catches an allocated Service refused by re-validation, or a broken one built in code let through.
  it("validates a Service again after allocation, and catches one broken in code", () => {
    const allocated: Service = {
      ...normalizeService(service({ type: "NodePort", ...dualStack })),
    };
    const filled: Service = {
      ...allocated,
      spec: { ...allocated.spec, clusterIP: "10.96.0.10", clusterIPs: ["10.96.0.10", "fd00:10:96::a"], ipFamilies: ["IPv4", "IPv6"], ports: [{ ...allocated.spec.ports[0], nodePort: 30080 }] },
    };
    validateService(filled);
    const broken = { ...filled, spec: { ...filled.spec, ipFamilies: ["IPv6", "IPv4"] } } as Service;
    assert.throws(() => validateService(broken), /spec\.clusterIPs\[0\]: Invalid value: "10\.96\.0\.10": expected an IPv6 value as indicated by `ipFamilies\[0\]`/);
  });
});

describe("objects: EndpointSlice and Pod defaults", () => {
  // Catches a port without name or protocol left undefined, which no Service port would match.
  it("gives slice ports name \"\" and protocol TCP", () => {
    assert.deepEqual(normalizeEndpointSlice(slice()).ports, [{ name: "", protocol: "TCP", port: 8080 }]);
  });

  // Catches absent conditions read as not ready, or serving not following ready.
  it("writes the API's meaning of absent conditions down", () => {
    const endpoints = normalizeEndpointSlice(slice({
      endpoints: [
        { addresses: ["10.244.1.5"] },
        { addresses: ["10.244.1.6"], conditions: { ready: false } },
        { addresses: ["10.244.1.7"], conditions: { ready: false, serving: true, terminating: true } },
      ],
    })).endpoints;
    assert.deepEqual(endpoints.map((endpoint) => endpoint.conditions), [
      { ready: true, serving: true, terminating: false },
      { ready: false, serving: false, terminating: false },
      { ready: false, serving: true, terminating: true },
    ]);
  });

  // Catches podIP and podIPs out of step, or container ports without a protocol.
  it("keeps podIP and podIPs in step and defaults container port protocols", () => {
    const fromPodIP = normalizePod(pod());
    assert.deepEqual(fromPodIP.status.podIPs, [{ ip: "10.244.1.5" }]);
    assert.equal(fromPodIP.spec.containers[0].ports?.[0].protocol, "TCP");
    const fromPodIPs = normalizePod(pod({}, { podIP: undefined, podIPs: [{ ip: "fd00:10:244:1::5" }, { ip: "10.244.1.5" }] }));
    assert.equal(fromPodIPs.status.podIP, "fd00:10:244:1::5");
  });

  // Catches a host-network pod's ports not counted as host ports.
  it("makes a host-network pod's container ports host ports", () => {
    const normalized = normalizePod(pod({ hostNetwork: true, containers: [{ name: "app", ports: [{ containerPort: 9100 }] }] }));
    assert.equal(normalized.spec.containers[0].ports?.[0].hostPort, 9100);
  });

  // Catches the fields a network plugin ignores (image, volumes) refusing a real Pod.
  it("ignores the parts of a Pod a network plugin does not read", () => {
    const normalized = normalizePod(pod({ volumes: [{ name: "data", emptyDir: {} }], containers: [{ name: "app", image: "busybox" }] }, { hostIP: "198.18.0.1" }));
    assert.deepEqual(normalized.spec.containers, [{ name: "app" }]);
    validatePod(normalized);
    validateEndpointSlice(normalizeEndpointSlice(slice()));
  });
});

describe("objects: error messages", () => {
  // Catches several problems reported one at a time, or joined unlike kubectl.
  it("joins several errors in brackets and repeats none", () => {
    const error = refusal("Service", service({ type: "Foo", ports: [{ name: "http", port: 0, targetPort: 80 }, { name: "http", port: 81 }] }, { name: "Web" }));
    assert.match(error.message, /^The Service "Web" is invalid: \[metadata\.name: Invalid value: "Web": .*, spec\.ports\[0\]\.port: Invalid value: 0: .*, spec\.ports\[1\]\.name: Duplicate value: "http", spec\.type: Unsupported value: "Foo": .*\]$/);
    assert.equal(error.errors.length, 4);
  });

  // Catches a paraphrase of Kubernetes' wording, which users search for (its double space included).
  it("uses Kubernetes' wording for names", () => {
    const error = refusal("Service", service({}, { name: "1web" }));
    assert.equal(
      error.message,
      "The Service \"1web\" is invalid: metadata.name: Invalid value: \"1web\": a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')",
    );
  });

  // Catches values printed without their type (a string unquoted, a Required with a value).
  it("prints each value as the apiserver does", () => {
    assert.equal(formatFieldError({ path: "spec.ports", type: "Required value" }), "spec.ports: Required value");
    assert.equal(formatFieldError({ path: "endpoints", type: "Too many", value: 1001, detail: "must have at most 1000 items" }), "endpoints: Too many: 1001: must have at most 1000 items");
    assert.equal(formatFieldError({ path: "spec.clusterIPs", type: "Invalid value", value: ["a", "b"], detail: "x" }), 'spec.clusterIPs: Invalid value: []string{"a", "b"}: x');
    assert.equal(formatFieldError({ path: "x", type: "Forbidden", detail: "no" }), "x: Forbidden: no");
  });

  // Catches a non-object manifest crashing instead of being refused with what it was.
  it("refuses a manifest that is not an object", () => {
    assert.throws(() => normalizeService("web"), /a Service must be an object with apiVersion, kind and metadata, not "web"/);
  });
});
