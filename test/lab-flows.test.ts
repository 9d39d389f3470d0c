/**
 * Flow records on a lab: every agent reads its node's conntrack events and the policy and
 * Service refusal logs, and `trellis flows` merges them: pods, Services, NodePorts and their
 * translation, counters, verdicts, filters, following, and an agent killed with -9.
 */
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { after, describe, it } from "node:test";
import type { FlowRecord } from "../src/flows/record.js";
import { startDetached } from "../src/lab/processes.js";
import { TRELLIS } from "./support/trellis-cni.js";
import { applyToStore, downAll, labCheck, labExec, labName, labStatus, runTrellis, waitFor } from "./support/lab.js";

after(() => downAll());

describe("flow records on a lab", { timeout: 600_000 }, () => {
  const name = labName("flows");
  let store = "";
  const apply = (manifest: object, verb: "apply" | "delete" = "apply") => applyToStore(store, manifest, verb);
  const flows = (...args: string[]): FlowRecord[] => {
    const run = runTrellis(["flows", "--lab", name, "-o", "json", ...args]);
    assert.equal(run.status, 0, run.stderr);
    return run.stdout.split("\n").filter(Boolean).map((line) => JSON.parse(line) as FlowRecord);
  };
  const describeFlow = (flow: FlowRecord) => `${flow.node} ${flow.event} ${flow.verdict} ${flow.protocol} ${flow.source.pod ?? flow.source.address} -> ${flow.service ?? ""} ${flow.destination.pod ?? flow.destination.address}:${flow.destination.port} -> ${flow.translated?.pod ?? ""}`;
  const metrics = (node: string) => labExec(name, node, ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9656 && printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3"]);

  it("lab up, dual-stack, two nodes of two pods, a Service with a NodePort and one without endpoints", () => {
    const up = runTrellis(["lab", "up", "--name", name, "--nodes", "2", "--pods-per-node", "2", "--family", "dual"], 300_000);
    assert.equal(up.status, 0, up.stdout + up.stderr);
    store = labStatus(name).store;
    apply({ apiVersion: "v1", kind: "Service", metadata: { name: "web", namespace: "default" }, spec: { type: "NodePort", ipFamilyPolicy: "PreferDualStack", selector: { "trellis.dev/lab-pod": "node2-pod0" }, ports: [{ port: 80, targetPort: "probe" }] } });
    apply({ apiVersion: "v1", kind: "Service", metadata: { name: "empty", namespace: "default" }, spec: { ipFamilyPolicy: "PreferDualStack", selector: { app: "none" }, ports: [{ port: 53, targetPort: 5353, protocol: "UDP" }] } });
  });

  it("a lab check's connections are recorded by both nodes: pods, the Service, its translation to the endpoint, the NodePort, and the refusal for want of endpoints", async () => {
    // Catches: the conntrack reader not started or not parsed, the reply tuple ignored (no
    // translation, so no endpoint), Services not named, NodePorts taken for plain node traffic,
    // a family left out, and the Service proxy's refusals not recorded at all.
    await waitFor("the Services programmed", () => labCheck(name).probes.some((probe) => probe.to === "svc/web" && probe.ok), 60_000);
    const check = labCheck(name);
    assert.ok(check.ok, JSON.stringify(check.probes.filter((probe) => !probe.ok)));
    const all = flows();
    const viaService = (node: string, family: 4 | 6) => all.find((flow) =>
      flow.node === node && flow.event === "new" && flow.source.pod === "default/node1-pod0" && flow.service === "default/web" && flow.translated?.pod === "default/node2-pod0" &&
      flow.destination.port === 80 && flow.translated.port === 7777 && flow.destination.address.includes(":") === (family === 6));
    for (const family of [4, 6] as const) {
      assert.ok(viaService("node1", family)?.direction === "egress", `node1 records node1-pod0 -> svc/web -> node2-pod0 on IPv${family}:\n${all.filter((flow) => flow.service === "default/web").map(describeFlow).join("\n")}`);
    }
    // node2 sees the connection after node1's DNAT: pod to pod, arriving.
    assert.ok(all.some((flow) => flow.node === "node2" && flow.source.pod === "default/node1-pod0" && flow.destination.pod === "default/node2-pod0" && flow.destination.port === 7777 && flow.direction === "ingress"));
    const nodePort = all.find((flow) => flow.service === "default/web" && flow.destination.node !== undefined && flow.event === "new");
    assert.ok(nodePort && nodePort.translated?.pod === "default/node2-pod0", all.filter((flow) => flow.destination.node).map(describeFlow).join("\n"));
    const refused = all.filter((flow) => flow.verdict === "dropped");
    assert.ok(refused.some((flow) => flow.service === "default/empty" && flow.reason === "no endpoints" && flow.event === "rejected" && flow.source.pod !== undefined), refused.map(describeFlow).join("\n"));
    assert.ok(all.every((flow) => flow.verdict !== "forwarded" || flow.service !== "default/empty"), "nothing reached the Service without endpoints");
    // The cluster's connections make only the events the records need (dataplane/flow-events.ts).
    assert.match(labExec(name, "node1", ["nft", "list", "table", "inet", "trellis-flows"]), /ct state new ip saddr @cluster-4 ct event set new,destroy$/m);
    assert.match(metrics("node1"), /^trellis_flows_total\{verdict="forwarded"\} [1-9]\d*$/m);
    assert.match(metrics("node1"), /^trellis_flows_total\{verdict="dropped"\} [1-9]\d*$/m);
  });

  it("leaves the nodes' own traffic out, and counts a connection's bytes when it ends", async () => {
    // Catches: management traffic (node to node) recorded as the cluster's, and destroy
    // events without counters (nf_conntrack_acct not asked for, or the counters misread).
    const node2Address = labStatus(name).nodes.find((node) => node.name === "node2")!.addresses[0];
    labExec(name, "node1", ["ping", "-c", "2", "-W", "1", node2Address]);
    await new Promise((resolve) => setTimeout(resolve, 500));
    const nodeOwn = flows().filter((flow) => flow.source.node !== undefined && flow.destination.node !== undefined && flow.translated === undefined);
    assert.deepEqual(nodeOwn.map(describeFlow), []);
    assert.match(metrics("node2"), /^trellis_flow_events_ignored_total [1-9]\d*$/m);
    // A connection of a known size; deleting its conntrack entry by hand ends it (a destroy event).
    const pod0 = labStatus(name).pods.find((pod) => pod.name === "node2-pod0")!.addresses.find((address) => !address.includes(":"))!;
    labExec(name, "node1-pod1", ["bash", "-c", `exec 3<>/dev/tcp/${pod0}/7777 && head -c 100000 /dev/zero >&3 && exec 3>&-`]);
    labExec(name, "node2", ["conntrack", "-D", "-p", "tcp", "--orig-port-dst", "7777", "-d", pod0]);
    let ended: FlowRecord | undefined;
    await waitFor("the ended connection recorded with its bytes", () => {
      ended = flows("--pod", "default/node1-pod1").find((flow) => flow.node === "node2" && flow.event === "destroy" && flow.destination.address === pod0 && (flow.counters?.bytesSent ?? 0) >= 100_000);
      return ended !== undefined;
    }, 10_000);
    assert.ok(ended!.counters!.packetsSent > 0 && ended!.counters!.packetsReceived > 0, JSON.stringify(ended));
  });

  it("records what policy denied, with the deciding policy", async () => {
    // Catches: the deny log's packets not turned into records, or without the policy.
    apply({ apiVersion: "networking.k8s.io/v1", kind: "NetworkPolicy", metadata: { name: "deny-pod1", namespace: "default" }, spec: { podSelector: { matchLabels: { "trellis.dev/lab-pod": "node2-pod1" } }, policyTypes: ["Ingress"] } });
    await waitFor("denials recorded", () => {
      labCheck(name);
      return flows("--verdict", "denied").some((flow) => flow.policy === "NetworkPolicy default/deny-pod1" && flow.destination.pod === "default/node2-pod1" && flow.node === "node2" && flow.reason === "ingress policy");
    }, 30_000);
    const denied = flows("--verdict", "denied");
    assert.ok(denied.every((flow) => flow.verdict === "denied" && flow.destination.pod === "default/node2-pod1"), denied.map(describeFlow).join("\n"));
    apply({ apiVersion: "networking.k8s.io/v1", kind: "NetworkPolicy", metadata: { name: "deny-pod1", namespace: "default" } }, "delete");
  });

  it("filters by pod, namespace, Service, verdict and age, and refuses bad filters by name", async () => {
    // Catches: a filter ignored by the agent or the CLI (everything printed), and bad values
    // reaching an agent or a command line.
    const byPod = flows("--pod", "default/node1-pod1");
    assert.ok(byPod.length > 0 && byPod.every((flow) => [flow.source.pod, flow.destination.pod, flow.translated?.pod].includes("default/node1-pod1")));
    const byService = flows("--service", "default/web");
    assert.ok(byService.length > 0 && byService.every((flow) => flow.service === "default/web"));
    assert.deepEqual(flows("--namespace", "elsewhere"), []);
    assert.ok(flows("--namespace", "default").length > 0);
    assert.ok(flows("--limit", "3").length === 3);
    await new Promise((resolve) => setTimeout(resolve, 1_100));
    assert.deepEqual(flows("--since", "1s", "--pod", "default/node1-pod1"), []);
    for (const [args, message] of [
      [["--pod", "default/../x"], /--pod "default\/\.\.\/x" is not a pod as NAMESPACE\/NAME/],
      [["--verdict", "accepted"], /--verdict "accepted" is not a verdict: expected one of forwarded, denied, dropped/],
      [["--since", "%d"], /--since "%d" is not a duration back from now/],
      [["--limit", "-5"], /--limit "-5" is not a number of records from 1/],
      [["-o", "yaml"], /--output "yaml" is not a format: expected table or json/],
    ] as const) {
      const run = runTrellis(["flows", "--lab", name, ...args]);
      assert.equal(run.status, 1, `${args.join(" ")}: ${run.stdout}`);
      assert.match(run.stderr, message);
    }
    const table = runTrellis(["flows", "--lab", name, "--service", "default/web", "--limit", "2"]);
    assert.match(table.stdout, /^TIME +NODE +SOURCE +DESTINATION +PROTOCOL +VERDICT +DETAIL\n/);
    assert.match(table.stdout, /service\/default\/web .* -> default\/node2-pod0 .*FORWARDED/);
  });

  it("follows every node: a new connection is printed as it happens, and a follower killed with -9 leaves nothing behind", async () => {
    // Catches: --follow printing only what was there, one node's stream only, and the followers
    // inside the node namespaces left running after the command died.
    const trellis = spawn(TRELLIS, ["flows", "--lab", name, "--follow", "-o", "json", "--pod", "default/node1-pod0"], { stdio: ["ignore", "pipe", "pipe"] });
    let output = "";
    trellis.stdout.on("data", (chunk: Buffer) => (output += chunk.toString()));
    try {
      await waitFor("both nodes followed", () => spawnSync("pgrep", ["-P", String(trellis.pid)]).stdout.toString().trim().split("\n").filter(Boolean).length === 2, 10_000);
      await new Promise((resolve) => setTimeout(resolve, 500));
      const pod1 = labStatus(name).pods.find((pod) => pod.name === "node2-pod1")!.addresses.find((address) => address.includes(":"))!;
      labExec(name, "node1-pod0", ["bash", "-c", `exec 3<>/dev/tcp/${pod1}/7777 && echo hello >&3 && exec 3>&-`]);
      await waitFor("the connection followed on both nodes", () => {
        const seen = output.split("\n").filter(Boolean).map((line) => JSON.parse(line) as FlowRecord).filter((flow) => flow.destination.address === pod1 && flow.event === "new");
        return seen.some((flow) => flow.node === "node1") && seen.some((flow) => flow.node === "node2");
      }, 5_000);
      const children = spawnSync("pgrep", ["-P", String(trellis.pid)]).stdout.toString().trim().split("\n").map(Number);
      trellis.kill("SIGKILL");
      await waitFor("its followers inside the node namespaces gone", () => children.every((pid) => spawnSync("kill", ["-0", String(pid)]).status !== 0), 10_000);
    } finally {
      trellis.kill("SIGKILL");
    }
  });

  it("an agent killed with -9: its conntrack reader goes with it, and once started again it records again", async () => {
    // Catches: a reader left behind holding the netlink groups, and a restarted agent that
    // does not read conntrack again.
    const node1 = labStatus(name).nodes.find((node) => node.name === "node1")!;
    const readers = () => spawnSync("pgrep", ["-P", String(node1.agentPid), "-f", "trellis-nft-batch --(conntrack|nflog)"]).stdout.toString().trim().split("\n").filter(Boolean).map(Number);
    const before = readers();
    assert.equal(before.length, 2, "the conntrack reader and the Service refusal log reader");
    process.kill(node1.agentPid, "SIGKILL");
    await waitFor("the readers gone with the agent", () => before.every((pid) => spawnSync("kill", ["-0", String(pid)]).status !== 0), 10_000);
    startDetached(node1.netns, node1.agentArgv, node1.agentLog);
    await waitFor("the restarted agent serving", () => {
      try {
        return /trellis_flow_records/.test(metrics("node1"));
      } catch {
        return false;
      }
    }, 30_000);
    const pod0 = labStatus(name).pods.find((pod) => pod.name === "node2-pod0")!.addresses[0];
    labExec(name, "node1-pod1", ["bash", "-c", `exec 3<>/dev/tcp/${pod0}/7777 && echo again >&3 && exec 3>&-`]);
    await waitFor("recorded by the restarted agent", () => flows("--pod", "default/node1-pod1").some((flow) => flow.node === "node1" && flow.destination.address === pod0 && flow.event === "new"), 10_000);
  });

  it("a reader killed with -9 is started again, and the flow events table deleted by hand comes back", async () => {
    // Catches: flow records ending for good with their reader (no restart), and the events mask
    // gone until the agent restarts (every TCP state change an event again).
    const node2 = labStatus(name).nodes.find((node) => node.name === "node2")!;
    const reader = () => spawnSync("pgrep", ["-P", String(node2.agentPid), "-f", "trellis-nft-batch --conntrack"]).stdout.toString().trim();
    const first = reader();
    assert.match(first, /^\d+$/);
    process.kill(Number(first), "SIGKILL");
    await waitFor("a new conntrack reader", () => /^\d+$/.test(reader()) && reader() !== first, 10_000);
    const pod0 = labStatus(name).pods.find((pod) => pod.name === "node2-pod0")!.addresses[0];
    labExec(name, "node1-pod0", ["bash", "-c", `exec 3<>/dev/tcp/${pod0}/7777 && echo after >&3 && exec 3>&-`]);
    await waitFor("recorded by the new reader", () => flows("--pod", "default/node1-pod0").some((flow) => flow.node === "node2" && flow.destination.address === pod0 && Date.parse(flow.time) > Date.now() - 5_000), 10_000);
    labExec(name, "node2", ["nft", "delete", "table", "inet", "trellis-flows"]);
    await waitFor("the flow events table written again", () => {
      try {
        return /ct event set new,destroy/.test(labExec(name, "node2", ["nft", "list", "table", "inet", "trellis-flows"]));
      } catch {
        return false;
      }
    }, 15_000);
  });

  it("lab down", () => {
    const down = runTrellis(["lab", "down", "--name", name]);
    assert.equal(down.status, 0, down.stderr);
  });
});
