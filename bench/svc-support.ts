/**
 * What the Service benchmarks share: TCP connect times from a namespace, the kernel's rule
 * notifications (bench/nft-events.c), a process's memory, a metric's value, sample summaries.
 */
import { execFile, execFileSync, spawn } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { sleep } from "../src/lab/processes.js";
import type { Made } from "./net-support.js";

const execFileAsync = promisify(execFile);

/** Connects made before the measured ones, to warm caches and the conntrack path. */
export const WARMUP_CONNECTS = 100;

/** A namespace to run in: its name (for messages) and path. */
export interface Netns {
  readonly name: string;
  readonly path: string;
}

export interface LatencyStats {
  n: number;
  p50: number;
  p95: number;
  p99: number;
  mean: number;
  min: number;
  max: number;
}


export interface Memory {
  rssMiB: number;
  peakRssMiB: number;
  anonMiB: number;
  fileMiB: number;
}


export interface Target {
  host: string;
  port: number;
}


/**
 * Sequential TCP connects from `from`, `connects` to each target after a warm-up, alternating
 * which target goes first; µs from connect() to the handshake done, per target. Each connection
 * is reset at once, so no TIME_WAIT piles up on either side.
 */
export async function connectTimes(from: Netns, targets: readonly Target[], connects: number, timeoutMs: number): Promise<number[][]> {
  const script = `
const net = require("net");
const { targets, connects, warmup, timeoutMs } = JSON.parse(process.argv[1]);
const once = (t) => new Promise((resolve, reject) => {
  const started = process.hrtime.bigint();
  const socket = net.connect({ host: t.host, port: t.port });
  const timer = setTimeout(() => { socket.destroy(); reject(new Error(t.host + ":" + t.port + ": no answer within " + timeoutMs + " ms")); }, timeoutMs);
  socket.once("connect", () => { const us = Number(process.hrtime.bigint() - started) / 1000; clearTimeout(timer); socket.resetAndDestroy(); resolve(us); });
  socket.on("error", (e) => { clearTimeout(timer); reject(new Error(t.host + ":" + t.port + ": " + e.message)); });
});
(async () => {
  const samples = targets.map(() => []);
  for (let i = 0; i < warmup + connects; i++) {
    const order = i % 2 ? [...targets.keys()].reverse() : [...targets.keys()];
    for (const k of order) { const us = await once(targets[k]); if (i >= warmup) samples[k].push(Math.round(us * 10) / 10); }
  }
  process.stdout.write(JSON.stringify(samples));
})().catch((e) => { console.error(e.message); process.exit(1); });`;
  const warmup = connects > 1 ? WARMUP_CONNECTS : 0;
  try {
    const { stdout } = await execFileAsync("nsenter", [`--net=${from.path}`, process.execPath, "-e", script, JSON.stringify({ targets, connects, warmup, timeoutMs })], {
      maxBuffer: 64 * 1024 * 1024,
      timeout: 600_000,
    });
    return JSON.parse(stdout) as number[][];
  } catch (error) {
    const { stderr = "" } = error as { stderr?: string };
    throw new Error(`connects from ${from.name} failed: ${stderr.trim() || (error as Error).message}`);
  }
}


export interface RuleEvents {
  /** Where the rules reported so far end. */
  mark(): number;
  /** Resolves with when (ms since the epoch) the first rule after `from` matching `pattern` came. */
  until(pattern: RegExp, from: number, timeoutMs: number, failure: () => string | undefined): Promise<number>;
  stop(): void;
}

/**
 * bench/nft-events.c in the node: each rule the kernel reports added, as the hex of its netlink
 * message, stamped on arrival (the kernel reports it once the transaction is committed). `nft
 * monitor` would print rules as text, but reads the whole ruleset first: minutes of a CPU at
 * 10,000 Services.
 */
export async function ruleEvents(node: Netns, dir: string, made: Made): Promise<RuleEvents> {
  const program = join(dir, "nft-events");
  execFileSync(process.env.CC ?? "cc", ["-O2", "-Wall", "-o", program, join(dirname(fileURLToPath(import.meta.url)), "nft-events.c")], { stdio: "inherit" });
  const child = spawn("nsenter", [`--net=${node.path}`, program], { stdio: ["ignore", "pipe", "inherit"] });
  made.children.add(child);
  const lines: Array<{ at: number; text: string }> = [];
  let partial = "";
  child.stdout!.on("data", (chunk: Buffer) => {
    const at = performance.timeOrigin + performance.now();
    const parts = (partial + chunk.toString("utf8")).split("\n");
    partial = parts.pop()!;
    for (const text of parts) lines.push({ at, text });
  });
  const deadline = Date.now() + 10_000;
  while (!lines.some((line) => line.text === "ready")) {
    if (child.exitCode !== null) throw new Error(`nft-events in ${node.name} exited ${child.exitCode}`);
    if (Date.now() > deadline) throw new Error(`nft-events in ${node.name} did not start within 10 s`);
    await sleep(10);
  }
  return {
    mark: () => lines.length,
    async until(pattern, from, timeoutMs, failure) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const hit = lines.slice(from).find((line) => pattern.test(line.text));
        if (hit) return hit.at;
        const lost = lines.slice(from).find((line) => line.text.startsWith("lost"));
        if (lost) throw new Error(`nft-events ${lost.text}: the kernel dropped events`);
        from = lines.length;
        const reason = failure();
        if (reason) throw new Error(reason);
        if (Date.now() > deadline) throw new Error(`the kernel reported no rule matching ${pattern} within ${timeoutMs} ms`);
        // Lines are stamped as they arrive: how often this looks does not change the figure.
        await sleep(5);
      }
    },
    stop() {
      child.kill("SIGTERM");
      made.children.delete(child);
    },
  };
}

/** A rule's netlink message (hex) that DNATs to `address`:`port`: the address, then the port, each at a byte boundary. */
export function dnatRulePattern(address: string, port: number): RegExp {
  const hex = (bytes: number[]) => bytes.map((byte) => byte.toString(16).padStart(2, "0")).join("");
  return new RegExp(`^(?:..)*?${hex(address.split(".").map(Number))}(?:..)*?${hex([port >> 8, port & 255])}`);
}


/** A sample's value in Prometheus text; `name` may carry labels (`name{label="value"}`). */
export function metricValue(text: string, name: string): number {
  const escaped = name.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  return Number(new RegExp(`^${escaped} (\\S+)$`, "m").exec(text)?.[1] ?? NaN);
}


/**
 * Drops the page cache's unmapped pages of `path` (coreutils dd's documented whole-file
 * `iflag=nocache count=0`). A file just written, an executable the build made, sits in the cache
 * in large folios, and a process that maps it is charged whole folios as it faults (74 MiB of
 * file-backed RSS for the Trellis executable as built, 45 MiB once read back from disk): each
 * proxy starts from its executable read as a deployed one is.
 */
export function dropCachedPages(path: string): void {
  execFileSync("dd", [`if=${path}`, "iflag=nocache", "count=0", "status=none"]);
}

export function residentMemory(pid: number): Memory {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const mib = (field: string) => Math.round(Number(new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(status)?.[1] ?? NaN) / 102.4) / 10;
  return { rssMiB: mib("VmRSS"), peakRssMiB: mib("VmHWM"), anonMiB: mib("RssAnon"), fileMiB: mib("RssFile") };
}

/**
 * CPU seconds used so far by a process and every process below it (user and system, the
 * children it reaped included): the agent, its spawn helper and the commands they ran.
 */
export function processTreeCpuSeconds(pid: number): number {
  const ticks = 100; // USER_HZ, which /proc/PID/stat counts in on Linux
  const children = new Map<number, number[]>();
  const own = new Map<number, number>();
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    let stat: string;
    try {
      stat = readFileSync(`/proc/${entry}/stat`, "utf8");
    } catch {
      continue; // ended meanwhile
    }
    // The command name is in parentheses and may hold spaces: the fields follow its last ")".
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    const ppid = Number(fields[1]);
    const siblings = children.get(ppid);
    if (siblings) siblings.push(Number(entry));
    else children.set(ppid, [Number(entry)]);
    own.set(Number(entry), Number(fields[11]) + Number(fields[12]) + Number(fields[13]) + Number(fields[14]));
  }
  let total = 0;
  const pending = [pid];
  while (pending.length) {
    const next = pending.pop()!;
    total += own.get(next) ?? 0;
    pending.push(...(children.get(next) ?? []));
  }
  return total / ticks;
}

/** Nearest-rank percentiles. */
export function latency(samples: readonly number[]): LatencyStats {
  const sorted = [...samples].sort((a, b) => a - b);
  const at = (q: number): number => sorted[Math.max(0, Math.ceil(q * sorted.length) - 1)] ?? NaN;
  return {
    n: sorted.length,
    p50: round(at(0.5), 1),
    p95: round(at(0.95), 1),
    p99: round(at(0.99), 1),
    mean: round(sum(sorted) / sorted.length, 1),
    min: round(sorted[0] ?? NaN, 1),
    max: round(sorted.at(-1) ?? NaN, 1),
  };
}

export function sum(values: readonly number[]): number {
  return values.reduce((total, x) => total + x, 0);
}

export function round(x: number, digits: number): number {
  const scale = 10 ** digits;
  return Math.round(x * scale) / scale;
}

/** GET `url` from inside the namespace at `node` (a metrics endpoint on its loopback); resolves with the body. */
export async function metricsOf(node: Netns, url: string): Promise<string> {
  const script = `require("http").get(process.argv[1],(res)=>{let d="";res.on("data",(c)=>d+=c);res.on("end",()=>process.stdout.write(d))}).on("error",(e)=>{console.error(e.message);process.exit(1)})`;
  const { stdout } = await execFileAsync("nsenter", [`--net=${node.path}`, process.execPath, "-e", script, url], { maxBuffer: 16 * 1024 * 1024 });
  return stdout;
}
