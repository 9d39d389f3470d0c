/**
 * The agent's HTTP endpoint: `/metrics` (Prometheus text), `/healthz` (the agent's loops are
 * alive), `/readyz` (routes programmed and the Service rules synced once) and `/flows` (the
 * node's flow records, agent/flows.ts). Read-only: GET
 * and HEAD only, no request body read, one request a connection, connections capped and
 * short-lived (connection-limits.ts); bound to loopback unless told otherwise.
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import { closeNow, connectionCap, connectionCounts, createLimitedHttpServer, listen } from "./connection-limits.js";
import type { Logger } from "./log.js";
import { renderGauge } from "./metrics.js";

/**
 * Connections the endpoint holds at once. Its clients are Prometheus (a scrape every 10–60 s)
 * and kubelet's probes (one every few seconds each), each a request of milliseconds: a few at
 * once. 64 is far above that and a few descriptors of the agent's.
 */
export const AGENT_HTTP_MAX_CONNECTIONS = 64;
/** How long a connection lives from accept: a scrape or probe is answered in milliseconds, and gives up after 1–10 s. */
export const AGENT_HTTP_CONNECTION_LIFETIME_MS = 10_000;

export interface AgentHttpHandlers {
  /** The metrics text; a promise where some of it is read when asked for (kernel counters). */
  metrics(): string | Promise<string>;
  /** undefined when healthy, else why not. */
  unhealthy(): string | undefined;
  /** undefined when ready, else why not. */
  notReady(): string | undefined;
  /** GET /flows, when the agent keeps flows (agent/flows.ts); `keep` takes a following connection out of the short lifetime. */
  flows?(request: IncomingMessage, response: ServerResponse, query: URLSearchParams): void;
}

export interface AgentHttp {
  /** Stops serving, closing every connection at once. */
  close(): void;
}

export async function startAgentHttp(host: string, port: number, handlers: AgentHttpHandlers, log: Logger): Promise<AgentHttp> {
  const counts = connectionCounts();
  const limits = { caps: [connectionCap(AGENT_HTTP_MAX_CONNECTIONS)], lifetimeMs: AGENT_HTTP_CONNECTION_LIFETIME_MS, counts, what: "the metrics endpoint", log };
  const metrics = async () =>
    (await handlers.metrics()) +
    renderGauge("trellis_metrics_connections_closed_total", "Connections to this endpoint the agent closed before their clients did: to make room under its cap (dropped), or at the end of their lifetime (expired).", [
      { labels: { reason: "dropped" }, value: counts.dropped },
      { labels: { reason: "expired" }, value: counts.expired },
    ], "counter");
  const server = createLimitedHttpServer(limits, (request, response) => {
    const send = (status: number, body: string, type = "text/plain; charset=utf-8") => {
      response.writeHead(status, { "content-type": type, "content-length": Buffer.byteLength(body), connection: "close" });
      response.end(request.method === "HEAD" ? undefined : body);
    };
    try {
      if (request.method !== "GET" && request.method !== "HEAD") return send(405, "only GET and HEAD\n");
      const path = (request.url ?? "").split("?")[0];
      if (path === "/metrics") {
        metrics().then(
          (body) => send(200, body, "text/plain; version=0.0.4; charset=utf-8"),
          (error: unknown) => {
            log("error", "metrics request failed", { error: String(error) });
            if (!response.headersSent) send(500, "internal error\n");
          },
        );
        return;
      }
      if (path === "/flows" && handlers.flows) {
        handlers.flows(request, response, new URL(request.url ?? "/", "http://agent").searchParams);
        return;
      }
      if (path === "/healthz" || path === "/readyz") {
        const problem = path === "/healthz" ? handlers.unhealthy() : handlers.notReady();
        return problem === undefined ? send(200, "ok\n") : send(503, `${problem}\n`);
      }
      send(404, `not found: /metrics, /healthz${handlers.flows ? ", /readyz and /flows are" : " and /readyz are"} served\n`);
    } catch (error) {
      log("error", "metrics request failed", { error: String(error) });
      if (!response.headersSent) send(500, "internal error\n");
    }
  });
  await listen(server, port, host, limits);
  return { close: () => closeNow(server) };
}
