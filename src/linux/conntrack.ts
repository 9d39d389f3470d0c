/** conntrack: deleting the flows a changed Service leaves behind (conntrack-tools' `conntrack -D`). */
import { formatIp, type IpAddress } from "../net/ip.js";
import { CommandError, run } from "./exec.js";

export interface ConntrackFilter {
  readonly protocol: "udp" | "tcp" | "sctp";
  readonly family: 4 | 6;
  /** The address the client sent to (a ClusterIP, external IP). */
  readonly origDst?: IpAddress;
  /** The port the client sent to. */
  readonly origPortDst?: number;
  /** The address that answers (the endpoint the flow was DNAT'ed to). */
  readonly replySrc?: IpAddress;
}

/** The argument vector of `conntrack -D` for a filter. */
export function conntrackDeleteArgs(filter: ConntrackFilter): string[] {
  const port = filter.origPortDst;
  if (port !== undefined && (!Number.isInteger(port) || port < 1 || port > 65535)) throw new Error(`conntrack: port ${port} is not from 1 to 65535`);
  return [
    "-D", "-f", filter.family === 4 ? "ipv4" : "ipv6", "-p", filter.protocol,
    ...(filter.origDst ? ["--orig-dst", formatIp(filter.origDst)] : []),
    ...(port !== undefined ? ["--dport", String(port)] : []),
    ...(filter.replySrc ? ["--reply-src", formatIp(filter.replySrc)] : []),
  ];
}

/** Deletes the flows matching `filter`; none matching is fine. Returns how many went. */
export async function deleteConntrack(filter: ConntrackFilter): Promise<number> {
  try {
    const { stderr } = await run("conntrack", conntrackDeleteArgs(filter));
    return deletedCount(stderr);
  } catch (error) {
    // conntrack exits 1 when nothing matched.
    if (error instanceof CommandError && /0 flow entries have been deleted/.test(error.stderr)) return 0;
    throw error;
  }
}

function deletedCount(stderr: string): number {
  const match = /(\d+) flow entries have been deleted/.exec(stderr);
  return match ? Number(match[1]) : 0;
}
