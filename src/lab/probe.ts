/**
 * Traffic probes the lab runs inside namespaces, as subcommands of the trellis executable
 * itself. The server answers every TCP connection and every UDP datagram with the source
 * address it saw and its own name: a receiver seeing the sender's own pod IP proves no NAT,
 * and the name proves which pod answered. The clients report that answer, or why there was none.
 */
import { spawn } from "node:child_process";
import { createSocket } from "node:dgram";
import { createServer, connect, isIP } from "node:net";
import * as sea from "node:sea";
import { mapConcurrently } from "./concurrently.js";

/**
 * argv that runs this executable again, whether it is the built binary or `node dist/trellis.cjs`.
 * A binary replaced while it runs (a rebuild renames a new one into place) shows as
 * "PATH (deleted)"; the file now at PATH is the one to run.
 */
export function selfInvocation(): string[] {
  const self = process.execPath.replace(/ \(deleted\)$/, "");
  return sea.isSea() ? [self] : [self, process.argv[1]];
}

/** What a probe server said. */
export interface ProbeAnswer {
  /** The source address the server saw. */
  readonly source: string;
  /** The server's name (`--name`). */
  readonly server: string;
  /** Bytes the server received: the whole TCP stream, or the one datagram. */
  readonly bytes: number;
  readonly ms: number;
}

export type ProbeKind = "icmp" | "tcp" | "udp";

export interface ProbeRequest {
  readonly kind: ProbeKind;
  readonly address: string;
  /** TCP and UDP only. */
  readonly port?: number;
  /** TCP: bytes sent before half-closing; UDP: the datagram's size. */
  readonly bytes?: number;
  readonly timeoutMs?: number;
  /** TCP and UDP: connect this many times, one after another (1 to 100); the outcome lists who answered each. */
  readonly repeat?: number;
}

export type ProbeOutcome =
  | ({ readonly ok: true } & Partial<ProbeAnswer> & { readonly ms: number; readonly servers?: readonly string[] })
  | { readonly ok: false; readonly error: string; readonly ms: number };

/** The most connections one repeated probe makes. */
export const MAX_PROBE_REPEAT = 100;

export const DEFAULT_PROBE_TIMEOUT_MS = 3000;

function unmapped(address: string | undefined): string {
  return (address ?? "").replace(/^::ffff:/, "");
}

/**
 * Serves TCP and UDP on `port` on every address of both families until killed; prints "ready"
 * once both listen. TCP: a line `SOURCE NAME` right away, then `received N` once the client
 * half-closes. UDP: one datagram back, `SOURCE NAME N`.
 */
export function serveProbes(ports: readonly number[], name: string): Promise<never> {
  return new Promise((_, reject) => {
    let listening = 0;
    const ready = () => {
      if (++listening === 2 * ports.length) process.stdout.write("ready\n");
    };
    for (const port of ports) {
      const tcp = createServer({ allowHalfOpen: true }, (socket) => {
        let received = 0;
        socket.setTimeout(30_000, () => socket.destroy());
        socket.on("error", () => socket.destroy());
        socket.write(`${unmapped(socket.remoteAddress)} ${name}\n`);
        socket.on("data", (chunk: Buffer) => (received += chunk.length));
        socket.on("end", () => socket.end(`received ${received}\n`));
      });
      const udp = createSocket({ type: "udp6", ipv6Only: false });
      udp.on("message", (message, peer) => udp.send(`${unmapped(peer.address)} ${name} ${message.length}\n`, peer.port, peer.address));
      tcp.on("error", reject);
      udp.on("error", reject);
      tcp.listen(port, "::", ready);
      udp.bind(port, "::", ready);
    }
  });
}

/** Connects, sends `bytes` bytes, half-closes, and resolves with what the server said. */
export function probeTcp(address: string, port: number, options: { bytes?: number; timeoutMs?: number } = {}): Promise<ProbeAnswer> {
  const timeoutMs = options.timeoutMs ?? DEFAULT_PROBE_TIMEOUT_MS;
  const started = Date.now();
  return new Promise((resolve, reject) => {
    let answer = "";
    let connected = false;
    const socket = connect({ host: address, port });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(connected ? `timeout: connected, but no answer within ${timeoutMs} ms` : `timeout: no connection within ${timeoutMs} ms`));
    }, timeoutMs);
    socket.on("connect", () => {
      connected = true;
      const payload = Buffer.alloc(options.bytes ?? 0, 0x61);
      socket.end(payload);
    });
    socket.on("data", (chunk: Buffer) => (answer += chunk.toString("utf8")));
    socket.on("end", () => {
      clearTimeout(timer);
      const [first = "", second = ""] = answer.split("\n");
      const [source, server] = first.split(" ");
      const received = /^received ([0-9]+)$/.exec(second);
      if (!source || !server || !received) reject(new Error(`unexpected answer ${JSON.stringify(answer.slice(0, 100))}`));
      else resolve({ source, server, bytes: Number(received[1]), ms: Date.now() - started });
    });
    socket.on("error", (error: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      reject(new Error(describeSocketError(error)));
    });
  });
}

/** Sends a datagram of `bytes` bytes (resent every second) and resolves with the first answer. */
export function probeUdp(address: string, port: number, options: { bytes?: number; timeoutMs?: number } = {}): Promise<ProbeAnswer> {
  const timeoutMs = options.timeoutMs ?? DEFAULT_PROBE_TIMEOUT_MS;
  const started = Date.now();
  const family = isIP(address);
  return new Promise((resolve, reject) => {
    const socket = createSocket(family === 6 ? "udp6" : "udp4");
    const payload = Buffer.alloc(Math.max(1, options.bytes ?? 16), 0x61);
    let done = false;
    const finish = (outcome: () => void) => {
      if (done) return;
      done = true;
      clearInterval(resend);
      clearTimeout(timer);
      socket.close();
      outcome();
    };
    // Connected, so an ICMP port unreachable (a Service without endpoints) comes back as an
    // error at once instead of a timeout.
    const send = () => socket.send(payload, (error) => error && finish(() => reject(new Error(describeSocketError(error)))));
    let resend: NodeJS.Timeout | undefined;
    const timer = setTimeout(() => finish(() => reject(new Error(`timeout: no answer within ${timeoutMs} ms`))), timeoutMs);
    socket.on("message", (message) => {
      const [source, server, bytes] = message.toString("utf8").trim().split(" ");
      finish(() => (source && server && bytes ? resolve({ source, server, bytes: Number(bytes), ms: Date.now() - started }) : reject(new Error(`unexpected answer ${JSON.stringify(message.toString().slice(0, 100))}`))));
    });
    socket.on("error", (error: NodeJS.ErrnoException) => finish(() => reject(new Error(describeSocketError(error)))));
    socket.connect(port, address, () => {
      if (done) return;
      resend = setInterval(send, 1000);
      send();
    });
  });
}

/** One ICMP echo answered within the timeout (ping resends every 200 ms until then). */
export function probeIcmp(address: string, timeoutMs = DEFAULT_PROBE_TIMEOUT_MS): Promise<{ ms: number }> {
  const started = Date.now();
  const seconds = String(Math.max(1, Math.ceil(timeoutMs / 1000)));
  return new Promise((resolve, reject) => {
    const child = spawn("ping", ["-n", "-q", "-c", "1", "-i", "0.2", "-w", seconds, address], { stdio: ["ignore", "pipe", "pipe"] });
    let output = "";
    child.stdout.on("data", (chunk: Buffer) => (output += chunk.toString()));
    child.stderr.on("data", (chunk: Buffer) => (output += chunk.toString()));
    child.on("error", (error) => reject(new Error(`cannot run ping: ${error.message}`)));
    child.on("close", (code) => {
      if (code === 0) resolve({ ms: Date.now() - started });
      else reject(new Error(describePingFailure(output, timeoutMs)));
    });
  });
}

function describePingFailure(output: string, timeoutMs: number): string {
  if (/Network is unreachable/i.test(output)) return "network unreachable";
  if (/Destination (Host|Net|Address) Unreachable/i.test(output)) return "host unreachable";
  if (/Destination Port Unreachable|Administratively prohibited/i.test(output)) return "rejected";
  if (/[0-9]+ packets transmitted, 0 received/.test(output)) return `timeout: no echo reply within ${timeoutMs} ms`;
  return output.trim().split("\n").pop() || "ping failed";
}

function describeSocketError(error: NodeJS.ErrnoException): string {
  switch (error.code) {
    case "ECONNREFUSED":
      return "connection refused";
    case "EHOSTUNREACH":
      return "host unreachable";
    case "ENETUNREACH":
      return "network unreachable";
    case "ECONNRESET":
      return "connection reset";
    default:
      return error.message;
  }
}

/** Runs one probe and never rejects: a failure is an outcome with its reason. */
export async function runProbe(request: ProbeRequest): Promise<ProbeOutcome> {
  const started = Date.now();
  try {
    if (request.kind === "icmp") return { ok: true, ...(await probeIcmp(request.address, request.timeoutMs)) };
    const probe = request.kind === "tcp" ? probeTcp : probeUdp;
    const first = await probe(request.address, request.port ?? 0, request);
    if ((request.repeat ?? 1) <= 1) return { ok: true, ...first };
    // One after another, each its own connection (and source port): what affinity must keep together.
    const servers = [first.server];
    for (let i = 1; i < Math.min(request.repeat!, MAX_PROBE_REPEAT); i++) servers.push((await probe(request.address, request.port ?? 0, request)).server);
    return { ok: true, ...first, servers, ms: Date.now() - started };
  } catch (error) {
    return { ok: false, error: (error as Error).message, ms: Date.now() - started };
  }
}

/** Runs probes with at most `concurrency` at a time; outcomes in request order. */
export async function runProbes(requests: readonly ProbeRequest[], concurrency = 32): Promise<ProbeOutcome[]> {
  return mapConcurrently(requests, concurrency, runProbe);
}
