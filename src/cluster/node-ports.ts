/**
 * NodePorts, as kube-apiserver allocates them (KEP-3668): the range splits at
 * `offset = min(max(16, size/32), 128)` (0 when size <= 16); ports first … first+offset-1 are
 * the static band, left to requested ports as long as possible. Dynamic allocation starts at a
 * random port of the upper band, scans up with wrap-around, then does the same in the static
 * band. With 30000-32767 the static band is 30000-30085.
 */
import { formatNodePortRange, type ClusterPlan, type NodePortRange } from "../plan/plan.js";
import { nodePortCount } from "../plan/capacity.js";
import type { KvOperation, KvReader, KvStore } from "../store/kv.js";
import {
  claimSlot,
  findFreeAt,
  findFreeFrom,
  heldBy,
  initialRunOperations,
  ownerOf,
  randomBelow,
  releaseIndex,
  type IndexBand,
  type TxnFragment,
} from "./free-runs.js";

const ITEM_PREFIX = "/ranges/servicenodeports/";

export interface NodePortBands {
  readonly range: NodePortRange;
  readonly offset: number;
  readonly staticBand: IndexBand;
  readonly dynamicBand: IndexBand;
}

export function nodePortOffset(range: NodePortRange): number {
  const size = Number(nodePortCount(range));
  if (size <= 16) return 0;
  return Math.min(Math.max(16, Math.floor(size / 32)), 128);
}

export function nodePortKey(port: number): string {
  return ITEM_PREFIX + String(port);
}

export function nodePortBands(plan: ClusterPlan): NodePortBands {
  const range = plan.nodePortRange;
  const offset = nodePortOffset(range);
  const itemKey = (index: bigint): string => nodePortKey(Number(index));
  return {
    range,
    offset,
    staticBand: { runPrefix: "/ranges/servicenodeports-free/static/", first: BigInt(range.first), last: BigInt(range.first + offset - 1), itemKey },
    dynamicBand: { runPrefix: "/ranges/servicenodeports-free/dynamic/", first: BigInt(range.first + offset), last: BigInt(range.last), itemKey },
  };
}

export function nodePortInitOperations(plan: ClusterPlan): KvOperation[] {
  const bands = nodePortBands(plan);
  return [...initialRunOperations(bands.staticBand, []), ...initialRunOperations(bands.dynamicBand, [])];
}

export interface ClaimedPort {
  readonly port: number;
  readonly fragment: TxnFragment;
}

/** Picks `requested` or a free port for `owner`; throws when it cannot. */
export async function claimNodePort(store: KvReader, plan: ClusterPlan, requested: number | undefined, owner: string): Promise<ClaimedPort> {
  const bands = nodePortBands(plan);
  const value = JSON.stringify({ owner });
  const rangeText = formatNodePortRange(bands.range);
  if (requested !== undefined) {
    checkNodePortInRange(plan, requested);
    const band = requested < bands.range.first + bands.offset ? bands.staticBand : bands.dynamicBand;
    const slot = await findFreeAt(store, band, BigInt(requested));
    if (!slot) {
      const holder = await store.get(nodePortKey(requested));
      const by = holder ? ` to service ${ownerOf(holder)}` : "";
      throw new Error(`NodePort ${requested} is already allocated${by}`);
    }
    return { port: requested, fragment: claimSlot(band, slot, value) };
  }
  for (const band of [bands.dynamicBand, bands.staticBand]) {
    if (band.first > band.last) continue;
    const slot = await findFreeFrom(store, band, band.first + randomBelow(band.last - band.first + 1n));
    if (slot) return { port: Number(slot.index), fragment: claimSlot(band, slot, value) };
  }
  throw new Error(`NodePort range ${rangeText} is full: all ${nodePortCount(bands.range)} ports are allocated`);
}

export function checkNodePortInRange(plan: ClusterPlan, port: number): void {
  const range = plan.nodePortRange;
  if (!Number.isInteger(port) || port < range.first || port > range.last) {
    throw new Error(`NodePort ${port} is outside the NodePort range ${formatNodePortRange(range)}: request a port from ${range.first} to ${range.last}`);
  }
}

/** Frees `port` if `owner` holds it; undefined when it does not. */
export async function releaseNodePort(store: KvReader, plan: ClusterPlan, port: number, owner: string): Promise<TxnFragment | undefined> {
  const bands = nodePortBands(plan);
  if (port < bands.range.first || port > bands.range.last) return undefined;
  const band = port < bands.range.first + bands.offset ? bands.staticBand : bands.dynamicBand;
  return releaseIndex(store, band, BigInt(port), heldBy(owner));
}
