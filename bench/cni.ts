/**
 * CNI plugin latency, side by side in one run: the reference `bridge` + `host-local` from
 * /usr/lib/cni; the native trellis plugin (`dist/trellis-cni`) forwarding to a `trellis agent`
 * serving its node; and the standalone plugin (`dist/trellis`). Same configuration shape for
 * all (bridge mode, same ranges, ipMasq false, default routes, cniVersion 1.0.0 so all answer
 * the same version).
 *
 * Each plugin gets its own node netns and is exec'd there the way a runtime does it
 * (`nsenter --net=NODE plugin`, CNI_* variables, one plugin's config on stdin); each pod is
 * its own netns. Measured: VERSION (pure start-up), the first ADD and DEL (which create and
 * find the bridge), ADD and DEL p50/p95 over sequential runs, and a burst of pods ADDed and
 * then DELeted at each concurrency. The plugins alternate run by run so that machine noise
 * lands on all of them. Goals: ADD and DEL p50 at most 1.0x the reference, burst walls at most
 * 0.7x, VERSION at most 3 ms (native plugin + agent).
 *
 *   npm run bench:cni -- [--runs 50] [--burst 100] [--concurrency 10,50] [--families dual|ipv4]
 */
import { execFileSync } from "node:child_process";
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { cpus, loadavg, tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { execCniPlugin, pluginConfig, type CniConfList, type CniOutcome } from "../test/support/cni-exec.js";
import { NetnsPool, sweepStaleNamespaces, type TestNetns } from "../test/support/netns.js";
import { nativePluginDir, startNodeAgent } from "../test/support/node-agent.js";
import { gitCommit } from "./commit.js";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const TRELLIS = join(ROOT, "dist/trellis");
const REFERENCE_DIR = "/usr/lib/cni";
const CNI_VERSION = "1.0.0";
const VERSION_RUNS = 20;

type Families = "dual" | "ipv4";

interface BenchOptions {
  runs: number;
  burst: number;
  concurrency: number[];
  families: Families;
}

type Label = "reference" | "native" | "standalone";
const LABELS: Record<Label, string> = { reference: "reference", native: "native+agent", standalone: "standalone" };

interface PluginUnderTest {
  label: Label;
  /** The executable the runtime execs (the `type` of the only plugin in the list). */
  plugin: string;
  cniPath: string;
  network: CniConfList;
  node: TestNetns;
  /** Where the IPAM keeps its leases, to check that DEL released them. */
  dataDir: string;
}

export interface LatencyStats {
  n: number;
  p50: number;
  p95: number;
  mean: number;
  min: number;
  max: number;
}

export interface PluginFigures {
  versionMs: LatencyStats;
  firstAddMs: number;
  firstDelMs: number;
  addMs: LatencyStats;
  delMs: LatencyStats;
  bursts: Array<{ pods: number; concurrency: number; addWallMs: number; delWallMs: number; addMs: LatencyStats; delMs: LatencyStats }>;
}

export interface CniBenchReport {
  benchmark: "cni";
  startedAt: string;
  /** Load averages when the run started and ended: a busy machine makes every figure larger. */
  machine: { node: string; kernel: string; cpus: number; cpuModel: string; loadStart: number[]; loadEnd?: number[] };
  commit: string;
  options: BenchOptions;
  configs: Record<string, CniConfList>;
  /**
   * What exec'ing a do-nothing program costs from this process, directly and through
   * `nsenter --net=NODE`: part of every figure, for both plugins alike.
   */
  floor: { spawnMs: LatencyStats; nsenterSpawnMs: LatencyStats };
  results: Partial<Record<Label, PluginFigures>>;
  trellisUnavailable?: string;
  /** native / reference and standalone / reference for every figure. */
  ratios?: Partial<Record<Label, Record<string, number>>>;
  /** Whether the native plugin + agent meets each goal of the issue. */
  goals?: Record<string, boolean>;
}

async function main(): Promise<void> {
  const options = parseOptions(process.argv.slice(2));
  const pool = new NetnsPool();
  const work = mkdtempSync(join(tmpdir(), "trellis-bench-cni-"));
  const startedAt = new Date().toISOString();
  const loadStart = loadavg().map((x) => Math.round(x * 100) / 100);
  // An interrupted run skips `finally`: remove its namespaces here instead.
  const onSignal = (): void => {
    pool.removeAll();
    rmSync(work, { recursive: true, force: true });
    process.exit(130);
  };
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);
  try {
    sweepStaleNamespaces();
    if (loadStart[0]! > cpus().length) console.log(`warning: load average ${loadStart[0]} on ${cpus().length} CPUs; figures will be inflated`);
    const reference = referencePlugin(pool, work, options.families);
    const probe = await probeTrellis(work);
    const plugins = [reference];
    if ("binDir" in probe) plugins.push(await nativePlugin(pool, work, options.families), trellisPlugin(pool, work, options.families, probe.binDir));
    else console.log(`trellis: not measured (${probe.unavailable})`);

    const floor = await measureFloor(reference.node);
    const figures = await measure(plugins, pool, options);
    const report: CniBenchReport = {
      benchmark: "cni",
      startedAt,
      machine: { node: process.version, kernel: execFileSync("uname", ["-r"], { encoding: "utf8" }).trim(), cpus: cpus().length, cpuModel: cpus()[0]?.model ?? "", loadStart, loadEnd: loadavg().map((x) => Math.round(x * 100) / 100) },
      commit: gitCommit(ROOT),
      options,
      floor,
      configs: Object.fromEntries(plugins.map((p) => [p.label, p.network])),
      results: Object.fromEntries(figures),
    };
    if ("unavailable" in probe) report.trellisUnavailable = probe.unavailable;
    const { native, standalone } = report.results;
    const referenceFigures = report.results.reference!;
    if (native && standalone) {
      report.ratios = { native: ratios(native, referenceFigures), standalone: ratios(standalone, referenceFigures) };
      report.goals = goals(native, report.ratios.native!, floor);
    }
    printReport(report);
    const out = join(ROOT, "bench/results", `cni-${startedAt.replace(/[:.]/g, "-")}.json`);
    mkdirSync(dirname(out), { recursive: true });
    writeFileSync(out, `${JSON.stringify(report, null, 2)}\n`);
    console.log(`\nwrote ${out}`);
  } finally {
    pool.removeAll();
    rmSync(work, { recursive: true, force: true });
  }
}

async function measure(plugins: PluginUnderTest[], pool: NetnsPool, options: BenchOptions): Promise<Map<Label, PluginFigures>> {
  const version = new Map(plugins.map((p) => [p.label, [] as number[]]));
  for (let i = 0; i < VERSION_RUNS; i++) {
    for (const p of plugins) version.get(p.label)!.push((await mustSucceed(p, "VERSION", () => execVersion(p))).elapsedMs);
  }

  const first = new Map<string, { add: number; del: number }>();
  for (const p of plugins) {
    const pod = pool.create("bpod");
    const add = await addPod(p, pod, "first");
    const del = await delPod(p, pod, "first", add.result);
    pool.remove(pod);
    first.set(p.label, { add: add.outcome.elapsedMs, del: del.elapsedMs });
  }

  const add = new Map(plugins.map((p) => [p.label, [] as number[]]));
  const del = new Map(plugins.map((p) => [p.label, [] as number[]]));
  for (let i = 0; i < options.runs; i++) {
    for (const p of plugins) {
      const pod = pool.create("bpod");
      const added = await addPod(p, pod, `seq${i}`);
      add.get(p.label)!.push(added.outcome.elapsedMs);
      del.get(p.label)!.push((await delPod(p, pod, `seq${i}`, added.result)).elapsedMs);
      pool.remove(pod);
    }
  }

  const figures = new Map<Label, PluginFigures>();
  for (const p of plugins) {
    const bursts = [];
    for (const concurrency of options.concurrency) bursts.push(await measureBurst(p, pool, options.burst, concurrency));
    assertNoLeases(p);
    figures.set(p.label, {
      versionMs: stats(version.get(p.label)!),
      firstAddMs: first.get(p.label)!.add,
      firstDelMs: first.get(p.label)!.del,
      addMs: stats(add.get(p.label)!),
      delMs: stats(del.get(p.label)!),
      bursts,
    });
  }
  return figures;
}

async function measureFloor(node: TestNetns): Promise<CniBenchReport["floor"]> {
  const direct: number[] = [];
  const entered: number[] = [];
  for (let i = 0; i < VERSION_RUNS; i++) {
    direct.push((await execCniPlugin({ command: "VERSION", plugin: "/bin/true", cniPath: REFERENCE_DIR, config: {} })).elapsedMs);
    entered.push((await execCniPlugin({ command: "VERSION", plugin: "/bin/true", cniPath: REFERENCE_DIR, config: {}, node })).elapsedMs);
  }
  return { spawnMs: stats(direct), nsenterSpawnMs: stats(entered) };
}

/** One plugin at a time: two bursts side by side would measure each other. */
async function measureBurst(p: PluginUnderTest, pool: NetnsPool, burst: number, concurrency: number): Promise<PluginFigures["bursts"][number]> {
  const pods = Array.from({ length: burst }, (_, i) => ({ id: `burst${concurrency}-${i}`, netns: pool.create("bburst") }));
  const results = new Map<string, unknown>();
  const addTimes: number[] = [];
  const addStart = performance.now();
  await forEachConcurrently(pods, concurrency, async (pod) => {
    const added = await addPod(p, pod.netns, pod.id);
    results.set(pod.id, added.result);
    addTimes.push(added.outcome.elapsedMs);
  });
  const addWallMs = performance.now() - addStart;
  const addresses = [...results.values()].flatMap((r) => (r as { ips: Array<{ address: string }> }).ips.map((ip) => ip.address));
  if (new Set(addresses).size !== addresses.length) throw new Error(`${p.label}: the burst handed out an address twice: ${addresses.join(", ")}`);

  const delTimes: number[] = [];
  const delStart = performance.now();
  await forEachConcurrently(pods, concurrency, async (pod) => {
    delTimes.push((await delPod(p, pod.netns, pod.id, results.get(pod.id))).elapsedMs);
  });
  const delWallMs = performance.now() - delStart;
  for (const pod of pods) pool.remove(pod.netns);
  return { pods: burst, concurrency, addWallMs, delWallMs, addMs: stats(addTimes), delMs: stats(delTimes) };
}

function execVersion(p: PluginUnderTest): Promise<CniOutcome> {
  // Directly, without nsenter: this is the plugin's own start-up and nothing else.
  return execCniPlugin({ command: "VERSION", plugin: p.plugin, cniPath: p.cniPath, config: { cniVersion: CNI_VERSION } });
}

async function addPod(p: PluginUnderTest, pod: TestNetns, id: string): Promise<{ outcome: CniOutcome; result: unknown }> {
  const outcome = await mustSucceed(p, `ADD ${id}`, () =>
    execCniPlugin({ command: "ADD", plugin: p.plugin, cniPath: p.cniPath, config: pluginConfig(p.network, 0), containerId: id, netns: pod.path, ifname: "eth0", node: p.node }),
  );
  const result = JSON.parse(outcome.stdout) as { ips?: unknown[] };
  const expected = p.network.plugins[0]!.ipam && (p.network.plugins[0]!.ipam as { ranges: unknown[] }).ranges.length;
  if (result.ips?.length !== expected) throw new Error(`${p.label}: ADD ${id} returned ${result.ips?.length ?? 0} addresses, expected ${expected}: ${outcome.stdout}`);
  return { outcome, result };
}

function delPod(p: PluginUnderTest, pod: TestNetns, id: string, prevResult: unknown): Promise<CniOutcome> {
  return mustSucceed(p, `DEL ${id}`, () =>
    execCniPlugin({ command: "DEL", plugin: p.plugin, cniPath: p.cniPath, config: pluginConfig(p.network, 0, prevResult), containerId: id, netns: pod.path, ifname: "eth0", node: p.node }),
  );
}

async function mustSucceed(p: PluginUnderTest, what: string, run: () => Promise<CniOutcome>): Promise<CniOutcome> {
  const outcome = await run();
  if (outcome.code !== 0) throw new Error(`${p.label} (${p.plugin}): ${what} exited ${outcome.code}: ${outcome.stdout.trim()} ${outcome.stderr.trim()}`);
  return outcome;
}

function ranges(families: Families): object[][] {
  const v4 = [{ subnet: "10.244.1.0/24" }];
  const v6 = [{ subnet: "fd00:10:244:1::/64" }];
  return families === "dual" ? [v4, v6] : [v4];
}

function defaultRoutes(families: Families): object[] {
  return families === "dual" ? [{ dst: "0.0.0.0/0" }, { dst: "::/0" }] : [{ dst: "0.0.0.0/0" }];
}

function referencePlugin(pool: NetnsPool, work: string, families: Families): PluginUnderTest {
  const dataDir = join(work, "host-local");
  // isGateway and the default routes make the reference do what trellis always does: give
  // the bridge the gateway address and route the pod's default through it.
  const network: CniConfList = {
    cniVersion: CNI_VERSION,
    name: "bench-reference",
    plugins: [
      {
        type: "bridge",
        bridge: "trtbench0",
        isGateway: true,
        ipMasq: false,
        ipam: { type: "host-local", ranges: ranges(families), routes: defaultRoutes(families), dataDir },
      },
    ],
  };
  return { label: "reference", plugin: join(REFERENCE_DIR, "bridge"), cniPath: REFERENCE_DIR, network, node: pool.create("bref"), dataDir };
}

function trellisPlugin(pool: NetnsPool, work: string, families: Families, binDir: string): PluginUnderTest {
  const dataDir = join(work, "trellis-data");
  const network: CniConfList = {
    cniVersion: CNI_VERSION,
    name: "bench-trellis",
    plugins: [{ type: "trellis", bridge: "trtbench0", ipMasq: false, ipam: { ranges: ranges(families), dataDir } }],
  };
  return { label: "standalone", plugin: join(binDir, "trellis"), cniPath: binDir, network, node: pool.create("btrellis"), dataDir };
}

/**
 * The native plugin as a node runs it: a `trellis agent` in the node's netns serves the socket
 * the config names. No standalone plugin is installed beside it, so every call is the agent's.
 */
async function nativePlugin(pool: NetnsPool, work: string, families: Families): Promise<PluginUnderTest> {
  const dataDir = join(work, "native-data");
  const node = pool.create("bnative");
  const agent = await startNodeAgent(node);
  const network: CniConfList = {
    cniVersion: CNI_VERSION,
    name: "bench-native",
    plugins: [{ type: "trellis", bridge: "trtbench0", ipMasq: false, agentSocket: agent.socket, ipam: { ranges: ranges(families), dataDir } }],
  };
  const binDir = nativePluginDir({ standalone: false });
  return { label: "native", plugin: join(binDir, "trellis"), cniPath: binDir, network, node, dataDir };
}

/** Copies dist/trellis into a CNI bin dir and checks that it answers VERSION. */
async function probeTrellis(work: string): Promise<{ binDir: string } | { unavailable: string }> {
  if (!existsSync(TRELLIS)) return { unavailable: `${TRELLIS} does not exist; run npm run build` };
  const binDir = join(work, "bin");
  mkdirSync(binDir, { recursive: true });
  copyFileSync(TRELLIS, join(binDir, "trellis"));
  const outcome = await execCniPlugin({ command: "VERSION", plugin: join(binDir, "trellis"), cniPath: binDir, config: { cniVersion: CNI_VERSION } });
  try {
    const info = JSON.parse(outcome.stdout) as { supportedVersions?: string[] };
    if (outcome.code === 0 && info.supportedVersions?.includes(CNI_VERSION)) return { binDir };
  } catch {
    // not JSON: reported below
  }
  return { unavailable: `VERSION exited ${outcome.code} with ${JSON.stringify(outcome.stdout.trim())} ${outcome.stderr.trim()}`.trim() };
}

/** Every IPAM lease must be gone once every pod was DELeted. */
function assertNoLeases(p: PluginUnderTest): void {
  if (p.label === "reference") {
    const dir = join(p.dataDir, p.network.name);
    const leases = readdirSync(dir).filter((file) => file !== "lock" && !file.startsWith("last_reserved_ip"));
    if (leases.length > 0) throw new Error(`reference: host-local leases left in ${dir}: ${leases.join(", ")}`);
    return;
  }
  const pods = execFileSync(TRELLIS, ["pods", "--network", p.network.name, "--data-dir", p.dataDir, "--json"], { encoding: "utf8" });
  if ((JSON.parse(pods) as unknown[]).length > 0) throw new Error(`${p.label}: pods left in ${p.dataDir} after DEL: ${pods}`);
}

async function forEachConcurrently<T>(items: T[], concurrency: number, work: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) await work(items[next++]!);
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, items.length) }, worker));
}

export function stats(samples: number[]): LatencyStats {
  const sorted = [...samples].sort((a, b) => a - b);
  const at = (q: number): number => sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)] ?? NaN;
  const round = (x: number): number => Math.round(x * 100) / 100;
  return {
    n: sorted.length,
    p50: round(at(0.5)),
    p95: round(at(0.95)),
    mean: round(sorted.reduce((sum, x) => sum + x, 0) / sorted.length),
    min: round(sorted[0] ?? NaN),
    max: round(sorted[sorted.length - 1] ?? NaN),
  };
}

/** The figures printed and compared, flattened to name → milliseconds. */
function headline(f: PluginFigures): Record<string, number> {
  const figures: Record<string, number> = {
    "VERSION p50": f.versionMs.p50,
    "VERSION p95": f.versionMs.p95,
    "first ADD (creates bridge)": f.firstAddMs,
    "first DEL": f.firstDelMs,
    "ADD p50": f.addMs.p50,
    "ADD p95": f.addMs.p95,
    "DEL p50": f.delMs.p50,
    "DEL p95": f.delMs.p95,
  };
  for (const burst of f.bursts) {
    const name = `burst ${burst.pods} @${burst.concurrency}`;
    figures[`${name} ADD wall`] = burst.addWallMs;
    figures[`${name} ADD p50`] = burst.addMs.p50;
    figures[`${name} ADD p95`] = burst.addMs.p95;
    figures[`${name} DEL wall`] = burst.delWallMs;
    figures[`${name} DEL p50`] = burst.delMs.p50;
    figures[`${name} DEL p95`] = burst.delMs.p95;
  }
  return figures;
}

function ratios(trellis: PluginFigures, reference: PluginFigures): Record<string, number> {
  const ref = headline(reference);
  return Object.fromEntries(Object.entries(headline(trellis)).map(([name, value]) => [name, Math.round((value / ref[name]!) * 100) / 100]));
}

/** The goals for the native plugin + agent. */
function goals(native: PluginFigures, ratio: Record<string, number>, floor: CniBenchReport["floor"]): Record<string, boolean> {
  const result: Record<string, boolean> = {
    // Exec'ing even /bin/true from this process costs the floor: the plugin's own time is above it.
    "VERSION p50 <= 3 ms over the exec floor": native.versionMs.p50 - floor.spawnMs.p50 <= 3,
    "ADD p50 <= 1.0x reference": ratio["ADD p50"]! <= 1,
    "DEL p50 <= 1.0x reference": ratio["DEL p50"]! <= 1,
  };
  for (const burst of native.bursts) {
    const name = `burst ${burst.pods} @${burst.concurrency}`;
    result[`${name} ADD wall <= 0.7x reference`] = ratio[`${name} ADD wall`]! <= 0.7;
    result[`${name} DEL wall <= 0.7x reference`] = ratio[`${name} DEL wall`]! <= 0.7;
  }
  return result;
}

function printReport(report: CniBenchReport): void {
  const { options } = report;
  const load = report.machine.loadStart.map((x) => x.toFixed(2)).join(" ");
  console.log(
    `\nCNI plugin latency in ms (${options.families === "dual" ? "dual-stack" : "IPv4"}, ${options.runs} sequential runs, ` +
      `burst of ${options.burst} at concurrency ${options.concurrency.join(" and ")}, ${report.machine.cpus} CPUs, load ${load})\n`,
  );
  const ref = headline(report.results.reference!);
  const native = report.results.native ? headline(report.results.native) : undefined;
  const standalone = report.results.standalone ? headline(report.results.standalone) : undefined;
  const ratio = (label: Label, name: string) => (report.ratios?.[label] ? `${report.ratios[label]![name]!.toFixed(2)}x` : "-");
  const rows = [["", LABELS.reference, LABELS.native, LABELS.standalone, "native/ref", "standalone/ref"]];
  for (const name of Object.keys(ref)) {
    rows.push([name, ref[name]!.toFixed(1), native ? native[name]!.toFixed(1) : "-", standalone ? standalone[name]!.toFixed(1) : "-", ratio("native", name), ratio("standalone", name)]);
  }
  const { floor } = report;
  rows.push(["(floor: exec /bin/true p50)", floor.spawnMs.p50.toFixed(1), "", "", "", ""]);
  rows.push(["(floor: nsenter + /bin/true p50)", floor.nsenterSpawnMs.p50.toFixed(1), "", "", "", ""]);
  const widths = rows[0]!.map((_, col) => Math.max(...rows.map((row) => row[col]!.length)));
  for (const row of rows) console.log(row.map((cell, col) => (col === 0 ? cell.padEnd(widths[col]!) : cell.padStart(widths[col]!))).join("   "));
  if (report.goals) {
    console.log("\ngoals (native plugin + agent):");
    for (const [goal, met] of Object.entries(report.goals)) console.log(`  ${met ? "met    " : "MISSED "} ${goal}`);
  }
}

function parseOptions(argv: string[]): BenchOptions {
  const { values } = parseArgs({
    args: argv,
    options: {
      runs: { type: "string", default: "50" },
      burst: { type: "string", default: "100" },
      concurrency: { type: "string", default: "10,50" },
      families: { type: "string", default: "dual" },
    },
  });
  const positive = (name: string, text: string): number => {
    const n = Number(text);
    if (!Number.isInteger(n) || n < 1) throw new Error(`--${name} ${text}: expected a positive integer`);
    return n;
  };
  if (values.families !== "dual" && values.families !== "ipv4") throw new Error(`--families ${values.families}: expected dual or ipv4`);
  const runs = positive("runs", values.runs);
  if (runs < 30) throw new Error(`--runs ${runs}: p95 needs at least 30 runs`);
  const burst = positive("burst", values.burst);
  if (burst > 250) throw new Error(`--burst ${burst}: the /24 pod range holds at most 250 pods at once`);
  const concurrency = values.concurrency.split(",").map((text) => positive("concurrency", text));
  return { runs, burst, concurrency, families: values.families };
}

await main();
