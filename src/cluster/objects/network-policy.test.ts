import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { normalizeClusterNetworkPolicy } from "./cluster-network-policy.js";
import { normalizeNamespace, normalizeNetworkPolicy } from "./network-policy.js";

const np = (spec: object, metadata: object = {}) => ({ apiVersion: "networking.k8s.io/v1", kind: "NetworkPolicy", metadata: { name: "web", namespace: "x", ...metadata }, spec });
const cnp = (spec: object) => ({
  apiVersion: "policy.networking.k8s.io/v1beta1",
  kind: "ClusterNetworkPolicy",
  metadata: { name: "admin" },
  spec: { tier: "Admin", priority: 10, subject: { namespaces: {} }, ...spec },
});

/** The message an apply of `input` is refused with. */
function refusal(normalize: (input: unknown) => unknown, input: unknown): string {
  try {
    normalize(input);
  } catch (error) {
    return (error as Error).message;
  }
  assert.fail(`${JSON.stringify(input)} was taken`);
}

describe("NetworkPolicy as the apiserver takes it", () => {
  // Catches the API's defaulting missed: policyTypes decide which directions isolate, so an
  // egress-only policy read as ingress-only would open egress.
  it("defaults policyTypes and a port's protocol as the apiserver does", () => {
    assert.deepEqual(normalizeNetworkPolicy(np({ podSelector: {} })).spec.policyTypes, ["Ingress"]);
    const egress = normalizeNetworkPolicy(np({ podSelector: {}, egress: [{ ports: [{ port: 53, protocol: "UDP" }, { port: "http" }] }] }));
    assert.deepEqual(egress.spec.policyTypes, ["Ingress", "Egress"]);
    assert.deepEqual(egress.spec.egress?.[0].ports, [{ protocol: "UDP", port: 53 }, { protocol: "TCP", port: "http" }]);
    assert.deepEqual(normalizeNetworkPolicy(np({ podSelector: {}, policyTypes: ["Egress"] })).spec.policyTypes, ["Egress"]);
    assert.equal(normalizeNetworkPolicy(np({ podSelector: {} }, { namespace: undefined })).metadata.namespace, "default");
  });

  // Catches each of ValidateNetworkPolicy's checks missing or worded otherwise than kubectl shows it.
  it("refuses what ValidateNetworkPolicy refuses, with its paths and words", () => {
    const cases: Array<[object, RegExp]> = [
      [{ podSelector: {}, ingress: [{ from: [{}] }] }, /spec\.ingress\[0\]\.from\[0\]: Required value: must specify a peer/],
      [{ podSelector: {}, egress: [{ to: [{ ipBlock: { cidr: "10.0.0.0/8" }, podSelector: {} }] }] }, /spec\.egress\[0\]\.to\[0\]: Forbidden: may not specify both ipBlock and another peer/],
      [{ podSelector: {}, ingress: [{ from: [{ ipBlock: { cidr: "10.0.0.0/33" } }] }] }, /spec\.ingress\[0\]\.from\[0\]\.ipBlock\.cidr: Invalid value: "10\.0\.0\.0\/33": must be a valid CIDR value/],
      [{ podSelector: {}, ingress: [{ from: [{ ipBlock: { cidr: "10.0.0.0/24", except: ["192.168.0.0/25"] } }] }] }, /except\[0\]: Invalid value: "192\.168\.0\.0\/25": must be a strict subset of `cidr`/],
      [{ podSelector: {}, ingress: [{ from: [{ ipBlock: { cidr: "10.0.0.0/24", except: ["10.0.0.0/24"] } }] }] }, /must be a strict subset of `cidr`/],
      [{ podSelector: {}, ingress: [{ from: [{ ipBlock: { cidr: "10.0.0.0/8", except: ["fd00::/64"] } }] }] }, /must be a strict subset of `cidr`/],
      [{ podSelector: {}, ingress: [{ from: [{ ipBlock: {} }] }] }, /ipBlock\.cidr: Required value/],
      [{ podSelector: {}, ingress: [{ ports: [{ protocol: "ICMP" }] }] }, /ports\[0\]\.protocol: Unsupported value: "ICMP": supported values: "SCTP", "TCP", "UDP"/],
      [{ podSelector: {}, ingress: [{ ports: [{ port: 0 }] }] }, /ports\[0\]\.port: Invalid value: 0: must be between 1 and 65535, inclusive/],
      [{ podSelector: {}, ingress: [{ ports: [{ port: 90, endPort: 80 }] }] }, /ports\[0\]\.endPort: Invalid value: 90: must be greater than or equal to `port`/],
      [{ podSelector: {}, ingress: [{ ports: [{ port: "http", endPort: 80 }] }] }, /endPort: Invalid value: 80: may not be specified when `port` is non-numeric/],
      [{ podSelector: {}, ingress: [{ ports: [{ endPort: 80 }] }] }, /endPort: Invalid value: 80: may not be specified when `port` is not specified/],
      [{ podSelector: {}, ingress: [{ ports: [{ port: "no_underscores" }] }] }, /ports\[0\]\.port: Invalid value: "no_underscores"/],
      [{ podSelector: {}, policyTypes: ["Ingress", "Egress", "Ingress"] }, /spec\.policyTypes: Invalid value: .*may not specify more than two policyTypes/],
      [{ podSelector: {}, policyTypes: ["Sideways"] }, /spec\.policyTypes\[0\]: Unsupported value: "Sideways": supported values: "Egress", "Ingress"/],
      [{ podSelector: { matchExpressions: [{ key: "app", operator: "In" }] } }, /spec\.podSelector\.matchExpressions\[0\]\.values: Required value: must be specified when `operator` is 'In' or 'NotIn'/],
      [{ podSelector: { matchExpressions: [{ key: "app", operator: "Exists", values: ["a"] }] } }, /values: Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'/],
      [{ podSelector: { matchExpressions: [{ key: "app", operator: "Near" }] } }, /operator: Invalid value: "Near": not a valid selector operator/],
      [{ podSelector: { matchLabels: { "bad key!": "x" } } }, /spec\.podSelector\.matchLabels: Invalid value: "bad key!"/],
      [{ podSelector: {}, ingress: [{ from: [{ podSelector: { matchLabels: { app: "a\nb" } } }] }] }, /from\[0\]\.podSelector\.matchLabels: Invalid value: "a\\nb"/],
      [{ podSelector: {}, ingress: [{ sources: [] }] }, /spec\.ingress\[0\]\.sources: Forbidden: unknown field/],
    ];
    for (const [spec, message] of cases) assert.match(refusal(normalizeNetworkPolicy, np(spec)), message, JSON.stringify(spec));
    assert.match(refusal(normalizeNetworkPolicy, np({ podSelector: {} }, { name: "Web_1" })), /^The NetworkPolicy "Web_1" is invalid: metadata\.name: Invalid value: "Web_1"/);
    assert.match(refusal(normalizeNetworkPolicy, np({ podSelector: {} }, { namespace: "../etc" })), /metadata\.namespace: Invalid value: "\.\.\/etc"/);
  });
});

describe("Namespace as the apiserver takes it", () => {
  // Catches the name label missed (namespaceSelector: kubernetes.io/metadata.name would select
  // nothing) or taken from the manifest instead of the name.
  it("sets kubernetes.io/metadata.name to its name, whatever the manifest says", () => {
    const ns = normalizeNamespace({ apiVersion: "v1", kind: "Namespace", metadata: { name: "team-a", namespace: "ignored", labels: { tier: "web", "kubernetes.io/metadata.name": "team-b" } } });
    assert.deepEqual(ns.metadata.labels, { tier: "web", "kubernetes.io/metadata.name": "team-a" });
    assert.equal("namespace" in ns.metadata, false);
    assert.match(refusal(normalizeNamespace, { apiVersion: "v1", kind: "Namespace", metadata: { name: "Team.A" } }), /metadata\.name: Invalid value: "Team\.A": a lowercase RFC 1123 label/);
  });
});

describe("ClusterNetworkPolicy as its CRD takes it", () => {
  // Catches a malformed policy taken (read as something narrower or wider than written).
  it("refuses what the v0.3.0 CRD's schema and rules refuse", () => {
    const cases: Array<[object, RegExp]> = [
      [{ tier: "Middle" }, /spec\.tier: Unsupported value: "Middle": supported values: "Admin", "Baseline"/],
      [{ priority: 1001 }, /spec\.priority: Invalid value: 1001: spec\.priority in body should be less than or equal to 1000/],
      [{ priority: -1 }, /spec\.priority in body should be greater than or equal to 0/],
      [{ priority: undefined }, /spec\.priority: Required value/],
      [{ subject: {} }, /spec\.subject: Invalid value: 0: spec\.subject in body should have at least 1 properties/],
      [{ subject: { namespaces: {}, pods: { podSelector: {} } } }, /spec\.subject: Too many: 2: must have at most 1 item/],
      [{ subject: { pods: { namespaceSelector: {} } } }, /spec\.subject\.pods\.podSelector: Required value/],
      [{ ingress: [{ action: "Allow", from: [{ namespaces: {} }] }] }, /spec\.ingress\[0\]\.action: Unsupported value: "Allow": supported values: "Accept", "Deny", "Pass"/],
      [{ ingress: [{ action: "Deny" }] }, /spec\.ingress\[0\]\.from: Required value/],
      [{ ingress: [{ action: "Deny", from: [] }] }, /spec\.ingress\[0\]\.from in body should have at least 1 items/],
      [{ ingress: [{ action: "Deny", from: [{ networks: ["10.0.0.0/8"] }] }] }, /spec\.ingress\[0\]\.from\[0\]\.networks: Forbidden: unknown field/],
      [{ egress: [{ action: "Deny", to: [{ networks: ["10.0.0.1/8"] }] }] }, /to\[0\]\.networks\[0\]: Invalid value: "10\.0\.0\.1\/8": Invalid CIDR format provided/],
      [{ egress: [{ action: "Deny", to: [{ networks: ["not-a-cidr"] }] }] }, /Invalid CIDR format provided/],
      [{ egress: [{ action: "Deny", to: [{ namespaces: {} }], protocols: [{ tcp: { destinationPort: { range: { start: 90, end: 80 } } } }] }] }, /destinationPort\.range: Invalid value: .*Start port must be less than End port/],
      [{ egress: [{ action: "Deny", to: [{ namespaces: {} }], protocols: [{ tcp: { destinationPort: { number: 70000 } } }] }] }, /destinationPort\.number in body should be less than or equal to 65535/],
      [{ egress: [{ action: "Deny", to: [{ namespaces: {} }], protocols: [{ tcp: {}, udp: {} }] }] }, /protocols\[0\]: Too many: 2/],
      [{ ingress: Array.from({ length: 26 }, () => ({ action: "Deny", from: [{ namespaces: {} }] })) }, /spec\.ingress: Too many: 26: must have at most 25 items/],
      [{ ingress: [{ name: "n".repeat(101), action: "Deny", from: [{ namespaces: {} }] }] }, /spec\.ingress\[0\]\.name: Too long: may not be more than 100 bytes/],
    ];
    for (const [spec, message] of cases) assert.match(refusal(normalizeClusterNetworkPolicy, cnp(spec)), message, JSON.stringify(spec));
    assert.match(refusal(normalizeClusterNetworkPolicy, { ...cnp({}), apiVersion: "policy.networking.k8s.io/v1" }), /apiVersion: Unsupported value/);
  });

  // Catches a valid policy refused or read into other fields (v1alpha2 is the same schema).
  it("takes a whole policy in either served version", () => {
    for (const apiVersion of ["policy.networking.k8s.io/v1beta1", "policy.networking.k8s.io/v1alpha2"]) {
      const policy = normalizeClusterNetworkPolicy({
        ...cnp({
          tier: "Baseline",
          priority: 0,
          subject: { pods: { namespaceSelector: { matchLabels: { team: "a" } }, podSelector: {} } },
          ingress: [{ name: "from-b", action: "Accept", from: [{ pods: { namespaceSelector: {}, podSelector: { matchLabels: { app: "b" } } } }], protocols: [{ udp: { destinationPort: { range: { start: 80, end: 81 } } } }] }],
          egress: [{ action: "Deny", to: [{ networks: ["10.0.0.0/8", "fd00::/8"] }, { nodes: { matchLabels: { role: "db" } } }] }],
        }),
        apiVersion,
      });
      assert.equal(policy.apiVersion, apiVersion);
      assert.deepEqual(policy.spec.ingress?.[0].protocols, [{ udp: { destinationPort: { range: { start: 80, end: 81 } } } }]);
      assert.deepEqual(policy.spec.egress?.[0].to, [{ networks: ["10.0.0.0/8", "fd00::/8"] }, { nodes: { matchLabels: { role: "db" } } }]);
      assert.equal("namespace" in policy.metadata, false);
    }
  });
});
