/**
 * Hostile TCP clients for tests of the agent's servers: `count` connections opened from inside a
 * test namespace, each sending `payload` (nothing, or half a request) and then holding still,
 * never closing. One child process holds them all and reports how many are
 * connected and how many the server has closed; it is killed by `stop`, or when the test
 * process exits.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { readdirSync } from "node:fs";
import { connect, type Socket } from "node:net";
import type { TestNetns } from "./netns.js";

export interface FloodCounts {
  /** Connections that were established. */
  readonly connected: number;
  /** Of those, the ones the server has not closed. */
  readonly open: number;
  /** Connections that could not be made (refused, reset before established). */
  readonly failed: number;
}

export interface ConnectionFlood {
  counts(): FloodCounts;
  /** Resolves once every connection was made or failed. */
  readonly settled: Promise<FloodCounts>;
  stop(): void;
}

// Opens up to 200 at a time; prints its counts as a JSON line whenever they change (at most
// every 20 ms). A socket that is closed by the server is never opened again.
const SCRIPT = `
const net = require("net");
const [host, port, count, payload] = [process.argv[1], Number(process.argv[2]), Number(process.argv[3]), process.argv[4]];
let connected = 0, open = 0, failed = 0, started = 0, inFlight = 0, last = "";
const report = () => { const line = JSON.stringify({ connected, open, failed }); if (line !== last) { last = line; process.stdout.write(line + "\\n"); } };
setInterval(report, 20);
const next = () => {
  while (inFlight < 200 && started < count) {
    started++; inFlight++;
    let up = false;
    const socket = net.connect({ host, port });
    socket.on("connect", () => { up = true; connected++; open++; inFlight--; if (payload) socket.write(payload); next(); });
    socket.on("error", () => undefined);
    socket.on("close", () => { if (up) open--; else { failed++; inFlight--; next(); } });
    // Read (and drop) whatever comes, or the server's closing would go unnoticed.
    socket.resume();
  }
};
next();
`;

const children = new Set<ChildProcess>();

/** Opens `count` connections to `host`:`port` from `netns`, each sending `payload` then nothing more. */
export function startConnectionFlood(netns: TestNetns, host: string, port: number, count: number, payload = ""): ConnectionFlood {
  const child = spawn("nsenter", [`--net=${netns.path}`, process.execPath, "-e", SCRIPT, host, String(port), String(count), payload], { stdio: ["ignore", "pipe", "inherit"] });
  children.add(child);
  child.once("exit", () => children.delete(child));
  let counts: FloodCounts = { connected: 0, open: 0, failed: 0 };
  let buffered = "";
  let settle!: (counts: FloodCounts) => void;
  const settled = new Promise<FloodCounts>((resolve, reject) => {
    settle = resolve;
    child.once("exit", (code, signal) => reject(new Error(`the connection flood ended (${signal ?? code}) at ${JSON.stringify(counts)}`)));
  });
  settled.catch(() => undefined);
  child.stdout!.on("data", (chunk: Buffer) => {
    buffered += chunk.toString("utf8");
    const lines = buffered.split("\n");
    buffered = lines.pop()!;
    for (const line of lines) counts = JSON.parse(line) as FloodCounts;
    if (counts.connected + counts.failed >= count) settle(counts);
  });
  return {
    counts: () => counts,
    settled,
    stop: () => {
      child.kill("SIGKILL");
    },
  };
}

/** How many descriptors process `pid` holds open now. */
export function openDescriptors(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}

/** Samples `pid`'s descriptors every 10 ms until `until` settles; resolves with the most seen. */
export async function mostDescriptorsWhile(pid: number, until: Promise<unknown>): Promise<number> {
  let most = openDescriptors(pid);
  let done = false;
  void until.finally(() => (done = true)).catch(() => undefined);
  while (!done) {
    most = Math.max(most, openDescriptors(pid));
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  return Math.max(most, openDescriptors(pid));
}

process.on("exit", () => {
  for (const child of children) child.kill("SIGKILL");
});

/**
 * One client on loopback that connects, sends `payload` (nothing, or half a request) and then
 * holds still; `closed` settles when the server closes it. It is added to `clients`, for the
 * test to destroy after.
 */
export async function stalledClient(port: number, clients: Socket[], payload = ""): Promise<{ socket: Socket; closed: Promise<void>; isClosed: () => boolean }> {
  const socket = connect(port, "127.0.0.1");
  clients.push(socket);
  socket.on("error", () => undefined);
  socket.resume();
  const closed = new Promise<void>((resolve) => socket.once("close", () => resolve()));
  await new Promise<void>((resolve) => socket.once("connect", () => resolve()));
  if (payload) socket.write(payload);
  return { socket, closed, isClosed: () => socket.destroyed };
}
