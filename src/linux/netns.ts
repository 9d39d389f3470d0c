/**
 * Network namespaces named by a path (CNI_NETNS). The path is opened once and checked to be a
 * namespace; commands then reach it through the open descriptor, never through the path, so
 * a path holding spaces, newlines or command text is only ever a file name.
 */
import { closeSync, fstatSync, openSync, statSync } from "node:fs";

export interface NetnsHandle {
  /** The path it was opened from, for messages. */
  readonly path: string;
  readonly fd: number;
  close(): void;
}

export type NetnsProblem = "missing" | "not-a-namespace";

export class NetnsError extends Error {
  constructor(
    readonly problem: NetnsProblem,
    message: string,
  ) {
    super(message);
  }
}

/** Opens the namespace at `path`; the handle keeps it alive until closed. */
export function openNetns(path: string): NetnsHandle {
  let fd: number;
  try {
    fd = openSync(path, "r");
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === "ENOENT" || code === "ENOTDIR") throw new NetnsError("missing", `${path} does not exist`);
    throw new NetnsError("not-a-namespace", `${path} cannot be opened: ${(error as Error).message}`);
  }
  try {
    // Every namespace file lives on the kernel's nsfs, whose device this process's own shows.
    if (fstatSync(fd).dev !== statSync("/proc/self/ns/net").dev) throw new NetnsError("not-a-namespace", `${path} is not a network namespace`);
  } catch (error) {
    closeSync(fd);
    throw error;
  }
  let open = true;
  return {
    path,
    fd,
    close: () => {
      if (open) closeSync(fd);
      open = false;
    },
  };
}

/** Whether `path` is a namespace file now (DEL and CHECK only look). */
export function netnsExists(path: string): boolean {
  try {
    openNetns(path).close();
    return true;
  } catch {
    return false;
  }
}
