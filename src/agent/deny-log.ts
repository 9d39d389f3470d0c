/**
 * The policy deny log: the policy table logs the first packets of each connection it drops to an
 * nflog group of the node's network namespace (at most a few a second per denying policy, in the
 * kernel), `trellis-nft-batch --nflog` reads them, and this writes one JSON line per denied
 * connection: the policy that denied it, the direction, the protocol, and both ends with their
 * ports and pods. A connection's retries are one line (the same five-tuple within a minute).
 */
import { followNflog, type LoggedPacket } from "../linux/nflog.js";
import { formatIp, type IpAddress } from "../net/ip.js";
import type { Denial } from "../policy/rules.js";
import type { Logger } from "./log.js";

/** The nflog group the policy table logs to (per network namespace). */
export const POLICY_NFLOG_GROUP = 2709;
/** Packets a second each denying policy logs at most (the kernel's limit; twice as many in a burst). */
export const POLICY_LOG_RATE = 10;
/** Lines a second the agent writes at most, over every policy. */
const MAX_LINES_PER_SECOND = 100;
const SAME_CONNECTION_MS = 60_000;
const MAX_REMEMBERED = 10_000;

const PROTOCOLS: Record<number, string> = { 1: "ICMP", 6: "TCP", 17: "UDP", 58: "ICMPv6", 132: "SCTP" };

export interface DenyLogOptions {
  /** trellis-nft-batch. */
  readonly reader: string;
  readonly group: number;
  readonly log: Logger;
  /** What a log prefix (a counter's name) stands for; undefined for one the rules no longer hold. */
  denial(prefix: string): Denial | undefined;
  /** The pod at an address, as the policy loop knows it. */
  pod(address: IpAddress): { readonly namespace: string; readonly name: string } | undefined;
  /** Every logged packet, before the log's own dedupe and cap (the flow records). */
  seen?(packet: LoggedPacket, denial: Denial | undefined): void;
}

export interface DenyLog {
  stop(): void;
}

export function startDenyLog(options: DenyLogOptions): DenyLog {
  const seen = new Map<string, number>();
  let second = 0;
  let linesThisSecond = 0;
  let suppressed = 0;

  const line = (parsed: LoggedPacket) => {
    options.seen?.(parsed, options.denial(parsed.prefix));
    const now = Date.now();
    const key = `${parsed.prefix} ${parsed.protocol} ${formatIp(parsed.from)} ${parsed.sport} ${formatIp(parsed.to)} ${parsed.dport}`;
    const last = seen.get(key);
    if (last !== undefined && now - last < SAME_CONNECTION_MS) return;
    seen.delete(key);
    seen.set(key, now);
    if (seen.size > MAX_REMEMBERED) seen.delete(seen.keys().next().value!);
    if (Math.floor(now / 1000) !== second) {
      second = Math.floor(now / 1000);
      linesThisSecond = 0;
    }
    if (++linesThisSecond > MAX_LINES_PER_SECOND) {
      suppressed++;
      return;
    }
    const denial = options.denial(parsed.prefix);
    const end = (address: IpAddress, port: number) => {
      const pod = options.pod(address);
      return { address: formatIp(address), ...(port ? { port } : {}), ...(pod ? { pod: `${pod.namespace}/${pod.name}`, namespace: pod.namespace } : {}) };
    };
    options.log("info", "policy denied a connection", {
      policy: denial?.policy ?? "(rules since changed)",
      direction: denial?.direction.toLowerCase() ?? "unknown",
      protocol: PROTOCOLS[parsed.protocol] ?? String(parsed.protocol),
      from: end(parsed.from, parsed.sport),
      to: end(parsed.to, parsed.dport),
      ...(suppressed ? { notLoggedBefore: suppressed } : {}),
    });
    suppressed = 0;
  };

  const reader = followNflog(options.reader, options.group, line, (why, retryInMs) =>
    options.log("warn", "the policy deny log stopped; starting it again", { reader: options.reader, group: options.group, error: why, retryInSeconds: retryInMs / 1000 }));
  return { stop: () => reader.stop() };
}
