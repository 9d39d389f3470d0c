/**
 * conntrack's events as they happen: `trellis-nft-batch --conntrack` listens to the network
 * namespace's new, update and destroy events over netlink and writes a line each; this starts it
 * (again, when it stops), parses the lines and hands on each event, and counts what was lost
 * (the kernel drops events while the reader falls behind, and says so; never silently).
 */
import { spawn, type ChildProcessWithoutNullStreams } from "node:child_process";
import type { IpAddress } from "../net/ip.js";

export type ConntrackEventKind = "new" | "update" | "destroy";

export interface ConntrackTuple {
  readonly source: IpAddress;
  readonly sport: number;
  readonly destination: IpAddress;
  readonly dport: number;
}

export interface ConntrackEvent {
  readonly kind: ConntrackEventKind;
  readonly family: 4 | 6;
  /** The IP protocol number. */
  readonly protocol: number;
  /** As the initiator sent it. */
  readonly original: ConntrackTuple;
  /** As the answer comes back: its source is where a DNAT sent the connection. */
  readonly reply: ConntrackTuple;
  /** Original direction, then reply; zeros where the namespace does not count (nf_conntrack_acct 0). */
  readonly packets: readonly [number, number];
  readonly bytes: readonly [number, number];
  /** conntrack's status bits (IPS_*). */
  readonly status: number;
  /** conntrack's id of the connection: the same in its new, update and destroy events. */
  readonly id: number;
}

/** IPS_SEEN_REPLY: the connection was answered. */
export const STATUS_SEEN_REPLY = 1 << 1;
/** IPS_DST_NAT: its destination was translated (a Service's DNAT). */
export const STATUS_DST_NAT = 1 << 5;

const KINDS: ReadonlySet<string> = new Set(["new", "update", "destroy"]);

/** One line of `trellis-nft-batch --conntrack`; "lost" for the kernel's word that events were dropped; undefined for anything malformed. */
export function parseConntrackLine(text: string): ConntrackEvent | "lost" | undefined {
  if (text === "lost") return "lost";
  const fields = text.split(" ");
  if (fields.length !== 17 || !KINDS.has(fields[0])) return undefined;
  const family = fields[1] === "4" ? 4 : fields[1] === "6" ? 6 : undefined;
  if (!family) return undefined;
  const hexLength = family === 4 ? 8 : 32;
  const address = (hex: string): IpAddress | undefined => (hex.length === hexLength && /^[0-9a-f]+$/.test(hex) ? { family, value: BigInt(`0x${hex}`) } : undefined);
  const number = (digits: string, max: number): number | undefined => {
    if (!/^[0-9]{1,20}$/.test(digits)) return undefined;
    const value = Number(digits);
    return value <= max ? value : undefined;
  };
  const tuple = (at: number): ConntrackTuple | undefined => {
    const source = address(fields[at]);
    const sport = number(fields[at + 1], 65535);
    const destination = address(fields[at + 2]);
    const dport = number(fields[at + 3], 65535);
    return source && destination && sport !== undefined && dport !== undefined ? { source, sport, destination, dport } : undefined;
  };
  const protocol = number(fields[2], 255);
  const original = tuple(3);
  const reply = tuple(7);
  const counts = fields.slice(11, 15).map((field) => number(field, Number.MAX_SAFE_INTEGER));
  const status = number(fields[15], 0xffffffff);
  const id = number(fields[16], 0xffffffff);
  if (protocol === undefined || !original || !reply || counts.some((count) => count === undefined) || status === undefined || id === undefined) return undefined;
  const [packetsOut, bytesOut, packetsBack, bytesBack] = counts as number[];
  return { kind: fields[0] as ConntrackEventKind, family, protocol, original, reply, packets: [packetsOut, packetsBack], bytes: [bytesOut, bytesBack], status, id };
}

export interface ConntrackEventsOptions {
  /** trellis-nft-batch. */
  readonly reader: string;
  readonly kinds: readonly ConntrackEventKind[];
  /** Each event, in the order the kernel sent them. */
  event(event: ConntrackEvent): void;
  /** The kernel dropped events (at least one) because the reader was behind. */
  lost(): void;
  /** The reader stopped (it is started again after `retryInMs`). */
  stopped(why: string, retryInMs: number): void;
}

export interface ConntrackEvents {
  /** Lines of the reader that were not events (a bug in one side or the other). */
  malformed(): number;
  stop(): void;
}

/** Starts the reader in this process's network namespace; it runs (started again when it stops) until `stop`. */
export function followConntrack(options: ConntrackEventsOptions): ConntrackEvents {
  let child: ChildProcessWithoutNullStreams | undefined;
  let stopped = false;
  let retryMs = 1_000;
  let timer: NodeJS.Timeout | undefined;
  let malformed = 0;
  const start = () => {
    if (stopped) return;
    // Its stdin stays open: the reader exits when it closes, so a kill -9 of the agent ends it too.
    const reader = spawn(options.reader, ["--conntrack", options.kinds.join(",")], { stdio: ["pipe", "pipe", "pipe"] });
    child = reader;
    let stderr = "";
    let partial = "";
    reader.stderr.on("data", (chunk: Buffer) => (stderr = (stderr + chunk.toString("utf8")).slice(-1000)));
    // Lines are split here rather than by readline: tens of thousands a second come in chunks.
    reader.stdout.on("data", (chunk: Buffer) => {
      retryMs = 1_000;
      const text = partial + chunk.toString("latin1");
      const lines = text.split("\n");
      partial = lines.pop()!;
      if (partial.length > 4096) partial = "";
      for (const line of lines) {
        const parsed = parseConntrackLine(line);
        if (parsed === "lost") options.lost();
        else if (parsed) options.event(parsed);
        else malformed++;
      }
    });
    reader.on("error", (error) => (stderr += String(error)));
    reader.on("close", (code) => {
      if (child === reader) child = undefined;
      if (stopped) return;
      options.stopped(`exit ${code}: ${stderr.trim()}`, retryMs);
      timer = setTimeout(start, retryMs);
      retryMs = Math.min(retryMs * 2, 60_000);
    });
  };
  start();
  return {
    malformed: () => malformed,
    stop() {
      stopped = true;
      clearTimeout(timer);
      child?.kill();
      child = undefined;
    },
  };
}
