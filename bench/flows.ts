/**
 * What flow records cost, in one run with the agent without them beside it, on a lab of the
 * Trellis store (two nodes, two pods each, IPv4; node1-pod0 sends to node2-pod0 across nodes):
 *
 * - TCP throughput (iperf3) and new TCP connections a second (bench/connect-flood.c, reset as
 *   soon as established, accepted by the same program), with flow records on (the default: conntrack's events read, counters
 *   kept by nf_conntrack_acct) and off (--flow-buffer 0, nf_conntrack_acct 0), in alternating
 *   rounds (on, off, on, off, …) so the machine's noise lands on both;
 * - keeping up: new UDP flows at a fixed rate (a datagram to a new port each) through the
 *   sender's node for some seconds, at 20,000 a second and above; the node's agent must record
 *   every one (trellis_flow_events_total{event="new"}) or count what the kernel dropped
 *   (trellis_flow_events_lost_total), never lose one silently;
 * - the kernel's own part, in each round: the agents without flow records, and in each node the
 *   flow events table, nf_conntrack_acct and a bare reader of the events (trellis-nft-batch
 *   --conntrack, its output discarded): what any reader of conntrack's events costs here;
 * - the sending node's agent: resident memory with flow records off, on with an empty ring, and
 *   on with a full one.
 *
 * Goals (issue 21): throughput ≥ 0.95× and connections/s ≥ 0.9× without flow records; 20,000
 * new connections a second recorded with none lost uncounted; RSS growth with a full ring < 20 MiB.
 *
 *   npm run bench:flows -- [--seconds 5] [--rounds 3] [--rates 20000,40000]
 */
import { execFile, execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { cpus, loadavg, tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { parseArgs, promisify } from "node:util";
import { flowEventsTable } from "../src/dataplane/flow-events.js";
import { sleep, startDetached, stopProcesses } from "../src/lab/processes.js";
import { parsePrefix } from "../src/net/ip.js";
import { tableOps } from "../src/nft/diff.js";
import { renderOps } from "../src/nft/text.js";
import type { PlanFile } from "../src/plan/plan.js";
import { labExec, labName, labStatus, runTrellis } from "../test/support/lab.js";
import { gitCommit } from "./commit.js";
import { newMade, removeOnExit, summarize } from "./net-support.js";
import { processTreeCpuSeconds, residentMemory, round } from "./svc-support.js";

const execFileAsync = promisify(execFile);
const ROOT = resolve(import.meta.dirname, "..");
const ACCEPT_PORT = 7778;
const IPERF_PORT = 5201;
const GOALS = { throughputRatio: 0.95, connectRatio: 0.9, keepUpRate: 20_000, rssGrowthMiB: 20 };

const { values } = parseArgs({
  options: {
    seconds: { type: "string", default: "5" },
    rounds: { type: "string", default: "3" },
    rates: { type: "string", default: "20000,40000" },
  },
});
const options = {
  seconds: whole("--seconds", values.seconds!, 1, 60),
  rounds: whole("--rounds", values.rounds!, 1, 20),
  rates: values.rates!.split(",").map((rate) => whole("--rates", rate, 100, 1_000_000)),
};

function whole(flag: string, text: string, min: number, max: number): number {
  if (!/^[0-9]+$/.test(text) || Number(text) < min || Number(text) > max) throw new Error(`${flag} ${JSON.stringify(text)} is not a whole number from ${min} to ${max}`);
  return Number(text);
}

const say = (line: string) => console.error(`[bench:flows] ${line}`);

interface Phase {
  readonly flows: boolean;
  readonly gbps: number;
  readonly connectsPerSecond: number;
}

interface KeepUp {
  readonly rate: number;
  readonly sent: number;
  readonly seconds: number;
  readonly recorded: number;
  readonly lost: number;
  readonly ignored: number;
  /** The agent's and its readers' CPU time over the run. */
  readonly agentCpuSeconds: number;
}

async function main(): Promise<void> {
  const made = newMade();
  const { remove } = removeOnExit(made);
  const work = mkdtempSync(join(tmpdir(), "trellis-bench-flows-"));
  made.dirs.add(work);
  const flood = join(work, "connect-flood");
  execFileSync(process.env.CC ?? "cc", ["-O2", "-Wall", "-o", flood, join(import.meta.dirname, "connect-flood.c")], { stdio: "inherit" });
  const name = labName("bflows");
  try {
    say(`lab ${name}: 2 nodes, 2 pods each, IPv4`);
    const up = runTrellis(["lab", "up", "--name", name, "--nodes", "2", "--pods-per-node", "2", "--family", "ipv4"], 300_000);
    if (up.status !== 0) throw new Error(`lab up failed: ${up.stdout}${up.stderr}`);
    const status = labStatus(name);
    const pod = (podName: string) => status.pods.find((candidate) => candidate.name === podName)!;
    const sender = pod("node1-pod0");
    const receiver = pod("node2-pod0");
    const agents = new Map(status.nodes.map((node) => [node.name, { ...node, pid: node.agentPid! }]));
    const metric = (node: string, pattern: RegExp) => Number(pattern.exec(labExec(name, node, ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9656 && printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3"]))?.[1] ?? NaN);

    /** Both agents started again, with flow records on or off (and conntrack's counters with them). */
    const restartAgents = async (flows: boolean) => {
      await stopProcesses([...agents.values()].map((agent) => agent.pid));
      for (const [node, agent] of agents) {
        labExec(name, node, ["sysctl", "-qw", `net.netfilter.nf_conntrack_acct=${flows ? 1 : 0}`]);
        const argv = [...agent.agentArgv.filter((arg) => !arg.startsWith("--flow-buffer")), ...(flows ? [] : ["--flow-buffer=0"])];
        const started = startDetached(agent.netns, argv, agent.agentLog);
        agents.set(node, { ...agent, pid: started.pid });
      }
      for (const node of agents.keys()) {
        const deadline = Date.now() + 60_000;
        for (;;) {
          try {
            if (labExec(name, node, ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9656 && printf 'GET /readyz HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3"]).includes("200 OK")) break;
          } catch {
            // not listening yet
          }
          if (Date.now() > deadline) throw new Error(`the agent of ${node} is not ready 60 s after its restart`);
          await sleep(200);
        }
      }
    };

    const iperfServer = execFile("nsenter", [`--net=${receiver.netns}`, "iperf3", "-s", "-p", String(IPERF_PORT)]);
    made.children.add(iperfServer);
    // The connections' other end accepts as fast as the kernel connects (the lab's probe server,
    // a Node.js process, would overflow its listen queue and make the figure its own).
    const acceptor = execFile("nsenter", [`--net=${receiver.netns}`, flood, "serve", String(ACCEPT_PORT), "3600"]);
    made.children.add(acceptor);
    await sleep(500);
    const throughput = async () => {
      const { stdout } = await execFileAsync("nsenter", [`--net=${sender.netns}`, "iperf3", "-c", receiver.addresses[0], "-p", String(IPERF_PORT), "-t", String(options.seconds), "-J"], { maxBuffer: 16 << 20 });
      return (JSON.parse(stdout) as { end: { sum_received: { bits_per_second: number } } }).end.sum_received.bits_per_second / 1e9;
    };
    const connects = async () => {
      const { stdout } = await execFileAsync("nsenter", [`--net=${sender.netns}`, flood, "tcp", receiver.addresses[0], String(ACCEPT_PORT), String(options.seconds), "64"]);
      const result = JSON.parse(stdout) as { connections: number; failures: number; seconds: number };
      if (result.failures) say(`  ${result.failures} connects failed`);
      return result.connections / result.seconds;
    };

    const plan = JSON.parse(readFileSync(status.planFile, "utf8")) as PlanFile;
    const clusterCidrs = [...plan.podCidrs, ...plan.serviceCidrs].map(parsePrefix);
    const phases: Phase[] = [];
    /** Connections a second with the kernel's part of flow records alone. */
    const floor: number[] = [];
    for (let turn = 0; turn < options.rounds; turn++) {
      for (const flows of turn % 2 ? [false, true] : [true, false]) {
        await restartAgents(flows);
        // The last phase's connections (closed by reset, kept by conntrack for 10 s) would meet
        // this phase's on the same ports: flushed, and their events let pass, first.
        for (const node of agents.keys()) labExec(name, node, ["conntrack", "-F"]);
        await sleep(2_000);
        const gbps = await throughput();
        const connectsPerSecond = await connects();
        phases.push({ flows, gbps: round(gbps, 2), connectsPerSecond: Math.round(connectsPerSecond) });
        say(`round ${turn + 1}/${options.rounds}, flow records ${flows ? "on " : "off"}: ${gbps.toFixed(2)} Gbit/s, ${Math.round(connectsPerSecond)} connections/s`);
      }
      // The kernel's own cost: the agents without flow records, and in each node what they would
      // ask of the kernel (nf_conntrack_acct, the flow events table) with a reader of the events
      // that only reads them. What the agents add to that is theirs.
      await restartAgents(false);
      const readers = [...agents.values()].map((agent) => {
        execFileSync("nsenter", [`--net=${agent.netns}`, "nft", "-f", "-"], { input: renderOps(tableOps(undefined, flowEventsTable(clusterCidrs, ["new", "destroy"]))) });
        execFileSync("nsenter", [`--net=${agent.netns}`, "sysctl", "-qw", "net.netfilter.nf_conntrack_acct=1"]);
        const reader = execFile("nsenter", [`--net=${agent.netns}`, join(ROOT, "dist", "trellis-nft-batch"), "--conntrack", "new,destroy"], { maxBuffer: 1 << 30, encoding: "buffer" });
        made.children.add(reader);
        return reader;
      });
      for (const node of agents.keys()) labExec(name, node, ["conntrack", "-F"]);
      await sleep(2_000);
      floor.push(Math.round(await connects()));
      for (const reader of readers) {
        reader.kill();
        made.children.delete(reader);
      }
      say(`round ${turn + 1}/${options.rounds}, the kernel's events read by a reader alone: ${floor.at(-1)} connections/s`);
    }

    // Memory and keeping up, with flow records on.
    await restartAgents(false);
    await sleep(2_000);
    const memoryOff = residentMemory(agents.get("node1")!.pid);
    await restartAgents(true);
    await sleep(2_000);
    const memoryEmpty = residentMemory(agents.get("node1")!.pid);
    const keepUp: KeepUp[] = [];
    for (const rate of options.rates) {
      const before = {
        recorded: metric("node1", /^trellis_flow_events_total\{event="new"\} (\d+)$/m),
        lost: metric("node1", /^trellis_flow_events_lost_total (\d+)$/m),
        ignored: metric("node1", /^trellis_flow_events_ignored_total (\d+)$/m),
        cpu: processTreeCpuSeconds(agents.get("node1")!.pid),
      };
      const { stdout } = await execFileAsync("nsenter", [`--net=${sender.netns}`, flood, "udp", receiver.addresses[0], "1024", String(options.seconds), String(rate)]);
      const sent = JSON.parse(stdout) as { connections: number; seconds: number };
      await sleep(2_000);
      const after = {
        recorded: metric("node1", /^trellis_flow_events_total\{event="new"\} (\d+)$/m),
        lost: metric("node1", /^trellis_flow_events_lost_total (\d+)$/m),
        ignored: metric("node1", /^trellis_flow_events_ignored_total (\d+)$/m),
        cpu: processTreeCpuSeconds(agents.get("node1")!.pid),
      };
      const figures: KeepUp = {
        rate, sent: sent.connections, seconds: sent.seconds, recorded: after.recorded - before.recorded, lost: after.lost - before.lost,
        ignored: after.ignored - before.ignored, agentCpuSeconds: round(after.cpu - before.cpu, 2),
      };
      keepUp.push(figures);
      say(`${rate} new flows/s for ${sent.seconds} s: ${figures.sent} sent, ${figures.recorded} recorded, ${figures.lost} losses counted, agent CPU ${figures.agentCpuSeconds} s`);
      // The flows of one rate are UDP conntrack entries for 30 s: flushed, so the next rate's are all new.
      labExec(name, "node1", ["conntrack", "-F"]);
      labExec(name, "node2", ["conntrack", "-F"]);
      await sleep(3_000);
    }
    const memoryFull = residentMemory(agents.get("node1")!.pid);
    const ringFull = metric("node1", /^trellis_flow_records (\d+)$/m);

    const figures = (flows: boolean, pick: (phase: Phase) => number) => {
      // The median of the rounds: one round's outlier (iperf3 moves by 10 % from run to run here) moves it least.
      const samples = phases.filter((phase) => phase.flows === flows).map(pick);
      return { median: median(samples), summary: summarize(samples) };
    };
    const on = { gbps: figures(true, (phase) => phase.gbps), connects: figures(true, (phase) => phase.connectsPerSecond) };
    const off = { gbps: figures(false, (phase) => phase.gbps), connects: figures(false, (phase) => phase.connectsPerSecond) };
    const floorMedian = median(floor);
    const ratios = {
      throughput: round(on.gbps.median / off.gbps.median, 3),
      connects: round(on.connects.median / off.connects.median, 3),
      /** The kernel's events with nothing done with them, against no flow records: the floor of any ctnetlink reader. */
      kernelConnects: round(floorMedian / off.connects.median, 3),
      /** The agents' part: with flow records against the kernel's alone. */
      agentConnects: round(on.connects.median / floorMedian, 3),
    };
    const at20k = keepUp.find((figures) => figures.rate === GOALS.keepUpRate);
    const report = {
      bench: "flows",
      commit: gitCommit(ROOT),
      date: new Date().toISOString(),
      machine: { cpus: cpus().length, loadavg: loadavg().map((load) => round(load, 2)) },
      options,
      phases,
      withFlows: on,
      withoutFlows: off,
      kernelFloor: { connectsPerSecond: summarize(floor), median: Math.round(floorMedian) },
      ratios,
      keepUp,
      memory: { off: memoryOff, emptyRing: memoryEmpty, fullRing: memoryFull, ringRecords: ringFull, growthMiB: round(memoryFull.rssMiB - memoryEmpty.rssMiB, 1), vsOffMiB: round(memoryFull.rssMiB - memoryOff.rssMiB, 1) },
      goals: [
        goal("throughput", `≥ ${GOALS.throughputRatio}× without flow records`, ratios.throughput, ratios.throughput >= GOALS.throughputRatio),
        goal("connections/s", `≥ ${GOALS.connectRatio}× without flow records`, ratios.connects, ratios.connects >= GOALS.connectRatio),
        goal("keeping up", `${GOALS.keepUpRate} new flows/s, each recorded or its loss counted`, at20k ? `${at20k.recorded}/${at20k.sent} recorded, ${at20k.lost} losses counted` : "not run",
          at20k !== undefined && (at20k.recorded === at20k.sent || at20k.lost > 0) && at20k.sent >= 0.95 * GOALS.keepUpRate * options.seconds),
        goal("memory", `RSS growth with a full ring < ${GOALS.rssGrowthMiB} MiB`, round(memoryFull.rssMiB - memoryEmpty.rssMiB, 1), memoryFull.rssMiB - memoryEmpty.rssMiB < GOALS.rssGrowthMiB),
      ],
    };
    const file = join(ROOT, "bench", "results", `flows-${report.date.replaceAll(":", "-").replace(".", "-")}.json`);
    mkdirSync(dirname(file), { recursive: true });
    writeFileSync(file, `${JSON.stringify(report, null, 2)}\n`);
    console.log(`flow records: throughput ${on.gbps.median.toFixed(2)} vs ${off.gbps.median.toFixed(2)} Gbit/s (${ratios.throughput}×), connections/s ${Math.round(on.connects.median)} vs ${Math.round(off.connects.median)} (${ratios.connects}×)`);
    console.log(`  the kernel's events alone (a reader that only reads): ${Math.round(floorMedian)} connections/s, ${ratios.kernelConnects}× without flow records; the agents' part ${ratios.agentConnects}×`);
    for (const figures of keepUp) console.log(`  ${figures.rate} new flows/s: ${figures.recorded} of ${figures.sent} recorded, ${figures.lost} losses counted, agent CPU ${figures.agentCpuSeconds} s`);
    console.log(`  agent RSS: off ${memoryOff.rssMiB} MiB, on ${memoryEmpty.rssMiB} MiB, full ring (${ringFull} records) ${memoryFull.rssMiB} MiB`);
    for (const entry of report.goals) console.log(`  ${entry.met ? "met   " : "MISSED"} ${entry.name}: ${entry.goal}: ${entry.measured}`);
    console.log(`results: ${file}`);
  } finally {
    rmSync(work, { recursive: true, force: true });
    await remove();
  }
}

function median(samples: readonly number[]): number {
  const sorted = [...samples].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
}

function goal(name: string, text: string, measured: number | string, met: boolean) {
  return { name, goal: text, measured, met };
}

await main();
