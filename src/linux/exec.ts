/** Runs the kernel's own tools. Every failure names the command and carries its stderr. */
import { spawn } from "node:child_process";

export interface RunOptions {
  /** Written to the command's stdin. */
  input?: string;
  /** Run inside this network namespace (a path such as /var/run/netns/x or /proc/PID/ns/net). */
  netns?: string;
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

/** Runs `command args` (in `options.netns` through nsenter) and resolves with its output. */
export function run(command: string, args: readonly string[], options: RunOptions = {}): Promise<RunResult> {
  const [file, argv] = options.netns ? ["nsenter", [`--net=${options.netns}`, "--", command, ...args]] : [command, [...args]];
  const display = [command, ...args].join(" ") + (options.netns ? ` (in ${options.netns})` : "");
  return new Promise((resolve, reject) => {
    const child = spawn(file, argv, { stdio: ["pipe", "pipe", "pipe"], timeout: options.timeoutMs ?? 30_000 });
    const stdout: Buffer[] = [];
    const stderr: Buffer[] = [];
    child.stdout.on("data", (chunk: Buffer) => stdout.push(chunk));
    child.stderr.on("data", (chunk: Buffer) => stderr.push(chunk));
    child.on("error", (error) => reject(new CommandError(display, null, error.message)));
    child.on("close", (code, signal) => {
      const result = { stdout: Buffer.concat(stdout).toString("utf8"), stderr: Buffer.concat(stderr).toString("utf8") };
      if (code === 0) resolve(result);
      else reject(new CommandError(display, code, result.stderr || (signal ? `killed by ${signal}` : "")));
    });
    child.stdin.on("error", () => undefined);
    child.stdin.end(options.input ?? "");
  });
}
