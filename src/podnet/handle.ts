/**
 * The attach engine's long-lived handle on one node state directory: the state database, the
 * per-attachment locks, the node-wide lock for shared kernel objects, and the test fault points.
 */
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { dirname, join, normalize } from "node:path";
import { NftBatchWriter } from "../linux/nft-netlink.js";
import { nftApply } from "../linux/nftables.js";
import type { Op } from "../nft/model.js";
import { renderOps } from "../nft/text.js";
import { DEFAULT_STATE_DIR, openPodState, PodStateError } from "../podipam/state.js";
import { openSqlite, sqliteResult, type SqliteDatabase } from "../store/sqlite.js";
import { CniCode, CniError } from "./errors.js";
import { keyedMutex, type KeyedMutex } from "./locks.js";

/** Steps of ADD, DEL and GC at which a test can have the process kill itself (see `faultPoint`). */
export type FaultPoint = "add-reserved" | "add-host-side" | "add-pod-side" | "add-committed" | "del-unlinked" | "gc-released";

export const FAULT_POINTS: readonly FaultPoint[] = ["add-reserved", "add-host-side", "add-pod-side", "add-committed", "del-unlinked", "gc-released"];

export interface PodNetOptions {
  /** The configuration key the directory came from, for messages. */
  readonly field?: string;
  /** Kill this process with SIGKILL when the named step is reached: proves what a crash there leaves. */
  readonly faultPoint?: FaultPoint;
  /**
   * The netlink writer for the hostPort and masquerade tables (`trellis-nft-batch`); by default
   * the one beside this executable, when it is there, else tables are written with `nft -f`
   * (which reads the whole namespace first: 0.6 s beside 10,000 Services).
   */
  readonly nftWriter?: string;
}

export interface PodNet {
  readonly stateDir: string;
  readonly db: SqliteDatabase;
  /** Calls for one attachment run one after another. */
  readonly attachments: KeyedMutex;
  /** Records whose ADD this process is running now. */
  readonly adding: Set<number>;
  /** The nftables table holding this state directory's masquerade chains. */
  readonly masqueradeTable: string;
  readonly faultPoint?: FaultPoint;
  /** The netlink writer, started on first use and ended by close(); undefined when there is none. */
  readonly nftWriter?: NftBatchWriter;
  close(): void;
}

const nodeLocks = keyedMutex();
const lockConnections = new WeakMap<PodNet, SqliteDatabase>();

/** Opens the handle; a state directory that cannot hold the state is a code-104 error naming it. */
export function openPodNet(stateDir: string, options: PodNetOptions = {}): PodNet {
  let db: SqliteDatabase;
  try {
    db = openPodState(stateDir, options.field);
  } catch (error) {
    if (error instanceof PodStateError) throw new CniError(CniCode.stateFailure, error.message);
    throw error;
  }
  const net: PodNet = {
    stateDir,
    db,
    attachments: keyedMutex(),
    adding: new Set(),
    masqueradeTable: masqueradeTableName(stateDir),
    faultPoint: options.faultPoint,
    nftWriter: writerAt(options.nftWriter ?? join(dirname(process.execPath), "trellis-nft-batch")),
    close: () => {
      net.nftWriter?.close();
      lockConnections.get(net)?.close();
      db.close();
    },
  };
  return net;
}

/**
 * Runs `task` holding the node-wide lock of this state directory: in this process a mutex, across
 * processes SQLite's write lock on a lock file beside the state (never the state file itself,
 * whose writers would then wait on a holder that waits for them). Shared kernel objects (the
 * masquerade table) change only under it, after re-reading what the state wants. The lock is
 * polled rather than waited for, so a server's other requests keep running meanwhile.
 */
export async function withNodeLock<T>(net: PodNet, task: () => Promise<T>): Promise<T> {
  return nodeLocks.run(net.stateDir, async () => {
    let lock = lockConnections.get(net);
    if (!lock) {
      // Opening (its switch to WAL) waits out other processes like any open; only taking the
      // lock is polled, so that waits for nobody.
      lock = openSqlite(join(net.stateDir, "node-lock.db"));
      lock.exec("PRAGMA busy_timeout = 0");
      lockConnections.set(net, lock);
    }
    await acquire(lock);
    try {
      return await task();
    } finally {
      lock.exec("COMMIT");
    }
  });
}

const LOCK_WAIT_MS = 60_000;

async function acquire(lock: SqliteDatabase): Promise<void> {
  const deadline = Date.now() + LOCK_WAIT_MS;
  for (let pause = 1; ; pause = Math.min(pause * 2, 20)) {
    try {
      lock.exec("BEGIN IMMEDIATE");
      return;
    } catch (error) {
      // SQLITE_BUSY, or an extended form of it (SQLITE_BUSY_RECOVERY while another process
      // recovers the new lock file's WAL).
      if (sqliteResult(error) !== "SQLITE_BUSY") throw error;
      if (Date.now() > deadline) throw new CniError(CniCode.tryAgainLater, `the node lock of ${lock.path} has been held for over ${LOCK_WAIT_MS / 1000} s`);
      await new Promise((resolve) => setTimeout(resolve, pause));
    }
  }
}

export function reachFaultPoint(net: PodNet, point: FaultPoint): void {
  if (net.faultPoint === point) process.kill(process.pid, "SIGKILL");
}

/** One table per state directory, so two directories on a node never rewrite each other's chains. */
/** One transaction on the node's nftables: through the handle's netlink writer when it has one, else `nft -f`. */
export async function writeNft(net: PodNet, ops: readonly Op[]): Promise<void> {
  if (net.nftWriter) await net.nftWriter.applyOps(ops);
  else await nftApply(renderOps(ops));
}

function writerAt(path: string): NftBatchWriter | undefined {
  return existsSync(path) ? new NftBatchWriter(path) : undefined;
}

function masqueradeTableName(stateDir: string): string {
  const dir = normalize(stateDir).replace(/\/+$/, "");
  if (dir === DEFAULT_STATE_DIR) return "trellis-cni";
  return `trellis-cni-${createHash("sha256").update(dir).digest("hex").slice(0, 8)}`;
}
