/** sysctl through /proc/sys: applies to the network namespace of this process. */
import { readFileSync, writeFileSync } from "node:fs";

export function readSysctl(key: string): string {
  return readFileSync(sysctlPath(key), "utf8").trim();
}

/** Sets a sysctl if it differs; returns whether it changed. */
export function ensureSysctl(key: string, value: string): boolean {
  if (readSysctl(key) === value) return false;
  writeFileSync(sysctlPath(key), value);
  return true;
}

function sysctlPath(key: string): string {
  return `/proc/sys/${key.replaceAll(".", "/")}`;
}
