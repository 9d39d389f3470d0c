/**
 * What the parts of `bench/net.ts` share: the record of everything the run made (so that an
 * error or Ctrl-C removes it all), a watch on a namespace's agent routes with the kernel's own
 * timestamps, and sample summaries.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { rmSync } from "node:fs";
import { sleep, stopProcesses, type StartedProcess } from "../src/lab/processes.js";
import { ROUTE_PROTOCOL } from "../src/dataplane/node-network.js";
import { formatPrefix, parsePrefix } from "../src/net/ip.js";
import type { KvStore } from "../src/store/kv.js";
import { downAll } from "../test/support/lab.js";
import { NetnsPool } from "../test/support/netns.js";

/** Everything a run made; `removeMade` takes it all away and is safe to call twice. */
export interface Made {
  readonly pool: NetnsPool;
  /** Agents the bench started detached; each is stopped by its pid only while it has not ended. */
  readonly agents: Set<StartedProcess>;
  /** Children that live while the bench runs: iperf3 servers, route monitors. */
  readonly children: Set<ChildProcess>;
  readonly stores: Set<KvStore>;
  readonly dirs: Set<string>;
}

export function newMade(): Made {
  return { pool: new NetnsPool(), agents: new Set(), children: new Set(), stores: new Set(), dirs: new Set() };
}

/** Labs first (`lab down` stops what runs inside them), then processes, stores, namespaces and files. */
export async function removeMade(made: Made): Promise<void> {
  downAll();
  for (const child of made.children) if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  made.children.clear();
  await stopProcesses([...made.agents].filter((agent) => agent.ended() === undefined).map((agent) => agent.pid));
  made.agents.clear();
  for (const store of made.stores) await store.close().catch(() => undefined);
  made.stores.clear();
  made.pool.removeAll();
  for (const dir of made.dirs) rmSync(dir, { recursive: true, force: true });
  made.dirs.clear();
}

/**
 * Removes what a bench made once, whether it ends or is interrupted (SIGINT, SIGTERM: then it
 * exits 130). `interrupted` tells the parts still running that their failures are not news.
 */
export function removeOnExit(made: Made): { remove: () => Promise<void>; interrupted: () => boolean } {
  let removing: Promise<void> | undefined;
  const remove = () => (removing ??= removeMade(made));
  let interrupted = false;
  const onSignal = (signal: NodeJS.Signals): void => {
    interrupted = true;
    console.log(`\n${signal}: removing what the bench made`);
    void remove().finally(() => process.exit(130));
  };
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);
  return { remove, interrupted: () => interrupted };
}

/** A route of the agent's (protocol 153) added or deleted, at the time `ip -ts monitor` stamped it. */
export interface RouteEvent {
  /** Milliseconds since the epoch, with the monitor's microseconds as a fraction. */
  readonly at: number;
  /** Canonical CIDR. */
  readonly dst: string;
  readonly deleted: boolean;
}

export interface RouteMonitor {
  readonly events: RouteEvent[];
  stop(): void;
}

/**
 * Follows `ip -ts monitor route` inside a namespace. The timestamp is taken when the kernel's
 * notification reaches `ip`, so the time a route appeared does not depend on how often the
 * bench looks.
 */
export async function monitorRoutes(netnsPath: string, made: Made): Promise<RouteMonitor> {
  const child = spawn("nsenter", [`--net=${netnsPath}`, "--", "ip", "-ts", "monitor", "route"], { stdio: ["ignore", "pipe", "ignore"] });
  made.children.add(child);
  const events: RouteEvent[] = [];
  let partial = "";
  child.stdout!.on("data", (chunk: Buffer) => {
    const lines = (partial + chunk.toString("utf8")).split("\n");
    partial = lines.pop()!;
    for (const line of lines) {
      const event = parseMonitorLine(line);
      if (event) events.push(event);
    }
  });
  // `ip monitor` says nothing when it has subscribed: give it a moment before anything changes.
  await sleep(300);
  if (child.exitCode !== null) throw new Error(`ip -ts monitor route in ${netnsPath} exited ${child.exitCode}`);
  return {
    events,
    stop: () => {
      child.kill("SIGTERM");
      made.children.delete(child);
    },
  };
}

/** `[2026-11-27T02:29:14.182705] Deleted 10.244.3.0/24 via 198.18.0.13 dev eth0 proto 153` */
export function parseMonitorLine(line: string): RouteEvent | undefined {
  const match = /^\[(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)\.(\d+)\] (Deleted )?(\S+) (.*)$/.exec(line);
  if (!match || !match[4].includes("/") || !new RegExp(` proto ${ROUTE_PROTOCOL}( |$)`).test(` ${match[5]}`)) return undefined;
  let dst: string;
  try {
    dst = formatPrefix(parsePrefix(match[4]));
  } catch {
    return undefined;
  }
  // No offset in the stamp: it is local time, which Date.parse assumes too.
  return { at: Date.parse(match[1]) + Number(`0.${match[2]}`) * 1000, dst, deleted: match[3] !== undefined };
}

/**
 * Resolves with the time (ms since the epoch) by which every CIDR in `dsts` had been added (or
 * deleted) on every monitor since `since`; rejects after `timeoutMs`, or as soon as `failure`
 * names a reason to stop waiting, naming what was missing.
 */
export async function routesChangedBy(
  monitors: readonly RouteMonitor[],
  dsts: readonly string[],
  change: "added" | "deleted",
  since: number,
  timeoutMs: number,
  failure: () => string | undefined = () => undefined,
): Promise<number> {
  const wanted = dsts.map((dst) => formatPrefix(parsePrefix(dst)));
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const times = monitors.map((monitor) =>
      wanted.map((dst) => monitor.events.find((event) => event.deleted === (change === "deleted") && event.dst === dst && event.at >= since)?.at),
    );
    const missing = times.flatMap((perMonitor, i) => perMonitor.flatMap((at, j) => (at === undefined ? [`${wanted[j]} in namespace ${i + 1}`] : [])));
    if (missing.length === 0) return Math.max(...times.flat().map((at) => at!));
    const reason = failure();
    if (reason) throw new Error(reason);
    if (Date.now() > deadline) throw new Error(`routes not ${change} within ${timeoutMs} ms: ${missing.join(", ")}`);
    await sleep(5);
  }
}

export interface Summary {
  readonly n: number;
  readonly median: number;
  readonly p95: number;
  readonly min: number;
  readonly max: number;
  readonly samples: readonly number[];
}

/** Nearest-rank percentiles; with 10 samples the p95 is the largest. */
export function summarize(samples: readonly number[]): Summary {
  const sorted = [...samples].sort((a, b) => a - b);
  const rank = (q: number): number => sorted[Math.max(0, Math.ceil(q * sorted.length) - 1)] ?? NaN;
  const round = (x: number): number => Math.round(x * 10) / 10;
  return { n: sorted.length, median: round(rank(0.5)), p95: round(rank(0.95)), min: round(sorted[0] ?? NaN), max: round(sorted.at(-1) ?? NaN), samples: samples.map(round) };
}
