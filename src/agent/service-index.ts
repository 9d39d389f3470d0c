/**
 * The Service proxy's view of the store: Services, EndpointSlices and Pods as parsed objects,
 * indexed so that a change to one object marks only the Services it can affect (a slice: the
 * Service it is labelled for; a Pod: the Services in its namespace whose selector matches its
 * labels before or after), and each Service's ports with their endpoints worked out again only
 * when it was marked. A port that did not change stays the same object, which is what lets the
 * ruleset cache skip it.
 *
 * A Service is a tenant's input: its external addresses (externalIPs, load-balancer ingress)
 * are kept only where the policy allows them and where they mean nothing else in the cluster
 * (dataplane/external-addresses.ts), and where two Services claim one external address, protocol
 * and port, the older keeps it. Those checks depend on other objects (another Service's
 * ClusterIP, an older claim, a node's address), so a change to those marks the Services it can
 * affect, as a Pod's change marks the Services that select it.
 */
import { matchesSelector } from "../cluster/objects/endpoints-controller.js";
import { hasSelector, resolveServicePorts, sliceOwner } from "../cluster/objects/service-endpoints.js";
import { LABEL_HEADLESS, LABEL_SERVICE_PROXY_NAME, type EndpointSlice, type Pod, type Service } from "../cluster/objects/types.js";
import { externalAddressProblem, type ExternalAddressPolicy } from "../dataplane/external-addresses.js";
import { checkServicePort, type ProxyServicePort, type ServiceProtocol } from "../dataplane/service-proxy.js";
import { formatIp, tryParseIp, type IpAddress } from "../net/ip.js";
import type { EndpointSource } from "./proxy-source.js";
import type { Rejection } from "./rejections.js";

/** The Service the API server keeps with its own addresses as endpoints. */
const API_SERVER_SERVICE = "default/kubernetes";

/** No external address anywhere: what a node gets until the agent says otherwise. */
const NO_EXTERNAL_ADDRESSES: ExternalAddressPolicy = { allowed: [], podCidrs: [], serviceCidrs: [], reserved: new Map() };

export class ServiceIndex {
  /**
   * `endpoints` (see EndpointSource): where a Service with a selector gets its endpoints.
   * `refused` hears, each time a Service is worked out, what of it is left out and why (an
   * empty list when nothing is, and when it went).
   */
  constructor(
    private readonly endpoints: EndpointSource = "pods",
    private readonly refused: (service: string, rejections: readonly Rejection[]) => void = () => undefined,
  ) {}

  private policy: ExternalAddressPolicy = NO_EXTERNAL_ADDRESSES;
  /** Services by each ClusterIP they hold (as in their spec). */
  private readonly clusterIpOwners = new Map<string, Set<string>>();
  /** Services by each external address they ask for, allowed or not. */
  private readonly externalUsers = new Map<string, Set<string>>();
  /** Services by each `ADDRESS PROTOCOL PORT` they claim with an allowed external address. */
  private readonly externalClaimants = new Map<string, Set<string>>();
  /** Each Service's claims, as last worked out. */
  private readonly externalClaims = new Map<string, readonly string[]>();
  /** Every node's zone, for the hints of endpoints worked out from Pods (trafficDistribution). */
  private zones: ReadonlyMap<string, string> = new Map();
  /** The API server's addresses: the endpoints of `default/kubernetes`, which the API server itself keeps (on the Kubernetes API only). */
  private apiServer = new Set<string>();

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
    for (const map of [this.services, this.selectorServices, this.slices, this.slicesByOwner, this.pods, this.podsByNamespace, this.clusterIpOwners, this.externalUsers]) map.clear();
    for (const key of this.ports.keys()) this.stale.add(key);
    for (const key of this.externalClaims.keys()) this.stale.add(key);
  }

  /**
   * Where external addresses may be and what they may not be. Every Service asking for one is
   * worked out again when it changes (a node came with a new address, say).
   */
  setExternalPolicy(policy: ExternalAddressPolicy): void {
    if (samePolicy(this.policy, policy)) return;
    this.policy = policy;
    for (const users of this.externalUsers.values()) for (const key of users) this.stale.add(key);
  }

  /** Whether some Service must be worked out again. */
  get changed(): boolean {
    return this.stale.size > 0;
  }

  /** How many Service ports there are (as of the last `all` or `changes`). */
  get size(): number {
    return this.count;
  }

  /** Every Service port as last worked out (by `all` or `changes`), without working out the marked ones. */
  *workedOut(): Generator<ProxyServicePort> {
    for (const ports of this.ports.values()) yield* ports;
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
    /** Each Service worked out, with its ports as they were before this call. */
    const before = new Map<string, readonly ProxyServicePort[]>();
    // Working a Service out may mark others (its external claims changed, and an older claim
    // wins): they are taken up in the same call, each given once in what is returned.
    while (this.stale.size) {
      const key: string = this.stale.values().next().value!;
      this.stale.delete(key);
      const current = this.ports.get(key) ?? [];
      if (!before.has(key)) before.set(key, current);
      const service = this.services.get(key);
      const ports = service ? this.portsOf(key, service) : [];
      if (!service) {
        this.setClaims(key, []);
        this.refused(key, []);
      }
      this.count += ports.length - current.length;
      if (ports.length) this.ports.set(key, ports);
      else this.ports.delete(key);
      if (key === API_SERVER_SERVICE && this.endpoints === "slices") this.setApiServer(ports);
    }
    const removed: ProxyServicePort[] = [];
    const added: ProxyServicePort[] = [];
    for (const [key, ports] of before) {
      for (const port of ports) removed.push(port);
      for (const port of this.ports.get(key) ?? []) added.push(port);
    }
    return { removed, added };
  }

  /** A Service by `NAMESPACE/NAME` came or changed (undefined: went). */
  putService(key: string, service: Service | undefined): void {
    const namespace = key.slice(0, key.indexOf("/"));
    this.selectorServices.get(namespace)?.delete(key);
    const before = this.services.get(key);
    if (service) {
      this.services.set(key, service);
      if (hasSelector(service)) addTo(this.selectorServices, namespace, key);
    } else {
      this.services.delete(key);
    }
    // A ClusterIP that came or went changes what the Services asking for it as an external address may have.
    const [was, is] = [clusterIpsOf(before), clusterIpsOf(service)];
    for (const ip of was) if (!is.has(ip)) this.unlink(this.clusterIpOwners, ip, key);
    for (const ip of is) if (!was.has(ip)) addTo(this.clusterIpOwners, ip, key);
    for (const ip of new Set([...was, ...is])) if (was.has(ip) !== is.has(ip)) for (const user of this.externalUsers.get(ip) ?? []) this.stale.add(user);
    const [askedBefore, asked] = [externalAddressesOf(before), externalAddressesOf(service)];
    for (const ip of askedBefore) if (!asked.has(ip)) this.unlink(this.externalUsers, ip, key);
    for (const ip of asked) if (!askedBefore.has(ip)) addTo(this.externalUsers, ip, key);
    this.stale.add(key);
  }

  /** An EndpointSlice, by any key unique among slices, came or changed (undefined: went). */
  putSlice(storeKey: string, given: EndpointSlice | undefined): void {
    // A slice labelled for another proxy, or as headless, is none of this proxy's (kube-proxy
    // watches slices with the same selector as Services): as if it were gone.
    const slice = given && !otherProxyLabelled(given.metadata?.labels) ? given : undefined;
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

  /**
   * The nodes' zones now: the Services whose endpoints are worked out from Pods with a
   * trafficDistribution are worked out again (their hints name zones).
   */
  setZones(zones: ReadonlyMap<string, string>): void {
    this.zones = zones;
    if (this.endpoints === "slices") return;
    for (const [key, service] of this.services) if (service.spec?.trafficDistribution && hasSelector(service)) this.stale.add(key);
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

  private portsOf(key: string, service: Service): ProxyServicePort[] {
    const spec = service.spec;
    const rejections: Rejection[] = [];
    const namespace = service.metadata.namespace ?? "default";
    const refuse = (reason: string, message: string) => rejections.push({ kind: "Service", namespace, name: service.metadata.name, reason, message: `Service ${key}: ${message}` });
    // A Service labelled for another proxy, or as headless, is no proxy's but that one's (kube-proxy
    // watches with the same selector); its ClusterIP stays its own.
    if (!spec || spec.clusterIP === "None" || (spec.type as string) === "ExternalName" || !spec.ports?.length || otherProxyLabelled(service.metadata.labels)) {
      this.setClaims(key, []);
      this.refused(key, []);
      return [];
    }
    const pods = this.endpoints === "slices" ? undefined : hasSelector(service) ? [...(this.podsByNamespace.get(namespace) ?? [])].map((podKey) => this.pods.get(podKey)!) : [];
    const applied = [...(this.slicesByOwner.get(key) ?? [])].map((sliceKey) => this.slices.get(sliceKey)!);
    const clusterIPs = addresses(spec.clusterIPs);
    const allowed = (field: string, list: readonly IpAddress[]) => list.filter((ip) => {
      const shown = formatIp(ip);
      const owner = [...(this.clusterIpOwners.get(shown) ?? [])][0];
      const meaning = owner !== undefined ? `the ClusterIP of Service ${owner}` : this.apiServer.has(shown) ? `the API server's address (an endpoint of Service ${API_SERVER_SERVICE})` : undefined;
      const problem = externalAddressProblem(ip, shown, this.policy, meaning);
      if (problem) refuse(problem.reason, `${field} ${problem.why}; it is not served`);
      return !problem;
    });
    const externalIPs = allowed("externalIPs", addresses(spec.externalIPs));
    const loadBalancerIPs = spec.type === "LoadBalancer" ? allowed("status.loadBalancer.ingress", addresses(loadBalancerIngress(service))) : [];
    const affinity = spec.sessionAffinity === "ClientIP" ? (spec.sessionAffinityConfig?.clientIP?.timeoutSeconds ?? 10800) : undefined;
    // A port is known by its protocol and name: a second one alike (a hand-written store value) is left out.
    const seen = new Set<string>();
    const unique = resolveServicePorts(service, pods, applied, (node) => this.zones.get(node)).filter(({ spec: port, protocol }) => {
      const id = `${protocol}/${port.name ?? ""}`;
      return !seen.has(id) && Boolean(seen.add(id));
    });
    // Each external address, protocol and port is served for the oldest Service claiming it.
    const claims: string[] = [];
    const rank = rankOf(key, service);
    const held = (ip: IpAddress, protocol: string, port: number) => {
      const claim = `${formatIp(ip)} ${protocol} ${port}`;
      claims.push(claim);
      const older = [...(this.externalClaimants.get(claim) ?? [])].filter((other) => other !== key && this.services.has(other)).find((other) => rankOf(other, this.services.get(other)!) < rank);
      if (older) refuse("external-ip-taken", `${formatIp(ip)} port ${port}/${protocol} is taken by Service ${older}, which claimed it earlier; it is not served`);
      return !older;
    };
    const ports: ProxyServicePort[] = unique.map(({ spec: port, protocol, endpoints }) => ({
      namespace,
      name: service.metadata.name,
      portName: port.name ?? "",
      protocol: protocol as ServiceProtocol,
      port: port.port,
      nodePort: port.nodePort ?? undefined,
      clusterIPs,
      externalIPs: externalIPs.filter((ip) => held(ip, protocol, port.port)),
      loadBalancerIPs: loadBalancerIPs.filter((ip) => held(ip, protocol, port.port)),
      ...(service.metadata.creationTimestamp === undefined ? {} : { createdAt: service.metadata.creationTimestamp }),
      sessionAffinityTimeoutSeconds: affinity,
      ...(spec.healthCheckNodePort === undefined ? {} : { healthCheckNodePort: spec.healthCheckNodePort }),
      externalTrafficPolicy: spec.externalTrafficPolicy === "Local" ? "Local" : "Cluster",
      internalTrafficPolicy: spec.internalTrafficPolicy === "Local" ? "Local" : "Cluster",
      endpoints: endpoints.flatMap((endpoint) => {
        const address = tryParseIp(endpoint.address);
        return address ? [{ ...endpoint, address }] : [];
      }),
    }));
    this.setClaims(key, claims);
    const kept = ports.filter((port) => {
      try {
        checkServicePort(port);
        return true;
      } catch (error) {
        refuse("port-invalid", `${error instanceof Error ? error.message : String(error)}; the port is left out of the rules`);
        return false;
      }
    });
    this.refused(key, rejections);
    return kept;
  }

  /** The API server's addresses changed: every Service asking for an external address is worked out again. */
  private setApiServer(ports: readonly ProxyServicePort[]): void {
    const addresses = new Set(ports.flatMap((port) => port.endpoints.map((endpoint) => formatIp(endpoint.address))));
    if (addresses.size === this.apiServer.size && [...addresses].every((address) => this.apiServer.has(address))) return;
    this.apiServer = addresses;
    for (const users of this.externalUsers.values()) for (const user of users) this.stale.add(user);
  }

  /** Records a Service's external claims; the other claimants of a claim that came or went are worked out again. */
  private setClaims(key: string, claims: readonly string[]): void {
    const before = new Set(this.externalClaims.get(key) ?? []);
    const after = new Set(claims);
    for (const claim of before) if (!after.has(claim)) this.unlink(this.externalClaimants, claim, key);
    for (const claim of after) if (!before.has(claim)) addTo(this.externalClaimants, claim, key);
    for (const claim of new Set([...before, ...after])) {
      if (before.has(claim) === after.has(claim)) continue;
      for (const other of this.externalClaimants.get(claim) ?? []) if (other !== key) this.stale.add(other);
    }
    if (after.size) this.externalClaims.set(key, [...after]);
    else this.externalClaims.delete(key);
  }

  private unlink(index: Map<string, Set<string>>, key: string, value: string): void {
    const set = index.get(key);
    set?.delete(value);
    if (set && set.size === 0) index.delete(key);
  }
}

/** Older first; ties by `NAMESPACE/NAME`. A Service without a creation time counts as the newest. */
function rankOf(key: string, service: Service): string {
  return `${service.metadata.creationTimestamp ?? "~"} ${key}`;
}

function clusterIpsOf(service: Service | undefined): Set<string> {
  return new Set(addresses(service?.spec?.clusterIPs).map(formatIp));
}

function externalAddressesOf(service: Service | undefined): Set<string> {
  if (!service?.spec) return new Set();
  return new Set(addresses([...(service.spec.externalIPs ?? []), ...(service.spec.type === "LoadBalancer" ? loadBalancerIngress(service) : [])]).map(formatIp));
}

/**
 * The load balancer addresses the node answers on itself: `ipMode: Proxy` ones are the load
 * balancer's own (it sends traffic on to the nodes' addresses), so traffic from inside the
 * cluster to them goes out to it, as kube-proxy leaves it, instead of being short-circuited.
 */
function loadBalancerIngress(service: Service): string[] {
  const ingress = service.status?.loadBalancer?.ingress;
  return Array.isArray(ingress) ? ingress.flatMap((entry) => (typeof entry?.ip === "string" && entry.ipMode !== "Proxy" ? [entry.ip] : [])) : [];
}

function samePolicy(a: ExternalAddressPolicy, b: ExternalAddressPolicy): boolean {
  const prefixes = (list: ExternalAddressPolicy["allowed"]) => list.map((prefix) => `${prefix.family}/${prefix.network}/${prefix.length}`).join(",");
  if (prefixes(a.allowed) !== prefixes(b.allowed) || prefixes(a.podCidrs) !== prefixes(b.podCidrs) || prefixes(a.serviceCidrs) !== prefixes(b.serviceCidrs)) return false;
  if (a.reserved === b.reserved) return true;
  if (a.reserved.size !== b.reserved.size) return false;
  for (const [address, what] of a.reserved) if (b.reserved.get(address) !== what) return false;
  return true;
}

function addTo(index: Map<string, Set<string>>, key: string, value: string): void {
  let set = index.get(key);
  if (!set) index.set(key, (set = new Set()));
  set.add(value);
}

function addresses(list: readonly unknown[] | undefined): IpAddress[] {
  return (Array.isArray(list) ? list : []).flatMap((text) => (typeof text === "string" ? (tryParseIp(text) ?? []) : []));
}

/** Whether an object carries a label that gives it to another proxy, or marks it headless. */
function otherProxyLabelled(labels: Readonly<Record<string, string>> | undefined): boolean {
  return labels !== undefined && (Object.hasOwn(labels, LABEL_SERVICE_PROXY_NAME) || Object.hasOwn(labels, LABEL_HEADLESS));
}
