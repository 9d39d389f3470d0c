/**
 * The cluster network, measured in one run with its baselines beside it:
 *
 * - TCP throughput (iperf3, IPv4): pod to pod on one node against a raw veth between two bare
 *   namespaces (and, to tell the topology's cost from Trellis's, against two bare namespaces on
 *   a plain bridge); pod to pod across nodes in a `direct` lab and in a `vxlan` lab, each
 *   against node to node over the same lab's underlay (`net-throughput.ts`);
 * - how soon peers route to the pods of a node whose agent starts (`net-convergence.ts`);
 * - one agent against 1,000 peers in the store: convergence, one change, a resync with nothing
 *   to change, memory (`net-scale.ts`).
 *
 * Everything runs in namespaces the labs or the bench make, as root; every lab, namespace,
 * process and directory is removed at the end, on failure and on Ctrl-C. A part that fails is
 * reported and the others still run.
 *
 *   npm run bench:net -- [--seconds 3] [--repeats 3] [--restarts 5] [--peers 1000] [--changes 10]
 *                        [--parts throughput,convergence,scale]
 */
import { execFile, execFileSync } from "node:child_process";
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import { cpus, loadavg, totalmem } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs, promisify } from "node:util";
import { labName, labStatus, runTrellis, type LabStatus } from "../test/support/lab.js";
import { sweepStaleNamespaces } from "../test/support/netns.js";
import { TRELLIS } from "../test/support/trellis-cni.js";
import { measureConvergence, type ConvergenceFigures } from "./net-convergence.js";
import { MAX_SCALE_PEERS, SCALE_PLAN, measureScale, type ScaleFigures } from "./net-scale.js";
import { newMade, removeOnExit, type Made } from "./net-support.js";
import { bareBridgePath, measureThroughput, rawVethPath, type IperfPath, type PairFigures, type ThroughputPair } from "./net-throughput.js";
import { gitCommit } from "./commit.js";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const PARTS = ["throughput", "convergence", "scale"] as const;
type Part = (typeof PARTS)[number];

const GOALS = {
  sameNodeRatio: 0.95,
  directRatio: 0.9,
  convergenceMs: 1000,
  changeMs: 50,
  quietResyncMs: 1000,
  rssMiB: 100,
};

interface BenchOptions {
  seconds: number;
  repeats: number;
  restarts: number;
  peers: number;
  changes: number;
  parts: Part[];
}

interface Row {
  figure: string;
  value: string;
  goal: string;
  result: string;
}

export interface NetBenchReport {
  benchmark: "net";
  startedAt: string;
  /** Load averages when the run started and ended: a busy machine makes every figure worse. */
  machine: { node: string; kernel: string; cpus: number; cpuModel: string; memoryGiB: number; iperf3: string; loadStart: number[]; loadEnd?: number[] };
  commit: string;
  options: BenchOptions;
  labs: Record<string, { mode: string; nodes: number; podsPerNode: number; family: string; subnets: number; podMtu?: number }>;
  /** Throughput is IPv4 only: the IPv6 paths are the same devices and routes. */
  throughput?: PairFigures[];
  convergence?: ConvergenceFigures;
  scale?: ScaleFigures & { plan: typeof SCALE_PLAN };
  errors: Array<{ part: string; message: string }>;
  table?: Row[];
}

const execFileAsync = promisify(execFile);

async function main(): Promise<void> {
  const options = parseOptions(process.argv.slice(2));
  if (process.getuid?.() !== 0) throw new Error("bench:net needs root: it creates network namespaces and starts agents in them");
  if (!existsSync(TRELLIS)) throw new Error(`${TRELLIS} does not exist; run npm run build (npm run bench:net does)`);
  const made = newMade();
  const { remove, interrupted } = removeOnExit(made);

  const startedAt = new Date().toISOString();
  const report: NetBenchReport = {
    benchmark: "net",
    startedAt,
    machine: machineInfo(),
    commit: gitCommit(ROOT),
    options,
    labs: {},
    errors: [],
  };
  // Once interrupted, the parts still running fail as their namespaces go: that is not news.
  const say = (line: string) => interrupted() || console.log(line);
  if (report.machine.loadStart[0]! > report.machine.cpus / 2) say(`warning: load average ${report.machine.loadStart[0]} on ${report.machine.cpus} CPUs; figures will suffer`);
  try {
    sweepStaleNamespaces();
    await runParts(options, report, made, say);
  } finally {
    await remove();
  }
  report.machine.loadEnd = roundedLoad();
  report.table = tableRows(report);
  printTable(report);
  const out = join(ROOT, "bench/results", `net-${startedAt.replace(/[:.]/g, "-")}.json`);
  mkdirSync(dirname(out), { recursive: true });
  writeFileSync(out, `${JSON.stringify(report, null, 2)}\n`);
  console.log(`\nwrote ${out}`);
  if (report.errors.length > 0) process.exitCode = 1;
}

async function runParts(options: BenchOptions, report: NetBenchReport, made: Made, say: (line: string) => void): Promise<void> {
  const attempt = async (part: string, work: () => Promise<void>): Promise<void> => {
    try {
      await work();
    } catch (error) {
      const message = (error as Error).message;
      report.errors.push({ part, message });
      say(`${part} FAILED: ${message}`);
    }
  };
  const wants = (part: Part) => options.parts.includes(part);
  const throughput: PairFigures[] = [];

  if (wants("throughput") || wants("convergence")) {
    await attempt("direct lab", async () => {
      const lab = await labUp("nd", ["--mode", "direct", "--subnets", "1", "--nodes", "3", "--pods-per-node", "2"], report, say);
      try {
        if (wants("throughput")) {
          await attempt("throughput (same node, direct)", async () => {
            const status = labStatus(lab);
            say("throughput: same node and across nodes in direct mode");
            const pairs = [...sameNodePairs(status, made), acrossNodesPair("pod to pod across nodes, direct", status, GOALS.directRatio)];
            throughput.push(...(await measureThroughput(pairs, options, made, say)));
          });
        }
        if (wants("convergence")) {
          await attempt("convergence", async () => {
            say(`convergence: node3's agent restarted ${options.restarts} times as a new node`);
            report.convergence = await measureConvergence(lab, options.restarts, made, say);
          });
        }
      } finally {
        labDown(lab);
      }
    });
  }
  if (wants("throughput")) {
    await attempt("throughput (vxlan)", async () => {
      const lab = await labUp("nv", ["--mode", "vxlan", "--subnets", "1", "--nodes", "2", "--pods-per-node", "1"], report, say);
      try {
        say("throughput: across nodes in vxlan mode");
        throughput.push(...(await measureThroughput([acrossNodesPair("pod to pod across nodes, vxlan", labStatus(lab))], options, made, say)));
      } finally {
        labDown(lab);
      }
    });
  }
  if (throughput.length > 0) report.throughput = throughput;
  if (wants("scale")) {
    await attempt("scale", async () => {
      say(`scale: one agent, ${options.peers} peers in the store, vxlan`);
      report.scale = { ...(await measureScale(options, made, say)), plan: SCALE_PLAN };
    });
  }
}

/** Brings a lab up (which ends with its connectivity check) and records its shape; returns its name. */
async function labUp(tag: string, args: string[], report: NetBenchReport, say: (line: string) => void): Promise<string> {
  const name = labName(tag);
  say(`lab up --name ${name} ${args.join(" ")}`);
  try {
    await execFileAsync(TRELLIS, ["lab", "up", "--name", name, ...args], { timeout: 300_000, maxBuffer: 16 * 1024 * 1024 });
  } catch (error) {
    const { stdout = "", stderr = "" } = error as { stdout?: string; stderr?: string };
    throw new Error(`trellis lab up --name ${name} ${args.join(" ")} failed: ${(error as Error).message.split("\n")[0]}\n${`${stdout}${stderr}`.trim().split("\n").slice(-30).join("\n")}`);
  }
  const status = labStatus(name) as LabStatus & { mode: string; family: string; underlay: { subnets: unknown[] } };
  const pod = status.pods[0];
  report.labs[name] = {
    mode: status.mode,
    nodes: status.nodes.length,
    podsPerNode: status.pods.length / status.nodes.length,
    family: status.family,
    subnets: status.underlay.subnets.length,
    podMtu: pod ? interfaceMtu(pod.netns, "eth0") : undefined,
  };
  return name;
}

function labDown(name: string): void {
  const down = runTrellis(["lab", "down", "--name", name], 120_000);
  if (down.status !== 0) throw new Error(`trellis lab down --name ${name} failed: ${down.stderr.trim()}`);
}

function ipv4(addresses: readonly string[], what: string): string {
  const address = addresses.find((candidate) => !candidate.includes(":"));
  if (!address) throw new Error(`${what} has no IPv4 address (${addresses.join(", ")})`);
  return address;
}

/** node1-pod0 → node1-pod1, against the raw veth (the goal) and against a bare bridge (for the reader). */
function sameNodePairs(status: LabStatus, made: Made): ThroughputPair[] {
  const [client, server] = status.pods.filter((pod) => pod.node === status.nodes[0].name);
  if (!server) throw new Error(`lab ${status.name} has fewer than 2 pods on ${status.nodes[0].name}`);
  const pods: IperfPath = { label: `${client.name} → ${server.name}`, clientNetns: client.netns, serverNetns: server.netns, address: ipv4(server.addresses, server.name) };
  return [
    { name: "pod to pod on one node", subject: pods, baseline: rawVethPath(made), goal: GOALS.sameNodeRatio },
    { name: "pod to pod on one node, against a bare bridge", subject: pods, baseline: bareBridgePath(made) },
  ];
}

/** node1's first pod → node2's first pod, against node1 → node2 over the underlay. */
function acrossNodesPair(name: string, status: LabStatus, goal?: number): ThroughputPair {
  const [node1, node2] = status.nodes;
  const client = status.pods.find((pod) => pod.node === node1.name)!;
  const server = status.pods.find((pod) => pod.node === node2.name)!;
  return {
    name,
    subject: { label: `${client.name} → ${server.name}`, clientNetns: client.netns, serverNetns: server.netns, address: ipv4(server.addresses, server.name) },
    baseline: { label: `underlay ${node1.name} → ${node2.name}`, clientNetns: node1.netns, serverNetns: node2.netns, address: ipv4(node2.addresses, node2.name) },
    goal,
  };
}

function interfaceMtu(netns: string, dev: string): number | undefined {
  try {
    const [link] = JSON.parse(execFileSync("nsenter", [`--net=${netns}`, "--", "ip", "-json", "link", "show", "dev", dev], { encoding: "utf8" })) as Array<{ mtu: number }>;
    return link?.mtu;
  } catch {
    return undefined;
  }
}

function tableRows(report: NetBenchReport): Row[] {
  const rows: Row[] = [];
  const verdict = (pass: boolean) => (pass ? "pass" : "FAIL");
  for (const pair of report.throughput ?? []) {
    const spread = `rounds ${Math.min(...pair.roundRatios).toFixed(2)}–${Math.max(...pair.roundRatios).toFixed(2)}`;
    const ratio = `${pair.ratio.toFixed(2)}× (${spread})`;
    rows.push({
      figure: `TCP ${pair.name} (median of ${pair.subject.gbps.n})`,
      value: `${pair.subject.gbps.median.toFixed(2)} Gbit/s vs ${pair.baseline.label} ${pair.baseline.gbps.median.toFixed(2)}`,
      goal: pair.goal === undefined ? "reported" : `≥ ${pair.goal.toFixed(2)}×`,
      result: pair.goal === undefined ? ratio : `${ratio} ${verdict(pair.ratio >= pair.goal)}`,
    });
  }
  const c = report.convergence;
  if (c) {
    const ms = (s: { median: number; max: number }) => `${s.median.toFixed(0)} ms (max ${s.max.toFixed(0)})`;
    rows.push({ figure: `agent start → ${c.peers.join(", ")} route its pods, median of ${c.startToRoutedMs.n}`, value: ms(c.startToRoutedMs), goal: `< ${GOALS.convergenceMs} ms`, result: verdict(c.startToRoutedMs.max < GOALS.convergenceMs) });
    rows.push({ figure: "  of which agent start → node claimed", value: ms(c.startToClaimedMs), goal: "", result: "" });
    rows.push({ figure: "  of which node claimed → routes on both peers", value: ms(c.claimedToRoutedMs), goal: "", result: "" });
    rows.push({ figure: "node rm (command start) → peers drop its routes", value: ms(c.rmToWithdrawnMs), goal: "< 2000 ms", result: verdict(c.rmToWithdrawnMs.max < 2000) });
  }
  const s = report.scale;
  if (s) {
    const peers = s.peers.toLocaleString("en");
    rows.push({ figure: `${peers} peers (vxlan): agent start → all ${s.kernel.routes} routes in the kernel`, value: `${s.startToAllRoutesMs} ms (first sync ${s.firstSyncMs} ms)`, goal: "reported", result: "" });
    rows.push({ figure: `${peers} peers: one change applied, median / p95 of ${s.changeMs.n}`, value: `${s.changeMs.median.toFixed(1)} / ${s.changeMs.p95.toFixed(1)} ms`, goal: `< ${GOALS.changeMs} ms`, result: verdict(s.changeMs.p95 < GOALS.changeMs) });
    rows.push({ figure: `${peers} peers: full resync, nothing to change, median / max of ${s.quietResyncMs.n}`, value: `${s.quietResyncMs.median.toFixed(1)} / ${s.quietResyncMs.max.toFixed(1)} ms`, goal: `< ${GOALS.quietResyncMs} ms`, result: verdict(s.quietResyncMs.max < GOALS.quietResyncMs) });
    rows.push({ figure: `${peers} peers: agent RSS (peak)`, value: `${s.rssMiB} MiB (${s.peakRssMiB})`, goal: `< ${GOALS.rssMiB} MB`, result: verdict(s.rssMiB * 1.048576 < GOALS.rssMiB) });
    rows.push({ figure: `${peers} peers: of it anonymous / executable's file pages`, value: `${s.anonMiB} / ${s.fileMiB} MiB`, goal: "", result: "reported" });
  }
  for (const error of report.errors) rows.push({ figure: `${error.part}: not measured`, value: error.message.split("\n")[0].slice(0, 60), goal: "", result: "ERROR" });
  return rows;
}

function printTable(report: NetBenchReport): void {
  const load = report.machine.loadStart.map((x) => x.toFixed(2)).join(" ");
  const o = report.options;
  console.log(
    `\nTrellis network (throughput: IPv4 TCP, iperf3 ${o.seconds} s × ${o.repeats}; ${report.machine.cpus} CPUs, load ${load} → ${(report.machine.loadEnd ?? []).map((x) => x.toFixed(2)).join(" ")})\n`,
  );
  const rows = [["figure", "value", "goal", "result"], ...(report.table ?? []).map((row) => [row.figure, row.value, row.goal, row.result])];
  const widths = rows[0].map((_, col) => Math.max(...rows.map((row) => row[col].length)));
  for (const row of rows) console.log(row.map((cell, col) => cell.padEnd(widths[col])).join("   ").trimEnd());
}

function machineInfo(): NetBenchReport["machine"] {
  return {
    node: process.version,
    kernel: execFileSync("uname", ["-r"], { encoding: "utf8" }).trim(),
    cpus: cpus().length,
    cpuModel: cpus()[0]?.model ?? "",
    memoryGiB: Math.round(totalmem() / 2 ** 30),
    iperf3: execFileSync("iperf3", ["--version"], { encoding: "utf8" }).split("\n")[0].trim(),
    loadStart: roundedLoad(),
  };
}

function roundedLoad(): number[] {
  return loadavg().map((x) => Math.round(x * 100) / 100);
}

function parseOptions(argv: string[]): BenchOptions {
  const { values } = parseArgs({
    args: argv,
    options: {
      seconds: { type: "string", default: "3" },
      repeats: { type: "string", default: "3" },
      restarts: { type: "string", default: "5" },
      peers: { type: "string", default: "1000" },
      changes: { type: "string", default: "10" },
      parts: { type: "string", default: PARTS.join(",") },
    },
  });
  const whole = (name: string, text: string, min: number, max: number): number => {
    const n = Number(text);
    if (!/^[0-9]+$/.test(text) || n < min || n > max) throw new Error(`--${name} ${text}: expected a whole number from ${min} to ${max}`);
    return n;
  };
  const parts = values.parts.split(",").map((part) => part.trim());
  const unknown = parts.filter((part) => !(PARTS as readonly string[]).includes(part));
  if (unknown.length > 0 || parts.length === 0) throw new Error(`--parts ${values.parts}: expected a comma-separated list of ${PARTS.join(", ")}`);
  return {
    seconds: whole("seconds", values.seconds, 1, 60),
    repeats: whole("repeats", values.repeats, 1, 20),
    restarts: whole("restarts", values.restarts, 1, 50),
    peers: whole("peers", values.peers, 1, MAX_SCALE_PEERS - 100),
    changes: whole("changes", values.changes, 1, 100),
    parts: parts as Part[],
  };
}

await main();
