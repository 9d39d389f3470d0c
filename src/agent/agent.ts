/**
 * `trellis agent`: one per node. It claims its node in the store, then keeps three things true:
 * the kernel routes to every live peer's pods (`syncNodeNetwork`, one transaction-like batch per
 * change, only what differs), the store knows it is alive (`beat`), and the runtime finds the
 * node's CNI config. Watches only mark what changed; the sync does the work, on every change
 * and every resync interval, so a route deleted by hand comes back and a restart changes
 * nothing that was already right.
 */
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { claimNode, writeHeartbeat, type Heartbeat } from "../cluster/node-agents.js";
import { HEARTBEATS_PREFIX, NODES_PREFIX, parseNode, type AgentClaim, type NodeRecord } from "../cluster/node-cidrs.js";
import { openCluster, type Cluster } from "../cluster/state.js";
import { desiredMasquerade, parseMasqueradeTable, renderMasqueradeChange } from "../dataplane/masquerade.js";
import {
  desiredPeerNetwork, desiredVxlanDevices, diffNodeNetwork, joinPeerNetworks, podMtu, vtepMac, vxlanFamilies,
  type NodeEndpoint, type NodeNetwork, type NodeNetworkChange, type ObservedNodeNetwork, type Underlay,
} from "../dataplane/node-network.js";
import { stopSpawnHelper, useSpawnHelper } from "../linux/exec.js";
import { keepIpWarm, linkDeletionsSettled } from "../linux/iproute.js";
import { nftApply, nftListTable } from "../linux/nftables.js";
import { bootId, processRunning } from "../linux/process.js";
import { formatIp, formatPrefix, parsePrefix, tryParseInterfaceAddress, tryParseIp, type Family, type IpPrefix } from "../net/ip.js";
import { loadPlan } from "../plan/plan.js";
import { repairBridge } from "../podnet/bridge.js";
import { openPodNet } from "../podnet/handle.js";
import type { KvStore, KvWatch } from "../store/kv.js";
import { openStore, requireExistingStore } from "../store/open.js";
import { BRIDGE_NAME, CONFLIST_NAME, renderConflist, writeConflist } from "./conflist.js";
import { cachedPodNets, startCniServer } from "./cni-server.js";
import { agentClaim, defaultRouteAddresses, findUnderlay } from "./host.js";
import { applyNodeNetwork, ensureForwarding, observeNodeNetwork } from "./kernel.js";
import type { Logger } from "./log.js";
import type { AgentOptions } from "./options.js";
import { startAgentHttp } from "./http.js";
import { renderGauge } from "./metrics.js";
import { startServiceProxy } from "./service-proxy.js";

/** The agent's own nftables table: masquerade of pod traffic leaving the cluster. */
export const AGENT_MASQUERADE_TABLE = "trellis-agent";

interface Peer {
  record: NodeRecord;
  /** The record parsed once, when it changed. */
  endpoint: NodeEndpoint;
  /** Local time its heartbeat last changed (or the store came back): peers are judged by change, not by clock. */
  lastBeat: number;
  heartbeat?: string;
}

export interface RunningAgent {
  /** Resolves when the agent has stopped (after `stop` or a fatal error, which it rejects with). */
  readonly done: Promise<void>;
  stop(): void;
  /** How long the last sync of the node network took, in ms. */
  lastSyncMs(): number;
}

/** Checks the node, claims it and starts the loops; rejects, having written nothing, on bad input. */
export async function startAgent(options: AgentOptions, log: Logger): Promise<RunningAgent> {
  const plan = options.plan === undefined ? undefined : await loadPlan(options.plan);
  const nodeIps = options.nodeIps.length ? options.nodeIps : await defaultRouteAddresses();
  if (!nodeIps.length) throw new Error("this node has no default route to take its addresses from: give them with --node-ip");
  const detected = await findUnderlay(nodeIps);
  const underlay: Underlay = { ...detected, mtu: options.mtu ?? detected.mtu };
  requireExistingStore(options.store, plan !== undefined);
  const store = await openStore(options.store);
  let cluster: Cluster;
  const claim = agentClaim();
  let self: NodeRecord;
  try {
    cluster = await openCluster(store, plan, options.plan);
    self = await claimNode(
      cluster,
      options.nodeName,
      {
        addresses: nodeIps.map(formatIp),
        vteps: vxlanFamilies(options.mode, nodeIps).map((family) => ({ family, mac: vtepMac(options.nodeName, family) })),
        mtu: underlay.mtu,
        agent: claim,
      },
      (other, heartbeat) => claimLive(other, heartbeat, options),
    );
  } catch (error) {
    await store.close();
    throw error;
  }
  log("info", "node claimed", {
    node: self.name,
    podCidrs: self.podCidrs,
    addresses: nodeIps.map(formatIp),
    underlay: underlay.device,
    mtu: underlay.mtu,
    podMtu: podMtu(options.mode, underlay),
    mode: options.mode,
  });
  return runLoops(options, log, { store, cluster, claim, self, underlay });
}

interface AgentContext {
  readonly store: KvStore;
  readonly cluster: Cluster;
  readonly claim: AgentClaim;
  readonly self: NodeRecord;
  readonly underlay: Underlay;
}

async function runLoops(options: AgentOptions, log: Logger, context: AgentContext): Promise<RunningAgent> {
  const { store, cluster, claim, self, underlay } = context;
  const peers = new Map<string, Peer>();
  const timers: NodeJS.Timeout[] = [];
  const watches: KvWatch[] = [];
  let stopped = false;
  let storeUp = true;
  let syncing: Promise<void> | undefined;
  let again = false;
  let reportedUnroutable = new Set<string>();
  let lastSyncMs = 0;
  let lastRoutesSyncAt = 0;
  let finish!: (error?: unknown) => void;
  const done = new Promise<void>((resolve, reject) => (finish = (error) => (error ? reject(error) : resolve())));

  const selfEndpoint = endpointOf(self);

  let listed = false;
  let routesProgrammed = false;
  const podNets = cachedPodNets();
  // Commands start through the small helper installed beside this executable when it is there
  // (a fork of the agent itself stalls it), and ip processes are started ahead of need.
  const helperPath = join(dirname(process.execPath), SPAWN_HELPER);
  if (useSpawnHelper(helperPath)) log("info", "starting commands through the spawn helper", { path: helperPath });
  keepIpWarm(true);
  const proxy = options.proxy
    ? startServiceProxy({
        store,
        node: { name: self.name, addresses: selfEndpoint.addresses, podCidrs: cluster.plan.podCidrs },
        minSyncIntervalMs: options.proxySyncIntervalMs,
        log,
        nftWriter: join(dirname(process.execPath), NFT_WRITER),
      })
    : undefined;
  const cniServer = await startCniServer(options.cniSocket, podNets, () => (routesProgrammed ? undefined : "its routes to the other nodes are not programmed yet"), log);
  const http = options.metricsAddress
    ? await startAgentHttp(options.metricsAddress.host, options.metricsAddress.port, {
        metrics: () =>
          [
            renderGauge("trellis_sync_routes_duration_seconds", "How long the last sync of the node's routes took.", [{ value: lastSyncMs / 1000 }]),
            renderGauge("trellis_sync_routes_last_timestamp_seconds", "When the node's routes were last synced.", [{ value: lastRoutesSyncAt / 1000 }]),
            renderGauge("trellis_peers", "Peer nodes this node routes to.", [{ value: peers.size }]),
            renderGauge("process_resident_memory_bytes", "Resident memory of the agent.", [{ value: process.memoryUsage().rss }]),
            proxy?.metrics() ?? "",
          ].join(""),
        unhealthy: () => {
          const age = (Date.now() - lastRoutesSyncAt) / 1000;
          return lastRoutesSyncAt > 0 && age > 3 * options.resyncSeconds ? `the routes were last synced ${Math.round(age)} s ago (resync every ${options.resyncSeconds} s)` : undefined;
        },
        notReady: () => {
          if (!routesProgrammed) return "the routes to the other nodes are not programmed yet";
          if (proxy && !proxy.synced()) return "the Service rules are not synced yet";
          return undefined;
        },
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
  const devices = desiredVxlanDevices(selfEndpoint, underlay, options.mode);
  const requestSync = (full: boolean, peer?: string) => {
    if (stopped || !listed) return;
    if (full) wantFull = true;
    if (peer !== undefined) changed.add(peer);
    if (syncing || (!wantFull && changed.size === 0)) return;
    const runFull = wantFull || applied === undefined;
    const names = [...changed];
    wantFull = false;
    changed.clear();
    syncing = syncNodeNetwork(runFull, names)
      .catch((error: unknown) => {
        applied = undefined;
        log("error", "sync failed; the next resync retries", { error: String(error) });
      })
      .finally(() => {
        syncing = undefined;
        if (wantFull || changed.size) requestSync(wantFull);
      });
  };

  const isLive = (peer: Peer | undefined, now: number) => peer !== undefined && (!storeUp || now - peer.lastBeat <= options.peerGraceSeconds * 1000);
  const partOf = (peer: Peer) => desiredPeerNetwork(underlay, devices, peer.endpoint, options.mode);

  const syncNodeNetwork = async (full: boolean, names: readonly string[]) => {
    const started = performance.now();
    const now = Date.now();
    const live = [...peers.values()].filter((peer) => isLive(peer, now));
    let change: NodeNetworkChange;
    if (full || !applied) {
      const parts = new Map(live.map((peer) => [peer.record.name, partOf(peer)]));
      change = diffNodeNetwork(joinPeerNetworks(devices, [...parts.values()]), await observeNodeNetwork());
      applied = parts;
    } else {
      const before = names.map((name) => applied!.get(name)).filter((part) => part !== undefined);
      const after = names.flatMap((name) => {
        const peer = peers.get(name);
        return peer && isLive(peer, now) ? [partOf(peer)] : [];
      });
      change = diffNodeNetwork(joinPeerNetworks(devices, after), asObserved(joinPeerNetworks(devices, before)));
      for (const name of names) {
        const peer = peers.get(name);
        if (peer && isLive(peer, now)) applied.set(name, partOf(peer));
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
    if (options.masquerade) await syncAgentMasquerade(live.map((peer) => peer.endpoint), log);
    if (full) {
      const families = new Set(self.podCidrs.map((cidr) => parsePrefix(cidr).family));
      const forwarding = ensureForwarding(underlay.device, [BRIDGE_NAME, ...desired.vxlan.map((device) => device.name)], families);
      if (forwarding.length) log("info", "forwarding enabled", { sysctls: forwarding });
      await repairPodBridge();
      // Written once the routes are in place, so a runtime sees the network ready only then;
      // STATUS through the socket says not ready until then too.
      if (complete) {
        const text = renderConflist({ podCidrs: self.podCidrs.map(parsePrefix), mtu: podMtu(options.mode, underlay), dataDir: options.cniDataDir, agentSocket: options.cniSocket });
        if (writeConflist(options.cniConfDir, text)) log("info", "CNI config written", { path: join(options.cniConfDir, CONFLIST_NAME) });
        routesProgrammed = true;
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
      ...cluster.plan.podCidrs,
      ...cluster.plan.serviceCidrs,
      ...[selfEndpoint, ...live].flatMap((node) => node.addresses.map((address) => ({ family: address.family, network: address.value, length: address.family === 4 ? 32 : 128 }))),
    ];
    const key = exclusions.map(formatPrefix).join(",");
    if (key === masqueradeFor && !wantFullMasquerade) return;
    wantFullMasquerade = false;
    const desired = desiredMasquerade([{ network: "pods", sources: selfEndpoint.podCidrs, exclusions }]);
    masqueradeFor = key;
    const script = renderMasqueradeChange(AGENT_MASQUERADE_TABLE, desired, parseMasqueradeTable(await nftListTable("inet", AGENT_MASQUERADE_TABLE)));
    if (script) {
      await nftApply(script);
      logger("info", "masquerade updated", { table: `inet ${AGENT_MASQUERADE_TABLE}` });
    }
  };

  /** A pod bridge deleted by hand comes back with the recorded pods on it. */
  const repairPodBridge = async () => {
    if (!existsSync(join(options.cniDataDir, "state.db"))) return;
    const net = openPodNet(options.cniDataDir, { field: "--cni-data-dir" });
    try {
      await repairBridge(net, BRIDGE_NAME);
    } finally {
      net.close();
    }
  };

  /**
   * Our own heartbeat is also how we learn the store is gone (an etcd watch just waits through an
   * outage): while it fails, no peer is judged by its heartbeat, and when it works again every
   * peer's grace starts over.
   */
  let beatFailing = false;
  const beat = async () => {
    try {
      await writeHeartbeat(store, self.name, claim.id);
      if (beatFailing) {
        beatFailing = false;
        storeUp = true;
        const now = Date.now();
        for (const peer of peers.values()) peer.lastBeat = now;
        log("info", "heartbeat written again", { store: store.spec });
        relist();
        proxy?.relist();
      }
    } catch (error) {
      if (!beatFailing) log("warn", "heartbeat not written; the store is unreachable; keeping every peer's routes meanwhile", { store: store.spec, error: String(error) });
      beatFailing = true;
      storeUp = false;
    }
  };

  /**
   * A watch stream may sit in its client's reconnect backoff for long after the store is back
   * (etcd's client waits up to 30 s); once a heartbeat goes through again, list and watch anew.
   */
  let relisting = false;
  let wakeFollow: (() => void) | undefined;
  const relist = () => {
    relisting = true;
    for (const watch of watches.splice(0)) watch.stop();
    wakeFollow?.();
  };

  /** Lists nodes and heartbeats, then follows both; on any failure waits (backing off) and starts over. */
  const follow = async () => {
    let backoff = 500;
    while (!stopped) {
      try {
        const [nodes, beats] = await Promise.all([store.list(NODES_PREFIX), store.list(HEARTBEATS_PREFIX)]);
        const now = Date.now();
        peers.clear();
        for (const entry of nodes.entries) {
          const record = readNode(entry.value, log);
          // A node its agent has not claimed yet (pod CIDRs allocated, addresses not yet
          // published) is no peer yet: it comes in with the claim.
          if (record && record.name !== self.name && record.network) peers.set(record.name, { record, endpoint: endpointOf(record), lastBeat: now });
        }
        if (!nodes.entries.some((entry) => entry.key === `${NODES_PREFIX}${self.name}`)) throw new SelfRemoved();
        for (const entry of beats.entries) {
          const peer = peers.get(entry.key.slice(HEARTBEATS_PREFIX.length));
          if (peer) peer.heartbeat = entry.value;
        }
        if (!storeUp) log("info", "store reachable again", { store: store.spec });
        storeUp = true;
        listed = true;
        backoff = 500;
        requestSync(true);
        relisting = false;
        await Promise.all([followNodes(nodes.revision + 1), followHeartbeats(beats.revision + 1)]);
      } catch (error) {
        if (stopped) return;
        if (error instanceof SelfRemoved) {
          log("error", "this node was removed from the store; the agent stops serving it", { node: self.name });
          stop();
          finish(new Error(`node ${self.name} was removed from the store ${store.spec}`));
          return;
        }
        for (const watch of watches.splice(0)) watch.stop();
        if (relisting) {
          log("info", "following the store anew", { store: store.spec });
          continue;
        }
        if (storeUp) log("warn", "store unreachable; keeping the routes as they are and retrying", { store: store.spec, error: String(error) });
        storeUp = false;
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, backoff);
          wakeFollow = () => {
            clearTimeout(timer);
            resolve();
          };
        });
        wakeFollow = undefined;
        backoff = Math.min(backoff * 2, 30_000);
      }
    }
  };

  const followNodes = async (from: number) => {
    const watch = store.watch(NODES_PREFIX, from);
    watches.push(watch);
    for await (const event of watch) {
      const name = event.key.slice(NODES_PREFIX.length);
      if (name === self.name) {
        if (event.type === "delete") throw new SelfRemoved();
        continue;
      }
      if (event.type === "delete") {
        peers.delete(name);
        log("info", "peer removed", { peer: name });
      } else {
        const record = readNode(event.value, log);
        if (!record) continue;
        if (!record.network) {
          if (peers.delete(name)) requestSync(false, name);
          continue;
        }
        const known = peers.get(name);
        peers.set(name, { record, endpoint: endpointOf(record), lastBeat: known?.lastBeat ?? Date.now(), heartbeat: known?.heartbeat });
      }
      requestSync(false, name);
    }
    throw new Error("the node watch ended");
  };

  const followHeartbeats = async (from: number) => {
    const watch = store.watch(HEARTBEATS_PREFIX, from);
    watches.push(watch);
    for await (const event of watch) {
      const peer = peers.get(event.key.slice(HEARTBEATS_PREFIX.length));
      if (!peer || event.type === "delete" || event.value === peer.heartbeat) continue;
      const revived = Date.now() - peer.lastBeat > options.peerGraceSeconds * 1000;
      peer.heartbeat = event.value;
      peer.lastBeat = Date.now();
      if (revived) requestSync(false, event.key.slice(HEARTBEATS_PREFIX.length));
    }
    throw new Error("the heartbeat watch ended");
  };

  const stop = () => {
    if (stopped) return;
    stopped = true;
    for (const timer of timers) clearInterval(timer);
    for (const watch of watches.splice(0)) watch.stop();
    wakeFollow?.();
  };

  timers.push(setInterval(() => {
    wantFullMasquerade = true;
    requestSync(true);
    proxy?.resync();
  }, options.resyncSeconds * 1000));
  timers.push(setInterval(() => void beat(), options.heartbeatSeconds * 1000));
  // The first sync waits for the first list of peers: syncing with none would withdraw every route.
  void follow();
  void done.catch(() => undefined);
  const stopAndClose = () => {
    stop();
    keepIpWarm(false);
    void (syncing ?? Promise.resolve())
      .then(() => proxy?.stop())
      .then(() => new Promise<void>((resolve) => (http ? http.close(() => resolve()) : resolve())))
      .then(() => cniServer.close())
      // A DEL answers once its veth is unlisted; the kernel may still be freeing it, and the
      // ip that asked is let finish rather than orphaned.
      .then(() => linkDeletionsSettled(2_000))
      .then(() => stopSpawnHelper())
      .then(() => podNets.closeAll())
      .then(() => store.close())
      .then(() => finish(), (error: unknown) => finish(error));
  };
  return { done, stop: stopAndClose, lastSyncMs: () => lastSyncMs };
}

/** The spawn helper's file name, beside the trellis executable. */
const SPAWN_HELPER = "trellis-spawn";
/** The Service proxy's netlink writer, beside the trellis executable. */
const NFT_WRITER = "trellis-nft-batch";

class SelfRemoved extends Error {}

/** What the last sync applied, as if read back from the kernel. */
function asObserved(network: NodeNetwork): ObservedNodeNetwork {
  return { vxlan: network.vxlan.map((device) => ({ ...device, up: true })), routes: network.routes, neighbors: network.neighbors, fdb: network.fdb };
}

/** A node record from the store, or undefined (and a warning) when it is not one. */
function readNode(value: string, log: Logger): NodeRecord | undefined {
  try {
    const record = parseNode(value);
    if (typeof record?.name === "string") return record;
  } catch {
    // reported below
  }
  log("warn", "a node record in the store is not valid JSON of a node; it is ignored", { value: value.slice(0, 200) });
  return undefined;
}

/** What a peer record says about routing to its pods. */
/**
 * What a node record says about routing to its pods. Records come from other processes and
 * hosts: anything that does not parse (a pod CIDR, an address, a MAC) is left out, so one bad
 * record can cost its own routes but never break the sync for every peer.
 */
function endpointOf(record: NodeRecord): NodeEndpoint {
  const list = <T>(value: unknown): T[] => (Array.isArray(value) ? (value as T[]) : []);
  return {
    name: String(record.name),
    addresses: list<string>(record.network?.addresses).map((text) => tryParseIp(String(text))).filter((ip) => ip !== undefined),
    podCidrs: list<string>(record.podCidrs).flatMap((text) => {
      const parsed = tryParseInterfaceAddress(String(text));
      return parsed && parsed.address.value === parsed.prefix.network ? [parsed.prefix] : [];
    }),
    vteps: list<{ family: unknown; mac: unknown }>(record.network?.vteps).flatMap((vtep) =>
      (vtep.family === 4 || vtep.family === 6) && typeof vtep.mac === "string" && UNICAST_MAC.test(vtep.mac) ? [{ family: vtep.family as Family, mac: vtep.mac.toLowerCase() }] : [],
    ),
  };
}

const UNICAST_MAC = /^[0-9a-fA-F][02468aceACE](:[0-9a-fA-F]{2}){5}$/;

/**
 * Whether another agent's claim on the node is still served: on this machine and boot, whether
 * its process runs; elsewhere, whether its heartbeat is younger than the grace period.
 */
function claimLive(claim: AgentClaim, heartbeat: Heartbeat | undefined, options: AgentOptions): boolean {
  if (claim.bootId === bootId()) return processRunning(claim);
  return heartbeat !== undefined && heartbeat.agent === claim.id && Date.now() - heartbeat.at < options.peerGraceSeconds * 1000;
}
