/**
 * The HTTP servers load balancers probe on a Service's healthCheckNodePort, answering as
 * kube-proxy does: 200 while this node has a local endpoint, 503 without, and a JSON body with
 * the Service and the count. One server per port, on every address of the node.
 *
 * Anyone who reaches the node reaches these ports, so no client can hold the agent: starting and
 * stopping a server never waits for a client (the Service proxy's sync waits for `update`), and
 * connections are capped and short-lived (connection-limits.ts).
 */
import type { Server } from "node:http";
import type { ProxyServicePort } from "../dataplane/service-proxy.js";
import { formatIp } from "../net/ip.js";
import { closeNow, connectionCap, connectionCounts, createLimitedHttpServer, listen } from "./connection-limits.js";
import type { Logger } from "./log.js";
import { renderGauge } from "./metrics.js";

/**
 * Connections one health check port holds at once. A load balancer probes each node with one
 * short request every few seconds from each of its probers (a handful to a few dozen), and each
 * connection lasts a few milliseconds: a probe finds at most a few others. 100 is far above
 * that, and 100 descriptors per port are nothing to the agent.
 */
export const HEALTH_CHECK_MAX_CONNECTIONS = 100;
/**
 * Connections all health check ports hold together. A node may serve hundreds of them (one per
 * LoadBalancer Service with externalTrafficPolicy Local); this leaves the agent's own work (its
 * store, commands, the netlink writer, the CNI socket) most of its descriptors even where the
 * limit is as low as this machine's 20,000.
 */
export const HEALTH_CHECKS_MAX_CONNECTIONS = 1_000;
/**
 * How long a connection lives from accept. A probe sends its request as it connects and gets its
 * answer in milliseconds; load balancers give up on a probe after 2–10 s (5 s by default on most
 * clouds), so a connection older than this serves no probe.
 */
export const HEALTH_CHECK_CONNECTION_LIFETIME_MS = 10_000;

export interface HealthCheck {
  readonly namespace: string;
  readonly name: string;
  readonly localEndpoints: number;
}

/** Per health check port, its Service and how many of its ready endpoints run on this node. */
export function localEndpointCounts(ports: readonly ProxyServicePort[], nodeName: string): Map<number, HealthCheck> {
  const local = new Map<number, { namespace: string; name: string; addresses: Set<string> }>();
  for (const port of ports) {
    if (port.healthCheckNodePort === undefined) continue;
    const entry = local.get(port.healthCheckNodePort) ?? { namespace: port.namespace, name: port.name, addresses: new Set<string>() };
    for (const endpoint of port.endpoints) if (endpoint.ready && endpoint.nodeName === nodeName) entry.addresses.add(formatIp(endpoint.address));
    local.set(port.healthCheckNodePort, entry);
  }
  return new Map([...local].map(([port, entry]) => [port, { namespace: entry.namespace, name: entry.name, localEndpoints: entry.addresses.size }]));
}

export interface HealthCheckServers {
  /**
   * Serves exactly the ports of `wanted`: closes the others at once, connections and all, and
   * starts the new ones. Resolves once the new ones listen (or failed to, which is logged).
   */
  update(wanted: ReadonlyMap<number, HealthCheck>): Promise<void>;
  /** Their metrics in Prometheus' text format. */
  metrics(): string;
}

export interface HealthCheckServerOptions {
  readonly log: Logger;
  /** Where they listen; every address of the node unless told (tests use loopback). */
  readonly host?: string;
}

export function startHealthCheckServers(options: HealthCheckServerOptions): HealthCheckServers {
  const { log } = options;
  const host = options.host ?? "::";
  const servers = new Map<number, { server: Server; check: HealthCheck }>();
  const all = connectionCap(HEALTH_CHECKS_MAX_CONNECTIONS);
  const counts = connectionCounts();
  const start = (port: number, check: HealthCheck): Promise<void> => {
    const limits = { caps: [connectionCap(HEALTH_CHECK_MAX_CONNECTIONS), all], lifetimeMs: HEALTH_CHECK_CONNECTION_LIFETIME_MS, counts, what: `health check port ${port}`, log };
    const entry = {
      check,
      server: createLimitedHttpServer(limits, (request, response) => {
        const { namespace, name, localEndpoints } = entry.check;
        const body = `${JSON.stringify({ service: { namespace, name }, localEndpoints, serviceProxyHealthy: true })}\n`;
        response.writeHead(localEndpoints > 0 ? 200 : 503, { "content-type": "application/json", "x-content-type-options": "nosniff", "content-length": Buffer.byteLength(body), connection: "close" });
        response.end(request.method === "HEAD" ? undefined : body);
      }),
    };
    servers.set(port, entry);
    // Binding waits for the kernel only, never for a client.
    return listen(entry.server, port, host, limits).catch((error: unknown) => {
      if (servers.get(port) === entry) servers.delete(port);
      log("error", "cannot serve a health check port", { port, service: `${check.namespace}/${check.name}`, error: String(error) });
    });
  };
  return {
    async update(wanted) {
      for (const [port, running] of servers) {
        if (wanted.has(port)) continue;
        servers.delete(port);
        closeNow(running.server);
      }
      const starting: Promise<void>[] = [];
      for (const [port, check] of wanted) {
        const running = servers.get(port);
        if (running) running.check = check;
        else starting.push(start(port, check));
      }
      await Promise.all(starting);
    },
    metrics: () =>
      [
        renderGauge("trellis_health_check_ports", "Health check node ports served.", [{ value: servers.size }]),
        renderGauge("trellis_health_check_connections", "Connections the health check ports hold.", [{ value: all.sockets.size }]),
        renderGauge("trellis_health_check_connections_closed_total", "Health check connections the agent closed before their clients did: to make room under a cap (dropped), or at the end of their lifetime (expired).", [
          { labels: { reason: "dropped" }, value: counts.dropped },
          { labels: { reason: "expired" }, value: counts.expired },
        ], "counter"),
      ].join(""),
  };
}
