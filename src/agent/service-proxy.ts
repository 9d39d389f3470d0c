/**
 * The agent's Service proxy: follows Services and their endpoints (proxy-source.ts: the Trellis
 * store's Services, EndpointSlices and Pods, or the Kubernetes API's Services and
 * EndpointSlices), works out each Service port's endpoints, and keeps the node's
 * nftables proxy tables in step: the first sync and every repair write them whole, every other
 * sync writes only what changed. Syncs are at least `minSyncIntervalMs` apart; changes made
 * meanwhile go in the next one together.
 */
import { formatPrefix, type IpPrefix } from "../net/ip.js";
import {
  proxyFullOpsByTable, proxyRulesetCounts, ProxyState, renderProxyFull, renderProxyOps,
  type ProxyNode, type ProxyOp,
} from "../dataplane/service-proxy.js";
import { staleUdpFlows, type StaleFlow } from "../dataplane/service-conntrack.js";
import { deleteConntrack } from "../linux/conntrack.js";
import { NftBatchWriter, NftWriteError } from "../linux/nft-netlink.js";
import { CommandError } from "../linux/exec.js";
import { nftApply, nftListTables } from "../linux/nftables.js";
import { localEndpointCounts, startHealthCheckServers } from "./health-checks.js";
import type { ExternalAddressPolicy } from "../dataplane/external-addresses.js";
import type { Logger } from "./log.js";
import { Histogram, PROGRAMMING_BUCKETS, renderGauge, SYNC_BUCKETS } from "./metrics.js";
import type { ProxyFollow, ProxySource } from "./proxy-source.js";
import type { Rejections } from "./rejections.js";
import { ServiceIndex } from "./service-index.js";

export interface ServiceProxyOptions {
  readonly source: ProxySource;
  readonly node: ProxyNode;
  readonly minSyncIntervalMs: number;
  readonly log: Logger;
  /**
   * The `trellis-nft-batch` program: when it is there, rules are written as netlink batches
   * through it (nft reads the whole ruleset back before each change it makes, 0.6 s at 10,000
   * Services); otherwise, and for anything it does not encode, with `nft -f`.
   */
  readonly nftWriter?: string;
  /** When a running sync counts as stuck; `SYNC_STUCK_AFTER_SECONDS` unless given (tests). */
  readonly syncStuckAfterSeconds?: number;
  /** Where what the proxy refuses of a Service (an external address, a port) is said. */
  readonly rejections: Rejections;
  /** Every node's zone, by name (trafficDistribution, when endpoints are worked out from Pods). */
  readonly nodeZones?: ReadonlyMap<string, string>;
}

export interface ServiceProxy {
  /** A full rewrite at the next sync if the tables are not what was last written (deleted by hand). */
  resync(): void;
  /** Where Services' external addresses may be and what they may not be; the Services this changes are synced again. */
  setExternalPolicy(policy: ExternalAddressPolicy): void;
  /** The nodes' zones changed; the Services they matter to are synced again. */
  setNodeZones(zones: ReadonlyMap<string, string>): void;
  /** The cluster's Service CIDRs changed (ServiceCIDR objects): the rules follow at the next sync. */
  setServiceCidrs(cidrs: readonly IpPrefix[]): void;
  /** Lists and watches anew (after the datastore was away). */
  relist(): void;
  stop(): Promise<void>;
  /** Figures of the last sync, for logs and metrics. */
  stats(): ProxyStats;
  /** Whether the rules have been written once since start. */
  synced(): boolean;
  /** How long the sync running now has run, in seconds; 0 when none runs. */
  syncRunningSeconds(): number;
  /** undefined while healthy, else why not: a sync has run for longer than any should. */
  unhealthy(): string | undefined;
  /** Its metrics in Prometheus' text format. */
  metrics(): string;
}

export interface ProxyStats {
  readonly syncs: number;
  readonly lastSyncMs: number;
  readonly servicePorts: number;
  /** When the last sync ended (epoch ms); 0 before the first. */
  readonly lastSyncAt: number;
}

/** A full write's tables go together into transactions of at least this many steps (a shard table of 10,000 Services holds about 800). */
const FULL_WRITE_STEPS = 1_000;

/** Lists of steps merged in order until each holds at least `steps` (the last may hold fewer). */
function* coalesced(groups: Iterable<ProxyOp[]>, steps: number): Generator<ProxyOp[]> {
  let current: ProxyOp[] = [];
  for (const group of groups) {
    for (const op of group) current.push(op);
    if (current.length >= steps) {
      yield current;
      current = [];
    }
  }
  if (current.length) yield current;
}

/** After a failed sync, the next is tried this much later, doubling up to the maximum. */
const FIRST_RETRY_DELAY_MS = 1_000;
const MAX_RETRY_DELAY_MS = 60_000;

/**
 * A sync that has run this long is stuck, and the agent's /healthz says so. A full sync at
 * 10,000 Services takes 3–5 s here, and what an honest sync waits on has its own deadline
 * (listing the tables 10 s, an nft transaction 30 s): only a sync waiting on something without
 * one gets past 60 s (as syncs waiting for health check clients to leave once did).
 */
export const SYNC_STUCK_AFTER_SECONDS = 60;

export function startServiceProxy(options: ServiceProxyOptions): ServiceProxy {
  const { source, log } = options;
  /** The node as the rules see it; its Service CIDRs follow the datastore's (setServiceCidrs). */
  let node = options.node;
  /** Whether `node` changed since the state was worked out: the next sync moves the state to it. */
  let nodeChanged = false;
  const index = new ServiceIndex(source.endpoints, (service, refused) => options.rejections.report(`Service ${service}`, refused));
  if (options.nodeZones) index.setZones(options.nodeZones);
  let stopped = false;
  let listed = false;
  /** The ruleset the store asks for, kept up to date port by port. */
  let state: ProxyState | undefined;
  /** Whether the kernel holds `state`'s ruleset: when not, the next sync writes the tables whole. */
  let written = false;
  /** UDP flows the rules no longer lead to, deleted once the rules are written. */
  let staleFlows: StaleFlow[] = [];
  /** Whether a health check port may have changed. */
  let healthChanged = true;
  let checkTables = false;
  /** Cancels the next sync, when one is scheduled. */
  let scheduled: (() => void) | undefined;
  let running: Promise<void> | undefined;
  /** When the running sync started (performance.now()). */
  let runningSince: number | undefined;
  let pending = false;
  let lastSyncAt = 0;
  let stats: ProxyStats = { syncs: 0, lastSyncMs: 0, servicePorts: 0, lastSyncAt: 0 };
  /** When the changes not yet in the kernel were written to the store (ms since the epoch). */
  let changeTimes: number[] = [];
  const syncDuration = new Histogram("trellis_sync_proxy_rules_duration_seconds", "How long one sync of the Service rules took (compute, render, nft, conntrack).", SYNC_BUCKETS);
  const programming = new Histogram("trellis_network_programming_duration_seconds", "From a Service, EndpointSlice or Pod change written to the store to the rules for it in the kernel.", PROGRAMMING_BUCKETS);
  let failedSyncs = 0;
  let retryTimer: NodeJS.Timeout | undefined;
  let retryDelayMs = FIRST_RETRY_DELAY_MS;
  /** Syncs that wrote rules, by how. */
  const writes = { netlink: 0, nft: 0 };

  /** The first sync waits for the agent's word on external addresses (which needs the peers' addresses). */
  let policyGiven = false;
  const requestSync = () => {
    if (stopped || !listed || !policyGiven) return;
    pending = true;
    if (running || scheduled) return;
    const wait = Math.max(0, lastSyncAt + options.minSyncIntervalMs - Date.now());
    const start = () => {
      scheduled = undefined;
      runningSince = performance.now();
      running = sync().finally(() => {
        running = undefined;
        runningSince = undefined;
        if (pending) requestSync();
      });
    };
    // A sync due now starts on the next turn of the event loop: setTimeout(start, 0) would wait
    // a whole millisecond (Node's shortest timeout), a tenth of a change at 10,000 Services.
    if (wait > 0) {
      const timer = setTimeout(start, wait);
      scheduled = () => clearTimeout(timer);
    } else {
      const immediate = setImmediate(start);
      scheduled = () => clearImmediate(immediate);
    }
  };

  const sync = async () => {
    pending = false;
    lastSyncAt = Date.now();
    const started = performance.now();
    const pendingChanges = changeTimes;
    changeTimes = [];
    try {
      if (written && checkTables) {
        const tables = new Set(writer ? await writer.listTables() : await nftListTables());
        const missing = [...state!.ruleset().tables.keys()].filter((ref) => !tables.has(ref));
        if (missing.length) {
          log("warn", "service proxy tables missing; writing them whole", { tables: missing });
          written = false;
        }
      }
      checkTables = false;
      // A resync with nothing changed in the store and the tables in place costs one nft list.
      if (written && !index.changed && !nodeChanged) return;
      let ops: ProxyOp[] = [];
      if (state && nodeChanged) {
        const moved = state.withNode(node);
        state = moved.state;
        ops = moved.ops;
      }
      nodeChanged = false;
      if (!state) {
        // Worked out in slices: a full sync at 10,000 Services must not stop CNI requests and /healthz.
        state = await ProxyState.build(node, index.all());
        healthChanged = true;
      } else {
        const { removed, added } = index.changes();
        const change = [...ops, ...state.update(removed, added)];
        // Once the rules no longer lead there, the UDP flows that still do are deleted.
        for (const flow of staleUdpFlows(removed, added, node.name)) staleFlows.push(flow);
        if ([...removed, ...added].some((port) => port.healthCheckNodePort !== undefined)) healthChanged = true;
        ops = written ? change : [];
      }
      const full = !written;
      const computed = performance.now();
      // A full write's steps are made table by table as they are written (writeFull).
      const how = full ? await writeFull(state) : ops.length ? await writeRules(ops) : undefined;
      const wrote = performance.now();
      if (how) writes[how]++;
      written = true;
      if (staleFlows.length) {
        const flows = staleFlows;
        staleFlows = [];
        await clearFlows(flows);
      }
      if (healthChanged) {
        healthChanged = false;
        await healthChecks.update(localEndpointCounts(index.all(), node.name));
      }
      stats = { syncs: stats.syncs + 1, lastSyncMs: performance.now() - started, servicePorts: index.size, lastSyncAt: Date.now() };
      syncDuration.observe(stats.lastSyncMs / 1000);
      const now = Date.now();
      for (const time of pendingChanges) programming.observe((now - time) / 1000);
      const ms = (value: number) => Math.round(value * 10) / 10;
      if (how) {
        log(full ? "info" : "debug", "service rules synced", {
          full, servicePorts: index.size, ...(full ? {} : { steps: ops.length }), via: how, durationMs: ms(stats.lastSyncMs), computeMs: ms(computed - started), writeMs: ms(wrote - computed),
        });
      }
      else log("debug", "service rules already right", { servicePorts: index.size, durationMs: ms(stats.lastSyncMs), changes: pendingChanges.length });
    } catch (error) {
      // Written whole at the next sync, which a resync or the next change brings; a ruleset
      // that could not be worked out is worked out again from every port.
      if (!(error instanceof CommandError || error instanceof NftWriteError)) state = undefined;
      written = false;
      failedSyncs++;
      changeTimes.push(...pendingChanges);
      // Tried again soon (a writer that died is started again at once), then less and less
      // often: a kernel that keeps refusing must not be asked for a whole rewrite every moment.
      log("error", "service proxy sync failed; the tables are written whole at the next sync", { error: String(error), retryInSeconds: retryDelayMs / 1000 });
      clearTimeout(retryTimer);
      retryTimer = setTimeout(() => {
        retryTimer = undefined;
        requestSync();
      }, retryDelayMs);
      retryDelayMs = Math.min(retryDelayMs * 2, MAX_RETRY_DELAY_MS);
      return;
    }
    retryDelayMs = FIRST_RETRY_DELAY_MS;
  };

  const batchWriter = options.nftWriter === undefined ? undefined : new NftBatchWriter(options.nftWriter);
  const writer = batchWriter?.available() ? batchWriter : undefined;
  if (writer) log("info", "service rules are written through the netlink writer", { path: writer.path });
  /** One transaction, through the netlink writer when it is there (it encodes every step the model has), else through nft. */
  /** One change, in one transaction: through the netlink writer when it is there, else through nft. */
  const writeRules = async (ops: readonly ProxyOp[]): Promise<"netlink" | "nft"> => {
    if (writer) {
      await writer.applyOps(ops);
      return "netlink";
    }
    await nftApply(renderProxyOps(ops));
    return "nft";
  };
  /**
   * Every table whole. Through the netlink writer, table by table, each in its own transaction:
   * one transaction holds the namespace's nftables lock for all of its kernel time (0.37 s at
   * 10,000 Services), and every other writer waits, a pod's masquerade or hostPort table among
   * them. A Service lives in one shard table, so each table written is whole and right on its
   * own. Tables go together until a transaction holds FULL_WRITE_STEPS steps, as each costs its
   * own commit. Measured at 10,000 Services: 33 transactions, 0.30 s in all, 24 ms at most each
   * (one per table: 0.26 s, 17 ms); at 200 Services 3 transactions, 18 ms (one per table: 130,
   * 33 ms). Through nft, one transaction.
   */
  const writeFull = async (desired: ProxyState): Promise<"netlink" | "nft"> => {
    if (writer) {
      await writer.applyEach(coalesced(proxyFullOpsByTable(desired.ruleset()), FULL_WRITE_STEPS));
      return "netlink";
    }
    await nftApply(renderProxyFull(desired.ruleset()));
    return "nft";
  };
  const healthChecks = startHealthCheckServers({ log });
  const runningSeconds = () => (runningSince === undefined ? 0 : (performance.now() - runningSince) / 1000);
  const stuckAfterSeconds = options.syncStuckAfterSeconds ?? SYNC_STUCK_AFTER_SECONDS;
  const clearFlows = async (flows: readonly StaleFlow[]) => {
    let deleted = 0;
    const failures: string[] = [];
    for (let i = 0; i < flows.length; i += 4) {
      await Promise.all(
        flows.slice(i, i + 4).map(async (flow) => {
          try {
            deleted += await deleteConntrack(flow);
          } catch (error) {
            failures.push(String(error));
          }
        }),
      );
    }
    log(failures.length ? "warn" : "debug", "stale UDP flows deleted", { filters: flows.length, deleted, ...(failures.length ? { failures } : {}) });
  };

  const changed = (changedAt: number | undefined) => {
    if (changedAt !== undefined) changeTimes.push(changedAt);
    requestSync();
  };
  const following: ProxyFollow = source.follow({
    service: (key, service, changedAt) => {
      index.putService(key, service);
      changed(changedAt);
    },
    slice: (key, slice, changedAt) => {
      index.putSlice(key, slice);
      changed(changedAt);
    },
    pod: (key, pod, changedAt) => {
      index.putPod(key, pod);
      changed(changedAt);
    },
    reset: () => index.clear(),
    listed: () => {
      listed = true;
      requestSync();
    },
    failed: (error, retryInMs) => log("warn", "service proxy lost its datastore; keeping the rules as they are and listing again", { error: error.message, retryInSeconds: retryInMs / 1000 }),
  });
  return {
    setServiceCidrs(cidrs) {
      const key = (list: readonly IpPrefix[] | undefined) => (list ?? []).map(formatPrefix).sort().join(",");
      if (key(cidrs) === key(node.serviceCidrs)) return;
      node = { ...node, serviceCidrs: [...cidrs] };
      nodeChanged = true;
      requestSync();
    },
    setNodeZones(zones) {
      index.setZones(zones);
      if (index.changed) requestSync();
    },
    setExternalPolicy(policy) {
      index.setExternalPolicy(policy);
      if (index.changed || !policyGiven) {
        policyGiven = true;
        requestSync();
      }
    },
    resync() {
      checkTables = true;
      requestSync();
    },
    relist: () => following.relist(),
    async stop() {
      stopped = true;
      scheduled?.();
      scheduled = undefined;
      clearTimeout(retryTimer);
      following.stop();
      await running;
      writer?.close();
      await healthChecks.update(new Map());
    },
    stats: () => stats,
    synced: () => stats.syncs > 0,
    syncRunningSeconds: runningSeconds,
    unhealthy: () => {
      const seconds = runningSeconds();
      return seconds > stuckAfterSeconds ? `the Service proxy's sync has run for ${Math.round(seconds)} s (more than ${stuckAfterSeconds} s: it is stuck)` : undefined;
    },
    metrics: () =>
      [
        syncDuration.render(),
        programming.render(),
        renderGauge("trellis_sync_proxy_rules_last_timestamp_seconds", "When the Service rules were last synced.", [{ value: lastSyncAt / 1000 }]),
        renderGauge("trellis_sync_proxy_rules_failures_total", "Syncs of the Service rules that failed.", [{ value: failedSyncs }], "counter"),
        renderGauge("trellis_proxy_rule_writes_total", "Syncs that wrote rules, by writer: netlink (trellis-nft-batch) or nft.", (["netlink", "nft"] as const).map((writer) => ({ labels: { writer }, value: writes[writer] })), "counter"),
        renderGauge("trellis_proxy_service_ports", "Service ports the rules implement.", [{ value: stats.servicePorts }]),
        renderGauge("trellis_proxy_sync_running", "1 while a sync of the Service rules runs.", [{ value: running ? 1 : 0 }]),
        renderGauge("trellis_proxy_sync_running_seconds", `How long the sync of the Service rules running now has run; 0 when none runs. Past ${stuckAfterSeconds} s, /healthz fails.`, [{ value: runningSeconds() }]),
        renderGauge("trellis_proxy_sync_pending", "1 while a change waits for the next sync.", [{ value: pending || scheduled ? 1 : 0 }]),
        renderGauge("trellis_proxy_changes_waiting", "Store changes not yet in a finished sync.", [{ value: changeTimes.length }]),
        healthChecks.metrics(),
        ...(() => {
          // Counted when asked for: a walk of every chain, too slow to do at each sync of a large cluster.
          const counts = state && written ? proxyRulesetCounts(state.ruleset()) : [];
          return (["chains", "rules", "elements"] as const).map((what) =>
            renderGauge(`trellis_proxy_nftables_${what}`, `nftables ${what} in the proxy's tables.`, counts.map((count) => ({ labels: { family: count.family === 4 ? "IPv4" : "IPv6" }, value: count[what] }))),
          );
        })(),
      ].join(""),
  };
}
