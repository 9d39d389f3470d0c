/**
 * TCP throughput with iperf3, IPv4: each path under test beside its baseline in the same run,
 * the two alternating run by run (baseline first on even runs, subject first on odd ones) so
 * that machine noise lands on both. Every server and client runs inside a namespace the lab
 * or the bench made; nothing leaves them.
 */
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { promisify } from "node:util";
import { sleep } from "../src/lab/processes.js";
import { inNetns } from "../test/support/netns.js";
import { summarize, type Made, type Summary } from "./net-support.js";

const IPERF_PORT = "5201";
const execFileAsync = promisify(execFile);

/** One direction of one test: a server in `serverNetns`, a client in `clientNetns` connecting to `address`. */
export interface IperfPath {
  readonly label: string;
  readonly serverNetns: string;
  readonly clientNetns: string;
  readonly address: string;
}

export interface ThroughputPair {
  readonly name: string;
  readonly subject: IperfPath;
  readonly baseline: IperfPath;
  /** The least subject/baseline ratio that passes; undefined: reported only. */
  readonly goal?: number;
}

export interface PathFigures {
  readonly label: string;
  readonly address: string;
  readonly gbps: Summary;
  /** TCP retransmissions per run, as the sender counted them. */
  readonly retransmits: readonly number[];
}

export interface PairFigures {
  readonly name: string;
  readonly subject: PathFigures;
  readonly baseline: PathFigures;
  /** Median over median. */
  readonly ratio: number;
  readonly goal?: number;
}

export async function measureThroughput(pairs: readonly ThroughputPair[], settings: { seconds: number; repeats: number }, made: Made, say: (line: string) => void): Promise<PairFigures[]> {
  const runs = new Map<IperfPath, IperfRun[]>(pairs.flatMap((pair) => [[pair.subject, []], [pair.baseline, []]]));
  for (let repeat = 0; repeat < settings.repeats; repeat++) {
    for (const pair of pairs) {
      const order = repeat % 2 === 0 ? [pair.baseline, pair.subject] : [pair.subject, pair.baseline];
      for (const path of order) {
        const result = await runIperf(path, settings.seconds, made);
        runs.get(path)!.push(result);
        say(`  ${pair.name} run ${repeat + 1}/${settings.repeats}: ${path.label} ${(result.bitsPerSecond / 1e9).toFixed(2)} Gbit/s`);
      }
    }
  }
  const figures = (path: IperfPath): PathFigures => ({
    label: path.label,
    address: path.address,
    gbps: summarize(runs.get(path)!.map((run) => run.bitsPerSecond / 1e9)),
    retransmits: runs.get(path)!.map((run) => run.retransmits),
  });
  return pairs.map((pair) => {
    const subject = figures(pair.subject);
    const baseline = figures(pair.baseline);
    return { name: pair.name, subject, baseline, ratio: Math.round((subject.gbps.median / baseline.gbps.median) * 1000) / 1000, goal: pair.goal };
  });
}

interface IperfRun {
  readonly bitsPerSecond: number;
  readonly retransmits: number;
}

/** One iperf3 test: a one-off server, then the client for `seconds`; the receiver's rate. */
async function runIperf(path: IperfPath, seconds: number, made: Made): Promise<IperfRun> {
  const server = spawn("nsenter", [`--net=${path.serverNetns}`, "--", "iperf3", "--server", "--one-off", "--port", IPERF_PORT, "--forceflush"], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  made.children.add(server);
  try {
    await serverListening(server, path);
    let stdout: string;
    try {
      ({ stdout } = await execFileAsync("nsenter", [`--net=${path.clientNetns}`, "--", "iperf3", "--client", path.address, "--port", IPERF_PORT, "--time", String(seconds), "--json"], {
        timeout: (seconds + 30) * 1000,
        maxBuffer: 16 * 1024 * 1024,
      }));
    } catch (error) {
      // iperf3 --json reports its own failures as JSON on stdout.
      stdout = (error as { stdout?: string }).stdout ?? "";
      if (!stdout.trim().startsWith("{")) throw new Error(`iperf3 ${path.label} to ${path.address} failed: ${(error as Error).message}`);
    }
    const report = JSON.parse(stdout) as { error?: string; end?: { sum_received?: { bits_per_second: number }; sum_sent?: { retransmits?: number } } };
    const received = report.end?.sum_received?.bits_per_second;
    if (report.error || received === undefined) throw new Error(`iperf3 ${path.label} to ${path.address} failed: ${report.error ?? "no end.sum_received in its report"}`);
    return { bitsPerSecond: received, retransmits: report.end?.sum_sent?.retransmits ?? 0 };
  } finally {
    await ended(server, 5000);
    made.children.delete(server);
  }
}

async function serverListening(server: ChildProcess, path: IperfPath): Promise<void> {
  let output = "";
  server.stdout!.on("data", (chunk: Buffer) => (output += chunk.toString("utf8")));
  server.stderr!.on("data", (chunk: Buffer) => (output += chunk.toString("utf8")));
  const deadline = Date.now() + 10_000;
  while (!output.includes("Server listening")) {
    if (server.exitCode !== null) throw new Error(`iperf3 server for ${path.label} in ${path.serverNetns} exited ${server.exitCode}: ${output.trim()}`);
    if (Date.now() > deadline) throw new Error(`iperf3 server for ${path.label} in ${path.serverNetns} not listening after 10 s: ${output.trim()}`);
    await sleep(10);
  }
}

/** Waits for a one-off server to end after its test; kills it if it does not. */
async function ended(child: ChildProcess, graceMs: number): Promise<void> {
  const deadline = Date.now() + graceMs;
  while (child.exitCode === null && child.signalCode === null && Date.now() < deadline) await sleep(10);
  if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
}

/** Two bare namespaces joined by one veth pair (MTU 1500), nothing else: the same-node baseline. */
export function rawVethPath(made: Made): IperfPath {
  const client = made.pool.create("bveth");
  const server = made.pool.create("bveth");
  inNetns(client, "ip", ["link", "add", "veth0", "type", "veth", "peer", "name", "veth1", "netns", server.path]);
  inNetns(client, "ip", ["address", "add", "192.0.2.1/30", "dev", "veth0"]);
  inNetns(client, "ip", ["link", "set", "veth0", "up"]);
  inNetns(server, "ip", ["address", "add", "192.0.2.2/30", "dev", "veth1"]);
  inNetns(server, "ip", ["link", "set", "veth1", "up"]);
  return { label: "raw veth", serverNetns: server.path, clientNetns: client.path, address: "192.0.2.2" };
}
