/**
 * Bounds on the connections of the agent's HTTP servers (the health check ports and the metrics
 * port), so that clients which connect and send nothing, or half a request, cost the agent a
 * fixed number of descriptors and never stall one of its loops:
 *
 * - caps on the connections held at once, each server's own and one shared by a group of
 *   servers. A connection beyond a cap makes room by closing the oldest one under it: a flood
 *   pushes out its own connections first, and a probe that sends its request as soon as it
 *   connects (as load balancers and kubelet do) is answered before anything pushes it out.
 *   (Closing the new connection instead would leave every probe refused for as long as the
 *   flood holds the cap.)
 * - a lifetime: every answer says `connection: close`, so a connection carries one request, and
 *   one deadline from accept bounds the header, the request, the answer and idling alike.
 *
 * Node's own headersTimeout and requestTimeout are not what bounds them: they are checked only
 * every connectionsCheckingInterval (30 s by default) and not at all once server.close() was
 * called; measured on Node 20.20, connections stalled half-way through a header outlived a
 * closed server indefinitely, and its close callback never came. A timer per connection costs
 * nothing while there are none, where a shorter checking interval would wake every server.
 */
import { createServer, type RequestListener, type Server } from "node:http";
import type { Socket } from "node:net";
import type { Logger } from "./log.js";

/** At most `max` connections at once, among the servers it is given to. */
export interface ConnectionCap {
  readonly max: number;
  /** The connections held, oldest first. */
  readonly sockets: Set<Socket>;
}

export function connectionCap(max: number): ConnectionCap {
  return { max, sockets: new Set() };
}

/** Connections a group of servers closed before their clients did, for metrics. */
export interface ConnectionCounts {
  /** Closed to make room under a cap. */
  dropped: number;
  /** Closed at the end of their lifetime. */
  expired: number;
  /** When a full cap was last logged (ms since the epoch). */
  loggedAt: number;
}

export function connectionCounts(): ConnectionCounts {
  return { dropped: 0, expired: 0, loggedAt: 0 };
}

export interface ConnectionLimits {
  /** The caps a connection counts against: its server's own, and any shared with other servers. */
  readonly caps: readonly ConnectionCap[];
  /** A connection is closed this long after it was accepted, whatever it is doing. */
  readonly lifetimeMs: number;
  readonly counts: ConnectionCounts;
  /** What these servers are, in their log lines. */
  readonly what: string;
  readonly log: Logger;
}

/** An HTTP server whose connections are held to `limits`; requests go to `listener`. */
export function createLimitedHttpServer(limits: ConnectionLimits, listener: RequestListener): Server {
  // Headers of a probe or a scrape are a few hundred bytes.
  const server = createServer({ maxHeaderSize: 8 * 1024 }, listener);
  server.maxHeadersCount = 50;
  server.on("connection", (socket: Socket) => admit(socket, limits));
  return server;
}

/**
 * Listens on `host`:`port`; rejects when it cannot. Errors after that (an accept that failed,
 * out of descriptors) are logged, never thrown: a server without an error listener would end
 * the agent at the first one.
 */
export function listen(server: Server, port: number, host: string, limits: Pick<ConnectionLimits, "what" | "log">): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => {
      server.off("error", reject);
      server.on("error", (error) => limits.log("warn", "a server of the agent could not accept a connection", { server: limits.what, error: String(error) }));
      resolve();
    });
  });
}

/**
 * Stops listening and closes every connection now, never waiting for a client: what a slow or
 * stalled client holds is its own loss, not the agent's.
 */
export function closeNow(server: Server): void {
  server.close();
  server.closeAllConnections();
}

/** Each held connection's end of life. */
const deadlines = new WeakMap<Socket, NodeJS.Timeout>();

/**
 * Takes a connection out of its lifetime: for an answer that goes on for as long as its client
 * reads (a follower of /flows), which the handler bounds itself. It still counts against the caps.
 */
export function keepOpen(socket: Socket): void {
  clearTimeout(deadlines.get(socket));
  deadlines.delete(socket);
}

/** The caps each held connection counts against, so that closing it frees its place in all of them at once. */
const capsOf = new WeakMap<Socket, readonly ConnectionCap[]>();

function release(socket: Socket): void {
  for (const cap of capsOf.get(socket) ?? []) cap.sockets.delete(socket);
}

function admit(socket: Socket, limits: ConnectionLimits): void {
  const { caps, counts } = limits;
  let dropped = 0;
  for (const cap of caps) {
    while (cap.sockets.size >= cap.max) {
      const oldest: Socket = cap.sockets.values().next().value!;
      release(oldest);
      // Its descriptor is closed here, not at the next turn of the loop: a burst of accepts
      // never holds more than the cap.
      oldest.destroy();
      dropped++;
    }
  }
  capsOf.set(socket, caps);
  for (const cap of caps) cap.sockets.add(socket);
  const deadline = setTimeout(() => {
    counts.expired++;
    socket.destroy();
  }, limits.lifetimeMs);
  deadlines.set(socket, deadline);
  socket.once("close", () => {
    clearTimeout(deadline);
    release(socket);
  });
  if (dropped) {
    counts.dropped += dropped;
    const now = Date.now();
    if (now - counts.loggedAt >= 60_000) {
      counts.loggedAt = now;
      limits.log("warn", "too many connections at once; the oldest are closed to make room", { server: limits.what, caps: caps.map((cap) => cap.max), droppedSinceStart: counts.dropped });
    }
  }
}
