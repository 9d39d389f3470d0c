/**
 * The agent's policy loop: NetworkPolicies, ClusterNetworkPolicies, Namespaces, Pods and Nodes
 * from the Kubernetes API or the Trellis store (policy-source.ts), this node's policy table
 * (policy/rules.ts) written from them, one transaction per change, only what changed; its
 * counters read for /metrics and its deny log's prefixes and pods named for the deny log.
 * Everything here is a tenant's or a node's word:
 * objects are read into the few fields policy needs, a pod's addresses are taken only from its
 * status while it runs, and a cluster without ClusterNetworkPolicy (its CRD not installed) has
 * NetworkPolicy alone. A periodic resync writes the table whole again if it was deleted by hand.
 */
import { isDns1123Label, isDns1123Subdomain } from "../cluster/objects/syntax.js";
import type { Informer } from "../kube/informer.js";
import type { NftBatchWriter } from "../linux/nft-netlink.js";
import { nftApply } from "../linux/nftables.js";
import { formatIp, formatPrefix, prefixContains, tryParseInterfaceAddress, tryParseIp, type IpAddress, type IpPrefix } from "../net/ip.js";
import { tableOps } from "../nft/diff.js";
import type { Table } from "../nft/model.js";
import { renderOps } from "../nft/text.js";
import { PeerSets, policyRules, POLICY_TABLE, type Denial } from "../policy/rules.js";
import type { ClusterNetworkPolicy, ContainerPort, NetworkPolicy, PolicyNamespace, PolicyNode, PolicyPod, PolicyProtocol, PolicyWorld } from "../policy/types.js";
import type { Logger } from "./log.js";
import { Histogram, renderGauge, SYNC_BUCKETS, type GaugeSample } from "./metrics.js";
import { CLUSTER_NETWORK_POLICIES, POLICY_KINDS, type PolicyKind, type PolicySource } from "./policy-source.js";
import type { Rejection, Rejections } from "./rejections.js";
import { SyncRunner } from "./runner.js";

export interface KubePod {
  readonly metadata: { readonly name: string; readonly namespace?: string; readonly labels?: Record<string, string> };
  readonly spec?: { readonly nodeName?: string; readonly hostNetwork?: boolean; readonly containers?: ReadonlyArray<{ readonly ports?: ReadonlyArray<{ name?: string; containerPort?: number; protocol?: string }> }> };
  readonly status?: { readonly phase?: string; readonly podIP?: string; readonly podIPs?: ReadonlyArray<{ readonly ip?: string }> };
}

interface KubeNode {
  readonly metadata: { readonly name: string; readonly labels?: Record<string, string> };
  readonly spec?: { readonly podCIDRs?: readonly string[] };
  readonly status?: { readonly addresses?: ReadonlyArray<{ readonly type?: string; readonly address?: string }> };
}

interface KubeNamespace {
  readonly metadata: { readonly name: string; readonly labels?: Record<string, string> };
}

export interface PolicyLoopOptions {
  readonly source: PolicySource;
  /** Where a Pod's address outside its node's pod CIDRs is refused, loudly. */
  readonly rejections?: Rejections;
  readonly nodeName: string;
  readonly log: Logger;
  /** The netlink writer (its owner closes it); `nft -f` when there is none. */
  readonly writer?: NftBatchWriter;
  readonly minSyncIntervalMs: number;
  /**
   * A CNI ADD for a pod the datastore has no Pod object for (after a wait): refused on the API,
   * where every pod has one; admitted on the Trellis store, where only what writes Pods there
   * (the lab, `trellis apply`) gives a pod labels, and a pod without them is selected by none.
   */
  readonly unknownPods: "refuse" | "admit";
  /** Where denied connections are logged (see the agent's deny log); not logged when absent. */
  readonly denyLog?: { readonly group: number; readonly rate: number };
  /** Called after each write that leaves a table (the deny log's reader is started then, not before). */
  readonly tableWritten?: () => void;
}

const KINDS = POLICY_KINDS;

/** How long a CNI ADD waits for the policies and its Pod to be known before it fails (and is tried again). */
const ATTACH_WAIT_MS = 3_000;

export class PolicyLoop {
  /** Every Pod, by `NAMESPACE/NAME`, with the addresses its status gives (none before it runs). */
  private readonly pods = new Map<string, PolicyPod & { readonly nodeName?: string }>();
  /** Addresses of pods this node's CNI attached, before their status says so: by `NAMESPACE/NAME`. */
  private readonly attached = new Map<string, readonly IpAddress[]>();
  /** Writes, one at a time: the loop's syncs and a CNI ADD's own. */
  private writing: Promise<void> = Promise.resolve();
  private readonly namespaces = new Map<string, PolicyNamespace>();
  /** Each Node's pod CIDRs, as node IPAM gave them: a pod's address must lie in its node's. */
  private readonly nodePodCidrs = new Map<string, readonly IpPrefix[]>();
  /** Each Node's labels and addresses, for ClusterNetworkPolicy's `nodes` peers. */
  private readonly nodes = new Map<string, PolicyNode>();
  private readonly networkPolicies = new Map<string, NetworkPolicy>();
  private readonly clusterPolicies = new Map<string, ClusterNetworkPolicy>();
  private readonly listed = new Set<PolicyKind>();
  private readonly informers: Informer[] = [];
  private readonly runs: SyncRunner;
  /** The peer sets of the table before, brought up to date at each write. */
  private readonly peerSets = new PeerSets();
  /** What each named counter of the written table counts. */
  private denials: ReadonlyMap<string, Denial> = new Map();
  /** The pods of the last write, by address (`FAMILY VALUE`), made when first asked. */
  private podIndex: Map<string, PolicyPod> | undefined;
  private lastPods: readonly PolicyPod[] = [];
  /** Changes with lastPods. */
  private podsVersion = 0;
  private readonly syncDuration = new Histogram("trellis_sync_policy_rules_duration_seconds", "How long one write of the policy table took (compute, diff, netlink), those with nothing to write included.", SYNC_BUCKETS);
  /** A read of the kernel's counters under way, shared by the scrapes that ask meanwhile. */
  private readingCounters: Promise<Map<string, { packets: number; bytes: number }>> | undefined;
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
      run: () => this.exclusive(() => this.write()),
      failed: (error, retryInMs) => options.log("error", "policy rules not written; trying again", { error: String(error), retryInSeconds: (retryInMs ?? 0) / 1000 }),
    });
    const { source } = options;
    const follow = <T extends { metadata: { name: string } }>(kind: PolicyKind, put: (key: string, object: T | undefined) => void) =>
      this.informers.push(
        source.follow<T>(kind, {
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
    follow<KubeNamespace>("namespaces", (key, object) => {
      if (object) this.namespaces.set(key, policyNamespace(object));
      else this.namespaces.delete(key);
    });
    follow<KubePod>("pods", (key, object) => {
      const pod = object && policyPod(object);
      if (pod) this.pods.set(key, pod);
      else this.pods.delete(key);
      // Once the status holds the addresses the CNI gave (or the pod went), the status decides.
      const given = this.attached.get(key);
      if (!pod || (given && given.every((ip) => pod.ips.some((held) => held.family === ip.family && held.value === ip.value)))) this.attached.delete(key);
    });
    follow<KubeNode>("nodes", (key, object) => {
      if (object) {
        this.nodePodCidrs.set(key, (object.spec?.podCIDRs ?? []).flatMap((text) => tryParseInterfaceAddress(text)?.prefix ?? []));
        this.nodes.set(key, policyNode(object));
      } else {
        this.nodePodCidrs.delete(key);
        this.nodes.delete(key);
      }
    });
    follow<NetworkPolicy>("networkpolicies", (key, object) => {
      if (object) this.networkPolicies.set(key, { metadata: { namespace: object.metadata.namespace, name: object.metadata.name }, spec: object.spec });
      else this.networkPolicies.delete(key);
    });
    follow<ClusterNetworkPolicy>("clusternetworkpolicies", (key, object) => {
      if (object) this.clusterPolicies.set(key, { metadata: { name: object.metadata.name }, spec: object.spec });
      else this.clusterPolicies.delete(key);
    });
  }

  /**
   * A pod this node's CNI has just given `ips`: its rules are in the kernel when this resolves,
   * before the ADD answers, so a pod a policy isolates never sends or takes anything before
   * its rules are in place. Rejects with why when that cannot be known (the pod or the policies
   * not known yet, a write refused): the ADD then fails and is tried again.
   */
  async attach(namespace: string, name: string, ips: readonly IpAddress[]): Promise<void> {
    const key = `${namespace}/${name}`;
    const deadline = Date.now() + ATTACH_WAIT_MS;
    // The Pod exists before its sandbox is made; its watch event may still be on its way.
    while (this.listed.size < KINDS.length || !this.pods.has(key)) {
      // No policy at all: none can apply to the pod, whatever its labels.
      if (this.listed.size === KINDS.length && this.networkPolicies.size === 0 && this.clusterPolicies.size === 0) return;
      if (Date.now() > deadline) {
        if (this.listed.size < KINDS.length) throw new Error("the agent has not read the cluster's policies yet");
        if (this.options.unknownPods === "admit") {
          this.options.log("warn", "a pod with no Pod object in the datastore: no policy selects it until one is written", { pod: key });
          return;
        }
        throw new Error(`the agent does not know pod ${key} yet (its labels decide the policies that apply to it)`);
      }
      await new Promise((resolve) => setTimeout(resolve, 25));
    }
    this.attached.set(key, ips);
    await this.exclusive(() => this.write());
  }

  /** A pod this node's CNI has released: its address is no longer its (another pod may get it). */
  async detach(namespace: string, name: string): Promise<void> {
    const key = `${namespace}/${name}`;
    const pod = this.pods.get(key);
    if (!this.attached.delete(key) && !(pod && pod.ips.length)) return;
    if (pod) this.pods.set(key, { ...pod, ips: [] });
    await this.exclusive(() => this.write());
  }

  /**
   * The loop's metrics: how long its writes take, and
   * `trellis_policy_denied_packets_total{policy,direction}`, read from the table's named counters
   * now (one netlink dump of them; none without the netlink writer or a table).
   */
  async metrics(): Promise<string> {
    const name = "trellis_policy_denied_packets_total";
    const help = "Packets the policies of this node's pods dropped, by the policy that denied them (the NetworkPolicies that isolate a pod together, or a ClusterNetworkPolicy) and direction.";
    const writer = this.options.writer;
    const durations = this.syncDuration.render();
    if (!writer || !this.written) return durations + renderGauge(name, help, [], "counter");
    const denials = this.denials;
    let counters: Map<string, { packets: number; bytes: number }>;
    try {
      counters = await (this.readingCounters ??= writer.listCounters("inet", POLICY_TABLE).finally(() => (this.readingCounters = undefined)));
    } catch (error) {
      this.options.log("warn", "cannot read the policy table's counters", { error: String(error) });
      return durations;
    }
    const samples = new Map<string, GaugeSample & { value: number }>();
    for (const [counter, { packets }] of counters) {
      const denial = denials.get(counter);
      if (!denial) continue;
      const key = `${denial.policy}\n${denial.direction}`;
      const sample = samples.get(key) ?? { labels: { policy: denial.policy, direction: denial.direction.toLowerCase() }, value: 0 };
      sample.value += packets;
      samples.set(key, sample);
    }
    return durations + renderGauge(name, help, [...samples.values()], "counter");
  }

  /** What a counter (and log prefix) of the written table stands for. */
  denial(counter: string): Denial | undefined {
    return this.denials.get(counter);
  }

  /** Every pod as of the last write, and a number that changes when they do. */
  knownPods(): { version: number; pods: readonly PolicyPod[] } {
    return { version: this.podsVersion, pods: this.lastPods };
  }

  /** The pod at `address` as of the last write. */
  podAt(address: IpAddress): PolicyPod | undefined {
    this.podIndex ??= new Map(this.lastPods.flatMap((pod) => pod.ips.map((ip) => [`${ip.family} ${ip.value}`, pod] as const)));
    return this.podIndex.get(`${address.family} ${address.value}`);
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
  }

  private failed(kind: PolicyKind, error: Error): void {
    // A cluster without the ClusterNetworkPolicy CRD has none: NetworkPolicy alone applies.
    if (kind === "clusternetworkpolicies" && this.options.source.missing(error)) {
      if (!this.listed.has(kind)) this.options.log("info", "the API server serves no ClusterNetworkPolicy; NetworkPolicy alone applies", { resource: CLUSTER_NETWORK_POLICIES });
      this.clusterPolicies.clear();
      this.listed.add(kind);
      this.runs.request();
      return;
    }
    if (!this.failing.has(kind)) this.options.log("warn", "cannot follow policy objects; keeping the policy rules as they are", { kind, error: error.message });
    this.failing.add(kind);
  }

  private exclusive(work: () => Promise<void>): Promise<void> {
    const run = this.writing.then(work, work);
    this.writing = run.catch(() => undefined);
    return run;
  }

  /**
   * The pods as policy sees them. An address the CNI just gave is its new pod's, whatever an
   * older status says. A status is its node's word: an address outside that node's pod CIDRs
   * is refused (else a node could put any address, another pod's, into what a policy allows).
   */
  private podsNow(): Array<PolicyPod & { readonly nodeName?: string }> {
    const claimed = new Set([...this.attached.values()].flat().map((ip) => `${ip.family} ${ip.value}`));
    const refused: Rejection[] = [];
    const pods = [...this.pods].map(([key, pod]) => {
      const given = this.attached.get(key);
      if (given) return { ...pod, ips: given };
      if (pod.hostNetwork || !pod.ips.length) return pod;
      const cidrs = (pod.nodeName && this.nodePodCidrs.get(pod.nodeName)) || [];
      const ips = pod.ips.filter((ip) => {
        if (claimed.has(`${ip.family} ${ip.value}`)) return false;
        if (cidrs.some((cidr) => prefixContains(cidr, ip))) return true;
        refused.push({
          kind: "Pod", namespace: pod.namespace, name: pod.name, reason: "pod-ip-outside-node",
          message: `Pod ${key}'s address ${formatIp(ip)} is not in the pod CIDRs of its node ${pod.nodeName ?? "(none)"} (${cidrs.map(formatPrefix).join(", ") || "none"}): it counts for no policy`,
        });
        return false;
      });
      return ips.length === pod.ips.length ? pod : { ...pod, ips };
    });
    this.options.rejections?.report("policy: pods", refused);
    return pods;
  }

  /**
   * The Nodes as ClusterNetworkPolicy's `nodes` peers see them. A node's addresses are its own
   * word: one inside any node's pod CIDRs is a pod's, never a node's, and is refused (else a
   * node could make a policy that lets pods reach nodes let them reach that pod).
   */
  private nodesNow(): PolicyNode[] {
    const podCidrs = [...this.nodePodCidrs.values()].flat();
    const refused: Rejection[] = [];
    const nodes = [...this.nodes.values()].map((node) => {
      const addresses = node.addresses.filter((ip) => {
        const inside = podCidrs.find((cidr) => prefixContains(cidr, ip));
        if (!inside) return true;
        refused.push({ kind: "Node", name: node.name, reason: "node-address-in-pod-cidr", message: `Node ${node.name}'s address ${formatIp(ip)} is inside the pod CIDR ${formatPrefix(inside)}: it counts as no node's for policy` });
        return false;
      });
      return addresses.length === node.addresses.length ? node : { ...node, addresses };
    });
    this.options.rejections?.report("policy: nodes", refused);
    return nodes;
  }

  private async write(): Promise<void> {
    if (this.listed.size < KINDS.length) return;
    const started = performance.now();
    try {
      await this.writeTable();
    } finally {
      this.syncDuration.observe((performance.now() - started) / 1000);
    }
  }

  private async writeTable(): Promise<void> {
    const pods = this.podsNow();
    this.lastPods = pods;
    this.podsVersion++;
    this.podIndex = undefined;
    const { table, denials } = policyRules({
      world: { namespaces: this.namespaces, nodes: this.nodesNow(), networkPolicies: [...this.networkPolicies.values()], clusterPolicies: [...this.clusterPolicies.values()] },
      pods,
      local: pods.filter((pod) => pod.nodeName === this.options.nodeName),
      peerSets: this.peerSets,
      ...(this.options.denyLog ? { denyLog: this.options.denyLog } : {}),
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
    // Not known (the first sync, or after a failure): written whole, or removed if it is there
    // (asked of the kernel first, so that a node without policy runs no writer for it).
    const removal = async () => {
      if (this.options.writer && !(await this.options.writer.listTables()).includes(`inet ${POLICY_TABLE}`)) return [];
      return [{ op: "add table" as const, family: "inet" as const, table: POLICY_TABLE }, { op: "delete table" as const, family: "inet" as const, table: POLICY_TABLE }];
    };
    const ops = this.known ? tableOps(before, table) : table ? tableOps(undefined, table) : await removal();
    if (ops.length === 0) {
      this.written = table;
      this.known = true;
      return;
    }
    this.known = false;
    if (this.options.writer) await this.options.writer.applyOps(ops);
    else await nftApply(renderOps(ops));
    this.written = table;
    this.denials = denials;
    this.known = true;
    if (table) this.options.tableWritten?.();
    this.options.log("info", "policy rules synced", {
      table: table ? `inet ${POLICY_TABLE}` : "none",
      chains: table?.chains.size ?? 0,
      steps: ops.length,
      networkPolicies: this.networkPolicies.size,
      clusterNetworkPolicies: this.clusterPolicies.size,
    });
  }
}

/** A Node as ClusterNetworkPolicy's `nodes` peers see it: its labels and its addresses. */
function policyNode(object: KubeNode): PolicyNode {
  const addresses = (object.status?.addresses ?? [])
    .filter((entry) => entry.type === "InternalIP" || entry.type === "ExternalIP")
    .flatMap((entry) => tryParseIp(entry.address ?? "") ?? []);
  return { name: object.metadata.name, labels: object.metadata.labels ?? {}, addresses };
}

/** A Namespace with the label the API sets on every one (kubernetes.io/metadata.name), whatever its labels say. */
function policyNamespace(object: KubeNamespace): PolicyNamespace {
  return { name: object.metadata.name, labels: { ...(object.metadata.labels ?? {}), "kubernetes.io/metadata.name": object.metadata.name } };
}

/** A Pod as policy sees it (with no address before it runs); undefined once it has finished. */
export function policyPod(object: KubePod): (PolicyPod & { readonly nodeName?: string }) | undefined {
  const phase = object.status?.phase;
  if (phase === "Succeeded" || phase === "Failed") return undefined;
  const texts = object.status?.podIPs?.length ? object.status.podIPs.map((entry) => entry.ip ?? "") : object.status?.podIP ? [object.status.podIP] : [];
  const ips = texts.map((text) => tryParseIp(text)).filter((ip): ip is IpAddress => ip !== undefined);
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

/** The Kubernetes pod a CNI call is for, from CNI_ARGS (K8S_POD_NAMESPACE, K8S_POD_NAME); undefined for a runtime that names none. */
export function kubernetesPod(env: Readonly<Record<string, string>>): { namespace: string; name: string } | undefined {
  const args = new Map((env.CNI_ARGS ?? "").split(";").map((pair) => [pair.slice(0, pair.indexOf("=")), pair.slice(pair.indexOf("=") + 1)] as const));
  const namespace = args.get("K8S_POD_NAMESPACE");
  const name = args.get("K8S_POD_NAME");
  // Names as the API has them (a DNS label, a DNS subdomain); anything else is no pod of the API.
  return namespace !== undefined && name !== undefined && isDns1123Label(namespace).length === 0 && isDns1123Subdomain(name).length === 0 ? { namespace, name } : undefined;
}

/** The addresses of a CNI result (its ips[].address, `ADDRESS/LENGTH`). */
export function resultAddresses(result: string): IpAddress[] {
  try {
    const parsed = JSON.parse(result) as { ips?: Array<{ address?: unknown }> };
    return (parsed.ips ?? []).flatMap((entry) => {
      const ip = typeof entry.address === "string" ? tryParseIp(entry.address.split("/")[0]) : undefined;
      return ip ? [ip] : [];
    });
  } catch {
    return [];
  }
}

/** What `trellis policy explain` judges over: the datastore's policies, namespaces, nodes and pods, listed once. */
export async function listPolicyWorld(source: PolicySource): Promise<{ world: PolicyWorld; pods: Array<PolicyPod & { readonly nodeName?: string }> }> {
  const [namespaces, pods, nodes, networkPolicies, clusterPolicies] = await Promise.all([
    source.list<KubeNamespace>("namespaces"),
    source.list<KubePod>("pods"),
    source.list<KubeNode>("nodes"),
    source.list<NetworkPolicy>("networkpolicies"),
    source.list<ClusterNetworkPolicy>("clusternetworkpolicies"),
  ]);
  return {
    world: {
      namespaces: new Map(namespaces.map((ns) => [ns.metadata.name, policyNamespace(ns)])),
      nodes: nodes.map(policyNode),
      networkPolicies,
      clusterPolicies,
    },
    pods: pods.flatMap((pod) => policyPod(pod) ?? []),
  };
}
