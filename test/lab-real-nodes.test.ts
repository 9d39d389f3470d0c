/**
 * `lab up --kubelet`: real nodes. Each lab node runs containerd and a real kubelet v1.37.2 in its
 * own network and mount namespaces; Trellis is installed from deploy/trellis.yaml as a DaemonSet
 * of its own image; CoreDNS answers behind kube-dns. Checked with the built kubectl (exec goes
 * API server → kubelet → containerd), `lab check`, a slice of the upstream sig-network e2e
 * suite, the agent's pod deleted and its process killed, and `lab down` leaving nothing behind.
 */
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { KUBE_BIN } from "./support/kube.js";
import { TRELLIS } from "./support/trellis-cni.js";
import { downAll, labCheck, labName, labStatus, runTrellis, waitFor } from "./support/lab.js";

after(() => downAll());

interface PodJson {
  metadata: { name: string; namespace: string; uid: string; labels?: Record<string, string>; deletionTimestamp?: string };
  spec: { nodeName?: string; hostNetwork?: boolean; containers: Array<{ image: string }> };
  status: { phase?: string; podIPs?: Array<{ ip: string }>; containerStatuses?: Array<{ ready: boolean; restartCount: number }> };
}

const AGNHOST = /^registry\.k8s\.io\/e2e-test-images\/agnhost:/;

describe("lab up --kubelet: real kubelets and containerd, Trellis installed as a DaemonSet", { timeout: 1_200_000 }, () => {
  const name = labName("rn");
  let kubeconfig = "";
  let agnhost = "";
  const standardDirsBefore = ["/opt/cni", "/var/lib/cni"].filter((dir) => existsSync(dir));
  const kubectl = (args: readonly string[], input?: string) => {
    const run = spawnSync(join(KUBE_BIN, "kubectl"), ["--kubeconfig", kubeconfig, ...args], { encoding: "utf8", input, timeout: 180_000 });
    if (run.status !== 0) throw new Error(`kubectl ${args.join(" ")} failed: ${run.stderr}`);
    return run.stdout;
  };
  const pods = (args: readonly string[] = []) => (JSON.parse(kubectl(["get", "pods", ...args, "-o", "json"])) as { items: PodJson[] }).items;
  const agentPods = () => pods(["-n", "trellis-system"]);
  const namespaceNames = () => new Set(kubectl(["get", "namespaces", "-o", "jsonpath={.items[*].metadata.name}"]).split(/\s+/).filter(Boolean));
  // An e2e run deletes its namespaces as it ends, in the background; every namespace made since
  // `before` was listed must be gone before a check counts the cluster's Services again.
  const waitForNamespacesGone = (before: ReadonlySet<string>) =>
    waitFor("the suite's namespaces gone", () => [...namespaceNames()].every((ns) => before.has(ns)), 180_000);
  const failures = (check: ReturnType<typeof labCheck>) => check.probes.filter((probe) => !probe.ok).map((probe) => `${probe.from} -> ${probe.to} ${probe.kind}: ${probe.error}`);

  before(() => {
    const up = runTrellis(["lab", "up", "--kubelet", "--name", name, "--nodes", "2", "--pods-per-node", "1"], 600_000);
    assert.equal(up.status, 0, up.stdout + up.stderr);
    kubeconfig = runTrellis(["lab", "kubeconfig", "--name", name]).stdout.trim();
    agnhost = /registry\.k8s\.io\/e2e-test-images\/agnhost:\S+?(?=,|\s)/.exec(up.stdout)?.[0] ?? "";
    assert.match(agnhost, AGNHOST, up.stdout);
  });

  it("kubelets register their Nodes and report them Ready on containerd once the agent pod has written the node's conflist", () => {
    const nodes = (JSON.parse(kubectl(["get", "nodes", "-o", "json"])) as { items: Array<{ metadata: { name: string }; status: { nodeInfo: { kubeletVersion: string; containerRuntimeVersion: string }; conditions: Array<{ type: string; status: string }> } }> }).items;
    assert.deepEqual(nodes.map((node) => node.metadata.name).sort(), ["node1", "node2"]);
    for (const node of nodes) {
      // Bug caught: the lab's stand-in registering Nodes instead of real kubelets.
      assert.equal(node.status.nodeInfo.kubeletVersion, "v1.37.2");
      assert.match(node.status.nodeInfo.containerRuntimeVersion, /^containerd:\/\//);
      assert.deepEqual(node.status.conditions.filter((condition) => ["Ready", "NetworkUnavailable"].includes(condition.type)).map((condition) => `${condition.type}=${condition.status}`).sort(), ["NetworkUnavailable=False", "Ready=True"]);
    }
    const agents = agentPods();
    assert.deepEqual(agents.map((pod) => pod.spec.nodeName).sort(), ["node1", "node2"]);
    for (const pod of agents) {
      assert.equal(pod.status.phase, "Running");
      assert.ok(pod.spec.hostNetwork);
      assert.equal(pod.spec.containers[0].image, "trellis:0.1.0");
    }
    // Each node's conflist is in its own view of /etc/cni/net.d, never in the machine's.
    const status = labStatus(name) as ReturnType<typeof labStatus> & { nodes: Array<{ cniConfDir: string; podCidrs: string[] }> };
    for (const node of status.nodes) {
      assert.ok(readdirSync(node.cniConfDir).some((file) => file.endsWith(".conflist")), node.cniConfDir);
      assert.equal(node.podCidrs.length, 2, "the agent's conflist carries both families' pod CIDRs");
      assert.ok(node.agentRunning, "lab status finds the agent pod's process");
    }
    // kube-proxy's endpoints, answered by the agent in its place (load balancers' health checks).
    const healthz = runTrellis(["lab", "exec", "--name", name, "node1", "--", "curl", "-s", "-i", "--max-time", "3", "http://127.0.0.1:10256/healthz"]);
    assert.match(healthz.stdout, /^HTTP\/1\.1 200 OK/);
    assert.match(healthz.stdout, /"lastUpdated":"[0-9-]+T/);
    assert.equal(runTrellis(["lab", "exec", "--name", name, "node1", "--", "curl", "-s", "--max-time", "3", "http://127.0.0.1:10249/proxyMode"]).stdout, "nftables");
    // Bug caught: the agent pod's hostPath writing the machine's own /etc/cni/net.d.
    assert.ok(!(existsSync("/etc/cni/net.d") && readdirSync("/etc/cni/net.d").some((file) => /trellis/.test(file))));
  });

  it("lab check passes across the real nodes: pod to pod on both families, node to pod, pod to external", () => {
    const check = labCheck(name);
    assert.deepEqual(failures(check), []);
    assert.ok(check.total >= 20, `${check.total} probes`);
    // The agents in their DaemonSet pods keep flow records too (their conntrack reader and
    // sysctl in the node's namespace), named with the kubelets' pods.
    const flows = runTrellis(["flows", "--lab", name, "-o", "json"]);
    assert.equal(flows.status, 0, flows.stderr);
    const records = flows.stdout.split("\n").filter(Boolean).map((line) => JSON.parse(line) as { node: string; source: { pod?: string }; destination: { pod?: string } });
    for (const node of ["node1", "node2"]) assert.ok(records.some((record) => record.node === node && record.source.pod !== undefined && record.destination.pod !== undefined), `${node}: ${records.length} records`);
  });

  it("a Deployment behind a Service, reached by name through CoreDNS from another pod with kubectl exec", async () => {
    kubectl(["create", "deployment", "web", `--image=${agnhost}`, "--replicas=2", "--port=8080", "--", "/agnhost", "netexec", "--http-port=8080"]);
    kubectl(["expose", "deployment", "web", "--port=80", "--target-port=8080"]);
    kubectl(["run", "client", `--image=${agnhost}`, "--restart=Never", "--", "pause"]);
    kubectl(["wait", "--for=condition=Available", "deployment/web", "--timeout=120s"]);
    kubectl(["wait", "--for=condition=Ready", "pod/client", "--timeout=120s"]);
    const webPods = pods(["-l", "app=web"]).map((pod) => pod.metadata.name);
    const clusterIp = kubectl(["get", "service", "web", "-o", "jsonpath={.spec.clusterIP}"]).trim();
    // Bug caught: no cluster DNS (kubelet's clusterDNS pointing nowhere), or the kube-dns Service not served by the proxy.
    await waitFor("web resolves through CoreDNS", () => {
      try {
        return kubectl(["exec", "client", "--", "dig", "+short", "+time=2", "+tries=1", "web.default.svc.cluster.local"]).trim() === clusterIp;
      } catch {
        return false;
      }
    }, 60_000);
    // The Deployment is Available (and the name resolves) before its EndpointSlice reaches every
    // agent: the Service answers once the client's node has its endpoints.
    await waitFor("the client's node serves web's endpoints", () => {
      try {
        return webPods.includes(kubectl(["exec", "client", "--", "curl", "-s", "--max-time", "5", "http://web/hostname"]).trim());
      } catch {
        return false;
      }
    }, 30_000);
    const answers = new Set<string>();
    for (let i = 0; i < 10; i++) answers.add(kubectl(["exec", "client", "--", "curl", "-s", "--max-time", "5", "http://web/hostname"]).trim());
    assert.ok([...answers].every((answer) => webPods.includes(answer)), `${[...answers].join(", ")} not among ${webPods.join(", ")}`);
    // Bug caught (the upstream NodePort session affinity specs): a pod dialling another node's
    // NodePort kept its own address, so an endpoint on the pod's own node answered it straight
    // back, past the node that DNATed it, and the connection hung.
    kubectl(["expose", "deployment", "web", "--name=web-np", "--type=NodePort", "--port=80", "--target-port=8080"]);
    const nodePort = kubectl(["get", "service", "web-np", "-o", "jsonpath={.spec.ports[0].nodePort}"]).trim();
    const nodeAddresses = labStatus(name).nodes.map((node) => node.addresses[0]);
    const dial = (address: string) =>
      spawnSync(join(KUBE_BIN, "kubectl"), ["--kubeconfig", kubeconfig, "exec", "client", "--", "curl", "-s", "--max-time", "3", `http://${address}:${nodePort}/hostname`], { encoding: "utf8", timeout: 30_000 });
    // Each agent programs the new NodePort once it sees the Service and its slice.
    for (const address of nodeAddresses) await waitFor(`${address}:${nodePort} answering`, () => webPods.includes(dial(address).stdout.trim()), 30_000);
    const failed: string[] = [];
    for (const address of nodeAddresses) {
      for (let i = 0; i < 8; i++) {
        const run = dial(address);
        if (!webPods.includes(run.stdout.trim())) failed.push(`${address}:${nodePort} try ${i}: ${run.stdout.trim() || run.stderr.trim()}`);
      }
    }
    assert.deepEqual(failed, []);
  });

  it("the upstream e2e suite: Granular Checks of pods and Services and HostPort pass on the real nodes", async () => {
    const focus = String.raw`Granular Checks: Pods should function for (intra|node)-pod communication: (http|udp)|Granular Checks: Services should function for pod-Service: (http|udp)|HostPort validates`;
    const namespacesBefore = namespaceNames();
    const run = runTrellis(["lab", "e2e", "--name", name, "--focus", focus, "--parallel", "3", "--json"], 900_000);
    const summary = JSON.parse(run.stdout || "{}") as { passed: number; failed: number; specs: Array<{ name: string; status: string; message?: string }>; reportDir: string };
    assert.deepEqual(summary.specs?.filter((spec) => spec.status === "failed").map((spec) => `${spec.name}: ${spec.message}`), [], run.stderr);
    assert.equal(run.status, 0, run.stderr);
    // Bug caught: a focus that ran nothing (a summary of zero passes counts as success otherwise).
    assert.equal(summary.passed, 7, summary.specs.map((spec) => `${spec.status} ${spec.name}`).join("\n"));
    assert.ok(existsSync(join(summary.reportDir, "junit_01.xml")) && existsSync(join(summary.reportDir, "summary.txt")));
    // The suite deletes its namespaces as it ends, in the background: the next checks would count their Services.
    await waitForNamespacesGone(namespacesBefore);
  });

  it("the upstream NetworkPolicy suite (e2e.test's Netpol specs, SCTP aside) passes on the real nodes", async () => {
    // Catches what the upstream truth tables catch that ours may not: the agent's rules against
    // agnhost pods in namespaces x, y and z on both nodes, policies created, updated and deleted
    // while the probes run, named ports, ipBlocks, egress and ingress together, UDP.
    const namespacesBefore = namespaceNames();
    const run = runTrellis(["lab", "e2e", "--name", name, "--focus", String.raw`\[sig-network\] Netpol `, "--skip", "SCTP", "--parallel", "3", "--json"], 1_200_000);
    const summary = JSON.parse(run.stdout || "{}") as { passed: number; failed: number; specs: Array<{ name: string; status: string; message?: string }> };
    assert.deepEqual(summary.specs?.filter((spec) => spec.status === "failed").map((spec) => `${spec.name}: ${spec.message}`), [], run.stderr);
    assert.equal(run.status, 0, run.stderr);
    // Bug caught: a focus that ran nothing, or fewer specs than the release has (46 without SCTP).
    assert.equal(summary.passed, 46, summary.specs.map((spec) => `${spec.status} ${spec.name}`).join("\n"));
    // Bug caught in CI: a name pattern for the suite's namespaces missed its UDP specs'
    // (udp-network-policy-z-NNN), whose Service without endpoints the next lab check then dialled.
    await waitForNamespacesGone(namespacesBefore);
  });

  it("the agent pod deleted and then its process killed: running pods keep their traffic, and new pods start once it is back", async () => {
    const before = agentPods().find((pod) => pod.spec.nodeName === "node1")!;
    kubectl(["-n", "trellis-system", "delete", "pod", before.metadata.name, "--wait=false"]);
    // While the DaemonSet brings a new agent, what is in the kernel keeps routing.
    assert.deepEqual(failures(labCheck(name)), []);
    await waitFor("a new agent pod ready on node1", () => agentPods().some((pod) => pod.spec.nodeName === "node1" && pod.metadata.uid !== before.metadata.uid && pod.status.containerStatuses?.[0]?.ready === true), 120_000);
    const node1 = labStatus(name).nodes.find((node) => node.name === "node1")!;
    assert.ok(node1.agentRunning);
    process.kill(node1.agentPid, "SIGKILL");
    assert.deepEqual(failures(labCheck(name)), []);
    // The kubelet restarts the container; a pod started after that gets its address through it.
    await waitFor("the agent container restarted and ready", () => {
      const pod = agentPods().find((candidate) => candidate.spec.nodeName === "node1")!;
      return (pod.status.containerStatuses?.[0]?.restartCount ?? 0) >= 1 && pod.status.containerStatuses?.[0]?.ready === true;
    }, 120_000);
    kubectl(["run", "after", `--image=${agnhost}`, "--restart=Never", "--overrides", JSON.stringify({ spec: { nodeName: "node1" } }), "--", "pause"]);
    kubectl(["wait", "--for=condition=Ready", "pod/after", "--timeout=120s"]);
    const after = pods().find((pod) => pod.metadata.name === "after")!;
    assert.equal(after.status.podIPs?.length, 2);
    assert.deepEqual(failures(labCheck(name)), []);
  });

  /** The pods node's CNI state holds (the plugin's leases), by container id, with their addresses. */
  const leases = (node: string) => {
    const run = spawnSync(TRELLIS, ["pods", "--network", "trellis", "--data-dir", join("/run/trellis/lab", name, node, "fs", "var-lib-cni", "trellis"), "--json"], { encoding: "utf8" });
    if (run.status !== 0) throw new Error(`trellis pods on ${node} failed: ${run.stderr}`);
    return (JSON.parse(run.stdout) as Array<{ containerId: string; addresses: string[] }>).map((pod) => pod.addresses.join(" ")).sort();
  };
  /** The addresses of the pods (not host-network) kubectl shows running on `node`. */
  const podAddresses = (node: string) => pods(["--all-namespaces", "--field-selector", `spec.nodeName=${node}`]).filter((pod) => !pod.spec.hostNetwork && (pod.status.podIPs?.length ?? 0) > 0).map((pod) => pod.status.podIPs!.map((entry) => entry.ip).join(" ")).sort();

  it("containerd killed and started again: its pods keep running with their addresses, and no lease is left over or lost", async () => {
    const before = podAddresses("node2");
    assert.ok(before.length >= 2, before.join(", "));
    assert.deepEqual(leases("node2"), before, "one lease per running pod before");
    const stop = runTrellis(["lab", "node", "stop", "node2", "--component", "containerd", "--kill", "--name", name]);
    assert.equal(stop.status, 0, stop.stderr);
    // Bug caught: pods torn down (and their leases freed) with the runtime, or traffic to them lost.
    assert.deepEqual(failures(labCheck(name)), []);
    const start = runTrellis(["lab", "node", "start", "node2", "--component", "containerd", "--name", name]);
    assert.equal(start.status, 0, start.stderr);
    await waitFor("node2 Ready again with its pods", () => {
      const node = JSON.parse(kubectl(["get", "node", "node2", "-o", "json"])) as { status: { conditions: Array<{ type: string; status: string }> } };
      return node.status.conditions.some((condition) => condition.type === "Ready" && condition.status === "True") && podAddresses("node2").length === before.length;
    }, 120_000);
    assert.deepEqual(podAddresses("node2"), before, "the same pods, the same addresses");
    // A pod deleted after the restart gives its lease back through CNI DEL.
    kubectl(["run", "short", `--image=${agnhost}`, "--restart=Never", "--overrides", JSON.stringify({ spec: { nodeName: "node2" } }), "--", "pause"]);
    kubectl(["wait", "--for=condition=Ready", "pod/short", "--timeout=120s"]);
    kubectl(["delete", "pod", "short", "--wait=true", "--timeout=120s"]);
    await waitFor("node2's leases match its pods", () => JSON.stringify(leases("node2")) === JSON.stringify(podAddresses("node2")), 60_000);
    assert.deepEqual(leases("node2"), before);
  });

  it("a kubelet stopped past the grace period: its node goes NotReady, its pods are evicted and run elsewhere, the others keep routing, and its leases are freed when it is back", async () => {
    kubectl(["apply", "-f", "-"], JSON.stringify({
      apiVersion: "apps/v1",
      kind: "Deployment",
      metadata: { name: "moving" },
      spec: {
        replicas: 2,
        selector: { matchLabels: { app: "moving" } },
        template: {
          metadata: { labels: { app: "moving" } },
          spec: {
            // Evicted 5 s after the node is found unreachable (the API's default is 300 s).
            tolerations: ["not-ready", "unreachable"].map((taint) => ({ key: `node.kubernetes.io/${taint}`, operator: "Exists", effect: "NoExecute", tolerationSeconds: 5 })),
            affinity: { podAntiAffinity: { preferredDuringSchedulingIgnoredDuringExecution: [{ weight: 100, podAffinityTerm: { topologyKey: "kubernetes.io/hostname", labelSelector: { matchLabels: { app: "moving" } } } }] } },
            containers: [{ name: "pause", image: agnhost, args: ["pause"] }],
          },
        },
      },
    }));
    kubectl(["wait", "--for=condition=Available", "deployment/moving", "--timeout=120s"]);
    const onNode1 = pods(["-l", "app=moving"]).filter((pod) => pod.spec.nodeName === "node1").map((pod) => pod.metadata.name);
    assert.equal(onNode1.length, 1);
    const stop = runTrellis(["lab", "node", "stop", "node1", "--component", "kubelet", "--name", name]);
    assert.equal(stop.status, 0, stop.stderr);
    try {
      await waitFor("node1 NotReady", () => {
        const node = JSON.parse(kubectl(["get", "node", "node1", "-o", "json"])) as { status: { conditions: Array<{ type: string; status: string }> } };
        return node.status.conditions.some((condition) => condition.type === "Ready" && condition.status !== "True");
      }, 120_000);
      await waitFor("the evicted pod replaced on node2", () => pods(["-l", "app=moving"]).filter((pod) => pod.spec.nodeName === "node2" && pod.status.phase === "Running" && !("deletionTimestamp" in pod.metadata)).length === 2, 120_000);
      // The replacement got an address through node2's agent, and node2 still reaches node1's running containers.
      const node2Pods = pods(["-l", "app=moving"]).filter((pod) => pod.spec.nodeName === "node2");
      assert.ok(node2Pods.every((pod) => pod.status.podIPs?.length === 2));
      const node1Pod = pods(["-l", "trellis.dev/lab-pod"]).find((pod) => pod.spec.nodeName === "node1")!;
      const node2Member = pods(["-l", "trellis.dev/lab-pod"]).find((pod) => pod.spec.nodeName === "node2")!;
      const reach = runTrellis(["lab", "exec", "--name", name, node2Member.metadata.name, "--", "ping", "-c1", "-W2", node1Pod.status.podIPs![0].ip]);
      assert.equal(reach.status, 0, reach.stdout + reach.stderr);
    } finally {
      assert.equal(runTrellis(["lab", "node", "start", "node1", "--component", "kubelet", "--name", name]).status, 0);
    }
    // Back, the kubelet tears the evicted pod down: CNI DEL frees its lease.
    await waitFor("node1's leases match its pods once its kubelet is back", () => {
      try {
        return !pods(["-l", "app=moving"]).some((pod) => onNode1.includes(pod.metadata.name)) && JSON.stringify(leases("node1")) === JSON.stringify(podAddresses("node1"));
      } catch {
        return false;
      }
    }, 180_000);
  });

  it("lab down leaves no process, mount, control group, namespace or directory behind", () => {
    const status = labStatus(name);
    const down = runTrellis(["lab", "down", "--name", name], 180_000);
    assert.equal(down.status, 0, down.stderr);
    // Bug caught: containers and shims left running (they are no lab namespace's), or the node mount namespaces' files left mounted.
    assertLabGone(name);
    assert.deepEqual(["/opt/cni", "/var/lib/cni"].filter((dir) => existsSync(dir)), standardDirsBefore);
    assert.ok(status.nodes.length === 2);
  });
});

describe("lab up --kubelet interrupted once its nodes run containerd", { timeout: 300_000 }, () => {
  it("removes what it made: no process, mount, control group, namespace or directory is left", async () => {
    const name = labName("rni");
    const child = spawn(TRELLIS, ["lab", "up", "--kubelet", "--name", name, "--nodes", "2", "--pods-per-node", "1"], { stdio: ["ignore", "pipe", "pipe"] });
    let output = "";
    child.stdout.on("data", (chunk: Buffer) => (output += chunk.toString()));
    child.stderr.on("data", (chunk: Buffer) => (output += chunk.toString()));
    // Interrupted while the kubelets start: containerd, shims and mounts exist by then.
    await waitFor("containerd running on every node", () => /containerd on every node/.test(output), 180_000);
    const labDir = join("/run/trellis/lab", name);
    assert.ok(readFileSync("/proc/self/mountinfo", "utf8").includes(labDir), "the node mount namespaces are mounted");
    child.kill("SIGINT");
    const code = await new Promise<number | null>((resolve) => child.once("exit", (exitCode) => resolve(exitCode)));
    assert.equal(code, 130, output);
    assert.match(output, /interrupted; removing what was made/);
    assertLabGone(name);
  });
});

describe("lab up --kube-proxy: Trellis's network beside kube-proxy on real nodes", { timeout: 600_000 }, () => {
  it("installs the agent with --no-proxy, leaves Services to kube-proxy, and the lab's pods and Services work", async () => {
    const name = labName("rnk");
    const up = runTrellis(["lab", "up", "--kube-proxy", "--name", name, "--nodes", "2", "--pods-per-node", "1"], 600_000);
    assert.equal(up.status, 0, up.stdout + up.stderr);
    const kubeconfig = runTrellis(["lab", "kubeconfig", "--name", name]).stdout.trim();
    const kubectl = (args: readonly string[]) => {
      const run = spawnSync(join(KUBE_BIN, "kubectl"), ["--kubeconfig", kubeconfig, ...args], { encoding: "utf8", timeout: 120_000 });
      if (run.status !== 0) throw new Error(`kubectl ${args.join(" ")} failed: ${run.stderr}`);
      return run.stdout;
    };
    // Bug caught: two proxies writing one node's Service rules (the agent's proxy left on beside kube-proxy).
    const command = JSON.parse(kubectl(["-n", "trellis-system", "get", "daemonset", "trellis", "-o", "jsonpath={.spec.template.spec.containers[0].command}"])) as string[];
    assert.ok(command.includes("--no-proxy"), command.join(" "));
    const status = labStatus(name) as ReturnType<typeof labStatus> & { kubernetes: { processes: Record<string, { running: boolean }> } };
    for (const node of ["node1", "node2"]) assert.ok(status.kubernetes.processes[`kube-proxy-${node}`]?.running ?? false, `kube-proxy on ${node}`);
    const tables = runTrellis(["lab", "exec", "--name", name, "node1", "--", "nft", "list", "tables"]).stdout;
    assert.match(tables, /table ip kube-proxy/);
    assert.doesNotMatch(tables, /trellis-proxy/);
    // A Service over the lab's pods, answered through kube-proxy's rules from every pod.
    kubectl(["expose", "pod", "node1-pod0", "--name=probe", "--port=7777"]);
    await waitFor("lab check with the Service passes", () => failures(labCheck(name)).length === 0 && labCheck(name).probes.some((probe) => probe.to === "svc/probe" && probe.ok), 60_000);
    assert.equal(runTrellis(["lab", "down", "--name", name], 180_000).status, 0);
  });
});

function failures(check: ReturnType<typeof labCheck>): string[] {
  return check.probes.filter((probe) => !probe.ok).map((probe) => `${probe.from} -> ${probe.to} ${probe.kind}: ${probe.error}`);
}

/** Nothing of lab `name` is left: its directory, mounts, control groups, namespaces and processes. */
function assertLabGone(name: string): void {
  const labDir = join("/run/trellis/lab", name);
  assert.ok(!existsSync(labDir));
  assert.deepEqual(readFileSync("/proc/self/mountinfo", "utf8").split("\n").filter((line) => line.includes(labDir)), []);
  for (const hierarchy of readdirSync("/sys/fs/cgroup")) assert.ok(!existsSync(join("/sys/fs/cgroup", hierarchy, `trellis-lab-${name}`)), hierarchy);
  assert.ok(!readdirSync("/var/run/netns").some((netns) => netns.startsWith(`${name}-`)));
  const left = readdirSync("/proc").filter((pid) => /^[0-9]+$/.test(pid)).filter((pid) => {
    try {
      return readFileSync(`/proc/${pid}/cmdline`, "utf8").includes(labDir);
    } catch {
      return false;
    }
  });
  assert.deepEqual(left, []);
}
