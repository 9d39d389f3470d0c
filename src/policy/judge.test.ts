/*
 * The truth tables of the upstream NetworkPolicy e2e suite's model (namespaces x, y, z; pods a, b,
 * c in each; ports 80 and 81 over TCP and UDP), judged by the semantics alone, on both
 * families: each case states the reachability it expects from every pod to every pod, and a
 * failing case prints the expected and the judged matrix. ClusterNetworkPolicy's tiers and
 * actions on the same model.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { parseIp, type Family } from "../net/ip.js";
import { judge, policyTypes } from "./judge.js";
import { selects } from "./selector.js";
import type { ClusterNetworkPolicy, NetworkPolicy, PolicyPod, PolicyProtocol, PolicyWorld } from "./types.js";

const NAMESPACES = ["x", "y", "z"] as const;
const PODS = ["a", "b", "c"] as const;

function podsOf(family: Family): PolicyPod[] {
  return NAMESPACES.flatMap((ns, n) =>
    PODS.map((name, p) => ({
      namespace: ns,
      name,
      labels: { pod: name },
      ips: [parseIp(family === 4 ? `10.244.${n}.${p + 10}` : `fd00:10:244:${n}::${p + 10}`)],
      ports: [80, 81].flatMap((port) => (["TCP", "UDP"] as const).map((protocol) => ({ name: `serve-${port}-${protocol.toLowerCase()}`, containerPort: port, protocol }))),
    })),
  );
}

function world(networkPolicies: NetworkPolicy[] = [], clusterPolicies: ClusterNetworkPolicy[] = [], nsLabels: Record<string, Record<string, string>> = {}): PolicyWorld {
  return {
    namespaces: new Map(NAMESPACES.map((ns) => [ns, { name: ns, labels: { "kubernetes.io/metadata.name": ns, ns, ...(nsLabels[ns] ?? {}) } }])),
    nodes: [{ name: "node1", labels: { "kubernetes.io/hostname": "node1" }, addresses: [parseIp("198.18.0.1"), parseIp("fd00:198:18::1")] }],
    networkPolicies,
    clusterPolicies,
  };
}

/** Every pod to every pod: "." passes, "X" does not; rows are the sources. */
function matrix(state: PolicyWorld, family: Family, protocol: PolicyProtocol, port: number): string {
  const pods = podsOf(family);
  const header = `     ${pods.map((pod) => `${pod.namespace}/${pod.name}`).join(" ")}`;
  const rows = pods.map((from) => `${from.namespace}/${from.name}  ${pods.map((to) => (judge(state, { from: { pod: from, address: from.ips[0] }, to: { pod: to, address: to.ips[0] }, protocol, port }).allowed ? "." : "X").padEnd(3)).join(" ")}`);
  return [header, ...rows].join("\n");
}

/** The expected matrix: everything passes but what `denied(from, to)` says; a pod always reaches itself (upstream's AllowLoopback). */
function expected(denied: (from: string, to: string) => boolean): string {
  const ids = NAMESPACES.flatMap((ns) => PODS.map((pod) => `${ns}/${pod}`));
  const header = `     ${ids.join(" ")}`;
  return [header, ...ids.map((from) => `${from}  ${ids.map((to) => (from !== to && denied(from, to) ? "X" : ".").padEnd(3)).join(" ")}`)].join("\n");
}

function checkBoth(state: PolicyWorld, protocol: PolicyProtocol, port: number, denied: (from: string, to: string) => boolean): void {
  for (const family of [4, 6] as const) assert.equal(matrix(state, family, protocol, port), expected(denied), `IPv${family} ${protocol}/${port}`);
}

const np = (namespace: string, name: string, spec: NetworkPolicy["spec"]): NetworkPolicy => ({ metadata: { namespace, name }, spec });
const cnp = (name: string, spec: ClusterNetworkPolicy["spec"]): ClusterNetworkPolicy => ({ metadata: { name }, spec });
const ns = (id: string) => id.split("/")[0];
const pod = (id: string) => id.split("/")[1];

describe("label selectors", () => {
  it("require every label and expression; NotIn and DoesNotExist hold where the label is absent; empty selects everything", () => {
    // Catches: NotIn failing on an object without the label (apimachinery lets it through), or matchLabels and expressions ORed.
    const labels = { app: "web", tier: "front" };
    assert.equal(selects({}, labels), true);
    assert.equal(selects({ matchLabels: { app: "web" }, matchExpressions: [{ key: "tier", operator: "In", values: ["front", "back"] }] }, labels), true);
    assert.equal(selects({ matchLabels: { app: "web" }, matchExpressions: [{ key: "tier", operator: "In", values: ["back"] }] }, labels), false);
    assert.equal(selects({ matchExpressions: [{ key: "env", operator: "NotIn", values: ["prod"] }] }, labels), true);
    assert.equal(selects({ matchExpressions: [{ key: "env", operator: "DoesNotExist" }] }, labels), true);
    assert.equal(selects({ matchExpressions: [{ key: "app", operator: "Exists" }] }, labels), true);
    assert.equal(selects({ matchExpressions: [{ key: "app", operator: "DoesNotExist" }] }, labels), false);
    assert.equal(selects({ matchLabels: { toString: "x" } }, {}), false, "a key from Object's prototype is no label");
  });
});

describe("NetworkPolicy on the upstream model (x, y, z × a, b, c), both families", () => {
  it("with no policy, every pod reaches every pod", () => {
    checkBoth(world(), "TCP", 80, () => false);
  });

  it("default deny ingress in x: nothing reaches x's pods, x's pods reach everyone else", () => {
    // Catches: an empty podSelector not selecting every pod of its namespace, or isolation leaking to other namespaces.
    checkBoth(world([np("x", "deny-all", { podSelector: {} })]), "TCP", 80, (_from, to) => ns(to) === "x");
  });

  it("default deny egress in x: x's pods reach nothing; policyTypes decides, not the rules' absence", () => {
    // Catches: a policy with policyTypes [Egress] and no rules read as ingress-only (the defaulting applies only when policyTypes is empty).
    checkBoth(world([np("x", "deny-egress", { podSelector: {}, policyTypes: ["Egress"] })]), "TCP", 80, (from) => ns(from) === "x");
  });

  it("allows x/a from pods labelled pod=b of its own namespace only", () => {
    // Catches: a podSelector peer matching pods of other namespaces.
    const policy = np("x", "allow-b", { podSelector: { matchLabels: { pod: "a" } }, ingress: [{ from: [{ podSelector: { matchLabels: { pod: "b" } } }] }] });
    checkBoth(world([policy]), "TCP", 80, (from, to) => to === "x/a" && from !== "x/b");
  });

  it("a namespaceSelector and a podSelector in one peer are ANDed; in two peers, ORed", () => {
    // Catches: the most common NetworkPolicy mistake, made by the implementation instead of the user.
    const and = np("x", "and", { podSelector: { matchLabels: { pod: "a" } }, ingress: [{ from: [{ namespaceSelector: { matchLabels: { ns: "y" } }, podSelector: { matchLabels: { pod: "c" } } }] }] });
    checkBoth(world([and]), "TCP", 80, (from, to) => to === "x/a" && from !== "y/c");
    const or = np("x", "or", { podSelector: { matchLabels: { pod: "a" } }, ingress: [{ from: [{ namespaceSelector: { matchLabels: { ns: "y" } } }, { podSelector: { matchLabels: { pod: "c" } } }] }] });
    checkBoth(world([or]), "TCP", 80, (from, to) => to === "x/a" && !(ns(from) === "y" || from === "x/c"));
  });

  it("allows by port: a number, a named container port, and a range with endPort; the protocol must match too", () => {
    // Catches: named ports resolved on the source instead of the destination, endPort ignored, or UDP let in by a TCP port.
    const numbered = np("x", "port-81", { podSelector: {}, ingress: [{ ports: [{ port: 81 }] }] });
    checkBoth(world([numbered]), "TCP", 80, (_from, to) => ns(to) === "x");
    checkBoth(world([numbered]), "TCP", 81, () => false);
    checkBoth(world([numbered]), "UDP", 81, (_from, to) => ns(to) === "x");
    const named = np("x", "named", { podSelector: {}, ingress: [{ ports: [{ port: "serve-80-udp", protocol: "UDP" }] }] });
    checkBoth(world([named]), "UDP", 80, () => false);
    checkBoth(world([named]), "UDP", 81, (_from, to) => ns(to) === "x");
    const range = np("x", "range", { podSelector: {}, ingress: [{ ports: [{ port: 79, endPort: 80 }] }] });
    checkBoth(world([range]), "TCP", 80, () => false);
    checkBoth(world([range]), "TCP", 81, (_from, to) => ns(to) === "x");
  });

  it("policies add up: two policies selecting one pod allow the union of what each allows", () => {
    const fromY = np("x", "from-y", { podSelector: { matchLabels: { pod: "a" } }, ingress: [{ from: [{ namespaceSelector: { matchLabels: { ns: "y" } } }] }] });
    const fromZ = np("x", "from-z", { podSelector: { matchLabels: { pod: "a" } }, ingress: [{ from: [{ namespaceSelector: { matchLabels: { ns: "z" } } }] }] });
    checkBoth(world([fromY, fromZ]), "TCP", 80, (from, to) => to === "x/a" && ns(from) === "x");
  });

  it("ipBlock: a CIDR with an exception, matched against the peer's address", () => {
    // Catches: except ignored, or an IPv4 block matching IPv6 peers.
    const block = (family: Family) => np("x", "block", {
      podSelector: { matchLabels: { pod: "a" } },
      ingress: [{ from: [{ ipBlock: family === 4 ? { cidr: "10.244.0.0/16", except: ["10.244.1.0/24"] } : { cidr: "fd00:10:244::/48", except: ["fd00:10:244:1::/64"] } }] }],
    });
    for (const family of [4, 6] as const) {
      assert.equal(matrix(world([block(family)]), family, "TCP", 80), expected((from, to) => to === "x/a" && ns(from) === "y"));
      // The other family's block matches nothing of this family: x/a is closed to all.
      assert.equal(matrix(world([block(family === 4 ? 6 : 4)]), family, "TCP", 80), expected((_from, to) => to === "x/a"));
    }
  });

  it("egress rules without policyTypes isolate both directions: egress to y only, and no ingress at all", () => {
    const policy = np("x", "egress-to-y", { podSelector: {}, egress: [{ to: [{ namespaceSelector: { matchLabels: { ns: "y" } } }] }] });
    assert.deepEqual(policyTypes(policy), ["Ingress", "Egress"], "egress rules with no policyTypes make it both");
    // Ingress is isolated by the defaulting too (Ingress with no rules): nothing reaches x.
    checkBoth(world([policy]), "TCP", 80, (from, to) => ns(to) === "x" || (ns(from) === "x" && ns(to) !== "y"));
  });

  it("needs both ends: egress allowed at the source and ingress at the destination", () => {
    const egress = np("x", "egress-x", { podSelector: {}, policyTypes: ["Egress"], egress: [{ to: [{ namespaceSelector: { matchLabels: { ns: "y" } } }] }] });
    const ingress = np("y", "ingress-y", { podSelector: {}, ingress: [{ from: [{ namespaceSelector: { matchLabels: { ns: "z" } } }] }] });
    // Catches: a connection let through because one end's policy allows it while the other's does not.
    const egressDenied = (from: string, to: string) => ns(from) === "x" && ns(to) !== "y";
    const ingressDenied = (from: string, to: string) => ns(to) === "y" && ns(from) !== "z";
    checkBoth(world([egress, ingress]), "TCP", 80, (from, to) => egressDenied(from, to) || ingressDenied(from, to));
  });

  it("judges nothing at a host-network pod or an outside address, and explains why", () => {
    const state = world([np("x", "deny-all", { podSelector: {}, policyTypes: ["Ingress", "Egress"] })]);
    const [a] = podsOf(4);
    const host = { ...a, name: "host", hostNetwork: true, ips: [parseIp("198.18.0.1")] };
    const verdict = judge(state, { from: { pod: host, address: host.ips[0] }, to: { address: parseIp("203.0.113.7") }, protocol: "TCP", port: 443 });
    assert.equal(verdict.allowed, true);
    assert.match(verdict.egress.steps[0].reason, /host-network/);
    const blocked = judge(state, { from: { address: parseIp("203.0.113.7") }, to: { pod: a, address: a.ips[0] }, protocol: "TCP", port: 80 });
    assert.equal(blocked.allowed, false);
    assert.deepEqual(blocked.ingress.steps.map((step) => [step.tier, step.policy, step.outcome]), [["NetworkPolicy", "x/deny-all", "isolates"]]);
  });
});

describe("ClusterNetworkPolicy tiers on the same model", () => {
  const denyXFromY = cnp("deny-y-to-x", { tier: "Admin", priority: 10, subject: { namespaces: { matchLabels: { ns: "x" } } }, ingress: [{ name: "no-y", action: "Deny", from: [{ namespaces: { matchLabels: { ns: "y" } } }] }] });

  it("an Admin Deny wins over a NetworkPolicy that allows", () => {
    // Catches: the tiers evaluated in the wrong order, letting a tenant's policy open what the admin closed.
    const allowAll = np("x", "allow-all", { podSelector: {}, ingress: [{}] });
    checkBoth(world([allowAll], [denyXFromY]), "TCP", 80, (from, to) => ns(to) === "x" && ns(from) === "y");
  });

  it("Pass hands the decision to NetworkPolicy; Accept ends it before NetworkPolicy can deny", () => {
    const denyAll = np("x", "deny-all", { podSelector: {} });
    const pass = cnp("pass-y", { tier: "Admin", priority: 5, subject: { namespaces: { matchLabels: { ns: "x" } } }, ingress: [{ action: "Pass", from: [{ namespaces: { matchLabels: { ns: "y" } } }] }] });
    // The Pass at priority 5 comes before the Deny at 10: y's traffic goes to the NetworkPolicy tier, which denies.
    checkBoth(world([denyAll], [pass, denyXFromY]), "TCP", 80, (_from, to) => ns(to) === "x");
    const accept = cnp("accept-z", { tier: "Admin", priority: 1, subject: { namespaces: { matchLabels: { ns: "x" } } }, ingress: [{ action: "Accept", from: [{ pods: { namespaceSelector: { matchLabels: { ns: "z" } }, podSelector: { matchLabels: { pod: "a" } } } }] }] });
    checkBoth(world([denyAll], [accept]), "TCP", 80, (from, to) => ns(to) === "x" && from !== "z/a");
  });

  it("lower priority first within a tier, and rules in order within a policy", () => {
    // Catches: priorities sorted the wrong way, or a later rule of one policy overriding an earlier one.
    const accept = cnp("accept-y", { tier: "Admin", priority: 20, subject: { namespaces: {} }, ingress: [{ action: "Accept", from: [{ namespaces: { matchLabels: { ns: "y" } } }] }] });
    checkBoth(world([], [accept, denyXFromY]), "TCP", 80, (from, to) => ns(to) === "x" && ns(from) === "y");
    const ordered = cnp("ordered", { tier: "Admin", priority: 1, subject: { namespaces: { matchLabels: { ns: "x" } } }, ingress: [
      { action: "Accept", from: [{ pods: { namespaceSelector: {}, podSelector: { matchLabels: { pod: "b" } } } }] },
      { action: "Deny", from: [{ namespaces: {} }] },
    ] });
    checkBoth(world([], [ordered]), "TCP", 80, (from, to) => ns(to) === "x" && pod(from) !== "b");
  });

  it("Baseline applies only where no NetworkPolicy selects the pod", () => {
    const baseline = cnp("baseline-deny", { tier: "Baseline", priority: 50, subject: { namespaces: {} }, ingress: [{ action: "Deny", from: [{ namespaces: {} }] }] });
    const openX = np("x", "open", { podSelector: {}, ingress: [{}] });
    checkBoth(world([openX], [baseline]), "TCP", 80, (_from, to) => ns(to) !== "x");
  });

  it("matches protocols and ports: a number, a range, a named port of the destination", () => {
    const rule = (protocols: ClusterNetworkPolicy["spec"]["ingress"] extends readonly (infer R)[] | undefined ? R extends { protocols?: infer P } ? P : never : never) =>
      cnp("ports", { tier: "Admin", priority: 1, subject: { namespaces: { matchLabels: { ns: "x" } } }, ingress: [{ action: "Deny", from: [{ namespaces: {} }], protocols }] });
    checkBoth(world([], [rule([{ tcp: { destinationPort: { number: 81 } } }])]), "TCP", 80, () => false);
    checkBoth(world([], [rule([{ tcp: { destinationPort: { number: 81 } } }])]), "TCP", 81, (_from, to) => ns(to) === "x");
    checkBoth(world([], [rule([{ udp: { destinationPort: { range: { start: 80, end: 81 } } } }])]), "UDP", 80, (_from, to) => ns(to) === "x");
    checkBoth(world([], [rule([{ udp: {} }])]), "TCP", 80, () => false);
    checkBoth(world([], [rule([{ destinationNamedPort: "serve-81-tcp" }])]), "TCP", 81, (_from, to) => ns(to) === "x");
    checkBoth(world([], [rule([{ destinationNamedPort: "serve-81-tcp" }])]), "UDP", 81, () => false);
  });

  it("egress to nodes and networks; a namespaces peer never matches a node's address", () => {
    const [a] = podsOf(4);
    const node = { address: parseIp("198.18.0.1") };
    const outside = { address: parseIp("203.0.113.9") };
    const denyNodes = cnp("no-nodes", { tier: "Admin", priority: 1, subject: { namespaces: {} }, egress: [{ action: "Deny", to: [{ nodes: {} }] }] });
    const denyNet = cnp("no-net", { tier: "Admin", priority: 2, subject: { namespaces: {} }, egress: [{ action: "Deny", to: [{ networks: ["203.0.113.0/24"] }] }] });
    const denyPods = cnp("no-pods", { tier: "Admin", priority: 3, subject: { namespaces: {} }, egress: [{ action: "Deny", to: [{ namespaces: {} }] }] });
    const from = { pod: a, address: a.ips[0] };
    const state = world([], [denyNodes, denyNet]);
    assert.equal(judge(state, { from, to: node, protocol: "TCP", port: 10250 }).allowed, false);
    assert.equal(judge(state, { from, to: outside, protocol: "TCP", port: 443 }).allowed, false);
    assert.equal(judge(state, { from, to: { address: parseIp("192.0.2.1") }, protocol: "TCP", port: 443 }).allowed, true);
    assert.equal(judge(world([], [denyPods]), { from, to: node, protocol: "TCP", port: 10250 }).allowed, true);
    const verdict = judge(state, { from, to: outside, protocol: "TCP", port: 443 });
    assert.deepEqual(verdict.egress.steps, [{ tier: "Admin", policy: "no-net", rule: "egress[0]", outcome: "deny", reason: "priority 2: Deny" }]);
  });
});
