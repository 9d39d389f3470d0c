/**
 * The Service proxy's view of the store: Services, EndpointSlices and Pods as parsed objects,
 * indexed so that a change to one object marks only the Services it can affect (a slice: the
 * Service it is labelled for; a Pod: the Services in its namespace whose selector matches its
 * labels before or after), and each Service's ports with their endpoints worked out again only
 * when it was marked. A port that did not change stays the same object, which is what lets the
 * ruleset cache skip it.
 */
import { matchesSelector } from "../cluster/objects/endpoints-controller.js";
import { hasSelector, resolveServicePorts, sliceOwner } from "../cluster/objects/service-endpoints.js";
import type { EndpointSlice, Pod, Service } from "../cluster/objects/types.js";
import { checkServicePort, type ProxyServicePort, type ServiceProtocol } from "../dataplane/service-proxy.js";
import { tryParseIp, type IpAddress } from "../net/ip.js";
import type { EndpointSource } from "./proxy-source.js";

export class ServiceIndex {
  /**
   * `endpoints` (see EndpointSource): where a Service with a selector gets its endpoints.
   * `refused` hears of each port left out because the ruleset could not hold it.
   */
  constructor(
    private readonly endpoints: EndpointSource = "pods",
    private readonly refused: (reason: string) => void = () => undefined,
  ) {}

  /** By `NAMESPACE/NAME`. */
  private readonly services = new Map<string, Service>();
  private readonly selectorServices = new Map<string, Set<string>>();
  /** By store key. */
  private readonly slices = new Map<string, EndpointSlice>();
  /** Store keys of the slices labelled for a Service, by `NAMESPACE/NAME`. */
  private readonly slicesByOwner = new Map<string, Set<string>>();
  /** By store key. */
  private readonly pods = new Map<string, Pod>();
  private readonly podsByNamespace = new Map<string, Set<string>>();
  /** Each Service's ports as last worked out. */
  private readonly ports = new Map<string, readonly ProxyServicePort[]>();
  /** Services to work out again. */
  private readonly stale = new Set<string>();
  private count = 0;

  /**
   * Forgets every object (before a relist puts them back). The ports last handed out are kept,
   * so that the next `changes` gives what the relist changed, not everything.
   */
  clear(): void {
    for (const map of [this.services, this.selectorServices, this.slices, this.slicesByOwner, this.pods, this.podsByNamespace]) map.clear();
    for (const key of this.ports.keys()) this.stale.add(key);
  }

  /** Whether some Service must be worked out again. */
  get changed(): boolean {
    return this.stale.size > 0;
  }

  /** How many Service ports there are (as of the last `all` or `changes`). */
  get size(): number {
    return this.count;
  }

  /** Every Service port with its endpoints; the Services marked since the last call are worked out again. */
  all(): ProxyServicePort[] {
    this.changes();
    const all: ProxyServicePort[] = [];
    for (const ports of this.ports.values()) for (const port of ports) all.push(port);
    return all;
  }

  /**
   * The ports that went and came since the last call (a changed port is in both, as its old and
   * its new object): the marked Services worked out again.
   */
  changes(): { removed: ProxyServicePort[]; added: ProxyServicePort[] } {
    const removed: ProxyServicePort[] = [];
    const added: ProxyServicePort[] = [];
    for (const key of this.stale) {
      const service = this.services.get(key);
      const ports = service ? this.portsOf(service) : [];
      for (const port of this.ports.get(key) ?? []) removed.push(port);
      for (const port of ports) added.push(port);
      this.count += ports.length - (this.ports.get(key)?.length ?? 0);
      if (ports.length) this.ports.set(key, ports);
      else this.ports.delete(key);
    }
    this.stale.clear();
    return { removed, added };
  }

  /** A Service by `NAMESPACE/NAME` came or changed (undefined: went). */
  putService(key: string, service: Service | undefined): void {
    const namespace = key.slice(0, key.indexOf("/"));
    this.selectorServices.get(namespace)?.delete(key);
    if (service) {
      this.services.set(key, service);
      if (hasSelector(service)) addTo(this.selectorServices, namespace, key);
    } else {
      this.services.delete(key);
    }
    this.stale.add(key);
  }

  /** An EndpointSlice, by any key unique among slices, came or changed (undefined: went). */
  putSlice(storeKey: string, slice: EndpointSlice | undefined): void {
    const before = this.slices.get(storeKey);
    const oldOwner = before && sliceOwner(before);
    if (oldOwner) {
      this.slicesByOwner.get(oldOwner)?.delete(storeKey);
      this.stale.add(oldOwner);
    }
    if (slice) this.slices.set(storeKey, slice);
    else this.slices.delete(storeKey);
    const owner = slice && sliceOwner(slice);
    if (owner) {
      addTo(this.slicesByOwner, owner, storeKey);
      this.stale.add(owner);
    }
  }

  /** A Pod, by any key unique among Pods, came or changed (undefined: went). */
  putPod(storeKey: string, pod: Pod | undefined): void {
    const before = this.pods.get(storeKey);
    for (const changed of [before, pod]) {
      if (!changed) continue;
      const namespace = changed.metadata?.namespace ?? "default";
      const labels = changed.metadata?.labels ?? {};
      for (const key of this.selectorServices.get(namespace) ?? []) {
        if (matchesSelector(this.services.get(key)!.spec.selector ?? {}, labels)) this.stale.add(key);
      }
    }
    if (before) this.podsByNamespace.get(before.metadata?.namespace ?? "default")?.delete(storeKey);
    if (pod) {
      this.pods.set(storeKey, pod);
      addTo(this.podsByNamespace, pod.metadata?.namespace ?? "default", storeKey);
    } else {
      this.pods.delete(storeKey);
    }
  }

  private portsOf(service: Service): ProxyServicePort[] {
    const spec = service.spec;
    if (!spec || spec.clusterIP === "None" || (spec.type as string) === "ExternalName" || !spec.ports?.length) return [];
    const namespace = service.metadata.namespace ?? "default";
    const key = `${namespace}/${service.metadata.name}`;
    const pods = this.endpoints === "slices" ? undefined : hasSelector(service) ? [...(this.podsByNamespace.get(namespace) ?? [])].map((podKey) => this.pods.get(podKey)!) : [];
    const applied = [...(this.slicesByOwner.get(key) ?? [])].map((sliceKey) => this.slices.get(sliceKey)!);
    const clusterIPs = addresses(spec.clusterIPs);
    const externalIPs = addresses(spec.externalIPs);
    const loadBalancerIPs = spec.type === "LoadBalancer" ? addresses((service.status?.loadBalancer?.ingress ?? []).flatMap((ingress) => (ingress.ip ? [ingress.ip] : []))) : [];
    const affinity = spec.sessionAffinity === "ClientIP" ? (spec.sessionAffinityConfig?.clientIP?.timeoutSeconds ?? 10800) : undefined;
    // A port is known by its protocol and name: a second one alike (a hand-written store value) is left out.
    const seen = new Set<string>();
    const unique = resolveServicePorts(service, pods, applied).filter(({ spec: port, protocol }) => {
      const id = `${protocol}/${port.name ?? ""}`;
      return !seen.has(id) && Boolean(seen.add(id));
    });
    const ports: ProxyServicePort[] = unique.map(({ spec: port, protocol, endpoints }) => ({
      namespace,
      name: service.metadata.name,
      portName: port.name ?? "",
      protocol: protocol as ServiceProtocol,
      port: port.port,
      nodePort: port.nodePort ?? undefined,
      clusterIPs,
      externalIPs,
      loadBalancerIPs,
      sessionAffinityTimeoutSeconds: affinity,
      ...(spec.healthCheckNodePort === undefined ? {} : { healthCheckNodePort: spec.healthCheckNodePort }),
      externalTrafficPolicy: spec.externalTrafficPolicy === "Local" ? "Local" : "Cluster",
      internalTrafficPolicy: spec.internalTrafficPolicy === "Local" ? "Local" : "Cluster",
      endpoints: endpoints.flatMap((endpoint) => {
        const address = tryParseIp(endpoint.address);
        return address ? [{ ...endpoint, address }] : [];
      }),
    }));
    return ports.filter((port) => {
      try {
        checkServicePort(port);
        return true;
      } catch (error) {
        this.refused(error instanceof Error ? error.message : String(error));
        return false;
      }
    });
  }
}

function addTo(index: Map<string, Set<string>>, key: string, value: string): void {
  let set = index.get(key);
  if (!set) index.set(key, (set = new Set()));
  set.add(value);
}

function addresses(list: readonly string[] | undefined): IpAddress[] {
  return (list ?? []).flatMap((text) => tryParseIp(text) ?? []);
}
