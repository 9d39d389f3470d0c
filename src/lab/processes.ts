/**
 * The lab's long-lived processes (agents, probe servers): started detached inside a namespace
 * so they outlive `lab up`, and stopped only after checking that the pid is still the process
 * the lab started, never one that took over its pid.
 */
import { spawn } from "node:child_process";
import { closeSync, openSync, readFileSync, statSync } from "node:fs";
import type { LabProcess } from "./state.js";

export interface StartedProcess extends LabProcess {
  /** How it ended (`exit 1`, `killed by SIGKILL`) if it has, as seen while `lab up` still runs. */
  ended(): string | undefined;
}

export interface DetachedOptions {
  /** A mount namespace to run in too (a file that keeps one, as `unshare --mount=FILE` makes). */
  readonly mountNs?: string;
  /** `cgroup.procs` files the process joins before the command starts, so its children start there too. */
  readonly cgroupProcs?: readonly string[];
}

/** Joins the groups named before `--`, then execs what follows: the pid stays the command's. */
const JOIN_CGROUPS = 'while [ "$1" != -- ]; do echo $$ >"$1" || exit 1; shift; done; shift; exec "$@"';

/**
 * The detached processes this process started that have not ended, by pid. Until one ends (and is
 * reaped here) its pid cannot belong to anyone else, so these can be stopped without checking
 * who they are: a `lab up` that fails or is interrupted stops them first, even one that is still
 * `nsenter` or the shell joining its control groups, not yet the command the state records.
 */
const running = new Set<number>();

/** The pids of the detached processes this process started that still run. */
export function runningChildren(): number[] {
  return [...running];
}

/**
 * Starts `argv` inside the namespace at `netnsPath` (undefined: this process's own), in its own
 * session, with stdout and stderr appended to `log`. nsenter (and the shell that joins control
 * groups) exec the command in place, so the pid is the command's own.
 */
export function startDetached(netnsPath: string | undefined, argv: readonly string[], log: string, options: DetachedOptions = {}): StartedProcess {
  const fd = openSync(log, "a");
  try {
    const joined = options.cgroupProcs?.length ? ["sh", "-c", JOIN_CGROUPS, "sh", ...options.cgroupProcs, "--", ...argv] : [...argv];
    const namespaces = [...(options.mountNs ? [`--mount=${options.mountNs}`] : []), ...(netnsPath === undefined ? [] : [`--net=${netnsPath}`])];
    const command = namespaces.length === 0 ? joined : ["nsenter", ...namespaces, "--", ...joined];
    const child = spawn(command[0], command.slice(1), { detached: true, stdio: ["ignore", fd, fd] });
    if (child.pid === undefined) throw new Error(`cannot start ${argv.join(" ")} in ${netnsPath}`);
    let ended: string | undefined;
    child.on("error", () => undefined);
    running.add(child.pid);
    const pid = child.pid;
    child.once("exit", (code, signal) => {
      running.delete(pid);
      ended = signal ? `killed by ${signal}` : `exit ${code}`;
    });
    child.unref();
    return { pid: child.pid, argv: [...argv], log, ended: () => ended };
  } finally {
    closeSync(fd);
  }
}

/**
 * Whether `proc` still runs as the lab started it: same command line and, while the namespace
 * exists, living in it. A zombie has no command line, so it does not count.
 */
export function isLabProcess(proc: LabProcess, netnsPath?: string): boolean {
  let cmdline: string;
  try {
    cmdline = readFileSync(`/proc/${proc.pid}/cmdline`, "utf8");
  } catch {
    return false;
  }
  if (cmdline !== proc.argv.map((word) => `${word}\0`).join("")) return false;
  if (netnsPath === undefined) return true;
  try {
    return statSync(`/proc/${proc.pid}/ns/net`).ino === statSync(netnsPath).ino;
  } catch {
    // The namespace file is gone; the command line alone identifies the process.
    return true;
  }
}

/** SIGTERM, then SIGKILL for whatever is still there after `graceMs`. Resolves once all are gone. */
export async function stopProcesses(pids: readonly number[], graceMs = 3000): Promise<void> {
  const alive = (pid: number): boolean => {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
      return !/^[ZX]$/.test(stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3));
    } catch {
      return false;
    }
  };
  const signal = (pid: number, name: NodeJS.Signals): void => {
    try {
      process.kill(pid, name);
    } catch {
      // already gone
    }
  };
  let remaining = [...new Set(pids)].filter(alive);
  for (const pid of remaining) signal(pid, "SIGTERM");
  const deadline = Date.now() + graceMs;
  while (remaining.length > 0 && Date.now() < deadline) {
    await sleep(50);
    remaining = remaining.filter(alive);
  }
  for (const pid of remaining) signal(pid, "SIGKILL");
  const killDeadline = Date.now() + 2000;
  while (remaining.length > 0 && Date.now() < killDeadline) {
    await sleep(20);
    remaining = remaining.filter(alive);
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** The last `lines` lines of a log file, for a message about the process that wrote it. */
export function logTail(path: string, lines = 20): string {
  try {
    return readFileSync(path, "utf8").trimEnd().split("\n").slice(-lines).join("\n");
  } catch {
    return `(no log at ${path})`;
  }
}
