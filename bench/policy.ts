/**
 * NetworkPolicy at scale, in one run with its baselines beside it, on a lab of the Trellis store
 * (two nodes, two pods each; node1-pod0 sends, node2-pod0 receives, node2-pod1 is a receiver no
 * policy selects):
 *
 * - 10,000 Pods of 40 more nodes in the store, then 1,000 NetworkPolicies that all select the
 *   receiver, each admitting a group of those pods on a port of its own, and the last (in name
 *   order, so a new connection passes every other rule first) admitting the sender;
 * - TCP throughput (iperf3) and new connections a second from the sender to the receiver,
 *   against the same to the bystander in the same rounds, and against both before any policy;
 * - programming latency: a policy selecting the real pods of both nodes, added one at a time,
 *   from the store write to the kernel's report of its rule on each node (the later of the two);
 * - the receiving node's agent: resident memory with the pods alone and with the policies, and
 *   the steps one change wrote (from its log).
 *
 * Goals (issue 20): latency p99 < 1 s; throughput ≥ 0.95× and connections/s ≥ 0.9× no policy;
 * agent RSS growth < 50 MiB; one change's steps O(that policy).
 *
 *   npm run bench:policy -- [--pods 10000] [--policies 1000] [--changes 50] [--seconds 5] [--repeats 3] [--connects 2000]
 */
import { readFileSync, mkdirSync, writeFileSync } from "node:fs";
import { cpus, loadavg } from "node:os";
import { dirname, join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { applyObjects } from "../src/cluster/apply.js";
import { addNode, type NodeRecord } from "../src/cluster/node-cidrs.js";
import { openCluster, type Cluster } from "../src/cluster/state.js";
import { formatIp, parsePrefix } from "../src/net/ip.js";
import { sleep } from "../src/lab/processes.js";
import { openStore } from "../src/store/open.js";
import { labName, labStatus, runTrellis } from "../test/support/lab.js";
import { sweepStaleNamespaces } from "../test/support/netns.js";
import { gitCommit } from "./commit.js";
import { newMade, removeOnExit, summarize, type Made, type Summary } from "./net-support.js";
import { measureThroughput, type IperfPath, type PairFigures } from "./net-throughput.js";
import { connectTimes, latency, residentMemory, round, ruleEvents, type LatencyStats, type Memory, type Netns } from "./svc-support.js";

const ROOT = resolve(import.meta.dirname, "..");
const PROBE_PORT = 7777;
const IPERF_PORT = 5201;
const GROUPS = 100;
const EXTRA_NODES = 40;
const GOALS = { latencyP99Ms: 1000, throughputRatio: 0.95, connectRatio: 0.9, rssGrowthMiB: 50 };

const { values } = parseArgs({
  options: {
    pods: { type: "string", default: "10000" },
    policies: { type: "string", default: "1000" },
    changes: { type: "string", default: "50" },
    seconds: { type: "string", default: "5" },
    repeats: { type: "string", default: "3" },
    connects: { type: "string", default: "2000" },
  },
});
const options = {
  pods: whole("--pods", values.pods!, 0, 10_000),
  policies: whole("--policies", values.policies!, 1, 5_000),
  changes: whole("--changes", values.changes!, 1, 500),
  seconds: whole("--seconds", values.seconds!, 1, 60),
  repeats: whole("--repeats", values.repeats!, 1, 20),
  connects: whole("--connects", values.connects!, 100, 100_000),
};

function whole(flag: string, text: string, min: number, max: number): number {
  const value = Number(text);
  if (!/^\d+$/.test(text) || value < min || value > max) throw new Error(`${flag} ${JSON.stringify(text)} is invalid: expected a whole number from ${min} to ${max}`);
  return value;
}

interface Phase {
  throughput: PairFigures;
  /** Connections a second, sender to receiver and to bystander, from the mean connect time. */
  connectsPerSecond: { receiver: number; bystander: number };
  connectMicros: { receiver: LatencyStats; bystander: LatencyStats };
}

interface Report {
  startedAt: string;
  commit: string;
  machine: { cpus: number; loadStart: number[]; loadEnd?: number[] };
  options: typeof options;
  noPolicy?: Phase;
  withPolicies?: Phase;
  /** From the store write of the 1,000 policies to the sender's rule on the receiving node. */
  firstProgrammingMs?: number;
  latencyMs?: LatencyStats;
  memory?: { podsOnly: Memory; withPolicies: Memory; growthMiB: number; anonGrowthMiB: number };
  stepsPerChange?: Summary;
  ratios?: Record<string, number>;
  goals: Record<string, { goal: string; value: number; met: boolean }>;
  errors: string[];
}

async function main(): Promise<void> {
  const made = newMade();
  const { remove } = removeOnExit(made);
  const startedAt = new Date().toISOString();
  const report: Report = { startedAt, commit: gitCommit(ROOT), machine: { cpus: cpus().length, loadStart: loadavg().map((x) => round(x, 2)) }, options, goals: {}, errors: [] };
  const say = (line: string) => console.log(line);
  try {
    sweepStaleNamespaces();
    await run(report, made, say);
  } catch (error) {
    report.errors.push((error as Error).stack ?? String(error));
    say(`FAILED: ${(error as Error).message}`);
  } finally {
    await remove();
  }
  report.machine.loadEnd = loadavg().map((x) => round(x, 2));
  const out = join(ROOT, "bench/results", `policy-${startedAt.replace(/[:.]/g, "-")}.json`);
  mkdirSync(dirname(out), { recursive: true });
  writeFileSync(out, `${JSON.stringify(report, null, 2)}\n`);
  printSummary(report);
  console.log(`\nwrote ${out}`);
  if (report.errors.length) process.exitCode = 1;
}

async function run(report: Report, made: Made, say: (line: string) => void): Promise<void> {
  const name = labName("bpol");
  say(`lab up --name ${name}: 2 nodes, 2 pods each, IPv4, direct routing`);
  const up = runTrellis(["lab", "up", "--name", name, "--nodes", "2", "--pods-per-node", "2", "--family", "ipv4", "--mode", "direct", "--pod-labels", "bench=yes"], 300_000);
  if (up.status !== 0) throw new Error(`lab up failed: ${up.stderr}${up.stdout.slice(-2000)}`);
  const status = labStatus(name);
  const pod = (podName: string) => status.pods.find((candidate) => candidate.name === podName)!;
  const [sender, receiver, bystander] = [pod("node1-pod0"), pod("node2-pod0"), pod("node2-pod1")];
  const receivingNode = status.nodes.find((node) => node.name === "node2")!;
  const netns = (ns: { name: string; netns: string }): Netns => ({ name: ns.name, path: ns.netns });
  const iperf = (to: typeof receiver, label: string): IperfPath => ({ label, clientNetns: sender.netns, serverNetns: to.netns, address: to.addresses[0] });

  const phase = async (label: string): Promise<Phase> => {
    say(`${label}: throughput, ${options.repeats} rounds of ${options.seconds} s to each receiver`);
    const [throughput] = await measureThroughput([{ name: label, subject: iperf(receiver, `${sender.name} → ${receiver.name}`), baseline: iperf(bystander, `${sender.name} → ${bystander.name}`) }], options, made, say);
    say(`${label}: ${options.connects} connects to each receiver`);
    const [toReceiver, toBystander] = await connectTimes(netns(sender), [{ host: receiver.addresses[0], port: PROBE_PORT }, { host: bystander.addresses[0], port: PROBE_PORT }], options.connects, 2_000);
    const stats = { receiver: latency(toReceiver), bystander: latency(toBystander) };
    return { throughput, connectMicros: stats, connectsPerSecond: { receiver: Math.round(1e6 / stats.receiver.mean), bystander: Math.round(1e6 / stats.bystander.mean) } };
  };

  // The lab's own start (agents' first syncs, its check) settles, and the pods' probe servers
  // (Node.js processes) are warmed by a full round of connects, before anything is measured:
  // else the first phase runs on colder servers than the second.
  await sleep(10_000);
  say("warming the probe servers: one discarded round of connects");
  await connectTimes(netns(sender), [{ host: receiver.addresses[0], port: PROBE_PORT }, { host: bystander.addresses[0], port: PROBE_PORT }], options.connects, 2_000);
  report.noPolicy = await phase("no policy");

  const store = await openStore(status.store);
  made.stores.add(store);
  const cluster = await openCluster(store);
  say(`${options.pods} Pods on ${EXTRA_NODES} more nodes in the store`);
  await addPods(cluster, options.pods);
  await sleep(5_000);
  const podsOnly = residentMemory(receivingNode.agentPid);

  const dir = mkTemp(made);
  const events = await Promise.all(status.nodes.map((node) => ruleEvents({ name: node.name, path: node.netns }, dir, made)));
  const receiverEvents = events[1];
  say(`${options.policies} NetworkPolicies selecting ${receiver.name}`);
  const mark = receiverEvents.mark();
  const written = performance.timeOrigin + performance.now();
  await applyInChunks(cluster, policies(options.policies, sender.name, receiver.name));
  const enforced = await receiverEvents.until(portPattern(IPERF_PORT), mark, 120_000, () => undefined);
  report.firstProgrammingMs = Math.round(enforced - written);
  say(`  the sender's rule on ${receivingNode.name} ${report.firstProgrammingMs} ms after the write began`);
  await sleep(5_000);
  const withPolicies = residentMemory(receivingNode.agentPid);
  report.memory = { podsOnly, withPolicies, growthMiB: round(withPolicies.rssMiB - podsOnly.rssMiB, 1), anonGrowthMiB: round(withPolicies.anonMiB - podsOnly.anonMiB, 1) };

  report.withPolicies = await phase(`${options.policies} policies`);

  say(`${options.changes} changes, one policy each, timed to both nodes' kernels`);
  const logBefore = readFileSync(receivingNode.agentLog, "utf8").length;
  const samples: number[] = [];
  for (let k = 0; k < options.changes; k++) {
    const port = 20_000 + k;
    const marks = events.map((watch) => watch.mark());
    const start = performance.timeOrigin + performance.now();
    await applyObjects(cluster, [{
      apiVersion: "networking.k8s.io/v1", kind: "NetworkPolicy",
      metadata: { namespace: "default", name: `change-${k}` },
      spec: { podSelector: { matchLabels: { bench: "yes" } }, ingress: [{ from: [{ podSelector: { matchLabels: { group: `g${k % GROUPS}` } } }], ports: [{ port }] }] },
    }]);
    const seen = await Promise.all(events.map((watch, i) => watch.until(portPattern(port), marks[i], 30_000, () => undefined)));
    samples.push(Math.max(...seen) - start);
  }
  report.latencyMs = latency(samples);
  const steps = readFileSync(receivingNode.agentLog, "utf8").slice(logBefore).split("\n").filter((line) => line.includes("policy rules synced")).map((line) => (JSON.parse(line) as { steps: number }).steps);
  report.stepsPerChange = summarize(steps);
  for (const watch of events) watch.stop();

  const a = report.noPolicy;
  const b = report.withPolicies;
  report.ratios = {
    throughputVsBystander: b.throughput.ratio,
    throughputVsNoPolicy: round(b.throughput.subject.gbps.median / a.throughput.subject.gbps.median, 3),
    connectsVsBystander: round(b.connectsPerSecond.receiver / b.connectsPerSecond.bystander, 3),
    connectsVsNoPolicy: round(b.connectsPerSecond.receiver / a.connectsPerSecond.receiver, 3),
  };
  const goal = (key: string, text: string, value: number, met: boolean) => (report.goals[key] = { goal: text, value, met });
  goal("latencyP99", `p99 < ${GOALS.latencyP99Ms} ms`, report.latencyMs.p99, report.latencyMs.p99 < GOALS.latencyP99Ms);
  goal("throughput", `≥ ${GOALS.throughputRatio}× no policy`, report.ratios.throughputVsNoPolicy, report.ratios.throughputVsNoPolicy >= GOALS.throughputRatio);
  goal("connects", `≥ ${GOALS.connectRatio}× no policy`, report.ratios.connectsVsNoPolicy, report.ratios.connectsVsNoPolicy >= GOALS.connectRatio);
  goal("rssGrowth", `< ${GOALS.rssGrowthMiB} MiB`, report.memory.growthMiB, report.memory.growthMiB < GOALS.rssGrowthMiB);
}

function mkTemp(made: Made): string {
  const dir = join("/tmp", `trellis-bench-policy-${process.pid}`);
  mkdirSync(dir, { recursive: true });
  made.dirs.add(dir);
  return dir;
}

/** `count` Pods spread over EXTRA_NODES nodes (pod CIDRs from the store's allocator), each in one of GROUPS groups. */
async function addPods(cluster: Cluster, count: number): Promise<void> {
  const nodes: NodeRecord[] = [];
  for (let i = 0; i < EXTRA_NODES; i++) nodes.push((await addNode(cluster, `bench-node-${i}`)).result);
  const pods = Array.from({ length: count }, (_, i) => {
    const node = nodes[i % EXTRA_NODES];
    const block = parsePrefix(node.podCidrs[0]);
    const ip = formatIp({ family: 4, value: block.network + BigInt(2 + Math.floor(i / EXTRA_NODES)) });
    return {
      apiVersion: "v1", kind: "Pod",
      metadata: { namespace: "default", name: `bench-${i}`, labels: { group: `g${i % GROUPS}` } },
      spec: { nodeName: node.name, containers: [{ name: "app", ports: [{ name: "http", containerPort: 8080 }] }] },
      status: { phase: "Running", podIP: ip, podIPs: [{ ip }] },
    };
  });
  await applyInChunks(cluster, pods);
}

async function applyInChunks(cluster: Cluster, objects: readonly object[]): Promise<void> {
  for (let i = 0; i < objects.length; i += 500) await applyObjects(cluster, objects.slice(i, i + 500));
}

/** `count` policies selecting the receiver: each admits a group on a port of its own; the last admits the sender. */
function policies(count: number, sender: string, receiver: string): object[] {
  const selectReceiver = { matchLabels: { "trellis.dev/lab-pod": receiver } };
  const list: object[] = Array.from({ length: count - 1 }, (_, i) => ({
    apiVersion: "networking.k8s.io/v1", kind: "NetworkPolicy",
    metadata: { namespace: "default", name: `p-${String(i).padStart(5, "0")}` },
    spec: { podSelector: selectReceiver, ingress: [{ from: [{ podSelector: { matchLabels: { group: `g${i % GROUPS}` } } }], ports: [{ port: 10_000 + i }] }] },
  }));
  list.push({
    apiVersion: "networking.k8s.io/v1", kind: "NetworkPolicy",
    metadata: { namespace: "default", name: "zz-sender" },
    spec: { podSelector: selectReceiver, ingress: [{ from: [{ podSelector: { matchLabels: { "trellis.dev/lab-pod": sender } } }], ports: [{ port: PROBE_PORT }, { port: IPERF_PORT }] }] },
  });
  return list;
}

/**
 * A netlink message (hex) that puts `port` in place: a rule comparing the destination port with it
 * (the cmp's data attribute: length 6, type 1, the port), or a port lookup's element for TCP and
 * it (the key's data attribute: length 12, type 1, protocol 6 and the port, each in 4 bytes).
 */
function portPattern(port: number): RegExp {
  const hex = port.toString(16).padStart(4, "0");
  return new RegExp(`06000100${hex}|0c00010006000000${hex}0000`);
}

function printSummary(report: Report): void {
  console.log("\npolicy bench");
  if (report.noPolicy && report.withPolicies) {
    const line = (label: string, phase: Phase) =>
      console.log(`  ${label.padEnd(14)} receiver ${phase.throughput.subject.gbps.median} Gbit/s, ${phase.connectsPerSecond.receiver} conn/s; bystander ${phase.throughput.baseline.gbps.median} Gbit/s, ${phase.connectsPerSecond.bystander} conn/s`);
    line("no policy", report.noPolicy);
    line(`${report.options.policies} policies`, report.withPolicies);
  }
  if (report.ratios) console.log(`  ratios ${JSON.stringify(report.ratios)}`);
  if (report.latencyMs) console.log(`  programming latency ms ${JSON.stringify(report.latencyMs)}; first ${report.options.policies} policies ${report.firstProgrammingMs} ms`);
  if (report.memory) console.log(`  agent RSS ${report.memory.podsOnly.rssMiB} → ${report.memory.withPolicies.rssMiB} MiB (anon ${report.memory.podsOnly.anonMiB} → ${report.memory.withPolicies.anonMiB})`);
  if (report.stepsPerChange) console.log(`  steps per change: median ${report.stepsPerChange.median}, max ${report.stepsPerChange.max}`);
  for (const [key, goal] of Object.entries(report.goals)) console.log(`  ${goal.met ? "met   " : "MISSED"} ${key}: ${goal.value} (${goal.goal})`);
  for (const error of report.errors) console.log(`  error: ${error}`);
}

await main();
