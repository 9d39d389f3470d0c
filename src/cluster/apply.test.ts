import assert from "node:assert/strict";
import { after, describe, test } from "node:test";
import { temporaryStores, testPlan } from "../../test/support/cluster.js";
import { applyObjects, deleteObjects, listObjects } from "./apply.js";
import type { Namespace } from "./objects/network-policy.js";
import type { Service } from "./objects/types.js";
import { listServices, removeService } from "./services.js";
import { openCluster, type Cluster } from "./state.js";

const stores = temporaryStores();
after(() => stores.cleanup());

function cluster(): Promise<Cluster> {
  return openCluster(stores.open(), testPlan({ podCidrs: ["10.244.0.0/16", "fd00:10:244::/56"], serviceCidrs: ["10.96.0.0/16", "fd00:10:96::/112"], nodePortRange: "30000-30015" }));
}

const svc = (name: string, spec: Record<string, unknown>) => ({ apiVersion: "v1", kind: "Service", metadata: { name }, spec: { ports: [{ port: 80 }], ...spec } });

async function stored(c: Cluster, name: string): Promise<Service> {
  const { objects } = await listObjects<Service>(c.store, "Service");
  return objects.find((object) => object.metadata.name === name)!;
}

describe("apply and delete of Kubernetes objects", () => {
  // Bug caught: an apply that keeps the objects before a bad one (no all-or-nothing), or whose
  // allocations stay claimed after the refusal.
  test("an apply with one invalid object keeps nothing of the others, allocations included", async () => {
    const c = await cluster();
    await assert.rejects(
      applyObjects(c, [svc("good", { type: "NodePort" }), svc("bad", { ports: [{ port: 70000, targetPort: 8080 }] })]),
      /^Error: The Service "bad" is invalid: spec\.ports\[0\]\.port: Invalid value: 70000: must be between 1 and 65535, inclusive$/,
    );
    // A full range refuses the last object only after the first ones were staged.
    const many = Array.from({ length: 17 }, (_, i) => svc(`np-${i}`, { type: "NodePort" }));
    await assert.rejects(applyObjects(c, many), /spec\.ports\[0\]\.nodePort: Invalid value: "": NodePort range 30000-30015 is full/);
    assert.deepEqual((await listServices(c.store)).map((s) => s.name), ["kubernetes"]);
    const { result } = await applyObjects(c, many.slice(0, 16));
    assert.equal(result.length, 16, "all 16 ports of the range were still free");
  });

  // Bugs caught: multi-port NodePorts taking one port twice; a TCP and a UDP port not allowed to
  // share a nodePort (Kubernetes allows it); a re-apply without nodePort/clusterIP re-allocating.
  test("allocates per port, shares a number across protocols, and keeps allocations across re-applies", async () => {
    const c = await cluster();
    const manifest = svc("dns", {
      type: "NodePort",
      ipFamilyPolicy: "PreferDualStack",
      ports: [
        { name: "tcp", port: 53, protocol: "TCP", nodePort: 30013 },
        { name: "udp", port: 53, protocol: "UDP", nodePort: 30013 },
        { name: "metrics", port: 9153 },
      ],
    });
    const first = await applyObjects(c, [manifest]);
    assert.deepEqual(first.result.map((r) => r.outcome), ["created"]);
    const created = await stored(c, "dns");
    assert.equal(created.spec.clusterIPs!.length, 2);
    assert.deepEqual(created.spec.ports.map((port) => port.nodePort).slice(0, 2), [30013, 30013]);
    const metricsPort = created.spec.ports[2].nodePort!;
    assert.ok(metricsPort !== 30013 && metricsPort >= 30000 && metricsPort <= 30015);
    const again = await applyObjects(c, [manifest]);
    assert.deepEqual(again.result.map((r) => r.outcome), ["unchanged"]);
    assert.deepEqual((await stored(c, "dns")).spec, created.spec);
    // Back to ClusterIP: its NodePorts are freed; SingleStack: the secondary ClusterIP is freed.
    await applyObjects(c, [svc("dns", { ipFamilyPolicy: "SingleStack", ports: [{ name: "tcp", port: 53 }, { name: "udp", port: 53, protocol: "UDP" }] })]);
    const shrunk = await stored(c, "dns");
    assert.deepEqual(shrunk.spec.clusterIPs, created.spec.clusterIPs!.slice(0, 1));
    assert.ok(shrunk.spec.ports.every((port) => port.nodePort === undefined));
    await applyObjects(c, [svc("other", { type: "NodePort", ports: [{ port: 80, nodePort: 30013 }] })]);
    assert.equal((await stored(c, "other")).spec.ports[0].nodePort, 30013, "the freed NodePort can be had again");
  });

  // Bug caught: a ClusterIP changed by a later apply (the apiserver refuses it: immutable).
  test("refuses to change a ClusterIP once set", async () => {
    const c = await cluster();
    await applyObjects(c, [svc("web", { clusterIP: "10.96.0.10" })]);
    await assert.rejects(applyObjects(c, [svc("web", { clusterIP: "10.96.0.11" })]), /^Error: The Service "web" is invalid: spec\.clusterIPs\[0\]: Invalid value: "10\.96\.0\.11": may not change once set$/);
    assert.deepEqual((await stored(c, "web")).spec.clusterIPs, ["10.96.0.10"]);
  });

  // Bug caught: delete that leaves allocations claimed, deletes part of a list, or removes the API server's Service.
  test("delete frees ClusterIPs and NodePorts, is all or nothing, and refuses default/kubernetes", async () => {
    const c = await cluster();
    await applyObjects(c, [svc("a", { type: "NodePort", ports: [{ port: 80, nodePort: 30001 }], clusterIP: "10.96.0.20" })]);
    await assert.rejects(deleteObjects(c, [svc("a", {}), svc("missing", {})]), /^Error: services "missing" not found in namespace default$/);
    assert.ok(await stored(c, "a"), "a is still there");
    await assert.rejects(deleteObjects(c, [svc("kubernetes", {})]), /the API server's own Service/);
    const { result } = await deleteObjects(c, [svc("a", {})]);
    assert.deepEqual(result.map((r) => r.outcome), ["deleted"]);
    await applyObjects(c, [svc("b", { type: "NodePort", ports: [{ port: 80, nodePort: 30001 }], clusterIP: "10.96.0.20" })]);
    assert.equal((await stored(c, "b")).spec.clusterIP, "10.96.0.20");
  });

  // Bug caught: two objects with one name in one apply (the second silently replacing the first).
  test("refuses the same object twice in one apply", async () => {
    const c = await cluster();
    await assert.rejects(applyObjects(c, [svc("x", {}), svc("x", {})]), /^Error: Service default\/x is given twice in one apply: give each object once$/);
  });
});

describe("Services applied as objects, seen by the older service commands", () => {
  // Bug caught: `trellis service list|rm` reading a v1 Service as the older record (a crash, or
  // `service rm` freeing only its first NodePort).
  test("service list shows them and service rm frees every NodePort", async () => {
    const c = await cluster();
    await applyObjects(c, [svc("multi", { type: "NodePort", ports: [{ name: "a", port: 80, nodePort: 30001 }, { name: "b", port: 81, nodePort: 30002 }] })]);
    const listed = (await listServices(c.store)).find((s) => s.name === "multi")!;
    assert.deepEqual([listed.type, listed.nodePort, listed.clusterIPs.length], ["NodePort", 30001, 1]);
    await removeService(c, "multi");
    await applyObjects(c, [svc("again", { type: "NodePort", ports: [{ name: "a", port: 80, nodePort: 30001 }, { name: "b", port: 81, nodePort: 30002 }] })]);
  });
});

describe("applies larger than one store transaction", () => {
  // Bug caught: an apply of more Services than one transaction holds (etcd's 128 operations)
  // refused whole ("transaction has 3001 compares"), so no real manifest of 30+ Services applied.
  test("60 NodePort Services go in several transactions, every one allocated once", async () => {
    const c = await openCluster(stores.open(), testPlan({ podCidrs: ["10.244.0.0/16"], serviceCidrs: ["10.96.0.0/16"] }));
    const many = Array.from({ length: 60 }, (_, i) => svc(`s-${i}`, { type: "NodePort", selector: { app: `a${i}` } }));
    const { result } = await applyObjects(c, many);
    assert.equal(result.filter((r) => r.outcome === "created").length, 60);
    const services = (await listObjects<Service>(c.store, "Service")).objects.filter((s) => s.metadata.name.startsWith("s-"));
    assert.equal(new Set(services.map((s) => s.spec.clusterIP)).size, 60);
    assert.equal(new Set(services.map((s) => s.spec.ports[0].nodePort)).size, 60);
    const again = await applyObjects(c, many);
    assert.ok(again.result.every((r) => r.outcome === "unchanged"));
    const deleted = await deleteObjects(c, many);
    assert.equal(deleted.result.length, 60);
  });

  // Bug caught: a failure in a later transaction reported as if nothing had been kept.
  test("a failure after the first transaction says how many objects were kept", async () => {
    const c = await cluster();
    const many = Array.from({ length: 40 }, (_, i) => svc(`t-${i}`, i === 39 ? { clusterIP: "10.97.0.1" } : {}));
    await assert.rejects(applyObjects(c, many), /ClusterIP 10\.97\.0\.1 is outside every service CIDR.*\(the \d+ object\(s\) before it were applied and kept\)$/);
  });
});

describe("Namespaces, NetworkPolicies and ClusterNetworkPolicies in the store", () => {
  const ns = (name: string, labels: Record<string, string> = {}) => ({ apiVersion: "v1", kind: "Namespace", metadata: { name, labels } });
  const netpol = (namespace: string, name: string, spec: object = { podSelector: {} }) => ({ apiVersion: "networking.k8s.io/v1", kind: "NetworkPolicy", metadata: { namespace, name }, spec });
  const admin = (name: string, priority: number) => ({
    apiVersion: "policy.networking.k8s.io/v1beta1",
    kind: "ClusterNetworkPolicy",
    metadata: { name, namespace: "ignored" },
    spec: { tier: "Admin", priority, subject: { namespaces: {} }, ingress: [{ action: "Deny", from: [{ namespaces: { matchLabels: { team: "b" } } }] }] },
  });

  // Bug caught: a kind written under another's key, a cluster-scoped object keyed by a namespace
  // the apiserver would clear, re-applying the same object reported as a change, or an invalid
  // policy kept with the valid objects of its apply.
  test("apply, re-apply, list and delete each kind, all or nothing", async () => {
    const c = await cluster();
    const first = await applyObjects(c, [ns("team-a", { team: "a" }), netpol("team-a", "deny-all"), admin("block-b", 10)]);
    assert.deepEqual(first.result.map((r) => `${r.kind} ${r.namespace}/${r.name} ${r.outcome}`), ["Namespace /team-a created", "NetworkPolicy team-a/deny-all created", "ClusterNetworkPolicy /block-b created"]);
    assert.ok(await c.store.get("/clusternetworkpolicies/block-b"));
    assert.ok(await c.store.get("/namespaces/team-a"));
    assert.ok(await c.store.get("/networkpolicies/team-a/deny-all"));
    const again = await applyObjects(c, [ns("team-a", { team: "a" }), netpol("team-a", "deny-all"), admin("block-b", 10)]);
    assert.deepEqual(again.result.map((r) => r.outcome), ["unchanged", "unchanged", "unchanged"]);
    assert.deepEqual((await applyObjects(c, [admin("block-b", 20)])).result.map((r) => r.outcome), ["configured"]);

    await assert.rejects(applyObjects(c, [netpol("team-a", "second"), netpol("team-a", "bad", { podSelector: {}, ingress: [{ from: [{}] }] })]), /The NetworkPolicy "bad" is invalid: spec\.ingress\[0\]\.from\[0\]: Required value: must specify a peer/);
    assert.equal(await c.store.get("/networkpolicies/team-a/second"), undefined);

    const { objects } = await listObjects<Namespace>(c.store, "Namespace");
    assert.deepEqual(objects.map((object) => object.metadata.labels), [{ team: "a", "kubernetes.io/metadata.name": "team-a" }]);
    await assert.rejects(deleteObjects(c, [admin("missing", 1)]), /^Error: clusternetworkpolicies\.policy\.networking\.k8s\.io "missing" not found$/);
    assert.deepEqual((await deleteObjects(c, [admin("block-b", 1)])).result.map((r) => r.outcome), ["deleted"]);
  });

  // Bug caught: a Namespace deleted while its objects stay (their namespace's labels gone from
  // under them, so a policy's namespaceSelector silently stops matching), or one whose contents
  // are deleted in the same command refused.
  test("a Namespace goes only once it holds nothing, or with its contents in one command", async () => {
    const c = await cluster();
    await applyObjects(c, [ns("team-c"), netpol("team-c", "p1"), svc("in-c", {})].map((o) => (o.kind === "Service" ? { ...o, metadata: { ...o.metadata, namespace: "team-c" } } : o)));
    await assert.rejects(deleteObjects(c, [ns("team-c")]), /^Error: namespaces "team-c" still holds 2 object\(s\) \((services\/in-c, networkpolicies\.networking\.k8s\.io\/p1|networkpolicies\.networking\.k8s\.io\/p1, services\/in-c)\): delete them first/);
    assert.ok(await c.store.get("/namespaces/team-c"));
    const { result } = await deleteObjects(c, [netpol("team-c", "p1"), { ...svc("in-c", {}), metadata: { name: "in-c", namespace: "team-c" } }, ns("team-c")]);
    assert.deepEqual(result.map((r) => r.outcome), ["deleted", "deleted", "deleted"]);
  });
});
