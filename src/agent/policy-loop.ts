/**
 * The agent's policy loop: NetworkPolicies, ClusterNetworkPolicies, Namespaces and Pods from the
 * Kubernetes API, this node's policy table (policy/rules.ts) written from them, one
 * transaction per change, only what changed. Everything here is a tenant's or a node's word:
 * objects are read into the few fields policy needs, a pod's addresses are taken only from its
 * status while it runs, and a cluster without ClusterNetworkPolicy (its CRD not installed) has
 * NetworkPolicy alone. A periodic resync writes the table whole again if it was deleted by hand.
 */
import type { KubeClient } from "../kube/client.js";
import { KubeApiError } from "../kube/client.js";
import { inform, type Informer } from "../kube/informer.js";
import type { NftBatchWriter } from "../linux/nft-netlink.js";
import { nftApply } from "../linux/nftables.js";
import { tryParseIp, type IpAddress } from "../net/ip.js";
import { tableOps } from "../nft/diff.js";
import type { Table } from "../nft/model.js";
import { renderOps } from "../nft/text.js";
import { policyTable, POLICY_TABLE } from "../policy/rules.js";
import type { ClusterNetworkPolicy, ContainerPort, NetworkPolicy, PolicyNamespace, PolicyPod, PolicyProtocol } from "../policy/types.js";
import type { Logger } from "./log.js";
import { SyncRunner } from "./runner.js";

export const CLUSTER_NETWORK_POLICIES = "/apis/policy.networking.k8s.io/v1beta1/clusternetworkpolicies";

interface KubePod {
  readonly metadata: { readonly name: string; readonly namespace?: string; readonly labels?: Record<string, string> };
  readonly spec?: { readonly nodeName?: string; readonly hostNetwork?: boolean; readonly containers?: ReadonlyArray<{ readonly ports?: ReadonlyArray<{ name?: string; containerPort?: number; protocol?: string }> }> };
  readonly status?: { readonly phase?: string; readonly podIP?: string; readonly podIPs?: ReadonlyArray<{ readonly ip?: string }> };
}

interface KubeNamespace {
  readonly metadata: { readonly name: string; readonly labels?: Record<string, string> };
}

export interface PolicyLoopOptions {
  readonly client: KubeClient;
  readonly nodeName: string;
  readonly log: Logger;
  /** The netlink writer; `nft -f` when there is none. */
  readonly writer?: NftBatchWriter;
  readonly minSyncIntervalMs: number;
}

const KINDS = ["namespaces", "pods", "networkpolicies", "clusternetworkpolicies"] as const;

export class PolicyLoop {
  private readonly pods = new Map<string, PolicyPod & { readonly nodeName?: string }>();
  private readonly namespaces = new Map<string, PolicyNamespace>();
  private readonly networkPolicies = new Map<string, NetworkPolicy>();
  private readonly clusterPolicies = new Map<string, ClusterNetworkPolicy>();
  private readonly listed = new Set<(typeof KINDS)[number]>();
  private readonly informers: Informer[] = [];
  private readonly runs: SyncRunner;
  /** What the kernel holds, as far as this loop knows; undefined: no table, or not known (written whole next). */
  private written: Table | undefined;
  private known = false;
  private checkTable = false;
  private failing = new Set<string>();

  constructor(private readonly options: PolicyLoopOptions) {
    this.runs = new SyncRunner({
      minIntervalMs: options.minSyncIntervalMs,
      firstRetryMs: 1_000,
      maxRetryMs: 30_000,
      run: () => this.sync(),
      failed: (error, retryInMs) => options.log("error", "policy rules not written; trying again", { error: String(error), retryInSeconds: (retryInMs ?? 0) / 1000 }),
    });
    const { client } = options;
    const follow = <T extends { metadata: { name: string } }>(kind: (typeof KINDS)[number], path: string, put: (key: string, object: T | undefined) => void) =>
      this.informers.push(
        inform<T>(client, path, {
          change: (key, object) => {
            put(key, object);
            if (this.listed.size === KINDS.length) this.runs.request();
          },
          synced: () => {
            this.listed.add(kind);
            this.failing.delete(kind);
            this.runs.request();
          },
          failed: (error) => this.failed(kind, error),
        }),
      );
    follow<KubeNamespace>("namespaces", "/api/v1/namespaces", (key, object) => {
      if (object) this.namespaces.set(key, { name: object.metadata.name, labels: { ...(object.metadata.labels ?? {}), "kubernetes.io/metadata.name": object.metadata.name } });
      else this.namespaces.delete(key);
    });
    follow<KubePod>("pods", "/api/v1/pods", (key, object) => {
      const pod = object && policyPod(object);
      if (pod) this.pods.set(key, pod);
      else this.pods.delete(key);
    });
    follow<NetworkPolicy>("networkpolicies", "/apis/networking.k8s.io/v1/networkpolicies", (key, object) => {
      if (object) this.networkPolicies.set(key, { metadata: { namespace: object.metadata.namespace, name: object.metadata.name }, spec: object.spec });
      else this.networkPolicies.delete(key);
    });
    follow<ClusterNetworkPolicy>("clusternetworkpolicies", CLUSTER_NETWORK_POLICIES, (key, object) => {
      if (object) this.clusterPolicies.set(key, { metadata: { name: object.metadata.name }, spec: object.spec });
      else this.clusterPolicies.delete(key);
    });
  }

  /** Checks the table against the kernel at the next sync (deleted by hand: written whole). */
  resync(): void {
    this.checkTable = true;
    this.runs.request();
  }

  /** Stops following; resolves once a sync in progress has ended. The table stays as it is. */
  async stop(): Promise<void> {
    for (const informer of this.informers) informer.stop();
    await this.runs.stop();
    this.options.writer?.close();
  }

  private failed(kind: (typeof KINDS)[number], error: Error): void {
    // A cluster without the ClusterNetworkPolicy CRD has none: NetworkPolicy alone applies.
    if (kind === "clusternetworkpolicies" && error instanceof KubeApiError && error.status === 404) {
      if (!this.listed.has(kind)) this.options.log("info", "the API server serves no ClusterNetworkPolicy; NetworkPolicy alone applies", { resource: CLUSTER_NETWORK_POLICIES });
      this.clusterPolicies.clear();
      this.listed.add(kind);
      this.runs.request();
      return;
    }
    if (!this.failing.has(kind)) this.options.log("warn", "cannot follow policy objects; keeping the policy rules as they are", { kind, error: error.message });
    this.failing.add(kind);
  }

  private async sync(): Promise<void> {
    if (this.listed.size < KINDS.length) return;
    const pods = [...this.pods.values()];
    const table = policyTable({
      world: { namespaces: this.namespaces, nodes: [], networkPolicies: [...this.networkPolicies.values()], clusterPolicies: [...this.clusterPolicies.values()] },
      pods,
      local: pods.filter((pod) => pod.nodeName === this.options.nodeName),
    });
    let before = this.known ? this.written : undefined;
    if (this.checkTable && this.known && before) {
      this.checkTable = false;
      const tables = this.options.writer ? await this.options.writer.listTables() : [];
      if (this.options.writer && !tables.includes(`inet ${POLICY_TABLE}`)) {
        this.options.log("warn", "policy table missing; writing it whole", { table: `inet ${POLICY_TABLE}` });
        before = undefined;
      }
    }
    // Not known (the first sync, or after a failure): written whole, or removed whether or not it is there.
    const ops = this.known ? tableOps(before, table) : table ? tableOps(undefined, table) : [{ op: "add table" as const, family: "inet" as const, table: POLICY_TABLE }, { op: "delete table" as const, family: "inet" as const, table: POLICY_TABLE }];
    if (ops.length === 0) return;
    this.known = false;
    if (this.options.writer) await this.options.writer.applyOps(ops);
    else await nftApply(renderOps(ops));
    this.written = table;
    this.known = true;
    this.options.log("info", "policy rules synced", {
      table: table ? `inet ${POLICY_TABLE}` : "none",
      chains: table?.chains.size ?? 0,
      steps: ops.length,
      networkPolicies: this.networkPolicies.size,
      clusterNetworkPolicies: this.clusterPolicies.size,
    });
  }
}

/** A Pod as policy sees it; undefined while it has no address to judge (not yet running, or finished). */
function policyPod(object: KubePod): (PolicyPod & { readonly nodeName?: string }) | undefined {
  const phase = object.status?.phase;
  if (phase === "Succeeded" || phase === "Failed") return undefined;
  const texts = object.status?.podIPs?.length ? object.status.podIPs.map((entry) => entry.ip ?? "") : object.status?.podIP ? [object.status.podIP] : [];
  const ips = texts.map((text) => tryParseIp(text)).filter((ip): ip is IpAddress => ip !== undefined);
  if (!ips.length) return undefined;
  const ports: ContainerPort[] = (object.spec?.containers ?? []).flatMap((container) =>
    (container.ports ?? []).flatMap((port) => {
      const protocol = (port.protocol ?? "TCP") as PolicyProtocol;
      if (typeof port.containerPort !== "number" || !["TCP", "UDP", "SCTP"].includes(protocol)) return [];
      return [{ ...(port.name ? { name: port.name } : {}), containerPort: port.containerPort, protocol }];
    }),
  );
  return {
    namespace: object.metadata.namespace ?? "default",
    name: object.metadata.name,
    labels: object.metadata.labels ?? {},
    ips,
    hostNetwork: object.spec?.hostNetwork === true,
    ports,
    ...(object.spec?.nodeName ? { nodeName: object.spec.nodeName } : {}),
  };
}
