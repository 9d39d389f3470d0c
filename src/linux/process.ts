/** Processes by identity: a pid with its start time, so a reused pid is never taken for the process it replaced. */
import { readFileSync } from "node:fs";

export interface ProcessIdentity {
  readonly pid: number;
  /** Field 22 of /proc/PID/stat (clock ticks since boot). */
  readonly startTime: string;
}

export function ownProcess(): ProcessIdentity {
  return { pid: process.pid, startTime: readProcStat(process.pid)?.startTime ?? "0" };
}

/** Whether that very process still runs (a zombie does not count). Only meaningful on this machine, this boot. */
export function processRunning(identity: ProcessIdentity): boolean {
  const stat = readProcStat(identity.pid);
  return stat !== undefined && stat.startTime === identity.startTime && stat.state !== "Z" && stat.state !== "X";
}

/** This boot of this machine: equal across processes only on the same machine since the same boot. */
export function bootId(): string {
  return readFileSync("/proc/sys/kernel/random/boot_id", "utf8").trim();
}

/** Fields 3 (state) and 22 (start time) of /proc/PID/stat; the command name may hold spaces and parentheses. */
function readProcStat(pid: number): { state: string; startTime: string } | undefined {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, "utf8");
  } catch {
    return undefined;
  }
  const fields = text.slice(text.lastIndexOf(")") + 2).split(" ");
  return { state: fields[0], startTime: fields[19] };
}
