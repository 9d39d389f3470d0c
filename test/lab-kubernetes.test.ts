/**
 * `lab up --kubernetes`: the lab as a real cluster. The real scheduler, ReplicaSet, Deployment
 * and EndpointSlice controllers do their part; the lab's kubelets attach pods through CNI; the
 * agents and their proxies follow the API. Driven through Debian's own kubectl (kubernetes-client
 * 1.20, unpacked by scripts/build-kube.sh) with the kubeconfig `lab kubeconfig` prints, as a user
 * of the lab would, and checked with
 * `lab check`, ported from the sig-network e2e checks: pod to pod on both families, node to pod,
 * Services (basic, multi-port, NodePort, session affinity, TCP and UDP on one port), endpoints
 * following a Deployment scaled up and down, and no pod address handed out twice.
 */
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { listPolicyWorld } from "../src/agent/policy-loop.js";
import { kubePolicySource } from "../src/agent/policy-source.js";
import { KubeClient } from "../src/kube/client.js";
import { loadKubeconfig } from "../src/kube/config.js";
import { startDetached } from "../src/lab/processes.js";
import { judge } from "../src/policy/judge.js";
import { KUBE_BIN } from "./support/kube.js";
import { downAll, labCheck, labExec, labName, labStatus, runTrellis, waitFor } from "./support/lab.js";

after(() => downAll());

interface PodJson {
  metadata: { name: string; labels?: Record<string, string> };
  spec: { nodeName?: string };
  status: { phase?: string; podIP?: string; podIPs?: Array<{ ip: string }> };
}

describe("lab up --kubernetes: a real control plane, kubectl and lab check", { timeout: 900_000 }, () => {
  const name = labName("k8s");
  let kubeconfig = "";
  const kubectl = (args: readonly string[], input?: string) => {
    const run = spawnSync(join(KUBE_BIN, "kubectl-debian"), ["--kubeconfig", kubeconfig, ...args], { encoding: "utf8", input, timeout: 120_000 });
    if (run.status !== 0) throw new Error(`kubectl ${args.join(" ")} failed: ${run.stderr}`);
    return run.stdout;
  };
  const pods = (selector?: string) => (JSON.parse(kubectl(["get", "pods", ...(selector ? ["-l", selector] : []), "-o", "json"])) as { items: PodJson[] }).items;
  const failures = (check: ReturnType<typeof labCheck>) => check.probes.filter((probe) => !probe.ok).map((probe) => `${probe.from} -> ${probe.to} ${probe.kind}: ${probe.error}`);

  before(() => {
    // Two zones, one node each: the EndpointSlice controller's hints (trafficDistribution) have somewhere to point.
    const up = runTrellis(["lab", "up", "--kubernetes", "--name", name, "--nodes", "2", "--pods-per-node", "1", "--mode", "vxlan", "--zones", "2"], 600_000);
    assert.equal(up.status, 0, up.stdout + up.stderr);
    kubeconfig = runTrellis(["lab", "kubeconfig", "--name", name]).stdout.trim();
    assert.ok(existsSync(kubeconfig), `lab kubeconfig printed ${kubeconfig}`);
  });

  it("registers every node with dual-stack pod CIDRs, and every pod has both families, podIP first", () => {
    const nodes = (JSON.parse(kubectl(["get", "nodes", "-o", "json"])) as { items: Array<{ metadata: { name: string; annotations?: Record<string, string> }; spec: { podCIDRs?: string[] }; status: { conditions: Array<{ type: string; status: string }> } }> }).items;
    assert.deepEqual(nodes.map((node) => node.metadata.name).sort(), ["node1", "node2"]);
    for (const node of nodes) {
      assert.equal(node.spec.podCIDRs?.length, 2, `${node.metadata.name} has a pod CIDR per family`);
      assert.ok(node.metadata.annotations?.["trellis.dev/node-addresses"], `${node.metadata.name}'s agent published its addresses`);
      assert.deepEqual(node.status.conditions.filter((condition) => ["Ready", "NetworkUnavailable"].includes(condition.type)).map((condition) => `${condition.type}=${condition.status}`).sort(), ["NetworkUnavailable=False", "Ready=True"]);
    }
    // Bug caught (the dual-stack e2e check): podIP not podIPs[0], or one family missing.
    for (const pod of pods("app=probe")) {
      assert.equal(pod.status.phase, "Running");
      assert.equal(pod.status.podIPs?.length, 2, `${pod.metadata.name} has both families`);
      assert.equal(pod.status.podIP, pod.status.podIPs![0].ip);
      assert.ok(!pod.status.podIP!.includes(":"), "IPv4 is the primary family");
    }
  });

  it("lab check passes: pod to pod on both families (ICMP, TCP with the source seen), node to pod, pod to external", () => {
    const check = labCheck(name);
    assert.deepEqual(failures(check), []);
    assert.ok(check.total > 0);
  });

  it("a Deployment exposed with kubectl: basic, multi-port, NodePort, affinity, dual-stack and UDP Services, following scale up and down", async () => {
    kubectl(["create", "deployment", "web", "--image=trellis-probe", "--port=8080", "--replicas=3"]);
    kubectl(["expose", "deployment", "web", "--port=80", "--target-port=8080"]);
    kubectl(["apply", "-f", "-"], [
      "apiVersion: v1\nkind: Service\nmetadata: {name: web-multi}\nspec:\n  type: NodePort\n  ipFamilyPolicy: RequireDualStack\n  selector: {app: web}\n  ports:\n  - {name: http, port: 80, targetPort: 8080}\n  - {name: probe, port: 81, targetPort: 7777}\n  - {name: probe-udp, port: 81, protocol: UDP, targetPort: 7777}\n",
      "apiVersion: v1\nkind: Service\nmetadata: {name: web-sticky}\nspec:\n  type: NodePort\n  sessionAffinity: ClientIP\n  selector: {app: web}\n  ports: [{port: 80, targetPort: 8080}]\n",
    ].join("---\n"));
    const running = (count: number) => pods("app=web").filter((pod) => pod.status.phase === "Running" && pod.status.podIPs?.length === 2).length === count;
    await waitFor("3 web pods running", () => running(3), 60_000);
    // The EndpointSlice controller writes a pod's endpoint a moment after the pod runs.
    const readyEndpoints = (service: string) =>
      (JSON.parse(kubectl(["get", "endpointslices", "-l", `kubernetes.io/service-name=${service}`, "-o", "json"])) as { items: Array<{ endpoints?: Array<{ conditions?: { ready?: boolean } }> }> }).items
        .flatMap((slice) => slice.endpoints ?? [])
        .filter((endpoint) => endpoint.conditions?.ready).length;
    await waitFor("web's EndpointSlice lists its 3 pods ready", () => readyEndpoints("web") === 3, 60_000);
    let check = labCheck(name);
    await waitFor("lab check passes with the Services", () => failures((check = labCheck(name))).length === 0, 60_000).catch(() => undefined);
    assert.deepEqual(failures(check), []);
    const served = (service: string) => new Set(check.probes.filter((probe) => probe.to === `svc/${service}` && probe.ok).map((probe) => (probe as { answeredBy?: string }).answeredBy));
    // Bug caught: endpoints not taken from the EndpointSlice controller's slices (no Service
    // answers, one pod answers all, or something else answers). Which of the 3 answers each of a
    // check's 5 probes is random, all by one 1 time in 81, so up to 4 more checks are pooled.
    const webPods = new Set(pods("app=web").map((pod) => pod.metadata.name));
    const servedWeb = served("web");
    for (let round = 0; round < 4 && servedWeb.size < 2; round++) {
      for (const probe of labCheck(name).probes) if (probe.to === "svc/web" && probe.ok) servedWeb.add((probe as { answeredBy?: string }).answeredBy);
    }
    assert.ok(servedWeb.size >= 2 && [...servedWeb].every((server) => webPods.has(server!)), `web answered by ${[...servedWeb].join(", ")}`);
    assert.ok(check.probes.some((probe) => probe.to === "svc/web-multi" && probe.kind === "udp" && probe.ok), "the UDP port beside the TCP one answers");
    assert.ok(check.probes.some((probe) => probe.to === "svc/web-multi" && probe.from === "external" && probe.ok), "the NodePort answers from outside");
    // Bug caught: affinity kept for pods' ClusterIP connections but not through a NodePort.
    const stickyNodePort = check.probes.filter((probe) => probe.to === "svc/web-sticky" && probe.from === "external" && (probe as { expectOneServerOf?: number }).expectOneServerOf === 20);
    assert.ok(stickyNodePort.length > 0 && stickyNodePort.every((probe) => probe.ok), JSON.stringify(stickyNodePort));
    assert.ok(check.probes.some((probe) => probe.to === "svc/web-multi" && probe.kind === "tcp" && (probe as { family?: string }).family === "IPv6" && probe.ok), "the secondary family's ClusterIP answers");

    kubectl(["scale", "deployment", "web", "--replicas=5"]);
    await waitFor("5 web pods running", () => running(5), 60_000);
    await waitFor("lab check passes after scaling up", () => failures((check = labCheck(name))).length === 0, 60_000).catch(() => undefined);
    assert.deepEqual(failures(check), []);
    const addresses = pods("app=web").flatMap((pod) => pod.status.podIPs!.map((ip) => ip.ip));
    assert.equal(new Set(addresses).size, addresses.length, "no pod address handed out twice");

    kubectl(["scale", "deployment", "web", "--replicas=1"]);
    await waitFor("1 web pod left", () => pods("app=web").length === 1 && running(1), 60_000);
    await waitFor("lab check passes after scaling down", () => failures((check = labCheck(name))).length === 0, 60_000).catch(() => undefined);
    assert.deepEqual(failures(check), []);
    // Bug caught: the kubelet's DEL not run for deleted pods (their namespaces left behind).
    const status = JSON.parse(runTrellis(["lab", "status", "--name", name, "--json"]).stdout) as { pods: Array<{ name: string }> };
    assert.equal(status.pods.filter((pod) => pod.name.startsWith("web-")).length, 1);
  });

  // Bugs caught: the EndpointSlice controller's hints ignored on the API (a PreferClose Service
  // answering across zones), this node's zone not read from its Node label, or the hints obeyed
  // where a zone has no endpoint (kube-proxy falls back to every endpoint).
  it("trafficDistribution PreferClose: the controller's zone hints keep each pod's connections in its zone", async () => {
    const node = (nodeName: string) => JSON.parse(kubectl(["get", "node", nodeName, "-o", "json"])) as { metadata: { labels: Record<string, string> } };
    assert.equal(node("node1").metadata.labels["topology.kubernetes.io/zone"], "zone-1");
    assert.equal(node("node2").metadata.labels["topology.kubernetes.io/zone"], "zone-2");
    kubectl(["create", "deployment", "near", "--image=trellis-probe", "--port=7777", "--replicas=4"]);
    kubectl(["apply", "-f", "-"], "apiVersion: v1\nkind: Service\nmetadata: {name: near}\nspec:\n  trafficDistribution: PreferClose\n  selector: {app: near}\n  ports: [{port: 80, targetPort: 7777}]\n");
    await waitFor("4 near pods running", () => pods("app=near").filter((pod) => pod.status.phase === "Running").length === 4, 60_000);
    const hinted = () => (JSON.parse(kubectl(["get", "endpointslices", "-l", "kubernetes.io/service-name=near", "-o", "json"])) as { items: Array<{ endpoints?: Array<{ conditions?: { ready?: boolean }; hints?: { forZones?: Array<{ name: string }> } }> }> }).items
      .flatMap((slice) => slice.endpoints ?? []).filter((endpoint) => endpoint.conditions?.ready && endpoint.hints?.forZones?.length).length;
    await waitFor("the controller hints near's 4 endpoints", () => hinted() === 4, 60_000);
    let check = labCheck(name);
    await waitFor("lab check passes with near", () => failures((check = labCheck(name))).length === 0, 60_000).catch(() => undefined);
    assert.deepEqual(failures(check), []);
    const zoneProbes = check.probes.filter((probe) => probe.to === "svc/near" && (probe as { expectEachServerOf?: number }).expectEachServerOf === 20);
    assert.ok(zoneProbes.length >= 2, "a zone probe from each lab pod");
    const onNode = (pod: string) => pods().find((candidate) => candidate.metadata.name === pod)?.spec.nodeName;
    for (const probe of zoneProbes) {
      const expected = (probe as { expectedServers?: string[] }).expectedServers ?? [];
      const local = expected.filter((server) => onNode(server) === onNode(probe.from));
      // Each zone is one node: while the client's node runs a near pod, only its node's pods are expected.
      if (local.length) assert.deepEqual(expected, local, `${probe.from}: only its zone's endpoints expected`);
    }
    kubectl(["delete", "deployment", "near"]);
    kubectl(["delete", "service", "near"]);
  });

  it("hairpin: a pod reaches itself through its own Service", async () => {
    kubectl(["apply", "-f", "-"], "apiVersion: v1\nkind: Service\nmetadata: {name: self}\nspec:\n  selector: {trellis.dev/lab-pod: node1-pod0}\n  ports: [{port: 80, targetPort: 7777}]\n");
    let check = labCheck(name);
    await waitFor("the Service answers", () => failures((check = labCheck(name))).length === 0 && check.probes.some((probe) => probe.to === "svc/self"), 30_000).catch(() => undefined);
    // Bug caught: a pod's packets to its own Service dropped (no hairpin on the bridge, or not masqueraded back).
    const hairpin = check.probes.filter((probe) => probe.from === "node1-pod0" && probe.to === "svc/self");
    assert.ok(hairpin.length > 0 && hairpin.every((probe) => probe.ok && (probe as { answeredBy?: string }).answeredBy === "node1-pod0"), JSON.stringify(hairpin));
    kubectl(["delete", "service", "self"]);
  });

  it("conntrack: a UDP client that keeps sending follows its server pod when the pod is replaced", async () => {
    kubectl(["create", "deployment", "udp", "--image=trellis-probe", "--port=9053"]);
    kubectl(["apply", "-f", "-"], "apiVersion: v1\nkind: Service\nmetadata: {name: udp}\nspec:\n  selector: {app: udp}\n  ports: [{port: 53, protocol: UDP, targetPort: 9053}]\n");
    await waitFor("the udp pod running", () => pods("app=udp").some((pod) => pod.status.phase === "Running"), 60_000);
    const first = pods("app=udp")[0]!.metadata.name;
    const ip = (JSON.parse(kubectl(["get", "service", "udp", "-o", "json"])) as { spec: { clusterIP: string } }).spec.clusterIP;
    const status = JSON.parse(runTrellis(["lab", "status", "--name", name, "--json"]).stdout) as { pods: Array<{ name: string; netns: string }> };
    const from = status.pods.find((pod) => pod.name === "node2-pod0")!;
    // One socket, one source port, a datagram every 50 ms: one conntrack flow for all of them.
    const script = `const s=require("dgram").createSocket("udp4");s.bind(40053,()=>{setInterval(()=>s.send("x",53,process.argv[1]),50)});s.on("message",(m)=>console.log(String(m).trim()))`;
    const client = spawn("nsenter", [`--net=${from.netns}`, process.execPath, "-e", script, ip], { stdio: ["ignore", "pipe", "inherit"] });
    let heard = "";
    client.stdout!.on("data", (chunk: Buffer) => (heard += chunk.toString()));
    try {
      await waitFor(`the client hears ${first}`, () => heard.includes(first), 20_000);
      kubectl(["delete", "pod", first, "--wait=false"]);
      let second = "";
      // Bug caught (kubernetes#48370, #19029): the flow stays with the deleted pod, or with the
      // rejection of the moment the Service had no endpoint, for as long as the client sends.
      await waitFor("the same client hears the replacement pod", () => {
        second = pods("app=udp").map((pod) => pod.metadata.name).find((podName) => podName !== first && heard.includes(podName)) ?? "";
        return second !== "";
      }, 60_000);
    } finally {
      client.kill("SIGKILL");
      kubectl(["delete", "deployment", "udp"]);
      kubectl(["delete", "service", "udp"]);
    }
  });

  it("the agent killed and restarted while a Deployment scales: every pod runs, no address twice, the check passes", async () => {
    const status = () => JSON.parse(runTrellis(["lab", "status", "--name", name, "--json"]).stdout) as { nodes: Array<{ name: string; netns: string; agentPid: number; agentArgv: string[]; agentLog: string }> };
    const node = status().nodes.find((each) => each.name === "node2")!;
    process.kill(node.agentPid, "SIGKILL");
    kubectl(["scale", "deployment", "web", "--replicas=6"]);
    await new Promise((resolveWait) => setTimeout(resolveWait, 2_000));
    // Started again as lab up started it, logging where it did; lab down stops it with everything in the node's namespace.
    startDetached(node.netns, node.agentArgv, node.agentLog);
    await waitFor("6 web pods running", () => pods("app=web").filter((pod) => pod.status.phase === "Running" && pod.status.podIPs?.length === 2).length === 6, 90_000);
    const addresses = pods().flatMap((pod) => pod.status.podIPs?.map((ip) => ip.ip) ?? []);
    // Bug caught: an address handed out twice when ADDs fall back to the standalone plugin while the agent is down.
    assert.equal(new Set(addresses).size, addresses.length, `addresses: ${addresses.join(" ")}`);
    let check = labCheck(name);
    await waitFor("lab check passes after the restart", () => failures((check = labCheck(name))).length === 0, 60_000).catch(() => undefined);
    assert.deepEqual(failures(check), []);
  });

  it("lab pod add and rm make and delete a Pod through the API server, run by the node's lab kubelet", () => {
    const added = runTrellis(["lab", "pod", "add", "extra", "--node", "node2", "--label", "app=extra", "--name", name]);
    assert.equal(added.status, 0, added.stdout + added.stderr);
    const pod = JSON.parse(kubectl(["get", "pod", "extra", "-o", "json"])) as PodJson;
    assert.deepEqual([pod.spec.nodeName, pod.status.phase, pod.metadata.labels?.app, pod.status.podIPs?.length], ["node2", "Running", "extra", 2]);
    // Bug caught: lab pod add writing to a Trellis store the Kubernetes lab does not have.
    assert.match(runTrellis(["lab", "pod", "add", "extra", "--node", "node1", "--name", name]).stderr, /already has a pod named extra/);
    const netns = (JSON.parse(runTrellis(["lab", "status", "--name", name, "--json"]).stdout) as { pods: Array<{ name: string; netns: string }> }).pods.find((each) => each.name === "extra")?.netns;
    assert.ok(netns && existsSync(netns), "its namespace exists");
    const removed = runTrellis(["lab", "pod", "rm", "extra", "--name", name]);
    assert.equal(removed.status, 0, removed.stderr);
    assert.deepEqual(pods("app=extra"), []);
    assert.ok(!existsSync(netns), "its namespace is gone");
    assert.match(runTrellis(["lab", "pod", "rm", "extra", "--name", name]).stderr, /runs no Pod "extra"/);
  });

  // Bug caught: a pod named after a node accepted by lab pod add; a Pod made with kubectl and
  // called node1 listed as "node1", so that `lab exec node1` could mean the node or the pod;
  // pods added after lab up unknown to `lab exec`.
  it("a name means one member: lab pod add refuses a host's name, a kubectl Pod called node1 is default/node1", async () => {
    const statusBefore = runTrellis(["lab", "status", "--name", name, "--json"]).stdout;
    const refused = runTrellis(["lab", "pod", "add", "node1", "--node", "node2", "--name", name]);
    assert.notEqual(refused.status, 0);
    assert.ok(refused.stderr.includes('pod name "node1" is taken by the lab\'s node node1; lab members are named uniquely: nodes node1, node2, external, underlay, control, and its pods'), refused.stderr);
    assert.ok(runTrellis(["lab", "pod", "add", "control", "--node", "node2", "--name", name]).stderr.includes('pod name "control" is taken by the lab\'s control-plane host'));
    assert.equal(runTrellis(["lab", "status", "--name", name, "--json"]).stdout, statusBefore, "the refused pods changed nothing");
    kubectl(["apply", "-f", "-"], JSON.stringify({ apiVersion: "v1", kind: "Pod", metadata: { name: "node1" }, spec: { nodeName: "node2", containers: [{ name: "probe", image: "trellis-probe" }] } }));
    try {
      let listed: Array<{ name: string; addresses: string[] }> = [];
      await waitFor("the kubectl Pod node1 runs", () => (listed = labStatus(name).pods.filter((pod) => pod.name.endsWith("node1"))).length === 1, 60_000);
      assert.equal(listed[0].name, "default/node1");
      assert.match(labExec(name, "node1", ["ip", "-o", "-4", "address", "show", "dev", "eth0"]), /inet 198\.18\.0\.11\//, "node1 is still the node");
      assert.ok(labExec(name, "default/node1", ["ip", "-o", "-4", "address", "show", "dev", "eth0"]).includes(`inet ${listed[0].addresses[0]}/`), "default/node1 is the Pod");
      const removed = runTrellis(["lab", "pod", "rm", "default/node1", "--name", name]);
      assert.equal(removed.status, 0, removed.stderr);
    } finally {
      spawnSync(join(KUBE_BIN, "kubectl-debian"), ["--kubeconfig", kubeconfig, "delete", "pod", "node1", "--ignore-not-found", "--wait=false"]);
    }
  });

  // Bugs caught (on the lab, with the manifest's RBAC and Node-bound tokens): a Node claiming
  // node1's pod CIDRs routed to by node2 (node1's pods' traffic sent to the thief) or replacing
  // node1's route to its own pods; a tenant's externalIPs naming another Service's ClusterIP
  // taking its traffic; neither said as an Event.
  it("a hostile Node and a tenant's externalIPs take nothing: routes, rules and lab check unchanged, Events written", async () => {
    const status = labStatus(name);
    const routes = () => status.nodes.map((node) => ["-4", "-6"].map((family) => labExec(name, node.name, ["ip", family, "route", "show", "table", "main"])).join("")).join("\n");
    const before = routes();
    const node1 = JSON.parse(kubectl(["get", "node", "node1", "-o", "json"])) as { spec: { podCIDRs: string[] } };
    kubectl(["apply", "-f", "-"], JSON.stringify({ apiVersion: "v1", kind: "Service", metadata: { name: "victim" }, spec: { selector: { app: "probe" }, ports: [{ port: 80, targetPort: 7777 }] } }));
    const victim = JSON.parse(kubectl(["get", "service", "victim", "-o", "json"])) as { spec: { clusterIP: string } };
    kubectl(["apply", "-f", "-"], JSON.stringify({ apiVersion: "v1", kind: "Node", metadata: { name: "thief", annotations: { "trellis.dev/node-addresses": "198.18.0.30" } }, spec: { podCIDR: node1.spec.podCIDRs[0], podCIDRs: node1.spec.podCIDRs } }));
    kubectl(["apply", "-f", "-"], JSON.stringify({ apiVersion: "v1", kind: "Service", metadata: { name: "grab" }, spec: { selector: { app: "probe" }, externalIPs: [victim.spec.clusterIP], ports: [{ port: 80, targetPort: 7777 }] } }));
    const refused = (object: string, reason: string) => status.nodes.every((node) => readFileSync(node.agentLog, "utf8").split("\n").some((line) => line.includes('"msg":"refused"') && line.includes(`"object":"${object}"`) && line.includes(`"reason":"${reason}"`)));
    try {
      await waitFor("every agent refuses the thief and the grab", () => refused("thief", "pod-cidr-conflict") && refused("default/grab", "external-ip-reserved"), 30_000);
      const events = () => (JSON.parse(kubectl(["get", "events", "--all-namespaces", "-o", "json"])) as { items: Array<{ reason: string; involvedObject: { name: string } }> }).items;
      await waitFor("Events on the Node and the Service", () => events().some((event) => event.involvedObject.name === "thief" && event.reason === "PodCIDRConflict") && events().some((event) => event.involvedObject.name === "grab" && event.reason === "ExternalIPReserved"), 30_000);
      await new Promise((resolve) => setTimeout(resolve, 4_500));
      assert.equal(routes(), before, "no node's routes changed");
      for (const node of status.nodes) assert.match(labExec(name, node.name, ["nft", "list", "ruleset"]), new RegExp(`${victim.spec.clusterIP.replace(/[.]/g, "\\.")} \\. tcp \\. 80 : goto svc-[0-9a-f]+-default/victim/`), `${node.name}: the victim's ClusterIP leads to the victim`);
      assert.deepEqual(failures(labCheck(name)), []);
    } finally {
      kubectl(["delete", "node", "thief", "--ignore-not-found"]);
      kubectl(["delete", "service", "grab", "victim", "--ignore-not-found"]);
    }
  });

  it("NetworkPolicy through kubectl: node2-pod0 takes TCP on its named port from node1-pod0 alone, across nodes and on both families; deleted, everything passes again", async () => {
    // Catches: a policy not enforced on the node of the pod it selects, peers or named ports
    // resolved wrongly, replies of an allowed connection dropped, other pods or families let
    // through, and rules left after the policy went.
    const target = "node2-pod0";
    kubectl(["apply", "-f", "-"], JSON.stringify({
      apiVersion: "networking.k8s.io/v1", kind: "NetworkPolicy", metadata: { name: "only-node1-pod0", namespace: "default" },
      spec: { podSelector: { matchLabels: { "trellis.dev/lab-pod": target } }, ingress: [{ from: [{ podSelector: { matchLabels: { "trellis.dev/lab-pod": "node1-pod0" } } }], ports: [{ port: "probe" }] }] },
    }));
    try {
      // What the policy refuses: every probe to the pod (pods' and other nodes' ICMP, TCP, UDP)
      // but TCP from node1-pod0 and whatever its own node sends it (a kubelet's probes).
      const refused = (probe: ReturnType<typeof labCheck>["probes"][number]) =>
        probe.to === target && !(probe.from === "node1-pod0" && probe.kind === "tcp") && probe.from !== "node2";
      let check = labCheck(name);
      const matches = () => check.probes.every((probe) => probe.ok !== refused(probe));
      await waitFor("the check refuses exactly what the policy does", () => matches() || ((check = labCheck(name)), false), 60_000).catch(() => undefined);
      const wrong = check.probes.filter((probe) => probe.ok === refused(probe)).map((probe) => `${probe.from} -> ${probe.to} ${probe.kind}/${(probe as { family?: number }).family}: ${probe.ok ? "passed" : "refused"}`);
      assert.deepEqual(wrong, []);
      assert.ok(check.probes.some((probe) => probe.from === "node1-pod0" && probe.to === target && probe.kind === "tcp" && probe.ok), "the allowed pair was probed");
      assert.ok(check.probes.filter(refused).length >= 4, "refusals were probed on both families");
      // explain says the same, from the same objects, with the deciding policy and rule.
      const explain = (args: string[]) => runTrellis(["policy", "explain", "--kubeconfig", kubeconfig, "--from", "default/node1-pod0", "--to", `default/${target}`, ...args]);
      const allowed = explain(["--port", "7777/TCP", "--family", "6"]);
      assert.equal(allowed.status, 0, allowed.stderr);
      assert.match(allowed.stdout, /^default\/node1-pod0 \(fd00:[0-9a-f:]+\) -> default\/node2-pod0 \(fd00:[0-9a-f:]+\) port 7777\/TCP: ALLOWED$/m);
      assert.match(allowed.stdout, /NetworkPolicy default\/only-node1-pod0 ingress\[0\]: allow/);
      const denied = explain(["--port", "7777/UDP"]);
      assert.match(denied.stdout, /port 7777\/UDP: DENIED/);
      assert.match(denied.stdout, /ingress at default\/node2-pod0 \([0-9.]+\): denied\n    NetworkPolicy default\/only-node1-pod0: isolates/);
      const unknown = explain(["--port", "7777", "--to", "default/nope"]);
      assert.notEqual(unknown.status, 0);
      assert.match(unknown.stderr, /--to default\/nope: no such pod with an address/);
    } finally {
      kubectl(["delete", "networkpolicy", "only-node1-pod0"]);
    }
    let after = labCheck(name);
    await waitFor("lab check passes once the policy is gone", () => failures((after = labCheck(name))).length === 0, 60_000).catch(() => undefined);
    assert.deepEqual(failures(after), []);
  });

  it("pod to pod, cell by cell, both families, TCP and UDP, the kernel does what judge.ts says over the API's objects, through NetworkPolicy, ClusterNetworkPolicy tiers and a relabelled pod", async () => {
    // Catches a disagreement between the rules the agents write from the API and the semantics
    // explain prints, on this datastore as the store lab's test does on the other. A failing
    // step prints both matrices.
    kubectl(["apply", "-f", join(import.meta.dirname, "../deploy/clusternetworkpolicies.yaml")]);
    kubectl(["wait", "--for", "condition=established", "--timeout", "60s", "crd/clusternetworkpolicies.policy.networking.k8s.io"]);
    const lab = (pod: string) => ({ matchLabels: { "trellis.dev/lab-pod": pod } });
    const np = (name: string, spec: object) => ({ apiVersion: "networking.k8s.io/v1", kind: "NetworkPolicy", metadata: { name, namespace: "default" }, spec });
    const cnp = (name: string, spec: object) => ({ apiVersion: "policy.networking.k8s.io/v1beta1", kind: "ClusterNetworkPolicy", metadata: { name }, spec });
    const podNames = ["node1-pod0", "node2-pod0"];
    const steps: Array<{ what: string; objects: object[]; relabel?: boolean }> = [
      { what: "ingress by pod and named port", objects: [np("in-named", { podSelector: lab("node2-pod0"), ingress: [{ from: [{ podSelector: lab("node1-pod0") }], ports: [{ port: "probe" }] }] })] },
      { what: "Admin Deny of UDP from a pod", objects: [cnp("admin-deny-udp", { tier: "Admin", priority: 10, subject: { namespaces: {} }, egress: [{ action: "Deny", to: [{ pods: { namespaceSelector: {}, podSelector: lab("node1-pod0") } }], protocols: [{ udp: { destinationPort: { number: 7777 } } }] }] })] },
      { what: "a Pass handing node1-pod0's TCP to a Baseline Deny", objects: [
        cnp("admin-pass", { tier: "Admin", priority: 20, subject: { pods: { namespaceSelector: {}, podSelector: lab("node1-pod0") } }, ingress: [{ action: "Pass", from: [{ namespaces: {} }] }] }),
        cnp("baseline-deny", { tier: "Baseline", priority: 5, subject: { pods: { namespaceSelector: {}, podSelector: lab("node1-pod0") } }, ingress: [{ action: "Deny", from: [{ pods: { namespaceSelector: {}, podSelector: lab("node2-pod0") } }] }] }),
      ] },
      { what: "node1-pod0 relabelled out of every selector", objects: [], relabel: true },
    ];
    const client = new KubeClient(loadKubeconfig(kubeconfig));
    try {
      for (const [index, step] of steps.entries()) {
        for (const object of step.objects) kubectl(["apply", "-f", "-"], JSON.stringify(object));
        if (step.relabel) kubectl(["label", "pod", "node1-pod0", "--overwrite", "trellis.dev/lab-pod=renamed"]);
        const { world, pods: policyPods } = await listPolicyWorld(kubePolicySource(client));
        const expected = (probe: { from: string; to: string; kind: string; family?: string }) => {
          const family = probe.family === "IPv6" ? 6 : 4;
          const end = (pod: string) => {
            const found = policyPods.find((candidate) => candidate.name === pod && candidate.namespace === "default")!;
            return { pod: found, address: found.ips.find((ip) => ip.family === family)! };
          };
          return judge(world, { from: end(probe.from), to: end(probe.to), protocol: probe.kind === "udp" ? "UDP" : "TCP", port: 7777 }).allowed;
        };
        const cells = (probe: { from: string; to: string; kind: string }) => (probe.kind === "tcp" || probe.kind === "udp") && podNames.includes(probe.from) && podNames.includes(probe.to);
        let check = labCheck(name);
        const wrong = () => check.probes.filter((probe) => cells(probe) && probe.ok !== expected(probe)).map((probe) => `${probe.from} -> ${probe.to} ${probe.kind}/${(probe as { family?: string }).family}: ${probe.ok ? "passed" : "refused"}`);
        await waitFor("the kernel agrees with judge.ts", () => wrong().length === 0 || ((check = labCheck(name)), false), 60_000).catch(() => undefined);
        const matrix = (pick: (probe: { from: string; to: string; kind: string; ok: boolean; family?: string }) => boolean) =>
          ["IPv4", "IPv6"].flatMap((family) => ["tcp", "udp"].map((kind) => `${family} ${kind}: ` + podNames.map((from) => `${from} ${podNames.map((to) => {
            if (to === from) return "-";
            const probe = check.probes.find((candidate) => candidate.from === from && candidate.to === to && candidate.kind === kind && (candidate as { family?: string }).family === family);
            return probe ? (pick(probe) ? "." : "X") : "?";
          }).join("")}`).join("; "))).join("\n");
        assert.deepEqual(wrong(), [], `step ${index + 1}, ${step.what}: the kernel\n${matrix((probe) => probe.ok)}\njudge.ts\n${matrix(expected)}`);
        assert.ok(check.probes.some((probe) => cells(probe) && !probe.ok), `step ${index + 1} refuses something`);
      }
    } finally {
      client.close();
      kubectl(["label", "pod", "node1-pod0", "--overwrite", "trellis.dev/lab-pod=node1-pod0"]);
      kubectl(["delete", "networkpolicy", "in-named", "--ignore-not-found"]);
      kubectl(["delete", "clusternetworkpolicies.policy.networking.k8s.io", "admin-deny-udp", "admin-pass", "baseline-deny", "--ignore-not-found"]);
    }
    let open = labCheck(name);
    await waitFor("lab check passes once the policies are gone", () => failures((open = labCheck(name))).length === 0, 60_000).catch(() => undefined);
    assert.deepEqual(failures(open), []);
  });

  it("lab down removes the control plane, the kubelets and every pod namespace", () => {
    const down = runTrellis(["lab", "down", "--name", name], 120_000);
    assert.equal(down.status, 0, down.stderr);
    const left = spawnSync("ip", ["netns", "list"], { encoding: "utf8" }).stdout.split("\n").filter((line) => line.startsWith(`${name}-`));
    assert.deepEqual(left, []);
    const processes = spawnSync("pgrep", ["-f", `--name ${name}`], { encoding: "utf8" }).stdout.trim();
    assert.equal(processes, "", "no lab process left");
  });
});
