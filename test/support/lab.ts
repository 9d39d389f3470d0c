/**
 * Drives `trellis lab` from tests: unique names per test process, the status and check JSON,
 * commands inside lab namespaces, and every lab taken down after the test file.
 */
import { spawnSync, type SpawnSyncReturns } from "node:child_process";
import { readFileSync } from "node:fs";
import { TRELLIS } from "./trellis-cni.js";

export interface LabStatus {
  name: string;
  store: string;
  planFile: string;
  nodes: Array<{ name: string; netns: string; addresses: string[]; podCidrs: string[]; agentPid: number; agentRunning: boolean; agentLog: string; agentArgv: string[] }>;
  pods: Array<{ name: string; node: string; netns: string; addresses: string[] }>;
  external: { netns: string; addresses: string[] };
  etcd?: { pid: number; argv: string[]; log: string; dataDir: string };
}

export interface LabCheck {
  ok: boolean;
  total: number;
  probes: Array<{ from: string; to: string; kind: string; ok: boolean; fromNode?: string; toNode?: string; error?: string }>;
}

export function runTrellis(args: readonly string[], timeout = 180_000, input?: string): SpawnSyncReturns<string> {
  return spawnSync(TRELLIS, args, { encoding: "utf8", timeout, input });
}

/** `trellis apply` (or delete) of one object to a lab's store; fails the test when refused. */
export function applyToStore(store: string, manifest: object, verb: "apply" | "delete" = "apply"): void {
  const run = runTrellis([verb, "-f", "-", "--store", store], 60_000, JSON.stringify(manifest));
  if (run.status !== 0) throw new Error(`trellis ${verb} failed: ${run.stderr}`);
}

/** Labs made by this test process, so `downAll` removes exactly them. */
const made = new Set<string>();

export function labName(tag: string): string {
  const name = `lt${process.pid}${tag}`;
  made.add(name);
  return name;
}

export function downAll(): void {
  for (const name of made) runTrellis(["lab", "down", "--name", name], 120_000);
}

export function labStatus(name: string): LabStatus {
  const run = runTrellis(["lab", "status", "--name", name, "--json"]);
  if (run.status !== 0) throw new Error(`lab status failed: ${run.stderr}`);
  return JSON.parse(run.stdout) as LabStatus;
}

export function labCheck(name: string): LabCheck {
  const run = runTrellis(["lab", "check", "--name", name, "--json"]);
  return JSON.parse(run.stdout) as LabCheck;
}

/** Runs a command in a lab member's namespace (node1, node1-pod0, external, underlay); throws on failure. */
export function labExec(name: string, member: string, command: readonly string[]): string {
  const run = runTrellis(["lab", "exec", "--name", name, member, "--", ...command], 60_000);
  if (run.status !== 0) throw new Error(`${command.join(" ")} in ${member} failed (${run.status}): ${run.stderr}`);
  return run.stdout;
}

/** The routes the agent of `node` owns (protocol 153), both families, as `DST via GW dev DEV`. */
export function agentRoutes(name: string, node: string): string[] {
  const routes = JSON.parse(labExec(name, node, ["ip", "-json", "route", "show", "table", "all", "proto", "153"])) as Array<{ dst: string; gateway: string; dev: string }>;
  return routes.map((route) => `${route.dst} via ${route.gateway} dev ${route.dev}`).sort();
}

/** The agent's JSON log entries with this message. */
export function agentLogEntries(logFile: string, msg: string): Array<Record<string, unknown>> {
  return readFileSync(logFile, "utf8")
    .split("\n")
    .filter((line) => line.startsWith("{"))
    .map((line) => JSON.parse(line) as Record<string, unknown>)
    .filter((entry) => entry.msg === msg);
}

/** Polls `condition` every 50 ms until it holds or `timeoutMs` passes; resolves with the time it took. */
export async function waitFor(what: string, condition: () => boolean, timeoutMs: number): Promise<number> {
  const started = Date.now();
  while (!condition()) {
    if (Date.now() - started > timeoutMs) throw new Error(`${what}: not within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return Date.now() - started;
}
