/**
 * Kubernetes objects in the cluster store: `trellis apply -f` and `trellis delete -f`, as the
 * apiserver would take them. Every object of one apply is checked first; then all of them, with
 * every ClusterIP and NodePort they need, go in one transaction, so an apply is kept whole or
 * not at all. Services keep their allocations across applies (a manifest that leaves
 * `clusterIP` or a port's `nodePort` out keeps what was allocated, as `kubectl apply` does),
 * and what an update no longer needs is freed in the same transaction.
 */
import { randomUUID } from "node:crypto";
import { familyName, formatIp } from "../net/ip.js";
import type { ClusterPlan } from "../plan/plan.js";
import { MAX_TXN_OPERATIONS, type KvStore, type KvTxn } from "../store/kv.js";
import { claimNodePort, releaseNodePort } from "./node-ports.js";
import { ObjectInvalidError } from "./objects/field-errors.js";
import { normalizeEndpointSlice, normalizePod, normalizeService } from "./objects/validate.js";
import { normalizeClusterNetworkPolicy, type StoredClusterNetworkPolicy } from "./objects/cluster-network-policy.js";
import { CLUSTER_SCOPED, objectKind, type ObjectKind } from "./objects/manifests.js";
import { normalizeNamespace, normalizeNetworkPolicy, type Namespace, type StoredNetworkPolicy } from "./objects/network-policy.js";
import type { EndpointSlice, Pod, Service } from "./objects/types.js";
import { claimServiceIp, KUBERNETES_SERVICE, releaseServiceIp, serviceIpRangeFor } from "./service-ips.js";
import { resolveServiceFamilies } from "./service-ips-families.js";
import { checkInsideServiceCidrs, serviceAllocations, SERVICES_PREFIX, serviceKey } from "./services.js";
import { stagedView, type StagedView } from "./staged.js";
import type { Cluster } from "./state.js";
import { commitWithRetry, type Committed } from "./txn.js";

export const ENDPOINTSLICES_PREFIX = "/endpointslices/";
export const PODS_PREFIX = "/pods/";
export const NAMESPACES_PREFIX = "/namespaces/";
export const NETWORKPOLICIES_PREFIX = "/networkpolicies/";
export const CLUSTERNETWORKPOLICIES_PREFIX = "/clusternetworkpolicies/";

export type { ObjectKind };
export type StoredObject = Service | EndpointSlice | Pod | Namespace | StoredNetworkPolicy | StoredClusterNetworkPolicy;

export const PREFIXES: Record<ObjectKind, string> = {
  Service: SERVICES_PREFIX,
  EndpointSlice: ENDPOINTSLICES_PREFIX,
  Pod: PODS_PREFIX,
  Namespace: NAMESPACES_PREFIX,
  NetworkPolicy: NETWORKPOLICIES_PREFIX,
  ClusterNetworkPolicy: CLUSTERNETWORKPOLICIES_PREFIX,
};
/** The resource names the apiserver uses in its messages. */
const RESOURCES: Record<ObjectKind, string> = {
  Service: "services",
  EndpointSlice: "endpointslices.discovery.k8s.io",
  Pod: "pods",
  Namespace: "namespaces",
  NetworkPolicy: "networkpolicies.networking.k8s.io",
  ClusterNetworkPolicy: "clusternetworkpolicies.policy.networking.k8s.io",
};
const NORMALIZE: Record<ObjectKind, (document: unknown) => StoredObject> = {
  Service: normalizeService,
  EndpointSlice: normalizeEndpointSlice,
  Pod: normalizePod,
  Namespace: normalizeNamespace,
  NetworkPolicy: normalizeNetworkPolicy,
  ClusterNetworkPolicy: normalizeClusterNetworkPolicy,
};

/** An object's key; a cluster-scoped kind's has no namespace (it is ""). */
export function objectKey(kind: ObjectKind, namespace: string, name: string): string {
  if (CLUSTER_SCOPED.has(kind)) return `${PREFIXES[kind]}${name}`;
  return kind === "Service" ? serviceKey(namespace, name) : `${PREFIXES[kind]}${namespace}/${name}`;
}

export interface ObjectOutcome {
  readonly kind: ObjectKind;
  readonly namespace: string;
  readonly name: string;
  readonly outcome: "created" | "configured" | "unchanged" | "deleted";
}

interface Normalized {
  readonly kind: ObjectKind;
  readonly object: StoredObject;
  readonly namespace: string;
  readonly name: string;
}

/** Checks each document (kind, fields, defaults); the first invalid one is refused with its fields. */
export function normalizeObjects(documents: readonly unknown[]): Normalized[] {
  const seen = new Set<string>();
  return documents.map((document) => {
    const kind = objectKind(document);
    const object = NORMALIZE[kind](document);
    const namespace = CLUSTER_SCOPED.has(kind) ? "" : ("namespace" in object.metadata && object.metadata.namespace) || "default";
    const name = object.metadata.name;
    const id = namespace ? `${kind} ${namespace}/${name}` : `${kind} ${name}`;
    if (seen.has(id)) throw new Error(`${id} is given twice in one apply: give each object once`);
    seen.add(id);
    return { kind, object, namespace, name };
  });
}

/**
 * Creates or updates every object, with the allocations its Services need. Every object is
 * checked before anything is written; then they go in as few transactions as the store takes
 * (etcd allows MAX_TXN_OPERATIONS operations in one: some 25 Services with their allocations), in
 * order. A failure in a later transaction (a range full, a ClusterIP taken meanwhile) keeps the
 * earlier ones, and its message says how many objects were kept.
 */
export async function applyObjects(cluster: Cluster, documents: readonly unknown[]): Promise<Committed<ObjectOutcome[]>> {
  const objects = normalizeObjects(documents);
  return inTransactions(cluster, objects.length, "applying", (view, i) => stageApply(view, cluster.plan, objects[i]));
}

/** Deletes every object named (kind, namespace, name), freeing its Services' allocations, in as few transactions as the store takes. */
export async function deleteObjects(cluster: Cluster, documents: readonly unknown[]): Promise<Committed<ObjectOutcome[]>> {
  const targets = documents.map((document) => {
    const kind = objectKind(document);
    const metadata = (document as { metadata?: { name?: unknown; namespace?: unknown } }).metadata ?? {};
    const name = typeof metadata.name === "string" ? metadata.name : "";
    const namespace = CLUSTER_SCOPED.has(kind) ? "" : typeof metadata.namespace === "string" && metadata.namespace !== "" ? metadata.namespace : "default";
    if (!name) throw new ObjectInvalidError(kind, name, [{ path: "metadata.name", type: "Required value", detail: "name or generateName is required" }]);
    return { kind, namespace, name };
  });
  return inTransactions(cluster, targets.length, "deleting", async (view, i) => {
    {
      const { kind, namespace, name } = targets[i];
      const owner = `${namespace}/${name}`;
      if (kind === "Service" && owner === KUBERNETES_SERVICE) throw new Error(`services "kubernetes" in namespace default is the API server's own Service: it cannot be deleted`);
      const key = objectKey(kind, namespace, name);
      const existing = await view.store.get(key);
      if (!existing) throw new Error(`${RESOURCES[kind]} "${name}" not found${namespace ? ` in namespace ${namespace}` : ""}`);
      if (kind === "Namespace") await refuseNonEmptyNamespace(view, name, targets);
      view.stage({ compares: [{ key, modRevision: existing.modRevision }], operations: [{ type: "delete", key }] });
      if (kind === "Service") {
        const held = serviceAllocations(existing.value);
        for (const ip of held.clusterIPs) stageIf(view, await releaseServiceIp(view.store, cluster.plan, ip, owner));
        for (const port of held.nodePorts) stageIf(view, await releaseNodePort(view.store, cluster.plan, port, owner));
      }
      return { kind, namespace, name, outcome: "deleted" } satisfies ObjectOutcome;
    }
  });
}

/**
 * A Namespace goes only once nothing is left in it (the store runs no namespace controller to
 * delete its contents): the objects still in it, other than those deleted in the same command,
 * are named.
 */
async function refuseNonEmptyNamespace(view: StagedView, namespace: string, deleting: ReadonlyArray<{ kind: ObjectKind; namespace: string; name: string }>): Promise<void> {
  const going = new Set(deleting.map((target) => objectKey(target.kind, target.namespace, target.name)));
  const left: string[] = [];
  for (const kind of Object.keys(PREFIXES) as ObjectKind[]) {
    if (CLUSTER_SCOPED.has(kind)) continue;
    const { entries } = await view.store.list(objectKey(kind, namespace, ""));
    for (const entry of entries) if (!going.has(entry.key)) left.push(`${RESOURCES[kind]}/${entry.key.slice(objectKey(kind, namespace, "").length)}`);
  }
  if (left.length) {
    const shown = left.slice(0, 5).join(", ") + (left.length > 5 ? ` and ${left.length - 5} more` : "");
    throw new Error(`namespaces "${namespace}" still holds ${left.length} object(s) (${shown}): delete them first (the Trellis store does not delete a namespace's contents)`);
  }
}

/**
 * Stages `count` items in order, committing whenever the next would not fit one transaction;
 * each transaction is retried from fresh reads when overtaken.
 */
async function inTransactions(cluster: Cluster, count: number, verb: string, stage: (view: StagedView, index: number) => Promise<ObjectOutcome>): Promise<Committed<ObjectOutcome[]>> {
  const outcomes: ObjectOutcome[] = [];
  let revision = 0;
  const fits = (txn: KvTxn) => txn.compares.length <= MAX_TXN_OPERATIONS && txn.operations.length <= MAX_TXN_OPERATIONS;
  while (outcomes.length < count) {
    const start = outcomes.length;
    try {
      const committed = await commitWithRetry(cluster.store, `${verb} ${count} object(s)`, async () => {
        const view = stagedView(cluster.store);
        const chunk: ObjectOutcome[] = [];
        for (let i = start; i < count; i++) {
          const restore = view.snapshot();
          const outcome = await stage(view, i);
          if (!fits(view.transaction())) {
            if (chunk.length === 0) throw new Error(`${outcome.kind} ${outcome.namespace ? `${outcome.namespace}/` : ""}${outcome.name} needs more than one store transaction holds (${MAX_TXN_OPERATIONS} operations)`);
            restore();
            break;
          }
          chunk.push(outcome);
        }
        return { ...view.transaction(), result: chunk };
      });
      for (const outcome of committed.result) outcomes.push(outcome);
      revision = committed.revision;
    } catch (error) {
      if (start === 0 || !(error instanceof Error)) throw error;
      error.message = `${error.message} (the ${start} object(s) before it were ${verb === "applying" ? "applied" : "deleted"} and kept)`;
      throw error;
    }
  }
  return { result: outcomes, revision };
}

/** Every stored object of a kind, in key order, with the store revision it was read at. */
export async function listObjects<T extends StoredObject>(store: KvStore, kind: ObjectKind): Promise<{ objects: T[]; revision: number }> {
  const { entries, revision } = await store.list(PREFIXES[kind]);
  const objects = entries.flatMap((entry) => {
    const object = kind === "Service" ? storedService(entry.value) : (JSON.parse(entry.value) as StoredObject);
    return object ? [object as T] : [];
  });
  return { objects, revision };
}

/**
 * A stored Service as a v1 object. Services created with `trellis service add` are stored in
 * an older, allocation-only shape: they become a Service without ports (nothing to proxy).
 */
export function storedService(value: string): Service | undefined {
  let parsed: unknown;
  try {
    parsed = JSON.parse(value);
  } catch {
    return undefined;
  }
  if (typeof parsed !== "object" || parsed === null) return undefined;
  if ("spec" in parsed) return parsed as Service;
  const legacy = parsed as { namespace: string; name: string; type: string; ipFamilyPolicy: string; ipFamilies: string[]; clusterIPs: string[] };
  return {
    apiVersion: "v1",
    kind: "Service",
    metadata: { name: legacy.name, namespace: legacy.namespace },
    spec: {
      type: legacy.type,
      clusterIP: legacy.clusterIPs[0],
      clusterIPs: [...legacy.clusterIPs],
      ipFamilies: [...legacy.ipFamilies],
      ipFamilyPolicy: legacy.ipFamilyPolicy,
      ports: [],
    },
  } as unknown as Service;
}

async function stageApply(view: StagedView, plan: ClusterPlan, { kind, object, namespace, name }: Normalized): Promise<ObjectOutcome> {
  const key = objectKey(kind, namespace, name);
  const existing = await view.store.get(key);
  view.stage({ compares: [{ key, modRevision: existing?.modRevision ?? 0 }], operations: [] });
  const previous = existing ? (kind === "Service" ? storedService(existing.value) : (JSON.parse(existing.value) as StoredObject)) : undefined;
  const stored =
    kind === "Service" ? await stageService(view, plan, object as Service, previous as Service | undefined, existing?.value) : withIdentity(object, previous);
  if (existing && JSON.stringify(withoutApplyTime(stored)) === JSON.stringify(withoutApplyTime(JSON.parse(existing.value) as StoredObject))) {
    return { kind, namespace, name, outcome: "unchanged" };
  }
  const annotations = { ...stored.metadata.annotations, [APPLIED_AT]: new Date().toISOString() };
  const text = JSON.stringify({ ...stored, metadata: { ...stored.metadata, annotations } });
  view.stage({ compares: [], operations: [{ type: "put", key, value: text }] });
  return { kind, namespace, name, outcome: existing ? "configured" : "created" };
}

/**
 * When an apply last changed the object (ISO 8601, milliseconds): the agent measures from it how
 * long a change takes to reach the kernel (trellis_network_programming_duration_seconds).
 */
export const APPLIED_AT = "trellis.dev/applied-at";

function withoutApplyTime(object: StoredObject): StoredObject {
  const { [APPLIED_AT]: _time, ...annotations } = object.metadata.annotations ?? {};
  const metadata = { ...object.metadata, annotations };
  if (Object.keys(annotations).length === 0) delete (metadata as { annotations?: unknown }).annotations;
  return { ...object, metadata } as StoredObject;
}

/** The object with the uid and creation time it already had, or new ones. */
function withIdentity<T extends StoredObject>(object: T, previous: StoredObject | undefined): T {
  const metadata = {
    ...object.metadata,
    uid: previous?.metadata.uid ?? randomUUID(),
    creationTimestamp: previous?.metadata.creationTimestamp ?? new Date().toISOString().replace(/\.\d+Z$/, "Z"),
  };
  delete (metadata as { resourceVersion?: string }).resourceVersion;
  return { ...object, metadata };
}

/**
 * A Service's ClusterIPs and NodePorts: kept from before where the manifest leaves them out or
 * repeats them, claimed where new, freed where no longer used. A ClusterIP never changes once
 * set (the apiserver's rule); the secondary family may be added or dropped with ipFamilyPolicy.
 */
async function stageService(view: StagedView, plan: ClusterPlan, service: Service, previous: Service | undefined, previousValue: string | undefined): Promise<Service> {
  const namespace = service.metadata.namespace ?? "default";
  const owner = `${namespace}/${service.metadata.name}`;
  const spec = service.spec;
  const invalid = (path: string, value: unknown, detail: string) => new ObjectInvalidError("Service", service.metadata.name, [{ path, type: "Invalid value", value, detail }]);
  const held = previousValue ? serviceAllocations(previousValue) : { clusterIPs: [], nodePorts: [] };

  // ClusterIPs.
  let clusterIPs: string[];
  let ipFamilies: string[];
  let ipFamilyPolicy = spec.ipFamilyPolicy ?? "SingleStack";
  const previousIps = previous?.spec.clusterIPs ?? [];
  if (spec.clusterIP === "None" || (previous && previous.spec.clusterIP === "None")) {
    if (previous && (previous.spec.clusterIP === "None") !== (spec.clusterIP === "None" || spec.clusterIP === undefined)) {
      throw invalid("spec.clusterIPs[0]", spec.clusterIP ?? "", "may not change once set");
    }
    clusterIPs = ["None"];
    const families = resolveServiceFamilies({ ipFamilyPolicy, ipFamilies: spec.ipFamilies }, plan.serviceCidrs);
    ipFamilyPolicy = families.ipFamilyPolicy;
    ipFamilies = families.families.map(familyName);
  } else {
    const given = spec.clusterIPs ?? (spec.clusterIP ? [spec.clusterIP] : []);
    given.forEach((ip, i) => {
      if (previousIps[i] !== undefined && previousIps[i] !== ip) throw invalid(`spec.clusterIPs[${i}]`, ip, "may not change once set");
    });
    // What was held stays requested, within what the (possibly changed) policy allows.
    const keep = ipFamilyPolicy === "SingleStack" ? previousIps.slice(0, 1) : previousIps;
    const requestIps = given.length > keep.length ? given : keep;
    let families;
    try {
      families = resolveServiceFamilies({ ipFamilyPolicy, ipFamilies: spec.ipFamilies?.length ? spec.ipFamilies : undefined, clusterIPs: requestIps }, plan.serviceCidrs);
    } catch (error) {
      throw invalid("spec.ipFamilies", spec.ipFamilies ?? [], (error as Error).message);
    }
    ipFamilyPolicy = families.ipFamilyPolicy;
    ipFamilies = families.families.map(familyName);
    clusterIPs = [];
    for (const [i, family] of families.families.entries()) {
      const requested = families.requested[i];
      if (requested && held.clusterIPs.some((ip) => ip.family === requested.family && ip.value === requested.value)) {
        clusterIPs.push(formatIp(requested));
        continue;
      }
      const range = serviceIpRangeFor(plan, family);
      if (!range) throw invalid(`spec.ipFamilies[${i}]`, familyName(family), `${familyName(family)} is not configured on this cluster`);
      if (requested) {
        try {
          checkInsideServiceCidrs(plan, requested);
        } catch (error) {
          throw invalid(`spec.clusterIPs[${i}]`, formatIp(requested), (error as Error).message);
        }
      }
      const claimed = await claimServiceIp(view.store, range, requested, owner).catch((error: Error) => {
        throw invalid(`spec.clusterIPs[${i}]`, requested ? formatIp(requested) : "", error.message);
      });
      view.stage(claimed.fragment);
      clusterIPs.push(formatIp(claimed.ip));
    }
    for (const ip of held.clusterIPs) {
      if (!clusterIPs.includes(formatIp(ip))) stageIf(view, await releaseServiceIp(view.store, plan, ip, owner));
    }
  }

  // NodePorts: per port for NodePort and LoadBalancer (unless LoadBalancer opts out), and the
  // health check port of a LoadBalancer with externalTrafficPolicy Local. One number may serve
  // a TCP and a UDP port of the same Service.
  const wantsNodePorts = spec.type === "NodePort" || (spec.type === "LoadBalancer" && spec.allocateLoadBalancerNodePorts !== false);
  const kept = new Set<number>();
  const previousPorts = previous?.spec.ports ?? [];
  const claimedHere = new Set<number>();
  const take = async (requested: number | undefined, path: string): Promise<number> => {
    if (requested !== undefined && (held.nodePorts.includes(requested) || claimedHere.has(requested))) {
      kept.add(requested);
      return requested;
    }
    const claimed = await claimNodePort(view.store, plan, requested, owner).catch((error: Error) => {
      throw invalid(path, requested ?? "", error.message);
    });
    view.stage(claimed.fragment);
    claimedHere.add(claimed.port);
    kept.add(claimed.port);
    return claimed.port;
  };
  const ports = [];
  for (const [i, port] of (spec.ports ?? []).entries()) {
    if (!wantsNodePorts) {
      const { nodePort: _unused, ...rest } = port;
      ports.push(rest);
      continue;
    }
    const before = previousPorts.find((candidate) => candidate.port === port.port && candidate.protocol === port.protocol)?.nodePort;
    ports.push({ ...port, nodePort: await take(port.nodePort ?? before, `spec.ports[${i}].nodePort`) });
  }
  let healthCheckNodePort: number | undefined;
  if (spec.type === "LoadBalancer" && spec.externalTrafficPolicy === "Local") {
    healthCheckNodePort = await take(spec.healthCheckNodePort ?? previous?.spec.healthCheckNodePort, "spec.healthCheckNodePort");
  }
  for (const port of held.nodePorts) if (!kept.has(port)) stageIf(view, await releaseNodePort(view.store, plan, port, owner));

  const stored = withIdentity(service, previous) as Service;
  const { healthCheckNodePort: _dropped, ...restSpec } = spec;
  return {
    ...stored,
    spec: {
      ...restSpec,
      clusterIP: clusterIPs[0],
      clusterIPs,
      ipFamilies,
      ipFamilyPolicy,
      ports,
      ...(healthCheckNodePort === undefined ? {} : { healthCheckNodePort }),
    },
  } as Service;
}

function stageIf(view: StagedView, fragment: Parameters<StagedView["stage"]>[0] | undefined): void {
  if (fragment) view.stage(fragment);
}
