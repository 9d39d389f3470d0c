/**
 * Control groups by path, in every hierarchy the machine mounts (cgroup v1's one per controller,
 * and v2's unified one): making a group in each, listing every process in a group's subtree,
 * and removing the subtree once it is empty. The lab gives each real node one subtree, so that
 * what its runtime started (containers, shims) can be found and stopped without a pid file.
 */
import { existsSync, readdirSync, readFileSync, rmdirSync, mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";

export interface CgroupHierarchy {
  readonly mountPoint: string;
  readonly version: 1 | 2;
  /** v1: the controllers (`cpu`, `memory`, `name=systemd`); v2: empty. */
  readonly controllers: readonly string[];
}

/** Every cgroup hierarchy mounted in this process's mount namespace. */
export function cgroupHierarchies(mountinfo = readFileSync("/proc/self/mountinfo", "utf8")): CgroupHierarchy[] {
  const found: CgroupHierarchy[] = [];
  for (const line of mountinfo.split("\n")) {
    const [left, right] = line.split(" - ");
    if (!right) continue;
    const [type, , superOptions] = right.split(" ");
    if (type !== "cgroup" && type !== "cgroup2") continue;
    const mountPoint = left.split(" ")[4].replace(/\\040/g, " ");
    const controllers = type === "cgroup" ? superOptions.split(",").filter((option) => option !== "rw" && option !== "ro" && !option.startsWith("release_agent")) : [];
    found.push({ mountPoint, version: type === "cgroup" ? 1 : 2, controllers });
  }
  return found;
}

/** Whether the machine runs cgroup v1 (alone or beside an unused v2 hierarchy). */
export function usesCgroupV1(hierarchies = cgroupHierarchies()): boolean {
  return hierarchies.some((hierarchy) => hierarchy.version === 1);
}

function checkPath(path: string): void {
  if (!/^\/[A-Za-z0-9._/-]+$/.test(path) || path.split("/").some((part) => part === "." || part === "..")) {
    throw new Error(`cgroup path ${JSON.stringify(path)} is not an absolute path of letters, digits, ".", "_" and "-"`);
  }
}

/**
 * Makes `path` in every v1 hierarchy (each level of it, so a cpuset group gets its parent's CPUs
 * and memory nodes, which a new cpuset lacks). Returns the `cgroup.procs` files a process writes
 * its pid to, to join the group everywhere.
 */
export function createCgroup(path: string, hierarchies = cgroupHierarchies()): string[] {
  checkPath(path);
  const procs: string[] = [];
  for (const hierarchy of hierarchies.filter((candidate) => candidate.version === 1)) {
    let current = hierarchy.mountPoint;
    for (const part of path.split("/").filter(Boolean)) {
      const parent = current;
      current = join(current, part);
      if (!existsSync(current)) mkdirSync(current);
      if (hierarchy.controllers.includes("cpuset")) {
        for (const file of ["cpuset.cpus", "cpuset.mems"]) {
          if (readFileSync(join(current, file), "utf8").trim() === "") writeFileSync(join(current, file), readFileSync(join(parent, file), "utf8"));
        }
      }
    }
    procs.push(join(current, "cgroup.procs"));
  }
  return procs;
}

/** The pids in `path` and every group below it, in any hierarchy. */
export function cgroupPids(path: string, hierarchies = cgroupHierarchies()): number[] {
  checkPath(path);
  const pids = new Set<number>();
  const walk = (dir: string): void => {
    let entries;
    try {
      entries = readdirSync(dir, { withFileTypes: true });
    } catch {
      return;
    }
    try {
      for (const line of readFileSync(join(dir, "cgroup.procs"), "utf8").split("\n")) if (/^[0-9]+$/.test(line)) pids.add(Number(line));
    } catch {
      // removed meanwhile
    }
    for (const entry of entries) if (entry.isDirectory()) walk(join(dir, entry.name));
  };
  for (const hierarchy of hierarchies) walk(join(hierarchy.mountPoint, path));
  return [...pids];
}

/**
 * Removes `path` and every group below it from every hierarchy, deepest first; a group that still
 * holds a process stays, and is named in the returned list.
 */
export function removeCgroup(path: string, hierarchies = cgroupHierarchies()): string[] {
  checkPath(path);
  const left: string[] = [];
  const remove = (dir: string): void => {
    let entries;
    try {
      entries = readdirSync(dir, { withFileTypes: true });
    } catch {
      return;
    }
    for (const entry of entries) if (entry.isDirectory()) remove(join(dir, entry.name));
    try {
      rmdirSync(dir);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "ENOENT") left.push(dir);
    }
  };
  for (const hierarchy of hierarchies) remove(join(hierarchy.mountPoint, path));
  return left;
}
