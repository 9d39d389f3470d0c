/**
 * kube-proxy's health and status endpoints, answered for the agent's Service proxy where a node
 * has no kube-proxy: `/healthz` and `/livez` (kube-proxy's 10256, what cloud load balancers ask
 * of externalTrafficPolicy Cluster Services, and the upstream e2e), with kube-proxy's JSON body
 * (`lastUpdated`, `currentTime`, `nodeEligible`), 200 while the rules are synced and no sync is
 * stuck, 503 otherwise; and `/proxyMode` (kube-proxy's 10249): `nftables`, the kernel interface
 * the proxy writes. Read-only and capped like the metrics endpoint (connection-limits.ts).
 */
import { closeNow, connectionCap, connectionCounts, createLimitedHttpServer, listen } from "./connection-limits.js";
import { AGENT_HTTP_CONNECTION_LIFETIME_MS, AGENT_HTTP_MAX_CONNECTIONS, type AgentHttp } from "./http.js";
import type { Logger } from "./log.js";

export interface ProxyHealthSource {
  /** When the rules were last synced (epoch ms); 0 before the first sync. */
  lastSyncAt(): number;
  /** undefined while healthy, else why not. */
  unhealthy(): string | undefined;
}

type Routes = Readonly<Record<string, (now: number) => { status: number; body: string; type: string }>>;

/** The /healthz (and /livez) answer, as kube-proxy words it. */
export function proxyHealthz(source: ProxyHealthSource, now: number): { status: number; body: string; type: string } {
  const last = source.lastSyncAt();
  const problem = last === 0 ? "the Service rules are not synced yet" : source.unhealthy();
  const body = `${JSON.stringify({ lastUpdated: new Date(last).toISOString(), currentTime: new Date(now).toISOString(), nodeEligible: true, ...(problem ? { problem } : {}) })}\n`;
  return { status: problem ? 503 : 200, body, type: "application/json" };
}

async function serve(what: string, host: string, port: number, routes: Routes, log: Logger): Promise<AgentHttp> {
  const limits = { caps: [connectionCap(AGENT_HTTP_MAX_CONNECTIONS)], lifetimeMs: AGENT_HTTP_CONNECTION_LIFETIME_MS, counts: connectionCounts(), what, log };
  const server = createLimitedHttpServer(limits, (request, response) => {
    const send = (status: number, body: string, type = "text/plain; charset=utf-8") => {
      response.writeHead(status, { "content-type": type, "content-length": Buffer.byteLength(body), connection: "close" });
      response.end(request.method === "HEAD" ? undefined : body);
    };
    if (request.method !== "GET" && request.method !== "HEAD") return send(405, "only GET and HEAD\n");
    const route = routes[(request.url ?? "").split("?")[0]];
    if (!route) return send(404, `not found: ${Object.keys(routes).join(", ")} are served\n`);
    const answer = route(Date.now());
    send(answer.status, answer.body, answer.type);
  });
  await listen(server, port, host, limits);
  return { close: () => closeNow(server) };
}

export function startProxyHealthz(host: string, port: number, source: ProxyHealthSource, log: Logger): Promise<AgentHttp> {
  const healthz = (now: number) => proxyHealthz(source, now);
  return serve("the proxy's health endpoint", host, port, { "/healthz": healthz, "/livez": healthz }, log);
}

export function startProxyStatus(host: string, port: number, log: Logger): Promise<AgentHttp> {
  return serve("the proxy's status endpoint", host, port, { "/proxyMode": () => ({ status: 200, body: "nftables", type: "text/plain; charset=utf-8" }) }, log);
}
