/**
 * Throw-away network namespaces for tests. Names carry the test process's pid so parallel
 * test files never collide; everything made here is removed by `removeAll`, and leftovers of
 * dead test processes are swept by `sweepStaleNamespaces`.
 */
import { execFileSync } from "node:child_process";
import { readdirSync } from "node:fs";

export interface TestNetns {
  readonly name: string;
  /** `/var/run/netns/NAME`, what CNI_NETNS and `nsenter --net=` take. */
  readonly path: string;
}

const PREFIX = "trt";

const removalHooks: Array<(ns: TestNetns) => void> = [];

/** Runs `hook` before a namespace of any pool is deleted (e.g. to stop a process serving it). */
export function onNetnsRemoved(hook: (ns: TestNetns) => void): void {
  removalHooks.push(hook);
}

function beforeRemoval(ns: TestNetns): void {
  for (const hook of removalHooks) hook(ns);
}

export class NetnsPool {
  private readonly made: TestNetns[] = [];
  private counter = 0;

  /** Creates a namespace with `lo` up. */
  create(role: string): TestNetns {
    const name = `${PREFIX}${process.pid}-${role}${this.counter++}`.slice(0, 60);
    execFileSync("ip", ["netns", "add", name]);
    const ns = { name, path: `/var/run/netns/${name}` };
    this.made.push(ns);
    execFileSync("ip", ["-n", name, "link", "set", "lo", "up"]);
    return ns;
  }

  /** Deletes one namespace now (e.g. to test DEL after the netns is gone). */
  remove(ns: TestNetns): void {
    beforeRemoval(ns);
    execFileSync("ip", ["netns", "del", ns.name], { stdio: "ignore" });
    const index = this.made.indexOf(ns);
    if (index >= 0) this.made.splice(index, 1);
  }

  removeAll(): void {
    for (const ns of this.made.splice(0)) {
      beforeRemoval(ns);
      try {
        execFileSync("ip", ["netns", "del", ns.name], { stdio: "ignore" });
      } catch {
        // already gone
      }
    }
  }
}

/** Runs a command inside a namespace and returns its stdout. */
export function inNetns(ns: TestNetns, command: string, args: string[], options: { input?: string; timeoutMs?: number } = {}): string {
  return execFileSync("nsenter", [`--net=${ns.path}`, command, ...args], {
    encoding: "utf8",
    input: options.input,
    timeout: options.timeoutMs ?? 30_000,
  });
}

/** Removes namespaces left by test processes that no longer exist. */
export function sweepStaleNamespaces(): void {
  let names: string[] = [];
  try {
    names = readdirSync("/var/run/netns");
  } catch {
    return;
  }
  for (const name of names) {
    const match = new RegExp(`^${PREFIX}(\\d+)-`).exec(name);
    if (!match || processAlive(Number(match[1]))) continue;
    try {
      execFileSync("ip", ["netns", "del", name], { stdio: "ignore" });
    } catch {
      // raced with another sweeper
    }
  }
}

/** Whether a process with this pid exists (signal 0 probes without sending anything). */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}
