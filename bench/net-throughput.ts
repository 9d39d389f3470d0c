/**
 * TCP throughput with iperf3, IPv4: each path under test beside its baseline in the same run.
 * Every path is measured once per round, in an order that rotates round by round so that
 * machine noise lands on all of them alike; a path that serves as subject or baseline of more
 * than one pair is measured once. Every server and client runs inside a namespace the lab or
 * the bench made; nothing leaves them.
 */
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { promisify } from "node:util";
import { sleep } from "../src/lab/processes.js";
import { inNetns, type TestNetns } from "../test/support/netns.js";
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
  /** Subject over baseline within each round: how much the ratio itself moves with the machine's noise. */
  readonly roundRatios: readonly number[];
  readonly goal?: number;
}

export async function measureThroughput(pairs: readonly ThroughputPair[], settings: { seconds: number; repeats: number }, made: Made, say: (line: string) => void): Promise<PairFigures[]> {
  const paths = [...new Set(pairs.flatMap((pair) => [pair.baseline, pair.subject]))];
  const runs = new Map<IperfPath, IperfRun[]>(paths.map((path) => [path, []]));
  for (let round = 0; round < settings.repeats; round++) {
    const order = [...paths.slice(round % paths.length), ...paths.slice(0, round % paths.length)];
    for (const path of order) {
      const result = await runIperf(path, settings.seconds, made);
      runs.get(path)!.push(result);
      say(`  round ${round + 1}/${settings.repeats}: ${path.label} ${(result.bitsPerSecond / 1e9).toFixed(2)} Gbit/s`);
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
    const ratio = (a: number, b: number) => Math.round((a / b) * 1000) / 1000;
    const roundRatios = runs.get(pair.subject)!.map((run, round) => ratio(run.bitsPerSecond, runs.get(pair.baseline)![round].bitsPerSecond));
    return { name: pair.name, subject, baseline, ratio: ratio(subject.gbps.median, baseline.gbps.median), roundRatios, goal: pair.goal };
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
  inNetns(client, "ip", ["link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", server.path]);
  addressAndUp(client, "192.0.2.1/30");
  addressAndUp(server, "192.0.2.2/30");
  return { label: "raw veth", serverNetns: server.path, clientNetns: client.path, address: "192.0.2.2" };
}

/**
 * Two bare namespaces, each with a veth into a plain bridge in a third one, with the kernel's
 * defaults (br_netfilter included) and no rules: the same topology as two pods on one node,
 * without Trellis. It tells what the topology costs from what Trellis adds to it.
 */
export function bareBridgePath(made: Made): IperfPath {
  const bridge = made.pool.create("bbridge");
  inNetns(bridge, "ip", ["link", "add", "br0", "type", "bridge"]);
  inNetns(bridge, "ip", ["link", "set", "br0", "up"]);
  const [client, server] = [1, 2].map((host) => {
    const ns = made.pool.create("bbridge");
    inNetns(ns, "ip", ["link", "add", "eth0", "type", "veth", "peer", "name", `port${host}`, "netns", bridge.path]);
    inNetns(bridge, "ip", ["link", "set", `port${host}`, "master", "br0", "up"]);
    addressAndUp(ns, `192.0.2.${host}/24`);
    return ns;
  });
  return { label: "bare bridge", serverNetns: server.path, clientNetns: client.path, address: "192.0.2.2" };
}

function addressAndUp(ns: TestNetns, address: string): void {
  inNetns(ns, "ip", ["address", "add", address, "dev", "eth0"]);
  inNetns(ns, "ip", ["link", "set", "eth0", "up"]);
}
