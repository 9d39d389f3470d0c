/**
 * Which conntrack flows a Service change leaves stale. A UDP flow has no end the kernel can see:
 * its entry keeps sending a client's datagrams to the endpoint it was first DNAT'ed to, or (for
 * a Service that had no endpoint) nowhere, for as long as the client keeps sending. So, as
 * kube-proxy does (kubernetes#19029, #48370):
 * - an endpoint that left a UDP port: its flows to that port's addresses and NodePort go;
 * - a UDP port that had no usable endpoint and now has one: every flow to it goes, so the
 *   next datagram is DNAT'ed afresh. A port new to the proxy counts as one that had none: a
 *   client that sent before its rules existed has a flow that leads nowhere. Under a Local
 *   traffic policy "usable" means on this node, for the addresses that policy governs
 *   (internal: the ClusterIPs; external: NodePorts, external and load-balancer addresses).
 * TCP and SCTP end their flows themselves (a reset from nowhere, or the client's retry).
 */
import { formatIp, type IpAddress } from "../net/ip.js";
import type { ProxyEndpoint, ProxyServicePort } from "./service-proxy.js";

export interface StaleFlow {
  readonly protocol: "udp";
  readonly family: 4 | 6;
  readonly origDst?: IpAddress;
  readonly origPortDst: number;
  readonly replySrc?: IpAddress;
}

export function staleUdpFlows(previous: readonly ProxyServicePort[], next: readonly ProxyServicePort[], node?: string): StaleFlow[] {
  const key = (port: ProxyServicePort) => `${port.namespace}/${port.name}/${port.portName}`;
  const before = new Map(previous.filter((port) => port.protocol === "UDP").map((port) => [key(port), port]));
  const flows = new Map<string, StaleFlow>();
  const add = (flow: StaleFlow) => flows.set(`${flow.family} ${flow.origDst ? formatIp(flow.origDst) : "*"} ${flow.origPortDst} ${flow.replySrc ? formatIp(flow.replySrc) : "*"}`, flow);
  for (const port of next) {
    if (port.protocol !== "UDP") continue;
    const old = before.get(key(port));
    before.delete(key(port));
    // Whether this node had somewhere to send the port's traffic, and has now: under a Local
    // traffic policy only its own endpoints count (a client here whose datagrams led nowhere
    // while the node had none keeps a flow that leads nowhere, though other nodes had some).
    for (const path of ["internal", "external"] as const) {
      const wasUsable = old !== undefined && usableFrom(old, path, node).length > 0;
      if (wasUsable || usableFrom(port, path, node).length === 0) continue;
      for (const stale of old ? [old, port] : [port]) {
        for (const address of path === "internal" ? stale.clusterIPs : [...stale.externalIPs, ...stale.loadBalancerIPs]) add({ protocol: "udp", family: address.family, origDst: address, origPortDst: stale.port });
        if (path === "external" && stale.nodePort !== undefined) for (const family of familiesOf(stale)) add({ protocol: "udp", family, origPortDst: stale.nodePort });
      }
    }
    if (!old) continue;
    const remaining = new Set(usable(port.endpoints).map(endpointKey));
    for (const gone of usable(old.endpoints).filter((endpoint) => !remaining.has(endpointKey(endpoint)))) removeEndpointFlows(old, gone, add);
  }
  // Ports that went away altogether: their endpoints' flows go with them.
  for (const old of before.values()) for (const gone of usable(old.endpoints)) removeEndpointFlows(old, gone, add);
  return [...flows.values()];
}

/** The endpoints a port's traffic from this node's clients (internal) or from outside (external) can go to. */
function usableFrom(port: ProxyServicePort, path: "internal" | "external", node: string | undefined): ProxyEndpoint[] {
  const local = (path === "internal" ? port.internalTrafficPolicy : port.externalTrafficPolicy) === "Local" && node !== undefined;
  return usable(local ? port.endpoints.filter((endpoint) => endpoint.nodeName === node) : port.endpoints);
}

function removeEndpointFlows(port: ProxyServicePort, endpoint: ProxyEndpoint, add: (flow: StaleFlow) => void): void {
  for (const address of addressesOf(port)) {
    if (address.family === endpoint.address.family) add({ protocol: "udp", family: address.family, origDst: address, origPortDst: port.port, replySrc: endpoint.address });
  }
  if (port.nodePort !== undefined) add({ protocol: "udp", family: endpoint.address.family, origPortDst: port.nodePort, replySrc: endpoint.address });
}

/** The endpoints traffic can go to: the ready ones, else the serving terminating ones. */
function usable(endpoints: readonly ProxyEndpoint[]): ProxyEndpoint[] {
  const ready = endpoints.filter((endpoint) => endpoint.ready);
  return ready.length ? ready : endpoints.filter((endpoint) => endpoint.serving && endpoint.terminating);
}

function addressesOf(port: ProxyServicePort): IpAddress[] {
  return [...port.clusterIPs, ...port.externalIPs, ...port.loadBalancerIPs];
}

function familiesOf(port: ProxyServicePort): Array<4 | 6> {
  return [...new Set(port.clusterIPs.map((ip) => ip.family))];
}

function endpointKey(endpoint: ProxyEndpoint): string {
  return `${formatIp(endpoint.address)} ${endpoint.port}`;
}
