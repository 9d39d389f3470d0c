/** iproute2: changes as one `ip -batch -` run, state read back with `ip -json`. */
import { readFileSync } from "node:fs";
import { CommandError, run, start, type StartedCommand } from "./exec.js";
import type { NetnsHandle } from "./netns.js";

/** One `ip` command as its words, without the leading `ip`. */
export type IpCommand = readonly string[];

export interface IpBatchOptions {
  /** Run inside this namespace. */
  netns?: NetnsHandle;
  /** `show` commands in the batch print JSON lines, returned in order. */
  json?: boolean;
  /** Interfaces (already in the namespace) whose IPv6 is switched on before the batch runs. */
  enableIpv6On?: readonly string[];
  /** Carry on past failing commands (`-force`); the error then names the first that failed. */
  force?: boolean;
  /** `show` commands print details (`-details`: a link's kind). */
  details?: boolean;
}

/**
 * Applies iproute2 commands in order and stops at the first failure. Every word is checked
 * to be one plain token, so no value can split into two words or start a new command.
 */
export async function ipBatch(commands: readonly IpCommand[], options: IpBatchOptions = {}): Promise<string[]> {
  if (commands.length === 0) return [];
  return prepareIpBatch(options).run(commands);
}

/** An `ip -batch` already started, waiting for its commands. */
export interface PreparedIpBatch {
  run(commands: readonly IpCommand[]): Promise<string[]>;
  /** Ends it unused. */
  discard(): void;
}

/**
 * Starts the `ip -batch` now, so that its start-up (and its entering a namespace) overlaps
 * with whatever the caller does before it has the commands. In the node's own namespace a
 * process that keeps `ip` warm (see `keepIpWarm`) gets one started in advance.
 */
export function prepareIpBatch(options: IpBatchOptions = {}): PreparedIpBatch {
  const ipArgs = [...(options.json ? ["-json"] : []), ...(options.details ? ["-details"] : []), ...(options.force ? ["-force"] : []), "-batch", "-"];
  const enable = (options.enableIpv6On ?? []).map(batchWord);
  // Writing a sysctl inside a namespace needs a process there: sh sets it, then becomes ip.
  const [command, args] = enable.length ? ["sh", ["-c", ENABLE_IPV6_THEN_IP, "sh", ...enable, "--", ...ipArgs]] : ["ip", ipArgs];
  const plain = !enable.length && !options.netns;
  const started = (plain && takeWarm(ipArgs)) || start(command, args, { netns: options.netns });
  let used = false;
  return {
    async run(commands) {
      used = true;
      const script = commands.map((words) => words.map(batchWord).join(" ")).join("\n") + "\n";
      try {
        const { stdout } = await started.finish(script);
        return stdout.split("\n").filter((line) => line.trim());
      } catch (error) {
        throw describeBatchFailure(error, commands);
      }
    },
    discard() {
      if (!used) void started.finish("").catch(() => undefined);
      used = true;
    },
  };
}

/** One idle `ip -batch` per argument set, started ahead while warm-keeping is on. */
const warm = new Map<string, StartedCommand>();
let keepWarm = false;

/**
 * In a long-lived process (the agent), keeps one `ip -batch` of each kind used so far started
 * and waiting, so a call pays no process start-up; off again closes the idle ones.
 */
export function keepIpWarm(on: boolean): void {
  keepWarm = on;
  if (!on) {
    for (const idle of warm.values()) void idle.finish("").catch(() => undefined);
    warm.clear();
  }
}

function takeWarm(ipArgs: readonly string[]): StartedCommand | undefined {
  if (!keepWarm) return undefined;
  const key = ipArgs.join(" ");
  const idle = warm.get(key);
  // The next one starts after this turn, off the caller's path.
  setImmediate(() => {
    if (keepWarm && (!warm.has(key) || warm.get(key)!.ended)) warm.set(key, start("ip", ipArgs, { timeoutMs: 0 }));
  });
  warm.delete(key);
  return idle && !idle.ended ? idle : undefined;
}

/** Applies `bridge` commands (FDB entries) in one `bridge -batch -` run. */
export async function bridgeBatch(commands: readonly IpCommand[], options: { force?: boolean } = {}): Promise<void> {
  if (commands.length === 0) return;
  const script = commands.map((words) => words.map(batchWord).join(" ")).join("\n") + "\n";
  try {
    await run("bridge", [...(options.force ? ["-force"] : []), "-batch", "-"], { input: script });
  } catch (error) {
    throw describeBatchFailure(error, commands, "bridge");
  }
}

/** Runs `bridge -json ARGS` and parses its output. */
export async function bridgeJson<T>(args: readonly string[]): Promise<T> {
  const { stdout } = await run("bridge", ["-json", ...args]);
  return (stdout.trim() ? JSON.parse(stdout) : []) as T;
}

/** Runs `ip -json ARGS` and parses its output. */
export async function ipJson<T>(args: readonly string[], netns?: NetnsHandle): Promise<T> {
  const { stdout } = await run("ip", ["-json", ...args], { netns });
  return (stdout.trim() ? JSON.parse(stdout) : []) as T;
}

/** Names of the network interfaces of this process's network namespace, read without running a command. */
export function localLinkNames(): Set<string> {
  const lines = readFileSync("/proc/self/net/dev", "utf8").split("\n").slice(2);
  return new Set(lines.map((line) => line.split(":")[0].trim()).filter(Boolean));
}

export function isNoSuchDevice(error: unknown): boolean {
  return error instanceof CommandError && /Cannot find device|does not exist|No such device/.test(error.stderr);
}

export function isAlreadyExists(error: unknown): boolean {
  return error instanceof CommandError && /File exists/.test(error.stderr);
}

/**
 * Deletes a link of this process's namespace and returns as soon as the kernel has unlisted it
 * (with a veth, both ends: they go in one step). The `ip` that asked keeps waiting in the
 * kernel for the device's last references to drop, which on a veth takes 10-30 ms of RCU grace
 * periods; nothing can see or use the device meanwhile, so only the memory is still to be
 * freed and the caller need not wait for it. A link that is already gone is fine.
 */
export async function unlinkLink(name: string): Promise<void> {
  if (!localLinkNames().has(name)) return;
  let failure: { error: unknown } | undefined;
  let exited = false;
  const deletion = deleteLink(name).then(
    () => void (exited = true),
    (error: unknown) => void (failure = { error }),
  );
  pendingDeletions.add(deletion);
  void deletion.finally(() => pendingDeletions.delete(deletion));
  for (;;) {
    if (failure) throw failure.error;
    if (exited || !localLinkNames().has(name)) return;
    await new Promise((resolve) => setTimeout(resolve, 1));
  }
}

const pendingDeletions = new Set<Promise<void>>();

/**
 * Waits (at most `timeoutMs`) for the `ip` runs `unlinkLink` left behind to end, so a process
 * that stops leaves none of them orphaned.
 */
export async function linkDeletionsSettled(timeoutMs: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([Promise.all(pendingDeletions), new Promise((resolve) => (timer = setTimeout(resolve, timeoutMs)))]);
  clearTimeout(timer);
}

/** Deletes a link and waits until the kernel has freed it; a link that is already gone is fine. */
export async function deleteLink(name: string): Promise<void> {
  try {
    await ipBatch([["link", "delete", "dev", name]]);
  } catch (error) {
    if (!isNoSuchDevice(error)) throw error;
  }
}

/** Words a batch line may hold: no blanks, quotes, backslashes or comment marks, nothing empty. */
function batchWord(word: string): string {
  if (!/^[A-Za-z0-9_.:/@+,-]+$/.test(word)) throw new Error(`refusing to pass ${JSON.stringify(word)} to ip: not a plain word`);
  return word;
}

/** Arguments: interfaces, `--`, then ip's own arguments. */
const ENABLE_IPV6_THEN_IP =
  'while [ "$1" != -- ]; do echo 0 > "/proc/sys/net/ipv6/conf/$1/disable_ipv6" || exit 1; shift; done; shift; exec ip "$@"';

/** Points at the batch line that failed: `ip -batch` reports "Command failed -:N". */
function describeBatchFailure(error: unknown, commands: readonly IpCommand[], tool = "ip"): unknown {
  if (!(error instanceof CommandError)) return error;
  const line = /Command failed -:(\d+)/.exec(error.stderr);
  if (!line) return error;
  const failed = commands[Number(line[1]) - 1];
  const reason = error.stderr.split("\n").filter((text) => text && !text.startsWith("Command failed")).join("; ");
  return new CommandError(`${tool} ${failed.join(" ")}`, error.exitCode, reason || error.stderr);
}
