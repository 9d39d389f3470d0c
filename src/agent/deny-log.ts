/**
 * The policy deny log: the policy table logs the first packets of each connection it drops to an
 * nflog group of the node's network namespace (at most a few a second per denying policy, in the
 * kernel), `trellis-nft-batch --nflog` reads them, and this writes one JSON line per denied
 * connection: the policy that denied it, the direction, the protocol, and both ends with their
 * ports and pods. A connection's retries are one line (the same five-tuple within a minute).
 */
import { spawn, type ChildProcessWithoutNullStreams } from "node:child_process";
import { createInterface } from "node:readline";
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
}

export interface DenyLog {
  stop(): void;
}

export function startDenyLog(options: DenyLogOptions): DenyLog {
  let child: ChildProcessWithoutNullStreams | undefined;
  let stopped = false;
  let retryMs = 1_000;
  let timer: NodeJS.Timeout | undefined;
  const seen = new Map<string, number>();
  let second = 0;
  let linesThisSecond = 0;
  let suppressed = 0;

  const line = (text: string) => {
    const parsed = parseLine(text);
    if (!parsed) return;
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

  const start = () => {
    if (stopped) return;
    const reader = spawn(options.reader, ["--nflog", String(options.group)], { stdio: ["pipe", "pipe", "pipe"] });
    child = reader;
    let stderr = "";
    reader.stderr.on("data", (chunk: Buffer) => (stderr = (stderr + chunk.toString("utf8")).slice(-1000)));
    createInterface({ input: reader.stdout }).on("line", (text) => {
      retryMs = 1_000;
      line(text);
    });
    reader.on("error", (error) => (stderr += String(error)));
    reader.on("close", (code) => {
      if (child === reader) child = undefined;
      if (stopped) return;
      options.log("warn", "the policy deny log stopped; starting it again", { reader: options.reader, group: options.group, exitCode: code, error: stderr.trim(), retryInSeconds: retryMs / 1000 });
      timer = setTimeout(start, retryMs);
      retryMs = Math.min(retryMs * 2, 60_000);
    });
  };
  start();
  return {
    stop() {
      stopped = true;
      clearTimeout(timer);
      child?.kill();
      child = undefined;
    },
  };
}

interface LoggedPacket {
  readonly prefix: string;
  readonly protocol: number;
  readonly from: IpAddress;
  readonly sport: number;
  readonly to: IpAddress;
  readonly dport: number;
}

/** One line of `trellis-nft-batch --nflog`: PREFIX FAMILY PROTOCOL SOURCE SPORT DESTINATION DPORT. */
export function parseLine(text: string): LoggedPacket | undefined {
  const fields = text.split(" ");
  if (fields.length !== 7) return undefined;
  const [prefix, familyText, protocol, from, sport, to, dport] = fields;
  const family = familyText === "4" ? 4 : familyText === "6" ? 6 : undefined;
  if (!family || !/^[A-Za-z0-9_.\/-]{1,127}$/.test(prefix)) return undefined;
  const address = (hex: string): IpAddress | undefined => (new RegExp(`^[0-9a-f]{${family === 4 ? 8 : 32}}$`).test(hex) ? { family, value: BigInt(`0x${hex}`) } : undefined);
  const numbers = [protocol, sport, dport].map(Number);
  const source = address(from);
  const destination = address(to);
  if (!source || !destination || numbers.some((n) => !Number.isInteger(n) || n < 0 || n > 65535)) return undefined;
  return { prefix, protocol: numbers[0], from: source, sport: numbers[1], to: destination, dport: numbers[2] };
}
