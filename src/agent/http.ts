/**
 * The agent's HTTP endpoint: `/metrics` (Prometheus text), `/healthz` (the agent's loops are
 * alive) and `/readyz` (routes programmed and the Service rules synced once). Read-only: GET
 * and HEAD only, no request body read, short timeouts; bound to loopback unless told otherwise.
 */
import { createServer, type Server } from "node:http";
import type { Logger } from "./log.js";

export interface AgentHttpHandlers {
  metrics(): string;
  /** undefined when healthy, else why not. */
  unhealthy(): string | undefined;
  /** undefined when ready, else why not. */
  notReady(): string | undefined;
}

export async function startAgentHttp(host: string, port: number, handlers: AgentHttpHandlers, log: Logger): Promise<Server> {
  const server = createServer((request, response) => {
    const send = (status: number, body: string, type = "text/plain; charset=utf-8") => {
      response.writeHead(status, { "content-type": type, "content-length": Buffer.byteLength(body), connection: "close" });
      response.end(request.method === "HEAD" ? undefined : body);
    };
    try {
      if (request.method !== "GET" && request.method !== "HEAD") return send(405, "only GET and HEAD\n");
      const path = (request.url ?? "").split("?")[0];
      if (path === "/metrics") return send(200, handlers.metrics(), "text/plain; version=0.0.4; charset=utf-8");
      if (path === "/healthz" || path === "/readyz") {
        const problem = path === "/healthz" ? handlers.unhealthy() : handlers.notReady();
        return problem === undefined ? send(200, "ok\n") : send(503, `${problem}\n`);
      }
      send(404, "not found: /metrics, /healthz and /readyz are served\n");
    } catch (error) {
      log("error", "metrics request failed", { error: String(error) });
      if (!response.headersSent) send(500, "internal error\n");
    }
  });
  server.headersTimeout = 5_000;
  server.requestTimeout = 10_000;
  server.keepAliveTimeout = 1_000;
  server.maxHeadersCount = 50;
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  return server;
}
