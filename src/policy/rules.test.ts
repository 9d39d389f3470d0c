import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { formatIp, parseIp } from "../net/ip.js";
import { renderOps } from "../nft/text.js";
import { tableOps } from "../nft/diff.js";
import { PeerSets, policyTable } from "./rules.js";
import type { NetworkPolicy, PolicyNamespace, PolicyPod, PolicyWorld } from "./types.js";

function pod(namespace: string, name: string, labels: Record<string, string>, n: number, extra: Partial<PolicyPod> = {}): PolicyPod {
  return { namespace, name, labels, ips: [parseIp(`10.244.${n >> 8}.${n & 255}`), parseIp(`fd00:10:244::${n.toString(16)}`)], ...extra };
}

function world(networkPolicies: NetworkPolicy[]): PolicyWorld {
  return { namespaces: new Map([["x", { name: "x", labels: { "kubernetes.io/metadata.name": "x" } }]]), nodes: [], networkPolicies, clusterPolicies: [] };
}

const frontOnly: NetworkPolicy = {
  metadata: { namespace: "x", name: "front-only" },
  spec: { podSelector: { matchLabels: { app: "db" } }, ingress: [{ from: [{ podSelector: { matchLabels: { app: "front" } } }], ports: [{ port: 5432 }] }] },
};

describe("the policy table", () => {
  it("is not there while no policy selects a pod of the node", () => {
    // Catches: a table with hooks in every node's forward path for clusters that use no policy.
    assert.equal(policyTable({ world: world([]), pods: [pod("x", "a", {}, 1)], local: [pod("x", "a", {}, 1)] }), undefined);
    assert.equal(policyTable({ world: world([frontOnly]), pods: [pod("x", "a", { app: "web" }, 1)], local: [pod("x", "a", { app: "web" }, 1)] }), undefined);
  });

  it("grows with policies and peers, not with pods: 200 pods selected alike share one chain", () => {
    // Catches: a chain per pod (pods × policies rules, a full rewrite per pod start).
    const one = [pod("x", "db-0", { app: "db" }, 1)];
    const many = Array.from({ length: 200 }, (_, i) => pod("x", `db-${i}`, { app: "db" }, i + 1));
    const fronts = Array.from({ length: 50 }, (_, i) => pod("x", `front-${i}`, { app: "front" }, 1000 + i));
    const small = policyTable({ world: world([frontOnly]), pods: [...one, ...fronts], local: one })!;
    const large = policyTable({ world: world([frontOnly]), pods: [...many, ...fronts], local: many })!;
    assert.deepEqual([...large.chains.keys()].sort(), [...small.chains.keys()].sort());
    const rules = (table: typeof large) => [...table.chains.values()].reduce((sum, chainRules) => sum + chainRules.length, 0);
    assert.equal(rules(large), rules(small));
    assert.equal(large.sets.get("ingress-4")!.elements.size, 200);
    assert.equal(large.sets.get("ingress-6")!.elements.size, 200);
    assert.equal(large.sets.get("egress-4")!.elements.size, 0);
  });

  it("fills a peer set with every pod the selector picks, cluster-wide, and no host-network pod", () => {
    const local = [pod("x", "db", { app: "db" }, 1)];
    const remoteFront = pod("x", "front-remote", { app: "front" }, 300);
    const hostFront = pod("x", "front-host", { app: "front" }, 301, { hostNetwork: true });
    const otherNamespace = pod("y", "front-y", { app: "front" }, 302);
    const table = policyTable({ world: world([frontOnly]), pods: [...local, remoteFront, hostFront, otherNamespace], local })!;
    const peers = [...table.sets].filter(([name]) => name.startsWith("peer-") && name.endsWith("-4"));
    assert.equal(peers.length, 1);
    assert.deepEqual([...peers[0][1].elements.values()].map((element) => formatIp(element.key[0] as never)), ["10.244.1.44"]);
    const text = renderOps(tableOps(undefined, table));
    assert.match(text, /ip saddr @peer-[0-9a-f]{16}-4 meta l4proto tcp th dport 5432 accept/);
    assert.match(text, /ct state established,related accept/);
  });

  it("changes elements only, never a chain, when pods selected alike come", () => {
    // Catches: a pod start rewriting the table (every connection of the node re-judged, a full write per ADD).
    const pods = [pod("x", "db-0", { app: "db" }, 1), pod("x", "front-0", { app: "front" }, 2)];
    const before = policyTable({ world: world([frontOnly]), pods, local: pods })!;
    const more = [...pods, pod("x", "db-1", { app: "db" }, 3), pod("x", "front-1", { app: "front" }, 4)];
    const after = policyTable({ world: world([frontOnly]), pods: more, local: more })!;
    const ops = tableOps(before, after);
    assert.ok(ops.length > 0 && ops.every((op) => op.op === "add element"), JSON.stringify(ops.map((op) => op.op)));
  });

  it("kept from one table to the next, is the table made afresh, through random pod, label and namespace changes", () => {
    // Catches stale peer sets: a pod gone or relabelled still in a set it left, a new pod missed
    // by a set made before it came, an address change not followed, a named port's set kept
    // after its pod went, or sets kept across a namespace label change they depend on.
    let seed = 7;
    // The high bits of a linear congruential generator (its low bits repeat with short periods).
    const random = (n: number) => ((seed = (seed * 1103515245 + 12345) % 2 ** 31), Math.floor((seed / 2 ** 31) * n));
    const apps = ["front", "db", "cache"];
    const policies: NetworkPolicy[] = [
      frontOnly,
      { metadata: { namespace: "x", name: "cache" }, spec: { podSelector: { matchLabels: { app: "cache" } }, policyTypes: ["Ingress", "Egress"], ingress: [{ from: [{ namespaceSelector: { matchLabels: { team: "a" } }, podSelector: { matchLabels: { app: "front" } } }] }], egress: [{ ports: [{ port: "http" }] }] } },
    ];
    const pods = new Map<string, PolicyPod & { node: string }>();
    const namespaces = new Map<string, PolicyNamespace>([["x", { name: "x", labels: { "kubernetes.io/metadata.name": "x" } }], ["y", { name: "y", labels: { "kubernetes.io/metadata.name": "y", team: "a" } }]]);
    const kept = new PeerSets();
    // A set's elements in any order: it is a set.
    const text = (table: ReturnType<typeof policyTable>) =>
      table ? renderOps(tableOps(undefined, table)).replace(/\{ ([^{}]*) \}\n/g, (_, elements: string) => `{ ${elements.split(", ").sort().join(", ")} }\n`) : "none";
    for (let step = 0; step < 300; step++) {
      const name = `p${random(30)}`;
      const choice = random(10);
      if (choice < 6) {
        const n = random(4000);
        pods.set(name, { ...pod(random(3) ? "x" : "y", name, { app: apps[random(3)] }, n, random(2) ? { ports: [{ name: "http", containerPort: 8000 + random(3) }] } : {}), node: random(2) ? "local" : "other" });
      } else if (choice < 9) pods.delete(name);
      else namespaces.set("y", { name: "y", labels: { "kubernetes.io/metadata.name": "y", ...(random(2) ? { team: "a" } : {}) } });
      const input = () => ({ world: { namespaces, nodes: [], networkPolicies: policies, clusterPolicies: [] }, pods: [...pods.values()], local: [...pods.values()].filter((candidate) => candidate.node === "local") });
      assert.equal(text(policyTable({ ...input(), peerSets: kept })), text(policyTable(input())), `step ${step}`);
    }
  });
});

