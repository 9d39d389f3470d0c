/**
 * Opens SQLite databases through better-sqlite3. The bundled `dist/trellis` carries the
 * native addon inside itself (one file to install as /opt/cni/bin/trellis); on first use it
 * is written once to a content-addressed file and loaded from there.
 */
import Database from "better-sqlite3";
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { brotliDecompressSync } from "node:zlib";

export type SqliteDatabase = Database.Database;

declare const TRELLIS_EMBEDDED_ADDON_SHA: string | undefined;

const ADDON_MARKER = "/*TRELLIS-ADDON:";

export interface OpenSqliteOptions {
  /** How long a writer waits for another process's transaction, in ms. */
  busyTimeoutMs?: number;
  readonly?: boolean;
}

/** Opens (creating) a database in WAL mode, safe for many processes at once. */
export function openSqlite(path: string, options: OpenSqliteOptions = {}): SqliteDatabase {
  const nativeBinding = embeddedAddonPath();
  const db = new Database(path, { nativeBinding, readonly: options.readonly ?? false, timeout: options.busyTimeoutMs ?? 60_000 });
  if (!options.readonly) {
    db.pragma("journal_mode = WAL");
    db.pragma("synchronous = NORMAL");
  }
  return db;
}

/** Where the embedded addon lives once extracted, or undefined when running from source. */
function embeddedAddonPath(): string | undefined {
  if (typeof TRELLIS_EMBEDDED_ADDON_SHA === "undefined") return undefined;
  const dir = process.env.TRELLIS_NATIVE_DIR ?? "/var/lib/trellis/native";
  const target = join(dir, `better_sqlite3-${TRELLIS_EMBEDDED_ADDON_SHA}.node`);
  if (existsSync(target)) return target;
  const self = readFileSync(__filename, "latin1");
  const start = self.lastIndexOf(ADDON_MARKER);
  const end = self.lastIndexOf("*/");
  if (start < 0 || end < start) throw new Error(`the sqlite addon is missing from ${__filename}: rebuild with npm run build`);
  const addon = brotliDecompressSync(Buffer.from(self.slice(start + ADDON_MARKER.length, end), "base64"));
  mkdirSync(dir, { recursive: true, mode: 0o755 });
  const temporary = `${target}.${process.pid}.tmp`;
  const fd = openSync(temporary, "w", 0o755);
  try {
    writeFileSync(fd, addon);
  } finally {
    closeSync(fd);
  }
  renameSync(temporary, target);
  return target;
}
