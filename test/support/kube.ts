/**
 * A real Kubernetes control plane for tests: etcd, kube-apiserver and, when asked,
 * kube-controller-manager and kube-scheduler, from test/kube/bin (scripts/build-kube.sh). It
 * listens on 127.0.0.1 in the machine's namespace (loopback only), or on an address inside a
 * test's namespace, where the test reaches it with kubectl run in that namespace. Every process
 * is killed and every file removed by `stop()` and, as a last resort, when the test process exits.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, openSync, closeSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { loadKubeconfig } from "../../src/kube/config.js";
import { KubeClient } from "../../src/kube/client.js";
import { controlPlaneCommands, writeControlPlaneFiles, type ControlPlaneCommand, type ControlPlaneFiles, type ControlPlaneSpec } from "../../src/lab/control-plane.js";
import { parseIp, parsePrefix } from "../../src/net/ip.js";
import { freeLoopbackPort } from "./etcd.js";

export const KUBE_BIN = process.env.TRELLIS_KUBE_BIN ?? resolve(import.meta.dirname, "../kube/bin");

export interface TestControlPlane {
  readonly spec: ControlPlaneSpec;
  readonly files: ControlPlaneFiles;
  /** A client with the admin's rights (on loopback only: the test process cannot reach a namespace's address). */
  readonly admin: KubeClient;
  /** Runs kubectl with the admin kubeconfig (in the control plane's namespace); resolves with stdout, rejects with stderr. */
  kubectl(args: readonly string[], input?: string): Promise<string>;
  /** Kills kube-apiserver (SIGKILL), and starts it again after `downMs`. */
  restartApiserver(downMs?: number): Promise<void>;
  stop(): Promise<void>;
}

const running = new Set<ChildProcess>();
const leftoverDirs = new Set<string>();
process.once("exit", () => {
  for (const child of running) child.kill("SIGKILL");
  for (const dir of leftoverDirs) rmSync(dir, { recursive: true, force: true });
});

export interface ControlPlaneChoice {
  /** Start kube-controller-manager and kube-scheduler too. */
  readonly controllers?: boolean;
  /** Run every process in this namespace, listening on `address` there. */
  readonly netns?: { readonly path: string; readonly address: string };
}

export async function startTestControlPlane(choice: ControlPlaneChoice = {}): Promise<TestControlPlane> {
  const dir = mkdtempSync(join(existsSync("/dev/shm") ? "/dev/shm" : tmpdir(), "trellis-kube-"));
  leftoverDirs.add(dir);
  const spec: ControlPlaneSpec = {
    dir,
    binDir: KUBE_BIN,
    address: parseIp(choice.netns?.address ?? "127.0.0.1"),
    ports: choice.netns ? { apiserver: 6443, etcdClient: 2379, etcdPeer: 2380 } : { apiserver: await freeLoopbackPort(), etcdClient: await freeLoopbackPort(), etcdPeer: await freeLoopbackPort() },
    podCidrs: [parsePrefix("10.244.0.0/16"), parsePrefix("fd00:10:244::/56")],
    serviceCidrs: [parsePrefix("10.96.0.0/16"), parsePrefix("fd00:10:96::/112")],
    nodeMaskSizes: { 4: 24, 6: 64 },
    nodePortRange: "30000-32767",
  };
  const files = await writeControlPlaneFiles(spec);
  const commands = controlPlaneCommands(spec, files);
  const children = new Map<string, ChildProcess>();
  const start = (command: ControlPlaneCommand) => {
    const fd = openSync(command.log, "a");
    const argv = choice.netns ? ["nsenter", `--net=${choice.netns.path}`, "--", ...command.argv] : command.argv;
    const child = spawn(argv[0], argv.slice(1), { stdio: ["ignore", fd, fd] });
    closeSync(fd);
    running.add(child);
    child.once("exit", () => running.delete(child));
    children.set(command.name, child);
  };
  const admin = new KubeClient(loadKubeconfig(files.adminKubeconfig));
  const netnsPath = choice.netns?.path;
  const run = (args: readonly string[], input?: string) => kubectl(files.adminKubeconfig, args, input, netnsPath);
  const stop = async () => {
    admin.close();
    await Promise.all([...children.values()].reverse().map((child) => kill(child)));
    rmSync(dir, { recursive: true, force: true });
    leftoverDirs.delete(dir);
  };
  const waitReady = async () => {
    const deadline = Date.now() + 90_000;
    let last = "";
    while (Date.now() < deadline) {
      const apiserver = children.get("kube-apiserver")!;
      if (apiserver.exitCode !== null || apiserver.signalCode !== null) break;
      try {
        if ((await run(["get", "--raw", "/readyz", "--request-timeout=2s"])).trim() === "ok") return;
      } catch (error) {
        last = String(error);
      }
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
    const log = readTail(commands.find((command) => command.name === "kube-apiserver")!.log);
    throw new Error(`kube-apiserver on ${files.server} did not become ready: ${last}\n${log}`);
  };
  try {
    for (const command of commands) {
      if (!choice.controllers && (command.name === "kube-controller-manager" || command.name === "kube-scheduler")) continue;
      start(command);
      if (command.name === "kube-apiserver") await waitReady();
    }
  } catch (error) {
    await stop();
    throw error;
  }
  return {
    spec,
    files,
    admin,
    kubectl: run,
    async restartApiserver(downMs = 0) {
      await kill(children.get("kube-apiserver")!, "SIGKILL");
      await new Promise((resolve) => setTimeout(resolve, downMs));
      start(commands.find((command) => command.name === "kube-apiserver")!);
      await waitReady();
    },
    stop,
  };
}

/** Runs kubectl with `kubeconfig`, inside the namespace at `netnsPath` when given. */
export function kubectl(kubeconfig: string, args: readonly string[], input?: string, netnsPath?: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const argv = [join(KUBE_BIN, "kubectl"), "--kubeconfig", kubeconfig, ...args];
    const command = netnsPath ? ["nsenter", `--net=${netnsPath}`, "--", ...argv] : argv;
    const child = spawn(command[0], command.slice(1), { stdio: ["pipe", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (text: string) => (stdout += text));
    child.stderr.setEncoding("utf8").on("data", (text: string) => (stderr += text));
    child.once("error", reject);
    // "close", not "exit": a loaded machine can end the process before its output is read.
    child.once("close", (code) => (code === 0 ? resolve(stdout) : reject(new Error(`kubectl ${args.join(" ")} failed (exit ${code}): ${stderr.trim()}`))));
    child.stdin.end(input ?? "");
  });
}

async function kill(child: ChildProcess, signal: NodeJS.Signals = "SIGTERM"): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  child.kill(signal);
  const timer = setTimeout(() => child.kill("SIGKILL"), 5_000);
  await exited;
  clearTimeout(timer);
}

function readTail(path: string): string {
  try {
    return readFileSync(path, "utf8").slice(-3000);
  } catch {
    return "";
  }
}
