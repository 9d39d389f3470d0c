/**
 * The EndpointSlices Kubernetes' EndpointSlice controller (kube-controller-manager's
 * endpointslice reconciler) would keep for a Service with a selector, computed from the Pods.
 * Pure and deterministic: the same Service and Pods give the same slices, with names derived
 * from the Service (`web-ipv4`, `web-ipv4-2`, `web-ipv6`) where Kubernetes generates random
 * ones, so a caller can store them by name and diff.
 */
import { tryParseIp } from "../../net/ip.js";
import {
  LABEL_HEADLESS, LABEL_MANAGED_BY, LABEL_SERVICE_NAME, type AddressType, type Endpoint, type EndpointHints, type EndpointPort, type EndpointSlice, type Pod,
  type Service,
} from "./types.js";

/** A node's zone (its topology.kubernetes.io/zone), when it has one. */
export type ZoneOf = (nodeName: string) => string | undefined;

/** The value of endpointslice.kubernetes.io/managed-by on the slices computed here. */
export const MANAGED_BY_TRELLIS = "trellis";
/** kube-controller-manager's default --max-endpoints-per-slice. */
export const MAX_ENDPOINTS_PER_SLICE = 100;

interface SliceContent {
  readonly ports: readonly EndpointPort[];
  readonly endpoints: readonly Endpoint[];
}

/**
 * One slice per address family of the Service and distinct set of resolved ports, at most
 * MAX_ENDPOINTS_PER_SLICE endpoints each; a family with no endpoints gets one empty slice, as
 * the controller's placeholder. A Service without a selector gets none: its slices are
 * written by hand.
 */
export function endpointSlicesForService(service: Service, pods: readonly Pod[], zoneOf: ZoneOf = () => undefined): EndpointSlice[] {
  const selector = service.spec.selector ?? {};
  if (Object.keys(selector).length === 0) return [];
  const selected = pods
    .filter((pod) => pod.metadata.namespace === service.metadata.namespace && matchesSelector(selector, pod.metadata.labels ?? {}) && belongsInEndpoints(pod))
    .sort((a, b) => compareText(a.metadata.name, b.metadata.name));
  return addressTypes(service).flatMap((addressType) => slicesOf(service, addressType, selected, zoneOf));
}

function slicesOf(service: Service, addressType: AddressType, pods: readonly Pod[], zoneOf: ZoneOf): EndpointSlice[] {
  const groups = new Map<string, { ports: EndpointPort[]; endpoints: Endpoint[] }>();
  for (const pod of pods) {
    const endpoint = podEndpoint(service, pod, addressType, zoneOf);
    if (!endpoint) continue;
    const ports = resolvedPorts(service, pod);
    const key = JSON.stringify(ports);
    const group = groups.get(key) ?? { ports, endpoints: [] };
    group.endpoints.push(endpoint);
    groups.set(key, group);
  }
  // The group that resolves the most ports (usually every pod's) comes first and takes the plain name.
  const contents: SliceContent[] = [...groups.entries()]
    .sort(([keyA, a], [keyB, b]) => b.ports.length - a.ports.length || compareText(keyA, keyB))
    .flatMap(([, group]) => chunks(group.endpoints.sort(compareEndpoints), MAX_ENDPOINTS_PER_SLICE).map((endpoints) => ({ ports: group.ports, endpoints })));
  if (contents.length === 0) contents.push({ ports: [], endpoints: [] });

  const base = `${service.metadata.name}-${addressType.toLowerCase()}`;
  return contents.map(({ ports, endpoints }, i) => ({
    apiVersion: "discovery.k8s.io/v1",
    kind: "EndpointSlice",
    metadata: { name: i === 0 ? base : `${base}-${i + 1}`, namespace: service.metadata.namespace, labels: sliceLabels(service) },
    addressType,
    endpoints,
    ports,
  }));
}

/** The Service's families; without ipFamilies (an object from an old apiserver), the controller's guess. */
function addressTypes(service: Service): AddressType[] {
  const families = service.spec.ipFamilies ?? [];
  if (families.length > 0) return [...new Set(families)];
  const clusterIP = service.spec.clusterIP;
  if (clusterIP && clusterIP !== "None") return [tryParseIp(clusterIP)?.family === 6 ? "IPv6" : "IPv4"];
  return ["IPv4", "IPv6"];
}

export function matchesSelector(selector: Readonly<Record<string, string>>, labels: Readonly<Record<string, string>>): boolean {
  return Object.entries(selector).every(([key, value]) => labels[key] === value);
}

/** ShouldPodBeInEndpoints as the slice controller calls it: terminating pods stay, finished ones and those without an IP do not. */
function belongsInEndpoints(pod: Pod): boolean {
  if (pod.status.phase === "Succeeded" || pod.status.phase === "Failed") return false;
  return Boolean(pod.status.podIP) || (pod.status.podIPs?.length ?? 0) > 0;
}

function podEndpoint(service: Service, pod: Pod, addressType: AddressType, zoneOf: ZoneOf): Endpoint | undefined {
  const podIPs = pod.status.podIPs ?? (pod.status.podIP ? [{ ip: pod.status.podIP }] : []);
  const family = addressType === "IPv6" ? 6 : 4;
  const addresses = podIPs.map(({ ip }) => ip).filter((ip) => tryParseIp(ip)?.family === family);
  if (addresses.length === 0) return undefined;
  const serving = pod.status.conditions?.some((condition) => condition.type === "Ready" && condition.status === "True") ?? false;
  const terminating = pod.metadata.deletionTimestamp !== undefined;
  // A terminating pod is never ready, unless the Service publishes every address.
  const ready = service.spec.publishNotReadyAddresses || (serving && !terminating);
  const { hostname, subdomain, nodeName } = pod.spec;
  const zone = nodeName ? zoneOf(nodeName) : undefined;
  const hints = ready ? trafficHints(service, nodeName, zone) : undefined;
  return {
    addresses,
    conditions: { ready, serving, terminating },
    ...(hostname && subdomain === service.metadata.name ? { hostname } : {}),
    targetRef: { kind: "Pod", namespace: pod.metadata.namespace, name: pod.metadata.name, ...(pod.metadata.uid ? { uid: pod.metadata.uid } : {}) },
    ...(nodeName ? { nodeName } : {}),
    ...(zone !== undefined ? { zone } : {}),
    ...(hints ? { hints } : {}),
  };
}

/**
 * The hints the controller gives a ready endpoint for the Service's trafficDistribution
 * (k8s.io/endpointslice's trafficdist): its own zone for every value, and its own node too for
 * PreferSameNode; none without a trafficDistribution, and no zone hint without a zone.
 */
function trafficHints(service: Service, nodeName: string | undefined, zone: string | undefined): EndpointHints | undefined {
  const distribution = service.spec.trafficDistribution;
  if (!distribution) return undefined;
  const forZones = zone !== undefined ? [{ name: zone }] : undefined;
  const forNodes = distribution === "PreferSameNode" && nodeName ? [{ name: nodeName }] : undefined;
  if (!forZones && !forNodes) return undefined;
  return { ...(forZones ? { forZones } : {}), ...(forNodes ? { forNodes } : {}) };
}

/**
 * The Service's ports as this pod serves them (FindPort): a number as it is, a name looked up
 * among the pod's container ports of the same protocol. A port the pod does not name is left
 * out of its slice rather than the pod left out of the Service.
 */
function resolvedPorts(service: Service, pod: Pod): EndpointPort[] {
  return service.spec.ports.flatMap((port) => {
    const target = port.targetPort;
    const number = typeof target === "number"
      ? target
      : pod.spec.containers.flatMap((container) => container.ports ?? []).find((candidate) => candidate.name === target && candidate.protocol === port.protocol)?.containerPort;
    if (number === undefined) return [];
    return [{ name: port.name ?? "", protocol: port.protocol, port: number, ...(port.appProtocol === undefined ? {} : { appProtocol: port.appProtocol }) }];
  });
}

/** The Service's own labels, then the controller's, which win (setEndpointSliceLabels). */
function sliceLabels(service: Service): Record<string, string> {
  const reserved = [LABEL_SERVICE_NAME, LABEL_MANAGED_BY, LABEL_HEADLESS];
  const labels = Object.fromEntries(Object.entries(service.metadata.labels ?? {}).filter(([key]) => !reserved.includes(key)));
  labels[LABEL_SERVICE_NAME] = service.metadata.name;
  labels[LABEL_MANAGED_BY] = MANAGED_BY_TRELLIS;
  const clusterIP = service.spec.clusterIP;
  if (!clusterIP || clusterIP === "None") labels[LABEL_HEADLESS] = "";
  return labels;
}

/** By address, numerically, then by pod: the order a reader scans. */
function compareEndpoints(a: Endpoint, b: Endpoint): number {
  const ipA = tryParseIp(a.addresses[0])!.value;
  const ipB = tryParseIp(b.addresses[0])!.value;
  if (ipA !== ipB) return ipA < ipB ? -1 : 1;
  return compareText(a.targetRef?.name ?? "", b.targetRef?.name ?? "");
}

/** Locale-independent, so every machine orders alike. */
function compareText(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

function chunks<T>(items: readonly T[], size: number): T[][] {
  const result: T[][] = [];
  for (let i = 0; i < items.length; i += size) result.push(items.slice(i, i + size));
  return result;
}
