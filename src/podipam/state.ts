/**
 * The node-local pod state: which attachments exist and which addresses they hold. One SQLite
 * file per data directory; every change is one transaction, so parallel plugin processes
 * serialize on SQLite's lock and a killed process leaves either all of a change or none of it.
 */
import { mkdirSync, realpathSync, statSync } from "node:fs";
import { dirname, isAbsolute, join, normalize } from "node:path";
import { openSqlite, type SqliteDatabase } from "../store/sqlite.js";

export const DEFAULT_STATE_DIR = "/var/lib/cni/trellis";

/** The schema this code writes; older files are migrated, newer ones refused. */
export const SCHEMA_VERSION = 2;

const SCHEMA_V2 = `
CREATE TABLE attachments (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  network TEXT NOT NULL,
  container_id TEXT NOT NULL,
  ifname TEXT NOT NULL,
  state TEXT NOT NULL,
  owner TEXT NOT NULL,
  host_ifname TEXT NOT NULL,
  netns TEXT NOT NULL,
  bridge TEXT NOT NULL,
  spec TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  UNIQUE (network, container_id, ifname)
);
CREATE INDEX attachments_by_bridge ON attachments (bridge);
CREATE TABLE leases (
  network TEXT NOT NULL,
  address TEXT NOT NULL,
  range_set TEXT NOT NULL,
  container_id TEXT NOT NULL,
  ifname TEXT NOT NULL,
  PRIMARY KEY (network, address)
);
CREATE INDEX leases_by_owner ON leases (network, container_id, ifname);
CREATE TABLE cursors (
  network TEXT NOT NULL,
  range_set TEXT NOT NULL,
  last_address TEXT NOT NULL,
  PRIMARY KEY (network, range_set)
);
`;

/**
 * Version 1 keyed a lease's range set by its position in the config and knew nothing of the
 * attachment's bridge or addresses. Its attachments become ready ones with an unknown bridge;
 * its leases keep their owners with an unknown range set; the round-robin cursors start over.
 */
const MIGRATE_V1_TO_V2 = `
ALTER TABLE attachments RENAME TO attachments_v1;
ALTER TABLE leases RENAME TO leases_v1;
DROP INDEX IF EXISTS leases_by_owner;
DROP TABLE cursors;
${SCHEMA_V2}
INSERT INTO attachments (network, container_id, ifname, state, owner, host_ifname, netns, bridge, spec, created_at)
  SELECT network, container_id, ifname, 'ready', '', host_ifname, netns, '', '{}', created_at FROM attachments_v1 ORDER BY created_at;
INSERT INTO leases (network, address, range_set, container_id, ifname)
  SELECT network, address, '', container_id, ifname FROM leases_v1;
DROP TABLE attachments_v1;
DROP TABLE leases_v1;
`;

export class PodStateError extends Error {}

/**
 * Opens (creating) the state database in `dir`, migrating an older schema. `field` names the
 * configuration key the directory came from, for error messages.
 */
export function openPodState(dir: string, field = "ipam.dataDir"): SqliteDatabase {
  ensureStateDirectory(dir, field);
  let db: SqliteDatabase;
  try {
    db = openSqlite(join(dir, "state.db"));
  } catch (error) {
    throw new PodStateError(`${field} ${dir} cannot hold the node state: ${(error as Error).message}`);
  }
  try {
    migrate(db, dir);
  } catch (error) {
    db.close();
    throw error;
  }
  return db;
}

function migrate(db: SqliteDatabase, dir: string): void {
  const version = () => db.pragma("user_version") as number;
  if (version() === SCHEMA_VERSION) return;
  db.immediate(() => {
    const current = version();
    if (current > SCHEMA_VERSION) {
      throw new PodStateError(
        `node state ${join(dir, "state.db")} has schema version ${current}, newer than this trellis understands (${SCHEMA_VERSION}): run the trellis that wrote it, or a newer one`,
      );
    }
    if (current === 0) db.exec(SCHEMA_V2);
    if (current === 1) db.exec(MIGRATE_V1_TO_V2);
    db.exec(`PRAGMA user_version = ${SCHEMA_VERSION}`);
  });
}

/** Kernel filesystems where a state file cannot live (and where some calls never return). */
const PSEUDO_FILESYSTEMS = ["/proc", "/sys", "/dev"];

/**
 * Makes `dir` and its missing parents, one level at a time: Node's recursive mkdir spins
 * forever under /proc, and a plain error names neither the field nor the cause.
 */
function ensureStateDirectory(dir: string, field: string): void {
  if (!isAbsolute(dir)) throw new PodStateError(`${field} ${JSON.stringify(dir)} is not an absolute path`);
  const missing: string[] = [];
  let existing = normalize(dir);
  for (;;) {
    try {
      if (!statSync(existing).isDirectory()) {
        throw new PodStateError(`${field} ${dir} cannot hold the node state: ${existing} is not a directory`);
      }
      break;
    } catch (error) {
      if (error instanceof PodStateError) throw error;
      const code = (error as NodeJS.ErrnoException).code;
      if (code !== "ENOENT" && code !== "ENOTDIR") throw new PodStateError(`${field} ${dir} cannot be used: ${(error as Error).message}`);
      missing.unshift(existing);
      existing = dirname(existing);
    }
  }
  const real = realpathSync(existing);
  const pseudo = PSEUDO_FILESYSTEMS.find((root) => real === root || real.startsWith(`${root}/`));
  if (pseudo) throw new PodStateError(`${field} ${dir} is under ${pseudo}, a kernel filesystem that cannot hold the node state`);
  for (const path of missing) {
    try {
      mkdirSync(path, { mode: 0o700 });
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw new PodStateError(`${field} ${dir} cannot be created: ${(error as Error).message}`);
    }
  }
}
