/**
 * A `trellis agent` serving CNI for one test node, so the same CNI tests run through the native
 * plugin and the agent (`TRELLIS_CNI_VIA=agent`) as well as through the standalone plugin.
 *
 * The agent runs in the node's network namespace (and, for a containerd node, in its mount
 * namespace, where the pods' netns paths live) with everything of its own in a temp directory:
 * a SQLite store, a plan, its CNI config, state and socket. Its underlay is a veth pair
 * (`tragent0`, `tragent1`) holding the node addresses; it has no peers and masquerades nothing, so the
 * node's network is what the tests' own configs make of it. Each config a test passes is
 * given `agentSocket` pointing at this agent. The plugin is `dist/trellis-cni` installed as a
 * runtime would (`trellis`, with `trellis-standalone` beside it).
 *
 * The agent is killed when its netns is removed through the NetnsPool, or when the test
 * process exits.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, symlinkSync, closeSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { inNetns, onNetnsRemoved, type TestNetns } from "./netns.js";

const DIST = resolve(dirname(fileURLToPath(import.meta.url)), "../../dist");
export const TRELLIS_STANDALONE = join(DIST, "trellis");
export const TRELLIS_NATIVE = join(DIST, "trellis-cni");

/** Whether this test process runs the CNI tests through the native plugin and an agent per node. */
export const VIA_AGENT = process.env.TRELLIS_CNI_VIA === "agent";

/** The veth pair whose first end holds the test agent's node addresses (the kernel here has no dummy links). */
export const AGENT_UNDERLAY = ["tragent0", "tragent1"];

export const NODE_ADDRESSES = ["198.18.250.1", "fd00:198:250::1"];

/** Where the test agent lets Services have external addresses (`--external-ip-cidrs`). */
export const EXTERNAL_IP_CIDRS = ["198.18.251.0/24", "fd00:198:251::/64"];

export interface NodeAgent {
  readonly socket: string;
  readonly dir: string;
  readonly log: string;
  readonly process: ChildProcess;
  /** SIGKILL, as a crash would; the socket file stays behind. */
  kill(): Promise<void>;
  /** Starts it again on the same state, socket and store (as a restarted daemon would). */
  restart(): Promise<void>;
}

const agents = new Map<string, Promise<NodeAgent>>();

/**
 * Directories a runtime would install plugins in: `trellis` (native) alone, so a call that
 * does not reach the agent fails instead of silently running the standalone plugin; and
 * `trellis` with `trellis-standalone` beside it, as installed on a node.
 */
const binDirs = new Map<boolean, string>();
export function nativePluginDir(options: { standalone: boolean }): string {
  let dir = binDirs.get(options.standalone);
  if (!dir) {
    dir = mkdtempSync(join(tmpdir(), `trellis-bin-${process.pid}-`));
    symlinkSync(TRELLIS_NATIVE, join(dir, "trellis"));
    if (options.standalone) symlinkSync(TRELLIS_STANDALONE, join(dir, "trellis-standalone"));
    binDirs.set(options.standalone, dir);
  }
  return dir;
}

/**
 * The plugin a test execs: the standalone plugin, or, via the agent, the native one with no
 * standalone plugin to fall back to (unless `fallback`, for input that names no agent).
 */
export function pluginPath(options: { fallback?: boolean } = {}): string {
  return VIA_AGENT ? join(nativePluginDir({ standalone: options.fallback ?? false }), "trellis") : TRELLIS_STANDALONE;
}

/** The node's agent when running via the agent (started on first use), else undefined. */
export async function agentFor(node: TestNetns, options: NodeAgentOptions = {}): Promise<NodeAgent | undefined> {
  if (!VIA_AGENT) return undefined;
  return startNodeAgent(node, options);
}

export interface NodeAgentOptions {
  /** Runs it in the mount namespace of this process too (a containerd node's). */
  readonly mountOfPid?: number;
  /** Routing mode; `direct` unless given. */
  readonly mode?: "direct" | "vxlan";
  readonly resyncSeconds?: number;
  /** `--proxy-sync-interval` in seconds; the agent's default (1) unless given. */
  readonly proxySyncInterval?: number;
  /** Resolve once it serves its socket, not waiting for its conflist (which says its routes are in place). */
  readonly untilSocket?: boolean;
}

/** Starts (once per node) an agent in `node`; resolves when it serves CNI and its conflist is written. */
export function startNodeAgent(node: TestNetns, options: NodeAgentOptions = {}): Promise<NodeAgent> {
  let agent = agents.get(node.path);
  if (!agent) {
    agent = launch(node, options);
    agents.set(node.path, agent);
    agent.catch(() => agents.delete(node.path));
  }
  return agent;
}

/** A copy of a plugin config naming the node's agent socket (configs that are not trellis' are left as they are). */
export function withAgentSocket<T>(config: T, agent: NodeAgent | undefined): T {
  if (!agent || typeof config !== "object" || config === null) return config;
  const conf = config as Record<string, unknown>;
  if (conf.type !== "trellis" || "agentSocket" in conf) return config;
  return { ...conf, agentSocket: agent.socket } as T;
}

async function launch(node: TestNetns, options: NodeAgentOptions): Promise<NodeAgent> {
  const dir = mkdtempSync(join(tmpdir(), `trellis-agent-${process.pid}-`));
  dirs.add(dir);
  const socket = join(dir, "cni.sock");
  const log = join(dir, "agent.log");
  const confDir = join(dir, "net.d");
  writeFileSync(join(dir, "plan.yaml"), "podCidrs: [10.250.0.0/16, fd00:250::/48]\nserviceCidrs: [10.251.0.0/16, fd00:251::/108]\n");
  const [underlay, peer] = AGENT_UNDERLAY;
  // A node may disable IPv6 on new interfaces (the hardening tests do): this one needs it.
  inNetns(node, "sh", ["-c", `ip link del ${underlay} 2>/dev/null; ip link add ${underlay} type veth peer name ${peer} && sysctl -qw net.ipv6.conf.${underlay}.disable_ipv6=0`]);
  inNetns(node, "ip", ["address", "add", `${NODE_ADDRESSES[0]}/24`, "dev", underlay]);
  inNetns(node, "ip", ["address", "add", `${NODE_ADDRESSES[1]}/64`, "dev", underlay, "nodad"]);
  inNetns(node, "ip", ["link", "set", peer, "up"]);
  inNetns(node, "ip", ["link", "set", underlay, "up"]);
  const enter = options.mountOfPid === undefined ? [`--net=${node.path}`] : ["-t", String(options.mountOfPid), "-m", "-n"];
  const argv = [
    ...enter, TRELLIS_STANDALONE, "agent",
    "--node-name", "node", "--node-ip", NODE_ADDRESSES.join(","),
    "--store", `sqlite:${join(dir, "cluster.db")}`, "--plan", join(dir, "plan.yaml"),
    "--mode", options.mode ?? "direct", "--no-masquerade", ...(options.resyncSeconds === undefined ? [] : ["--resync-interval", String(options.resyncSeconds)]),
    ...(options.proxySyncInterval === undefined ? [] : ["--proxy-sync-interval", String(options.proxySyncInterval)]),
    "--cni-conf-dir", confDir, "--cni-data-dir", join(dir, "cni"), "--cni-socket", socket,
    // Where the tests' Services may have external and load-balancer addresses.
    "--external-ip-cidrs", EXTERNAL_IP_CIDRS.join(","),
  ];
  let child = start(argv, log);
  await waitUntilServing(child, options.untilSocket ? socket : join(confDir, "10-trellis.conflist"), log);
  const agent: NodeAgent = {
    socket,
    dir,
    log,
    get process() {
      return child;
    },
    kill: () => killAndWait(child),
    restart: async () => {
      await killAndWait(child);
      rmSync(join(confDir, "10-trellis.conflist"), { force: true });
      child = start(argv, log);
      await waitUntilServing(child, join(confDir, "10-trellis.conflist"), log);
    },
  };
  return agent;
}

function start(argv: string[], log: string): ChildProcess {
  mkdirSync(dirname(log), { recursive: true });
  const fd = openSync(log, "a");
  try {
    const env: Record<string, string> = { PATH: process.env.PATH ?? "/usr/sbin:/usr/bin:/sbin:/bin" };
    const child = spawn("nsenter", argv, { stdio: ["ignore", fd, fd], env });
    live.add(child);
    child.once("exit", () => live.delete(child));
    return child;
  } finally {
    closeSync(fd);
  }
}

async function waitUntilServing(child: ChildProcess, file: string, log: string): Promise<void> {
  const deadline = Date.now() + 30_000;
  while (!existsSync(file)) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`the test agent ended (${child.exitCode ?? child.signalCode}): ${readFileSync(log, "utf8").slice(-2000)}`);
    if (Date.now() > deadline) throw new Error(`the test agent made no ${file} within 30 s: ${readFileSync(log, "utf8").slice(-2000)}`);
    await new Promise((resolvePromise) => setTimeout(resolvePromise, 25));
  }
}

function killAndWait(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolvePromise) => {
    child.once("exit", () => resolvePromise());
    child.kill("SIGKILL");
  });
}

const live = new Set<ChildProcess>();
const dirs = new Set<string>();

onNetnsRemoved((ns) => {
  const agent = agents.get(ns.path);
  if (!agent) return;
  agents.delete(ns.path);
  void agent.then(
    (started) => {
      started.process.kill("SIGKILL");
      started.process.once("exit", () => {
        rmSync(started.dir, { recursive: true, force: true });
        dirs.delete(started.dir);
      });
    },
    () => undefined,
  );
});

process.on("exit", () => {
  for (const child of live) child.kill("SIGKILL");
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
  for (const dir of binDirs.values()) rmSync(dir, { recursive: true, force: true });
});
