/**
 * The KvStore on etcd v3, for many hosts. Transactions map one-to-one onto etcd Txn with
 * mod_revision compares (etcd reports 0 for an absent key, as the KvStore contract does), so
 * the all-or-nothing and revision semantics are etcd's own. Every key lives under a namespace
 * (`/trellis` unless told otherwise) so Trellis can share an etcd with others.
 *
 * Calls have a deadline and the client does not retry for long: a store that cannot be
 * reached is reported within seconds, naming the endpoint.
 */
import { Etcd3, type IKeyValue, type IRangeRequest, type IRangeResponse, type Watcher } from "etcd3";
import {
  KvCompactedError,
  checkKey,
  checkTxn,
  checkWatchRevision,
  compareKeys,
  listBounds,
  MAX_TXN_OPERATIONS,
  prefixEnd,
  type KvEntry,
  type KvEvent,
  type KvList,
  type KvListOptions,
  type KvStore,
  type KvTxn,
  type KvTxnResult,
  type KvWatch,
} from "./kv.js";
import { createWatchQueue } from "./watch-queue.js";

export interface EtcdEndpoint {
  readonly host: string;
  readonly port: number;
}

export interface EtcdStoreOptions {
  /** Key prefix every key is stored under; tests give each store its own. */
  readonly namespace?: string;
  /** Deadline of each call, and of connecting. */
  readonly timeoutMs?: number;
}

export const DEFAULT_ETCD_NAMESPACE = "/trellis";

/** Pages of a long list, read at one revision so the pages form one snapshot. */
const LIST_PAGE = 5_000;

/** Connects and checks that etcd answers; throws `etcd at HOST:PORT is unreachable: …` when not. */
export async function openEtcdStore(endpoint: EtcdEndpoint, options: EtcdStoreOptions = {}): Promise<KvStore> {
  const timeoutMs = options.timeoutMs ?? 5_000;
  const address = formatEndpoint(endpoint);
  const client = new Etcd3({
    hosts: `http://${address}`,
    dialTimeout: timeoutMs,
    defaultCallOptions: (context) => (context.isStream ? {} : { deadline: Date.now() + timeoutMs }),
  });
  const store = new EtcdKvStore(`etcd://${address}`, address, client, options.namespace ?? DEFAULT_ETCD_NAMESPACE);
  try {
    await client.maintenance.status();
  } catch (error) {
    client.close();
    throw describeEtcdError(address, error);
  }
  return store;
}

export function formatEndpoint(endpoint: EtcdEndpoint): string {
  return endpoint.host.includes(":") ? `[${endpoint.host}]:${endpoint.port}` : `${endpoint.host}:${endpoint.port}`;
}

interface PendingRead {
  readonly request: IRangeRequest;
  readonly resolve: (response: IRangeResponse) => void;
  readonly reject: (error: unknown) => void;
}

class EtcdKvStore implements KvStore {
  private readonly watchers = new Set<() => void>();
  private pendingReads: PendingRead[] = [];
  private closed = false;

  constructor(
    readonly spec: string,
    private readonly address: string,
    private readonly client: Etcd3,
    private readonly namespace: string,
  ) {}

  async get(key: string): Promise<KvEntry | undefined> {
    checkKey(key);
    const response = await this.read({ key: this.encode(key) });
    return response.kvs.length > 0 ? this.toEntry(response.kvs[0]) : undefined;
  }

  async list(prefix: string, options: KvListOptions = {}): Promise<KvList> {
    const { low, high } = listBounds(this.namespace + prefix, {
      from: options.from === undefined ? undefined : this.namespace + options.from,
      to: options.to === undefined ? undefined : this.namespace + options.to,
      limit: options.limit,
    });
    const wanted = options.limit ?? Number.POSITIVE_INFINITY;
    // etcd reads a range end of "\0" as "no upper bound".
    const rangeEnd = high === undefined ? Buffer.from([0]) : Buffer.from(high, "utf8");
    if (wanted <= LIST_PAGE) {
      const response = await this.read({ key: Buffer.from(low, "utf8"), range_end: rangeEnd, limit: wanted });
      return { entries: response.kvs.map((kv) => this.toEntry(kv)), revision: Number(response.header.revision) };
    }
    const entries: KvEntry[] = [];
    let start = Buffer.from(low, "utf8");
    let revision: number | undefined;
    if (high !== undefined && compareKeys(low, high) >= 0) {
      const response = await this.call(() => this.client.kv.range({ key: this.encode("/"), count_only: true }));
      return { entries, revision: Number(response.header.revision) };
    }
    for (;;) {
      const page = Math.min(LIST_PAGE, wanted - entries.length);
      const response: IRangeResponse = await this.call(() =>
        this.client.kv.range({
          key: start,
          range_end: rangeEnd,
          limit: page,
          revision: revision ?? 0,
        }),
      );
      revision ??= Number(response.header.revision);
      for (const kv of response.kvs) entries.push(this.toEntry(kv));
      if (!response.more || entries.length >= wanted || response.kvs.length === 0) break;
      start = Buffer.concat([response.kvs[response.kvs.length - 1].key, Buffer.from([0])]);
    }
    return { entries, revision };
  }

  async txn(request: KvTxn): Promise<KvTxnResult> {
    checkTxn(request);
    const response = await this.call(() =>
      this.client.kv.txn({
        compare: request.compares.map((compare) => ({
          key: this.encode(compare.key),
          target: "Mod" as const,
          result: "Equal" as const,
          mod_revision: compare.modRevision,
        })),
        success: request.operations.map((operation) =>
          operation.type === "put"
            ? { request_put: { key: this.encode(operation.key), value: Buffer.from(operation.value, "utf8") } }
            : { request_delete_range: { key: this.encode(operation.key) } },
        ),
        failure: [],
      }),
    );
    return { succeeded: response.succeeded, revision: Number(response.header.revision) };
  }

  async delete(key: string): Promise<{ deleted: boolean; revision: number }> {
    checkKey(key);
    const response = await this.call(() => this.client.kv.deleteRange({ key: this.encode(key) }));
    return { deleted: Number(response.deleted) > 0, revision: Number(response.header.revision) };
  }

  watch(prefix: string, fromRevision: number): KvWatch {
    checkWatchRevision(fromRevision);
    if (this.closed) throw new Error(`store ${this.spec} is closed`);
    const low = this.namespace + prefix;
    const high = prefixEnd(low);
    let next = fromRevision;
    let watcher: Watcher | undefined;
    const cancel = (): void => {
      this.watchers.delete(cancel);
      watcher?.cancel().catch(() => undefined);
    };
    const queue = createWatchQueue(cancel);
    this.watchers.add(cancel);
    const failWith = async (error: unknown): Promise<void> => {
      if (queue.stopped) return;
      queue.fail(await this.explainWatchFailure(prefix, next, error));
    };
    const start = async (): Promise<void> => {
      // A compacted start would only show up as a bare cancel; a read at that revision names it.
      await this.checkNotCompacted(prefix, next);
      if (queue.stopped) return;
      const created = this.client
        .watch()
        .inRange({ start: Buffer.from(low, "utf8"), end: high === undefined ? Buffer.from([0]) : Buffer.from(high, "utf8") })
        .startRevision(String(next))
        .watcher();
      watcher = created;
      // The client resumes a dropped stream from the last response's header revision, which
      // skips history not yet delivered; resume from the next undelivered revision instead.
      const resumeFrom = (): void => {
        created.request.start_revision = next;
      };
      created.on("connected", resumeFrom);
      created.on("data", (response) => {
        for (const event of response.events) {
          const revision = Number(event.kv.mod_revision);
          if (revision < next) continue;
          // The client decodes enums as their proto names ("PUT", "DELETE"), not as its typings say.
          const deleted = String(event.type).toLowerCase() === "delete";
          queue.push({
            type: deleted ? "delete" : "put",
            key: this.decode(event.kv.key),
            value: deleted ? "" : event.kv.value.toString("utf8"),
            revision,
          } satisfies KvEvent);
          next = revision;
        }
        if (response.events.length > 0) next += 1;
        else if (response.header) next = Math.max(next, Number(response.header.revision) + 1);
        resumeFrom();
      });
      created.on("error", (error) => void failWith(error));
    };
    start().catch((error) => void failWith(error));
    return queue.watch;
  }

  async compact(revision: number): Promise<void> {
    await this.call(() => this.client.kv.compact({ revision, physical: true }));
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const cancel of [...this.watchers]) cancel();
    this.client.close();
  }

  /**
   * Point reads and short lists issued in the same turn of the event loop go to etcd as one
   * read-only Txn: one round trip, one revision. Allocators issue their reads together for this.
   */
  private read(request: IRangeRequest): Promise<IRangeResponse> {
    if (this.closed) return Promise.reject(new Error(`store ${this.spec} is closed`));
    return new Promise((resolve, reject) => {
      this.pendingReads.push({ request, resolve, reject });
      if (this.pendingReads.length === 1) setImmediate(() => void this.flushReads());
    });
  }

  private async flushReads(): Promise<void> {
    const batch = this.pendingReads;
    this.pendingReads = [];
    for (let first = 0; first < batch.length; first += MAX_TXN_OPERATIONS) {
      const chunk = batch.slice(first, first + MAX_TXN_OPERATIONS);
      try {
        if (chunk.length === 1) {
          chunk[0].resolve(await this.call(() => this.client.kv.range(chunk[0].request)));
          continue;
        }
        const response = await this.call(() =>
          this.client.kv.txn({ compare: [], success: chunk.map((read) => ({ request_range: read.request })), failure: [] }),
        );
        // Ranges inside a Txn carry no header of their own; the Txn's revision is theirs.
        chunk.forEach((read, i) => read.resolve({ ...response.responses[i].response_range, header: response.header }));
      } catch (error) {
        for (const read of chunk) read.reject(error);
      }
    }
  }

  private async checkNotCompacted(prefix: string, revision: number): Promise<void> {
    try {
      await this.call(() => this.client.kv.range({ key: this.encode(prefix.length > 0 ? prefix : "/"), revision, count_only: true }));
    } catch (error) {
      if (isCompactedError(error)) throw new KvCompactedError(prefix, revision, undefined);
      // A revision in the future is fine for a watch: it waits for it.
      if (error instanceof Error && /future revision/.test(error.message)) return;
      throw error;
    }
  }

  private async explainWatchFailure(prefix: string, revision: number, error: unknown): Promise<Error> {
    try {
      await this.checkNotCompacted(prefix, revision);
    } catch (reason) {
      if (reason instanceof KvCompactedError) return reason;
    }
    if (error instanceof KvCompactedError) return error;
    return describeEtcdError(this.address, error);
  }

  private async call<T>(request: () => Promise<T>): Promise<T> {
    if (this.closed) throw new Error(`store ${this.spec} is closed`);
    try {
      return await request();
    } catch (error) {
      throw describeEtcdError(this.address, error);
    }
  }

  private encode(key: string): Buffer {
    return Buffer.from(this.namespace + key, "utf8");
  }

  private decode(key: Buffer): string {
    return key.toString("utf8").slice(this.namespace.length);
  }

  private toEntry(kv: IKeyValue): KvEntry {
    return {
      key: this.decode(kv.key),
      value: kv.value.toString("utf8"),
      createRevision: Number(kv.create_revision),
      modRevision: Number(kv.mod_revision),
    };
  }
}

function isCompactedError(error: unknown): boolean {
  return error instanceof Error && /compacted/.test(error.message);
}

/** Names the endpoint; connection failures read as "unreachable" whatever layer reported them. */
function describeEtcdError(address: string, error: unknown): Error {
  if (error instanceof KvCompactedError) return error;
  const message = error instanceof Error ? error.message : String(error);
  if (message.startsWith(`etcd at ${address}`)) return error as Error;
  const name = error instanceof Error ? error.constructor.name : "";
  const unreachable =
    /Unavailable|DeadlineExceeded|BrokenCircuit|ClientClosed/.test(name) ||
    /UNAVAILABLE|DEADLINE_EXCEEDED|ECONNREFUSED|circuit breaker|No connection established/.test(message);
  return new Error(unreachable ? `etcd at ${address} is unreachable: ${message}` : `etcd at ${address}: ${message}`);
}
