/**
 * The agent's CNI socket: the native `trellis` plugin forwards each call here (the CNI_*
 * environment and stdin), and the agent answers it with the same engine, results and error
 * codes as the standalone plugin, keeping each state directory's handle open between calls.
 *
 * The socket is root-only (mode 0600 in a root-owned directory). Every message is a 4-byte
 * big-endian length and that many bytes of JSON; a request over 1 MiB, truncated or malformed
 * gets a CNI error and the connection is closed; a client that goes away mid-ADD has the ADD
 * rolled back. Nothing a client sends can stop the server, and no client holds it: connections
 * are capped, a request must arrive whole soon after connecting, an answered client that keeps
 * its end open is let go, and closing the server waits only for calls in progress.
 */
import { chmodSync, existsSync, lstatSync, mkdirSync, unlinkSync } from "node:fs";
import { createConnection, createServer, type Server, type Socket } from "node:net";
import { dirname } from "node:path";
import { handleCniRequest, type CniReply, type PodNetSource } from "../cni/plugin.js";
import { CniCode, CniError, formatCniError } from "../podnet/errors.js";
import { openPodNet, type PodNet } from "../podnet/handle.js";
import type { Foreground } from "./foreground.js";
import type { Logger } from "./log.js";

export const MAX_REQUEST_BYTES = 1 << 20;
export interface CniServerLimits {
  /**
   * Connections held at once; more are closed as they come (the plugin then answers 11, try
   * again later). Each pod has at most one call in progress and nodes run at most a few hundred
   * pods (kubelet's default is 110; the largest cloud defaults are near 750): 1,024 is above any
   * legitimate burst, and a bounded share of the agent's descriptors.
   */
  readonly maxConnections: number;
  /**
   * A client must send its whole request within this time of connecting, however it spaces its
   * bytes: 10 s. The plugin has read its whole stdin before it connects and sends it at once.
   */
  readonly requestTimeoutMs: number;
  /** An answered client that has not closed its end after this long is disconnected: 5 s. */
  readonly answeredLingerMs: number;
}

export const CNI_SERVER_LIMITS: CniServerLimits = { maxConnections: 1_024, requestTimeoutMs: 10_000, answeredLingerMs: 5_000 };

export interface CniServer {
  readonly path: string;
  close(): Promise<void>;
}

/** Handles kept open per state directory, so a call does not reopen SQLite or relearn the node. */
export function cachedPodNets(): PodNetSource & { closeAll(): void; all(): PodNet[] } {
  const handles = new Map<string, PodNet>();
  return {
    acquire(stateDir, field) {
      let net = handles.get(stateDir);
      if (!net) {
        net = openPodNet(stateDir, { field });
        handles.set(stateDir, net);
      }
      return net;
    },
    release() {
      // kept open for the next call
    },
    closeAll() {
      for (const net of handles.values()) net.close();
      handles.clear();
    },
    all: () => [...handles.values()],
  };
}

/**
 * What the agent does with a call's outcome before it answers: an ADD's pod put into the node's
 * policy rules (a rejection fails the ADD, and what it made is deleted), a DEL's taken out.
 */
export interface CniCallHooks {
  added(env: Readonly<Record<string, string>>, result: string): Promise<void>;
  deleted(env: Readonly<Record<string, string>>): Promise<void>;
}

/**
 * Listens on `path`; a stale socket file (no one answering) is replaced, a live one refused.
 * `foreground`: told of each call from its start to its answer, so background work waits
 * meanwhile. `hooks`: run on each call that succeeded, before it is answered.
 */
export async function startCniServer(path: string, source: PodNetSource, notReady: () => string | undefined, log: Logger, limits = CNI_SERVER_LIMITS, foreground?: Foreground, hooks?: CniCallHooks): Promise<CniServer> {
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  if (existsSync(path)) {
    if (!lstatSync(path).isSocket()) throw new Error(`--cni-socket ${path} exists and is not a socket`);
    if (await answers(path)) throw new Error(`--cni-socket ${path} is served by another process; stop it, or give this agent another socket`);
    unlinkSync(path);
  }
  /** Each connection, and whether a call of it is in progress. */
  const connections = new Map<Socket, { busy: boolean }>();
  const server = createServer((socket) => {
    const connection = { busy: false };
    connections.set(socket, connection);
    socket.once("close", () => connections.delete(socket));
    serve(socket, connection, source, notReady, log, limits, foreground, hooks);
  });
  server.maxConnections = limits.maxConnections;
  let dropped = 0;
  let loggedAt = 0;
  server.on("drop", () => {
    dropped++;
    if (Date.now() - loggedAt < 60_000) return;
    loggedAt = Date.now();
    log("warn", "too many connections to the CNI socket at once; new ones are closed until some end", { max: limits.maxConnections, droppedSinceStart: dropped });
  });
  server.on("error", (error) => log("error", "CNI socket error", { path, error: String(error) }));
  // The socket is created with mode 0600: no moment where another user could connect.
  const umask = process.umask(0o177);
  try {
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(path, () => {
        server.off("error", reject);
        resolve();
      });
    });
  } finally {
    process.umask(umask);
  }
  chmodSync(path, 0o600);
  log("info", "serving CNI", { socket: path });
  return { path, close: () => closeServer(server, path, connections) };
}

function serve(socket: Socket, connection: { busy: boolean }, source: PodNetSource, notReady: () => string | undefined, log: Logger, limits: CniServerLimits, foreground: Foreground | undefined, hooks: CniCallHooks | undefined): void {
  const chunks: Buffer[] = [];
  let received = 0;
  let expected: number | undefined;
  let answered = false;
  const controller = new AbortController();
  let deadline = setTimeout(() => {
    if (!answered) refuse(new CniError(CniCode.ioFailure, `the request did not arrive whole within ${limits.requestTimeoutMs / 1000} s of connecting`));
  }, limits.requestTimeoutMs);
  socket.on("error", () => undefined);
  // A client gone before its answer: the work in progress is rolled back.
  socket.on("close", () => {
    clearTimeout(deadline);
    if (!answered) controller.abort();
  });
  const send = (reply: CniReply) => {
    connection.busy = false;
    if (socket.destroyed) return;
    const body = Buffer.from(JSON.stringify(reply));
    const size = Buffer.alloc(4);
    size.writeUInt32BE(body.length);
    socket.end(Buffer.concat([size, body]));
    clearTimeout(deadline);
    deadline = setTimeout(() => socket.destroy(), limits.answeredLingerMs);
  };
  const refuse = (error: CniError) => {
    answered = true;
    send({ exitCode: 1, stdout: `${formatCniError(error, "1.1.0")}\n`, stderr: `trellis: refused a CNI request: ${error.message}\n` });
    log("warn", "CNI request refused", { reason: error.message });
  };
  socket.on("data", (chunk: Buffer) => {
    if (answered) return;
    received += chunk.length;
    chunks.push(chunk);
    if (expected === undefined && received >= 4) {
      expected = Buffer.concat(chunks).readUInt32BE(0);
      if (expected > MAX_REQUEST_BYTES) return refuse(new CniError(CniCode.invalidConfig, `the request is ${expected} bytes; at most ${MAX_REQUEST_BYTES} are allowed`));
    }
    if (expected === undefined || received < expected + 4) return;
    if (received > expected + 4) return refuse(new CniError(CniCode.decodeFailure, "the request holds more bytes than its length says"));
    answered = true;
    clearTimeout(deadline);
    const request = parseRequest(Buffer.concat(chunks).subarray(4));
    if (request instanceof CniError) {
      answered = false;
      return refuse(request);
    }
    connection.busy = true;
    const started = performance.now();
    const end = foreground?.begin();
    handleCniRequest({ ...request, signal: controller.signal, agentNotReady: notReady }, source)
      .then((reply) => (hooks && reply.exitCode === 0 ? afterCall(request, reply, hooks, () => handleCniRequest({ env: { ...request.env, CNI_COMMAND: "DEL" }, stdin: request.stdin, signal: new AbortController().signal, agentNotReady: () => undefined }, source), log) : reply))
      .catch((error: unknown): CniReply => ({ exitCode: 1, stdout: `${formatCniError(new CniError(CniCode.internal, String(error)), "1.1.0")}\n`, stderr: "" }))
      .then((reply) => {
        send(reply);
        logCall(log, request.env, reply, performance.now() - started);
      })
      .catch(() => undefined)
      .finally(() => end?.());
  });
  socket.on("end", () => {
    if (!answered) refuse(new CniError(CniCode.decodeFailure, `the request ended after ${Math.max(0, received - 4)} of ${expected ?? "?"} bytes`));
  });
}

/**
 * The hooks of a call that succeeded. An ADD whose pod cannot be put into the policy rules is
 * undone (its DEL) and refused with "try again later": a pod never runs unjudged.
 */
async function afterCall(request: { env: Record<string, string>; stdin: string }, reply: CniReply, hooks: CniCallHooks, undo: () => Promise<CniReply>, log: Logger): Promise<CniReply> {
  const command = request.env.CNI_COMMAND;
  if (command === "DEL") {
    await hooks.deleted(request.env).catch((error: unknown) => log("warn", "the deleted pod's policy rules stay until the next sync", { error: String(error) }));
    return reply;
  }
  if (command !== "ADD") return reply;
  try {
    await hooks.added(request.env, reply.stdout);
    return reply;
  } catch (error) {
    const undone = await undo().catch((failure: unknown) => ({ exitCode: 1, stdout: "", stderr: String(failure) }));
    const message = `the pod's policy rules could not be put in place: ${(error as Error).message}${undone.exitCode === 0 ? "; its network was removed again" : `; removing its network failed too: ${undone.stderr.trim()}`}`;
    log("warn", "CNI ADD refused: its pod's policy rules are not in place", { containerId: request.env.CNI_CONTAINERID?.slice(0, 80), reason: message.slice(0, 300) });
    return { exitCode: 1, stdout: `${formatCniError(new CniError(CniCode.tryAgainLater, message), "1.1.0")}\n`, stderr: `trellis: ${message}\n` };
  }
}

/** One line per call, as an operator reads them: verb, pod, outcome and time taken. */
function logCall(log: Logger, env: Record<string, string>, reply: CniReply, durationMs: number): void {
  const fields: Record<string, unknown> = { command: env.CNI_COMMAND, containerId: env.CNI_CONTAINERID?.slice(0, 80), ifname: env.CNI_IFNAME?.slice(0, 20), durationMs: Math.round(durationMs * 10) / 10 };
  if (reply.exitCode === 0) return log("info", "CNI call served", fields);
  try {
    const error = JSON.parse(reply.stdout) as { code?: unknown; msg?: unknown };
    fields.code = error.code;
    fields.msg = typeof error.msg === "string" ? error.msg.slice(0, 300) : undefined;
  } catch {
    // the reply's text is the plugin's own; the exit code says enough
  }
  log("warn", "CNI call failed", fields);
}

function parseRequest(body: Buffer): { env: Record<string, string>; stdin: string } | CniError {
  let parsed: unknown;
  try {
    parsed = JSON.parse(body.toString("utf8"));
  } catch (error) {
    return new CniError(CniCode.decodeFailure, `the request is not JSON: ${(error as Error).message}`);
  }
  const request = parsed as { env?: unknown; stdin?: unknown };
  if (typeof request !== "object" || request === null || typeof request.stdin !== "string" || typeof request.env !== "object" || request.env === null) {
    return new CniError(CniCode.decodeFailure, 'the request must be {"env": {NAME: VALUE}, "stdin": TEXT}');
  }
  const env: Record<string, string> = {};
  for (const [name, value] of Object.entries(request.env as Record<string, unknown>)) {
    if (typeof value !== "string") return new CniError(CniCode.decodeFailure, `the request's env.${name} is not a string`);
    if (name.startsWith("CNI_") || name === "PATH") env[name] = value;
  }
  return { env, stdin: request.stdin };
}

/** Whether something accepts connections on the socket now. */
function answers(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = createConnection(path);
    probe.once("connect", () => {
      probe.destroy();
      resolve(true);
    });
    probe.once("error", () => resolve(false));
  });
}

/** Stops listening; waits for the calls in progress, and for no other client. */
function closeServer(server: Server, path: string, connections: ReadonlyMap<Socket, { busy: boolean }>): Promise<void> {
  return new Promise((resolve) => {
    server.close(() => resolve());
    for (const [socket, connection] of connections) if (!connection.busy) socket.destroy();
    try {
      unlinkSync(path);
    } catch {
      // already gone
    }
  });
}
