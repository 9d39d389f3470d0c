/**
 * What a Service port leads to: its endpoints with their resolved target ports and conditions,
 * read from the Service's EndpointSlices the way kube-proxy reads them. For a Service with a
 * selector the slices are the ones the EndpointSlice controller would keep (computed from the
 * Pods); without one, the slices applied for it. Pure; the proxy and the lab both use it.
 */
import { endpointSlicesForService, type ZoneOf } from "./endpoints-controller.js";
import { LABEL_SERVICE_NAME, type EndpointSlice, type Pod, type Protocol, type Service, type ServicePort } from "./types.js";

export interface ResolvedEndpoint {
  /** The endpoint's first address, as Kubernetes' proxies use it. */
  readonly address: string;
  /** The target port the slice resolved for this Service port. */
  readonly port: number;
  readonly ready: boolean;
  readonly serving: boolean;
  readonly terminating: boolean;
  readonly nodeName?: string;
  /** Its hints: the zones and nodes it should serve (absent: no hint of that kind). */
  readonly zoneHints?: readonly string[];
  readonly nodeHints?: readonly string[];
}

export interface ResolvedServicePort {
  readonly spec: ServicePort;
  readonly protocol: Protocol;
  readonly endpoints: readonly ResolvedEndpoint[];
}

/** Whether the Service picks its endpoints by label: a selector with at least one label. */
export function hasSelector(service: Service): boolean {
  return Object.keys(service.spec.selector ?? {}).length > 0;
}

/** `NAMESPACE/NAME` of the Service a slice belongs to, or undefined for a slice without the label. */
export function sliceOwner(slice: EndpointSlice): string | undefined {
  const owner = slice.metadata.labels?.[LABEL_SERVICE_NAME];
  return owner ? `${slice.metadata.namespace ?? "default"}/${owner}` : undefined;
}

/**
 * Each port of `service` with its endpoints. `pods` are consulted for a Service with a selector
 * (any namespace; only its own count), `applied` (the slices labelled for it) for one without,
 * and for every Service when `pods` is undefined (the slices came from a real EndpointSlice
 * controller).
 */
export function resolveServicePorts(service: Service, pods: readonly Pod[] | undefined, applied: readonly EndpointSlice[], zoneOf?: ZoneOf): ResolvedServicePort[] {
  const slices = pods !== undefined && hasSelector(service) ? endpointSlicesForService(service, pods, zoneOf) : applied;
  return (service.spec.ports ?? []).map((spec) => {
    const protocol = spec.protocol ?? "TCP";
    const name = spec.name ?? "";
    const endpoints: ResolvedEndpoint[] = [];
    for (const slice of slices) {
      const target = (slice.ports ?? []).find((candidate) => (candidate.name ?? "") === name && (candidate.protocol ?? "TCP") === protocol);
      if (typeof target?.port !== "number") continue;
      for (const endpoint of slice.endpoints ?? []) {
        const address = endpoint.addresses?.[0];
        if (address === undefined) continue;
        // Kubernetes: an unset ready means ready; an unset serving follows ready.
        const ready = endpoint.conditions?.ready ?? true;
        endpoints.push({
          address,
          port: target.port,
          ready,
          serving: endpoint.conditions?.serving ?? ready,
          terminating: endpoint.conditions?.terminating ?? false,
          ...(endpoint.nodeName ? { nodeName: endpoint.nodeName } : {}),
          ...(endpoint.hints?.forZones?.length ? { zoneHints: endpoint.hints.forZones.map((zone) => zone.name) } : {}),
          ...(endpoint.hints?.forNodes?.length ? { nodeHints: endpoint.hints.forNodes.map((node) => node.name) } : {}),
        });
      }
    }
    return { spec, protocol, endpoints };
  });
}
