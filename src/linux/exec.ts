/** Runs the kernel's own tools. Every failure names the command and carries its stderr. */
import { spawn, type ChildProcessWithoutNullStreams, type StdioOptions } from "node:child_process";
import { existsSync, realpathSync } from "node:fs";
import type { NetnsHandle } from "./netns.js";

export interface RunOptions {
  /** Written to the command's stdin. */
  input?: string;
  /**
   * Run inside this network namespace: an open handle (passed to nsenter as a file
   * descriptor, so its path never reaches a command line) or a path such as /var/run/netns/x.
   */
  netns?: NetnsHandle | string;
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

let netnsDirToRoot: string | undefined;

/**
 * `../..` (one `..` per level of the directory's real path) leads from IP_NETNS_DIR to `/`;
 * undefined while it does not exist. Found once, on the first call after it exists.
 */
function ipNetnsDirToRoot(): string | undefined {
  if (netnsDirToRoot !== undefined) return netnsDirToRoot;
  let real: string;
  try {
    real = realpathSync(IP_NETNS_DIR);
  } catch {
    return undefined;
  }
  netnsDirToRoot = Array.from({ length: real.split("/").filter(Boolean).length }, () => "..").join("/");
  return netnsDirToRoot;
}

/** Where a command started directly opens the namespace handle it is given as fd 3. */
const PASSED_NETNS_PATH = "/proc/self/fd/3";

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
  // Through the spawn helper the command reaches a namespace handle by this process's descriptor.
  const viaHelper = helper !== undefined;
  const fds: number[] = [];
  let file = command;
  let argv = [...args];
  let where = "";
  if (typeof options.netns === "string") {
    [file, argv] = ["nsenter", [`--net=${options.netns}`, "--", command, ...args]];
    where = ` (in ${options.netns})`;
  } else if (options.netns) {
    if (!viaHelper) fds.push(options.netns.fd);
    const path = viaHelper ? ownFdPath(options.netns.fd) : PASSED_NETNS_PATH;
    // `ip` enters a namespace itself, saving nsenter's exec; it takes only names under
    // /var/run/netns, so the descriptor is named relative to that directory.
    const up = command === "ip" ? ipNetnsDirToRoot() : undefined;
    [file, argv] = up !== undefined ? ["ip", ["-n", `${up}${path}`, ...args]] : ["nsenter", [`--net=${path}`, "--", command, ...args]];
    where = ` (in ${options.netns.path})`;
  }
  const display = [command, ...args].join(" ") + where;
  // A command started ahead (timeoutMs 0) gets the usual deadline from when its input is sent.
  if (viaHelper) return helper!.start(file, argv, options.timeoutMs || 30_000, display);
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

/**
 * `trellis-spawn`, a small process that starts commands for this one: a fork of a large process
 * copies its page tables while the JavaScript thread waits (about 5 ms at 130 MiB), a fork of
 * the helper does not. Requests and replies are length-prefixed binary frames (see its source).
 */
class SpawnHelper {
  private readonly pending = new Map<number, { resolve: (result: RunResult) => void; reject: (error: Error) => void; display: string }>();
  private nextId = 1;
  /** Bytes received and not yet part of a whole reply: joined only once one is complete. */
  private received: Buffer[] = [];
  private receivedBytes = 0;

  constructor(private readonly child: ChildProcessWithoutNullStreams) {
    child.stdout.on("data", (chunk: Buffer) => this.receive(chunk));
    child.stdin.on("error", () => undefined);
    child.on("exit", () => this.fail(`the spawn helper ${child.spawnfile} ended`));
    child.on("error", (error) => this.fail(`the spawn helper ${child.spawnfile} failed: ${error.message}`));
  }

  /** Starts the command now; `finish` sends its input (its deadline counts from then: 0 is none). */
  start(file: string, argv: readonly string[], timeoutMs: number, display: string): StartedCommand {
    const words = [file, ...argv];
    if (words.some((word) => word.includes("\0"))) {
      const refused = Promise.reject(new CommandError(display, null, "an argument holds a NUL byte"));
      refused.catch(() => undefined);
      return { finish: () => refused, ended: true };
    }
    const id = this.nextId++;
    let ended = false;
    const outcome = new Promise<RunResult>((resolve, reject) => {
      this.pending.set(id, {
        resolve: (result) => ((ended = true), resolve(result)),
        reject: (error) => ((ended = true), reject(error)),
        display,
      });
    });
    outcome.catch(() => undefined);
    this.send(1, [u32(id), u32(words.length), ...words.map((word) => Buffer.from(`${word}\0`))]);
    return {
      finish: (input) => {
        if (!ended) this.send(2, [u32(id), u32(timeoutMs), u32(Buffer.byteLength(input)), Buffer.from(input)]);
        return outcome;
      },
      get ended() {
        return ended;
      },
    };
  }

  private send(kind: number, parts: Buffer[]): void {
    const body = Buffer.concat([Buffer.from([kind]), ...parts]);
    this.child.stdin.write(Buffer.concat([u32(body.length), body]));
  }

  close(): void {
    this.child.stdin.end();
  }

  private receive(chunk: Buffer): void {
    this.received.push(chunk);
    this.receivedBytes += chunk.length;
    for (;;) {
      if (this.receivedBytes < 4) return;
      if (this.received[0].length < 4) this.received = [Buffer.concat(this.received)];
      const end = 4 + this.received[0].readUInt32BE(0);
      if (this.receivedBytes < end) return;
      const all = this.received.length === 1 ? this.received[0] : Buffer.concat(this.received);
      const frame = all.subarray(4, end);
      const rest = all.subarray(end);
      this.received = rest.length ? [rest] : [];
      this.receivedBytes = rest.length;
      const id = frame.readUInt32BE(0);
      const status = frame.readInt32BE(4);
      const outLength = frame.readUInt32BE(8);
      const stdout = frame.subarray(12, 12 + outLength).toString("utf8");
      const stderr = frame.subarray(16 + outLength, 16 + outLength + frame.readUInt32BE(12 + outLength)).toString("utf8");
      const call = this.pending.get(id);
      if (!call) continue;
      this.pending.delete(id);
      if (status === 0) call.resolve({ stdout, stderr });
      else if (status === -1000) call.reject(new CommandError(call.display, null, stderr));
      else if (status < 0) call.reject(new CommandError(call.display, null, stderr || `killed by signal ${-status}`));
      else call.reject(new CommandError(call.display, status, stderr));
    }
  }

  private fail(reason: string): void {
    if (helper === this) helper = undefined;
    for (const call of this.pending.values()) call.reject(new CommandError(call.display, null, reason));
    this.pending.clear();
  }
}

function u32(value: number): Buffer {
  const buffer = Buffer.alloc(4);
  buffer.writeUInt32BE(value >>> 0);
  return buffer;
}

let helper: SpawnHelper | undefined;

/** From now on commands start through the helper at `path`; false (and nothing changes) if it is not there. */
export function useSpawnHelper(path: string): boolean {
  if (helper) return true;
  if (!existsSync(path)) return false;
  helper = new SpawnHelper(spawn(path, [], { stdio: ["pipe", "pipe", "inherit"] }) as unknown as ChildProcessWithoutNullStreams);
  return true;
}

/** Back to starting commands directly; the helper ends once its current commands have. */
export function stopSpawnHelper(): void {
  helper?.close();
  helper = undefined;
}
