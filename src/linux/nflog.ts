/**
 * Packets logged to an nflog group of this network namespace (`log group N` statements), as
 * `trellis-nft-batch --nflog` reads them: the reader is started (again, when it stops), and each
 * packet handed on with the log prefix that named it. One reader per group and namespace: the
 * kernel gives a group to one socket.
 */
import { spawn, type ChildProcessWithoutNullStreams } from "node:child_process";
import { createInterface } from "node:readline";
import type { IpAddress } from "../net/ip.js";

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

export interface NflogReader {
  stop(): void;
}

/** Reads nflog `group` until `stop`: each packet to `packet`; a stop of the reader to `stopped`, and it starts again after `retryInMs`. */
export function followNflog(reader: string, group: number, packet: (packet: LoggedPacket) => void, stopped: (why: string, retryInMs: number) => void): NflogReader {
  let child: ChildProcessWithoutNullStreams | undefined;
  let done = false;
  let retryMs = 1_000;
  let timer: NodeJS.Timeout | undefined;
  const start = () => {
    if (done) return;
    // Its stdin stays open: the reader exits when it closes, so a kill -9 of the agent frees the group at once.
    const process = spawn(reader, ["--nflog", String(group)], { stdio: ["pipe", "pipe", "pipe"] });
    child = process;
    let stderr = "";
    process.stderr.on("data", (chunk: Buffer) => (stderr = (stderr + chunk.toString("utf8")).slice(-1000)));
    createInterface({ input: process.stdout }).on("line", (text) => {
      retryMs = 1_000;
      const parsed = parseLine(text);
      if (parsed) packet(parsed);
    });
    process.on("error", (error) => (stderr += String(error)));
    process.on("close", (code) => {
      if (child === process) child = undefined;
      if (done) return;
      stopped(`exit ${code}: ${stderr.trim()}`, retryMs);
      timer = setTimeout(start, retryMs);
      retryMs = Math.min(retryMs * 2, 60_000);
    });
  };
  start();
  return {
    stop() {
      done = true;
      clearTimeout(timer);
      child?.kill();
      child = undefined;
    },
  };
}
