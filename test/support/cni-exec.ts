/**
 * Execs a CNI plugin the way a container runtime does: the plugin runs in the node's network
 * namespace (`nsenter --net=`), gets the CNI_* variables and one plugin's configuration on
 * stdin, and answers on stdout. Used where a test or benchmark plays the runtime itself
 * instead of going through containerd.
 */
import { spawn } from "node:child_process";
import type { TestNetns } from "./netns.js";

export type CniCommand = "ADD" | "DEL" | "CHECK" | "VERSION" | "GC" | "STATUS";

/** A network configuration list (`.conflist`), as a runtime reads it from /etc/cni/net.d. */
export interface CniConfList {
  cniVersion: string;
  name: string;
  plugins: CniPluginConf[];
  [key: string]: unknown;
}

export interface CniPluginConf {
  type: string;
  [key: string]: unknown;
}

export interface CniInvocation {
  command: CniCommand;
  /** Absolute path of the plugin executable. */
  plugin: string;
  /** Directories where the plugin finds delegates (host-local for bridge); `:`-separated. */
  cniPath: string;
  /** Stdin: one plugin's configuration, see `pluginConfig`. */
  config: object;
  containerId?: string;
  /** CNI_NETNS: the pod's network namespace path. */
  netns?: string;
  ifname?: string;
  /** CNI_ARGS, e.g. `K8S_POD_NAMESPACE=default;K8S_POD_NAME=web`, as the kubelet passes them. */
  args?: string;
  /** Runs the plugin inside this namespace, as a runtime on that node would. */
  node?: TestNetns;
  timeoutMs?: number;
}

export interface CniOutcome {
  code: number;
  stdout: string;
  stderr: string;
  /** From spawn to exit, including `nsenter` when `node` is set. */
  elapsedMs: number;
}

/**
 * The stdin a runtime gives plugin `index` of a list: the plugin's own keys plus the list's
 * `cniVersion` and `name`, and `prevResult` when there is one (DEL, CHECK, chained ADD).
 */
export function pluginConfig(list: CniConfList, index: number, prevResult?: unknown): Record<string, unknown> {
  const plugin = list.plugins[index];
  if (!plugin) throw new Error(`network ${JSON.stringify(list.name)} has no plugin at index ${index}`);
  const config: Record<string, unknown> = { cniVersion: list.cniVersion, name: list.name, ...plugin };
  if (prevResult !== undefined) config.prevResult = prevResult;
  return config;
}

/** What a plugin inherits besides the CNI variables: PATH. */
export function pluginBaseEnv(): Record<string, string> {
  return { PATH: process.env.PATH ?? "/usr/sbin:/usr/bin:/sbin:/bin" };
}

/** Execs the plugin once; never rejects for a non-zero exit, only when it cannot be started. */
export function execCniPlugin(invocation: CniInvocation): Promise<CniOutcome> {
  const env: Record<string, string> = {
    ...pluginBaseEnv(),
    CNI_COMMAND: invocation.command,
    CNI_PATH: invocation.cniPath,
  };
  if (invocation.containerId !== undefined) env.CNI_CONTAINERID = invocation.containerId;
  if (invocation.netns !== undefined) env.CNI_NETNS = invocation.netns;
  if (invocation.ifname !== undefined) env.CNI_IFNAME = invocation.ifname;
  if (invocation.args !== undefined) env.CNI_ARGS = invocation.args;
  const [file, args] = invocation.node
    ? ["nsenter", [`--net=${invocation.node.path}`, invocation.plugin]]
    : [invocation.plugin, []];
  return new Promise((resolve, reject) => {
    const started = process.hrtime.bigint();
    const child = spawn(file, args, { env, stdio: ["pipe", "pipe", "pipe"], timeout: invocation.timeoutMs ?? 30_000 });
    const stdout: Buffer[] = [];
    const stderr: Buffer[] = [];
    child.stdout.on("data", (chunk: Buffer) => stdout.push(chunk));
    child.stderr.on("data", (chunk: Buffer) => stderr.push(chunk));
    child.on("error", (error) => reject(new Error(`cannot exec CNI plugin ${invocation.plugin}: ${error.message}`)));
    child.on("close", (code, signal) => {
      const elapsedMs = Number(process.hrtime.bigint() - started) / 1e6;
      resolve({
        code: code ?? (signal ? 128 : 1),
        stdout: Buffer.concat(stdout).toString("utf8"),
        stderr: Buffer.concat(stderr).toString("utf8") + (signal ? `\n(killed by ${signal})` : ""),
        elapsedMs,
      });
    });
    // A plugin that exits without reading stdin (VERSION may) must not fail the write.
    child.stdin.on("error", () => undefined);
    child.stdin.end(JSON.stringify(invocation.config));
  });
}

/** Like `execCniPlugin`, but a non-zero exit throws with the plugin's error JSON and stderr. */
export async function execCniPluginOk(invocation: CniInvocation): Promise<CniOutcome> {
  const outcome = await execCniPlugin(invocation);
  if (outcome.code !== 0) {
    const who = invocation.containerId ? ` for container ${invocation.containerId}` : "";
    throw new Error(
      `CNI ${invocation.command} by ${invocation.plugin}${who} exited ${outcome.code}: ${outcome.stdout.trim()} ${outcome.stderr.trim()}`.trim(),
    );
  }
  return outcome;
}
