/**
 * Service ClusterIPs, as kube-apiserver allocates them (KEP-3070 bands over KEP-1880's one
 * object per address). Each service range splits at `offset = min(max(16, size/16), 256)`
 * (0 when size <= 16): the static band network+1 … network+offset is left to requested
 * addresses as long as possible; dynamic allocation starts at a random address of the upper
 * band, scans up with wrap-around, then does the same in the static band, else the range is full.
 * network+1 of the primary range belongs to the API server's own Service, default/kubernetes.
 */
import { familyName, formatIp, formatPrefix, prefixContains, prefixSize, type Family, type IpAddress, type IpPrefix } from "../net/ip.js";
import type { ClusterPlan } from "../plan/plan.js";
import { serviceIpCount } from "../plan/capacity.js";
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

export const KUBERNETES_SERVICE = "default/kubernetes";
const ITEM_PREFIX = "/ranges/serviceips/";

export interface ServiceIpRange {
  readonly cidr: IpPrefix;
  /** Usable addresses: all but the network address and, for IPv4, the broadcast address. */
  readonly size: bigint;
  readonly offset: bigint;
  /** network+1 … network+offset (empty when offset is 0). */
  readonly staticBand: IndexBand;
  /** network+offset+1 … the last usable address. */
  readonly dynamicBand: IndexBand;
}

/** KEP-3070's split point for a range of 2^h addresses. */
export function serviceRangeOffset(cidr: IpPrefix): bigint {
  const size = prefixSize(cidr);
  if (size <= 16n) return 0n;
  const offset = size / 16n;
  return offset < 16n ? 16n : offset > 256n ? 256n : offset;
}

export function serviceIpRanges(plan: ClusterPlan): ServiceIpRange[] {
  return plan.serviceCidrs.map((cidr) => {
    const size = serviceIpCount(cidr);
    const offset = serviceRangeOffset(cidr);
    const name = formatPrefix(cidr);
    const itemKey = (index: bigint): string => serviceIpKey({ family: cidr.family, value: cidr.network + index });
    return {
      cidr,
      size,
      offset,
      staticBand: { runPrefix: `/ranges/serviceips-free/${name}/static/`, first: 1n, last: offset, itemKey },
      dynamicBand: { runPrefix: `/ranges/serviceips-free/${name}/dynamic/`, first: offset + 1n, last: size, itemKey },
    };
  });
}

export function serviceIpKey(ip: IpAddress): string {
  return ITEM_PREFIX + formatIp(ip);
}

/** The API server's own ClusterIP: network+1 of the primary service range. */
export function kubernetesServiceIp(plan: ClusterPlan): IpAddress {
  const primary = plan.serviceCidrs[0];
  return { family: primary.family, value: primary.network + 1n };
}

/** Empty free indexes, with the API server's ClusterIP taken. */
export function serviceIpInitOperations(plan: ClusterPlan): KvOperation[] {
  const kubernetes = kubernetesServiceIp(plan);
  return serviceIpRanges(plan).flatMap((range, i) => {
    const taken = i === 0 ? [{ first: 1n, last: 1n }] : [];
    const operations = [...initialRunOperations(range.staticBand, taken), ...initialRunOperations(range.dynamicBand, taken)];
    if (i === 0) operations.push({ type: "put", key: serviceIpKey(kubernetes), value: JSON.stringify({ owner: KUBERNETES_SERVICE }) });
    return operations;
  });
}

export function serviceIpRangeFor(plan: ClusterPlan, family: Family): ServiceIpRange | undefined {
  return serviceIpRanges(plan).find((range) => range.cidr.family === family);
}

export interface ClaimedIp {
  readonly ip: IpAddress;
  readonly fragment: TxnFragment;
}

/** Picks `requested` or a free address of the range for `owner`; throws when it cannot. */
export async function claimServiceIp(store: KvReader, range: ServiceIpRange, requested: IpAddress | undefined, owner: string): Promise<ClaimedIp> {
  const value = JSON.stringify({ owner });
  if (requested) {
    const index = checkRequestedIp(range, requested);
    const band = index <= range.offset ? range.staticBand : range.dynamicBand;
    const slot = await findFreeAt(store, band, index);
    if (!slot) {
      const holder = await store.get(serviceIpKey(requested));
      const by = holder ? ` to service ${ownerOf(holder)}` : "";
      throw new Error(`ClusterIP ${formatIp(requested)} is already allocated${by}`);
    }
    return { ip: requested, fragment: claimSlot(band, slot, value) };
  }
  for (const band of [range.dynamicBand, range.staticBand]) {
    if (band.first > band.last) continue;
    const slot = await findFreeFrom(store, band, band.first + randomBelow(band.last - band.first + 1n));
    if (slot) return { ip: { family: range.cidr.family, value: range.cidr.network + slot.index }, fragment: claimSlot(band, slot, value) };
  }
  throw new Error(`ClusterIP range ${formatPrefix(range.cidr)} is full: all ${range.size} ${familyName(range.cidr.family)} addresses are allocated`);
}

/** Frees `ip` if `owner` holds it; undefined when it does not (nothing to do). */
export async function releaseServiceIp(store: KvReader, plan: ClusterPlan, ip: IpAddress, owner: string): Promise<TxnFragment | undefined> {
  const range = serviceIpRanges(plan).find((candidate) => prefixContains(candidate.cidr, ip));
  if (!range) return undefined;
  const index = ip.value - range.cidr.network;
  return releaseIndex(store, index <= range.offset ? range.staticBand : range.dynamicBand, index, heldBy(owner));
}

/** The index of a requested address inside its range, or why it cannot be had. */
function checkRequestedIp(range: ServiceIpRange, ip: IpAddress): bigint {
  const index = ip.value - range.cidr.network;
  const usable = `its ClusterIPs go from ${formatIp({ family: ip.family, value: range.cidr.network + 1n })} to ${formatIp({ family: ip.family, value: range.cidr.network + range.size })}`;
  if (index === 0n) throw new Error(`ClusterIP ${formatIp(ip)} is the network address of service CIDR ${formatPrefix(range.cidr)}: ${usable}`);
  if (ip.family === 4 && index === prefixSize(range.cidr) - 1n) {
    throw new Error(`ClusterIP ${formatIp(ip)} is the broadcast address of service CIDR ${formatPrefix(range.cidr)}: ${usable}`);
  }
  return index;
}
