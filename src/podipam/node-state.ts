/**
 * The node-local pod state: which attachments exist and which addresses they hold. One SQLite
 * file per data directory; every change is one transaction, so parallel plugin processes
 * serialize on SQLite's lock and a killed process leaves either all of a change or none of it.
 */
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { openSqlite, type SqliteDatabase } from "../store/sqlite.js";

export const DEFAULT_STATE_DIR = "/var/lib/cni/trellis";

const SCHEMA = `
CREATE TABLE IF NOT EXISTS attachments (
  network TEXT NOT NULL,
  container_id TEXT NOT NULL,
  ifname TEXT NOT NULL,
  host_ifname TEXT NOT NULL,
  netns TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  PRIMARY KEY (network, container_id, ifname)
);
CREATE TABLE IF NOT EXISTS leases (
  network TEXT NOT NULL,
  address TEXT NOT NULL,
  range_set INTEGER NOT NULL,
  container_id TEXT NOT NULL,
  ifname TEXT NOT NULL,
  PRIMARY KEY (network, address)
);
CREATE INDEX IF NOT EXISTS leases_by_owner ON leases (network, container_id, ifname);
CREATE TABLE IF NOT EXISTS cursors (
  network TEXT NOT NULL,
  range_set INTEGER NOT NULL,
  last_address TEXT NOT NULL,
  PRIMARY KEY (network, range_set)
);
`;

/** Opens (creating) the state database in `dir`. */
export function openNodeState(dir: string): SqliteDatabase {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const db = openSqlite(join(dir, "state.db"));
  if (db.pragma("user_version", { simple: true }) !== 1) {
    db.transaction(() => {
      db.exec(SCHEMA);
      db.pragma("user_version = 1");
    }).immediate();
  }
  return db;
}
