/**
 * The Services in the lab's store as `lab check` probes them: each TCP and UDP Service port
 * with its ClusterIPs, NodePort and the lab pods that serve it (from the Pods its selector
 * matches, or from its applied EndpointSlices).
 */
import { endpointSlicesForService, MANAGED_BY_TRELLIS } from "../cluster/objects/endpoints-controller.js";
import { LABEL_MANAGED_BY, LABEL_SERVICE_NAME, type EndpointSlice, type Pod, type Service } from "../cluster/objects/types.js";
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
  /** The lab pods that serve it (ready endpoints), by name, with the node each runs on. */
  readonly endpoints: ReadonlyArray<{ readonly pod: string; readonly node: string }>;
}

export async function labServicePorts(state: LabState): Promise<LabServicePort[]> {
  const [services, pods, slices] = await Promise.all([
    labStoreObjects<Service>(state, "services"),
    labStoreObjects<Pod>(state, "pods"),
    labStoreObjects<EndpointSlice>(state, "endpointslices"),
  ]);
  // `get endpointslices` also lists the slices computed for selector Services: only the applied ones count here.
  return servicePortsOf(state, services, pods, slices.filter((slice) => slice.metadata.labels?.[LABEL_MANAGED_BY] !== MANAGED_BY_TRELLIS));
}

export function servicePortsOf(state: LabState, services: readonly Service[], pods: readonly Pod[], slices: readonly EndpointSlice[]): LabServicePort[] {
  const podByAddress = new Map(state.pods.flatMap((pod) => pod.addresses.map((address) => [address, pod] as const)));
  const ports: LabServicePort[] = [];
  for (const service of services) {
    const spec = service.spec;
    if (spec.clusterIP === "None" || !spec.ports?.length || !spec.clusterIPs?.length) continue;
    const namespace = service.metadata.namespace ?? "default";
    const own = spec.selector
      ? endpointSlicesForService(service, pods)
      : slices.filter((slice) => (slice.metadata.namespace ?? "default") === namespace && slice.metadata.labels?.[LABEL_SERVICE_NAME] === service.metadata.name);
    for (const port of spec.ports) {
      if (port.protocol !== "TCP" && port.protocol !== "UDP") continue;
      const endpoints = new Map<string, { pod: string; node: string }>();
      for (const slice of own) {
        if (!(slice.ports ?? []).some((candidate) => (candidate.name ?? "") === (port.name ?? "") && (candidate.protocol ?? "TCP") === port.protocol && candidate.port === state.probePort)) continue;
        for (const endpoint of slice.endpoints) {
          if (endpoint.conditions?.ready === false) continue;
          for (const address of endpoint.addresses) {
            const pod = podByAddress.get(address);
            if (pod) endpoints.set(pod.name, { pod: pod.name, node: pod.node });
          }
        }
      }
      ports.push({
        service: `${namespace}/${service.metadata.name}`,
        protocol: port.protocol,
        port: port.port,
        ...(port.nodePort === undefined ? {} : { nodePort: port.nodePort }),
        clusterIPs: spec.clusterIPs,
        externalTrafficPolicy: spec.externalTrafficPolicy === "Local" ? "Local" : "Cluster",
        endpoints: [...endpoints.values()],
      });
    }
  }
  return ports;
}
