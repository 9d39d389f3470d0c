/**
 * Services in the lab: `lab up` records its pods as Pod objects (with `--pod-labels`), Services
 * applied to the lab's store select them, the agents' proxies implement them, and `lab check`
 * probes every Service port on every ClusterIP from every pod and every NodePort from external.
 */
import assert from "node:assert/strict";
import { after, describe, it } from "node:test";
import { downAll, labCheck, labName, labStatus, runTrellis, waitFor } from "./support/lab.js";

after(() => downAll());

interface CheckProbe {
  from: string;
  to: string;
  toNode?: string;
  kind: string;
  family: string;
  address: string;
  expectOneServerOf?: number;
  ok: boolean;
  answeredBy?: string;
  seenSource?: string;
  expectedSource?: string;
  error?: string;
}

describe("Services in the lab", () => {
  // Bugs caught: lab pods missing from the store (no Service could select them), the check
  // ignoring Services, or any Service path broken across nodes (ClusterIP over VXLAN, NodePort
  // from outside, Local preserving the client's address, rejection without endpoints).
  it("records pods as Pod objects and checks every Service from every pod and its NodePorts from external", { timeout: 300_000 }, async () => {
    const name = labName("svc");
    const up = runTrellis(["lab", "up", "--name", name, "--nodes", "2", "--pods-per-node", "2", "--mode", "vxlan", "--pod-labels", "app=web,tier=front"]);
    assert.equal(up.status, 0, up.stdout + up.stderr);
    const status = labStatus(name);
    const pods = JSON.parse(runTrellis(["get", "pods", "-o", "json", "--store", status.store]).stdout).items as Array<{ metadata: { name: string; labels: Record<string, string> }; spec: { nodeName: string }; status: { podIPs: Array<{ ip: string }> } }>;
    assert.deepEqual(
      pods.map((pod) => [pod.metadata.name, pod.spec.nodeName, pod.metadata.labels, pod.status.podIPs.map((ip) => ip.ip)]),
      status.pods.map((pod) => [pod.name, pod.node, { app: "web", tier: "front", "trellis.dev/lab-pod": pod.name }, pod.addresses]),
    );
    const manifests = [
      "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  type: NodePort\n  ipFamilyPolicy: RequireDualStack\n  externalIPs: [198.19.0.10, 'fd00:198:19::10']\n  selector: {app: web}\n  ports:\n  - {name: tcp, port: 80, targetPort: probe}\n  - {name: udp, port: 53, protocol: UDP, targetPort: 7777}\n",
      "apiVersion: v1\nkind: Service\nmetadata: {name: one}\nspec:\n  type: NodePort\n  externalTrafficPolicy: Local\n  externalIPs: [198.19.0.11]\n  selector: {trellis.dev/lab-pod: node1-pod0}\n  ports: [{port: 8080, targetPort: 7777}]\n",
      "apiVersion: v1\nkind: Service\nmetadata: {name: none}\nspec:\n  selector: {app: nothing}\n  ports: [{port: 80, targetPort: 7777}]\n",
      "apiVersion: v1\nkind: Service\nmetadata: {name: sticky}\nspec:\n  sessionAffinity: ClientIP\n  selector: {app: web}\n  ports: [{port: 80, targetPort: 7777}]\n",
    ].join("---\n");
    const applied = runTrellis(["apply", "-f", "-", "--store", status.store], 60_000, manifests);
    assert.equal(applied.status, 0, applied.stderr);

    let check = labCheck(name);
    await waitFor("lab check passes with the Services", () => (check = labCheck(name)).ok, 20_000).catch(() => undefined);
    const probes = check.probes as CheckProbe[];
    assert.deepEqual(probes.filter((probe) => !probe.ok).map((probe) => `${probe.from} -> ${probe.to} ${probe.kind} ${probe.family}: ${probe.error}`), []);
    const services = probes.filter((probe) => probe.to.startsWith("svc/"));
    // web: 4 pods x 2 families x 2 ports; one and none: 4 pods x IPv4; NodePorts from external:
    // web on 2 nodes x 2 families x 2 ports, one (Local) only on node1; external IPs (routed to
    // node1): web's 2 addresses x 2 ports, one's 1 (its endpoint is on node1).
    // sticky: 4 pods x IPv4, and 4 pods x 20 connections in a row that one endpoint must answer.
    assert.equal(services.filter((probe) => probe.from !== "external").length, 16 + 4 + 4 + 4 + 4);
    const affinity = services.filter((probe) => probe.to === "svc/sticky" && probe.expectOneServerOf === 20);
    assert.equal(affinity.length, 4);
    assert.ok(affinity.every((probe) => probe.ok && probe.answeredBy), JSON.stringify(affinity));
    assert.equal(services.filter((probe) => probe.from === "external").length, 8 + 1 + 4 + 1);
    const viaExternalIp = services.filter((probe) => probe.from === "external" && probe.address.startsWith(status.external.addresses[0].includes(":") ? "fd00:198:19" : "198.19"));
    assert.ok(viaExternalIp.length > 0 && viaExternalIp.every((probe) => probe.ok));
    assert.equal(services.find((probe) => probe.address === "198.19.0.11")?.seenSource, status.external.addresses[0], "Local keeps the client's address on an external IP too");
    // Each check makes 16 random choices among web's 4 endpoints: one may go unpicked by chance
    // (4%), so up to 5 checks' choices are pooled; an endpoint never picked in 80 is a bug.
    const servedWeb = new Set(services.filter((probe) => probe.to === "svc/web" && probe.from !== "external").map((probe) => probe.answeredBy));
    for (let round = 0; round < 4 && servedWeb.size < status.pods.length; round++) {
      for (const probe of labCheck(name).probes as CheckProbe[]) if (probe.to === "svc/web" && probe.from !== "external" && probe.ok) servedWeb.add(probe.answeredBy);
    }
    assert.deepEqual([...servedWeb].sort(), status.pods.map((pod) => pod.name).sort(), "every endpoint served web");
    const local = services.find((probe) => probe.to === "svc/one" && probe.from === "external")!;
    assert.equal(local.seenSource, status.external.addresses[0], "externalTrafficPolicy Local keeps the client's address");
    assert.ok(services.filter((probe) => probe.to === "svc/none").every((probe) => probe.answeredBy === undefined));
    const table = runTrellis(["lab", "check", "--name", name]);
    assert.match(table.stdout, /svc\/none +svc\/one +svc\/sticky +svc\/web +external/);
    assert.match(table.stdout, /pod to Service: every ClusterIP and port answered by an endpoint/);

    // A pod added later joins web's endpoints; removed, it leaves them and the store.
    const added = runTrellis(["lab", "pod", "add", "extra", "--node", "node2", "--label", "app=web", "--name", name]);
    assert.equal(added.status, 0, added.stdout + added.stderr);
    await waitFor("extra serves web", () => {
      check = labCheck(name);
      return check.ok && (check.probes as CheckProbe[]).some((probe) => probe.to === "svc/web" && probe.answeredBy === "extra");
    }, 20_000);
    assert.equal(labStatus(name).pods.find((pod) => pod.name === "extra")?.node, "node2");
    const refused = runTrellis(["lab", "pod", "add", "extra", "--node", "node1", "--name", name]);
    assert.match(refused.stderr, /already has a pod named extra/);
    assert.match(runTrellis(["lab", "pod", "add", "Bad_Name", "--node", "node1", "--name", name]).stderr, /pod name "Bad_Name" is invalid/);
    assert.match(runTrellis(["lab", "pod", "add", "x", "--node", "node9", "--name", name]).stderr, /has no node "node9"; its nodes are node1, node2/);
    const removed = runTrellis(["lab", "pod", "rm", "extra", "--name", name]);
    assert.equal(removed.status, 0, removed.stderr);
    assert.ok(!labStatus(name).pods.some((pod) => pod.name === "extra"));
    assert.doesNotMatch(runTrellis(["get", "pods", "--store", status.store]).stdout, /extra/);
    // A check that starts the moment the pod goes can still send a connection to it: the agents
    // drop it from web's rules a few milliseconds later, but that connection's SYN retries keep
    // its conntrack entry (as with kube-proxy) and time out. The next check must pass.
    await waitFor("web without extra passes the check", () => (check = labCheck(name)).ok, 20_000).catch(() => undefined);
    assert.ok(check.ok, JSON.stringify(check.probes.filter((probe) => !probe.ok)));
    assert.ok(!(check.probes as CheckProbe[]).some((probe) => probe.answeredBy === "extra"), "the removed pod still answers");
  });

  // Bugs caught: a Service's trafficDistribution ignored on the Trellis store (clients answered
  // from other zones), hints made from the wrong node's zone, a zone learnt from a node's record
  // but never used, PreferSameNode judged by zone, or a zone with no endpoint left unanswered.
  it("--zones: a PreferSameZone Service answers from the client's zone, PreferSameNode from its node, and every zone falls back to all", { timeout: 300_000 }, async () => {
    const name = labName("zone");
    const up = runTrellis(["lab", "up", "--name", name, "--nodes", "3", "--pods-per-node", "1", "--zones", "2", "--mode", "vxlan", "--family", "ipv4", "--pod-labels", "app=web"]);
    assert.equal(up.status, 0, up.stdout + up.stderr);
    const status = labStatus(name);
    const manifests = [
      "apiVersion: v1\nkind: Service\nmetadata: {name: near}\nspec:\n  trafficDistribution: PreferSameZone\n  selector: {app: web}\n  ports: [{port: 80, targetPort: 7777}]\n",
      "apiVersion: v1\nkind: Service\nmetadata: {name: mine}\nspec:\n  trafficDistribution: PreferSameNode\n  selector: {app: web}\n  ports: [{port: 80, targetPort: 7777}]\n",
      // zone-1 only (node1 and node3): node2's clients, in zone-2, fall back to them.
      "apiVersion: v1\nkind: Service\nmetadata: {name: far}\nspec:\n  trafficDistribution: PreferClose\n  selector: {zone: one}\n  ports: [{port: 80, targetPort: 7777}]\n",
    ].join("---\n");
    for (const pod of ["node1-pod0", "node3-pod0"]) {
      const labelled = runTrellis(["lab", "pod", "add", `${pod}-z`, "--node", pod.split("-")[0], "--label", "zone=one", "--name", name]);
      assert.equal(labelled.status, 0, labelled.stdout + labelled.stderr);
    }
    const applied = runTrellis(["apply", "-f", "-", "--store", status.store], 60_000, manifests);
    assert.equal(applied.status, 0, applied.stderr);
    let check = labCheck(name);
    await waitFor("lab check passes with the zoned Services", () => (check = labCheck(name)).ok, 30_000).catch(() => undefined);
    const probes = check.probes as Array<CheckProbe & { expectEachServerOf?: number; expectedServers?: string[] }>;
    assert.deepEqual(probes.filter((probe) => !probe.ok).map((probe) => `${probe.from} -> ${probe.to}: ${probe.error}`), []);
    const zoned = (service: string) => Object.fromEntries(probes.filter((probe) => probe.to === `svc/${service}` && probe.expectEachServerOf === 20).map((probe) => [probe.from, probe.expectedServers]));
    // node1 and node3 are zone-1, node2 zone-2; near and mine select the three app=web pods, far
    // the two zone=one pods, one each on node1 and node3.
    const sorted = (list: string[] | undefined) => [...(list ?? [])].sort();
    assert.deepEqual(Object.keys(zoned("near")).sort(), ["node1-pod0", "node1-pod0-z", "node2-pod0", "node3-pod0", "node3-pod0-z"], "a zone probe from every pod");
    assert.deepEqual(sorted(zoned("near")["node1-pod0"]), ["node1-pod0", "node3-pod0"]);
    assert.deepEqual(sorted(zoned("near")["node2-pod0"]), ["node2-pod0"], "zone-2's own endpoint only");
    assert.deepEqual(sorted(zoned("mine")["node3-pod0-z"]), ["node3-pod0"], "PreferSameNode: node3's own endpoint");
    assert.deepEqual(sorted(zoned("far")["node2-pod0"]), ["node1-pod0-z", "node3-pod0-z"], "zone-2 without endpoints: every endpoint");
    const answered = (service: string, from: string) => probes.find((probe) => probe.to === `svc/${service}` && probe.from === from && probe.expectEachServerOf === 20)!;
    assert.ok(answered("near", "node2-pod0").ok && answered("near", "node2-pod0").answeredBy === "node2-pod0");
    // The hints are in the slices the agents work out (trellis get shows the computed ones).
    const slices = JSON.parse(runTrellis(["get", "endpointslices", "-o", "json", "--store", status.store]).stdout).items as Array<{ metadata: { name: string }; endpoints: Array<{ zone?: string; hints?: unknown }> }>;
    const nearSlice = slices.find((slice) => slice.metadata.name.startsWith("near-"));
    assert.ok(nearSlice && nearSlice.endpoints.every((endpoint) => endpoint.zone && endpoint.hints), JSON.stringify(nearSlice));
  });
});
