/**
 * Packets logged to an nflog group of this network namespace (`log group N` statements), as
 * `trellis-nft-batch --nflog` reads them: the reader is started (again, when it stops), and each
 * packet handed on with the log prefix that named it. One reader per group and namespace: the
 * kernel gives a group to one socket.
 */
import type { IpAddress } from "../net/ip.js";
import { keepReading, type KeptReader } from "./reader.js";

export interface LoggedPacket {
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

export type NflogReader = KeptReader;

/** Reads nflog `group` until `stop`: each packet to `packet`; a stop of the reader to `stopped`, and it starts again after `retryInMs`. */
export function followNflog(reader: string, group: number, packet: (packet: LoggedPacket) => void, stopped: (why: string, retryInMs: number) => void): NflogReader {
  return keepReading(reader, ["--nflog", String(group)], () => {
    /** A line split between two chunks: its first part. */
    let partial = "";
    return (chunk) => {
      const lines = (partial + chunk.toString("utf8")).split("\n");
      partial = lines.pop()!.slice(0, 4096);
      for (const line of lines) {
        const parsed = parseLine(line);
        if (parsed) packet(parsed);
      }
    };
  }, stopped);
}
