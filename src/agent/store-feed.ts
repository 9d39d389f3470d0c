/**
 * The agent on the Trellis store (SQLite or etcd): it claims its node (one live agent per node),
 * publishes what peers need to route to its pods, beats a heartbeat, and follows every node and
 * heartbeat. Node records are untrusted (anyone who can write the store can write one): each is
 * a claim the PeerBook admits or refuses against the plan and the other nodes, the older record
 * keeping what two claim. A peer whose heartbeat has not changed for the grace period loses its
 * routes; while the store itself is unreachable no peer is judged by its heartbeat.
 */
import { claimNode, writeHeartbeat, type Heartbeat } from "../cluster/node-agents.js";
import { HEARTBEATS_PREFIX, NODES_PREFIX, parseNode, type AgentClaim, type NodeRecord } from "../cluster/node-cidrs.js";
import { zoneName } from "../cluster/objects/syntax.js";
import { openCluster, type Cluster } from "../cluster/state.js";
import { vtepMac, vxlanFamilies, type NodeEndpoint, type Underlay } from "../dataplane/node-network.js";
import type { PeerClaim } from "../dataplane/peer-admission.js";
import { bootId, processRunning } from "../linux/process.js";
import { formatIp, tryParseInterfaceAddress, tryParseIp, type Family, type IpAddress } from "../net/ip.js";
import { loadPlan } from "../plan/plan.js";
import { reflect, type Informer } from "../kube/informer.js";
import type { KvStore } from "../store/kv.js";
import { storePolicySource } from "./policy-source.js";
import { openStore, parseStoreSpec, requireExistingStore } from "../store/open.js";
import type { ClusterFeed, FeedEvents } from "./feed.js";
import { agentClaim } from "./host.js";
import type { Logger } from "./log.js";
import type { AgentOptions } from "./options.js";
import { PeerBook } from "./peer-book.js";
import { storeProxySource } from "./proxy-source.js";
import { STORE_MAX_RETRY_MS, storeCollection } from "./store-collection.js";
import type { Rejections } from "./rejections.js";

/** How a published peer's heartbeat is judged. */
interface Liveness {
  /** Local time its heartbeat last changed (or the store came back): peers are judged by change, not by clock. */
  lastBeat: number;
  heartbeat?: string;
}

/** Claims the node in the store; rejects, having written nothing, on bad input or a live claim. */
export async function openStoreFeed(options: AgentOptions, log: Logger, nodeIps: readonly IpAddress[], underlay: Underlay, rejections: Rejections): Promise<ClusterFeed> {
  const plan = options.plan === undefined ? undefined : await loadPlan(options.plan);
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
        ...(options.zone === undefined ? {} : { zone: options.zone }),
      },
      (other, heartbeat) => claimLive(other, heartbeat, options),
    );
  } catch (error) {
    await store.close();
    throw error;
  }
  return storeFeed(options, log, store, cluster, claim, self, underlay, rejections);
}

function storeFeed(options: AgentOptions, log: Logger, store: KvStore, cluster: Cluster, claim: AgentClaim, self: NodeRecord, underlay: Underlay, rejections: Rejections): ClusterFeed {
  const selfEndpoint = endpointOf(self);
  const book = new PeerBook(
    {
      self: selfEndpoint,
      clusterPodCidrs: cluster.plan.podCidrs,
      serviceCidrs: cluster.plan.serviceCidrs,
      nodeCidrs: cluster.plan.nodeCidrs,
      connected: underlay.addresses.map((entry) => entry.prefix),
    },
    rejections,
    storeAddresses(store.spec),
  );
  /** Per published peer (admitted or not), its heartbeat. */
  const peers = new Map<string, Liveness>();
  /** Every node's zone, as its record says (a label value, else none); this one's from the options. */
  const zones = new Map<string, string>();
  if (options.zone !== undefined) zones.set(self.name, options.zone);
  /** Notes a record's zone; whether it changed. */
  const noteZone = (name: string, record: NodeRecord | undefined) => {
    if (name === self.name) return false;
    // A record is another agent's word: a zone that is no label value is none.
    const zone = zoneName(record?.network?.zone);
    if (zones.get(name) === zone) return false;
    if (zone === undefined) zones.delete(name);
    else zones.set(name, zone);
    return true;
  };
  let informers: Informer[] = [];
  let events: FeedEvents | undefined;
  let stopped = false;
  let storeUp = true;
  let listed = false;
  let selfSeen = false;
  let beatTimer: NodeJS.Timeout | undefined;

  const isLive = (peer: Liveness | undefined, now: number) => peer !== undefined && (!storeUp || now - peer.lastBeat <= options.peerGraceSeconds * 1000);
  /**
   * The claims are settled against each other once per turn of the event loop, not per record:
   * a list hands over every record in one turn, and then they are weighed together.
   */
  let settling = false;
  let zonesMoved = false;
  const settle = () => {
    settling = false;
    if (zonesMoved) {
      zonesMoved = false;
      events?.zonesChanged();
    }
    for (const changed of book.settle()) events?.changed(changed);
  };
  /** A node record came or changed (undefined: went): its claim is put to the book, to be settled against the others. */
  const putRecord = (name: string, record: NodeRecord | undefined, createRevision: number) => {
    if (noteZone(name, record)) zonesMoved = true;
    if (record?.network) {
      if (!peers.has(name)) peers.set(name, { lastBeat: Date.now() });
    } else {
      peers.delete(name);
    }
    if (!book.put(name, record && claimOf(name, record, book.since(name) ?? createRevision)) && !zonesMoved) return;
    if (settling) return;
    settling = true;
    queueMicrotask(() => {
      if (settling) settle();
    });
  };

  const lose = () => {
    if (stopped) return;
    stopped = true;
    for (const informer of informers) informer.stop();
    log("error", "this node was removed from the store; the agent stops serving it", { node: self.name });
    events?.lost(new Error(`node ${self.name} was removed from the store ${store.spec}`));
  };
  const failed = (error: Error) => {
    if (storeUp) log("warn", "store unreachable; keeping the routes as they are and retrying", { store: store.spec, error: String(error) });
    storeUp = false;
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
        // A watch stream may sit in its client's reconnect backoff for long after the store is
        // back (etcd's client waits up to 30 s): list and watch anew now.
        for (const informer of informers) informer.relist();
        events?.reconnected();
      }
    } catch (error) {
      if (!beatFailing) log("warn", "heartbeat not written; the store is unreachable; keeping every peer's routes meanwhile", { store: store.spec, error: String(error) });
      beatFailing = true;
      storeUp = false;
    }
  };

  /** Follows nodes and heartbeats, each with the reflector: listed, watched, listed again after any failure. */
  const follow = () => {
    const nodes = reflect(
      storeCollection(store, NODES_PREFIX),
      {
        change(key, entry) {
          const name = key.slice(NODES_PREFIX.length);
          if (name === self.name) {
            selfSeen = entry !== undefined;
            if (!selfSeen && listed) lose();
            return;
          }
          if (!entry) log("info", "peer removed", { peer: name });
          // A node its agent has not claimed yet (pod CIDRs allocated, addresses not yet
          // published) is no peer yet: it comes in with the claim. Its pod CIDRs count as taken.
          putRecord(name, entry && readNode(entry.value, log), entry?.createRevision ?? 0);
        },
        synced() {
          if (!selfSeen) return lose();
          if (settling) settle();
          if (!storeUp && !beatFailing) log("info", "store reachable again", { store: store.spec });
          if (!beatFailing) storeUp = true;
          listed = true;
          events?.changed();
        },
        failed,
      },
      { maxRetryMs: STORE_MAX_RETRY_MS },
    );
    const heartbeats = reflect(
      storeCollection(store, HEARTBEATS_PREFIX),
      {
        change(key, entry) {
          const name = key.slice(HEARTBEATS_PREFIX.length);
          const peer = peers.get(name);
          if (!peer || !entry || entry.value === peer.heartbeat) return;
          const revived = Date.now() - peer.lastBeat > options.peerGraceSeconds * 1000;
          peer.heartbeat = entry.value;
          peer.lastBeat = Date.now();
          if (revived) events?.changed(name);
        },
        failed,
      },
      { maxRetryMs: STORE_MAX_RETRY_MS },
    );
    informers = [nodes, heartbeats];
  };

  return {
    description: store.spec,
    self: selfEndpoint,
    zone: () => options.zone,
    nodeZones: () => zones,
    clusterPodCidrs: cluster.plan.podCidrs,
    serviceCidrs: () => cluster.plan.serviceCidrs,
    reservedAddresses: () => book.reservedAddresses(),
    listed: () => listed,
    livePeers() {
      const now = Date.now();
      return book.all().filter((endpoint) => isLive(peers.get(endpoint.name), now));
    },
    livePeer(name) {
      return isLive(peers.get(name), Date.now()) ? book.get(name) : undefined;
    },
    follow(handlers) {
      events = handlers;
      beatTimer = setInterval(() => void beat(), options.heartbeatSeconds * 1000);
      // The first sync waits for the first list of peers: syncing with none would withdraw every route.
      follow();
    },
    routesProgrammed: () => undefined,
    services: storeProxySource(store),
    policies: storePolicySource(store),
    async close() {
      stopped = true;
      clearInterval(beatTimer);
      for (const informer of informers) informer.stop();
      await store.close();
    },
  };
}

/** An etcd store's address, when it is given as one (SQLite has none). */
function storeAddresses(spec: string): Map<string, string> {
  const parsed = parseStoreSpec(spec);
  const ip = parsed.kind === "etcd" ? tryParseIp(parsed.endpoint.host) : undefined;
  return new Map(ip ? [[formatIp(ip), `the etcd store's address (${spec})`]] : []);
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

/**
 * What the record under /nodes/NAME claims, as written: the PeerBook checks every value. The name
 * is the key's (the record's own `name` field is not trusted); `since` is the store revision that
 * created the record, so an older node keeps what a newer one also claims.
 */
function claimOf(name: string, record: NodeRecord, since: number): PeerClaim {
  const list = (value: unknown): unknown[] => (Array.isArray(value) ? value : []);
  return {
    name,
    since,
    published: typeof record.network === "object" && record.network !== null,
    podCidrs: list(record.podCidrs) as string[],
    addresses: list(record.network?.addresses) as string[],
    vteps: list(record.network?.vteps).flatMap((vtep) => {
      const entry = vtep as { family?: unknown; mac?: unknown } | null;
      return entry && (entry.family === 4 || entry.family === 6) ? [{ family: entry.family as Family, mac: String(entry.mac) }] : [];
    }),
  };
}

/** This node's own record, as it claimed it. */
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
