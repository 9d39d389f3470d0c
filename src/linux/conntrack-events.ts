/**
 * conntrack's events as they happen: `trellis-nft-batch --conntrack` listens to the network
 * namespace's new, update and destroy events over netlink and writes a fixed-size binary record
 * each (native/nft-batch.c, CONNTRACK_RECORD); this starts it (again, when it stops) and hands
 * on each record where it lies in the stream, without copying or parsing it: a busy node makes
 * tens of thousands a second. `decodeConntrackRecord` reads one whole.
 */
import { parseIp, type IpAddress } from "../net/ip.js";
import { keepReading, type KeptReader } from "./reader.js";

/** Bytes of one record (see native/nft-batch.c for the layout). */
export const CONNTRACK_RECORD = 116;
/** Where a record's fields are. */
export const RECORD = {
  kind: 0, family: 1, protocol: 2, status: 4, id: 8,
  sport: 12, dport: 14, replySport: 16, replyDport: 18,
  source: 20, destination: 36, replySource: 52, replyDestination: 68,
  packetsOut: 84, bytesOut: 92, packetsBack: 100, bytesBack: 108,
} as const;
/** A record's kind: the kernel dropped events (at least one) because the reader was behind. */
export const KIND_LOST = 255;
export const KINDS = ["", "new", "update", "destroy"] as const;

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

/** The address at `at` of a record (family 4: its first 4 bytes). */
export function recordAddress(buffer: Uint8Array, at: number, family: 4 | 6): IpAddress {
  let value = 0n;
  for (let i = 0; i < (family === 4 ? 4 : 16); i++) value = (value << 8n) | BigInt(buffer[at + i]);
  return { family, value };
}

/** One whole record at `offset`; "lost" for the kernel's word that events were dropped; undefined for anything malformed. */
export function decodeConntrackRecord(buffer: Buffer, offset = 0): ConntrackEvent | "lost" | undefined {
  if (buffer.length - offset < CONNTRACK_RECORD) return undefined;
  const kind = buffer[offset + RECORD.kind];
  if (kind === KIND_LOST) return "lost";
  const family = buffer[offset + RECORD.family];
  if (kind < 1 || kind > 3 || (family !== 4 && family !== 6)) return undefined;
  const tuple = (ports: number, addresses: number): ConntrackTuple => ({
    source: recordAddress(buffer, offset + addresses, family),
    sport: buffer.readUInt16LE(offset + ports),
    destination: recordAddress(buffer, offset + addresses + 16, family),
    dport: buffer.readUInt16LE(offset + ports + 2),
  });
  const counter = (at: number) => Number(buffer.readBigUInt64LE(offset + at));
  return {
    kind: KINDS[kind] as ConntrackEventKind,
    family,
    protocol: buffer[offset + RECORD.protocol],
    original: tuple(RECORD.sport, RECORD.source),
    reply: tuple(RECORD.replySport, RECORD.replySource),
    packets: [counter(RECORD.packetsOut), counter(RECORD.packetsBack)],
    bytes: [counter(RECORD.bytesOut), counter(RECORD.bytesBack)],
    status: buffer.readUInt32LE(offset + RECORD.status),
    id: buffer.readUInt32LE(offset + RECORD.id),
  };
}

/** A record laid out as native/nft-batch.c writes it, from text: for tests, which hold the decoder to the layout. */
export function encodeConntrackRecord(fields: {
  kind: number; protocol: number; from: string; sport: number; to: string; dport: number; replyFrom: string; replySport: number;
  packets?: [number, number]; bytes?: [number, number]; status?: number; id?: number;
}): Buffer {
  const record = Buffer.alloc(CONNTRACK_RECORD);
  const family = parseIp(fields.from).family;
  const address = (text: string, at: number) => {
    const { value } = parseIp(text);
    const size = family === 4 ? 4 : 16;
    for (let i = 0; i < size; i++) record[at + i] = Number((value >> BigInt(8 * (size - 1 - i))) & 255n);
  };
  record[RECORD.kind] = fields.kind;
  record[RECORD.family] = family;
  record[RECORD.protocol] = fields.protocol;
  record.writeUInt32LE(fields.status ?? 0, RECORD.status);
  record.writeUInt32LE(fields.id ?? 0, RECORD.id);
  record.writeUInt16LE(fields.sport, RECORD.sport);
  record.writeUInt16LE(fields.dport, RECORD.dport);
  record.writeUInt16LE(fields.replySport, RECORD.replySport);
  record.writeUInt16LE(fields.sport, RECORD.replyDport);
  address(fields.from, RECORD.source);
  address(fields.to, RECORD.destination);
  address(fields.replyFrom, RECORD.replySource);
  address(fields.from, RECORD.replyDestination);
  record.writeBigUInt64LE(BigInt(fields.packets?.[0] ?? 0), RECORD.packetsOut);
  record.writeBigUInt64LE(BigInt(fields.bytes?.[0] ?? 0), RECORD.bytesOut);
  record.writeBigUInt64LE(BigInt(fields.packets?.[1] ?? 0), RECORD.packetsBack);
  record.writeBigUInt64LE(BigInt(fields.bytes?.[1] ?? 0), RECORD.bytesBack);
  return record;
}

export interface ConntrackEventsOptions {
  /** trellis-nft-batch. */
  readonly reader: string;
  readonly kinds: readonly ConntrackEventKind[];
  /** Each record, in the order the kernel sent them, where it lies (valid only during the call); "lost" records included. */
  record(buffer: Buffer, offset: number): void;
  /** The reader stopped (it is started again after `retryInMs`). */
  stopped(why: string, retryInMs: number): void;
}

export type ConntrackEvents = KeptReader;

/** Starts the reader in this process's network namespace; it runs (started again when it stops) until `stop`. */
export function followConntrack(options: ConntrackEventsOptions): ConntrackEvents {
  return keepReading(options.reader, ["--conntrack", options.kinds.join(",")], () => {
    /** A record split between two chunks: its first part. */
    let partial: Buffer | undefined;
    return (chunk) => {
      let data = chunk;
      if (partial) {
        data = Buffer.concat([partial, chunk]);
        partial = undefined;
      }
      const whole = data.length - (data.length % CONNTRACK_RECORD);
      for (let offset = 0; offset < whole; offset += CONNTRACK_RECORD) options.record(data, offset);
      if (whole < data.length) partial = Buffer.from(data.subarray(whole));
    };
  }, options.stopped);
}
