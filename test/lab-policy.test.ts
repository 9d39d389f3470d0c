/**
 * NetworkPolicy and ClusterNetworkPolicy on the Trellis store: objects applied with `trellis
 * apply` to a lab's store are enforced by every node's agent, both families, across nodes; a
 * pod added later is judged before its ADD answers; `trellis policy explain --store` agrees.
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { after, describe, it } from "node:test";
import { listPolicyWorld } from "../src/agent/policy-loop.js";
import { storePolicySource } from "../src/agent/policy-source.js";
import { startDetached } from "../src/lab/processes.js";
import { judge } from "../src/policy/judge.js";
import { openStore } from "../src/store/open.js";
import { applyToStore, downAll, labCheck, labName, labStatus, runTrellis, waitFor, type LabCheck } from "./support/lab.js";

after(() => downAll());

type Probe = LabCheck["probes"][number];

describe("policy on the Trellis store", { timeout: 600_000 }, () => {
  const name = labName("pol");
  let store = "";
  const apply = (manifest: object, verb: "apply" | "delete" = "apply") => applyToStore(store, manifest, verb);
  /** Waits until the check refuses exactly what `refused` says (of the cells `ignored` leaves); returns the cells that differ. */
  const matching = async (refused: (probe: Probe) => boolean, ignored: (probe: Probe) => boolean = () => false) => {
    let check = labCheck(name);
    const wrong = () => check.probes.filter((probe) => !ignored(probe) && probe.ok === refused(probe)).map((probe) => `${probe.from} -> ${probe.to} ${probe.kind}/${(probe as { family?: number }).family}: ${probe.ok ? "passed" : "refused"}`);
    await waitFor("the check refuses exactly what the policies do", () => wrong().length === 0 || ((check = labCheck(name)), false), 60_000).catch(() => undefined);
    return { wrong: wrong(), check };
  };

  it("lab up on the store, dual-stack, two nodes, the pods' namespace labelled", () => {
    const up = runTrellis(["lab", "up", "--name", name, "--nodes", "2", "--pods-per-node", "2", "--family", "dual", "--mode", "vxlan", "--namespace-labels", "team=blue"], 300_000);
    assert.equal(up.status, 0, up.stdout + up.stderr);
    store = labStatus(name).store;
    // The pods' namespace carries the labels asked for (beside the one the API sets).
    const namespace = JSON.parse(runTrellis(["get", "namespaces", "default", "-o", "json", "--store", store]).stdout) as { metadata: { labels: Record<string, string> } };
    assert.deepEqual(namespace.metadata.labels, { team: "blue", "kubernetes.io/metadata.name": "default" });
  });

  it("a NetworkPolicy applied to the store: node2-pod0 takes TCP on its named port from node1-pod0 alone; deleted, everything passes again", async () => {
    // Catches: the store's policies not followed by the agents, peers or named ports resolved
    // wrongly, replies dropped, another family or pod let through, rules left behind.
    const target = "node2-pod0";
    const policy = {
      apiVersion: "networking.k8s.io/v1", kind: "NetworkPolicy", metadata: { name: "only-node1-pod0", namespace: "default" },
      spec: { podSelector: { matchLabels: { "trellis.dev/lab-pod": target } }, ingress: [{ from: [{ podSelector: { matchLabels: { "trellis.dev/lab-pod": "node1-pod0" } } }], ports: [{ port: "probe" }] }] },
    };
    apply(policy);
    const refused = (probe: Probe) => probe.to === target && !(probe.from === "node1-pod0" && probe.kind === "tcp") && probe.from !== "node2";
    const { wrong, check } = await matching(refused);
    assert.deepEqual(wrong, []);
    assert.ok(check.probes.filter(refused).length >= 4, "refusals were probed");

    // Counted and logged by the node that judged them (node2 judges ingress to its pod).
    // Catches denials uncounted or unlogged by the agent, or logged without the pods.
    const metrics = runTrellis(["lab", "exec", "--name", name, "node2", "--", "bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9656 && printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3"]);
    const denied = /^trellis_policy_denied_packets_total\{policy="NetworkPolicy default\/only-node1-pod0",direction="ingress"\} (\d+)$/m.exec(metrics.stdout);
    assert.ok(denied && Number(denied[1]) > 0, metrics.stdout.split("\n").filter((line) => line.includes("policy")).join("\n"));
    assert.match(metrics.stdout, /^trellis_sync_policy_rules_duration_seconds_count [1-9]\d*$/m, "the policy loop's writes are timed");
    const agentLog = readFileSync(labStatus(name).nodes.find((node) => node.name === "node2")!.agentLog, "utf8");
    const lines = agentLog.split("\n").filter((line) => line.includes("policy denied a connection")).map((line) => JSON.parse(line) as { policy: string; direction: string; protocol: string; from: { pod?: string }; to: { pod?: string; port?: number } });
    assert.ok(
      lines.some((line) => line.policy === "NetworkPolicy default/only-node1-pod0" && line.direction === "ingress" && line.from.pod === "default/node1-pod1" && line.to.pod === `default/${target}` && line.to.port === 7777),
      `a denied connection from node1-pod1 logged: ${lines.slice(0, 5).map((line) => JSON.stringify(line)).join("\n")}`,
    );

    // explain reads the same store.
    const explain = runTrellis(["policy", "explain", "--store", store, "--from", "default/node1-pod0", "--to", `default/${target}`, "--port", "7777/UDP", "--family", "6"]);
    assert.equal(explain.status, 0, explain.stderr);
    assert.match(explain.stdout, /port 7777\/UDP: DENIED/);
    assert.match(explain.stdout, /NetworkPolicy default\/only-node1-pod0: isolates/);
    const byLab = runTrellis(["policy", "explain", "--lab", name, "--from", "default/node1-pod0", "--to", `default/${target}`, "--port", "7777", "-o", "json"]);
    assert.equal(byLab.status, 0, byLab.stderr);
    assert.equal((JSON.parse(byLab.stdout) as { allowed: boolean }).allowed, true, byLab.stdout);
    const both = runTrellis(["policy", "explain", "--lab", name, "--store", store, "--from", "default/node1-pod0", "--to", `default/${target}`, "--port", "80"]);
    assert.match(both.stderr, /--lab names the cluster itself: give it without --kubeconfig or --store/);

    // Through a Service: its ClusterIP from every pod and its NodePort from outside, judged at
    // the endpoint after the DNAT. Catches rules that judge the Service's address (letting
    // everything through, or nothing) instead of the pod it was sent to. The endpoint reaching
    // itself through its Service is masqueraded to its node (hairpin), which a policy does not
    // judge: that cell is left out.
    apply({ apiVersion: "v1", kind: "Service", metadata: { name: "guarded", namespace: "default" }, spec: { type: "NodePort", ipFamilyPolicy: "PreferDualStack", selector: { "trellis.dev/lab-pod": target }, ports: [{ port: 80, targetPort: "probe" }] } });
    const viaService = (probe: Probe) => probe.to === "svc/guarded";
    const throughService = await matching(
      (probe) => (viaService(probe) ? probe.from !== "node1-pod0" : refused(probe)),
      (probe) => viaService(probe) && probe.from === target,
    );
    assert.deepEqual(throughService.wrong, []);
    assert.ok(throughService.check.probes.some((probe) => viaService(probe) && probe.from === "external"), "the NodePort was probed from outside");
    assert.ok(throughService.check.probes.some((probe) => viaService(probe) && probe.from === "node1-pod0" && probe.ok), "the allowed pod reached the Service");
    assert.ok(throughService.check.probes.some((probe) => viaService(probe) && probe.from === "node2-pod1" && !probe.ok), "another pod was refused through the Service");
    apply({ apiVersion: "v1", kind: "Service", metadata: { name: "guarded", namespace: "default" } }, "delete");

    apply(policy, "delete");
    const open = await matching(() => false);
    assert.deepEqual(open.wrong, []);
  });

  it("30 changes of one policy in quick succession: the nodes end with the last one", async () => {
    // Catches a change lost while the loop coalesces others (the last write before a burst's
    // end taken for the last), or a diff against a table that an earlier write of the burst
    // left otherwise than the loop thinks.
    const target = "node1-pod1";
    const churn = (i: number) => ({
      apiVersion: "networking.k8s.io/v1", kind: "NetworkPolicy", metadata: { name: "churn", namespace: "default" },
      spec: { podSelector: { matchLabels: { "trellis.dev/lab-pod": target } }, ingress: [{ from: [{ podSelector: { matchLabels: { "trellis.dev/lab-pod": i % 2 ? "node2-pod1" : "node2-pod0" } } }], ports: [{ port: 7000 + i }, { port: "probe" }] }] },
    });
    for (let i = 0; i < 30; i++) apply(churn(i));
    const last = "node2-pod1";
    const refused = (probe: Probe) => probe.to === target && !(probe.from === last && probe.kind === "tcp") && probe.from !== "node1";
    const settled = await matching(refused);
    assert.deepEqual(settled.wrong, []);
    apply(churn(0), "delete");
    assert.deepEqual((await matching(() => false)).wrong, []);
  });

  it("a ClusterNetworkPolicy (Admin, Deny) by namespace label: node2-pod1 reaches no pod of a labelled namespace; the label removed, it does again", async () => {
    // Catches: ClusterNetworkPolicy not read from the store, a Namespace's labels not followed
    // (a label change must change the verdict without touching the policy), or egress Deny
    // not enforced on the sender's node.
    apply({ apiVersion: "v1", kind: "Namespace", metadata: { name: "default", labels: { guarded: "yes" } } });
    const policy = {
      apiVersion: "policy.networking.k8s.io/v1beta1", kind: "ClusterNetworkPolicy", metadata: { name: "no-node2-pod1" },
      spec: {
        tier: "Admin", priority: 5,
        subject: { pods: { namespaceSelector: {}, podSelector: { matchLabels: { "trellis.dev/lab-pod": "node2-pod1" } } } },
        egress: [{ action: "Deny", to: [{ namespaces: { matchLabels: { guarded: "yes" } } }] }],
      },
    };
    apply(policy);
    const refused = (probe: Probe) => probe.from === "node2-pod1" && probe.to.includes("-pod") && probe.to !== "node2-pod1";
    const denied = await matching(refused);
    assert.deepEqual(denied.wrong, []);
    assert.ok(denied.check.probes.filter(refused).length >= 6);

    apply({ apiVersion: "v1", kind: "Namespace", metadata: { name: "default", labels: { guarded: "no" } } });
    const relabelled = await matching(() => false);
    assert.deepEqual(relabelled.wrong, []);
    apply(policy, "delete");
  });

  it("through kill -9 of a node's agent: its rules stay while it is down, a policy deleted meanwhile is gone once it is back", async () => {
    // Catches an agent whose death takes its rules with it (pods open while it is down), a
    // restarted one that keeps a policy deleted meanwhile (it diffs against what it thinks it
    // wrote instead of what the kernel holds), and a restarted one whose deny log's reader is
    // refused the nflog group (a reader of the killed agent still holding it).
    const policy = (name: string, target: string, from?: string) => ({
      apiVersion: "networking.k8s.io/v1", kind: "NetworkPolicy", metadata: { name, namespace: "default" },
      spec: { podSelector: { matchLabels: { "trellis.dev/lab-pod": target } }, ingress: from ? [{ from: [{ podSelector: { matchLabels: { "trellis.dev/lab-pod": from } } }] }] : [] },
    });
    apply(policy("only-node1-pod0", "node2-pod0", "node1-pod0"));
    apply(policy("guard-pod1", "node2-pod1"));
    const before = (probe: Probe) => (probe.to === "node2-pod0" && probe.from !== "node1-pod0" && probe.from !== "node2") || (probe.to === "node2-pod1" && probe.from !== "node2");
    assert.deepEqual((await matching(before)).wrong, []);
    const node2 = labStatus(name).nodes.find((node) => node.name === "node2")!;
    process.kill(node2.agentPid, "SIGKILL");
    const opened = labCheck(name).probes.filter((probe) => before(probe) && probe.ok && probe.kind !== "icmp");
    assert.deepEqual(opened.map((probe) => `${probe.from} -> ${probe.to} ${probe.kind}`), [], "nothing the policies refuse passes while the agent is down");
    apply(policy("only-node1-pod0", "node2-pod0", "node1-pod0"), "delete");
    const logBefore = readFileSync(node2.agentLog, "utf8").length;
    startDetached(node2.netns, node2.agentArgv, node2.agentLog);
    const after = (probe: Probe) => probe.to === "node2-pod1" && probe.from !== "node2";
    assert.deepEqual((await matching(after)).wrong, []);
    await waitFor("the restarted agent logs a denied connection", () => readFileSync(node2.agentLog, "utf8").slice(logBefore).includes("policy denied a connection"), 10_000);
    assert.doesNotMatch(readFileSync(node2.agentLog, "utf8").slice(logBefore), /the policy deny log stopped/);
    apply(policy("guard-pod1", "node2-pod1"), "delete");
    assert.deepEqual((await matching(() => false)).wrong, []);
  });

  it("pod to pod, cell by cell, across nodes, both families, TCP and UDP, the kernel does what judge.ts says, through NetworkPolicy, ClusterNetworkPolicy tiers and a relabelled pod", async () => {
    // Catches any disagreement between the rules in the kernel and the semantics explain
    // prints: the oracle is judge.ts over the store's own objects, read again at each step. A
    // failing step prints both matrices (rows: from; columns: to, per family and protocol).
    const status = labStatus(name);
    const podNames = status.pods.map((pod) => pod.name).sort();
    const nodeCidr = (node: string, family: 4 | 6) => status.nodes.find((entry) => entry.name === node)!.podCidrs.find((cidr) => cidr.includes(":") === (family === 6))!;
    const address = (pod: string, family: 4 | 6) => status.pods.find((entry) => entry.name === pod)!.addresses.find((ip) => ip.includes(":") === (family === 6))!;
    const np = (name: string, spec: object) => ({ apiVersion: "networking.k8s.io/v1", kind: "NetworkPolicy", metadata: { name, namespace: "default" }, spec });
    const cnp = (name: string, spec: object) => ({ apiVersion: "policy.networking.k8s.io/v1beta1", kind: "ClusterNetworkPolicy", metadata: { name }, spec });
    const lab = (pod: string) => ({ matchLabels: { "trellis.dev/lab-pod": pod } });
    const steps: Array<{ what: string; objects: object[] }> = [
      { what: "ingress by pod and named port", objects: [np("in-named", { podSelector: lab("node2-pod0"), ingress: [{ from: [{ podSelector: lab("node1-pod0") }], ports: [{ port: "probe" }] }] })] },
      { what: "egress to a node's pod CIDR less one pod, both families", objects: [np("out-block", { podSelector: lab("node1-pod1"), policyTypes: ["Egress"], egress: [{ to: [
        { ipBlock: { cidr: nodeCidr("node2", 4), except: [`${address("node2-pod1", 4)}/32`] } },
        { ipBlock: { cidr: nodeCidr("node2", 6), except: [`${address("node2-pod1", 6)}/128`] } },
      ] }] })] },
      { what: "Admin Deny of UDP from a pod, a Pass, and a Baseline Deny", objects: [
        cnp("admin-deny-udp", { tier: "Admin", priority: 10, subject: { namespaces: {} }, ingress: [{ action: "Deny", from: [{ pods: { namespaceSelector: {}, podSelector: lab("node2-pod1") } }], protocols: [{ udp: { destinationPort: { number: 7777 } } }] }] }),
        cnp("admin-pass", { tier: "Admin", priority: 20, subject: { pods: { namespaceSelector: {}, podSelector: lab("node1-pod0") } }, ingress: [{ action: "Pass", from: [{ pods: { namespaceSelector: {}, podSelector: lab("node2-pod0") } }] }] }),
        cnp("baseline-deny", { tier: "Baseline", priority: 5, subject: { pods: { namespaceSelector: {}, podSelector: lab("node1-pod0") } }, ingress: [{ action: "Deny", from: [{ namespaces: {} }] }] }),
      ] },
      { what: "node1-pod0 relabelled out of the Baseline's subject", objects: [] },
    ];
    const store = await openStore(status.store);
    try {
      for (const [index, step] of steps.entries()) {
        if (step.objects.length) apply(step.objects.length === 1 ? step.objects[0] : { apiVersion: "v1", kind: "List", items: step.objects });
        if (index === 3) {
          // The Pod object of node1-pod0 with another lab-pod label: the Baseline (and in-named's peer) no longer select it.
          const run = runTrellis(["get", "pods", "node1-pod0", "-o", "json", "--store", status.store]);
          const podObject = JSON.parse(run.stdout) as { metadata: { labels: Record<string, string> } };
          podObject.metadata.labels = { ...podObject.metadata.labels, "trellis.dev/lab-pod": "renamed" };
          apply(podObject);
        }
        const { world, pods } = await listPolicyWorld(storePolicySource(store));
        const expected = (probe: Probe & { family: string }) => {
          const family = probe.family === "IPv6" ? 6 : 4;
          const end = (pod: string) => {
            const found = pods.find((candidate) => candidate.name === pod)!;
            return { pod: found, address: found.ips.find((ip) => ip.family === family)! };
          };
          return judge(world, { from: end(probe.from), to: end(probe.to), protocol: probe.kind === "udp" ? "UDP" : "TCP", port: 7777 }).allowed;
        };
        const cells = (probe: Probe) => (probe.kind === "tcp" || probe.kind === "udp") && podNames.includes(probe.from) && podNames.includes(probe.to);
        const { wrong, check } = await matching((probe) => !expected(probe as Probe & { family: string }), (probe) => !cells(probe));
        const matrix = (pick: (probe: Probe & { family: string }) => boolean) =>
          ["IPv4", "IPv6"].flatMap((family) => ["tcp", "udp"].map((kind) => `${family} ${kind}\n` + podNames.map((from) => `  ${from.padEnd(11)} ${podNames.map((to) => {
            if (to === from) return "-";
            const probe = check.probes.find((candidate) => candidate.from === from && candidate.to === to && candidate.kind === kind && (candidate as { family?: string }).family === family) as (Probe & { family: string }) | undefined;
            return probe ? (pick(probe) ? "." : "X") : "?";
          }).join("")}`).join("\n"))).join("\n");
        assert.deepEqual(wrong, [], `step ${index + 1}, ${step.what}: the kernel\n${matrix((probe) => probe.ok)}\njudge.ts\n${matrix(expected)}`);
        assert.ok(check.probes.filter(cells).some((probe) => !probe.ok), `step ${index + 1} refuses something`);
      }
    } finally {
      await store.close();
      for (const name of ["in-named", "out-block"]) apply(np(name, {}), "delete");
      for (const name of ["admin-deny-udp", "admin-pass", "baseline-deny"]) apply(cnp(name, {}), "delete");
      const run = runTrellis(["get", "pods", "node1-pod0", "-o", "json", "--store", status.store]);
      const podObject = JSON.parse(run.stdout) as { metadata: { labels: Record<string, string> } };
      podObject.metadata.labels = { ...podObject.metadata.labels, "trellis.dev/lab-pod": "node1-pod0" };
      apply(podObject);
    }
    assert.deepEqual((await matching(() => false)).wrong, []);
  });

  it("a pod added under a deny-all policy is in its node's policy table when `lab pod add` returns", () => {
    // Catches a pod added later left unjudged: its labels not written to the store, its Pod
    // not followed, or (with the lab's Pod written before the ADD and the ADD's CNI_ARGS naming
    // it) the ADD refused because the agent waits for a Pod it never sees. The race of traffic
    // against the ADD itself is kube-agent.test.ts's, on the same attach code.
    apply({ apiVersion: "networking.k8s.io/v1", kind: "NetworkPolicy", metadata: { name: "locked", namespace: "default" }, spec: { podSelector: { matchLabels: { app: "locked" } } } });
    try {
      const added = runTrellis(["lab", "pod", "add", "--name", name, "late", "--node", "node1", "--label", "app=locked"], 120_000);
      assert.equal(added.status, 0, added.stderr);
      const pod = labStatus(name).pods.find((candidate) => candidate.name === "late")!;
      const table = runTrellis(["lab", "exec", "--name", name, "node1", "--", "nft", "list", "table", "inet", "trellis-policy"]);
      assert.equal(table.status, 0, table.stderr);
      for (const address of pod.addresses) {
        assert.match(table.stdout, new RegExp(`ingress-${address.includes(":") ? 6 : 4} \\{[^}]*${address.replace(/[.:]/g, "\\$&")} : jump ingress-`), `${address} in the ingress map`);
      }
      const removed = runTrellis(["lab", "pod", "rm", "--name", name, "late"], 120_000);
      assert.equal(removed.status, 0, removed.stderr);
    } finally {
      apply({ apiVersion: "networking.k8s.io/v1", kind: "NetworkPolicy", metadata: { name: "locked", namespace: "default" } }, "delete");
    }
  });
});
