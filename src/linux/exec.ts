/** Runs the kernel's own tools. Every failure names the command and carries its stderr. */
import { spawn, type StdioOptions } from "node:child_process";
import { realpathSync } from "node:fs";
import type { NetnsHandle } from "./netns.js";

export interface RunOptions {
  /** Written to the command's stdin. */
  input?: string;
  /**
   * Run inside this network namespace: an open handle (passed to nsenter as a file
   * descriptor, so its path never reaches a command line) or a path such as /var/run/netns/x.
   */
  netns?: NetnsHandle | string;
  /** Open file descriptors the command gets as fd 3, 4, …; see `passedFdPath`. */
  fds?: readonly number[];
  timeoutMs?: number;
}

export interface RunResult {
  stdout: string;
  stderr: string;
}

export class CommandError extends Error {
  constructor(
    readonly command: string,
    readonly exitCode: number | null,
    readonly stderr: string,
  ) {
    super(`${command} failed${exitCode === null ? "" : ` (exit ${exitCode})`}: ${stderr.trim() || "no output"}`);
  }
}

/** Where `ip -n NAME` looks for NAME. */
const IP_NETNS_DIR = "/var/run/netns";

/** `../..` (one `..` per level of the directory's real path) leads from IP_NETNS_DIR to `/`; undefined while it does not exist. */
function ipNetnsDirToRoot(): string | undefined {
  let real: string;
  try {
    real = realpathSync(IP_NETNS_DIR);
  } catch {
    return undefined;
  }
  const depth = real.split("/").filter(Boolean).length;
  return Array.from({ length: depth }, () => "..").join("/");
}

/** The path under which a command started by `run` opens the `index`-th of `options.fds`. */
export function passedFdPath(index: number): string {
  return `/proc/self/fd/${3 + index}`;
}

/** The path under which any process of this user opens descriptor `fd` of this process. */
export function ownFdPath(fd: number): string {
  return `/proc/${process.pid}/fd/${fd}`;
}

/** Runs `command args` (in `options.netns` through nsenter) and resolves with its output. */
export function run(command: string, args: readonly string[], options: RunOptions = {}): Promise<RunResult> {
  return start(command, args, options).finish(options.input ?? "");
}

/** A command started ahead of its input: it starts up while the caller prepares what to send it. */
export interface StartedCommand {
  /** Writes `input` to its stdin, closes it, and resolves with the output (rejects as `run` does). */
  finish(input: string): Promise<RunResult>;
  /** Whether it has already ended (then `finish` only reports how). */
  readonly ended: boolean;
}

/** Starts `command args` now (in `options.netns`); its stdin stays open until `finish`. */
export function start(command: string, args: readonly string[], options: Omit<RunOptions, "input"> = {}): StartedCommand {
  const fds = [...(options.fds ?? [])];
  let file = command;
  let argv = [...args];
  let where = "";
  if (typeof options.netns === "string") {
    [file, argv] = ["nsenter", [`--net=${options.netns}`, "--", command, ...args]];
    where = ` (in ${options.netns})`;
  } else if (options.netns) {
    fds.push(options.netns.fd);
    const path = passedFdPath(fds.length - 1);
    // `ip` enters a namespace itself, saving nsenter's exec; it takes only names under
    // /var/run/netns, so the descriptor is named relative to that directory.
    const up = command === "ip" ? ipNetnsDirToRoot() : undefined;
    [file, argv] = up !== undefined ? ["ip", ["-n", `${up}${path}`, ...args]] : ["nsenter", [`--net=${path}`, "--", command, ...args]];
    where = ` (in ${options.netns.path})`;
  }
  const display = [command, ...args].join(" ") + where;
  const stdio: StdioOptions = ["pipe", "pipe", "pipe", ...fds];
  // A command started ahead (timeoutMs 0) gets its deadline when its input is sent.
  const timeoutMs = options.timeoutMs ?? 30_000;
  const child = spawn(file, argv, { stdio, timeout: timeoutMs || undefined });
  const stdout: Buffer[] = [];
  const stderr: Buffer[] = [];
  child.stdout!.on("data", (chunk: Buffer) => stdout.push(chunk));
  child.stderr!.on("data", (chunk: Buffer) => stderr.push(chunk));
  child.stdin!.on("error", () => undefined);
  let ended = false;
  const outcome = new Promise<RunResult>((resolve, reject) => {
    child.on("error", (error) => {
      ended = true;
      reject(new CommandError(display, null, error.message));
    });
    child.on("close", (code, signal) => {
      ended = true;
      const result = { stdout: Buffer.concat(stdout).toString("utf8"), stderr: Buffer.concat(stderr).toString("utf8") };
      if (code === 0) resolve(result);
      else reject(new CommandError(display, code, result.stderr || (signal ? `killed by ${signal}` : "")));
    });
  });
  // Not yet awaited: a command that fails before `finish` must not be an unhandled rejection.
  outcome.catch(() => undefined);
  return {
    finish: (input) => {
      if (timeoutMs === 0 && !ended) {
        const deadline = setTimeout(() => child.kill("SIGKILL"), 30_000);
        child.once("close", () => clearTimeout(deadline));
      }
      child.stdin!.end(input);
      return outcome;
    },
    get ended() {
      return ended;
    },
  };
}
