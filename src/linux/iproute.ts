/** iproute2: changes as one `ip -batch -` run, state read back with `ip -json`. */
import { readFileSync } from "node:fs";
import { CommandError, run } from "./exec.js";

/**
 * Applies iproute2 commands (one per line, without the leading `ip`) in order and stops at the
 * first failure. With `json`, `show` commands in the batch print JSON lines, returned in order.
 */
export async function ipBatch(commands: readonly string[], netns?: string, options: { json?: boolean } = {}): Promise<string[]> {
  if (commands.length === 0) return [];
  try {
    const { stdout } = await run("ip", [...(options.json ? ["-json"] : []), "-batch", "-"], { input: commands.join("\n") + "\n", netns });
    return stdout.split("\n").filter((line) => line.trim());
  } catch (error) {
    throw describeBatchFailure(error, commands);
  }
}

/** Runs `ip -json ARGS` and parses its output. */
export async function ipJson<T>(args: readonly string[], netns?: string): Promise<T> {
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

/** Points at the batch line that failed: `ip -batch` reports "Command failed -:N". */
function describeBatchFailure(error: unknown, commands: readonly string[]): unknown {
  if (!(error instanceof CommandError)) return error;
  const line = /Command failed -:(\d+)/.exec(error.stderr);
  if (!line) return error;
  const failed = commands[Number(line[1]) - 1];
  const reason = error.stderr.split("\n").filter((text) => text && !text.startsWith("Command failed")).join("; ");
  return new CommandError(`ip ${failed}`, error.exitCode, reason || error.stderr);
}
