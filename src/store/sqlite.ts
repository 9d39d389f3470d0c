/**
 * SQLite databases through Node's built-in `node:sqlite` (SQLite compiled into Node itself):
 * the executable carries no addon to unpack, and a node needs nothing beside it. A database
 * here is a thin handle over `DatabaseSync` with what the state and the store use: typed
 * statements, transactions that take SQLite's write lock at their start (`immediate`) or read
 * one snapshot (`deferred`), the user version, and SQLite's result codes on errors.
 */
import { DatabaseSync, type StatementSync } from "node:sqlite";

export interface OpenSqliteOptions {
  /** How long a writer waits for another process's transaction, in ms. */
  busyTimeoutMs?: number;
  readonly?: boolean;
}

/** A value SQLite stores, as a parameter. */
export type SqliteValue = null | number | bigint | string | NodeJS.ArrayBufferView;

export interface SqliteRunResult {
  readonly changes: number;
  readonly lastInsertRowid: number | bigint;
}

/** A prepared statement whose parameters and rows have the given types. */
export interface SqliteStatement<Params extends SqliteValue[] = SqliteValue[], Row = Record<string, unknown>> {
  get(...params: Params): Row | undefined;
  all(...params: Params): Row[];
  run(...params: Params): SqliteRunResult;
}

/** SQLite's primary result codes that callers act on (the low byte of an extended code). */
const RESULT_NAMES: Record<number, string> = { 5: "SQLITE_BUSY", 6: "SQLITE_LOCKED", 8: "SQLITE_READONLY", 10: "SQLITE_IOERR", 11: "SQLITE_CORRUPT", 13: "SQLITE_FULL", 14: "SQLITE_CANTOPEN", 19: "SQLITE_CONSTRAINT", 26: "SQLITE_NOTADB" };

/**
 * The SQLite result an error carries, by name (`SQLITE_BUSY` also for its extended forms such as
 * SQLITE_BUSY_RECOVERY), or undefined when it is not an error from SQLite.
 */
export function sqliteResult(error: unknown): string | undefined {
  if (!(error instanceof Error) || (error as { code?: unknown }).code !== "ERR_SQLITE_ERROR") return undefined;
  const errcode = (error as { errcode?: unknown }).errcode;
  if (typeof errcode !== "number") return "SQLITE_ERROR";
  return RESULT_NAMES[errcode & 0xff] ?? "SQLITE_ERROR";
}

/** True for "another connection holds the lock": worth waiting for and trying again. */
export function isSqliteBusy(error: unknown): boolean {
  const result = sqliteResult(error);
  return result === "SQLITE_BUSY" || result === "SQLITE_LOCKED";
}

export class SqliteDatabase {
  /** Savepoint depth of the transaction in progress (0: none). */
  private depth = 0;

  constructor(private readonly db: DatabaseSync) {}

  /** The database file. */
  get path(): string {
    return this.db.location() ?? ":memory:";
  }

  prepare<Params extends SqliteValue[] = SqliteValue[], Row = Record<string, unknown>>(sql: string): SqliteStatement<Params, Row> {
    return this.db.prepare(sql) as unknown as SqliteStatement<Params, Row>;
  }

  /** Runs statements that return nothing (schema, pragmas that set). */
  exec(sql: string): void {
    this.db.exec(sql);
  }

  /** The value of a pragma that reads one (`user_version`, `journal_mode`, …). */
  pragma(name: string): unknown {
    const row = (this.db.prepare(`PRAGMA ${name}`) as StatementSync).get();
    return row === undefined ? undefined : Object.values(row)[0];
  }

  /** Runs `body` in a write transaction that holds SQLite's write lock from its start. */
  immediate<T>(body: () => T): T {
    return this.transaction("BEGIN IMMEDIATE", body);
  }

  /** Runs `body` in a read transaction: every read in it sees one snapshot. */
  deferred<T>(body: () => T): T {
    return this.transaction("BEGIN DEFERRED", body);
  }

  close(): void {
    if (this.db.isOpen) this.db.close();
  }

  /**
   * `begin`, `body`, COMMIT; ROLLBACK when anything throws. Inside another transaction, a
   * savepoint instead, so a nested body that throws undoes its own writes only.
   */
  private transaction<T>(begin: string, body: () => T): T {
    const nested = this.depth > 0;
    const savepoint = `trellis_${this.depth}`;
    this.db.exec(nested ? `SAVEPOINT ${savepoint}` : begin);
    this.depth++;
    try {
      const result = body();
      if (result instanceof Promise) throw new TypeError("a transaction body must not be async: the transaction would end before it does");
      this.db.exec(nested ? `RELEASE ${savepoint}` : "COMMIT");
      return result;
    } catch (error) {
      if (this.db.isTransaction) {
        if (nested) this.db.exec(`ROLLBACK TO ${savepoint}; RELEASE ${savepoint}`);
        else this.db.exec("ROLLBACK");
      }
      throw error;
    } finally {
      this.depth--;
    }
  }
}

/** Opens (creating) a database in WAL mode, safe for many processes at once. */
export function openSqlite(path: string, options: OpenSqliteOptions = {}): SqliteDatabase {
  const timeout = options.busyTimeoutMs ?? 60_000;
  const db = new SqliteDatabase(new DatabaseSync(path, { readOnly: options.readonly ?? false, timeout }));
  if (!options.readonly) {
    try {
      untilNotBusy(() => db.exec("PRAGMA journal_mode = WAL"), timeout);
      db.exec("PRAGMA synchronous = NORMAL");
    } catch (error) {
      db.close();
      throw error;
    }
  }
  return db;
}

/**
 * Retries `step` while SQLite answers "database is locked". Switching a new file to WAL while
 * other processes do the same gets that answer at once, without waiting in the busy handler
 * (SQLite refuses to wait where waiting could deadlock), so several processes opening one new
 * file together need to try again.
 */
function untilNotBusy<T>(step: () => T, timeoutMs: number): T {
  const deadline = Date.now() + timeoutMs;
  const pause = new Int32Array(new SharedArrayBuffer(4));
  for (let wait = 1; ; wait = Math.min(wait * 2, 50)) {
    try {
      return step();
    } catch (error) {
      if (sqliteResult(error) !== "SQLITE_BUSY" || Date.now() > deadline) throw error;
      Atomics.wait(pause, 0, 0, wait + Math.random() * wait);
    }
  }
}
