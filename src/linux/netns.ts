/**
 * Network namespaces named by a path (CNI_NETNS). The path is opened once and checked to be a
 * network namespace; commands then reach it through the open descriptor, never through the path,
 * so a path holding spaces, newlines or command text is only ever a file name.
 */
import { closeSync, fstatSync, openSync, readFileSync, readlinkSync, statSync } from "node:fs";

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

/** Opens the network namespace at `path`; the handle keeps it alive until closed. */
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
    const stat = fstatSync(fd);
    // Every namespace file lives on the kernel's nsfs, whose device this process's own shows.
    if (stat.dev !== statSync("/proc/self/ns/net").dev) throw new NetnsError("not-a-namespace", `${path} is not a network namespace`);
    const type = namespaceType(fd, stat.ino);
    if (type === undefined) throw new NetnsError("not-a-namespace", `${path} is a namespace whose type cannot be read, so it is not taken for a network namespace`);
    if (type !== "net") throw new NetnsError("not-a-namespace", `${path} is a ${type} namespace, not a network namespace`);
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

/**
 * The type ("net", "mnt", "pid", …) of the namespace an open nsfs file is, read from the
 * descriptor alone: Node cannot issue the NS_GET_NSTYPE ioctl. A namespace file reached through
 * /proc reads back as `net:[4026531992]`; a bind mount of one (`ip netns add`'s
 * /run/netns/NAME) reads back as its own path, and its mount, found by the descriptor's
 * mnt_id, has the `net:[…]` form as its root in mountinfo.
 */
function namespaceType(fd: number, ino: number): string | undefined {
  const own = nsfsName(readlinkSync(`/proc/self/fd/${fd}`), ino);
  if (own) return own;
  const mountId = /^mnt_id:\s*(\d+)$/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, "utf8"))?.[1];
  if (mountId === undefined) return undefined;
  for (const line of readFileSync("/proc/self/mountinfo", "utf8").split("\n")) {
    // "46 45 0:4 net:[4026532174] /run/netns/pod rw shared:2 - nsfs nsfs rw": id, parent, device, root, …
    const [id, , , root] = line.split(" ", 4);
    if (id === mountId) return line.includes(" - nsfs ") ? nsfsName(root ?? "", ino) : undefined;
  }
  return undefined;
}

/** "net" for `net:[4026531992]` naming inode `ino`; undefined for anything else (a path starts with "/"). */
function nsfsName(text: string, ino: number): string | undefined {
  const match = /^([a-z_]+):\[(\d+)\]$/.exec(text);
  return match && Number(match[2]) === ino ? match[1] : undefined;
}
