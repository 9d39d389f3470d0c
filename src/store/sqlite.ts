/**
 * Opens SQLite databases through better-sqlite3. In the built executable (a single executable
 * application) the native addon is an embedded asset: it is written once to a
 * content-addressed file and loaded from there.
 */
import Database from "better-sqlite3";
import { closeSync, existsSync, mkdirSync, openSync, renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import * as sea from "node:sea";

export type SqliteDatabase = Database.Database;

export interface OpenSqliteOptions {
  /** How long a writer waits for another process's transaction, in ms. */
  busyTimeoutMs?: number;
  readonly?: boolean;
}

/** Opens (creating) a database in WAL mode, safe for many processes at once. */
export function openSqlite(path: string, options: OpenSqliteOptions = {}): SqliteDatabase {
  // better-sqlite3 also takes an already loaded addon object, though its types only say string.
  const databaseOptions = { nativeBinding: embeddedAddon(), readonly: options.readonly ?? false, timeout: options.busyTimeoutMs ?? 60_000 } as unknown as Database.Options;
  const db = new Database(path, databaseOptions);
  if (!options.readonly) {
    try {
      untilNotBusy(() => db.pragma("journal_mode = WAL"), options.busyTimeoutMs ?? 60_000);
    } catch (error) {
      db.close();
      throw error;
    }
    db.pragma("synchronous = NORMAL");
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
      if (!String((error as { code?: string }).code).startsWith("SQLITE_BUSY") || Date.now() > deadline) throw error;
      Atomics.wait(pause, 0, 0, wait + Math.random() * wait);
    }
  }
}

declare const TRELLIS_ADDON_SHA: string;

let loadedAddon: object | undefined;

/** The addon carried by the executable, or undefined when running from source (node_modules has it). */
function embeddedAddon(): object | undefined {
  if (!sea.isSea()) return undefined;
  if (loadedAddon) return loadedAddon;
  const dir = process.env.TRELLIS_NATIVE_DIR ?? "/var/lib/trellis/native";
  const target = join(dir, `better_sqlite3-${TRELLIS_ADDON_SHA}.node`);
  if (!existsSync(target)) {
    const addon = Buffer.from(sea.getAsset("better_sqlite3.node"));
    mkdirSync(dir, { recursive: true, mode: 0o755 });
    const temporary = `${target}.${process.pid}.tmp`;
    const fd = openSync(temporary, "w", 0o755);
    try {
      writeFileSync(fd, addon);
    } finally {
      closeSync(fd);
    }
    renameSync(temporary, target);
  }
  const module = { exports: {} };
  process.dlopen(module, target);
  loadedAddon = module.exports;
  return loadedAddon;
}
