/**
 * The free index of one allocation band, kept in the store so that finding, taking and giving
 * back an item costs a few bounded reads and one transaction however full the band is.
 *
 * A band is a range of integer indices (addresses past a network address, block numbers, ports).
 * Each allocated index has an item key (its owner), as KEP-1880's IPAddress objects do. Each
 * maximal run of free indices has a run key named by the run's last index in fixed-width hex,
 * so "the first free index at or after i" is the first run key >= i: the linear scan Kubernetes'
 * allocators do over their bitmaps, without visiting taken indices one by one.
 *
 * Every read covers a bounded key range. etcd (before 3.7) visits every key between a range's
 * start and end even when asked for one (it counts them; etcd-io/etcd#11057), so "first key
 * >= i up to the band's end" would cost as much as there are runs after i. Instead a search
 * looks for a run ending in the next WINDOW indices, and at the same time in a second index
 * that holds only the runs of WINDOW indices or more (few: at most size/WINDOW). A free index
 * either lies in a run ending within the window or in a long run; when neither holds, the scan
 * gallops over windows that double in size, which are empty of keys up to the one it stops in.
 *
 * The functions here only read; taking and giving back return the compares and operations for
 * the caller's transaction, so one transaction can take items from several bands at once
 * (dual-stack, a ClusterIP with its NodePort) and is all or nothing. Every run or item a
 * decision rests on is compared, so a concurrent change makes the transaction fail and the
 * caller retries from fresh reads.
 */
import { randomBytes, randomInt } from "node:crypto";
import type { KvCompare, KvEntry, KvOperation, KvReader, KvStore, KvTxn } from "../store/kv.js";

export interface IndexBand {
  /** Where this band's run keys live; ends in "/". */
  readonly runPrefix: string;
  /** Inclusive bounds; first > last is an empty band. */
  readonly first: bigint;
  readonly last: bigint;
  readonly itemKey: (index: bigint) => string;
}

export interface FreeRun {
  readonly start: bigint;
  readonly end: bigint;
  /** The key read for this run (its run key, or its long-run key) and its revision: what a change compares. */
  readonly readKey: string;
  readonly modRevision: number;
}

export interface FreeSlot {
  readonly index: bigint;
  readonly run: FreeRun;
}

/** Part of a transaction: the same shape as a whole one, merged by the caller. */
export type TxnFragment = KvTxn;

export interface IndexInterval {
  readonly first: bigint;
  readonly last: bigint;
}

/** Runs this long or longer are also in the long-run index; searches read this many indices ahead. */
export const WINDOW = 256n;
const HEX_WIDTH = 32;

export function runKey(band: IndexBand, end: bigint): string {
  return band.runPrefix + hex(end);
}

/** Sibling of the run prefix: `…/dynamic/` has its long runs under `…/dynamic-long/`. */
export function longRunPrefix(band: IndexBand): string {
  return `${band.runPrefix.slice(0, -1)}-long/`;
}

export function longRunKey(band: IndexBand, end: bigint): string {
  return longRunPrefix(band) + hex(end);
}

/** The run keys of a band with nothing allocated but `taken` (intervals never handed out, or taken at once). */
export function initialRunOperations(band: IndexBand, taken: readonly IndexInterval[]): KvOperation[] {
  return freeIntervals(band, taken).flatMap((run) => putRun(band, run.first, run.last));
}

/** [first, last] minus the taken intervals, in order. */
export function freeIntervals(band: IndexInterval, taken: readonly IndexInterval[]): IndexInterval[] {
  const sorted = [...taken].sort((a, b) => (a.first < b.first ? -1 : a.first > b.first ? 1 : 0));
  const free: IndexInterval[] = [];
  let next = band.first;
  for (const interval of sorted) {
    const first = interval.first < band.first ? band.first : interval.first;
    const last = interval.last > band.last ? band.last : interval.last;
    if (first > last) continue;
    if (first > next) free.push({ first: next, last: first - 1n });
    if (last + 1n > next) next = last + 1n;
  }
  if (next <= band.last) free.push({ first: next, last: band.last });
  return free;
}

/** The first free index at or after `start`, wrapping around to the band's first free index. */
export async function findFreeFrom(store: KvReader, band: IndexBand, start: bigint): Promise<FreeSlot | undefined> {
  const from = start < band.first || start > band.last ? band.first : start;
  const run = (await firstRunFrom(store, band, from)) ?? (from > band.first ? await firstRunFrom(store, band, band.first) : undefined);
  if (!run) return undefined;
  return { index: run.start > from || run.end < from ? run.start : from, run };
}

/** The slot for exactly `index`, or undefined when it is not free. */
export async function findFreeAt(store: KvReader, band: IndexBand, index: bigint): Promise<FreeSlot | undefined> {
  if (index < band.first || index > band.last) return undefined;
  const { near, long } = await lookAhead(store, band, index);
  const run = near ?? long;
  return run && run.start <= index && run.end >= index ? { index, run } : undefined;
}

/** Takes the slot's index for an item holding `value`. */
export function claimSlot(band: IndexBand, slot: FreeSlot, value: string): TxnFragment {
  const { index, run } = slot;
  const operations: KvOperation[] = [];
  if (index > run.start) operations.push(...putRun(band, run.start, index - 1n));
  if (index < run.end) {
    operations.push(...putRun(band, index + 1n, run.end));
    if (isLong(index + 1n, run.end) !== isLong(run.start, run.end)) operations.push({ type: "delete", key: longRunKey(band, run.end) });
  } else {
    operations.push(...deleteRun(band, run));
  }
  operations.push({ type: "put", key: band.itemKey(index), value });
  return {
    compares: [
      { key: run.readKey, modRevision: run.modRevision },
      { key: band.itemKey(index), modRevision: 0 },
    ],
    operations,
  };
}

/**
 * Gives back `index` if its item satisfies `held` (the caller's owner check), merging it with
 * free neighbours; undefined when it is not held so.
 */
export async function releaseIndex(store: KvReader, band: IndexBand, index: bigint, held: (item: KvEntry) => boolean): Promise<TxnFragment | undefined> {
  const hasLeft = index > band.first;
  const hasRight = index < band.last;
  // Every read this may need, at once, so that they travel in one round trip.
  const [item, leftEntry, leftItem, right, rightItem] = await Promise.all([
    store.get(band.itemKey(index)),
    hasLeft ? store.get(runKey(band, index - 1n)) : undefined,
    hasLeft ? store.get(band.itemKey(index - 1n)) : undefined,
    hasRight ? lookAhead(store, band, index + 1n) : undefined,
    hasRight ? store.get(band.itemKey(index + 1n)) : undefined,
  ]);
  if (!item || !held(item)) return undefined;
  const compares: KvCompare[] = [{ key: item.key, modRevision: item.modRevision }];
  const operations: KvOperation[] = [{ type: "delete", key: item.key }];
  let start = index;
  let end = index;
  if (hasLeft) {
    // With `index` taken, a free index-1 can only be the end of a run, keyed by it.
    if (leftEntry) {
      const run = toRun(leftEntry, band.runPrefix);
      compares.push({ key: run.readKey, modRevision: run.modRevision });
      operations.push(...deleteRun(band, run));
      start = run.start;
    } else {
      // Taken or never handed out: only its release could free it, and that changes its item.
      compares.push({ key: band.itemKey(index - 1n), modRevision: leftItem?.modRevision ?? 0 });
    }
  }
  if (hasRight) {
    // With `index` taken, a free index+1 can only start a run: one ending in the window, or a long one.
    const run = [right!.near, right!.long].find((candidate) => candidate?.start === index + 1n);
    if (run) {
      compares.push({ key: run.readKey, modRevision: run.modRevision });
      end = run.end;
    } else {
      compares.push({ key: band.itemKey(index + 1n), modRevision: rightItem?.modRevision ?? 0 });
    }
  }
  operations.push(...putRun(band, start, end));
  return { compares, operations };
}

/** Items hold `{"owner": …}`; this is the check releases pass. */
export function heldBy(owner: string): (item: KvEntry) => boolean {
  return (item) => ownerOf(item) === owner;
}

export function ownerOf(item: KvEntry): string | undefined {
  return (JSON.parse(item.value) as { owner?: string }).owner;
}

/** Free indices of a band: reads every run, so for tests, reports and exhaustion messages only. */
export async function countFree(store: KvReader, band: IndexBand): Promise<bigint> {
  return (await listRuns(store, band)).reduce((sum, run) => sum + run.end - run.start + 1n, 0n);
}

/** Every free run, in order (tests check the index against the items with it). */
export async function listRuns(store: KvReader, band: IndexBand): Promise<FreeRun[]> {
  return (await store.list(band.runPrefix)).entries.map((entry) => toRun(entry, band.runPrefix));
}

/** Every long-run entry, in order. */
export async function listLongRuns(store: KvReader, band: IndexBand): Promise<FreeRun[]> {
  return (await store.list(longRunPrefix(band))).entries.map((entry) => toRun(entry, longRunPrefix(band)));
}

/** A uniformly random integer in [0, n), n > 0. */
export function randomBelow(n: bigint): bigint {
  if (n <= 0xffffffffffffn) return BigInt(randomInt(Number(n)));
  const bytes = Math.ceil(n.toString(16).length / 2) + 8;
  // 64 spare random bits make the modulo bias negligible.
  return BigInt(`0x${randomBytes(bytes).toString("hex")}`) % n;
}

/** The first run ending at or after `from` (from inside the band), scanning up to the band's end. */
async function firstRunFrom(store: KvReader, band: IndexBand, from: bigint): Promise<FreeRun | undefined> {
  const { near, long } = await lookAhead(store, band, from);
  if (near) return near;
  if (long && long.start <= from) return long;
  // Nothing ends in the window and `from` is taken: the answer ends at or before the next long run's end.
  const limit = long ? long.end : band.last;
  let low = from + WINDOW;
  for (let width = WINDOW * 2n; low <= limit; width *= 2n) {
    const high = low + width - 1n < limit ? low + width - 1n : limit;
    const found = await store.list(band.runPrefix, { from: runKey(band, low), to: runKey(band, high + 1n), limit: 1 });
    if (found.entries.length > 0) return toRun(found.entries[0], band.runPrefix);
    low = high + 1n;
  }
  return long;
}

/** The first run ending in [from, from+WINDOW), and the first long run ending at or after `from`. */
async function lookAhead(store: KvReader, band: IndexBand, from: bigint): Promise<{ near?: FreeRun; long?: FreeRun }> {
  const [near, long] = await Promise.all([
    store.list(band.runPrefix, { from: runKey(band, from), to: runKey(band, from + WINDOW), limit: 1 }),
    store.list(longRunPrefix(band), { from: longRunKey(band, from), limit: 1 }),
  ]);
  return {
    near: near.entries.length > 0 ? toRun(near.entries[0], band.runPrefix) : undefined,
    long: long.entries.length > 0 ? toRun(long.entries[0], longRunPrefix(band)) : undefined,
  };
}

function isLong(start: bigint, end: bigint): boolean {
  return end - start + 1n >= WINDOW;
}

/** Writes the run [start, end]: its run key and, when long, its long-run key. */
function putRun(band: IndexBand, start: bigint, end: bigint): KvOperation[] {
  const operations: KvOperation[] = [{ type: "put", key: runKey(band, end), value: hex(start) }];
  if (isLong(start, end)) operations.push({ type: "put", key: longRunKey(band, end), value: hex(start) });
  return operations;
}

function deleteRun(band: IndexBand, run: FreeRun): KvOperation[] {
  const operations: KvOperation[] = [{ type: "delete", key: runKey(band, run.end) }];
  if (isLong(run.start, run.end)) operations.push({ type: "delete", key: longRunKey(band, run.end) });
  return operations;
}

function toRun(entry: KvEntry, prefix: string): FreeRun {
  const end = BigInt(`0x${entry.key.slice(prefix.length)}`);
  return { start: BigInt(`0x${entry.value}`), end, readKey: entry.key, modRevision: entry.modRevision };
}

function hex(value: bigint): string {
  return value.toString(16).padStart(HEX_WIDTH, "0");
}
