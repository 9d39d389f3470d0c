/**
 * `trellis agent`: one per node. It claims its node in the store, then keeps three things true:
 * the kernel routes to every live peer's pods (`syncNodeNetwork`, one transaction-like batch per
 * change, only what differs), the store knows it is alive (`beat`), and the runtime finds the
 * node's CNI config. Watches only mark what changed; the sync does the work, on every change
 * and every resync interval, so a route deleted by hand comes back and a restart changes
 * nothing that was already right. Beside those: the Service proxy, the policy loop, and the
 * flow records (agent/flows.ts) with the table that keeps their events few.
 */
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { BASE_CHAIN as MASQUERADE_BASE_CHAIN, desiredMasquerade, masqueradeMatches, masqueradeNftTable, masqueradeOps, parseMasqueradeTable } from "../dataplane/masquerade.js";
import {
  desiredPeerNetwork, desiredVxlanDevices, diffNodeNetwork, joinPeerNetworks, leaveOutForeign, podMtu,
  type ForeignRoute, type NodeEndpoint, type NodeNetwork, type NodeNetworkChange, type ObservedNodeNetwork, type Underlay,
} from "../dataplane/node-network.js";
import { stopSpawnHelper, useSpawnHelper } from "../linux/exec.js";
import { keepIpWarm, linkDeletionsSettled } from "../linux/iproute.js";
import { NftBatchWriter } from "../linux/nft-netlink.js";
import { nftApply, nftListObjects } from "../linux/nftables.js";
import { renderOps } from "../nft/text.js";
import { formatIp, formatPrefix, type IpAddress, type IpPrefix } from "../net/ip.js";
import { repairBridge } from "../podnet/bridge.js";
import { hostPortTable, repairHostPorts } from "../podnet/hostports.js";
import { repairMasquerade } from "../podnet/masquerade.js";
import { buildInfoMetric } from "./build-info.js";
import { BRIDGE_NAME, CONFLIST_NAME, renderConflist, writeConflist } from "./conflist.js";
import { cachedPodNets, startCniServer } from "./cni-server.js";
import { Foreground } from "./foreground.js";
import { POLICY_LOG_RATE, POLICY_NFLOG_GROUP, startDenyLog, type DenyLog } from "./deny-log.js";
import { FlowRecorder, flowsHandler, type FlowContext } from "./flows.js";
import { keepOpen } from "./connection-limits.js";
import { followConntrack, KIND_LOST } from "../linux/conntrack-events.js";
import { followNflog } from "../linux/nflog.js";
import { NO_ENDPOINTS_PREFIX, SERVICE_NFLOG_GROUP } from "../dataplane/service-rules.js";
import { FLOW_EVENTS_TABLE, flowEventsTable, type FlowEventKind } from "../dataplane/flow-events.js";
import { deleteTable, tableOps } from "../nft/diff.js";
import type { Table } from "../nft/model.js";
import { ensureSysctl } from "../linux/sysctl.js";
import { kubernetesPod, PolicyLoop, resultAddresses } from "./policy-loop.js";
import { SyncRunner } from "./runner.js";
import type { ClusterFeed } from "./feed.js";
import { defaultRouteAddresses, findUnderlay } from "./host.js";
import { applyNodeNetwork, ensureForwarding, observeNodeNetwork } from "./kernel.js";
import { openKubeFeed } from "./kube-feed.js";
import type { Logger } from "./log.js";
import type { AgentOptions } from "./options.js";
import { startProxyHealthz, startProxyStatus } from "./proxy-health.js";
import { startAgentHttp } from "./http.js";
import { renderGauge } from "./metrics.js";
import { Rejections } from "./rejections.js";
import { startServiceProxy } from "./service-proxy.js";
import { openStoreFeed } from "./store-feed.js";

/** The least time between two writes of the policy table. */
const POLICY_MIN_SYNC_INTERVAL_MS = 100;

/** The agent's own nftables table: masquerade of pod traffic leaving the cluster. */
export const AGENT_MASQUERADE_TABLE = "trellis-agent";
/** A failed sync of the node's routes is tried again this much later, doubling up to the maximum (a resync also brings one). */
const FIRST_ROUTE_RETRY_MS = 1_000;
const MAX_ROUTE_RETRY_MS = 30_000;

export interface RunningAgent {
  /** Resolves when the agent has stopped (after `stop` or a fatal error, which it rejects with). */
  readonly done: Promise<void>;
  stop(): void;
  /** How long the last sync of the node network took, in ms. */
  lastSyncMs(): number;
}

/** Checks the node, registers it with its datastore and starts the loops; rejects, having written nothing, on bad input. */
export async function startAgent(options: AgentOptions, log: Logger): Promise<RunningAgent> {
  const underlayOf = async (nodeIps: readonly IpAddress[]): Promise<Underlay> => {
    const detected = await findUnderlay(nodeIps);
    return { ...detected, mtu: options.mtu ?? detected.mtu };
  };
  let feed: ClusterFeed;
  let nodeIps: readonly IpAddress[];
  let underlay: Underlay;
  const rejections = new Rejections(log);
  if (options.datastore === "kubernetes") {
    // The Node's InternalIPs are the node's addresses unless --node-ip says otherwise.
    ({ feed, nodeIps, underlay } = await openKubeFeed(options, log, underlayOf, rejections));
  } else {
    nodeIps = options.nodeIps.length ? options.nodeIps : await defaultRouteAddresses();
    if (!nodeIps.length) throw new Error("this node has no default route to take its addresses from: give them with --node-ip");
    underlay = await underlayOf(nodeIps);
    feed = await openStoreFeed(options, log, nodeIps, underlay, rejections);
  }
  log("info", "node claimed", {
    node: feed.self.name,
    datastore: feed.description,
    podCidrs: feed.self.podCidrs.map(formatPrefix),
    addresses: nodeIps.map(formatIp),
    underlay: underlay.device,
    mtu: underlay.mtu,
    podMtu: podMtu(options.mode, underlay),
    mode: options.mode,
  });
  return runLoops(options, log, feed, underlay, rejections);
}

async function runLoops(options: AgentOptions, log: Logger, feed: ClusterFeed, underlay: Underlay, rejections: Rejections): Promise<RunningAgent> {
  const timers: NodeJS.Timeout[] = [];
  let stopped = false;
  let reportedUnroutable = new Set<string>();
  let lastSyncMs = 0;
  let lastRoutesSyncAt = 0;
  let finish!: (error?: unknown) => void;
  const done = new Promise<void>((resolve, reject) => (finish = (error) => (error ? reject(error) : resolve())));
  const selfEndpoint = feed.self;
  let routesProgrammed = false;
  const podNets = cachedPodNets();
  // Commands start through the small helper installed beside this executable when it is there
  // (a fork of the agent itself stalls it), and ip processes are started ahead of need.
  const helperPath = join(dirname(process.execPath), SPAWN_HELPER);
  if (useSpawnHelper(helperPath)) log("info", "starting commands through the spawn helper", { path: helperPath });
  keepIpWarm(true);
  // CNI requests first: the proxy's full writes wait between their slices while one is served.
  const foreground = new Foreground();
  const proxy = options.proxy
    ? startServiceProxy({
        source: feed.services,
        node: {
          name: selfEndpoint.name, addresses: selfEndpoint.addresses, podCidrs: feed.clusterPodCidrs, ownPodCidrs: selfEndpoint.podCidrs,
          ...(feed.zone() === undefined ? {} : { zone: feed.zone() }),
          serviceCidrs: feed.serviceCidrs(),
        },
        nodeZones: feed.nodeZones(),
        minSyncIntervalMs: options.proxySyncIntervalMs,
        log,
        nftWriter: join(dirname(process.execPath), NFT_WRITER),
        rejections,
        pause: foreground.pause,
      })
    : undefined;
  /** The netlink writer for the agent's own tables (masquerade, policy), when it is installed beside this executable. */
  const agentWriter = ((writer) => (writer.available() ? writer : undefined))(new NftBatchWriter(join(dirname(process.execPath), NFT_WRITER)));
  // NetworkPolicy and ClusterNetworkPolicy, from either datastore.
  const policy = new PolicyLoop({
    source: feed.policies,
    nodeName: selfEndpoint.name,
    log,
    rejections,
    writer: agentWriter,
    // A policy change is a few tens of ms of work at 1,000 policies over 10,000 pods: written
    // within 100 ms of the one before, not the proxy's second.
    minSyncIntervalMs: Math.min(options.proxySyncIntervalMs, POLICY_MIN_SYNC_INTERVAL_MS),
    unknownPods: feed.kubeClient ? "refuse" : "admit",
    // Denied connections are logged where the reader of the log runs (beside the netlink writer).
    ...(agentWriter ? { denyLog: { group: POLICY_NFLOG_GROUP, rate: POLICY_LOG_RATE }, tableWritten: () => startDenyLogOnce() } : {}),
  });
  // The reader of the deny log runs from the first policy table on.
  let denyLog: DenyLog | undefined;
  const startDenyLogOnce = () => {
    denyLog ??= startDenyLog({
      reader: join(dirname(process.execPath), NFT_WRITER), group: POLICY_NFLOG_GROUP, log, denial: (prefix) => policy.denial(prefix), pod: (address) => policy.podAt(address),
      ...(flows ? { seen: (packet, denial) => flows!.recorder.denied({ ...packet, ...(denial ? { direction: denial.direction, policy: denial.policy } : {}) }) } : {}),
    });
  };
  // Flow records: conntrack's events of this namespace, read beside the netlink writer; served
  // on the metrics address (none kept where nothing serves them).
  const flows = options.flowBuffer > 0 && agentWriter && options.metricsAddress ? startFlows(options.flowBuffer, options.flowEvents, join(dirname(process.execPath), NFT_WRITER), {
    nodeName: selfEndpoint.name,
    ownPodCidrs: selfEndpoint.podCidrs,
    clusterPrefixes: () => [...feed.clusterPodCidrs, ...feed.serviceCidrs()],
    pods: () => policy.knownPods(),
    nodes: () => [selfEndpoint, ...feed.livePeers()],
    services: () => proxy?.servicePorts() ?? { version: 0, ports: [] },
  }, log, proxy !== undefined) : undefined;
  /**
   * The events the cluster's connections make (dataplane/flow-events.ts), while flow records are
   * kept: written when it differs from what was last written or is gone (deleted by hand); with
   * flow records off, removed if it is there.
   */
  let flowEventsWritten: Table | undefined;
  const syncFlowEvents = async () => {
    if (!agentWriter) return;
    try {
      const present = (await agentWriter.listTables()).includes(`inet ${FLOW_EVENTS_TABLE}`);
      const desired = flows ? flowEventsTable([...feed.clusterPodCidrs, ...feed.serviceCidrs()], options.flowEvents) : undefined;
      // Not known to be as last written (a start, a failure): rewritten whole, or removed.
      const ops = present && !flowEventsWritten && !desired ? deleteTable("inet", FLOW_EVENTS_TABLE, true) : tableOps(present ? flowEventsWritten : undefined, desired);
      if (!ops.length) return;
      // Through a writer that exits after it: the table changes with the cluster's CIDRs only.
      await agentWriter.applyOnce(ops);
      flowEventsWritten = desired;
      log("info", desired ? "flow events table written" : "flow events table removed", { table: `inet ${FLOW_EVENTS_TABLE}` });
    } catch (error) {
      flowEventsWritten = undefined;
      log("error", "cannot write the flow events table; trying again at the next resync", { error: String(error) });
    }
  };
  void syncFlowEvents();
  // A pod's policy rules are in the kernel before its ADD answers (and go with its DEL).
  const policyHooks = {
    added: async (env: Readonly<Record<string, string>>, result: string) => {
      const pod = kubernetesPod(env);
      if (pod) await policy.attach(pod.namespace, pod.name, resultAddresses(result));
    },
    deleted: async (env: Readonly<Record<string, string>>) => {
      const pod = kubernetesPod(env);
      if (pod) await policy.detach(pod.namespace, pod.name);
    },
  };
  const cniServer = await startCniServer(options.cniSocket, podNets, () => (routesProgrammed ? undefined : "its routes to the other nodes are not programmed yet"), log, undefined, foreground, policyHooks);
  // kube-proxy's endpoints, for what asks a node's Service proxy there; not worth the node's network either.
  const proxyEndpoints = proxy
    ? await Promise.all([
        options.proxyHealthzAddress && startProxyHealthz(options.proxyHealthzAddress.host, options.proxyHealthzAddress.port, { lastSyncAt: () => proxy.stats().lastSyncAt, unhealthy: () => proxy.unhealthy() }, log),
        options.proxyStatusAddress && startProxyStatus(options.proxyStatusAddress.host, options.proxyStatusAddress.port, log),
      ].map((started) => (started || Promise.resolve(undefined)).catch((error: unknown) => {
        log("error", "cannot serve kube-proxy's health or status endpoint; going on without it", { error: String(error) });
        return undefined;
      })))
    : [];
  const http = options.metricsAddress
    ? await startAgentHttp(options.metricsAddress.host, options.metricsAddress.port, {
        metrics: async () =>
          [
            renderGauge("trellis_sync_routes_duration_seconds", "How long the last sync of the node's routes took.", [{ value: lastSyncMs / 1000 }]),
            renderGauge("trellis_sync_routes_last_timestamp_seconds", "When the node's routes were last synced.", [{ value: lastRoutesSyncAt / 1000 }]),
            renderGauge("trellis_peers", "Peer nodes this node routes to.", [{ value: feed.livePeers().length }]),
            renderGauge("process_resident_memory_bytes", "Resident memory of the agent.", [{ value: process.memoryUsage().rss }]),
            rejections.metrics(),
            buildInfoMetric(),
            proxy?.metrics() ?? "",
            await policy.metrics(),
            flows?.recorder.metrics() ?? "",
          ].join(""),
        unhealthy: () => {
          const age = (Date.now() - lastRoutesSyncAt) / 1000;
          const problems = [
            lastRoutesSyncAt > 0 && age > 3 * options.resyncSeconds ? `the routes were last synced ${Math.round(age)} s ago (resync every ${options.resyncSeconds} s)` : undefined,
            proxy?.unhealthy(),
          ].filter((problem) => problem !== undefined);
          return problems.length ? problems.join("; ") : undefined;
        },
        notReady: () => {
          if (!routesProgrammed) return "the routes to the other nodes are not programmed yet";
          if (proxy && !proxy.synced()) return "the Service rules are not synced yet";
          return undefined;
        },
        ...(flows ? { flows: flowsHandler(flows.recorder, (response) => keepOpen(response.socket!)) } : {}),
      }, log).catch((error: unknown) => {
        // Metrics are not worth the node's network: the agent goes on without them.
        log("error", "cannot serve metrics; going on without them", { address: `${options.metricsAddress!.host}:${options.metricsAddress!.port}`, error: String(error) });
        return undefined;
      })
    : undefined;
  /**
   * Recomputes and applies. A full sync computes every peer's part, reads what the kernel holds
   * and repairs any drift. A partial one (peers changed in the store) recomputes only their
   * parts and diffs them against what the last sync applied for them, so one change costs one
   * change. Requests made while a sync runs coalesce into one more run, full if any asked for it.
   */
  let wantFull = false;
  const changed = new Set<string>();
  /** Each peer's part of the desired state as last applied; undefined until a full sync applied it all. */
  let applied: Map<string, NodeNetwork> | undefined;
  /** The kernel's routes that are not the agent's, as the last full sync saw them: partial syncs keep clear of them too. */
  let foreign: readonly ForeignRoute[] = [];
  const devices = desiredVxlanDevices(selfEndpoint, underlay, options.mode);
  /** Syncs of the node's routes, one at a time, the peers that changed meanwhile together; a failed one is tried again, whole. */
  const routeRuns = new SyncRunner({
    minIntervalMs: 0,
    firstRetryMs: FIRST_ROUTE_RETRY_MS,
    maxRetryMs: MAX_ROUTE_RETRY_MS,
    run: async () => {
      if (!wantFull && changed.size === 0 && applied !== undefined) return;
      const runFull = wantFull || applied === undefined;
      const names = [...changed];
      wantFull = false;
      changed.clear();
      try {
        await syncNodeNetwork(runFull, names);
      } catch (error) {
        applied = undefined;
        throw error;
      }
    },
    failed: (error, retryInMs) => log("error", "sync failed; trying again, whole", { error: String(error), retryInSeconds: (retryInMs ?? 0) / 1000 }),
  });
  const requestSync = (full: boolean, peer?: string) => {
    if (stopped || !feed.listed()) return;
    if (full) wantFull = true;
    if (peer !== undefined) changed.add(peer);
    if (!wantFull && changed.size === 0) return;
    routeRuns.request();
  };

  const partOf = (peer: NodeEndpoint) => desiredPeerNetwork(underlay, devices, peer, options.mode);

  const syncNodeNetwork = async (full: boolean, names: readonly string[]) => {
    const started = performance.now();
    const live = feed.livePeers();
    // Node addresses are what no Service's external address may be: they change with the peers.
    proxy?.setExternalPolicy({ allowed: options.externalIpCidrs, podCidrs: feed.clusterPodCidrs, serviceCidrs: feed.serviceCidrs(), reserved: feed.reservedAddresses() });
    let change: NodeNetworkChange;
    if (full || !applied) {
      const parts = new Map(live.map((peer) => [peer.name, partOf(peer)]));
      const observed = await observeNodeNetwork();
      foreign = observed.foreign;
      change = diffNodeNetwork(joinPeerNetworks(devices, [...parts.values()]), observed);
      applied = parts;
    } else {
      const before = names.map((name) => applied!.get(name)).filter((part) => part !== undefined);
      const after = names.flatMap((name) => {
        const peer = feed.livePeer(name);
        return peer ? [partOf(peer)] : [];
      });
      // What the last sync applied, less what it left out for the kernel's own routes.
      change = diffNodeNetwork(joinPeerNetworks(devices, after), asObserved(leaveOutForeign(joinPeerNetworks(devices, before), foreign).desired, foreign));
      for (const name of names) {
        const peer = feed.livePeer(name);
        if (peer) applied.set(name, partOf(peer));
        else applied.delete(name);
      }
    }
    const wanted = [...applied.values()];
    let complete = true;
    if (change.ip.length || change.bridge.length) {
      try {
        await applyNodeNetwork(change);
        log("info", "routes updated", { changes: change.summary });
      } catch (error) {
        // Retried by the periodic resync, not at once: a change the kernel refuses (a device of
        // ours taken by hand) would otherwise be retried in a tight loop. Until then every sync
        // is a full one, against what the kernel holds.
        log("error", "some changes failed; the next full sync retries them", { error: String(error), changes: change.summary });
        applied = undefined;
        complete = false;
      }
    }
    const desired = joinPeerNetworks(devices, wanted);
    // Each unroutable pod CIDR is said once, when it becomes so (again).
    const unroutable = new Map(desired.unroutable.map((entry) => [`${entry.peer} ${formatPrefix(entry.podCidr)}: ${entry.reason}`, entry]));
    for (const [key, entry] of unroutable) {
      if (!reportedUnroutable.has(key)) log("warn", "peer unreachable", { peer: entry.peer, podCidr: formatPrefix(entry.podCidr), reason: entry.reason });
    }
    reportedUnroutable = new Set(unroutable.keys());
    // A peer route the kernel's own routes stand in the way of is refused, not forced.
    const { blocked } = leaveOutForeign(desired, foreign);
    rejections.report("routes", blocked.map((entry) => {
      const peer = live.find((candidate) => candidate.podCidrs.some((cidr) => formatPrefix(cidr) === formatPrefix(entry.dst)))?.name ?? formatPrefix(entry.dst);
      return { kind: "Node", name: peer, reason: "pod-cidr-route-conflict", message: `node ${peer}: no route to its pod CIDR ${formatPrefix(entry.dst)}: ${entry.reason}` };
    }));
    if (options.masquerade) await syncAgentMasquerade(live, log);
    if (full) {
      const families = new Set(selfEndpoint.podCidrs.map((cidr) => cidr.family));
      const forwarding = ensureForwarding(underlay.device, [BRIDGE_NAME, ...desired.vxlan.map((device) => device.name)], families);
      if (forwarding.length) log("info", "forwarding enabled", { sysctls: forwarding });
      await repairPodBridge();
      // Written once the routes are in place, so a runtime sees the network ready only then;
      // STATUS through the socket says not ready until then too.
      if (complete) {
        const text = renderConflist({ podCidrs: selfEndpoint.podCidrs, mtu: podMtu(options.mode, underlay), dataDir: options.cniDataDir, agentSocket: options.cniSocket });
        if (writeConflist(options.cniConfDir, text)) log("info", "CNI config written", { path: join(options.cniConfDir, CONFLIST_NAME) });
        routesProgrammed = true;
        feed.routesProgrammed();
      }
    }
    lastSyncMs = performance.now() - started;
    lastRoutesSyncAt = Date.now();
    const memory = process.memoryUsage();
    log("debug", "synced", {
      full,
      durationMs: Math.round(lastSyncMs * 10) / 10,
      peers: live.length,
      changedPeers: full ? undefined : names.length,
      routes: desired.routes.length,
      changes: change.summary.length,
      rssMiB: Math.round(memory.rss / 2 ** 20),
      heapUsedMiB: Math.round(memory.heapUsed / 2 ** 20),
    });
  };

  /** Masquerade exclusions change only with the set of node addresses: no nft call otherwise. */
  let masqueradeFor = "";
  /** The periodic full sync also checks the table against the kernel. */
  let wantFullMasquerade = true;
  const syncAgentMasquerade = async (live: readonly NodeEndpoint[], logger: Logger) => {
    const exclusions: IpPrefix[] = [
      ...feed.clusterPodCidrs,
      ...feed.serviceCidrs(),
      ...[selfEndpoint, ...live].flatMap((node) => node.addresses.map((address) => ({ family: address.family, network: address.value, length: address.family === 4 ? 32 : 128 }))),
    ];
    const key = exclusions.map(formatPrefix).join(",");
    if (key === masqueradeFor && !wantFullMasquerade) return;
    wantFullMasquerade = false;
    const desired = desiredMasquerade([{ network: "pods", sources: selfEndpoint.podCidrs, exclusions }]);
    masqueradeFor = key;
    // The table's chains and sets are listed one by one (nft lists one without reading the whole
    // namespace, which holds the Service proxy's tens of thousands of chains); anything missing
    // or otherwise, and the table is written whole, through the netlink writer when it is there.
    const model = masqueradeNftTable(AGENT_MASQUERADE_TABLE, desired);
    const listing = model && await nftListObjects("inet", AGENT_MASQUERADE_TABLE, { chains: [MASQUERADE_BASE_CHAIN, ...desired.chains.keys()], sets: [...model.sets.keys()] });
    if (model && masqueradeMatches(desired, parseMasqueradeTable(listing))) return;
    const ops = masqueradeOps(AGENT_MASQUERADE_TABLE, desired);
    if (agentWriter) await agentWriter.applyOps(ops);
    else await nftApply(renderOps(ops));
    logger("info", "masquerade updated", { table: `inet ${AGENT_MASQUERADE_TABLE}` });
  };

  /** A pod bridge deleted by hand comes back with the recorded pods on it. */
  const repairPodBridge = async () => {
    if (!existsSync(join(options.cniDataDir, "state.db"))) return;
    // The CNI server's own handle on the state, kept open: opening SQLite at every resync is
    // synchronous work on the loop that serves CNI requests.
    await repairBridge(podNets.acquire(options.cniDataDir, "--cni-data-dir"), BRIDGE_NAME);
  };

  const stop = () => {
    if (stopped) return;
    stopped = true;
    for (const timer of timers) clearInterval(timer);
  };

  /**
   * The CNI state directories' masquerade and hostPort tables, written on ADD and DEL: one
   * deleted by hand is written again here (listing the namespace's tables is one netlink dump).
   */
  const repairPodTables = async () => {
    const nets = podNets.all().filter((net) => net.nftWriter);
    if (!nets.length) return;
    try {
      const tables = new Set(await nets[0].nftWriter!.listTables());
      for (const net of nets) {
        const repaired = [
          ...((await repairMasquerade(net, tables)) ? [`inet ${net.masqueradeTable}`] : []),
          ...((await repairHostPorts(net, tables)) ? [`inet ${hostPortTable(net)}`] : []),
        ];
        if (repaired.length) log("warn", "CNI tables missing; written again", { stateDir: net.stateDir, tables: repaired });
      }
    } catch (error) {
      log("error", "cannot check the CNI tables; trying again at the next resync", { error: String(error) });
    }
  };
  timers.push(setInterval(() => {
    wantFullMasquerade = true;
    requestSync(true);
    proxy?.resync();
    policy.resync();
    void repairPodTables();
    void syncFlowEvents();
  }, options.resyncSeconds * 1000));
  feed.follow({
    changed: (name) => requestSync(name === undefined, name),
    zonesChanged: () => {
      proxy?.setNodeZones(feed.nodeZones());
      proxy?.setZone(feed.zone());
    },
    serviceCidrsChanged: () => {
      proxy?.setServiceCidrs(feed.serviceCidrs());
      void syncFlowEvents();
      // The external-address policy and the masquerade exclusions name them too.
      requestSync(true);
    },
    reconnected: () => proxy?.relist(),
    lost: (error) => stopAndClose(error),
  });
  void done.catch(() => undefined);
  let closing = false;
  const stopAndClose = (error?: Error) => {
    if (closing) return;
    closing = true;
    stop();
    keepIpWarm(false);
    void routeRuns.stop()
      .then(() => proxy?.stop())
      .then(() => policy.stop())
      .then(() => denyLog?.stop())
      .then(() => flows?.stop())
      .then(() => http?.close())
      .then(() => proxyEndpoints.forEach((endpoint) => endpoint?.close()))
      .then(() => cniServer.close())
      // A DEL answers once its veth is unlisted; the kernel may still be freeing it, and the
      // ip that asked is let finish rather than orphaned.
      .then(() => linkDeletionsSettled(2_000))
      .then(() => stopSpawnHelper())
      .then(() => podNets.closeAll())
      .then(() => agentWriter?.close())
      .then(() => feed.close())
      .then(() => finish(error), (failure: unknown) => finish(error ?? failure));
  };
  return { done, stop: () => stopAndClose(), lastSyncMs: () => lastSyncMs };
}

/**
 * The flow recorder and its conntrack reader. conntrack counts each connection's packets and
 * bytes only where the namespace asks it to (nf_conntrack_acct, per network namespace): asked
 * here, as kube-proxy sets its own conntrack sysctls.
 */
function startFlows(capacity: number, kinds: readonly FlowEventKind[], reader: string, context: FlowContext, log: Logger, proxy: boolean): { recorder: FlowRecorder; stop(): void } {
  try {
    if (ensureSysctl("net.netfilter.nf_conntrack_acct", "1")) log("info", "conntrack counts bytes and packets per connection now, for flow records", { sysctl: "net.netfilter.nf_conntrack_acct=1" });
  } catch (error) {
    log("warn", "cannot have conntrack count bytes and packets: flow records go without them", { error: String(error) });
  }
  const recorder = new FlowRecorder(context, capacity);
  let lostLoggedAt = 0;
  const events = followConntrack({
    reader,
    kinds,
    record: (buffer, offset) => {
      recorder.conntrack(buffer, offset);
      if (buffer[offset] === KIND_LOST && Date.now() - lostLoggedAt >= 60_000) {
        lostLoggedAt = Date.now();
        log("warn", "conntrack events were lost: the flow reader fell behind (counted in trellis_flow_events_lost_total)", {});
      }
    },
    stopped: (why, retryInMs) => log("warn", "the conntrack event reader stopped; starting it again", { error: why, retryInSeconds: retryInMs / 1000 }),
  });
  // What the Service proxy refuses never reaches conntrack's table: its reject chain logs it.
  const refused = proxy
    ? followNflog(reader, SERVICE_NFLOG_GROUP, (packet) => {
      if (packet.prefix === NO_ENDPOINTS_PREFIX) recorder.rejected(packet);
    }, (why, retryInMs) => log("warn", "the Service proxy's refusal log reader stopped; starting it again", { group: SERVICE_NFLOG_GROUP, error: why, retryInSeconds: retryInMs / 1000 }))
    : undefined;
  return {
    recorder,
    stop: () => {
      events.stop();
      refused?.stop();
    },
  };
}

/** The spawn helper's file name, beside the trellis executable. */
const SPAWN_HELPER = "trellis-spawn";
/** The Service proxy's netlink writer, beside the trellis executable. */
const NFT_WRITER = "trellis-nft-batch";

/** What the last sync applied, as if read back from the kernel (with the other routes it saw). */
function asObserved(network: NodeNetwork, foreign: readonly ForeignRoute[]): ObservedNodeNetwork {
  return { vxlan: network.vxlan.map((device) => ({ ...device, up: true })), routes: network.routes, neighbors: network.neighbors, fdb: network.fdb, foreign };
}
