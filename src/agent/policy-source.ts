/**
 * Where the policy loop and `trellis policy explain` take policy's objects from: the Kubernetes
 * API, or the Trellis store. Both give the API's shapes (a store Node, which carries only its pod
 * CIDRs and what its agent published, is given as a Node with those), so the loop is one.
 */
import { CLUSTERNETWORKPOLICIES_PREFIX, NAMESPACES_PREFIX, NETWORKPOLICIES_PREFIX, PODS_PREFIX } from "../cluster/apply.js";
import { NODES_PREFIX, parseNode } from "../cluster/node-cidrs.js";
import { normalizeClusterNetworkPolicy } from "../cluster/objects/cluster-network-policy.js";
import { normalizeNamespace, normalizeNetworkPolicy } from "../cluster/objects/network-policy.js";
import { LABEL_TOPOLOGY_ZONE } from "../cluster/objects/types.js";
import type { KubeClient } from "../kube/client.js";
import { KubeApiError } from "../kube/client.js";
import { inform, reflect, type Informer, type InformerHandlers, type KubeObject } from "../kube/informer.js";
import type { KvStore } from "../store/kv.js";
import { STORE_MAX_RETRY_MS, storeCollection } from "./store-collection.js";

export type PolicyKind = "namespaces" | "pods" | "nodes" | "networkpolicies" | "clusternetworkpolicies";
export const POLICY_KINDS: readonly PolicyKind[] = ["namespaces", "pods", "nodes", "networkpolicies", "clusternetworkpolicies"];

export const CLUSTER_NETWORK_POLICIES = "/apis/policy.networking.k8s.io/v1beta1/clusternetworkpolicies";

export interface PolicySource {
  /** Follows one kind; a missing kind (the ClusterNetworkPolicy CRD not installed) fails with `missing(error)` true. */
  follow<T extends KubeObject>(kind: PolicyKind, handlers: InformerHandlers<T>): Informer;
  /** Every object of a kind now; none for a kind the datastore does not have. */
  list<T extends KubeObject>(kind: PolicyKind): Promise<T[]>;
  /** Whether a failure says the kind does not exist here (so none of it applies). */
  missing(error: Error): boolean;
}

const API_PATHS: Record<PolicyKind, string> = {
  namespaces: "/api/v1/namespaces",
  pods: "/api/v1/pods",
  nodes: "/api/v1/nodes",
  networkpolicies: "/apis/networking.k8s.io/v1/networkpolicies",
  clusternetworkpolicies: CLUSTER_NETWORK_POLICIES,
};

export function kubePolicySource(client: KubeClient): PolicySource {
  const missing = (error: Error) => error instanceof KubeApiError && error.status === 404;
  return {
    follow: (kind, handlers) => inform(client, API_PATHS[kind], handlers),
    async list<T extends KubeObject>(kind: PolicyKind) {
      for (let attempt = 1; ; attempt++) {
        try {
          return (await client.request<{ items?: T[] }>("GET", API_PATHS[kind])).items ?? [];
        } catch (error) {
          if (kind === "clusternetworkpolicies" && error instanceof Error && missing(error)) return [];
          // 429: the server asks to be asked again (a CRD just installed answers so while its storage starts).
          if (error instanceof KubeApiError && error.status === 429 && attempt < 10) {
            await new Promise((resolve) => setTimeout(resolve, 500));
            continue;
          }
          throw error;
        }
      }
    },
    missing,
  };
}

const STORE_PREFIXES: Record<PolicyKind, string> = {
  namespaces: NAMESPACES_PREFIX,
  pods: PODS_PREFIX,
  nodes: NODES_PREFIX,
  networkpolicies: NETWORKPOLICIES_PREFIX,
  clusternetworkpolicies: CLUSTERNETWORKPOLICIES_PREFIX,
};

export function storePolicySource(store: KvStore): PolicySource {
  return {
    follow<T extends KubeObject>(kind: PolicyKind, handlers: InformerHandlers<T>) {
      const prefix = STORE_PREFIXES[kind];
      return reflect(
        storeCollection(store, prefix),
        {
          change: (key, entry) => {
            const name = key.slice(prefix.length);
            handlers.change(name, entry ? (storedObject(kind, name, entry.value) as T | undefined) : undefined);
          },
          synced: () => handlers.synced?.(),
          failed: (error, retryInMs) => handlers.failed?.(error, retryInMs),
        },
        { maxRetryMs: STORE_MAX_RETRY_MS },
      );
    },
    async list<T extends KubeObject>(kind: PolicyKind) {
      const prefix = STORE_PREFIXES[kind];
      const { entries } = await store.list(prefix);
      return entries.flatMap((entry) => (storedObject(kind, entry.key.slice(prefix.length), entry.value) as T | undefined) ?? []);
    },
    missing: () => false,
  };
}

const NORMALIZE = { namespaces: normalizeNamespace, networkpolicies: normalizeNetworkPolicy, clusternetworkpolicies: normalizeClusterNetworkPolicy } as const;

/**
 * A stored value as the API's object; undefined when it does not parse (it counts as gone). A
 * store Node becomes a Node with its pod CIDRs, the addresses its agent published as
 * InternalIPs, and the labels a kubelet would give it (hostname, zone).
 */
function storedObject(kind: PolicyKind, name: string, value: string): KubeObject | undefined {
  try {
    // Policies and Namespaces are read as `trellis apply` takes them: one written to the store by
    // other means that it would refuse counts as absent rather than stopping every write.
    if (kind in NORMALIZE) return NORMALIZE[kind as keyof typeof NORMALIZE](JSON.parse(value)) as KubeObject;
    if (kind !== "nodes") {
      const object = JSON.parse(value) as KubeObject;
      return typeof object?.metadata?.name === "string" ? object : undefined;
    }
    const node = parseNode(value);
    const zone = node.network?.zone;
    return {
      metadata: { name, labels: { "kubernetes.io/hostname": name, ...(zone ? { [LABEL_TOPOLOGY_ZONE]: zone } : {}) } },
      spec: { podCIDRs: [...(node.podCidrs ?? [])] },
      status: { addresses: (node.network?.addresses ?? []).map((address) => ({ type: "InternalIP", address })) },
    } as KubeObject;
  } catch {
    return undefined;
  }
}
