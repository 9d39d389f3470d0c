/**
 * `trellis ui`'s server: the page, its script, the events that keep it live, and the flows of
 * what is selected.
 *
 *   GET /             the page (page-html.ts)        GET /events       server-sent events (events.ts)
 *   GET /app.js       its script (page-script.ts)    GET /api/flows    ?edge=ID or ?entity=ID
 *   GET /app.css      its style                      GET /api/topology the topology as JSON
 *
 * `FlowMap` holds the state: the topology (read again every `topologyIntervalMs`), the last
 * minute of flows (flow-window.ts) and the clients. Records only mark edges changed; one tick
 * every `tickMs` sends what changed to every client as one event, so a burst of records costs
 * the page one update, not one per record.
 *
 * Read-only and cautious: GET and HEAD only; requests small; on a loopback address, only requests
 * that name a loopback host (a page elsewhere cannot reach it through a name it rebinds to
 * 127.0.0.1); a content security policy that lets the page run its own script alone.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import type { FlowRecord } from "../flows/record.js";
import { EventClient, SSE_KEEPALIVE, sseFrame, type EventClientStats } from "./events.js";
import { FLOW_WINDOW_MS, FlowWindow, MAX_CONNECTIONS } from "./flow-window.js";
import { listenUrl, type ListenAddress } from "./listen.js";
import { PAGE_CSS, renderPage } from "./page-html.js";
import { pageScript } from "./page-script.js";
import type { FlowsAnswer, SnapshotEvent, UiStatus } from "./protocol.js";
import type { UiFollow, UiSource, UiTopology } from "./topology.js";

export interface UiServerOptions {
  readonly listen: ListenAddress;
  readonly source: UiSource;
  readonly topologyIntervalMs?: number;
  readonly tickMs?: number;
  /** What may wait for one events client before its events are dropped. */
  readonly clientBufferBytes?: number;
  /** A client behind for this long is closed. */
  readonly staleCloseMs?: number;
  readonly maxEventClients?: number;
  readonly keepaliveMs?: number;
  readonly maxConnections?: number;
  /** A line for the operator (topology reads that failed, clients closed). */
  readonly log?: (line: string) => void;
}

export const UI_DEFAULTS = {
  topologyIntervalMs: 5_000,
  tickMs: 250,
  clientBufferBytes: 1024 * 1024,
  staleCloseMs: 30_000,
  maxEventClients: 32,
  keepaliveMs: 15_000,
  maxConnections: MAX_CONNECTIONS,
} as const;

/** Connections the server holds at once (event clients among them). */
const MAX_HTTP_CONNECTIONS = 256;

/** Connections answered per flows request; the page shows the newest. */
const MAX_FLOWS_ANSWER = 200;

export interface UiServerStats {
  readonly clients: readonly EventClientStats[];
  /** Clients closed for being behind too long, or to make room for a new one. */
  readonly closedClients: number;
  readonly connections: number;
  readonly edges: number;
}

export interface UiServer {
  readonly url: string;
  readonly port: number;
  stats(): UiServerStats;
  close(): Promise<void>;
}

const SECURITY_HEADERS = {
  "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
  "x-content-type-options": "nosniff",
  "referrer-policy": "no-referrer",
  "cache-control": "no-store",
};

/** The state behind the page: topology, flows, clients. */
export class FlowMap {
  readonly window: FlowWindow;
  private readonly clients = new Set<EventClient>();
  private readonly problems = new Map<string, { message: string; time: string }>();
  private statusChanged = false;
  closedClients = 0;

  constructor(
    public topology: UiTopology,
    private readonly options: Required<Pick<UiServerOptions, "clientBufferBytes" | "staleCloseMs" | "maxEventClients" | "maxConnections">>,
    now: () => number = Date.now,
  ) {
    this.window = new FlowWindow(topology, now, options.maxConnections);
  }

  record(record: FlowRecord): void {
    this.solved(record.node);
    this.window.add(record);
  }

  /** What went wrong with a node's agent (or `topology`, the topology's read), until `solved`. */
  problem(node: string, message: string): void {
    this.problems.set(node, { message, time: new Date().toISOString() });
    this.statusChanged = true;
  }

  solved(node: string): void {
    if (this.problems.delete(node)) this.statusChanged = true;
  }

  /** A new topology; true when it differs, and then every client gets a snapshot. */
  setTopology(topology: UiTopology): boolean {
    if (JSON.stringify(topology) === JSON.stringify(this.topology)) return false;
    this.topology = topology;
    this.window.setTopology(topology);
    this.window.takeChanges();
    this.broadcast(() => this.snapshotFrame());
    return true;
  }

  status(): UiStatus {
    const problems = [...this.problems.entries()].map(([node, { message, time }]) => ({ node, message, time }));
    return { connections: this.window.size, edges: this.window.edgeCount, evicted: this.window.evicted, problems, windowMs: FLOW_WINDOW_MS };
  }

  snapshotFrame(): string {
    const snapshot: SnapshotEvent = { topology: this.topology, edges: this.window.summaries(), status: this.status() };
    return sseFrame("snapshot", snapshot);
  }

  /** Sends what changed since the last tick; a snapshot to clients that caught up, closing those behind for too long. */
  tick(): void {
    this.window.expire();
    const { changed, removed } = this.window.takeChanges();
    if (changed.length || removed.length) {
      const frame = sseFrame("edges", { changed, removed });
      this.broadcast(() => frame);
      this.statusChanged = true;
    }
    if (this.statusChanged) {
      this.statusChanged = false;
      const frame = sseFrame("status", this.status());
      this.broadcast(() => frame);
    }
    for (const client of this.clients) {
      if (!client.poll(this.options.staleCloseMs)) continue;
      this.clients.delete(client);
      this.closedClients++;
    }
  }

  keepalive(): void {
    this.broadcast(() => SSE_KEEPALIVE);
  }

  /** Follows the events for `response`; the oldest client makes room when there are too many. */
  addClient(response: ServerResponse): void {
    while (this.clients.size >= this.options.maxEventClients) {
      const oldest = this.clients.values().next().value!;
      this.clients.delete(oldest);
      oldest.close();
      this.closedClients++;
    }
    const client = new EventClient(response, this.options.clientBufferBytes, () => this.snapshotFrame());
    this.clients.add(client);
    response.on("close", () => this.clients.delete(client));
    // The browser waits this long before it connects again after losing the stream.
    response.write("retry: 2000\n\n");
    client.send(this.snapshotFrame());
  }

  closeClients(): void {
    for (const client of this.clients) client.close();
    this.clients.clear();
  }

  clientStats(): EventClientStats[] {
    return [...this.clients].map((client) => client.stats());
  }

  private broadcast(frame: () => string): void {
    if (this.clients.size === 0) return;
    const text = frame();
    for (const client of this.clients) if (!client.send(text)) this.clients.delete(client);
  }
}

export async function startUiServer(options: UiServerOptions): Promise<UiServer> {
  const settings = { ...UI_DEFAULTS, ...definedOf(options) };
  const log = options.log ?? (() => undefined);
  const map = new FlowMap(await options.source.topology(), settings);
  let follow: UiFollow | undefined;
  let closed = false;

  let reading = false;
  const readTopology = async () => {
    if (reading || closed) return;
    reading = true;
    try {
      map.setTopology(await options.source.topology());
      map.solved("topology");
    } catch (error) {
      const message = `the topology could not be read: ${(error as Error).message}`;
      log(message);
      map.problem("topology", message);
    } finally {
      reading = false;
    }
  };
  const timers = [
    setInterval(() => void readTopology(), settings.topologyIntervalMs),
    setInterval(() => map.tick(), settings.tickMs),
    setInterval(() => map.keepalive(), settings.keepaliveMs),
  ];

  const server = createServer({ maxHeaderSize: 8 * 1024, requestTimeout: 10_000, headersTimeout: 10_000 }, (request, response) => {
    try {
      handle(request, response, map, options.listen);
    } catch (error) {
      log(`a request failed: ${(error as Error).message}`);
      if (!response.headersSent) send(request, response, 500, "text/plain; charset=utf-8", "internal error\n");
      else response.destroy();
    }
  });
  server.maxHeadersCount = 50;
  // A page is a few connections (its events, a request now and then); a flood is refused past this.
  server.maxConnections = MAX_HTTP_CONNECTIONS;
  await new Promise<void>((resolve, reject) => {
    server.once("error", (error: NodeJS.ErrnoException) => {
      reject(new Error(`cannot serve the flow map on ${listenUrl(options.listen.host, options.listen.port)}: ${error.code === "EADDRINUSE" ? "the port is taken" : error.message}`));
    });
    server.listen(options.listen.port, options.listen.host, () => resolve());
  }).catch((error) => {
    for (const timer of timers) clearInterval(timer);
    throw error;
  });
  server.on("error", (error) => log(`the server could not accept a connection: ${error.message}`));
  follow = options.source.follow(
    (record) => map.record(record),
    (node, message) => map.problem(node, message),
  );
  const port = (server.address() as AddressInfo).port;
  return {
    url: listenUrl(options.listen.host, port),
    port,
    stats: () => ({ clients: map.clientStats(), closedClients: map.closedClients, connections: map.window.size, edges: map.window.edgeCount }),
    close: () => {
      closed = true;
      for (const timer of timers) clearInterval(timer);
      follow?.stop();
      follow = undefined;
      map.closeClients();
      return closeServer(server);
    },
  };
}

function handle(request: IncomingMessage, response: ServerResponse, map: FlowMap, listen: ListenAddress): void {
  if (request.method !== "GET" && request.method !== "HEAD") {
    response.setHeader("allow", "GET, HEAD");
    return send(request, response, 405, "text/plain; charset=utf-8", `${request.method} is not served: only GET and HEAD\n`);
  }
  if (listen.loopback && !isLoopbackHost(request.headers.host)) {
    return send(request, response, 421, "text/plain; charset=utf-8", "this server answers requests for a loopback host only (127.0.0.1, [::1] or localhost)\n");
  }
  const url = new URL(request.url ?? "/", "http://ui.invalid");
  switch (url.pathname) {
    case "/":
    case "/index.html":
      return send(request, response, 200, "text/html; charset=utf-8", renderPage(map.topology.title));
    case "/app.js":
      return send(request, response, 200, "text/javascript; charset=utf-8", pageScript());
    case "/app.css":
      return send(request, response, 200, "text/css; charset=utf-8", PAGE_CSS);
    case "/api/topology":
      return send(request, response, 200, "application/json", JSON.stringify(map.topology));
    case "/api/flows": {
      const query = flowsQuery(url.searchParams);
      if (typeof query === "string") return send(request, response, 400, "text/plain; charset=utf-8", `${query}\n`);
      const connections = map.window.connectionsOf(query, MAX_FLOWS_ANSWER + 1);
      const answer: FlowsAnswer = { connections: connections.slice(0, MAX_FLOWS_ANSWER), truncated: connections.length > MAX_FLOWS_ANSWER };
      return send(request, response, 200, "application/json", JSON.stringify(answer));
    }
    case "/events":
      response.writeHead(200, { ...SECURITY_HEADERS, "content-type": "text/event-stream; charset=utf-8", connection: "keep-alive" });
      if (request.method === "HEAD") return void response.end();
      // The events go out as they are written, not held for more.
      response.socket?.setNoDelay(true);
      map.addClient(response);
      return;
    default:
      return send(request, response, 404, "text/plain; charset=utf-8", "not found: the map is at /\n");
  }
}

/** `edge=ID` or `entity=ID`, one of them once; else why not. */
export function flowsQuery(params: URLSearchParams): { edge: string } | { entity: string } | string {
  const keys = [...params.keys()];
  const unknown = keys.find((key) => key !== "edge" && key !== "entity");
  if (unknown !== undefined) return `unknown query parameter ${JSON.stringify(unknown)}: expected edge=ID or entity=ID`;
  if (keys.length !== 1) return "expected one of edge=ID or entity=ID";
  const [key] = keys;
  const value = params.get(key)!;
  if (value.length === 0 || value.length > 1024) return `${key} must be 1 to 1024 characters`;
  return key === "edge" ? { edge: value } : { entity: value };
}

/** Host header names a loopback address or localhost (any port). */
export function isLoopbackHost(host: string | undefined): boolean {
  if (!host) return false;
  const name = /^(\[[^\]]*\]|[^:]*)(?::[0-9]{1,5})?$/.exec(host)?.[1]?.toLowerCase();
  return name === "localhost" || name === "[::1]" || (name !== undefined && /^127(\.[0-9]{1,3}){3}$/.test(name));
}

function send(request: IncomingMessage, response: ServerResponse, status: number, type: string, body: string): void {
  response.writeHead(status, { ...SECURITY_HEADERS, "content-type": type, "content-length": Buffer.byteLength(body) });
  response.end(request.method === "HEAD" ? undefined : body);
}

function closeServer(server: Server): Promise<void> {
  return new Promise((resolve) => {
    server.close(() => resolve());
    server.closeAllConnections();
  });
}

function definedOf<T extends object>(object: T): Partial<T> {
  return Object.fromEntries(Object.entries(object).filter(([, value]) => value !== undefined)) as Partial<T>;
}
