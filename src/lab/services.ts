/**
 * The Services in the lab's store as `lab check` probes them: each TCP and UDP Service port
 * with its ClusterIPs, NodePort and the lab pods that serve it (from the Pods its selector
 * matches, or from its applied EndpointSlices).
 */
import { MANAGED_BY_TRELLIS } from "../cluster/objects/endpoints-controller.js";
import { resolveServicePorts, sliceOwner } from "../cluster/objects/service-endpoints.js";
import { LABEL_MANAGED_BY, type EndpointSlice, type Pod, type Service } from "../cluster/objects/types.js";
import { parsePrefix, prefixContains, tryParseIp } from "../net/ip.js";
import { labKubectl } from "./kube-lab.js";
import { labStoreObjects } from "./store-access.js";
import type { LabState } from "./state.js";

export interface LabServicePort {
  /** `NAMESPACE/NAME` */
  readonly service: string;
  readonly protocol: "TCP" | "UDP";
  readonly port: number;
  readonly nodePort?: number;
  readonly clusterIPs: readonly string[];
  readonly externalTrafficPolicy: "Cluster" | "Local";
  /** Its external and load-balancer addresses that the lab routes to a node (LAB_EXTERNAL_IPS). */
  readonly externalIPs: readonly string[];
  /** sessionAffinity ClientIP: a client keeps its endpoint. */
  readonly sessionAffinity: boolean;
  /** spec.trafficDistribution: clients should be answered from their node's zone (or the node). */
  readonly trafficDistribution?: string;
  /** The lab pods that serve it (ready endpoints), by name, with the node each runs on. */
  readonly endpoints: ReadonlyArray<{ readonly pod: string; readonly node: string }>;
}

export async function labServicePorts(state: LabState): Promise<LabServicePort[]> {
  if (state.kubernetes) {
    // The EndpointSlice controller's slices are the endpoints of every Service.
    const list = async <T>(resource: string) => (JSON.parse(await labKubectl(state.kubernetes!, ["get", resource, "-A", "-o", "json"])) as { items: T[] }).items;
    const [services, slices] = await Promise.all([list<Service>("services"), list<EndpointSlice>("endpointslices")]);
    return servicePortsOf(state, services, undefined, slices);
  }
  const [services, pods, slices] = await Promise.all([
    labStoreObjects<Service>(state, "services"),
    labStoreObjects<Pod>(state, "pods"),
    labStoreObjects<EndpointSlice>(state, "endpointslices"),
  ]);
  // `get endpointslices` also lists the slices computed for selector Services: only the applied ones count here.
  return servicePortsOf(state, services, pods, slices.filter((slice) => slice.metadata.labels?.[LABEL_MANAGED_BY] !== MANAGED_BY_TRELLIS));
}

/** `pods` undefined: every Service's endpoints are its slices' (a real EndpointSlice controller made them). */
export function servicePortsOf(state: LabState, services: readonly Service[], pods: readonly Pod[] | undefined, slices: readonly EndpointSlice[]): LabServicePort[] {
  const podByAddress = new Map(state.pods.flatMap((pod) => pod.addresses.map((address) => [address, pod] as const)));
  const applied = new Map<string, EndpointSlice[]>();
  for (const slice of slices) {
    const owner = sliceOwner(slice);
    if (owner) applied.set(owner, [...(applied.get(owner) ?? []), slice]);
  }
  const routed = (state.externalIps?.ranges ?? []).map(parsePrefix);
  const ports: LabServicePort[] = [];
  for (const service of services) {
    const spec = service.spec;
    if (spec.clusterIP === "None" || !spec.ports?.length || !spec.clusterIPs?.length) continue;
    const name = `${service.metadata.namespace ?? "default"}/${service.metadata.name}`;
    for (const { spec: port, protocol, endpoints: resolved } of resolveServicePorts(service, pods, applied.get(name) ?? [])) {
      if (protocol !== "TCP" && protocol !== "UDP") continue;
      const endpoints = new Map<string, { pod: string; node: string }>();
      // Only ready endpoints that are lab pods answering on the port: the probe port, or in a
      // Kubernetes lab any port (its kubelet serves every port a Pod declares).
      const labPod = (endpoint: (typeof resolved)[number]) => (endpoint.ready && (state.kubernetes || endpoint.port === state.probePort) ? podByAddress.get(endpoint.address) : undefined);
      // A Service served by something else (the API server behind `kubernetes`) cannot be judged.
      if (state.kubernetes && resolved.some((endpoint) => endpoint.ready && !labPod(endpoint))) continue;
      for (const endpoint of resolved) {
        const pod = labPod(endpoint);
        if (pod) endpoints.set(pod.name, { pod: pod.name, node: pod.node });
      }
      ports.push({
        service: name,
        protocol,
        port: port.port,
        ...(port.nodePort === undefined ? {} : { nodePort: port.nodePort }),
        clusterIPs: spec.clusterIPs,
        externalTrafficPolicy: spec.externalTrafficPolicy === "Local" ? "Local" : "Cluster",
        sessionAffinity: spec.sessionAffinity === "ClientIP",
        ...(spec.trafficDistribution ? { trafficDistribution: spec.trafficDistribution } : {}),
        externalIPs: [...(spec.externalIPs ?? []), ...(spec.type === "LoadBalancer" ? (service.status?.loadBalancer?.ingress ?? []).flatMap((ingress) => (ingress.ip && ingress.ipMode !== "Proxy" ? [ingress.ip] : [])) : [])]
          .filter((address) => {
            const ip = tryParseIp(address);
            return ip !== undefined && routed.some((range) => prefixContains(range, ip));
          }),
        endpoints: [...endpoints.values()],
      });
    }
  }
  return ports;
}
