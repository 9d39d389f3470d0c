/**
 * Drives the built `dist/trellis` as a runtime would, inside test namespaces, and probes the
 * traffic between pods.
 */
import { execFileSync, spawn, spawnSync, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import type { FaultPoint } from "../../src/podnet/handle.js";
import { execCniPlugin, pluginBaseEnv, type CniCommand, type CniOutcome } from "./cni-exec.js";
import { inNetns, type TestNetns } from "./netns.js";
import { agentFor, pluginPath, VIA_AGENT, withAgentSocket } from "./node-agent.js";

/** A describe title, marked when the suite runs through the native plugin and the agent. */
export function cniSuite(title: string): string {
  return VIA_AGENT ? `${title} [native plugin + agent]` : title;
}

export const TRELLIS = resolve(dirname(fileURLToPath(import.meta.url)), "../../dist/trellis");

export interface PodAttachmentResult {
  interfaces: Array<{ name: string; mac?: string; sandbox?: string }>;
  ips: Array<{ address: string; gateway?: string; interface?: number }>;
  routes?: Array<{ dst: string; gw?: string }>;
}

export function tempDir(label: string): { path: string; remove: () => void } {
  const path = mkdtempSync(join(tmpdir(), `trellis-${label}-`));
  return { path, remove: () => rmSync(path, { recursive: true, force: true }) };
}

/**
 * Runs one verb of the trellis plugin inside `node`; `config` is the plugin's whole stdin.
 * With TRELLIS_CNI_VIA=agent the native plugin runs instead, forwarding to the node's agent.
 */
export async function trellis(command: CniCommand, node: TestNetns, config: object, pod?: { id: string; netns?: string; ifname?: string }): Promise<CniOutcome> {
  return execCniPlugin({
    command,
    plugin: pluginPath(),
    cniPath: "/usr/lib/cni",
    config: withAgentSocket(config, await agentFor(node)),
    node,
    containerId: pod?.id,
    netns: pod?.netns,
    ifname: pod ? (pod.ifname ?? "eth0") : undefined,
    timeoutMs: 60_000,
  });
}

/** ADD that must succeed; returns the parsed result. */
export async function addPod(node: TestNetns, config: object, pod: { id: string; netns: string; ifname?: string }): Promise<PodAttachmentResult> {
  const outcome = await trellis("ADD", node, config, pod);
  if (outcome.code !== 0) throw new Error(`ADD ${pod.id} failed: ${outcome.stdout} ${outcome.stderr}`);
  return JSON.parse(outcome.stdout) as PodAttachmentResult;
}

export function addressesOf(result: PodAttachmentResult): string[] {
  return result.ips.map((ip) => ip.address.split("/")[0]);
}

/** A TCP server in `pod` that answers every connection with the peer address it sees, then closes. */
export function startPeerEcho(pod: TestNetns, port: number): Promise<ChildProcess> {
  const script = `const net=require("net");net.createServer(s=>s.end(s.remoteAddress.replace(/^::ffff:/,""))).listen(${port},"::",()=>console.log("ready"))`;
  const child = spawn("nsenter", [`--net=${pod.path}`, process.execPath, "-e", script], { stdio: ["ignore", "pipe", "inherit"] });
  return new Promise((resolvePromise, reject) => {
    child.once("error", reject);
    child.once("exit", (code) => reject(new Error(`echo server in ${pod.name} exited ${code}`)));
    child.stdout!.once("data", () => resolvePromise(child));
  });
}

/** Connects from `pod` to `address:port` and returns what the server said (the source address it saw). */
export function tcpPeerSeenBy(pod: TestNetns, address: string, port: number): string {
  const script = `const net=require("net");const s=net.connect({host:process.argv[1],port:${port},timeout:5000});let d="";s.on("data",c=>d+=c);s.on("end",()=>{process.stdout.write(d)});s.on("timeout",()=>{console.error("timeout");process.exit(2)});s.on("error",e=>{console.error(e.message);process.exit(1)})`;
  return inNetns(pod, process.execPath, ["-e", script, address]).trim();
}

export function ping(from: TestNetns, address: string): boolean {
  try {
    inNetns(from, "ping", ["-c", "1", "-W", "2", address]);
    return true;
  } catch {
    return false;
  }
}

export interface PodRecord {
  containerId: string;
  ifname: string;
  /** `ready`, `adding` (an ADD running or killed half-way), or `orphan` (leases without a record). */
  state: string;
  hostIfname: string;
  addresses: string[];
}

/** What the plugin's node-local state holds, through `trellis pods`. */
export function recordedPods(dataDir: string, network: string): PodRecord[] {
  const out = execFileSync(TRELLIS, ["pods", "--network", network, "--data-dir", dataDir, "--json"], { encoding: "utf8" });
  return JSON.parse(out) as PodRecord[];
}

/** Trellis host veths present in the node namespace. */
export function hostVeths(node: TestNetns): string[] {
  const links = JSON.parse(inNetns(node, "ip", ["-json", "link", "show"])) as Array<{ ifname: string }>;
  return links.map((link) => link.ifname).filter((name) => /^trv[0-9a-f]{12}$/.test(name)).sort();
}

export interface FaultOutcome {
  /** The signal that ended the plugin (`SIGKILL` when it reached the fault point), or null. */
  signal: NodeJS.Signals | null;
  code: number | null;
  stdout: string;
  stderr: string;
}

/**
 * Runs one verb like `trellis`, with TRELLIS_FAULT_POINT set so the plugin kills itself with
 * SIGKILL on reaching that step. `execCniPlugin` passes no extra environment, hence its own spawn.
 */
export function trellisAtFaultPoint(
  point: FaultPoint, command: CniCommand, node: TestNetns, config: object, pod?: { id: string; netns?: string; ifname?: string },
): Promise<FaultOutcome> {
  const env: Record<string, string> = { ...pluginBaseEnv(), CNI_COMMAND: command, CNI_PATH: "/usr/lib/cni", TRELLIS_FAULT_POINT: point };
  if (pod) {
    env.CNI_CONTAINERID = pod.id;
    if (pod.netns !== undefined) env.CNI_NETNS = pod.netns;
    env.CNI_IFNAME = pod.ifname ?? "eth0";
  }
  // nsenter execs the plugin in place, so the signal that ends the plugin is the one seen here.
  const child = spawn("nsenter", [`--net=${node.path}`, TRELLIS], { env, stdio: ["pipe", "pipe", "pipe"], timeout: 60_000 });
  let stdout = "";
  let stderr = "";
  child.stdout!.on("data", (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr!.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
  child.stdin!.on("error", () => undefined);
  child.stdin!.end(JSON.stringify(config));
  return new Promise((resolvePromise, reject) => {
    child.once("error", reject);
    child.once("close", (code, signal) => resolvePromise({ signal, code, stdout, stderr }));
  });
}

export interface ProbeAnswer {
  readonly ok: boolean;
  readonly server?: string;
  readonly source?: string;
  readonly error?: string;
  readonly ms: number;
}

/** One TCP connection (or UDP datagram) from `from` through `trellis probe connect`: who answered, and the source it saw. */
export function probe(from: TestNetns, address: string, port: number, options: { udp?: boolean; timeoutMs?: number } = {}): ProbeAnswer {
  const args = ["probe", "connect", address, String(port), "--json", "--timeout", String(options.timeoutMs ?? 2000), ...(options.udp ? ["--udp"] : [])];
  const run = spawnSync("nsenter", [`--net=${from.path}`, TRELLIS, ...args], { encoding: "utf8", timeout: 20_000 });
  try {
    const answer = JSON.parse(run.stdout) as Omit<ProbeAnswer, "ok">;
    return { ...answer, ok: answer.server !== undefined };
  } catch {
    return { ok: false, error: `${run.stdout}${run.stderr}`, ms: 0 };
  }
}
