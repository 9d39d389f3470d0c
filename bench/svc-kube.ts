/**
 * The Trellis proxy against kube-proxy (nftables mode, built with the control plane) on one
 * Kubernetes lab cluster and the same Services, one proxy at a time (`npm run bench:svc --
 * --kubernetes`):
 *
 * - full sync: each proxy started with every Service present; its own figure for that first
 *   sync (`trellis_sync_proxy_rules_duration_seconds`, `kubeproxy_sync_proxy_rules_duration_seconds`)
 *   and the time from its start to that sync done;
 * - one change: an EndpointSlice patched through the API, from just before the request to the
 *   kernel's notification of the new endpoint's DNAT rule (bench/nft-events.c);
 * - dispatch: TCP connect time from one pod through a ClusterIP, against the same connects
 *   straight to the endpoint pod;
 * - resident memory of each proxy's process with every Service in.
 *
 * The lab has one node and two pods: `node1-pod0` serves (its probe server), `node1-pod1`
 * connects. One Service selects the server pod; the others have no selector and an EndpointSlice
 * of 5 addresses in the cluster's pod CIDR where no pod is. The Trellis agent runs with its
 * proxy on for the Trellis turn and with `--no-proxy` (its routes and CNI only) for kube-proxy's;
 * both proxies sync at every change (`--proxy-sync-interval 0`; kube-proxy's nftables
 * `minSyncPeriod: 1ms`, as its 0 means its default of 1 s).
 */
import { execFileSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { PROXY_TABLE_NAMES } from "../src/dataplane/service-proxy.js";
import { KubeApiError, KubeClient } from "../src/kube/client.js";
import { encodeBatch } from "../src/nft/netlink.js";
import { loadKubeconfig } from "../src/kube/config.js";
import { mapConcurrently } from "../src/lab/concurrently.js";
import { logTail, sleep, startDetached, stopProcesses, type StartedProcess } from "../src/lab/processes.js";
import { TRELLIS } from "../test/support/cli-cluster.js";
import { KUBE_BIN } from "../test/support/kube.js";
import { labName, labStatus, runTrellis } from "../test/support/lab.js";
import type { Made } from "./net-support.js";
import { connectTimes, dnatRulePattern, dropCachedPages, latency, metricsOf, metricValue, residentMemory, round, ruleEvents, type LatencyStats, type Memory, type Netns } from "./svc-support.js";


export interface KubeComparisonOptions {
  readonly services: number;
  readonly endpoints: number;
  readonly changes: number;
  readonly connects: number;
  readonly restarts: number;
}

export interface ProxyFigures {
  /** The proxy's own duration of its first (full) sync after start, per start. */
  fullSyncMs: LatencyStats;
  /** Process start → that first sync done (its metrics say so), per start. */
  startToSyncedMs: LatencyStats;
  /** API request sent → the new endpoint's DNAT rule reported by the kernel. */
  changeMs: LatencyStats;
  /** TCP connect µs: through the ClusterIP, and straight to the pod. */
  clusterIpUs: LatencyStats;
  directUs: LatencyStats;
  memory: Memory;
}

export interface KubeComparison {
  services: number;
  endpoints: number;
  createMs: number;
  trellis?: ProxyFigures;
  kubeProxy?: ProxyFigures;
  ratios?: Record<string, number>;
  goals?: Record<string, boolean>;
}

export const KUBE_GOALS = { dispatchRatio: 1.05 };

/**
 * The goals against kube-proxy, by scale (issue 19): at 10,000 Services and more, a full sync
 * and one change's p99 at most 0.1× kube-proxy's and resident memory at most 0.6×; below, 0.5×,
 * 0.5× and 1.2×.
 */
export function kubeGoalRatios(services: number): { fullSync: number; change: number; memory: number } {
  return services >= 10_000 ? { fullSync: 0.1, change: 0.1, memory: 0.6 } : { fullSync: 0.5, change: 0.5, memory: 1.2 };
}

const SERVER_PORT = 7777;
const CHANGE_PORT = 8080;
const TRELLIS_METRICS = "http://127.0.0.1:9656/metrics";
const KUBE_PROXY_METRICS = "http://127.0.0.1:10249/metrics";
/** Filler endpoints: 10.244.128.0/17, in the cluster's pod CIDR but beyond any node's /24. */
const FILLER_BASE = (10 << 24) | (244 << 16) | (128 << 8);
const FILLER_ADDRESSES = 1 << 15;
/** New addresses of the changes: 10.244.64.0/18. */
const CHANGE_BASE = (10 << 24) | (244 << 16) | (64 << 8);
const LIVE_TIMEOUT_MS = 900_000;
const NFT_WRITER = join(import.meta.dirname, "..", "dist", "trellis-nft-batch");

interface Lab {
  readonly name: string;
  readonly node: Netns;
  readonly client: Netns;
  readonly serverIp: string;
  readonly agentArgv: readonly string[];
  agentPid: number;
  readonly kubeconfig: string;
  readonly dir: string;
  readonly proxyKubeconfig: string;
  readonly api: KubeClient;
}

export async function runKubeComparison(options: KubeComparisonOptions, made: Made, say: (line: string) => void): Promise<KubeComparison> {
  const name = labName("bsk");
  say(`lab ${name}: a Kubernetes lab of one node, two pods`);
  // The build has just written the executable: read back from disk, as on a node, before the lab's processes map it.
  dropCachedPages(TRELLIS);
  dropCachedPages(join(KUBE_BIN, "kube-proxy"));
  const up = runTrellis(["lab", "up", "--kubernetes", "--name", name, "--nodes", "1", "--pods-per-node", "2", "--mode", "direct"], 600_000);
  if (up.status !== 0) throw new Error(`lab up --kubernetes failed: ${up.stdout}${up.stderr}`);
  const status = labStatus(name) as ReturnType<typeof labStatus> & { kubernetes: { kubeconfig: string } };
  const node = status.nodes[0]!;
  const [server, client] = [status.pods.find((pod) => pod.name === "node1-pod0")!, status.pods.find((pod) => pod.name === "node1-pod1")!];
  const dir = join("/run/trellis/lab", name, "kubernetes");
  const lab: Lab = {
    name,
    node: { name: "node1", path: node.netns },
    client: { name: client.name, path: client.netns },
    serverIp: server.addresses.find((address) => !address.includes(":"))!,
    agentArgv: node.agentArgv,
    agentPid: node.agentPid,
    kubeconfig: status.kubernetes.kubeconfig,
    dir,
    proxyKubeconfig: join(dir, "kube-proxy.kubeconfig"),
    api: new KubeClient(loadKubeconfig(status.kubernetes.kubeconfig)),
  };
  try {
    const report: KubeComparison = { services: options.services, endpoints: options.endpoints, createMs: 0 };
    const clusterIP = await createTarget(lab);
    const created = performance.now();
    await createFillers(lab, options, say);
    report.createMs = Math.round(performance.now() - created);
    say(`${options.services} Services with ${options.endpoints} endpoints each created through the API in ${(report.createMs / 1000).toFixed(1)} s; target ${clusterIP}:80 → ${lab.serverIp}:${SERVER_PORT}`);

    // The Trellis turn: the agent as the lab started it, syncing at every change.
    const trellisArgv = [...lab.agentArgv, "--proxy-sync-interval", "0", "--resync-interval", "3600"];
    report.trellis = await measureProxy(lab, options, clusterIP, made, say, {
      label: "trellis",
      executable: trellisArgv[0]!,
      start: () => restartAgent(lab, trellisArgv),
      failure: () => undefined,
      metrics: TRELLIS_METRICS,
      durationMetric: "trellis_sync_proxy_rules_duration_seconds",
    });

    // kube-proxy's turn: the agent keeps routes and CNI only; its tables go.
    await restartAgent(lab, [...lab.agentArgv, "--no-proxy"]);
    deleteProxyTables(lab.node);
    // Only a configuration file sets the nftables proxy's minimum sync period; 0s there means the
    // default (1 s, seen), so 1 ms: every change synced at once, as the Trellis agent is set to.
    const config = join(lab.dir, "kube-proxy.yaml");
    writeFileSync(config, JSON.stringify({
      apiVersion: "kubeproxy.config.k8s.io/v1alpha1",
      kind: "KubeProxyConfiguration",
      mode: "nftables",
      clientConnection: { kubeconfig: lab.proxyKubeconfig },
      hostnameOverride: "node1",
      clusterCIDR: "10.244.0.0/16,fd00:10:244::/56",
      metricsBindAddress: "127.0.0.1:10249",
      healthzBindAddress: "127.0.0.1:10256",
      conntrack: { maxPerCore: 0 },
      nftables: { minSyncPeriod: "1ms", syncPeriod: "1h" },
    }, null, 2));
    let kubeProxy: StartedProcess | undefined;
    report.kubeProxy = await measureProxy(lab, options, clusterIP, made, say, {
      label: "kube-proxy",
      executable: join(KUBE_BIN, "kube-proxy"),
      start: async () => {
        if (kubeProxy) await stopProcesses([kubeProxy.pid]);
        kubeProxy = startDetached(lab.node.path, [join(KUBE_BIN, "kube-proxy"), `--config=${config}`, "--v=1"], join(lab.dir, "kube-proxy.log"));
        made.agents.add(kubeProxy);
        return kubeProxy.pid;
      },
      failure: () => {
        const how = kubeProxy?.ended();
        return how ? `kube-proxy ended (${how}): ${logTail(join(lab.dir, "kube-proxy.log"))}` : undefined;
      },
      metrics: KUBE_PROXY_METRICS,
      // kube-proxy runs a proxier per family; the Services are IPv4: its IPv4 proxier holds them all.
      durationMetric: "kubeproxy_sync_proxy_rules_duration_seconds",
      labels: '{ip_family="IPv4"}',
    });
    if (kubeProxy) await stopProcesses([kubeProxy.pid]);
    report.ratios = {
      "full sync, Trellis / kube-proxy (each proxy's own figure, p50)": round(report.trellis.fullSyncMs.p50 / report.kubeProxy.fullSyncMs.p50, 3),
      "start → synced, Trellis / kube-proxy (p50)": round(report.trellis.startToSyncedMs.p50 / report.kubeProxy.startToSyncedMs.p50, 3),
      "one change, Trellis / kube-proxy (p50)": round(report.trellis.changeMs.p50 / report.kubeProxy.changeMs.p50, 3),
      "one change, Trellis / kube-proxy (p99)": round(report.trellis.changeMs.p99 / report.kubeProxy.changeMs.p99, 3),
      "dispatch p50, Trellis ClusterIP / pod IP": round(report.trellis.clusterIpUs.p50 / report.trellis.directUs.p50, 3),
      "dispatch p50, kube-proxy ClusterIP / pod IP": round(report.kubeProxy.clusterIpUs.p50 / report.kubeProxy.directUs.p50, 3),
      "RSS, Trellis agent / kube-proxy": round(report.trellis.memory.rssMiB / report.kubeProxy.memory.rssMiB, 3),
      "anonymous RSS, Trellis agent / kube-proxy": round(report.trellis.memory.anonMiB / report.kubeProxy.memory.anonMiB, 3),
    };
    const goal = kubeGoalRatios(options.services);
    report.goals = {
      [`full sync ≤ ${goal.fullSync}× kube-proxy's`]: report.ratios["full sync, Trellis / kube-proxy (each proxy's own figure, p50)"]! <= goal.fullSync,
      [`one change p99 ≤ ${goal.change}× kube-proxy's`]: report.ratios["one change, Trellis / kube-proxy (p99)"]! <= goal.change,
      [`resident memory ≤ ${goal.memory}× kube-proxy's`]: report.ratios["RSS, Trellis agent / kube-proxy"]! <= goal.memory,
      [`dispatch ≤ ${KUBE_GOALS.dispatchRatio}× the pod IP`]: report.ratios["dispatch p50, Trellis ClusterIP / pod IP"]! <= KUBE_GOALS.dispatchRatio,
    };
    return report;
  } finally {
    lab.api.close();
    runTrellis(["lab", "down", "--name", name], 300_000);
  }
}

interface ProxyUnderTest {
  readonly label: string;
  /** Its executable, whose cached pages go before each start. */
  readonly executable: string;
  /** Starts (or restarts) the proxy; resolves with its pid. */
  start(): Promise<number>;
  readonly metrics: string;
  readonly durationMetric: string;
  /** The labels of the samples to read, if any. */
  readonly labels?: string;
  /** Why the proxy cannot be measured (it ended), if so. */
  failure(): string | undefined;
}

async function measureProxy(lab: Lab, options: KubeComparisonOptions, clusterIP: string, made: Made, say: (line: string) => void, proxy: ProxyUnderTest): Promise<ProxyFigures> {
  const fullSync: number[] = [];
  const startToSynced: number[] = [];
  let pid = 0;
  for (let r = 1; r <= options.restarts; r++) {
    dropCachedPages(proxy.executable);
    const started = Date.now();
    pid = await proxy.start();
    const first = await untilFirstSync(lab.node, proxy, LIVE_TIMEOUT_MS);
    fullSync.push(first.durationMs);
    startToSynced.push(first.at - started);
    say(`${proxy.label} start ${r}/${options.restarts}: first sync ${first.durationMs.toFixed(0)} ms by its own figure, synced ${first.at - started} ms after start`);
  }
  await connectTimes(lab.client, [{ host: clusterIP, port: 80 }], 1, 10_000).catch((error: Error) => {
    throw new Error(`${proxy.label}: the target ClusterIP does not answer: ${error.message}`);
  });
  const [viaService, straight] = await connectTimes(lab.client, [{ host: clusterIP, port: 80 }, { host: lab.serverIp, port: SERVER_PORT }], options.connects, 5_000);
  const clusterIpUs = latency(viaService!);
  const directUs = latency(straight!);
  say(`${proxy.label} dispatch: ClusterIP p50 ${clusterIpUs.p50} µs, pod IP p50 ${directUs.p50} µs (${(clusterIpUs.p50 / directUs.p50).toFixed(3)}×)`);

  const monitor = await ruleEvents(lab.node, lab.dir, made);
  const change: number[] = [];
  const fillers = options.services - 1;
  try {
    for (let k = 0; k < options.changes; k++) {
      const service = 2 + (Math.floor(((k + 0.5) * fillers) / options.changes) % fillers);
      // Each turn puts its own addresses in, so the other's earlier changes are no match.
      const address = ipv4(CHANGE_BASE + (proxy.label === "trellis" ? 0 : 8192) + k + 1);
      const mark = monitor.mark();
      const sent = performance.timeOrigin + performance.now();
      await lab.api.request("PATCH", `/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/${fillerName(service)}-1`, {
        contentType: "application/merge-patch+json",
        body: { endpoints: fillerEndpoints(service, options.endpoints, address) },
      });
      const seen = await monitor.until(dnatRulePattern(address, CHANGE_PORT), mark, 30_000, () => proxy.failure());
      change.push(seen - sent);
      await sleep(20);
    }
  } finally {
    monitor.stop();
  }
  const changeMs = latency(change);
  const memory = residentMemory(pid);
  say(`${proxy.label} one change: p50 ${changeMs.p50} ms, p99 ${changeMs.p99} ms; RSS ${memory.rssMiB} MiB`);
  return { fullSyncMs: latency(fullSync), startToSyncedMs: latency(startToSynced), changeMs, clusterIpUs, directUs, memory };
}

/** Polls the proxy's metrics until its sync histogram holds a first sync; resolves with that sync's duration and when it was seen. */
async function untilFirstSync(node: Netns, proxy: ProxyUnderTest, timeoutMs: number): Promise<{ durationMs: number; at: number }> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const text = await metricsOf(node, proxy.metrics).catch(() => "");
    const count = metricValue(text, `${proxy.durationMetric}_count${proxy.labels ?? ""}`);
    if (count >= 1) {
      const at = Date.now();
      // The first sync's own figure: the histogram's sum while it holds that one sync alone.
      const sum = metricValue(text, `${proxy.durationMetric}_sum${proxy.labels ?? ""}`);
      return { durationMs: count === 1 ? sum * 1000 : Number.NaN, at };
    }
    const reason = proxy.failure();
    if (reason) throw new Error(reason);
    if (Date.now() > deadline) throw new Error(`${proxy.label} made no sync within ${timeoutMs / 1000} s`);
    await sleep(50);
  }
}

async function restartAgent(lab: Lab, argv: readonly string[]): Promise<number> {
  await stopProcesses([lab.agentPid]);
  const agent = startDetached(lab.node.path, argv, join("/run/trellis/lab", lab.name, "node1", "agent.log"));
  lab.agentPid = agent.pid;
  return agent.pid;
}

/**
 * Deletes the Trellis proxy's tables through its netlink writer (the batch on its stdin): `nft`
 * lists the whole ruleset before any command, minutes at 10,000 Services.
 */
function deleteProxyTables(node: Netns): void {
  const ops = (["ip", "ip6"] as const).flatMap((family) => PROXY_TABLE_NAMES.flatMap((table) => [{ op: "add table" as const, family, table }, { op: "delete table" as const, family, table }]));
  execFileSync("nsenter", [`--net=${node.path}`, NFT_WRITER], { input: encodeBatch(ops), stdio: ["pipe", "ignore", "inherit"] });
}

/** The Service selecting the server pod; resolves with its ClusterIP. */
async function createTarget(lab: Lab): Promise<string> {
  const service = await lab.api.request<{ spec: { clusterIP: string } }>("POST", "/api/v1/namespaces/default/services", {
    body: { apiVersion: "v1", kind: "Service", metadata: { name: "bench-target" }, spec: { selector: { "trellis.dev/lab-pod": "node1-pod0" }, ports: [{ port: 80, targetPort: SERVER_PORT }] } },
  });
  return service.spec.clusterIP;
}

async function createFillers(lab: Lab, options: KubeComparisonOptions, say: (line: string) => void): Promise<void> {
  const indexes = Array.from({ length: options.services - 1 }, (_, i) => i + 2);
  let done = 0;
  await mapConcurrently(indexes, 16, async (i) => {
    await ensure(lab.api, "/api/v1/namespaces/default/services", { apiVersion: "v1", kind: "Service", metadata: { name: fillerName(i) }, spec: { ports: [{ port: 80, targetPort: CHANGE_PORT }] } });
    await ensure(lab.api, "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices", {
      apiVersion: "discovery.k8s.io/v1", kind: "EndpointSlice",
      metadata: { name: `${fillerName(i)}-1`, labels: { "kubernetes.io/service-name": fillerName(i) } },
      addressType: "IPv4",
      endpoints: fillerEndpoints(i, options.endpoints),
      ports: [{ name: "", protocol: "TCP", port: CHANGE_PORT }],
    });
    if (++done % 2000 === 0) say(`  ${done} of ${indexes.length} Services created`);
  });
}

/** POST, retried while the API server is busy (429) or briefly away. */
async function ensure(api: KubeClient, path: string, body: object): Promise<void> {
  for (let attempt = 0; ; attempt++) {
    try {
      await api.request("POST", path, { body });
      return;
    } catch (error) {
      if (error instanceof KubeApiError && error.status === 409) return;
      if (attempt >= 10) throw error;
      await sleep(200 * (attempt + 1));
    }
  }
}

function fillerName(i: number): string {
  return `bench-svc-${String(i).padStart(5, "0")}`;
}

function fillerEndpoints(i: number, endpoints: number, first?: string): object[] {
  const addresses = Array.from({ length: endpoints }, (_, k) => ipv4(FILLER_BASE + ((i * endpoints + k) % FILLER_ADDRESSES)));
  if (first !== undefined) addresses[0] = first;
  return addresses.map((address) => ({ addresses: [address], conditions: { ready: true } }));
}

function ipv4(n: number): string {
  return [24, 16, 8, 0].map((shift) => (n >>> shift) & 255).join(".");
}

/** The comparison as rows for the table. */
export function kubeComparisonRows(report: KubeComparison): Array<{ figure: string; value: string; goal: string; result: string }> {
  const rows: Array<{ figure: string; value: string; goal: string; result: string }> = [];
  const { trellis, kubeProxy } = report;
  if (!trellis || !kubeProxy) return rows;
  const goal = kubeGoalRatios(report.services);
  const met = (name: string) => (report.goals?.[name] ? "met" : "missed");
  const pair = (figure: string, a: LatencyStats, b: LatencyStats, unit: string) => rows.push({ figure, value: `Trellis p50 ${a.p50} ${unit} (p99 ${a.p99}), kube-proxy p50 ${b.p50} ${unit} (p99 ${b.p99})`, goal: "", result: "" });
  rows.push({
    figure: `full sync, ${report.services} Services (each proxy's own figure)`,
    value: `Trellis ${trellis.fullSyncMs.p50.toFixed(0)} ms, kube-proxy ${kubeProxy.fullSyncMs.p50.toFixed(0)} ms (${report.ratios?.["full sync, Trellis / kube-proxy (each proxy's own figure, p50)"]}×)`,
    goal: `≤ ${goal.fullSync}×`,
    result: met(`full sync ≤ ${goal.fullSync}× kube-proxy's`),
  });
  pair("start → synced", trellis.startToSyncedMs, kubeProxy.startToSyncedMs, "ms");
  rows.push({
    figure: "one change, API request → rule live",
    value: `Trellis p50 ${trellis.changeMs.p50} ms (p99 ${trellis.changeMs.p99}), kube-proxy p50 ${kubeProxy.changeMs.p50} ms (p99 ${kubeProxy.changeMs.p99}); p99 ${report.ratios?.["one change, Trellis / kube-proxy (p99)"]}×`,
    goal: `p99 ≤ ${goal.change}×`,
    result: met(`one change p99 ≤ ${goal.change}× kube-proxy's`),
  });
  rows.push({
    figure: "dispatch, ClusterIP / pod IP (p50)",
    value: `Trellis ${report.ratios?.["dispatch p50, Trellis ClusterIP / pod IP"]}×, kube-proxy ${report.ratios?.["dispatch p50, kube-proxy ClusterIP / pod IP"]}×`,
    goal: `≤ ${KUBE_GOALS.dispatchRatio}×`,
    result: report.goals?.[`dispatch ≤ ${KUBE_GOALS.dispatchRatio}× the pod IP`] ? "met" : "missed",
  });
  rows.push({
    figure: "resident memory (anonymous)",
    value: `Trellis agent ${trellis.memory.rssMiB} MiB (${trellis.memory.anonMiB}), kube-proxy ${kubeProxy.memory.rssMiB} MiB (${kubeProxy.memory.anonMiB}): ${report.ratios?.["RSS, Trellis agent / kube-proxy"]}×`,
    goal: `≤ ${goal.memory}×`,
    result: met(`resident memory ≤ ${goal.memory}× kube-proxy's`),
  });
  return rows;
}
