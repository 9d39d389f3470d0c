import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";
import { parseIp, parsePrefix } from "../net/ip.js";
import { openSqlite } from "../store/sqlite.js";
import { listAllAttachments } from "./attachments.js";
import { allocatePodIps, listLeases, type PodIpRangeSet } from "./pod-ips.js";
import { openPodState, PodStateError, SCHEMA_VERSION } from "./state.js";

const execFileAsync = promisify(execFile);

/** The version-1 schema exactly as src/ipam/node-state.ts created it (commits 5c65722 to f3c2a1c). */
const SCHEMA_V1 = `
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

/** Asserts that `open` throws a PodStateError with exactly this message. */
function assertRefused(open: () => unknown, message: string): void {
  assert.throws(open, (error: unknown) => {
    assert.ok(error instanceof PodStateError, `expected a PodStateError, got ${String(error)}`);
    assert.equal(error.message, message);
    return true;
  });
}

const userVersion = (path: string): number => {
  const db = openSqlite(path, { readonly: true });
  try {
    return db.pragma("user_version") as number;
  } finally {
    db.close();
  }
};

describe("podipam/state", () => {
  let root: string;
  before(() => {
    root = mkdtempSync(join(tmpdir(), "trellis-podstate-"));
  });
  after(() => {
    rmSync(root, { recursive: true, force: true });
  });

  it("creates a fresh database at the current schema version, making missing parents", () => {
    // Catches: only the last level created, or a fresh file left at user_version 0 (migrated again on every open).
    const dir = join(root, "fresh", "a", "b");
    openPodState(dir).close();
    assert.equal(userVersion(join(dir, "state.db")), SCHEMA_VERSION);
    const again = openPodState(dir);
    assert.deepEqual(listAllAttachments(again), []);
    again.close();
  });

  it("migrates a version-1 database: rows kept, attachments ready, leases keep their owners, cursors restart", () => {
    // "later" is inserted first: the migrated ids must still follow created_at.
    // Catches: a v1 file treated as fresh (CREATE TABLE fails or rows vanish), leases whose owner is
    // lost (their addresses would leak forever), v1 attachments left `adding` (GC would take them
    // for ADDs killed half-way and tear down running pods), user_version not bumped.
    const dir = join(root, "v1");
    mkdirSync(dir);
    const old = openSqlite(join(dir, "state.db"));
    old.exec(SCHEMA_V1);
    old.exec("PRAGMA user_version = 1");
    const attach = old.prepare("INSERT INTO attachments (network, container_id, ifname, host_ifname, netns, created_at) VALUES (?, ?, ?, ?, ?, ?)");
    attach.run("net", "later", "eth0", "trvbbbbbbbbbbbb", "/var/run/netns/later", 2000);
    attach.run("net", "first", "eth0", "trvaaaaaaaaaaaa", "/var/run/netns/first", 1000);
    const lease = old.prepare("INSERT INTO leases (network, address, range_set, container_id, ifname) VALUES (?, ?, ?, ?, ?)");
    lease.run("net", "10.244.1.2", 0, "first", "eth0");
    lease.run("net", "fd00:10:244:1::2", 1, "first", "eth0");
    lease.run("net", "10.244.1.3", 0, "later", "eth0");
    old.prepare("INSERT INTO cursors (network, range_set, last_address) VALUES (?, ?, ?)").run("net", 0, "10.244.1.3");
    old.close();

    const db = openPodState(dir);
    try {
      assert.equal(db.pragma("user_version"), 2);
      assert.deepEqual(
        listAllAttachments(db).map(({ id, ...rest }) => ({ ...rest, idIsNumber: typeof id === "number" })),
        [
          {
            network: "net", containerId: "first", ifname: "eth0", state: "ready", owner: "", hostIfname: "trvaaaaaaaaaaaa",
            netns: "/var/run/netns/first", bridge: "", spec: { addresses: [], hairpin: false, masquerade: undefined }, createdAt: 1000, idIsNumber: true,
          },
          {
            network: "net", containerId: "later", ifname: "eth0", state: "ready", owner: "", hostIfname: "trvbbbbbbbbbbbb",
            netns: "/var/run/netns/later", bridge: "", spec: { addresses: [], hairpin: false, masquerade: undefined }, createdAt: 2000, idIsNumber: true,
          },
        ],
      );
      assert.deepEqual(listLeases(db, "net"), [
        { address: "10.244.1.2", rangeSet: "", containerId: "first", ifname: "eth0" },
        { address: "10.244.1.3", rangeSet: "", containerId: "later", ifname: "eth0" },
        { address: "fd00:10:244:1::2", rangeSet: "", containerId: "first", ifname: "eth0" },
      ]);
      assert.deepEqual(db.prepare("SELECT * FROM cursors").all(), []);
      // The migrated leases still block their addresses for new pods.
      const set: PodIpRangeSet = [{ subnet: parsePrefix("10.244.1.0/24"), start: parseIp("10.244.1.2"), end: parseIp("10.244.1.4"), gateway: parseIp("10.244.1.1") }];
      const [fresh] = allocatePodIps(db, { network: "net", containerId: "new", ifname: "eth0" }, [set], []);
      assert.deepEqual(fresh.address, parseIp("10.244.1.4"));
    } finally {
      db.close();
    }
    const reopened = openPodState(dir);
    assert.equal(listAllAttachments(reopened).length, 2, "a second open migrates nothing again");
    reopened.close();
  });

  it("refuses a database from a newer schema, naming the file and both versions, and leaves it untouched", () => {
    // Catches: a newer file "migrated" down (or its tables dropped) by an older trellis after a rollback.
    const dir = join(root, "v3");
    mkdirSync(dir);
    const path = join(dir, "state.db");
    const newer = openSqlite(path);
    newer.exec("CREATE TABLE future (x TEXT); INSERT INTO future VALUES ('kept');");
    newer.exec("PRAGMA user_version = 3");
    newer.close();
    assertRefused(
      () => openPodState(dir),
      `node state ${path} has schema version 3, newer than this trellis understands (2): run the trellis that wrote it, or a newer one`,
    );
    assert.equal(userVersion(path), 3);
    const check = openSqlite(path, { readonly: true });
    assert.deepEqual(check.prepare<[], { x: string }>("SELECT x FROM future").all().map((row) => row.x), ["kept"]);
    assert.deepEqual(check.prepare<[], { name: string }>("SELECT name FROM sqlite_master WHERE type = 'table'").all().map((row) => row.name), ["future"]);
    check.close();
  });

  it("refuses a dataDir under /proc promptly, naming the field", { timeout: 15_000 }, async () => {
    // Catches: the old mkdirSync(dir, { recursive: true }), which spins forever under /proc. A
    // synchronous spin would also block this test's own timeout, so the call runs in a child
    // process that is killed after 5 s.
    const code = [
      `import { openPodState } from ${JSON.stringify(join(import.meta.dirname, "state.ts"))};`,
      `try { openPodState("/proc/trellis-test/x", "ipam.dataDir"); console.log(JSON.stringify({ opened: true })); }`,
      `catch (error) { console.log(JSON.stringify({ name: error.constructor.name, message: error.message })); }`,
    ].join("\n");
    const started = Date.now();
    let stdout: string;
    try {
      ({ stdout } = await execFileAsync(process.execPath, ["--import", "tsx", "--input-type=module", "-e", code], {
        cwd: join(import.meta.dirname, "..", ".."),
        timeout: 5000,
        killSignal: "SIGKILL",
      }));
    } catch (error) {
      assert.fail(`openPodState("/proc/trellis-test/x") did not return within 5 s (${Date.now() - started} ms): ${(error as Error).message}`);
    }
    assert.deepEqual(JSON.parse(stdout), {
      name: "PodStateError",
      message: "ipam.dataDir /proc/trellis-test/x is under /proc, a kernel filesystem that cannot hold the node state",
    });
  });

  it("refuses a dataDir that is a regular file, naming it", () => {
    // Catches: a raw ENOTDIR/EEXIST from SQLite or mkdir that names neither the field nor the file.
    const file = join(root, "a-file");
    writeFileSync(file, "not a directory");
    assertRefused(() => openPodState(file, "ipam.dataDir"), `ipam.dataDir ${file} cannot hold the node state: ${file} is not a directory`);
  });

  it("refuses a dataDir whose parent is a regular file, naming the file", () => {
    const file = join(root, "another-file");
    writeFileSync(file, "not a directory");
    const dir = join(file, "state");
    assertRefused(() => openPodState(dir, "stateDir"), `stateDir ${dir} cannot hold the node state: ${file} is not a directory`);
  });

  it("refuses a relative dataDir", () => {
    // Catches: a path resolved against whatever directory the runtime started the plugin in.
    assertRefused(() => openPodState("var/lib/cni/trellis"), 'ipam.dataDir "var/lib/cni/trellis" is not an absolute path');
  });
});
