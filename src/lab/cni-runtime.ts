/**
 * The lab's container runtime, as far as networking goes: it reads a node's network list and
 * runs its plugins the way containerd does, inside the node's namespace, one plugin after the
 * other with the previous result chained in (ADD) or in reverse order (DEL).
 */
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, symlinkSync } from "node:fs";
import { dirname, join } from "node:path";
import { selfInvocation } from "./probe.js";
import { LAB_ROOT } from "./state.js";

/** The file the agent writes into a node's CNI configuration directory. */
export const CONFLIST_FILE = "10-trellis.conflist";

export interface CniNetworkList {
  readonly cniVersion: string;
  readonly name: string;
  readonly plugins: ReadonlyArray<{ readonly type: string; readonly [key: string]: unknown }>;
}

/** A pod's attachment as the runtime names it. */
export interface CniAttachment {
  /** The node's namespace, where the plugins run. */
  readonly nodeNetns: string;
  readonly containerId: string;
  /** CNI_NETNS: the pod's namespace. */
  readonly podNetns: string;
  readonly ifname: string;
  /** CNI_ARGS, as a Kubernetes runtime passes them (K8S_POD_NAMESPACE, K8S_POD_NAME, …). */
  readonly args?: Readonly<Record<string, string>>;
}

const BUILTIN_CNI_PATH = ["/opt/cni/bin", "/usr/lib/cni"];

/** The node's network list, or undefined while its agent has not written one. */
export function readNetworkList(confDir: string): CniNetworkList | undefined {
  const file = join(confDir, CONFLIST_FILE);
  if (!existsSync(file)) return undefined;
  const text = readFileSync(file, "utf8");
  let list: unknown;
  try {
    list = JSON.parse(text);
  } catch (error) {
    throw new Error(`${file} is not valid JSON: ${(error as Error).message}`);
  }
  const { cniVersion, name, plugins } = (list ?? {}) as Partial<CniNetworkList>;
  if (typeof cniVersion !== "string" || typeof name !== "string" || !Array.isArray(plugins) || plugins.length === 0 || plugins.some((plugin) => typeof plugin?.type !== "string")) {
    throw new Error(`${file} is not a CNI network list: it needs "cniVersion", "name" and "plugins" (a non-empty list of objects with a "type")`);
  }
  return list as CniNetworkList;
}

/** The pod CIDRs a network list hands out: the subnets of the trellis plugin's IPAM ranges. */
export function networkListSubnets(list: CniNetworkList): string[] {
  const ranges = list.plugins.find((plugin) => plugin.type === "trellis")?.ipam as { ranges?: Array<Array<{ subnet?: unknown }>> } | undefined;
  return (ranges?.ranges ?? []).flat().map((range) => range.subnet).filter((subnet): subnet is string => typeof subnet === "string");
}

/** ADD through every plugin in order; resolves with the last plugin's result. */
export async function addNetworkList(list: CniNetworkList, attachment: CniAttachment): Promise<unknown> {
  let result: unknown;
  for (const plugin of list.plugins) {
    result = await execPlugin("ADD", list, plugin, attachment, result);
  }
  return result;
}

/** DEL through every plugin in reverse order, each given the cached ADD result. */
export async function delNetworkList(list: CniNetworkList, attachment: CniAttachment, cachedResult: unknown): Promise<void> {
  for (const plugin of [...list.plugins].reverse()) {
    await execPlugin("DEL", list, plugin, attachment, cachedResult);
  }
}

/** The CNI_PATH the lab gives plugins: this executable's directory first, then the usual ones. */
export function labCniPath(): string[] {
  const self = selfInvocation();
  return [dirname(self[self.length - 1]), ...BUILTIN_CNI_PATH];
}

/**
 * The command that runs a plugin type. `trellis` is the native plugin (`trellis-cni` beside this
 * executable, which forwards to the node's agent and falls back to `trellis-standalone`) when it
 * was built, this very executable otherwise; anything else is found on the CNI path.
 */
function pluginCommand(type: string): string[] {
  if (type === "trellis") return trellisPlugin();
  if (!/^[A-Za-z0-9][A-Za-z0-9_.-]*$/.test(type)) throw new Error(`CNI plugin type ${JSON.stringify(type)} is not a plain executable name`);
  const found = labCniPath().map((dir) => join(dir, type)).find((path) => existsSync(path));
  if (!found) throw new Error(`CNI plugin ${JSON.stringify(type)} is not in ${labCniPath().join(":")}`);
  return [found];
}

/**
 * The native plugin as a runtime installs it: `trellis` and `trellis-standalone` side by side,
 * here as links in the lab's bin directory next to the state (made once per process).
 */
function trellisPlugin(): string[] {
  const self = selfInvocation();
  const executable = self[self.length - 1];
  const native = join(dirname(executable), "trellis-cni");
  if (self.length !== 1 || !existsSync(native)) return self;
  const bin = join(LAB_ROOT, ".bin", createHash("sha256").update(executable).digest("hex").slice(0, 12));
  if (!existsSync(join(bin, "trellis"))) {
    const building = `${bin}.${process.pid}`;
    mkdirSync(building, { recursive: true });
    symlinkSync(native, join(building, "trellis"));
    symlinkSync(executable, join(building, "trellis-standalone"));
    try {
      renameSync(building, bin);
    } catch {
      rmSync(building, { recursive: true, force: true });
    }
  }
  return [join(bin, "trellis")];
}

function execPlugin(
  command: "ADD" | "DEL",
  list: CniNetworkList,
  plugin: CniNetworkList["plugins"][number],
  attachment: CniAttachment,
  prevResult: unknown,
): Promise<unknown> {
  const config: Record<string, unknown> = { ...plugin, cniVersion: list.cniVersion, name: list.name };
  if (prevResult !== undefined) config.prevResult = prevResult;
  const env: NodeJS.ProcessEnv = Object.fromEntries(Object.entries(process.env).filter(([key]) => !key.startsWith("CNI_")));
  Object.assign(env, {
    CNI_COMMAND: command,
    CNI_CONTAINERID: attachment.containerId,
    CNI_NETNS: attachment.podNetns,
    CNI_IFNAME: attachment.ifname,
    CNI_PATH: labCniPath().join(":"),
  });
  if (attachment.args) {
    const pairs = Object.entries(attachment.args);
    if (pairs.some(([key, value]) => /[;=\0\n]/.test(key + value))) return Promise.reject(new Error(`CNI ${command} of ${attachment.containerId}: a CNI_ARGS key or value holds ";", "=" or a newline`));
    env.CNI_ARGS = pairs.map(([key, value]) => `${key}=${value}`).join(";");
  }
  const what = `CNI ${command} of ${attachment.containerId} by plugin ${plugin.type}`;
  const argv = pluginCommand(plugin.type);
  return new Promise((resolve, reject) => {
    const child = spawn("nsenter", [`--net=${attachment.nodeNetns}`, "--", ...argv], { env, stdio: ["pipe", "pipe", "pipe"], timeout: 60_000 });
    const stdout: Buffer[] = [];
    const stderr: Buffer[] = [];
    child.stdout.on("data", (chunk: Buffer) => stdout.push(chunk));
    child.stderr.on("data", (chunk: Buffer) => stderr.push(chunk));
    child.on("error", (error) => reject(new Error(`${what}: cannot start it: ${error.message}`)));
    child.on("close", (code, signal) => {
      const out = Buffer.concat(stdout).toString("utf8").trim();
      if (code !== 0) {
        reject(new Error(`${what} failed: ${describePluginError(out, Buffer.concat(stderr).toString("utf8"), code, signal)}`));
        return;
      }
      if (command === "DEL" || out === "") {
        resolve(prevResult);
        return;
      }
      try {
        resolve(JSON.parse(out));
      } catch {
        reject(new Error(`${what} printed a result that is not JSON: ${out.slice(0, 200)}`));
      }
    });
    child.stdin.on("error", () => undefined);
    child.stdin.end(JSON.stringify(config));
  });
}

/** The plugin's error JSON (`{code, msg, details}`) as one line, else its stderr. */
function describePluginError(stdout: string, stderr: string, code: number | null, signal: NodeJS.Signals | null): string {
  try {
    const error = JSON.parse(stdout) as { code?: number; msg?: string; details?: string };
    if (error.msg) return `code ${error.code}: ${error.msg}${error.details ? ` (${error.details})` : ""}`;
  } catch {
    // not the spec's error JSON
  }
  const exit = signal ? `killed by ${signal}` : `exit ${code}`;
  return `${exit}: ${stderr.trim() || stdout || "no output"}`;
}

/** The addresses (without prefix length) of a CNI result's `ips`. */
export function resultAddresses(result: unknown): string[] {
  const ips = (result as { ips?: Array<{ address?: unknown }> } | undefined)?.ips ?? [];
  return ips.map((ip) => (typeof ip.address === "string" ? ip.address.split("/")[0] : "")).filter(Boolean);
}
