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
    db.pragma("journal_mode = WAL");
    db.pragma("synchronous = NORMAL");
  }
  return db;
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
