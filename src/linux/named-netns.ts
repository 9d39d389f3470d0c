/**
 * Named network namespaces (`ip netns`), the ones a person can enter by name: the lab's
 * underlay, nodes, pods and external host. Creating, listing, finding the processes inside,
 * deleting, and setting a namespace's sysctls.
 */
import { readdirSync } from "node:fs";
import { CommandError, run } from "./exec.js";

export const NAMED_NETNS_DIR = "/var/run/netns";

export function namedNetnsPath(name: string): string {
  return `${NAMED_NETNS_DIR}/${name}`;
}

/** Names of every named namespace on the machine. */
export function listNamedNetns(): string[] {
  try {
    return readdirSync(NAMED_NETNS_DIR);
  } catch {
    return [];
  }
}

/** Creates a namespace with its loopback up. */
export async function addNamedNetns(name: string): Promise<void> {
  await run("ip", ["netns", "add", name]);
  await run("ip", ["-n", name, "link", "set", "lo", "up"]);
}

/** Deletes a namespace; one that is already gone is fine. */
export async function deleteNamedNetns(name: string): Promise<void> {
  try {
    await run("ip", ["netns", "del", name]);
  } catch (error) {
    if (!(error instanceof CommandError && /No such file or directory/.test(error.stderr))) throw error;
  }
}

/** Processes whose network namespace this is; none when the namespace is gone. */
export async function namedNetnsPids(name: string): Promise<number[]> {
  try {
    const { stdout } = await run("ip", ["netns", "pids", name]);
    return stdout.split("\n").filter((line) => /^[0-9]+$/.test(line.trim())).map(Number);
  } catch {
    return [];
  }
}

/** Sets sysctls (such as `net.ipv4.ip_forward`) inside the namespace at `netnsPath`. */
export async function setNetnsSysctls(netnsPath: string, values: Readonly<Record<string, string>>): Promise<void> {
  const words = Object.entries(values).map(([key, value]) => {
    if (!/^[a-z0-9_.-]+$/.test(key) || !/^[0-9]+$/.test(value)) throw new Error(`refusing sysctl ${JSON.stringify(key)}=${JSON.stringify(value)}: not a plain key and number`);
    return `${key}=${value}`;
  });
  if (words.length > 0) await run("sysctl", ["-q", "-w", ...words], { netns: netnsPath });
}
