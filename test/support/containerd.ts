/**
 * containerd as a real CNI client for tests. A throw-away network namespace plays the node;
 * containerd runs inside it with its own root, state, socket and config, and `ctr run --cni`
 * attaches busybox containers through whatever plugins the test installs.
 *
 * `ctr` reads /etc/cni/net.d and /opt/cni/bin and caches results in /var/lib/cni, with no
 * flag to move them, and it runs the plugins from the CLIENT process. containerd's shims put
 * their sockets, FIFOs and runc state under /run/containerd, also fixed. So one long-lived
 * "holder" process is started in a private mount namespace (`unshare -m --propagation private`)
 * inside the node netns; it mounts the test's directories over those paths (overlaying a
 * parent with a test-owned upper dir where a path does not exist on the machine, so nothing
 * is created outside the test directory) and then waits. containerd and every `ctr` command
 * join the holder's mount and network namespaces with `nsenter -t HOLDER -m -n`, so daemon,
 * shims, CLI and plugins all see the same test directories and the machine sees none of it.
 *
 * Containers run with `ctr run --cni --rm` in the foreground, not `-d`: a detached `ctr run`
 * never calls CNI DEL (ctr 1.6 only removes the network when the foreground task exits). The
 * foreground client stays alive as the container's runtime, and `removeContainer` kills the
 * task so that this same client performs DEL, exactly as it performed ADD.
 */
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import {
  chmodSync,
  closeSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  rmdirSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import type { CniConfList } from "./cni-exec.js";
import { processAlive, type NetnsPool, type TestNetns } from "./netns.js";

const DIR_PREFIX = "trellis-ctrd-";
const CGROUP_ROOT = "/sys/fs/cgroup";
const READY_MARKER = "trellis-container-ready";
/** Containers end themselves after this long, in case every cleanup path was missed. */
const CONTAINER_LIFETIME_S = 3600;

export interface ContainerdNode {
  readonly netns: TestNetns;
  /** Everything this node writes lives here; removed by `stopContainerdNode`. */
  readonly dir: string;
  readonly socket: string;
  /** The `ctr -n` namespace; also the cgroup parent of every container of this node. */
  readonly ctrNamespace: string;
  /** Host paths that the node's daemon, CLI and plugins see as /etc/cni/net.d, /opt/cni/bin, /var/lib/cni. */
  readonly cniConfDir: string;
  readonly cniBinDir: string;
  readonly cniCacheDir: string;
  readonly rootfs: string;
  readonly containerdLog: string;
  readonly holder: ChildProcess;
  readonly containerd: ChildProcess;
  readonly containers: Map<string, Container>;
  readonly state: { counter: number; runQueue: Promise<unknown> };
}

export interface Container {
  /** Unique on the machine: runc state and cgroups are keyed by it. */
  readonly id: string;
  readonly name: string;
  /** CNI_CONTAINERID as the plugins see it: ctr passes `<namespace>-<id>`. */
  readonly cniContainerId: string;
  readonly network: string;
  /** The foreground `ctr run` client: it did CNI ADD and does CNI DEL when the task ends. */
  readonly client: ChildProcess;
  readonly clientExit: Promise<ProcessExit>;
  readonly clientStderr: string[];
}

export interface ProcessExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface ExecResult {
  code: number;
  stdout: string;
  stderr: string;
}

export interface StartOptions {
  /** Shows up in the namespace and directory names. */
  role?: string;
}

let nodeCounter = 0;

/** Makes the node netns, the busybox rootfs and the mount namespace, and starts containerd. */
export async function startContainerdNode(pool: NetnsPool, options: StartOptions = {}): Promise<ContainerdNode> {
  const role = options.role ?? "ctrd";
  const dir = mkdtempSync(join(tmpdir(), `${DIR_PREFIX}${process.pid}-`));
  const netns = pool.create(role);
  const ctrNamespace = `trt${process.pid}-${role}${nodeCounter++}`;
  const partial: { holder?: ChildProcess; containerd?: ChildProcess } = {};
  try {
    const cniConfDir = makeDir(dir, "cni/net.d");
    const cniBinDir = makeDir(dir, "cni/bin");
    const cniCacheDir = makeDir(dir, "cni/cache");
    const runDir = makeDir(dir, "run-containerd");
    const rootfs = buildBusyboxRootfs(join(dir, "rootfs"));
    const holder = await startMountHolder(dir, netns, [
      { target: "/etc/cni/net.d", source: cniConfDir },
      { target: "/opt/cni/bin", source: cniBinDir },
      { target: "/var/lib/cni", source: cniCacheDir },
      { target: "/run/containerd", source: runDir },
    ]);
    partial.holder = holder;
    const socket = join(dir, "containerd.sock");
    const containerdLog = join(dir, "containerd.log");
    const configPath = join(dir, "containerd.toml");
    writeFileSync(configPath, containerdConfig(dir, socket));
    const containerd = startContainerd(holder, configPath, containerdLog);
    partial.containerd = containerd;
    const node: ContainerdNode = {
      netns,
      dir,
      socket,
      ctrNamespace,
      cniConfDir,
      cniBinDir,
      cniCacheDir,
      rootfs,
      containerdLog,
      holder,
      containerd,
      containers: new Map(),
      state: { counter: 0, runQueue: Promise.resolve() },
    };
    await waitForContainerd(node);
    return node;
  } catch (error) {
    await teardown({ dir, netns, ctrNamespace, holder: partial.holder, containerd: partial.containerd }, pool);
    throw error;
  }
}

/** Copies a plugin executable into the node's /opt/cni/bin under the name `type`. */
export function installCniPlugin(node: ContainerdNode, type: string, source: string): void {
  const target = join(node.cniBinDir, type);
  copyFileSync(source, target);
  chmodSync(target, 0o755);
}

/**
 * Starts a busybox container attached through `network` (written as the node's only
 * conflist) and resolves once CNI ADD has succeeded and the container runs. A failed ADD
 * rejects with ctr's message, after ctr has called DEL and removed the container.
 */
export function runContainer(node: ContainerdNode, name: string, network: CniConfList): Promise<Container> {
  if (!/^[A-Za-z0-9][A-Za-z0-9_.-]*$/.test(name)) throw new Error(`container name ${JSON.stringify(name)} is not a valid container id`);
  const id = `${name}-${process.pid}-${node.state.counter++}`;
  // ctr loads the conflist before it creates the task, so the next container may change the
  // file as soon as this one is up; until then the starts are serialized.
  const started = node.state.runQueue.then(() => startContainer(node, id, name, network));
  node.state.runQueue = started.catch(() => undefined);
  return started;
}

/** Runs `argv` (absolute path: busybox rootfs) in the container; by default a non-zero exit throws. */
export async function execInContainer(
  node: ContainerdNode,
  container: Container,
  argv: string[],
  options: { check?: boolean; timeoutMs?: number } = {},
): Promise<ExecResult> {
  const execId = `x${node.state.counter++}`;
  const result = await ctr(node, ["task", "exec", "--exec-id", execId, container.id, ...argv], options.timeoutMs);
  if ((options.check ?? true) && result.code !== 0) {
    throw new Error(`${argv.join(" ")} in container ${container.id} exited ${result.code}: ${result.stdout}${result.stderr}`.trim());
  }
  return result;
}

/** The container's global addresses, from `/bin/ip -o addr show dev IFNAME` inside it. */
export async function containerAddresses(node: ContainerdNode, container: Container, ifname = "eth0"): Promise<string[]> {
  const { stdout } = await execInContainer(node, container, ["/bin/ip", "-o", "addr", "show", "dev", ifname]);
  const addresses: string[] = [];
  for (const line of stdout.split("\n")) {
    const match = /\sinet6?\s+(\S+)\s.*scope global/.exec(line);
    if (match?.[1]) addresses.push(match[1]);
  }
  return addresses;
}

/**
 * Stops the container so that its `ctr run` client calls CNI DEL and deletes it. Throws if
 * the client does not finish or reports a failed DEL.
 */
export async function removeContainer(node: ContainerdNode, container: Container, timeoutMs = 30_000): Promise<void> {
  node.containers.delete(container.id);
  const kill = await ctr(node, ["task", "kill", "--signal", "SIGKILL", container.id]);
  const exit = await withTimeout(container.clientExit, timeoutMs);
  if (exit === undefined) {
    killPid(container.client.pid);
    await forceDeleteContainer(node, container.id);
    throw new Error(`ctr run for container ${container.id} did not finish within ${timeoutMs} ms after its task was killed (kill: ${kill.stderr.trim()})`);
  }
  const errors = container.clientStderr.join("").split("\n").filter((line) => line.includes("level=error"));
  if (errors.length > 0) {
    throw new Error(`ctr run for container ${container.id} reported errors while removing it (CNI DEL): ${errors.join("; ")}`);
  }
}

/**
 * Stops containerd and removes everything the node made: containers, processes, cgroups,
 * runc state, the mount namespace, the node netns and the directory. Attempts every step;
 * throws one error listing what failed.
 */
export async function stopContainerdNode(node: ContainerdNode, pool: NetnsPool): Promise<void> {
  const problems: string[] = [];
  for (const container of [...node.containers.values()]) {
    try {
      await removeContainer(node, container);
    } catch (error) {
      problems.push(error instanceof Error ? error.message : String(error));
    }
  }
  problems.push(...(await teardown(node, pool)));
  if (problems.length > 0) throw new Error(`stopping containerd node ${node.ctrNamespace}: ${problems.join("; ")}`);
}

/** Cleans up after test processes that died without stopping their nodes. */
export function sweepStaleContainerdNodes(): void {
  for (const entry of safeReaddir(tmpdir())) {
    const match = new RegExp(`^${DIR_PREFIX}(\\d+)-`).exec(entry);
    if (!match || processAlive(Number(match[1]))) continue;
    const dir = join(tmpdir(), entry);
    killProcessesMentioning(dir);
    for (const cgroup of ownCgroupDirs(`trt${match[1]}-`)) killCgroupProcesses(cgroup);
    for (const cgroup of ownCgroupDirs(`trt${match[1]}-`)) removeCgroupTree(cgroup);
    rmSync(dir, { recursive: true, force: true });
  }
}

async function startContainer(node: ContainerdNode, id: string, name: string, network: CniConfList): Promise<Container> {
  for (const file of readdirSync(node.cniConfDir)) rmSync(join(node.cniConfDir, file));
  writeFileSync(join(node.cniConfDir, `10-${network.name}.conflist`), JSON.stringify(network, null, 2));
  const client = spawn(
    "nsenter",
    nodeArgs(node, [
      "run", "--cni", "--rm", "--rootfs", node.rootfs, id,
      "/bin/sh", "-c", `echo ${READY_MARKER}; exec /bin/sleep ${CONTAINER_LIFETIME_S}`,
    ]),
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  const clientStderr: string[] = [];
  let stdout = "";
  client.stderr?.on("data", (chunk: Buffer) => clientStderr.push(chunk.toString("utf8")));
  const clientExit = new Promise<ProcessExit>((resolve) => client.on("close", (code, signal) => resolve({ code, signal })));
  const container: Container = { id, name, cniContainerId: `${node.ctrNamespace}-${id}`, network: network.name, client, clientExit, clientStderr };
  const ready = new Promise<boolean>((resolve) => {
    client.stdout?.on("data", (chunk: Buffer) => {
      stdout += chunk.toString("utf8");
      if (stdout.includes(READY_MARKER)) resolve(true);
    });
    void clientExit.then(() => resolve(false));
    client.on("error", () => resolve(false));
  });
  node.containers.set(id, container);
  const outcome = await withTimeout(ready, 60_000);
  if (outcome === true) return container;
  node.containers.delete(id);
  if (outcome === undefined) {
    killPid(client.pid);
    await forceDeleteContainer(node, id);
    throw new Error(`container ${id} on network ${network.name} did not start within 60 s: ${clientStderr.join("").trim()}`);
  }
  const exit = await clientExit;
  throw new Error(`container ${id} on network ${network.name} failed to start (ctr exit ${exit.code ?? exit.signal}): ${clientStderr.join("").trim()}`);
}

interface BindMount {
  /** Path as the node's processes see it. */
  target: string;
  /** Test directory mounted there. */
  source: string;
}

/**
 * Starts the process that owns the node's private mount namespace. Targets that do not exist
 * on the machine get a mount point through an overlay on their nearest existing parent, whose
 * upper dir is in the test directory: the machine's own tree is never written.
 */
async function startMountHolder(dir: string, netns: TestNetns, binds: BindMount[]): Promise<ChildProcess> {
  const overlays = new Set<string>();
  for (const bind of binds) {
    if (existsSync(bind.target)) continue;
    const parent = nearestExistingParent(bind.target);
    if (parent === "/") throw new Error(`cannot make mount point ${bind.target}: no parent directory of it exists to overlay`);
    overlays.add(parent);
  }
  // `-n` everywhere: libmount would otherwise keep its utab under the machine's /run/mount.
  const lines = [
    "set -eu",
    // The new namespace starts with copies of every /run/netns mount, which would keep other
    // tests' namespaces alive as long as this node runs.
    "if grep -q ' /run/netns ' /proc/self/mountinfo; then umount -n -R -l /run/netns; fi",
  ];
  [...overlays].sort().forEach((parent, index) => {
    const upper = makeDir(dir, `overlay/${index}/upper`);
    const work = makeDir(dir, `overlay/${index}/work`);
    lines.push(`mount -n -t overlay trellis-test -o lowerdir=${parent},upperdir=${upper},workdir=${work} ${parent}`);
  });
  for (const bind of binds) lines.push(`mkdir -p ${bind.target}`, `mount -n --bind ${bind.source} ${bind.target}`);
  // Waiting on stdin ties the holder to this test process: when the test dies the pipe closes.
  lines.push("echo ready", "read -r _ || true");
  const script = join(dir, "mount-holder.sh");
  writeFileSync(script, `${lines.join("\n")}\n`);
  const holder = spawn("nsenter", [`--net=${netns.path}`, "unshare", "--mount", "--propagation", "private", "sh", script], {
    stdio: ["pipe", "pipe", "pipe"],
  });
  let stderr = "";
  holder.stderr?.on("data", (chunk: Buffer) => (stderr += chunk.toString("utf8")));
  const ready = await withTimeout(
    new Promise<boolean>((resolve) => {
      holder.stdout?.on("data", (chunk: Buffer) => chunk.toString("utf8").includes("ready") && resolve(true));
      holder.on("close", () => resolve(false));
      holder.on("error", () => resolve(false));
    }),
    10_000,
  );
  if (ready !== true) {
    killPid(holder.pid);
    throw new Error(`mount namespace for containerd node in ${netns.name} did not come up: ${stderr.trim() || "timed out"}`);
  }
  return holder;
}

function containerdConfig(dir: string, socket: string): string {
  // Only what `ctr run --rootfs` needs: no CRI, no image snapshotters besides the defaults,
  // and no `opt` plugin (it would create /opt/containerd).
  const disabled = [
    "io.containerd.grpc.v1.cri",
    "io.containerd.internal.v1.opt",
    "io.containerd.internal.v1.tracing",
    "io.containerd.tracing.processor.v1.otlp",
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
  ];
  return [
    "version = 2",
    `root = ${JSON.stringify(join(dir, "root"))}`,
    `state = ${JSON.stringify(join(dir, "state"))}`,
    `disabled_plugins = ${JSON.stringify(disabled)}`,
    "[grpc]",
    `  address = ${JSON.stringify(socket)}`,
    "[ttrpc]",
    `  address = ${JSON.stringify(`${socket}.ttrpc`)}`,
    "",
  ].join("\n");
}

function startContainerd(holder: ChildProcess, configPath: string, logPath: string): ChildProcess {
  const log = openSync(logPath, "a");
  try {
    return spawn("nsenter", ["-t", String(holder.pid), "-m", "-n", "containerd", "--config", configPath], {
      stdio: ["ignore", log, log],
    });
  } finally {
    closeSync(log);
  }
}

async function waitForContainerd(node: ContainerdNode): Promise<void> {
  const deadline = Date.now() + 15_000;
  let last = "";
  while (Date.now() < deadline) {
    if (node.containerd.exitCode !== null || node.containerd.signalCode !== null) break;
    if (existsSync(node.socket)) {
      const version = await ctr(node, ["version"], 5_000);
      if (version.code === 0) return;
      last = version.stderr;
    }
    await sleep(50);
  }
  throw new Error(`containerd for node ${node.ctrNamespace} did not answer on ${node.socket}: ${last.trim()} ${tailOf(node.containerdLog)}`.trim());
}

/** `nsenter` arguments that run `ctr ARGS` in the node's mount and network namespaces. */
function nodeArgs(node: Pick<ContainerdNode, "holder" | "socket" | "ctrNamespace">, ctrArgs: string[]): string[] {
  return ["-t", String(node.holder.pid), "-m", "-n", "ctr", "-a", node.socket, "-n", node.ctrNamespace, ...ctrArgs];
}

function ctr(node: Pick<ContainerdNode, "holder" | "socket" | "ctrNamespace">, args: string[], timeoutMs = 30_000): Promise<ExecResult> {
  return runCommand("nsenter", nodeArgs(node, args), timeoutMs);
}

async function forceDeleteContainer(node: Pick<ContainerdNode, "holder" | "socket" | "ctrNamespace">, id: string): Promise<void> {
  await ctr(node, ["task", "kill", "--signal", "SIGKILL", id], 10_000);
  await ctr(node, ["task", "delete", "--force", id], 10_000);
  await ctr(node, ["container", "delete", id], 10_000);
}

interface TeardownTarget {
  dir: string;
  netns: TestNetns;
  ctrNamespace: string;
  holder?: ChildProcess;
  containerd?: ChildProcess;
  socket?: string;
}

/** Best effort, in dependency order; returns what went wrong instead of stopping. */
async function teardown(target: TeardownTarget, pool: NetnsPool): Promise<string[]> {
  const problems: string[] = [];
  const { holder, containerd } = target;
  if (holder && containerd && target.socket && isRunning(containerd)) {
    const node = { holder, socket: target.socket, ctrNamespace: target.ctrNamespace };
    const leftovers = await ctr(node, ["container", "list", "--quiet"], 10_000);
    for (const id of leftovers.stdout.split("\n").filter(Boolean)) await forceDeleteContainer(node, id);
  }
  if (containerd && isRunning(containerd)) {
    const exited = new Promise((resolve) => containerd.once("close", resolve));
    containerd.kill("SIGTERM");
    if ((await withTimeout(exited, 5_000)) === undefined) {
      problems.push(`containerd (pid ${containerd.pid}) ignored SIGTERM`);
      containerd.kill("SIGKILL");
    }
  }
  // Shims and stray clients name the node directory on their command line; container
  // processes are found through the node's cgroups.
  killProcessesMentioning(target.dir);
  for (const cgroup of ownCgroupDirs(target.ctrNamespace)) killCgroupProcesses(cgroup);
  if (holder && isRunning(holder)) {
    holder.stdin?.end();
    holder.kill("SIGKILL");
  }
  for (let attempt = 0; attempt < 20; attempt++) {
    const remaining = ownCgroupDirs(target.ctrNamespace).filter((cgroup) => !removeCgroupTree(cgroup));
    if (remaining.length === 0) break;
    if (attempt === 19) problems.push(`cgroups not removable: ${remaining.join(", ")}`);
    await sleep(100);
  }
  try {
    rmSync(target.dir, { recursive: true, force: true });
  } catch (error) {
    problems.push(`removing ${target.dir}: ${error instanceof Error ? error.message : String(error)}`);
  }
  try {
    pool.remove(target.netns);
  } catch (error) {
    problems.push(`removing netns ${target.netns.name}: ${error instanceof Error ? error.message : String(error)}`);
  }
  return problems;
}

/** `/sys/fs/cgroup/<controller>/<name>` dirs for a cgroup parent name or name prefix. */
function ownCgroupDirs(nameOrPrefix: string): string[] {
  const found: string[] = [];
  for (const controller of safeReaddir(CGROUP_ROOT)) {
    for (const entry of safeReaddir(join(CGROUP_ROOT, controller))) {
      if (entry === nameOrPrefix || (nameOrPrefix.endsWith("-") && entry.startsWith(nameOrPrefix))) {
        found.push(join(CGROUP_ROOT, controller, entry));
      }
    }
  }
  return found;
}

function killCgroupProcesses(cgroup: string): void {
  for (const child of subdirectories(cgroup)) killCgroupProcesses(child);
  for (const pid of readPids(join(cgroup, "cgroup.procs"))) killPid(pid);
}

/** Removes a cgroup and its children, deepest first; false if any is still in use. */
function removeCgroupTree(cgroup: string): boolean {
  let ok = true;
  for (const child of subdirectories(cgroup)) ok = removeCgroupTree(child) && ok;
  try {
    rmdirSync(cgroup);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "ENOENT") ok = false;
  }
  return ok;
}

function killProcessesMentioning(text: string): void {
  for (const entry of safeReaddir("/proc")) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    let cmdline = "";
    try {
      cmdline = readFileSync(`/proc/${entry}/cmdline`, "utf8");
    } catch {
      continue;
    }
    if (cmdline.includes(text)) killPid(Number(entry));
  }
}

function buildBusyboxRootfs(rootfs: string): string {
  for (const sub of ["bin", "dev", "etc", "proc", "sys", "tmp", "root"]) mkdirSync(join(rootfs, sub), { recursive: true });
  copyFileSync("/bin/busybox", join(rootfs, "bin/busybox"));
  chmodSync(join(rootfs, "bin/busybox"), 0o755);
  const applets = execFileSync("/bin/busybox", ["--list"], { encoding: "utf8" }).split("\n").map((line) => line.trim());
  for (const applet of applets) {
    if (/^[\w.[\]-]+$/.test(applet) && applet !== "busybox") symlinkSync("busybox", join(rootfs, "bin", applet));
  }
  writeFileSync(join(rootfs, "etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n");
  writeFileSync(join(rootfs, "etc/group"), "root:x:0:\n");
  return rootfs;
}

function runCommand(file: string, args: string[], timeoutMs: number): Promise<ExecResult> {
  return new Promise((resolve) => {
    const child = spawn(file, args, { stdio: ["ignore", "pipe", "pipe"], timeout: timeoutMs });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (chunk: Buffer) => (stdout += chunk.toString("utf8")));
    child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString("utf8")));
    child.on("error", (error) => resolve({ code: 127, stdout, stderr: `${stderr}${error.message}` }));
    child.on("close", (code, signal) =>
      resolve({ code: code ?? 128, stdout, stderr: signal ? `${stderr}(${file} killed by ${signal} after ${timeoutMs} ms)` : stderr }),
    );
  });
}

/** Resolves to the promise's value, or to undefined once `ms` have passed. */
function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T | undefined> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<undefined>((resolve) => (timer = setTimeout(() => resolve(undefined), ms)));
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function isRunning(child: ChildProcess): boolean {
  return child.exitCode === null && child.signalCode === null;
}

function killPid(pid: number | undefined): void {
  if (pid === undefined) return;
  try {
    process.kill(pid, "SIGKILL");
  } catch {
    // already gone
  }
}


function safeReaddir(path: string): string[] {
  try {
    return readdirSync(path);
  } catch {
    return [];
  }
}

function subdirectories(path: string): string[] {
  try {
    return readdirSync(path, { withFileTypes: true }).filter((entry) => entry.isDirectory()).map((entry) => join(path, entry.name));
  } catch {
    return [];
  }
}

function readPids(path: string): number[] {
  try {
    return readFileSync(path, "utf8").split("\n").filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

function tailOf(path: string, lines = 20): string {
  try {
    return readFileSync(path, "utf8").trimEnd().split("\n").slice(-lines).join("\n");
  } catch {
    return "";
  }
}

function makeDir(base: string, relative: string): string {
  const path = join(base, relative);
  mkdirSync(path, { recursive: true });
  return path;
}

function nearestExistingParent(path: string): string {
  let current = dirname(path);
  while (current !== "/" && !existsSync(current)) current = dirname(current);
  return current;
}
