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
  type ProxyNode, type ProxyOp, type ProxyServicePort,
} from "../dataplane/service-proxy.js";
import { staleUdpFlows, type StaleFlow } from "../dataplane/service-conntrack.js";
import { deleteConntrack } from "../linux/conntrack.js";
import { NftBatchWriter, NftWriteError } from "../linux/nft-netlink.js";
import { CommandError } from "../linux/exec.js";
import { nftApply, nftListTables } from "../linux/nftables.js";
import { localEndpointCounts, startHealthCheckServers, type HealthCheckServers } from "./health-checks.js";
import type { ExternalAddressPolicy } from "../dataplane/external-addresses.js";
import type { Logger } from "./log.js";
import { Histogram, PROGRAMMING_BUCKETS, renderGauge, SYNC_BUCKETS } from "./metrics.js";
import type { ProxyFollow, ProxySource } from "./proxy-source.js";
import type { Rejections } from "./rejections.js";
import { SyncRunner } from "./runner.js";
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
  /** What a full write waits on between its slices (agent/foreground.ts); a turn of the event loop unless given. */
  readonly pause?: () => Promise<void>;
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
  /** This node's zone changed (its Node's label): the rules follow at the next sync. */
  setZone(zone: string | undefined): void;
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
  /** Every Service port as the rules were last worked out, and a number that changes with each sync (the flow records' index). */
  servicePorts(): { readonly version: number; readonly ports: Iterable<ProxyServicePort> };
}

export interface ProxyStats {
  readonly syncs: number;
  readonly lastSyncMs: number;
  readonly servicePorts: number;
  /** When the last sync ended (epoch ms); 0 before the first. */
  readonly lastSyncAt: number;
}

/** A full write's tables go together into transactions of at least this many steps (a shard table of 10,000 Services holds about 800). */
export const FULL_WRITE_STEPS = 1_000;

/** Lists of steps merged in order until each holds at least `steps` (the last may hold fewer). */
export function* coalesced(groups: Iterable<ProxyOp[]>, steps: number): Generator<ProxyOp[]> {
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
 * 10,000 Services takes 1–2 s here, and what an honest sync waits on has its own deadline
 * (listing the tables 10 s, an nft transaction 30 s): only a sync waiting on something without
 * one gets past 60 s (as syncs waiting for health check clients to leave once did).
 */
export const SYNC_STUCK_AFTER_SECONDS = 60;

/**
 * Where the proxy's rules go: the kernel through the netlink writer or nft, or (in tests) a
 * recorder of the batches. A full write may take several transactions; a change takes one.
 */
export interface ProxyKernel {
  readonly via: "netlink" | "nft";
  /** One change, in one transaction. */
  write(ops: readonly ProxyOp[]): Promise<void>;
  /** Every table whole. */
  writeFull(state: ProxyState): Promise<void>;
  /** The namespace's tables, as `FAMILY NAME`. */
  tables(): Promise<string[]>;
  close(): void;
}

/** What the proxy runs besides its rules, given apart so that tests can watch them. */
export interface ProxyParts {
  readonly kernel: ProxyKernel;
  /** Deletes the conntrack entries of one stale flow; how many. */
  readonly deleteFlow: (flow: StaleFlow) => Promise<number>;
  readonly healthChecks: HealthCheckServers;
}

/** The proxy's writer yields the CPU to the CNI requests' commands (see NftWriterOptions). */
const PROXY_WRITER_NICENESS = 10;

/** The kernel through `trellis-nft-batch` at `path` when it is there, else through `nft -f`. */
export function kernelOf(path: string | undefined, log: Logger, pause?: () => Promise<void>): ProxyKernel {
  const batchWriter = path === undefined ? undefined : new NftBatchWriter(path, { pause, niceness: PROXY_WRITER_NICENESS });
  const writer = batchWriter?.available() ? batchWriter : undefined;
  if (!writer) {
    return {
      via: "nft",
      write: (ops) => nftApply(renderProxyOps(ops)),
      writeFull: (state) => nftApply(renderProxyFull(state.ruleset())),
      tables: () => nftListTables(),
      close: () => undefined,
    };
  }
  log("info", "service rules are written through the netlink writer", { path: writer.path });
  return {
    via: "netlink",
    write: (ops) => writer.applyOps(ops),
    /**
     * Table by table: one transaction holds the namespace's nftables lock for all of its kernel
     * time (0.37 s at 10,000 Services), and every other writer waits, a pod's masquerade or
     * hostPort table among them. A Service lives in one shard table, so each table written is
     * whole and right on its own. Tables go together until a transaction holds
     * FULL_WRITE_STEPS steps, as each costs its own commit. Measured at 10,000 Services: 33
     * transactions, 0.30 s in all, 24 ms at most each (one per table: 0.26 s, 17 ms); at 200
     * Services 3 transactions, 18 ms (one per table: 130, 33 ms).
     */
    writeFull: (state) => writer.applyEach(coalesced(proxyFullOpsByTable(state.ruleset()), FULL_WRITE_STEPS)),
    tables: () => writer.listTables(),
    close: () => writer.close(),
  };
}

export function startServiceProxy(options: ServiceProxyOptions, parts?: ProxyParts): ServiceProxy {
  return new ServiceProxyLoop(options, parts ?? {
    kernel: kernelOf(options.nftWriter, options.log, options.pause),
    deleteFlow: deleteConntrack,
    healthChecks: startHealthCheckServers({ log: options.log }),
  });
}

/**
 * The proxy's loop, its state in fields (kube-proxy's Proxier shape): changes from the source
 * go into the index and ask for a sync; syncs run one at a time, at least `minSyncIntervalMs`
 * apart, each writing what changed (or everything, when the kernel's tables are not known to be
 * right), then deleting stale UDP flows and serving the health check ports; a failed one is
 * tried again after a delay that doubles.
 */
export class ServiceProxyLoop implements ServiceProxy {
  private readonly log: Logger;
  private readonly index: ServiceIndex;
  private readonly following: ProxyFollow;
  /** The node as the rules see it; its Service CIDRs follow the datastore's (setServiceCidrs). */
  private node: ProxyNode;
  /** Whether `node` changed since the state was worked out: the next sync moves the state to it. */
  private nodeChanged = false;
  private stopped = false;
  private listed = false;
  /** The first sync waits for the agent's word on external addresses (which needs the peers' addresses). */
  private policyGiven = false;
  /** The ruleset the datastore asks for, kept up to date port by port. */
  private state: ProxyState | undefined;
  /** Whether the kernel holds `state`'s ruleset: when not, the next sync writes the tables whole. */
  private written = false;
  /** UDP flows the rules no longer lead to, deleted once the rules are written. */
  private staleFlows: StaleFlow[] = [];
  /** Whether a health check port may have changed. */
  private healthChanged = true;
  private checkTables = false;
  /** Syncs, one at a time, at most one per minSyncIntervalMs, a failed one tried again later. */
  private readonly runs: SyncRunner;
  private lastSyncAt = 0;
  private lastStats: ProxyStats = { syncs: 0, lastSyncMs: 0, servicePorts: 0, lastSyncAt: 0 };
  /** When the changes not yet in the kernel were written to the datastore (ms since the epoch). */
  private changeTimes: number[] = [];
  private readonly syncDuration = new Histogram("trellis_sync_proxy_rules_duration_seconds", "How long one sync of the Service rules took (compute, render, nft, conntrack).", SYNC_BUCKETS);
  private readonly programming = new Histogram("trellis_network_programming_duration_seconds", "From a Service, EndpointSlice or Pod change written to the store to the rules for it in the kernel.", PROGRAMMING_BUCKETS);
  private failedSyncs = 0;
  /** Syncs that wrote rules, by how. */
  private readonly writes = { netlink: 0, nft: 0 };
  private readonly stuckAfterSeconds: number;
  /** What the state's working out waits on between slices. */
  private readonly pause?: () => Promise<void>;

  constructor(
    options: ServiceProxyOptions,
    private readonly parts: ProxyParts,
  ) {
    this.log = options.log;
    this.node = options.node;
    this.stuckAfterSeconds = options.syncStuckAfterSeconds ?? SYNC_STUCK_AFTER_SECONDS;
    this.pause = options.pause;
    this.index = new ServiceIndex(options.source.endpoints, (service, refused) => options.rejections.report(`Service ${service}`, refused));
    this.runs = new SyncRunner({
      minIntervalMs: options.minSyncIntervalMs,
      // Tried again soon (a writer that died is started again at once), then less and less
      // often: a kernel that keeps refusing must not be asked for a whole rewrite every moment.
      firstRetryMs: FIRST_RETRY_DELAY_MS,
      maxRetryMs: MAX_RETRY_DELAY_MS,
      run: () => this.sync(),
      failed: (error, retryInMs) => this.log("error", "service proxy sync failed; the tables are written whole at the next sync", { error: String(error), retryInSeconds: (retryInMs ?? 0) / 1000 }),
    });
    if (options.nodeZones) this.index.setZones(options.nodeZones);
    const changed = (changedAt: number | undefined) => {
      if (changedAt !== undefined) this.changeTimes.push(changedAt);
      this.requestSync();
    };
    this.following = options.source.follow({
      service: (key, service, changedAt) => {
        this.index.putService(key, service);
        changed(changedAt);
      },
      slice: (key, slice, changedAt) => {
        this.index.putSlice(key, slice);
        changed(changedAt);
      },
      pod: (key, pod, changedAt) => {
        this.index.putPod(key, pod);
        changed(changedAt);
      },
      listed: () => {
        this.listed = true;
        this.requestSync();
      },
      failed: (error, retryInMs) => this.log("warn", "service proxy lost its datastore; keeping the rules as they are and listing again", { error: error.message, retryInSeconds: retryInMs / 1000 }),
    });
  }

  setServiceCidrs(cidrs: readonly IpPrefix[]): void {
    const key = (list: readonly IpPrefix[] | undefined) => (list ?? []).map(formatPrefix).sort().join(",");
    if (key(cidrs) === key(this.node.serviceCidrs)) return;
    this.node = { ...this.node, serviceCidrs: [...cidrs] };
    this.nodeChanged = true;
    this.requestSync();
  }

  setZone(zone: string | undefined): void {
    if (zone === this.node.zone) return;
    this.node = { ...this.node, zone };
    this.nodeChanged = true;
    this.log("info", "this node's zone changed; Services follow its endpoints", { zone: zone ?? null });
    this.requestSync();
  }

  setNodeZones(zones: ReadonlyMap<string, string>): void {
    this.index.setZones(zones);
    if (this.index.changed) this.requestSync();
  }

  setExternalPolicy(policy: ExternalAddressPolicy): void {
    this.index.setExternalPolicy(policy);
    if (this.index.changed || !this.policyGiven) {
      this.policyGiven = true;
      this.requestSync();
    }
  }

  resync(): void {
    this.checkTables = true;
    this.requestSync();
  }

  relist(): void {
    this.following.relist();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.following.stop();
    await this.runs.stop();
    this.parts.kernel.close();
    await this.parts.healthChecks.update(new Map());
  }

  servicePorts(): { version: number; ports: Iterable<ProxyServicePort> } {
    return { version: this.lastStats.syncs, ports: this.index.workedOut() };
  }

  stats(): ProxyStats {
    return this.lastStats;
  }

  synced(): boolean {
    return this.lastStats.syncs > 0;
  }

  syncRunningSeconds(): number {
    return this.runs.runningSeconds();
  }

  unhealthy(): string | undefined {
    const seconds = this.syncRunningSeconds();
    return seconds > this.stuckAfterSeconds ? `the Service proxy's sync has run for ${Math.round(seconds)} s (more than ${this.stuckAfterSeconds} s: it is stuck)` : undefined;
  }

  metrics(): string {
    // Counted when asked for: a walk of every chain, too slow to do at each sync of a large cluster.
    const counts = this.state && this.written ? proxyRulesetCounts(this.state.ruleset()) : [];
    return [
      this.syncDuration.render(),
      this.programming.render(),
      renderGauge("trellis_sync_proxy_rules_last_timestamp_seconds", "When the Service rules were last synced.", [{ value: this.lastSyncAt / 1000 }]),
      renderGauge("trellis_sync_proxy_rules_failures_total", "Syncs of the Service rules that failed.", [{ value: this.failedSyncs }], "counter"),
      renderGauge("trellis_proxy_rule_writes_total", "Syncs that wrote rules, by writer: netlink (trellis-nft-batch) or nft.", (["netlink", "nft"] as const).map((writer) => ({ labels: { writer }, value: this.writes[writer] })), "counter"),
      renderGauge("trellis_proxy_service_ports", "Service ports the rules implement.", [{ value: this.lastStats.servicePorts }]),
      renderGauge("trellis_proxy_sync_running", "1 while a sync of the Service rules runs.", [{ value: this.runs.running ? 1 : 0 }]),
      renderGauge("trellis_proxy_sync_running_seconds", `How long the sync of the Service rules running now has run; 0 when none runs. Past ${this.stuckAfterSeconds} s, /healthz fails.`, [{ value: this.syncRunningSeconds() }]),
      renderGauge("trellis_proxy_sync_pending", "1 while a change waits for the next sync.", [{ value: this.runs.waiting ? 1 : 0 }]),
      renderGauge("trellis_proxy_changes_waiting", "Store changes not yet in a finished sync.", [{ value: this.changeTimes.length }]),
      this.parts.healthChecks.metrics(),
      ...(["chains", "rules", "elements"] as const).map((what) =>
        renderGauge(`trellis_proxy_nftables_${what}`, `nftables ${what} in the proxy's tables.`, counts.map((count) => ({ labels: { family: count.family === 4 ? "IPv4" : "IPv6" }, value: count[what] }))),
      ),
    ].join("");
  }

  /** A sync soon (see SyncRunner), once the first list is whole and the external-address policy given. */
  private requestSync(): void {
    if (this.stopped || !this.listed || !this.policyGiven) return;
    this.runs.request();
  }

  private async sync(): Promise<void> {
    this.lastSyncAt = Date.now();
    const started = performance.now();
    const pendingChanges = this.changeTimes;
    this.changeTimes = [];
    const { kernel } = this.parts;
    try {
      if (this.written && this.checkTables) {
        const tables = new Set(await kernel.tables());
        const missing = [...this.state!.ruleset().tables.keys()].filter((ref) => !tables.has(ref));
        if (missing.length) {
          this.log("warn", "service proxy tables missing; writing them whole", { tables: missing });
          this.written = false;
        }
      }
      this.checkTables = false;
      // A resync with nothing changed in the store and the tables in place costs one listing.
      if (this.written && !this.index.changed && !this.nodeChanged) return;
      let ops: ProxyOp[] = [];
      if (this.state && this.nodeChanged) {
        const moved = this.state.withNode(this.node);
        this.state = moved.state;
        ops = moved.ops;
      }
      this.nodeChanged = false;
      if (!this.state) {
        // Worked out in slices: a full sync at 10,000 Services must not stop CNI requests and /healthz.
        this.state = await ProxyState.build(this.node, this.index.all(), undefined, this.pause);
        this.healthChanged = true;
      } else {
        const { removed, added } = this.index.changes();
        const change = [...ops, ...this.state.update(removed, added)];
        // Once the rules no longer lead there, the UDP flows that still do are deleted.
        for (const flow of staleUdpFlows(removed, added, this.node.name)) this.staleFlows.push(flow);
        if ([...removed, ...added].some((port) => port.healthCheckNodePort !== undefined)) this.healthChanged = true;
        ops = this.written ? change : [];
      }
      const full = !this.written;
      const computed = performance.now();
      // A full write's steps are made table by table as they are written (ProxyKernel.writeFull).
      if (full) await kernel.writeFull(this.state);
      else if (ops.length) await kernel.write(ops);
      const wrote = full || ops.length > 0;
      const writtenAt = performance.now();
      if (wrote) this.writes[kernel.via]++;
      this.written = true;
      if (this.staleFlows.length) {
        const flows = this.staleFlows;
        this.staleFlows = [];
        await this.clearFlows(flows);
      }
      if (this.healthChanged) {
        this.healthChanged = false;
        await this.parts.healthChecks.update(localEndpointCounts(this.index.all(), this.node.name));
      }
      this.lastStats = { syncs: this.lastStats.syncs + 1, lastSyncMs: performance.now() - started, servicePorts: this.index.size, lastSyncAt: Date.now() };
      this.syncDuration.observe(this.lastStats.lastSyncMs / 1000);
      const now = Date.now();
      for (const time of pendingChanges) this.programming.observe((now - time) / 1000);
      const ms = (value: number) => Math.round(value * 10) / 10;
      if (wrote) {
        this.log(full ? "info" : "debug", "service rules synced", {
          full, servicePorts: this.index.size, ...(full ? {} : { steps: ops.length }), via: kernel.via,
          durationMs: ms(this.lastStats.lastSyncMs), computeMs: ms(computed - started), writeMs: ms(writtenAt - computed),
        });
      } else {
        this.log("debug", "service rules already right", { servicePorts: this.index.size, durationMs: ms(this.lastStats.lastSyncMs), changes: pendingChanges.length });
      }
    } catch (error) {
      // Written whole at the next sync (the runner tries one again soon); a ruleset that could
      // not be worked out is worked out again from every port.
      if (!(error instanceof CommandError || error instanceof NftWriteError)) this.state = undefined;
      this.written = false;
      this.failedSyncs++;
      this.changeTimes.push(...pendingChanges);
      throw error;
    }
  }

  /** Deletes the flows four at a time; a failure is logged, not fatal. */
  private async clearFlows(flows: readonly StaleFlow[]): Promise<void> {
    let deleted = 0;
    const failures: string[] = [];
    for (let i = 0; i < flows.length; i += 4) {
      await Promise.all(
        flows.slice(i, i + 4).map(async (flow) => {
          try {
            deleted += await this.parts.deleteFlow(flow);
          } catch (error) {
            failures.push(String(error));
          }
        }),
      );
    }
    this.log(failures.length ? "warn" : "debug", "stale UDP flows deleted", { filters: flows.length, deleted, ...(failures.length ? { failures } : {}) });
  }
}
