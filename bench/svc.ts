/**
 * The agent's Service proxy at scale, measured in one run with its baseline beside it:
 *
 * - dispatch: TCP connect time from one pod to another through a ClusterIP with 1, 1,000 and
 *   all the Services present, against the same connects straight to the endpoint pod's IP;
 * - sync: all the Services (5 endpoints each) added by `trellis apply`, 1,000 to a file; one
 *   EndpointSlice changed, from the store write (its trellis.dev/applied-at) to the new rule in
 *   the kernel (its netlink notification, bench/nft-events.c), over many changes; the full sync of a restarted agent; the
 *   agent's resident memory; its CPU while nothing changes, resyncing every 2 s with masquerade on.
 *
 * One node namespace runs `dist/trellis agent` (its own SQLite store and plan, direct mode, no
 * masquerade, Service rules synced at every change, debug log so that every sync logs its
 * duration, periodic resync off so that none lands among the changes); two pod namespaces are
 * attached through the native CNI plugin and that agent. A tiny TCP server runs in one pod, the
 * client in the other. One Service selects the server pod (its Pod object applied as a kubelet
 * would); the others have no selector and an EndpointSlice of 5 addresses in the pod CIDR where
 * no pod is, so their rules exist without pods. Everything runs in namespaces the bench makes,
 * as root, and is removed at the end, on failure and on Ctrl-C.
 *
 *   npm run bench:svc -- [--services 10000] [--endpoints 5] [--changes 100] [--connects 3000]
 *                        [--chunk 1000] [--restarts 3]
 *   TRELLIS_BENCH_SERVICES=50 npm run bench:svc     (a small run: --services defaults to it)
 *   TRELLIS_BENCH_AGENT_NODE_OPTIONS="--cpu-prof --cpu-prof-dir=DIR" npm run bench:svc   (profiles the agent of the idle and responsiveness phases)
 *   npm run bench:svc -- --kubernetes [--services N] [--changes N] [--connects N] [--restarts N]
 *                                     (the Trellis proxy against kube-proxy: bench/svc-kube.ts)
 */
import { execFile, execFileSync, spawn } from "node:child_process";
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, readSync, statSync, writeFileSync } from "node:fs";
import { cpus, loadavg, tmpdir, totalmem } from "node:os";
import { dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { parseArgs, promisify } from "node:util";
import { APPLIED_AT, applyObjects, listObjects, objectKey } from "../src/cluster/apply.js";
import { openCluster } from "../src/cluster/state.js";
import type { EndpointSlice, Pod, Service } from "../src/cluster/objects/types.js";
import { PROXY_TABLE_NAMES, type ProxyNode } from "../src/dataplane/service-proxy.js";
import { logTail, sleep, startDetached, stopProcesses, type StartedProcess } from "../src/lab/processes.js";
import { parseIp, parsePrefix } from "../src/net/ip.js";
import { encodeBatch } from "../src/nft/netlink.js";
import { openStore } from "../src/store/open.js";
import { execCniPluginOk, pluginConfig, type CniConfList } from "../test/support/cni-exec.js";
import { inNetns, sweepStaleNamespaces, type TestNetns } from "../test/support/netns.js";
import { nativePluginDir } from "../test/support/node-agent.js";
import { addressesOf, TRELLIS, type PodAttachmentResult } from "../test/support/trellis-cni.js";
import { gitCommit } from "./commit.js";
import { measureKernelFloor, portsOf, type KernelFloor } from "./svc-floor.js";
import { kubeComparisonRows, runKubeComparison, type KubeComparison } from "./svc-kube.js";
import {
  connectTimes, dnatRulePattern, latency, metricsOf, metricValue, processTreeCpuSeconds, residentMemory, round, ruleEvents, sum,
  type LatencyStats, type Memory, type Target,
} from "./svc-support.js";
import { newMade, removeOnExit, type Made } from "./net-support.js";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const execFileAsync = promisify(execFile);

const GOALS = { fullSyncMs: 1000, changeMs: 20, rssMB: 100, dispatchRatio: 1.05 };

const PLAN = "podCidrs: [10.250.0.0/16, fd00:250::/48]\nserviceCidrs: [10.251.0.0/16, fd00:251::/108]\n";
const NODE_NAME = "node";
const NODE_ADDRESSES = ["198.18.250.1/24", "fd00:198:250::1/64"];
const METRICS_URL = "http://127.0.0.1:9656/metrics";
const SERVER_PORT = 8080;
const SERVICE_PORT = 80;
const TARGET_SERVICE = "bench-target";
/**
 * The endpoints of the Services without pods: 10.250.128.0/17, where the node's pod range
 * (the plan's first /24) never reaches; the 32,768 of them repeat beyond 6,553 Services of 5.
 */
const FILLER_BASE = (10 << 24) | (250 << 16) | (128 << 8);
const FILLER_ADDRESSES = 1 << 15;
/** The address change k puts in a slice: 10.250.64.0/18, used by nothing else. */
const CHANGE_BASE = (10 << 24) | (250 << 16) | (64 << 8);
const MAX_SERVICES = 60_000;
const LIVE_TIMEOUT_MS = 600_000;

interface BenchOptions {
  kubernetes: boolean;
  services: number;
  endpoints: number;
  changes: number;
  connects: number;
  chunk: number;
  restarts: number;
}

interface DispatchPoint {
  /** Services in the store, each with a ClusterIP in the map (the target one included). */
  services: number;
  /** Connect time in µs, through the ClusterIP and straight to the pod. */
  clusterIpUs: LatencyStats;
  directUs: LatencyStats;
  /** clusterIpUs.p50 / directUs.p50 */
  ratio: number;
}

interface BulkStep {
  /** Services present once this step is live. */
  services: number;
  added: number;
  /** Every `trellis apply` of this step (CLI wall time, from spawn to exit). */
  applyMs: number[];
  /** The last apply returning → the map holding every Service (the end of the agent's sync that made it so). */
  lastApplyToLiveMs: number;
  /** The first apply starting → live. */
  firstApplyToLiveMs: number;
  /** Syncs the agent ran meanwhile, and their durations. */
  syncsMs: number[];
}

interface ChangeFigures {
  /** Store write (the slice's applied-at) → the new endpoint's DNAT rule reported by the kernel (bench/nft-events.c). */
  writeToLiveMs: LatencyStats;
  /** `trellis apply -f -` of the one slice, spawn to exit. */
  applyMs: LatencyStats;
  /** The agent's own duration of the sync that applied each change (its debug log). */
  syncMs: LatencyStats;
  /** Of each such sync, working out the steps, and writing them (the netlink writer's run). */
  computeMs: LatencyStats;
  writeMs: LatencyStats;
  /** What the agent observed into trellis_network_programming_duration_seconds over the changes. */
  agentProgramming: HistogramDelta;
  /** trellis_sync_proxy_rules_duration_seconds over the changes. */
  agentSync: HistogramDelta;
}

interface FullSyncFigures {
  /** Agent start → its first (full) sync logged as done. */
  startToLiveMs: LatencyStats;
  /** That sync's own duration (compute, render, nft, conntrack), from its log. */
  syncMs: LatencyStats;
}

interface HistogramDelta {
  count: number;
  meanMs: number;
  /** Upper bounds of the buckets holding the median and the 99th percentile. */
  p50AtMostMs: number;
  p99AtMostMs: number;
}

interface Row {
  figure: string;
  value: string;
  goal: string;
  result: string;
}

interface IdleFigures {
  resyncSeconds: number;
  windowSeconds: number;
  /** CPU seconds of the agent and every process below it, over the window. */
  cpuSeconds: number;
  /** Of one CPU. */
  percent: number;
}

export interface SvcBenchReport {
  benchmark: "svc";
  startedAt: string;
  /** Load averages when the run started and ended: a busy machine makes every figure worse. */
  machine: { node: string; kernel: string; nft: string; cpus: number; cpuModel: string; memoryGiB: number; loadStart: number[]; loadEnd?: number[] };
  commit: string;
  options: BenchOptions;
  setup?: { serverPod: string; clientPod: string; clusterIP: string };
  dispatch: DispatchPoint[];
  bulk: BulkStep[];
  changes?: ChangeFigures;
  fullSync?: FullSyncFigures;
  /** The agent holding every Service: before and after the changes, and after the last restart's full sync. */
  memory?: { beforeChanges: Memory; steady: Memory; afterFullSync?: Memory };
  /** The agent's CPU while nothing changes, its periodic resync and masquerade check on. */
  idle?: IdleFigures;
  /** CNI ADD and /healthz while the proxy writes every table whole (repairing them), against the same idle. */
  responsiveness?: ResponsivenessFigures;
  /** The kernel's own cost of the agent's ruleset and of one change, prepared beforehand (bench/svc-floor.ts). */
  floor?: KernelFloor;
  /** A pod with a hostPort added (and deleted) through the agent, beside 1 Service and beside all of them. */
  hostPortAdds: Array<{ services: number; addMs: LatencyStats }>;
  /** The proxy's own gauges once every Service is in: what the kernel holds. */
  nftables?: Record<string, number>;
  ratios?: Record<string, number>;
  goals?: Record<string, boolean>;
  errors: string[];
  table?: Row[];
  /** `--kubernetes`: the Trellis proxy against kube-proxy on a Kubernetes lab. */
  kubernetes?: KubeComparison;
}

/** The node, its agent and pods, and where everything of theirs lives. */
interface Cluster {
  readonly dir: string;
  readonly node: TestNetns;
  readonly storeSpec: string;
  readonly log: AgentLog;
  agent: StartedProcess;
  readonly agentArgv: string[];
  server?: { netns: TestNetns; address: string };
  client?: { netns: TestNetns; address: string };
}

async function main(): Promise<void> {
  const options = parseOptions(process.argv.slice(2));
  if (process.getuid?.() !== 0) throw new Error("bench:svc needs root: it creates network namespaces and starts an agent in them");
  if (!existsSync(TRELLIS)) throw new Error(`${TRELLIS} does not exist; run npm run build (npm run bench:svc does)`);
  const made = newMade();
  const { remove, interrupted } = removeOnExit(made);

  const startedAt = new Date().toISOString();
  const report: SvcBenchReport = { benchmark: "svc", startedAt, machine: machineInfo(), commit: gitCommit(ROOT), options, dispatch: [], bulk: [], hostPortAdds: [], errors: [] };
  const say = (line: string) => interrupted() || console.log(line);
  if (report.machine.loadStart[0]! > report.machine.cpus / 2) say(`warning: load average ${report.machine.loadStart[0]} on ${report.machine.cpus} CPUs; figures will suffer`);
  try {
    sweepStaleNamespaces();
    if (options.kubernetes) {
      report.kubernetes = await runKubeComparison(options, made, say);
      report.table = kubeComparisonRows(report.kubernetes);
    } else await measure(options, report, made, say);
  } catch (error) {
    report.errors.push((error as Error).message);
    say(`FAILED: ${(error as Error).message}`);
    if (failureNode) {
      const metrics = await agentMetrics(failureNode).catch((metricsError: unknown) => `(no metrics: ${String(metricsError)})`);
      say(`the agent's proxy state:\n${metrics.split("\n").filter((line) => /^trellis_proxy_(sync_running|sync_pending|changes_waiting|service_ports)|^trellis_sync_proxy_rules_(last_timestamp|duration_seconds_count)/.test(line)).join("\n")}`);
    }
    // The agent's log says why; it goes with the temp directory otherwise.
    for (const agent of made.agents) {
      try {
        say(`agent ${agent.pid} and its children now:\n${execFileSync("ps", ["-o", "pid,ppid,stat,time,rss,wchan:20,args", "--ppid", String(agent.pid), "-p", String(agent.pid)], { encoding: "utf8" })}`);
      } catch {
        say(`agent ${agent.pid} is gone`);
      }
    }
    for (const dir of made.dirs) {
      const log = join(dir, "agent.log");
      if (existsSync(log)) {
        const kept = join(ROOT, "bench/results", `svc-agent-${startedAt.replace(/[:.]/g, "-")}.log`);
        mkdirSync(dirname(kept), { recursive: true });
        writeFileSync(kept, readFileSync(log));
        say(`the end of the agent's log (all of it in ${kept}):\n${logTail(log)}`);
      }
    }
  } finally {
    await remove();
  }
  report.machine.loadEnd = roundedLoad();
  report.ratios = report.kubernetes?.ratios ?? ratios(report);
  report.goals = report.kubernetes?.goals ?? goals(report);
  report.table = report.kubernetes ? kubeComparisonRows(report.kubernetes) : tableRows(report);
  printTable(report);
  const out = join(ROOT, "bench/results", `svc-${startedAt.replace(/[:.]/g, "-")}.json`);
  mkdirSync(dirname(out), { recursive: true });
  writeFileSync(out, `${JSON.stringify(report, null, 2)}\n`);
  console.log(`\nwrote ${out}`);
  if (report.errors.length > 0) process.exitCode = 1;
}

/** The node of the run, for the diagnostics printed when a measurement fails. */
let failureNode: TestNetns | undefined;

async function measure(options: BenchOptions, report: SvcBenchReport, made: Made, say: (line: string) => void): Promise<void> {
  const cluster = await startCluster(made);
  failureNode = cluster.node;
  say(`node ${cluster.node.name}: agent ${cluster.agent.pid}, store ${cluster.storeSpec}`);
  const { server, client } = await attachPods(cluster, made);
  const clusterIP = await applyTarget(cluster);
  report.setup = { serverPod: server.address, clientPod: client.address, clusterIP };
  say(`server pod ${server.address}:${SERVER_PORT}, client pod ${client.address}, Service ${TARGET_SERVICE} ${clusterIP}:${SERVICE_PORT}`);
  await connectTimes(client.netns, [{ host: clusterIP, port: SERVICE_PORT }], 1, 10_000).catch((error: Error) => {
    throw new Error(`the ClusterIP does not answer once its rules are in: ${error.message}`);
  });
  const baseElements = await serviceIpElements(cluster.node);

  const points = [...new Set([1, 1000, options.services])].filter((n) => n <= options.services).sort((a, b) => a - b);
  let present = 1;
  for (const point of points) {
    if (point > present) {
      const step = await addFillers(cluster, options, present, point, baseElements, say);
      report.bulk.push(step);
      present = point;
    }
    const figures = await dispatchAt(client.netns, present, { host: clusterIP, port: SERVICE_PORT }, { host: server.address, port: SERVER_PORT }, options.connects);
    report.dispatch.push(figures);
    say(`dispatch with ${services(present)}: ClusterIP p50 ${figures.clusterIpUs.p50} µs, pod IP p50 ${figures.directUs.p50} µs (${figures.ratio.toFixed(3)}x)`);
    if (point === points[0] || point === points.at(-1)) {
      const adds = await hostPortAdds(cluster, made);
      report.hostPortAdds.push({ services: present, addMs: adds });
      say(`pod with a hostPort, ADD beside ${services(present)}: p50 ${adds.p50} ms, p99 ${adds.p99} ms`);
    }
  }
  report.nftables = nftablesGauges(await agentMetrics(cluster.node));

  const beforeChanges = residentMemory(cluster.agent.pid);
  if (options.services > 1) {
    report.changes = await measureChanges(cluster, options, made, say);
  } else {
    say("changes: not measured (no Service besides the target to change)");
  }
  const steady = residentMemory(cluster.agent.pid);
  report.memory = { beforeChanges, steady };
  say(`agent RSS with ${services(options.services)}: ${steady.rssMiB} MiB (peak ${steady.peakRssMiB})`);

  const full = await measureFullSync(cluster, options, made, baseElements + options.services - 1, say);
  report.fullSync = full.figures;
  report.memory.afterFullSync = full.memory;
  report.floor = await measureFloor(cluster, options, made, say);
  report.idle = await measureIdle(cluster, made, say);
  report.responsiveness = await measureResponsiveness(cluster, made, say);
  await connectTimes(client.netns, [{ host: clusterIP, port: SERVICE_PORT }], 1, 10_000).catch((error: Error) => {
    throw new Error(`the ClusterIP no longer answers after the restarts: ${error.message}`);
  });
}

/**
 * The node namespace with an underlay veth holding the node's addresses (as
 * test/support/node-agent.ts makes it) and an agent in it; resolves once the agent wrote its
 * CNI config and synced its Service rules once.
 */
async function startCluster(made: Made): Promise<Cluster> {
  const dir = mkdtempSync(join(tmpdir(), "trellis-bench-svc-"));
  made.dirs.add(dir);
  writeFileSync(join(dir, "plan.yaml"), PLAN);
  const node = made.pool.create("bsvcnode");
  inNetns(node, "sh", ["-c", "ip link add tragent0 type veth peer name tragent1 && sysctl -qw net.ipv6.conf.tragent0.disable_ipv6=0"]);
  for (const address of NODE_ADDRESSES) inNetns(node, "ip", ["address", "add", address, "dev", "tragent0", ...(address.includes(":") ? ["nodad"] : [])]);
  inNetns(node, "ip", ["link", "set", "tragent1", "up"]);
  inNetns(node, "ip", ["link", "set", "tragent0", "up"]);
  const storeSpec = `sqlite:${join(dir, "cluster.db")}`;
  const agentArgv = [
    TRELLIS, "agent",
    "--node-name", NODE_NAME, "--node-ip", NODE_ADDRESSES.map((address) => address.split("/")[0]).join(","),
    "--store", storeSpec, "--plan", join(dir, "plan.yaml"),
    "--mode", "direct", "--no-masquerade",
    "--proxy-sync-interval", "0", "--resync-interval", "3600", "--log-level", "debug",
    "--cni-conf-dir", join(dir, "net.d"), "--cni-data-dir", join(dir, "cni"), "--cni-socket", join(dir, "cni.sock"),
  ];
  const log = new AgentLog(join(dir, "agent.log"));
  const agent = startDetached(node.path, agentArgv, log.path);
  made.agents.add(agent);
  const cluster: Cluster = { dir, node, storeSpec, log, agent, agentArgv };
  await waitForAgent(cluster, "its CNI config", () => existsSync(join(dir, "net.d", "10-trellis.conflist")), 60_000);
  await waitForAgent(cluster, "its first Service sync", () => log.syncs().length > 0, 60_000);
  return cluster;
}

/** Two pods attached through the native plugin and the agent; a TCP server that accepts and closes in the first. */
async function attachPods(cluster: Cluster, made: Made): Promise<{ server: { netns: TestNetns; address: string }; client: { netns: TestNetns; address: string } }> {
  const list = JSON.parse(readFileSync(join(cluster.dir, "net.d", "10-trellis.conflist"), "utf8")) as CniConfList;
  const attach = async (role: string) => {
    const netns = made.pool.create(`bsvc${role}`);
    const added = await execCniPluginOk({
      command: "ADD", plugin: join(nativePluginDir({ standalone: false }), "trellis"), cniPath: "/usr/lib/cni",
      config: pluginConfig(list, 0), containerId: `bench-${role}`, netns: netns.path, ifname: "eth0", node: cluster.node,
    });
    const address = addressesOf(JSON.parse(added.stdout) as PodAttachmentResult).find((ip) => !ip.includes(":"));
    if (!address) throw new Error(`pod ${role} got no IPv4 address: ${added.stdout}`);
    return { netns, address };
  };
  const server = await attach("server");
  const client = await attach("client");
  const script = `const s=require("net").createServer((c)=>{c.on("error",()=>{});c.destroy()});s.listen(${SERVER_PORT},"0.0.0.0",()=>console.log("listening"))`;
  const child = spawn("nsenter", [`--net=${server.netns.path}`, process.execPath, "-e", script], { stdio: ["ignore", "pipe", "inherit"] });
  made.children.add(child);
  await new Promise<void>((resolvePromise, reject) => {
    child.stdout!.once("data", () => resolvePromise());
    child.once("exit", (code) => reject(new Error(`the TCP server in the server pod exited ${code}`)));
  });
  cluster.server = server;
  cluster.client = client;
  return { server, client };
}

/** The server pod as a kubelet would report it, and the Service selecting it; resolves with its ClusterIP once its rules are in. */
async function applyTarget(cluster: Cluster): Promise<string> {
  const pod = {
    apiVersion: "v1", kind: "Pod",
    metadata: { name: "bench-server", labels: { app: "bench-server" } },
    spec: { nodeName: NODE_NAME, containers: [{ name: "server", ports: [{ containerPort: SERVER_PORT }] }] },
    status: { phase: "Running", podIP: cluster.server!.address, podIPs: [{ ip: cluster.server!.address }], conditions: [{ type: "Ready", status: "True" }] },
  };
  const service = { apiVersion: "v1", kind: "Service", metadata: { name: TARGET_SERVICE }, spec: { selector: { app: "bench-server" }, ports: [{ port: SERVICE_PORT, targetPort: SERVER_PORT }] } };
  const since = Date.now();
  await trellisApply(cluster, [pod, service]);
  const { stdout } = await execFileAsync(TRELLIS, ["get", "services", TARGET_SERVICE, "-o", "json", "--store", cluster.storeSpec]);
  const clusterIP = (JSON.parse(stdout) as { spec: { clusterIPs: string[] } }).spec.clusterIPs[0]!;
  const rule = `dnat to ${cluster.server!.address}:${SERVER_PORT}`;
  await waitForAgent(cluster, `the rule ${rule}`, () => cluster.log.syncs().some((entry) => entry.at >= since) && inNetns(cluster.node, "nft", ["list", "ruleset"]).includes(rule), 30_000);
  return clusterIP;
}

/** Services `from`+1 … `to` (Service 1 is the target), in chunks of applies; resolves once the map holds them all. */
async function addFillers(cluster: Cluster, options: BenchOptions, from: number, to: number, baseElements: number, say: (line: string) => void): Promise<BulkStep> {
  const applyMs: number[] = [];
  const firstStarted = Date.now();
  let lastStarted = firstStarted;
  for (let first = from + 1; first <= to; first += options.chunk) {
    const last = Math.min(to, first + options.chunk - 1);
    const documents = [];
    for (let i = first; i <= last; i++) documents.push(fillerService(i), fillerSlice(i, options.endpoints));
    lastStarted = Date.now();
    const started = performance.now();
    await trellisApply(cluster, documents);
    applyMs.push(Math.round(performance.now() - started));
  }
  const lastReturned = Date.now();
  const live = await untilServiceIps(cluster, baseElements + to - 1, lastStarted);
  const syncsMs = cluster.log.syncs().filter((entry) => entry.at >= firstStarted && entry.at <= live).map((entry) => entry.durationMs);
  const step: BulkStep = { services: to, added: to - from, applyMs, lastApplyToLiveMs: live - lastReturned, firstApplyToLiveMs: live - firstStarted, syncsMs };
  say(
    `added ${services(step.added)} (${applyMs.length} applies, ${sum(applyMs)} ms): live ${step.lastApplyToLiveMs} ms after the last apply returned, ` +
      `${step.syncsMs.length} syncs (longest ${Math.max(0, ...syncsMs)} ms)`,
  );
  return step;
}

function fillerName(i: number): string {
  return `bench-svc-${String(i).padStart(5, "0")}`;
}

function fillerService(i: number): object {
  return { apiVersion: "v1", kind: "Service", metadata: { name: fillerName(i) }, spec: { ports: [{ port: SERVICE_PORT, targetPort: SERVER_PORT }] } };
}

/** Service i's slice: `endpoints` addresses where no pod is, the first replaced by `first` when given. */
function fillerSlice(i: number, endpoints: number, first?: string): object {
  const addresses = Array.from({ length: endpoints }, (_, k) => ipv4(FILLER_BASE + ((i * endpoints + k) % FILLER_ADDRESSES)));
  if (first !== undefined) addresses[0] = first;
  return {
    apiVersion: "discovery.k8s.io/v1", kind: "EndpointSlice",
    metadata: { name: `${fillerName(i)}-1`, labels: { "kubernetes.io/service-name": fillerName(i) } },
    addressType: "IPv4",
    endpoints: addresses.map((address) => ({ addresses: [address], conditions: { ready: true } })),
    ports: [{ name: "", protocol: "TCP", port: SERVER_PORT }],
  };
}

function ipv4(n: number): string {
  return [24, 16, 8, 0].map((shift) => (n >>> shift) & 255).join(".");
}

/**
 * Each change re-applies one filler Service's slice with its first address replaced by a new
 * one, and waits for the kernel to report (bench/nft-events.c) the new endpoint's DNAT rule. The
 * changed Services are spread over the whole range. The slice is applied as `trellis apply`
 * applies it (cluster/apply.ts) from this process: a `trellis apply` process is 70 ms of CPU on
 * a 2-CPU machine, still exiting while the agent syncs, and its cost is measured apart (the
 * CLI's own figure, after the changes).
 */
/** `trellis apply` processes timed after the changes. */
const CLI_APPLIES = 10;

async function measureChanges(cluster: Cluster, options: BenchOptions, made: Made, say: (line: string) => void): Promise<ChangeFigures> {
  const fillers = options.services - 1;
  const store = await openStore(cluster.storeSpec);
  made.stores.add(store);
  const clusterState = await openCluster(store);
  const monitor = await ruleEvents(cluster.node, cluster.dir, made);
  const before = await agentMetrics(cluster.node);
  const writeToLive: number[] = [];
  const apply: number[] = [];
  const sync: number[] = [];
  const compute: number[] = [];
  const write: number[] = [];
  try {
    for (let k = 0; k < options.changes; k++) {
      const service = 2 + (Math.floor(((k + 0.5) * fillers) / options.changes) % fillers);
      const address = ipv4(CHANGE_BASE + k + 1);
      const rule = dnatRulePattern(address, SERVER_PORT);
      const mark = monitor.mark();
      const committed = await applyObjects(clusterState, [fillerSlice(service, options.endpoints, address)]);
      if (committed.result.some((done) => done.outcome === "unchanged")) throw new Error(`change ${k + 1} changed nothing`);
      const stored = await store.get(objectKey("EndpointSlice", "default", `${fillerName(service)}-1`));
      const written = Date.parse((JSON.parse(stored!.value) as { metadata: { annotations: Record<string, string> } }).metadata.annotations[APPLIED_AT]!);
      const seen = await monitor.until(rule, mark, 30_000, () => agentFailure(cluster));
      writeToLive.push(seen - written);
      await waitForAgent(cluster, `the sync of change ${k + 1} logged`, () => cluster.log.syncs().some((entry) => entry.at >= written && !entry.full), 30_000);
      const entry = cluster.log.syncs().find((candidate) => candidate.at >= written && !candidate.full)!;
      sync.push(entry.durationMs);
      compute.push(entry.computeMs);
      write.push(entry.writeMs);
      if ((k + 1) % Math.max(1, Math.floor(options.changes / 10)) === 0) {
        say(`  change ${k + 1}/${options.changes}: ${fillerName(service)} live ${(seen - written).toFixed(1)} ms after the write (sync ${sync.at(-1)} ms)`);
      }
      // The next change is written once this one's sync is over, as an isolated change would be.
      await sleep(20);
    }
  } finally {
    monitor.stop();
  }
  const after = await agentMetrics(cluster.node);
  // The CLI's own cost for one such change: spawn, apply, exit.
  for (let k = 0; k < CLI_APPLIES; k++) {
    const service = 2 + (k % fillers);
    const started = performance.now();
    await trellisApply(cluster, [fillerSlice(service, options.endpoints, ipv4(CHANGE_BASE + options.changes + k + 1))]);
    apply.push(performance.now() - started);
    await sleep(20);
  }
  return {
    writeToLiveMs: latency(writeToLive),
    applyMs: latency(apply),
    syncMs: latency(sync),
    computeMs: latency(compute),
    writeMs: latency(write),
    agentProgramming: histogramDelta(before, after, "trellis_network_programming_duration_seconds"),
    agentSync: histogramDelta(before, after, "trellis_sync_proxy_rules_duration_seconds"),
  };
}

/** The agent stopped (SIGTERM) and started again on the same store `restarts` times: its first sync writes every rule. */
async function measureFullSync(cluster: Cluster, options: BenchOptions, made: Made, expectedElements: number, say: (line: string) => void): Promise<{ figures: FullSyncFigures; memory: Memory }> {
  const startToLive: number[] = [];
  const syncMs: number[] = [];
  let memory: Memory | undefined;
  for (let r = 1; r <= options.restarts; r++) {
    await stopProcesses([cluster.agent.pid]);
    made.agents.delete(cluster.agent);
    const started = Date.now();
    cluster.agent = startDetached(cluster.node.path, cluster.agentArgv, cluster.log.path);
    made.agents.add(cluster.agent);
    const full = () => cluster.log.syncs().find((entry) => entry.at >= started && entry.full);
    await waitForAgent(cluster, "the restarted agent's full sync", () => full() !== undefined, LIVE_TIMEOUT_MS);
    const entry = full()!;
    const elements = await serviceIpElements(cluster.node);
    if (elements !== expectedElements) throw new Error(`after the restarted agent's full sync the map service-ips holds ${elements} elements, expected ${expectedElements}`);
    startToLive.push(entry.at - started);
    syncMs.push(entry.durationMs);
    // Whatever the sync allocated has settled into the resident set by now.
    await sleep(1000);
    memory = residentMemory(cluster.agent.pid);
    say(`restart ${r}/${options.restarts}: rules live ${entry.at - started} ms after start, full sync ${entry.durationMs} ms, RSS ${memory.rssMiB} MiB (peak ${memory.peakRssMiB})`);
  }
  return { figures: { startToLiveMs: latency(startToLive), syncMs: latency(syncMs) }, memory: memory! };
}

const IDLE_RESYNC_SECONDS = 2;
const IDLE_WINDOW_SECONDS = 20;

/**
 * The agent started again as a node runs it, masquerade on, with a resync every 2 s (every
 * check of its tables against the kernel), then left alone: the CPU it and everything it runs
 * (nft included) use over 20 s while nothing changes. At 10,000 Services a check that reads the
 * namespace with nft costs a CPU for seconds.
 */
async function measureIdle(cluster: Cluster, made: Made, say: (line: string) => void): Promise<IdleFigures> {
  await stopProcesses([cluster.agent.pid]);
  made.agents.delete(cluster.agent);
  const argv = cluster.agentArgv.filter((arg) => arg !== "--no-masquerade");
  argv[argv.indexOf("--resync-interval") + 1] = String(IDLE_RESYNC_SECONDS);
  const started = Date.now();
  // TRELLIS_BENCH_AGENT_NODE_OPTIONS (`--cpu-prof --cpu-prof-dir=DIR`, `--trace-gc`, …) reaches
  // this agent alone: it serves the idle and responsiveness phases, so a profile shows them.
  const nodeOptions = process.env.TRELLIS_BENCH_AGENT_NODE_OPTIONS;
  cluster.agent = startDetached(cluster.node.path, nodeOptions ? ["env", `NODE_OPTIONS=${nodeOptions}`, ...argv] : argv, cluster.log.path);
  made.agents.add(cluster.agent);
  await waitForAgent(cluster, "the idle agent's full sync", () => cluster.log.syncs().some((entry) => entry.at >= started && entry.full), LIVE_TIMEOUT_MS);
  await sleep(2 * IDLE_RESYNC_SECONDS * 1000);
  const before = processTreeCpuSeconds(cluster.agent.pid);
  await sleep(IDLE_WINDOW_SECONDS * 1000);
  const cpuSeconds = round(processTreeCpuSeconds(cluster.agent.pid) - before, 2);
  const figures = { resyncSeconds: IDLE_RESYNC_SECONDS, windowSeconds: IDLE_WINDOW_SECONDS, cpuSeconds, percent: round((100 * cpuSeconds) / IDLE_WINDOW_SECONDS, 1) };
  say(`idle agent (resync every ${IDLE_RESYNC_SECONDS} s, masquerade on): ${cpuSeconds} CPU s over ${IDLE_WINDOW_SECONDS} s, ${figures.percent} % of one CPU`);
  return figures;
}

interface ResponsivenessFigures {
  /** Full syncs measured: each a repair of every table, deleted by hand. */
  fullSyncs: number;
  fullSyncMs: LatencyStats;
  idle: { cniAddMs: LatencyStats; healthzMs: LatencyStats };
  duringFullSync: { cniAddMs: LatencyStats; healthzMs: LatencyStats };
}

/** The agent's Services and slices from its store, worked out as it works them out, written straight to a fresh namespace. */
async function measureFloor(cluster: Cluster, options: BenchOptions, made: Made, say: (line: string) => void): Promise<KernelFloor> {
  const store = await openStore(cluster.storeSpec);
  made.stores.add(store);
  const [services, slices, pods] = await Promise.all([listObjects<Service>(store, "Service"), listObjects<EndpointSlice>(store, "EndpointSlice"), listObjects<Pod>(store, "Pod")]);
  const node: ProxyNode = {
    name: NODE_NAME,
    addresses: NODE_ADDRESSES.map((address) => parseIp(address.split("/")[0])),
    podCidrs: [parsePrefix("10.250.0.0/16"), parsePrefix("fd00:250::/48")],
    serviceCidrs: [parsePrefix("10.251.0.0/16"), parsePrefix("fd00:251::/108")],
  };
  const floor = await measureKernelFloor(node, portsOf(services.objects, slices.objects, pods.objects), made, join(dirname(TRELLIS), "trellis-nft-batch"), Math.max(20, options.changes));
  say(`kernel floor (the agent's ruleset, prepared, straight to a fresh namespace): full write ${floor.fullWriteMs} ms; one change p50 ${floor.changeUs.p50} µs, p99 ${floor.changeUs.p99} µs (encoding the full write apart: ${floor.encodeFullMs} ms)`);
  return floor;
}

const HOSTPORT_ADDS = 30;

/**
 * A pod with a hostPort, added and deleted HOSTPORT_ADDS times through the native plugin and the
 * agent: each ADD writes the node's hostPort table (and each DEL removes it), beside whatever
 * Services the node has; the ADDs' durations.
 */
async function hostPortAdds(cluster: Cluster, made: Made): Promise<LatencyStats> {
  const list = JSON.parse(readFileSync(join(cluster.dir, "net.d", "10-trellis.conflist"), "utf8")) as CniConfList;
  const netns = made.pool.create("bsvchp");
  const config = { ...pluginConfig(list, 0), runtimeConfig: { portMappings: [{ hostPort: 18080, containerPort: SERVER_PORT, protocol: "tcp" }] } };
  const cni = (command: "ADD" | "DEL") => execCniPluginOk({
    command, plugin: join(nativePluginDir({ standalone: false }), "trellis"), cniPath: "/usr/lib/cni",
    config, containerId: "bench-hostport", netns: netns.path, ifname: "eth0", node: cluster.node,
  });
  const adds: number[] = [];
  for (let i = 0; i < HOSTPORT_ADDS; i++) {
    const started = performance.now();
    const added = await cni("ADD");
    adds.push(performance.now() - started);
    // Listed with one netlink dump of the tables: `nft list tables` reads every chain first.
    if (i === 0 && !inNetns(cluster.node, join(dirname(TRELLIS), "trellis-nft-batch"), ["--tables"]).includes("trellis-hostports")) throw new Error(`a hostPort ADD left no hostPort table: ${added.stdout}`);
    await cni("DEL");
  }
  made.pool.remove(netns);
  return latency(adds);
}

const RESPONSIVENESS_REPAIRS = 5;

/** One request: when it started (epoch ms) and how long it took. */
interface Sample {
  readonly at: number;
  readonly ms: number;
}
const HEALTHZ_EVERY_MS = 10;

/**
 * What a CNI runtime and the kubelet's probe see while the proxy writes every table whole: the
 * agent (resync every 2 s, as measureIdle leaves it) has its tables deleted by hand, and its
 * next resync rewrites them all. Meanwhile one process in the node's namespace asks /healthz
 * every 10 ms and another pod is added and deleted through the native plugin and the agent's
 * socket, over and over; the same runs for as long with nothing being written, for the baseline.
 */
async function measureResponsiveness(cluster: Cluster, made: Made, say: (line: string) => void): Promise<ResponsivenessFigures> {
  const list = JSON.parse(readFileSync(join(cluster.dir, "net.d", "10-trellis.conflist"), "utf8")) as CniConfList;
  const netns = made.pool.create("bsvcprobe");
  const cni = (command: "ADD" | "DEL") => execCniPluginOk({
    command, plugin: join(nativePluginDir({ standalone: false }), "trellis"), cniPath: "/usr/lib/cni",
    config: pluginConfig(list, 0), containerId: "bench-probe", netns: netns.path, ifname: "eth0", node: cluster.node,
  });
  /** ADD (timed) and DEL, over and over until `until()`; each ADD's start (epoch ms) and duration. */
  const cniLoop = async (until: () => boolean) => {
    const adds: Sample[] = [];
    while (!until()) {
      const at = Date.now();
      const started = performance.now();
      await cni("ADD");
      adds.push({ at, ms: performance.now() - started });
      await cni("DEL");
    }
    return adds;
  };
  const healthz = startHealthzProbe(cluster.node, made);
  try {
    const window = async (until: () => boolean) => {
      const mark = healthz.mark();
      const adds = await cniLoop(until);
      return { adds, healthz: healthz.since(mark) };
    };
    const full = (since: number) => cluster.log.syncs().find((entry) => entry.at >= since && entry.full);
    const syncMs: number[] = [];
    const during = { adds: [] as number[], healthz: [] as number[] };
    for (let r = 1; r <= RESPONSIVENESS_REPAIRS; r++) {
      const since = Date.now();
      deleteProxyTables(cluster.node);
      const seen = await window(() => full(since) !== undefined || Date.now() - since > LIVE_TIMEOUT_MS);
      const entry = full(since);
      if (!entry) throw new Error("the agent did not write its deleted tables whole");
      syncMs.push(entry.durationMs);
      // What overlapped the sync itself (its log line is written as it ends), not the wait for the resync that found the tables gone.
      const inSync = (sample: Sample) => sample.at + sample.ms >= entry.at - entry.durationMs && sample.at <= entry.at;
      const adds = seen.adds.filter(inSync).map((sample) => sample.ms);
      const answers = seen.healthz.filter(inSync).map((sample) => sample.ms);
      during.adds.push(...adds);
      during.healthz.push(...answers);
      say(`  repair ${r}/${RESPONSIVENESS_REPAIRS}: full sync ${entry.durationMs} ms; during it ${adds.length} CNI ADDs (max ${Math.max(...adds).toFixed(1)} ms), ${answers.length} /healthz (max ${Math.max(...answers).toFixed(1)} ms)`);
      await sleep(3000);
    }
    // The baseline: as long again, twice over, with nothing written (each resync finds the tables in place).
    const idleUntil = Date.now() + Math.max(3000, syncMs.reduce((a, b) => a + b, 0) * 2);
    const idle = await window(() => Date.now() > idleUntil);
    const figures: ResponsivenessFigures = {
      fullSyncs: RESPONSIVENESS_REPAIRS,
      fullSyncMs: latency(syncMs),
      idle: { cniAddMs: latency(idle.adds.map((sample) => sample.ms)), healthzMs: latency(idle.healthz.map((sample) => sample.ms)) },
      duringFullSync: { cniAddMs: latency(during.adds), healthzMs: latency(during.healthz) },
    };
    say(
      `during a full sync: CNI ADD p99 ${figures.duringFullSync.cniAddMs.p99} ms (idle ${figures.idle.cniAddMs.p99} ms), ` +
        `/healthz p99 ${figures.duringFullSync.healthzMs.p99} ms (idle ${figures.idle.healthzMs.p99} ms)`,
    );
    return figures;
  } finally {
    healthz.stop();
  }
}

/**
 * A process in `node`'s namespace asking the agent's /healthz every HEALTHZ_EVERY_MS (a request
 * at a time), printing each answer's latency; `since(mark)` gives those that came after `mark()`.
 */
function startHealthzProbe(node: TestNetns, made: Made): { mark(): number; since(mark: number): Sample[]; stop(): void } {
  const url = METRICS_URL.replace(/\/metrics$/, "/healthz");
  const script = `const http=require("http");const ask=()=>{const t=performance.now();http.get(process.argv[1],(r)=>{r.resume();r.on("end",()=>{process.stdout.write(Date.now()+" "+(performance.now()-t).toFixed(2)+"\\n");setTimeout(ask,${HEALTHZ_EVERY_MS})})}).on("error",()=>setTimeout(ask,${HEALTHZ_EVERY_MS}))};ask()`;
  const child = spawn("nsenter", [`--net=${node.path}`, process.execPath, "-e", script, url], { stdio: ["ignore", "pipe", "inherit"] });
  made.children.add(child);
  const answers: Sample[] = [];
  createInterface({ input: child.stdout! }).on("line", (line) => {
    const [at, ms] = line.split(" ").map(Number);
    answers.push({ at: at - ms, ms });
  });
  return {
    mark: () => answers.length,
    since: (mark) => answers.slice(mark),
    stop: () => {
      child.kill();
      made.children.delete(child);
    },
  };
}

/**
 * Deletes the Trellis proxy's tables through the netlink writer (the batch on its stdin): `nft`
 * lists the whole ruleset before any command, minutes at 10,000 Services.
 */
function deleteProxyTables(node: TestNetns): void {
  const ops = (["ip", "ip6"] as const).flatMap((family) => PROXY_TABLE_NAMES.flatMap((table) => [{ op: "add table" as const, family, table }, { op: "delete table" as const, family, table }]));
  execFileSync("nsenter", [`--net=${node.path}`, join(dirname(TRELLIS), "trellis-nft-batch")], { input: encodeBatch(ops), stdio: ["pipe", "ignore", "inherit"] });
}

/** Connects through the ClusterIP and straight to the pod, interleaved, in one client process in the client pod. */
async function dispatchAt(client: TestNetns, services: number, clusterIp: Target, direct: Target, connects: number): Promise<DispatchPoint> {
  const [viaService, straight] = await connectTimes(client, [clusterIp, direct], connects, 5_000);
  const clusterIpUs = latency(viaService);
  const directUs = latency(straight);
  return { services, clusterIpUs, directUs, ratio: round(clusterIpUs.p50 / directUs.p50, 3) };
}

/** `trellis apply -f FILE --store …`: the CLI a user runs. Asynchronous, so that rule events are stamped as they come. */
async function trellisApply(cluster: Cluster, documents: readonly object[]): Promise<void> {
  const file = join(cluster.dir, "apply.json");
  writeFileSync(file, documents.map((document) => JSON.stringify(document)).join("\n---\n"));
  try {
    await execFileAsync(TRELLIS, ["apply", "-f", file, "--store", cluster.storeSpec], { maxBuffer: 64 * 1024 * 1024, timeout: 600_000 });
  } catch (error) {
    const { stdout = "", stderr = "" } = error as { stdout?: string; stderr?: string };
    throw new Error(`trellis apply of ${documents.length} objects failed: ${`${stderr}${stdout}`.trim().split("\n").slice(-10).join("\n") || (error as Error).message}`);
  }
}

/**
 * Waits for the agent's syncs (from its log) until, after one ending at or after `since`, the
 * IPv4 map service-ips holds `expected` elements; resolves with the end of that sync (ms since
 * the epoch; of the last one logged when several ended between two looks). The map is listed
 * once per sync, not in a loop, so the bench does not compete with the agent for the CPU.
 */
async function untilServiceIps(cluster: Cluster, expected: number, since: number): Promise<number> {
  const deadline = Date.now() + LIVE_TIMEOUT_MS;
  let checked = 0;
  for (;;) {
    const reason = agentFailure(cluster);
    if (reason) throw new Error(reason);
    const syncs = cluster.log.syncs().filter((entry) => entry.at >= since);
    if (syncs.length > checked) {
      checked = syncs.length;
      const elements = await serviceIpElements(cluster.node);
      if (elements >= expected) return syncs.at(-1)!.at;
    }
    if (Date.now() > deadline) throw new Error(`the map service-ips holds ${await serviceIpElements(cluster.node)} of ${expected} elements ${LIVE_TIMEOUT_MS / 1000} s after the last apply`);
    await sleep(20);
  }
}

/** The IPv4 service-ips elements of every shard table of the proxy's (one `nft list maps`). */
async function serviceIpElements(node: TestNetns): Promise<number> {
  const { stdout } = await execFileAsync("nsenter", [`--net=${node.path}`, "nft", "-j", "list", "maps", "ip"], { maxBuffer: 256 * 1024 * 1024 });
  const maps = (JSON.parse(stdout) as { nftables: Array<{ map?: { table: string; name: string; elem?: unknown[] } }> }).nftables.flatMap((item) => item.map ?? []);
  return maps.filter((map) => map.name === "service-ips" && map.table.startsWith("trellis-proxy-")).reduce((sum, map) => sum + (map.elem?.length ?? 0), 0);
}

/** One "service rules synced" line: when it ended, how long it took (and its compute and its write), whether it wrote everything. */
interface SyncEntry {
  readonly at: number;
  readonly durationMs: number;
  readonly computeMs: number;
  readonly writeMs: number;
  readonly full: boolean;
}

/** The agent's JSON log, read on from where it was last read. */
class AgentLog {
  private offset = 0;
  private partial = "";
  private readonly logged: SyncEntry[] = [];
  private readonly failed: string[] = [];

  constructor(readonly path: string) {}

  /** The Service syncs logged so far ("service rules synced"): when each ended, how long it took, whether it wrote everything. */
  syncs(): readonly SyncEntry[] {
    this.readOn();
    return this.logged;
  }

  /** The errors of the syncs that failed ("service proxy sync failed"). */
  failures(): readonly string[] {
    this.readOn();
    return this.failed;
  }

  private readOn(): void {
    let size: number;
    try {
      size = statSync(this.path).size;
    } catch {
      return;
    }
    if (size <= this.offset) return;
    const buffer = Buffer.alloc(size - this.offset);
    const fd = openSync(this.path, "r");
    try {
      readSync(fd, buffer, 0, buffer.length, this.offset);
    } finally {
      closeSync(fd);
    }
    this.offset = size;
    const lines = (this.partial + buffer.toString("utf8")).split("\n");
    this.partial = lines.pop()!;
    for (const line of lines) {
      let entry: { time: string; msg: string; durationMs?: number; computeMs?: number; writeMs?: number; full?: boolean; error?: string };
      try {
        entry = JSON.parse(line) as typeof entry;
      } catch {
        continue;
      }
      if (entry.msg === "service rules synced") {
        this.logged.push({ at: Date.parse(entry.time), durationMs: entry.durationMs ?? NaN, computeMs: entry.computeMs ?? NaN, writeMs: entry.writeMs ?? NaN, full: entry.full === true });
      }
      if (entry.msg === "service proxy sync failed") this.failed.push(`${entry.time}: ${entry.error}`);
    }
  }
}

/** Why waiting for the agent is pointless: it ended, or a sync of its failed (a bug at any scale, and the figures would not be of a working proxy). */
function agentFailure(cluster: Cluster): string | undefined {
  const how = cluster.agent.ended();
  if (how) return `the agent ended (${how}); the end of ${cluster.log.path}:\n${logTail(cluster.log.path)}`;
  const [failure] = cluster.log.failures();
  return failure ? `a Service sync of the agent failed: ${failure.slice(0, 2000)}` : undefined;
}

async function waitForAgent(cluster: Cluster, what: string, condition: () => boolean, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    const reason = agentFailure(cluster);
    if (reason) throw new Error(`waiting for ${what}: ${reason}`);
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs / 1000} s; the end of ${cluster.log.path}:\n${logTail(cluster.log.path)}`);
    await sleep(20);
  }
}

function agentMetrics(node: TestNetns): Promise<string> {
  return metricsOf(node, METRICS_URL);
}

function histogramDelta(before: string, after: string, name: string): HistogramDelta {
  const buckets = (text: string) => [...text.matchAll(new RegExp(`^${name}_bucket\\{le="([^"]+)"\\} (\\S+)$`, "gm"))].map((m) => ({ le: Number(m[1]), count: Number(m[2]) }));
  const [b, a] = [buckets(before), buckets(after)];
  const count = metricValue(after, `${name}_count`) - metricValue(before, `${name}_count`);
  const sumSeconds = metricValue(after, `${name}_sum`) - metricValue(before, `${name}_sum`);
  const delta = a.map((bucket, i) => ({ le: bucket.le, count: bucket.count - (b[i]?.count ?? 0) }));
  const atMost = (q: number) => (delta.find((bucket) => bucket.count >= q * count)?.le ?? NaN) * 1000;
  return { count, meanMs: count ? round((sumSeconds / count) * 1000, 2) : NaN, p50AtMostMs: atMost(0.5), p99AtMostMs: atMost(0.99) };
}

function nftablesGauges(text: string): Record<string, number> {
  const gauges: Record<string, number> = { servicePorts: metricValue(text, "trellis_proxy_service_ports") };
  for (const m of text.matchAll(/^trellis_proxy_nftables_(chains|rules|elements)\{family="(IPv[46])"\} (\S+)$/gm)) gauges[`${m[2]} ${m[1]}`] = Number(m[3]);
  return gauges;
}

function ratios(report: SvcBenchReport): Record<string, number> {
  const result: Record<string, number> = {};
  const [fewest, most] = [report.hostPortAdds[0], report.hostPortAdds.at(-1)];
  if (fewest && most && most !== fewest) result[`hostPort ADD p50, beside ${services(most.services)} / beside ${services(fewest.services)}`] = round(most.addMs.p50 / fewest.addMs.p50, 3);
  if (report.floor && report.fullSync) result["full sync / kernel floor (median)"] = round(report.fullSync.syncMs.p50 / report.floor.fullWriteMs, 3);
  if (report.floor && report.changes) result["one change p99, store write → live / kernel floor p99"] = round(report.changes.writeToLiveMs.p99 / (report.floor.changeUs.p99 / 1000), 3);
  if (report.responsiveness) {
    const r = report.responsiveness;
    result["CNI ADD p99, during a full sync / idle"] = round(r.duringFullSync.cniAddMs.p99 / r.idle.cniAddMs.p99, 3);
    result["/healthz p99, during a full sync / idle"] = round(r.duringFullSync.healthzMs.p99 / r.idle.healthzMs.p99, 3);
  }
  const first = report.dispatch[0];
  for (const point of report.dispatch) {
    result[`ClusterIP / pod IP p50, ${services(point.services)}`] = point.ratio;
    if (first && point !== first) {
      result[`ClusterIP p50, ${services(point.services)} / ${services(first.services)}`] = round(point.clusterIpUs.p50 / first.clusterIpUs.p50, 3);
      result[`pod IP p50, ${services(point.services)} / ${services(first.services)} (the machine's drift)`] = round(point.directUs.p50 / first.directUs.p50, 3);
      result[`ClusterIP / pod IP p50, ${services(point.services)} / ${services(first.services)}`] = dispatchGrowth(first, point);
    }
  }
  return result;
}

/**
 * How much more a ClusterIP connect costs with `point`'s Services than with `first`'s, each
 * against the pod-IP connects measured beside it: the points are minutes apart, and what the
 * machine does meanwhile moves both alike (the pod-IP path meets the same hash lookups, which
 * do not grow with the Services).
 */
function dispatchGrowth(first: DispatchPoint, point: DispatchPoint): number {
  return round(point.ratio / first.ratio, 3);
}

function services(n: number): string {
  return `${n.toLocaleString("en")} Service${n === 1 ? "" : "s"}`;
}

function goals(report: SvcBenchReport): Record<string, boolean> {
  const result: Record<string, boolean> = {};
  const n = services(report.options.services);
  if (report.fullSync) result[`full sync of ${n} < ${GOALS.fullSyncMs} ms (max of ${report.fullSync.syncMs.n})`] = report.fullSync.syncMs.max < GOALS.fullSyncMs;
  if (report.changes) result[`one change, store write → rules live, p99 < ${GOALS.changeMs} ms`] = report.changes.writeToLiveMs.p99 < GOALS.changeMs;
  if (report.memory) {
    const rss = Math.max(report.memory.steady.rssMiB, report.memory.afterFullSync?.rssMiB ?? 0);
    result[`agent RSS with ${n} < ${GOALS.rssMB} MB`] = rss * 1.048576 < GOALS.rssMB;
  }
  const [fewestAdds, mostAdds] = [report.hostPortAdds[0], report.hostPortAdds.at(-1)];
  if (fewestAdds && mostAdds && mostAdds !== fewestAdds) result[`hostPort ADD p50 beside ${n} <= 1.2x beside 1`] = mostAdds.addMs.p50 <= 1.2 * fewestAdds.addMs.p50;
  if (report.floor && report.fullSync) result[`full sync of ${n} <= 1.5x the kernel floor (median)`] = report.fullSync.syncMs.p50 <= 1.5 * report.floor.fullWriteMs;
  if (report.floor && report.changes) result["one change p99 <= 2x the kernel floor's p99"] = report.changes.writeToLiveMs.p99 <= 2 * (report.floor.changeUs.p99 / 1000);
  if (report.responsiveness) {
    const r = report.responsiveness;
    result[`CNI ADD p99 during a full sync of ${n} <= 2x idle`] = r.duringFullSync.cniAddMs.p99 <= 2 * r.idle.cniAddMs.p99;
    result[`/healthz p99 during a full sync of ${n} < 100 ms`] = r.duringFullSync.healthzMs.p99 < 100;
  }
  const first = report.dispatch[0];
  const last = report.dispatch.at(-1);
  if (first && last && last !== first) {
    result[`ClusterIP connect p50 with ${n} within ${Math.round((GOALS.dispatchRatio - 1) * 100)} % of 1 (each against the pod IP beside it)`] = dispatchGrowth(first, last) <= GOALS.dispatchRatio;
  }
  return result;
}

function tableRows(report: SvcBenchReport): Row[] {
  const rows: Row[] = [];
  const verdict = (pass: boolean | undefined) => (pass === undefined ? "" : pass ? "pass" : "FAIL");
  const n = services(report.options.services);
  const goal = (prefix: string) => Object.entries(report.goals ?? {}).find(([name]) => name.startsWith(prefix))?.[1];
  const ms = (s: LatencyStats) => `${s.p50} / ${s.p99} ms (max ${s.max})`;
  if (report.fullSync) {
    const f = report.fullSync;
    rows.push({ figure: `full sync of ${n} (restarted agent), median / max of ${f.syncMs.n}`, value: `${f.syncMs.p50} / ${f.syncMs.max} ms`, goal: `< ${GOALS.fullSyncMs} ms`, result: verdict(goal("full sync")) });
    rows.push({ figure: "  agent start → every rule live, median / max", value: `${f.startToLiveMs.p50} / ${f.startToLiveMs.max} ms`, goal: "", result: "reported" });
  }
  const c = report.changes;
  if (c) {
    rows.push({ figure: `one change, store write → rules live, p50 / p99 of ${c.writeToLiveMs.n}`, value: ms(c.writeToLiveMs), goal: `< ${GOALS.changeMs} ms`, result: verdict(goal("one change")) });
    rows.push({ figure: "  of which the agent's sync (its log), p50 / p99", value: ms(c.syncMs), goal: "", result: "reported" });
    rows.push({ figure: "    its compute / its write (netlink batch), p50", value: `${c.computeMs.p50} / ${c.writeMs.p50} ms`, goal: "", result: "reported" });
    rows.push({ figure: `  agent's trellis_network_programming_duration (${c.agentProgramming.count} obs.)`, value: `mean ${c.agentProgramming.meanMs} ms, p50 ≤ ${c.agentProgramming.p50AtMostMs} ms, p99 ≤ ${c.agentProgramming.p99AtMostMs} ms`, goal: "", result: "reported" });
    rows.push({ figure: "  trellis apply of one such slice (CLI, spawn to exit; 10 after the changes), p50 / p99", value: ms(c.applyMs), goal: "", result: "reported" });
  }
  if (report.memory) {
    const m = report.memory;
    const after = m.afterFullSync ? `; restarted, after its full sync ${m.afterFullSync.rssMiB} MiB (peak ${m.afterFullSync.peakRssMiB})` : "";
    rows.push({ figure: `agent RSS with ${n}, after the changes`, value: `${m.steady.rssMiB} MiB (peak ${m.steady.peakRssMiB})${after}`, goal: `< ${GOALS.rssMB} MB`, result: verdict(goal("agent RSS")) });
    rows.push({ figure: "  of it anonymous / file pages (the executable's, shared)", value: `${m.steady.anonMiB} / ${m.steady.fileMiB} MiB`, goal: "", result: "reported" });
    rows.push({ figure: "  before the changes: RSS / anonymous", value: `${m.beforeChanges.rssMiB} / ${m.beforeChanges.anonMiB} MiB`, goal: "", result: "reported" });
  }
  if (report.floor) {
    const floor = report.floor;
    rows.push({ figure: "kernel floor: the agent's full ruleset, prepared, in the agent's transactions", value: `${floor.fullWriteMs} ms`, goal: "", result: "reported" });
    rows.push({ figure: "  full sync / kernel floor (median)", value: `${report.ratios?.["full sync / kernel floor (median)"] ?? "?"}x`, goal: "≤ 1.5x", result: verdict(Object.entries(report.goals ?? {}).find(([name]) => name.includes("the kernel floor (median)"))?.[1]) });
    rows.push({ figure: `kernel floor: one change, prepared, p50 / p99 of ${floor.changeUs.n}`, value: `${floor.changeUs.p50} / ${floor.changeUs.p99} µs (max ${floor.changeUs.max})`, goal: "", result: "reported" });
    rows.push({ figure: "  one change p99 / kernel floor p99", value: `${report.ratios?.["one change p99, store write → live / kernel floor p99"] ?? "?"}x`, goal: "≤ 2x", result: verdict(Object.entries(report.goals ?? {}).find(([name]) => name.includes("kernel floor's p99"))?.[1]) });
  }
  for (const point of report.hostPortAdds) {
    const last = point === report.hostPortAdds.at(-1) && report.hostPortAdds.length > 1;
    rows.push({
      figure: `pod with a hostPort, ADD beside ${services(point.services)}, p50 / p99 of ${point.addMs.n}`, value: ms(point.addMs),
      goal: last ? "p50 ≤ 1.2x beside 1" : "", result: last ? verdict(Object.entries(report.goals ?? {}).find(([name]) => name.startsWith("hostPort ADD"))?.[1]) : "reported",
    });
  }
  if (report.responsiveness) {
    const r = report.responsiveness;
    rows.push({ figure: `CNI ADD during ${r.fullSyncs} full syncs (tables repaired), p50 / p99`, value: `${ms(r.duringFullSync.cniAddMs)}; idle ${ms(r.idle.cniAddMs)}`, goal: "p99 ≤ 2x idle", result: verdict(Object.entries(report.goals ?? {}).find(([name]) => name.startsWith("CNI ADD p99"))?.[1]) });
    rows.push({ figure: "/healthz during those full syncs, p50 / p99", value: `${ms(r.duringFullSync.healthzMs)}; idle ${ms(r.idle.healthzMs)}`, goal: "p99 < 100 ms", result: verdict(Object.entries(report.goals ?? {}).find(([name]) => name.startsWith("/healthz p99"))?.[1]) });
  }
  if (report.idle) {
    const idle = report.idle;
    rows.push({ figure: `idle agent with ${n}, resync every ${idle.resyncSeconds} s, masquerade on`, value: `${idle.percent} % of one CPU (${idle.cpuSeconds} s over ${idle.windowSeconds} s)`, goal: "", result: "reported" });
  }
  for (const step of report.bulk) {
    rows.push({
      figure: `bulk: ${services(step.added)} added in ${step.applyMs.length} applies → ${step.services.toLocaleString("en")}`,
      value: `apply ${sum(step.applyMs)} ms; last apply → live ${step.lastApplyToLiveMs} ms`,
      goal: "",
      result: "reported",
    });
  }
  const first = report.dispatch[0];
  for (const point of report.dispatch) {
    rows.push({
      figure: `TCP connect p50 / p95, ${services(point.services)} (${point.clusterIpUs.n} each)`,
      value: `ClusterIP ${point.clusterIpUs.p50} / ${point.clusterIpUs.p95} µs, pod IP ${point.directUs.p50} / ${point.directUs.p95} µs: ${point.ratio.toFixed(3)}x`,
      goal: "",
      result: "reported",
    });
  }
  const last = report.dispatch.at(-1);
  if (first && last && last !== first) {
    rows.push({
      figure: `  ClusterIP / pod IP with ${services(last.services)}, against with ${services(first.services)}`,
      value: `${dispatchGrowth(first, last).toFixed(3)}x (ClusterIP alone ${(last.clusterIpUs.p50 / first.clusterIpUs.p50).toFixed(3)}x, pod IP alone ${(last.directUs.p50 / first.directUs.p50).toFixed(3)}x)`,
      goal: `≤ ${GOALS.dispatchRatio.toFixed(2)}x`,
      result: verdict(goal("ClusterIP connect")),
    });
  }
  for (const error of report.errors) rows.push({ figure: "not measured", value: error.split("\n")[0]!.slice(0, 100), goal: "", result: "ERROR" });
  return rows;
}

function printTable(report: SvcBenchReport): void {
  const o = report.options;
  const load = (values: number[] | undefined) => (values ?? []).map((x) => x.toFixed(2)).join(" ");
  console.log(
    `\nTrellis Service proxy (${o.services.toLocaleString("en")} Services × ${o.endpoints} endpoints, ${o.changes} changes, ${o.connects} connects per target; ` +
      `${report.machine.cpus} CPUs, load ${load(report.machine.loadStart)} → ${load(report.machine.loadEnd)})\n`,
  );
  const rows = [["figure", "value", "goal", "result"], ...(report.table ?? []).map((row) => [row.figure, row.value, row.goal, row.result])];
  const widths = rows[0]!.map((_, col) => Math.max(...rows.map((row) => row[col]!.length)));
  for (const row of rows) console.log(row.map((cell, col) => cell.padEnd(widths[col]!)).join("   ").trimEnd());
  if (report.nftables) console.log(`\nthe proxy's nftables: ${Object.entries(report.nftables).map(([name, value]) => `${name} ${value}`).join(", ")}`);
}

function machineInfo(): SvcBenchReport["machine"] {
  return {
    node: process.version,
    kernel: execFileSync("uname", ["-r"], { encoding: "utf8" }).trim(),
    nft: execFileSync("nft", ["--version"], { encoding: "utf8" }).trim(),
    cpus: cpus().length,
    cpuModel: cpus()[0]?.model ?? "",
    memoryGiB: Math.round(totalmem() / 2 ** 30),
    loadStart: roundedLoad(),
  };
}

function roundedLoad(): number[] {
  return loadavg().map((x) => round(x, 2));
}

function parseOptions(argv: string[]): BenchOptions {
  const { values } = parseArgs({
    args: argv,
    options: {
      services: { type: "string", default: process.env.TRELLIS_BENCH_SERVICES ?? "10000" },
      endpoints: { type: "string", default: "5" },
      changes: { type: "string", default: "100" },
      connects: { type: "string", default: "3000" },
      // One apply is one transaction, of at most 128 operations (etcd's limit, kept on SQLite
      // too): a Service and its slice take about 5, so 25 is the most one file can hold.
      chunk: { type: "string", default: "1000" },
      restarts: { type: "string", default: "3" },
      // The Trellis proxy against kube-proxy on a Kubernetes lab (bench/svc-kube.ts) instead.
      kubernetes: { type: "boolean", default: false },
    },
  });
  const whole = (name: string, text: string, min: number, max: number): number => {
    const n = Number(text);
    if (!/^[0-9]+$/.test(text) || n < min || n > max) throw new Error(`--${name} ${text}: expected a whole number from ${min} to ${max}`);
    return n;
  };
  return {
    services: whole("services", values.services, 1, MAX_SERVICES),
    endpoints: whole("endpoints", values.endpoints, 1, 100),
    // 10.250.64.0/18 holds the new addresses of the changes.
    changes: whole("changes", values.changes, 1, 16_000),
    connects: whole("connects", values.connects, 100, 100_000),
    chunk: whole("chunk", values.chunk, 1, 10_000),
    restarts: whole("restarts", values.restarts, 1, 20),
    kubernetes: values.kubernetes === true,
  };
}

await main();
