/**
 * The cluster store: a key-value store with etcd's data model, so that the same allocator code
 * runs on one host (SQLite) or many (etcd).
 *
 * - Keys are non-empty strings ordered by their UTF-8 bytes; values are UTF-8 strings (callers
 *   store JSON; binary data would be base64 first). Strings, not bytes, because every caller
 *   stores text and etcd's byte values round-trip through UTF-8 unchanged.
 * - The store has one revision counter. Each transaction that changes something increments it
 *   once; every key records the revision of its last change (`modRevision`). A key that does
 *   not exist has modRevision 0, so "create if absent" is a compare with 0.
 * - Writes happen only in transactions: compares on modRevision, then puts and deletes, all or
 *   nothing. A failed compare writes nothing and leaves the revision as it was.
 * - Watch delivers every put and delete under a prefix, from a given revision on, in revision
 *   order. History before the compaction point is gone: watching from there fails with
 *   KvCompactedError, and the watcher must re-list and watch from the list's revision + 1.
 */

export interface KvEntry {
  readonly key: string;
  readonly value: string;
  /** Revision of the transaction that created the key (reset when it is deleted and re-created). */
  readonly createRevision: number;
  /** Revision of the key's last change. */
  readonly modRevision: number;
}

/** Holds when the key's modRevision equals `modRevision`; 0 means "the key does not exist". */
export interface KvCompare {
  readonly key: string;
  readonly modRevision: number;
}

export type KvOperation =
  | { readonly type: "put"; readonly key: string; readonly value: string }
  | { readonly type: "delete"; readonly key: string };

export interface KvTxn {
  readonly compares: readonly KvCompare[];
  readonly operations: readonly KvOperation[];
}

export interface KvTxnResult {
  /** False when a compare failed; nothing was written then. */
  readonly succeeded: boolean;
  /** The store's revision after the transaction (its own revision when it changed something). */
  readonly revision: number;
}

export interface KvListOptions {
  /** Only keys >= from (still inside the prefix). */
  readonly from?: string;
  /** Only keys < to (still inside the prefix). */
  readonly to?: string;
  /** At most this many entries, the lowest keys first. */
  readonly limit?: number;
}

export interface KvList {
  /** In key order. */
  readonly entries: readonly KvEntry[];
  /** The revision the list was read at: watch from revision + 1 to follow it. */
  readonly revision: number;
}

export interface KvEvent {
  readonly type: "put" | "delete";
  readonly key: string;
  /** The new value; empty for a delete. */
  readonly value: string;
  /** The revision of the transaction that made the change; events of one transaction share it. */
  readonly revision: number;
}

/**
 * A running watch: iterate it with `for await`. Iteration ends after `stop()` (or `break`);
 * it throws when the watch cannot continue, e.g. KvCompactedError.
 */
export interface KvWatch extends AsyncIterable<KvEvent> {
  stop(): void;
}

export interface KvStore {
  /** The spec it was opened with, e.g. `sqlite:/var/lib/trellis/cluster.db`: for messages. */
  readonly spec: string;
  get(key: string): Promise<KvEntry | undefined>;
  list(prefix: string, options?: KvListOptions): Promise<KvList>;
  txn(request: KvTxn): Promise<KvTxnResult>;
  /** Deletes one key unconditionally; `deleted` is false when it did not exist. */
  delete(key: string): Promise<{ readonly deleted: boolean; readonly revision: number }>;
  /** Events under `prefix` with revision >= fromRevision (>= 1), then live ones. */
  watch(prefix: string, fromRevision: number): KvWatch;
  /** Forgets history before `revision`: watching from an older revision then fails. */
  compact(revision: number): Promise<void>;
  close(): Promise<void>;
}

/** What reading allocators need: a store, or a staged view of one (cluster/staged.ts). */
export type KvReader = Pick<KvStore, "get" | "list">;

/** etcd's default `--max-txn-ops`; the SQLite store enforces it too so both behave alike. */
export const MAX_TXN_OPERATIONS = 128;

export class KvCompactedError extends Error {
  constructor(
    readonly prefix: string,
    readonly requestedRevision: number,
    /** The oldest revision still watchable, when the backend reports it. */
    readonly compactRevision: number | undefined,
  ) {
    const oldest = compactRevision === undefined ? "" : `; the oldest revision still available is ${compactRevision}`;
    super(`cannot watch ${JSON.stringify(prefix)} from revision ${requestedRevision}: that history has been compacted${oldest}; list again and watch from the list's revision + 1`);
    this.name = "KvCompactedError";
  }
}

/** Rejects requests neither backend can apply, with the same message on both. */
export function checkTxn(request: KvTxn): void {
  if (request.compares.length > MAX_TXN_OPERATIONS || request.operations.length > MAX_TXN_OPERATIONS) {
    throw new Error(
      `transaction has ${request.compares.length} compares and ${request.operations.length} operations: at most ${MAX_TXN_OPERATIONS} of each are allowed`,
    );
  }
  const seen = new Set<string>();
  for (const operation of request.operations) {
    checkKey(operation.key);
    if (seen.has(operation.key)) {
      throw new Error(`transaction changes key ${JSON.stringify(operation.key)} twice: each key may be put or deleted once per transaction`);
    }
    seen.add(operation.key);
  }
  for (const compare of request.compares) {
    checkKey(compare.key);
    if (!Number.isSafeInteger(compare.modRevision) || compare.modRevision < 0) {
      throw new Error(`compare on ${JSON.stringify(compare.key)} has modRevision ${compare.modRevision}: expected 0 (absent) or a positive revision`);
    }
  }
}

/** Orders keys as both backends do: by UTF-8 bytes (JavaScript's `<` compares UTF-16 units). */
export function compareKeys(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a, "utf8"), Buffer.from(b, "utf8"));
}

/** The key range [low, high) a list covers; high undefined = no upper bound. */
export function listBounds(prefix: string, options: KvListOptions): { low: string; high: string | undefined } {
  if (options.limit !== undefined && (!Number.isSafeInteger(options.limit) || options.limit < 1)) {
    throw new Error(`invalid list limit ${options.limit}: expected a positive integer, or no limit`);
  }
  const low = options.from !== undefined && compareKeys(options.from, prefix) > 0 ? options.from : prefix;
  const end = prefixEnd(prefix);
  const high = options.to !== undefined && (end === undefined || compareKeys(options.to, end) < 0) ? options.to : end;
  return { low, high };
}

export function checkKey(key: string): void {
  if (typeof key !== "string" || key.length === 0) throw new Error(`invalid key ${JSON.stringify(key)}: keys are non-empty strings`);
}

export function checkWatchRevision(fromRevision: number): void {
  if (!Number.isSafeInteger(fromRevision) || fromRevision < 1) {
    throw new Error(`cannot watch from revision ${fromRevision}: revisions start at 1`);
  }
}

/**
 * The smallest key above every key that starts with `prefix`, or undefined when every key above
 * `prefix` starts with it. UTF-8 byte order is code point order, so incrementing the last code
 * point gives the bound both backends use.
 */
export function prefixEnd(prefix: string): string | undefined {
  const points = Array.from(prefix);
  while (points.length > 0) {
    const last = points.pop()!.codePointAt(0)!;
    if (last < 0x10ffff) {
      const next = last + 1 === 0xd800 ? 0xe000 : last + 1;
      return points.join("") + String.fromCodePoint(next);
    }
  }
  return undefined;
}
