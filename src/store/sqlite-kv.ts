/**
 * The KvStore on one SQLite file, for one host. Every write is a `BEGIN IMMEDIATE` transaction,
 * so processes sharing the file serialize on SQLite's write lock; the revision counter lives in
 * the same file. Each change is also appended to a changes log, which watchers in any process
 * poll by revision. The log is compacted automatically, keeping the last `retainRevisions`.
 */
import { mkdirSync, statSync, watch, type FSWatcher } from "node:fs";
import { basename, dirname, resolve } from "node:path";
import {
  KvCompactedError,
  checkKey,
  checkTxn,
  checkWatchRevision,
  listBounds,
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
import { openSqlite, type SqliteDatabase } from "./sqlite.js";
import { createWatchQueue } from "./watch-queue.js";

/**
 * After inotify wakes a watcher, this many looks follow QUICK_LOOK_MS apart: a commit becomes
 * visible to readers a moment after its last write to the log (see wake()).
 */
const QUICK_LOOKS_AFTER_WAKE = 5;
const QUICK_LOOK_MS = 2;

export interface SqliteStoreOptions {
  /** How often watchers look for new changes when inotify cannot wake them (20 ms). */
  readonly pollIntervalMs?: number;
  /**
   * How often they look anyway while inotify wakes them at each write (1 s): a net under the
   * wake-ups, not the way changes arrive. Every look is a read transaction; at 20 ms, the agent's
   * four watchers made 200 a second for nothing.
   */
  readonly wokenPollIntervalMs?: number;
  /** Changes kept for watchers; older ones are compacted away every `compactEvery` revisions. */
  readonly retainRevisions?: number;
  readonly compactEvery?: number;
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS kv (
  key TEXT PRIMARY KEY,
  value TEXT NOT NULL,
  create_revision INTEGER NOT NULL,
  mod_revision INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS changes (
  revision INTEGER NOT NULL,
  seq INTEGER NOT NULL,
  key TEXT NOT NULL,
  deleted INTEGER NOT NULL,
  value TEXT NOT NULL,
  PRIMARY KEY (revision, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
  name TEXT PRIMARY KEY,
  value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT OR IGNORE INTO meta (name, value) VALUES ('revision', 1), ('compacted', 0);
`;

/** Revisions a watcher reads per poll, so one poll never holds a read snapshot for long. */
const WATCH_WINDOW = 1000;

interface AppliedTxn extends KvTxnResult {
  readonly deleted: number;
}

interface KvRow {
  key: string;
  value: string;
  create_revision: number;
  mod_revision: number;
}

interface ChangeRow {
  revision: number;
  key: string;
  deleted: number;
  value: string;
}

/** Opens (creating) the store file at `path`, creating its directory too. */
export function openSqliteStore(path: string, options: SqliteStoreOptions = {}): KvStore {
  const file = resolve(path);
  const spec = `sqlite:${path}`;
  const db = openDatabase(file, spec);
  return new SqliteKvStore(spec, file, db, {
    pollIntervalMs: options.pollIntervalMs ?? 20,
    wokenPollIntervalMs: options.wokenPollIntervalMs ?? 1_000,
    retainRevisions: options.retainRevisions ?? 10_000,
    compactEvery: options.compactEvery ?? 1_000,
  });
}

function openDatabase(file: string, spec: string): SqliteDatabase {
  const dir = dirname(file);
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
  } catch (error) {
    throw new Error(`store ${spec} cannot be opened: cannot create directory ${dir}: ${describeFsError(error)}`);
  }
  try {
    if (statSync(file, { throwIfNoEntry: false })?.isDirectory()) throw new Error(`${file} is a directory, not a database file`);
    const db = openSqlite(file);
    db.immediate(() => db.exec(SCHEMA));
    return db;
  } catch (error) {
    throw new Error(`store ${spec} cannot be opened: ${describeFsError(error)}`);
  }
}

class SqliteKvStore implements KvStore {
  private readonly statements;
  /** Each live watcher: how to end it, and how to make it look now (a write to the file). */
  private readonly watchers = new Set<{ readonly stop: () => void; readonly wake: () => void }>();
  private fileWatch: FSWatcher | undefined;
  private readonly applyTxn: (request: KvTxn) => AppliedTxn;
  private readonly readList: (prefix: string, options: KvListOptions) => KvList;
  private readonly readChanges: (from: number, low: string, high: string | undefined) => { rows: ChangeRow[]; next: number; compacted: number };
  private closed = false;

  constructor(
    readonly spec: string,
    /** The database file, absolute. */
    private readonly file: string,
    private readonly db: SqliteDatabase,
    private readonly options: Required<SqliteStoreOptions>,
  ) {
    this.statements = {
      get: db.prepare<[string], KvRow>("SELECT key, value, create_revision, mod_revision FROM kv WHERE key = ?"),
      modRevision: db.prepare<[string], { mod_revision: number }>("SELECT mod_revision FROM kv WHERE key = ?"),
      listBounded: db.prepare<[string, string, number], KvRow>(
        "SELECT key, value, create_revision, mod_revision FROM kv WHERE key >= ? AND key < ? ORDER BY key LIMIT ?",
      ),
      listOpen: db.prepare<[string, number], KvRow>("SELECT key, value, create_revision, mod_revision FROM kv WHERE key >= ? ORDER BY key LIMIT ?"),
      insert: db.prepare<[string, string, number, number]>("INSERT INTO kv (key, value, create_revision, mod_revision) VALUES (?, ?, ?, ?)"),
      update: db.prepare<[string, number, string]>("UPDATE kv SET value = ?, mod_revision = ? WHERE key = ?"),
      remove: db.prepare<[string]>("DELETE FROM kv WHERE key = ?"),
      logChange: db.prepare<[number, number, string, number, string]>("INSERT INTO changes (revision, seq, key, deleted, value) VALUES (?, ?, ?, ?, ?)"),
      meta: db.prepare<[string], { value: number }>("SELECT value FROM meta WHERE name = ?"),
      setMeta: db.prepare<[number, string]>("UPDATE meta SET value = ? WHERE name = ?"),
      dropChanges: db.prepare<[number]>("DELETE FROM changes WHERE revision < ?"),
      changesBounded: db.prepare<[number, number, string, string], ChangeRow>(
        "SELECT revision, key, deleted, value FROM changes WHERE revision >= ? AND revision < ? AND key >= ? AND key < ? ORDER BY revision, seq",
      ),
      changesOpen: db.prepare<[number, number, string], ChangeRow>(
        "SELECT revision, key, deleted, value FROM changes WHERE revision >= ? AND revision < ? AND key >= ? ORDER BY revision, seq",
      ),
    };
    this.applyTxn = (request) => db.immediate(() => this.applyInTransaction(request));
    this.readList = (prefix, options) => db.deferred(() => this.listInTransaction(prefix, options));
    this.readChanges = (from, low, high) => db.deferred(() => {
      const revision = this.metaValue("revision");
      const compacted = this.metaValue("compacted");
      if (from < compacted) return { rows: [], next: from, compacted };
      const until = Math.min(revision + 1, from + WATCH_WINDOW);
      const rows = high === undefined ? this.statements.changesOpen.all(from, until, low) : this.statements.changesBounded.all(from, until, low, high);
      return { rows, next: Math.max(from, until), compacted };
    });
  }

  async get(key: string): Promise<KvEntry | undefined> {
    checkKey(key);
    this.checkOpen();
    const row = this.statements.get.get(key);
    return row ? toEntry(row) : undefined;
  }

  async list(prefix: string, options: KvListOptions = {}): Promise<KvList> {
    this.checkOpen();
    return this.readList(prefix, options);
  }

  async txn(request: KvTxn): Promise<KvTxnResult> {
    checkTxn(request);
    this.checkOpen();
    const { succeeded, revision } = this.applyTxn(request);
    return { succeeded, revision };
  }

  async delete(key: string): Promise<{ deleted: boolean; revision: number }> {
    checkKey(key);
    this.checkOpen();
    const { deleted, revision } = this.applyTxn({ compares: [], operations: [{ type: "delete", key }] });
    return { deleted: deleted > 0, revision };
  }

  watch(prefix: string, fromRevision: number): KvWatch {
    checkWatchRevision(fromRevision);
    this.checkOpen();
    const low = prefix;
    const high = prefixEnd(prefix);
    let next = fromRevision;
    let timer: NodeJS.Timeout | undefined;
    /** A look asked for by a write, on the next turn of the event loop. */
    let woken: NodeJS.Immediate | undefined;
    /** Looks still to come at the short interval after a wake-up. */
    let quickLooks = 0;
    const stopTimer = (): void => {
      if (timer) clearTimeout(timer);
      timer = undefined;
      if (woken) clearImmediate(woken);
      woken = undefined;
      this.watchers.delete(watcher);
      if (this.watchers.size === 0) this.stopFileWatch();
    };
    /**
     * A write to the file (by any process): look now rather than at the next poll. (Not with
     * setTimeout(poll, 0), which waits a whole millisecond, Node's shortest timeout.)
     */
    const wake = (): void => {
      // A write lands in the log before its commit is visible to readers (that last step is in
      // shared memory, which inotify does not see): the look it triggers may come too early, so
      // a few more follow soon after.
      quickLooks = QUICK_LOOKS_AFTER_WAKE;
      if (timer && !queue.stopped) {
        clearTimeout(timer);
        timer = undefined;
        woken = setImmediate(() => {
          woken = undefined;
          poll();
        });
      }
    };
    const watcher = { stop: stopTimer, wake };
    const queue = createWatchQueue(stopTimer);
    const poll = (): void => {
      if (timer) clearTimeout(timer);
      timer = undefined;
      if (queue.stopped) return;
      try {
        // Drain whole windows at once so a watcher far behind catches up without waiting a poll per window.
        for (;;) {
          const { rows, next: after, compacted } = this.readChanges(next, low, high);
          if (next < compacted) throw new KvCompactedError(prefix, next, compacted);
          for (const row of rows) queue.push(toEvent(row));
          const caughtUp = after === next || after - next < WATCH_WINDOW;
          next = after;
          if (caughtUp || queue.stopped) break;
        }
      } catch (error) {
        queue.fail(error instanceof Error ? error : new Error(String(error)));
        return;
      }
      const { pollIntervalMs, wokenPollIntervalMs } = this.options;
      const interval = !this.fileWatch ? pollIntervalMs : quickLooks-- > 0 ? Math.min(QUICK_LOOK_MS, pollIntervalMs) : Math.max(pollIntervalMs, wokenPollIntervalMs);
      timer = setTimeout(poll, interval);
    };
    this.watchers.add(watcher);
    this.startFileWatch();
    timer = setTimeout(poll, 0);
    return queue.watch;
  }

  /**
   * Every write, by any process, lands in the write-ahead log beside the file: inotify on its
   * directory wakes the watchers at once, so a change reaches them in about a millisecond rather
   * than at the next poll (which stays, for file systems without inotify).
   */
  private startFileWatch(): void {
    if (this.fileWatch) return;
    const names = new Set([`${basename(this.file)}-wal`, basename(this.file)]);
    try {
      this.fileWatch = watch(dirname(this.file), { persistent: false }, (_event, name) => {
        if (name === null || names.has(name.toString())) for (const watcher of this.watchers) watcher.wake();
      });
      this.fileWatch.on("error", () => this.stopFileWatch());
    } catch {
      this.fileWatch = undefined;
    }
  }

  private stopFileWatch(): void {
    this.fileWatch?.close();
    this.fileWatch = undefined;
  }

  async compact(revision: number): Promise<void> {
    this.checkOpen();
    this.db.immediate(() => {
      const current = this.metaValue("revision");
      if (revision > current) throw new Error(`cannot compact ${this.spec} at revision ${revision}: the store is only at revision ${current}`);
      this.compactTo(revision);
    });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    for (const watcher of [...this.watchers]) watcher.stop();
    this.stopFileWatch();
    this.closed = true;
    this.db.close();
  }

  private applyInTransaction(request: KvTxn): AppliedTxn {
    const current = this.metaValue("revision");
    for (const compare of request.compares) {
      const modRevision = this.statements.modRevision.get(compare.key)?.mod_revision ?? 0;
      if (modRevision !== compare.modRevision) return { succeeded: false, revision: current, deleted: 0 };
    }
    const revision = current + 1;
    let seq = 0;
    let deleted = 0;
    for (const operation of request.operations) {
      if (operation.type === "put") {
        const changed = this.statements.update.run(operation.value, revision, operation.key).changes;
        if (changed === 0) this.statements.insert.run(operation.key, operation.value, revision, revision);
        this.statements.logChange.run(revision, seq++, operation.key, 0, operation.value);
      } else if (this.statements.remove.run(operation.key).changes > 0) {
        deleted++;
        this.statements.logChange.run(revision, seq++, operation.key, 1, "");
      }
    }
    // Like etcd: a transaction that changed nothing does not use up a revision.
    if (seq === 0) return { succeeded: true, revision: current, deleted };
    this.statements.setMeta.run(revision, "revision");
    if (revision % this.options.compactEvery === 0 && revision > this.options.retainRevisions) {
      this.compactTo(revision - this.options.retainRevisions);
    }
    return { succeeded: true, revision, deleted };
  }

  private compactTo(revision: number): void {
    if (revision <= this.metaValue("compacted")) return;
    this.statements.dropChanges.run(revision);
    this.statements.setMeta.run(revision, "compacted");
  }

  private listInTransaction(prefix: string, options: KvListOptions): KvList {
    const revision = this.metaValue("revision");
    const { low, high } = listBounds(prefix, options);
    const limit = options.limit ?? -1;
    const rows = high === undefined ? this.statements.listOpen.all(low, limit) : this.statements.listBounded.all(low, high, limit);
    return { entries: rows.map(toEntry), revision };
  }

  private metaValue(name: string): number {
    return this.statements.meta.get(name)!.value;
  }

  private checkOpen(): void {
    if (this.closed) throw new Error(`store ${this.spec} is closed`);
  }
}

function toEntry(row: KvRow): KvEntry {
  return { key: row.key, value: row.value, createRevision: row.create_revision, modRevision: row.mod_revision };
}

function toEvent(row: ChangeRow): KvEvent {
  return { type: row.deleted ? "delete" : "put", key: row.key, value: row.deleted ? "" : row.value, revision: row.revision };
}

function describeFsError(error: unknown): string {
  const code = (error as NodeJS.ErrnoException | undefined)?.code;
  if (code === "EACCES" || code === "EPERM") return "permission denied";
  if (code === "ENOTDIR" || code === "EEXIST") return "a parent of the path is a file, not a directory";
  if (code === "EROFS") return "read-only file system";
  return error instanceof Error ? error.message : String(error);
}
