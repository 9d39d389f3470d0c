/**
 * Services as the allocators see them: a name, its ClusterIPs (one per family, in ipFamilies
 * order) and, for type NodePort, a NodePort. Creating one takes every address and the port in
 * one transaction, so a Service is created whole or not at all; removing it frees them all.
 */
import { familyName, formatIp, formatPrefix, prefixContains, tryParseIp, type IpAddress } from "../net/ip.js";
import type { ClusterPlan } from "../plan/plan.js";
import type { KvOperation, KvStore } from "../store/kv.js";
import type { TxnFragment } from "./free-runs.js";
import type { Cluster } from "./state.js";
import { stagedView } from "./staged.js";
import { commitWithRetry, joinFragments, type Committed } from "./txn.js";
import { checkNodePortInRange, claimNodePort, releaseNodePort, type ClaimedPort } from "./node-ports.js";
import { claimServiceIp, kubernetesServiceIp, KUBERNETES_SERVICE, releaseServiceIp, serviceIpRangeFor } from "./service-ips.js";
import { resolveServiceFamilies, type IpFamilyName, type IpFamilyPolicy, type ServiceFamilies } from "./service-ips-families.js";

export const SERVICE_TYPES = ["ClusterIP", "NodePort"] as const;
export type ServiceType = (typeof SERVICE_TYPES)[number];

export interface ServiceRecord {
  readonly namespace: string;
  readonly name: string;
  readonly type: ServiceType;
  readonly ipFamilyPolicy: IpFamilyPolicy;
  readonly ipFamilies: readonly IpFamilyName[];
  readonly clusterIPs: readonly string[];
  readonly nodePort?: number;
}

export interface ServiceRequest {
  /** `NAME` (namespace default) or `NAMESPACE/NAME`. */
  readonly name: string;
  /** Defaults to NodePort when a nodePort is given, else ClusterIP. */
  readonly type?: string;
  readonly ipFamilyPolicy?: string;
  readonly ipFamilies?: readonly string[];
  readonly clusterIPs?: readonly string[];
  readonly nodePort?: number;
}

export const SERVICES_PREFIX = "/services/";

export function serviceKey(namespace: string, name: string): string {
  return `${SERVICES_PREFIX}${namespace}/${name}`;
}

/** Splits `NAMESPACE/NAME` or `NAME` (namespace default) and checks both as Kubernetes does. */
export function parseServiceName(text: string): { namespace: string; name: string } {
  const parts = typeof text === "string" ? text.split("/") : [];
  const [namespace, name] = parts.length === 2 ? parts : ["default", parts[0]];
  const label = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
  if (parts.length < 1 || parts.length > 2 || !label.test(namespace) || namespace.length > 63) {
    throw new Error(`invalid Service ${JSON.stringify(text)}: expected NAME or NAMESPACE/NAME, the namespace a DNS label of at most 63 lowercase letters, digits and '-'`);
  }
  if (name === undefined || !/^[a-z]([-a-z0-9]*[a-z0-9])?$/.test(name) || name.length > 63) {
    throw new Error(
      `invalid Service name ${JSON.stringify(name ?? "")} in ${JSON.stringify(text)}: expected at most 63 lowercase letters, digits and '-', starting with a letter and ending with a letter or digit (such as web-1)`,
    );
  }
  return { namespace, name };
}

export interface CheckedServiceRequest {
  readonly namespace: string;
  readonly name: string;
  readonly type: ServiceType;
  readonly families: ServiceFamilies;
}

/** Every check that needs no store: names, type, families, requested addresses and port against the plan. */
export function checkServiceRequest(plan: ClusterPlan, request: ServiceRequest): CheckedServiceRequest {
  const { namespace, name } = parseServiceName(request.name);
  const type = serviceType(request);
  const families = resolveServiceFamilies(request, plan.serviceCidrs);
  for (const ip of families.requested) if (ip) checkInsideServiceCidrs(plan, ip);
  if (request.nodePort !== undefined) {
    if (type !== "NodePort") {
      throw new Error(`NodePort ${request.nodePort} given for Service ${namespace}/${name} of type ${type}: only type NodePort Services have one`);
    }
    checkNodePortInRange(plan, request.nodePort);
  }
  return { namespace, name, type, families };
}

/** Creates a Service with its ClusterIPs and, for type NodePort, its NodePort. */
export async function addService(cluster: Cluster, request: ServiceRequest): Promise<Committed<ServiceRecord>> {
  const { store, plan } = cluster;
  const { namespace, name, type, families } = checkServiceRequest(plan, request);
  const owner = `${namespace}/${name}`;
  return commitWithRetry(store, `allocating for Service ${owner}`, async () => {
    // Every read at once: independent claims travel in one round trip (see store/etcd-kv.ts).
    const [existing, ips, port] = await Promise.all([
      store.get(serviceKey(namespace, name)),
      Promise.allSettled(families.families.map((family, i) => claimServiceIp(store, serviceIpRangeFor(plan, family)!, families.requested[i], owner))),
      Promise.allSettled(type === "NodePort" ? [claimNodePort(store, plan, request.nodePort, owner)] : ([] as Promise<ClaimedPort>[])),
    ]);
    // A duplicate name is the first thing to report, even when its ranges are also full.
    if (existing) {
      const record = parseService(existing.value);
      throw new Error(`Service ${owner} already exists with ClusterIPs ${record.clusterIPs.join(",")}${record.nodePort ? ` and NodePort ${record.nodePort}` : ""}`);
    }
    const claimedIps = ips.map(settledValue);
    const nodePort = port.map(settledValue)[0];
    const fragments: TxnFragment[] = [...claimedIps.map((claimed) => claimed.fragment), ...(nodePort ? [nodePort.fragment] : [])];
    const clusterIPs = claimedIps.map((claimed) => formatIp(claimed.ip));
    const record: ServiceRecord = {
      namespace,
      name,
      type,
      ipFamilyPolicy: families.ipFamilyPolicy,
      ipFamilies: families.families.map(familyName),
      clusterIPs,
      ...(nodePort === undefined ? {} : { nodePort: nodePort.port }),
    };
    const key = serviceKey(namespace, name);
    fragments.push({ compares: [{ key, modRevision: 0 }], operations: [{ type: "put", key, value: JSON.stringify(record) }] });
    return { ...joinFragments(fragments), result: record };
  });
}

/** Removes a Service and frees its ClusterIPs and NodePort. */
export async function removeService(cluster: Cluster, nameText: string): Promise<Committed<ServiceRecord>> {
  const { store, plan } = cluster;
  const { namespace, name } = parseServiceName(nameText);
  const owner = `${namespace}/${name}`;
  if (owner === KUBERNETES_SERVICE) {
    throw new Error(`Service ${KUBERNETES_SERVICE} is the API server's own Service and keeps ${formatIp(kubernetesServiceIp(plan))}: it cannot be removed`);
  }
  return commitWithRetry(store, `removing Service ${owner}`, async () => {
    const entry = await store.get(serviceKey(namespace, name));
    if (!entry) throw new Error(`Service ${owner} does not exist`);
    const record = parseService(entry.value);
    const held = serviceAllocations(entry.value);
    // One view: two NodePorts of one band freed in one transaction must see each other.
    const view = stagedView(store);
    view.stage({ compares: [{ key: entry.key, modRevision: entry.modRevision }], operations: [{ type: "delete", key: entry.key }] });
    for (const ip of held.clusterIPs) {
      const fragment = await releaseServiceIp(view.store, plan, ip, owner);
      if (fragment) view.stage(fragment);
    }
    for (const port of held.nodePorts) {
      const fragment = await releaseNodePort(view.store, plan, port, owner);
      if (fragment) view.stage(fragment);
    }
    return { ...view.transaction(), result: record };
  });
}

export async function listServices(store: KvStore): Promise<ServiceRecord[]> {
  const { entries } = await store.list(SERVICES_PREFIX);
  return entries.map((entry) => parseService(entry.value));
}

/** The record of default/kubernetes, stored with the plan; its address is reserved with it. */
export function kubernetesServiceOperations(plan: ClusterPlan): KvOperation[] {
  const ip = kubernetesServiceIp(plan);
  const record: ServiceRecord = {
    namespace: "default",
    name: "kubernetes",
    type: "ClusterIP",
    ipFamilyPolicy: "SingleStack",
    ipFamilies: [familyName(ip.family)],
    clusterIPs: [formatIp(ip)],
  };
  return [{ type: "put", key: serviceKey("default", "kubernetes"), value: JSON.stringify(record) }];
}

function serviceType(request: ServiceRequest): ServiceType {
  if (request.type === undefined) return request.nodePort === undefined ? "ClusterIP" : "NodePort";
  if (!(SERVICE_TYPES as readonly string[]).includes(request.type)) {
    throw new Error(`invalid Service type ${JSON.stringify(request.type)}: expected ${SERVICE_TYPES.join(" or ")}`);
  }
  return request.type as ServiceType;
}

/** A requested address must lie in its family's service range; the message names the ranges. */
export function checkInsideServiceCidrs(plan: ClusterPlan, ip: IpAddress): void {
  const range = serviceIpRangeFor(plan, ip.family);
  if (!range || !prefixContains(range.cidr, ip)) {
    const ranges = plan.serviceCidrs.map(formatPrefix).join(", ");
    throw new Error(`ClusterIP ${formatIp(ip)} is outside every service CIDR of this cluster (${ranges}): request an address inside one of them`);
  }
}

function settledValue<T>(outcome: PromiseSettledResult<T>): T {
  if (outcome.status === "rejected") throw outcome.reason;
  return outcome.value;
}

/**
 * A stored Service as the allocators see it, from either shape the store holds: this record, or
 * a v1 Service written by `trellis apply` (its first NodePort stands for all in `nodePort`).
 */
function parseService(value: string): ServiceRecord {
  const parsed = JSON.parse(value) as ServiceRecord | V1ServiceShape;
  if (!("spec" in parsed)) return parsed;
  const nodePort = parsed.spec.ports?.find((port) => port.nodePort !== undefined)?.nodePort;
  return {
    namespace: parsed.metadata.namespace ?? "default",
    name: parsed.metadata.name,
    type: (parsed.spec.type ?? "ClusterIP") as ServiceType,
    ipFamilyPolicy: (parsed.spec.ipFamilyPolicy ?? "SingleStack") as IpFamilyPolicy,
    ipFamilies: (parsed.spec.ipFamilies ?? []) as IpFamilyName[],
    clusterIPs: (parsed.spec.clusterIPs ?? []).filter((ip) => ip !== "None"),
    ...(nodePort === undefined ? {} : { nodePort }),
  };
}

/** What this module reads of a v1 Service (cluster/objects/types.ts has the whole shape). */
interface V1ServiceShape {
  readonly metadata: { readonly name: string; readonly namespace?: string };
  readonly spec: {
    readonly type?: string;
    readonly ipFamilyPolicy?: string;
    readonly ipFamilies?: readonly string[];
    readonly clusterIPs?: readonly string[];
    readonly ports?: ReadonlyArray<{ readonly nodePort?: number }>;
    readonly healthCheckNodePort?: number;
  };
}

/** What a stored Service (either shape) holds of the allocators: its ClusterIPs and every NodePort (health check port included). */
export function serviceAllocations(value: string): { clusterIPs: IpAddress[]; nodePorts: number[] } {
  const parsed = JSON.parse(value) as ServiceRecord | V1ServiceShape;
  if (!("spec" in parsed)) {
    return { clusterIPs: parsed.clusterIPs.flatMap((text) => tryParseIp(text) ?? []), nodePorts: parsed.nodePort === undefined ? [] : [parsed.nodePort] };
  }
  const ports = new Set<number>();
  for (const port of parsed.spec.ports ?? []) if (port.nodePort !== undefined) ports.add(port.nodePort);
  if (parsed.spec.healthCheckNodePort !== undefined) ports.add(parsed.spec.healthCheckNodePort);
  return { clusterIPs: (parsed.spec.clusterIPs ?? []).flatMap((text) => tryParseIp(text) ?? []), nodePorts: [...ports] };
}
