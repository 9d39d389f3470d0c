/**
 * Pod IP allocation inside a node's pod ranges, in host-local's configuration shape: a list
 * of range sets, one address from each. Leases live in the node state database, keyed by the
 * range set itself (not its position, which moves when ranges are reordered or prepended);
 * callers run these functions inside one transaction with the attachment record.
 */
import {
  formatIp, formatPrefix, prefixContains, sameIp, tryParseIp, type IpAddress, type IpPrefix,
} from "../net/ip.js";
import type { SqliteDatabase } from "../store/sqlite.js";
import type { AttachmentKey } from "./attachments.js";

export interface PodIpRange {
  readonly subnet: IpPrefix;
  readonly start: IpAddress;
  readonly end: IpAddress;
  readonly gateway: IpAddress;
}

/** Ranges of one family; an attachment gets one address from each set. */
export type PodIpRangeSet = readonly PodIpRange[];

export interface PodIpLease {
  readonly address: IpAddress;
  readonly subnet: IpPrefix;
  readonly gateway: IpAddress;
  /** `rangeSetKey` of the set the address came from. */
  readonly rangeSet: string;
}

export type PodIpErrorKind = "exhausted" | "unavailable" | "duplicate";

export class PodIpError extends Error {
  constructor(
    readonly kind: PodIpErrorKind,
    message: string,
  ) {
    super(message);
  }
}

export function describeRangeSet(set: PodIpRangeSet): string {
  return set.map((range) => `${formatIp(range.start)}-${formatIp(range.end)}`).join(", ");
}

/** How a range set is known in the state: its ranges in address order, so reordering the config changes nothing. */
export function rangeSetKey(set: PodIpRangeSet): string {
  return describeRangeSet([...set].sort((a, b) => (a.start.value < b.start.value ? -1 : a.start.value > b.start.value ? 1 : 0)));
}

/**
 * Leases one address per range set to the attachment: the requested address where one falls
 * in the set, otherwise the next free one after the set's last lease (round robin, wrapping).
 * No range's gateway is ever leased, whichever range or set it falls in.
 */
export function allocatePodIps(
  db: SqliteDatabase,
  owner: AttachmentKey,
  sets: readonly PodIpRangeSet[],
  requested: readonly IpAddress[],
): PodIpLease[] {
  const unplaced = requested.filter((ip) => !sets.some((set) => findRange(set, ip)));
  if (unplaced.length > 0) {
    throw new PodIpError(
      "unavailable",
      `requested IP ${formatIp(unplaced[0])} is outside every range (${sets.map(describeRangeSet).join("; ")})`,
    );
  }
  const held = db
    .prepare("SELECT address, range_set FROM leases WHERE network = ? AND container_id = ? AND ifname = ?")
    .all(owner.network, owner.containerId, owner.ifname) as Array<{ address: string; range_set: string }>;
  if (held.length > 0) {
    throw new PodIpError(
      "duplicate",
      `container ${owner.containerId} interface ${owner.ifname} already holds ${held.map((row) => row.address).join(", ")} in network ${owner.network}: duplicate allocation is not allowed`,
    );
  }
  const gateways = new Map(sets.flat().map((range) => [formatIp(range.gateway), range.subnet]));
  return sets.map((set) => {
    const wanted = requested.filter((ip) => findRange(set, ip));
    if (wanted.length > 1) {
      throw new PodIpError("unavailable", `requested IPs ${wanted.map(formatIp).join(" and ")} both fall in range set ${describeRangeSet(set)}; one address per set is allowed`);
    }
    const address = wanted.length === 1 ? claimRequested(db, owner, set, gateways, wanted[0]) : claimNext(db, owner, set, gateways);
    const range = findRange(set, address)!;
    return { address, subnet: range.subnet, gateway: range.gateway, rangeSet: rangeSetKey(set) };
  });
}

/** Removes every lease the attachment holds; returns the released addresses. */
export function releasePodIps(db: SqliteDatabase, owner: AttachmentKey): string[] {
  const rows = db
    .prepare("DELETE FROM leases WHERE network = ? AND container_id = ? AND ifname = ? RETURNING address")
    .all(owner.network, owner.containerId, owner.ifname) as Array<{ address: string }>;
  return rows.map((row) => row.address);
}

export function leasesOf(db: SqliteDatabase, owner: AttachmentKey): string[] {
  const rows = db
    .prepare("SELECT address FROM leases WHERE network = ? AND container_id = ? AND ifname = ? ORDER BY rowid")
    .all(owner.network, owner.containerId, owner.ifname) as Array<{ address: string }>;
  return rows.map((row) => row.address);
}

export interface LeaseRow {
  readonly address: string;
  readonly rangeSet: string;
  readonly containerId: string;
  readonly ifname: string;
}

export function listLeases(db: SqliteDatabase, network: string): LeaseRow[] {
  const rows = db
    .prepare("SELECT address, range_set, container_id, ifname FROM leases WHERE network = ? ORDER BY range_set, address")
    .all(network) as Array<{ address: string; range_set: string; container_id: string; ifname: string }>;
  return rows.map((row) => ({ address: row.address, rangeSet: row.range_set, containerId: row.container_id, ifname: row.ifname }));
}

/** Removes leases whose attachment record is gone (left by hand edits or an older schema); returns their addresses. */
export function releaseOrphanLeases(db: SqliteDatabase, network: string): string[] {
  const rows = db
    .prepare(
      "DELETE FROM leases WHERE network = ? AND NOT EXISTS (SELECT 1 FROM attachments a WHERE a.network = leases.network AND a.container_id = leases.container_id AND a.ifname = leases.ifname) RETURNING address",
    )
    .all(network) as Array<{ address: string }>;
  return rows.map((row) => row.address);
}

/** Every range's gateway, by address, with the subnet it serves. */
type Gateways = ReadonlyMap<string, IpPrefix>;

function claimRequested(db: SqliteDatabase, owner: AttachmentKey, set: PodIpRangeSet, gateways: Gateways, ip: IpAddress): IpAddress {
  const gatewayOf = gateways.get(formatIp(ip));
  if (gatewayOf) throw new PodIpError("unavailable", `requested IP ${formatIp(ip)} is the gateway of ${formatPrefix(gatewayOf)}`);
  const holder = db.prepare("SELECT container_id, ifname FROM leases WHERE network = ? AND address = ?").get(owner.network, formatIp(ip)) as
    | { container_id: string; ifname: string }
    | undefined;
  if (holder) {
    throw new PodIpError("unavailable", `requested IP ${formatIp(ip)} is already leased to container ${holder.container_id} interface ${holder.ifname}`);
  }
  insertLease(db, owner, set, ip);
  return ip;
}

function claimNext(db: SqliteDatabase, owner: AttachmentKey, set: PodIpRangeSet, gateways: Gateways): IpAddress {
  const cursor = db.prepare("SELECT last_address FROM cursors WHERE network = ? AND range_set = ?").get(owner.network, rangeSetKey(set)) as
    | { last_address: string }
    | undefined;
  const taken = db.prepare("SELECT 1 FROM leases WHERE network = ? AND address = ?");
  const last = cursor ? tryParseIp(cursor.last_address) : undefined;
  for (const candidate of candidatesAfter(set, last)) {
    const text = formatIp(candidate);
    if (gateways.has(text) || taken.get(owner.network, text)) continue;
    insertLease(db, owner, set, candidate);
    return candidate;
  }
  throw new PodIpError("exhausted", `no IP addresses available in range set ${describeRangeSet(set)} of network ${owner.network}`);
}

function insertLease(db: SqliteDatabase, owner: AttachmentKey, set: PodIpRangeSet, ip: IpAddress): void {
  const address = formatIp(ip);
  const key = rangeSetKey(set);
  db.prepare("INSERT INTO leases (network, address, range_set, container_id, ifname) VALUES (?, ?, ?, ?, ?)").run(
    owner.network,
    address,
    key,
    owner.containerId,
    owner.ifname,
  );
  db.prepare("INSERT INTO cursors (network, range_set, last_address) VALUES (?, ?, ?) ON CONFLICT (network, range_set) DO UPDATE SET last_address = excluded.last_address").run(
    owner.network,
    key,
    address,
  );
}

/** Every usable address of the set once, starting just after `last` (or at the start), wrapping. */
function* candidatesAfter(set: PodIpRangeSet, last: IpAddress | undefined): Generator<IpAddress> {
  let rangeIndex = last ? set.findIndex((range) => inRange(range, last)) : -1;
  let next = rangeIndex >= 0 ? last!.value + 1n : set[0].start.value;
  if (rangeIndex < 0) rangeIndex = 0;
  const family = set[0].subnet.family;
  const total = set.reduce((sum, range) => sum + range.end.value - range.start.value + 1n, 0n) + BigInt(set.length) + 1n;
  for (let visited = 0n; visited <= total; visited++) {
    const range = set[rangeIndex];
    if (next > range.end.value) {
      rangeIndex = (rangeIndex + 1) % set.length;
      next = set[rangeIndex].start.value;
      continue;
    }
    const candidate = { family, value: next };
    next++;
    yield candidate;
  }
}

function findRange(set: PodIpRangeSet, ip: IpAddress): PodIpRange | undefined {
  return set.find((range) => inRange(range, ip));
}

function inRange(range: PodIpRange, ip: IpAddress): boolean {
  return prefixContains(range.subnet, ip) && ip.value >= range.start.value && ip.value <= range.end.value;
}
