import assert from "node:assert/strict";
import { after, describe, it } from "node:test";
import { temporaryStores } from "../../test/support/cluster.js";
import { storePolicySource } from "./policy-source.js";

const stores = temporaryStores();
after(() => stores.cleanup());

describe("policy objects from the Trellis store", () => {
  // Catches an object written to the store by other means than `trellis apply` taken as it is:
  // a policy the apiserver would refuse (here a peer of no kind, which must not read as "from
  // anywhere") reaching the rules, or one that does not parse stopping every later write.
  it("reads policies and namespaces as apply takes them; one apply would refuse counts as absent", async () => {
    const store = stores.open();
    const good = { apiVersion: "networking.k8s.io/v1", kind: "NetworkPolicy", metadata: { namespace: "x", name: "good" }, spec: { podSelector: {}, egress: [{ ports: [{ port: 53, protocol: "UDP" }] }] } };
    const bad = { apiVersion: "networking.k8s.io/v1", kind: "NetworkPolicy", metadata: { namespace: "x", name: "bad" }, spec: { podSelector: {}, ingress: [{ from: [{}] }] } };
    const put = (key: string, value: string) => store.txn({ compares: [], operations: [{ type: "put", key, value }] });
    await put("/networkpolicies/x/good", JSON.stringify(good));
    await put("/networkpolicies/x/bad", JSON.stringify(bad));
    await put("/networkpolicies/x/broken", "{not json");
    await put("/namespaces/x", JSON.stringify({ apiVersion: "v1", kind: "Namespace", metadata: { name: "x", labels: { team: "a" } } }));
    const source = storePolicySource(store);
    const policies = await source.list<{ metadata: { name: string }; spec: { policyTypes: string[] } }>("networkpolicies");
    assert.deepEqual(policies.map((policy) => [policy.metadata.name, policy.spec.policyTypes]), [["good", ["Ingress", "Egress"]]]);
    const namespaces = await source.list<{ metadata: { name: string; labels: Record<string, string> } }>("namespaces");
    assert.deepEqual(namespaces.map((namespace) => namespace.metadata.labels), [{ team: "a", "kubernetes.io/metadata.name": "x" }]);
  });
});
