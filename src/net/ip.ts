/**
 * IP addresses and prefixes as bigints: parse strictly, format canonically (RFC 5952 for
 * IPv6), and do the range arithmetic every other part relies on.
 */
import ipaddr from "ipaddr.js";

export type Family = 4 | 6;

export interface IpAddress {
  readonly family: Family;
  readonly value: bigint;
}

/** A prefix in canonical form: host bits of `network` are zero. */
export interface IpPrefix {
  readonly family: Family;
  readonly network: bigint;
  readonly length: number;
}

/** An address with the prefix length it was written with, e.g. `10.244.1.5/24` on an interface. */
export interface IpInterfaceAddress {
  readonly address: IpAddress;
  readonly prefix: IpPrefix;
}

export function familyBits(family: Family): number {
  return family === 4 ? 32 : 128;
}

export function familyName(family: Family): "IPv4" | "IPv6" {
  return family === 4 ? "IPv4" : "IPv6";
}

/** Parses `10.1.2.3` or `fd00::1`; returns undefined for anything else (zones, short IPv4 forms). */
export function tryParseIp(text: string): IpAddress | undefined {
  if (typeof text !== "string" || text.includes("%")) return undefined;
  if (!text.includes(":")) return parseIpv4(text);
  // Parsed once; ipaddr.js throws on what is not an address (and the agent parses thousands a sync).
  try {
    return { family: 6, value: bytesToBigint(ipaddr.IPv6.parse(text).toByteArray()) };
  } catch {
    return undefined;
  }
}

const IPV4 = /^(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})$/;

/** Four decimal octets, no leading zeros (which some parsers read as octal). */
function parseIpv4(text: string): IpAddress | undefined {
  const match = IPV4.exec(text);
  if (!match) return undefined;
  let value = 0n;
  for (let i = 1; i <= 4; i++) {
    const octet = Number(match[i]);
    if (octet > 255) return undefined;
    value = (value << 8n) | BigInt(octet);
  }
  return { family: 4, value };
}

export function parseIp(text: string): IpAddress {
  const ip = tryParseIp(text);
  if (!ip) throw new Error(`invalid IP address ${JSON.stringify(text)}: expected IPv4 (10.0.0.1) or IPv6 (fd00::1)`);
  return ip;
}

/** Parses `ADDR/LEN`, keeping the address as written (host bits allowed). */
export function tryParseInterfaceAddress(text: string): IpInterfaceAddress | undefined {
  if (typeof text !== "string") return undefined;
  const slash = text.indexOf("/");
  if (slash < 0) return undefined;
  const address = tryParseIp(text.slice(0, slash));
  const lengthText = text.slice(slash + 1);
  if (!address || !/^(0|[1-9][0-9]{0,2})$/.test(lengthText)) return undefined;
  const length = Number(lengthText);
  if (length > familyBits(address.family)) return undefined;
  return { address, prefix: prefixOf(address, length) };
}

export function parseInterfaceAddress(text: string): IpInterfaceAddress {
  const parsed = tryParseInterfaceAddress(text);
  if (!parsed) throw new Error(`invalid CIDR ${JSON.stringify(text)}: expected ADDRESS/LENGTH such as 10.244.0.0/24 or fd00::/64`);
  return parsed;
}

/** Parses a CIDR and requires it to be canonical (no host bits set), naming the canonical form otherwise. */
export function parsePrefix(text: string): IpPrefix {
  const { address, prefix } = parseInterfaceAddress(text);
  if (address.value !== prefix.network) {
    throw new Error(`CIDR ${text} has host bits set: did you mean ${formatPrefix(prefix)}?`);
  }
  return prefix;
}

export function prefixOf(address: IpAddress, length: number): IpPrefix {
  const hostBits = BigInt(familyBits(address.family) - length);
  return { family: address.family, network: (address.value >> hostBits) << hostBits, length };
}

export function formatIp(ip: IpAddress): string {
  return ip.family === 4 ? formatIpv4(ip.value) : formatIpv6(ip.value);
}

/** `HOST:PORT`, an IPv6 address in brackets (`[fd00::2]:6443`), as URLs and socket addresses write it. */
export function formatHostPort(host: string, port: number): string {
  return host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
}

export function formatPrefix(prefix: IpPrefix): string {
  return `${formatIp({ family: prefix.family, value: prefix.network })}/${prefix.length}`;
}

/** Number of addresses in the prefix. */
export function prefixSize(prefix: IpPrefix): bigint {
  return 1n << BigInt(familyBits(prefix.family) - prefix.length);
}

export function firstAddress(prefix: IpPrefix): IpAddress {
  return { family: prefix.family, value: prefix.network };
}

/** The address `n` places after the network address (n may be negative to count from the end + 1). */
export function nthAddress(prefix: IpPrefix, n: bigint): IpAddress {
  const size = prefixSize(prefix);
  const offset = n < 0n ? size + n : n;
  if (offset < 0n || offset >= size) throw new RangeError(`offset ${n} is outside ${formatPrefix(prefix)}`);
  return { family: prefix.family, value: prefix.network + offset };
}

export function prefixContains(prefix: IpPrefix, ip: IpAddress): boolean {
  return ip.family === prefix.family && ip.value >= prefix.network && ip.value < prefix.network + prefixSize(prefix);
}

export function prefixContainsPrefix(outer: IpPrefix, inner: IpPrefix): boolean {
  return outer.family === inner.family && outer.length <= inner.length && prefixContains(outer, firstAddress(inner));
}

export function prefixesOverlap(a: IpPrefix, b: IpPrefix): boolean {
  return prefixContainsPrefix(a, b) || prefixContainsPrefix(b, a);
}

/** The `index`-th sub-prefix of length `length` inside `prefix`. */
export function subPrefix(prefix: IpPrefix, length: number, index: bigint): IpPrefix {
  if (length < prefix.length || length > familyBits(prefix.family)) {
    throw new RangeError(`cannot split ${formatPrefix(prefix)} into /${length} blocks`);
  }
  const count = 1n << BigInt(length - prefix.length);
  if (index < 0n || index >= count) throw new RangeError(`block ${index} is outside ${formatPrefix(prefix)} split into /${length}`);
  return { family: prefix.family, network: prefix.network + (index << BigInt(familyBits(prefix.family) - length)), length };
}

export function sameIp(a: IpAddress, b: IpAddress): boolean {
  return a.family === b.family && a.value === b.value;
}

/** The default route's destination for a family. */
export function defaultPrefix(family: Family): IpPrefix {
  return { family, network: 0n, length: 0 };
}

/** A closed range of addresses of one family, `first` to `last` inclusive. */
export interface IpInterval {
  readonly family: Family;
  readonly first: bigint;
  readonly last: bigint;
}

export function prefixInterval(prefix: IpPrefix): IpInterval {
  return { family: prefix.family, first: prefix.network, last: prefix.network + prefixSize(prefix) - 1n };
}

/** The union of intervals as sorted, disjoint, non-adjacent intervals (IPv4 before IPv6). */
export function mergeIntervals(intervals: readonly IpInterval[]): IpInterval[] {
  const sorted = [...intervals].sort((a, b) => a.family - b.family || (a.first < b.first ? -1 : a.first > b.first ? 1 : 0));
  const merged: IpInterval[] = [];
  for (const interval of sorted) {
    const last = merged[merged.length - 1];
    if (last && last.family === interval.family && interval.first <= last.last + 1n) {
      if (interval.last > last.last) merged[merged.length - 1] = { ...last, last: interval.last };
    } else {
      merged.push(interval);
    }
  }
  return merged;
}

/** `intervals` less the addresses of `cut`. */
export function subtractInterval(intervals: readonly IpInterval[], cut: IpInterval): IpInterval[] {
  return intervals.flatMap((interval) => {
    if (interval.family !== cut.family || interval.last < cut.first || interval.first > cut.last) return [interval];
    const parts: IpInterval[] = [];
    if (interval.first < cut.first) parts.push({ ...interval, last: cut.first - 1n });
    if (interval.last > cut.last) parts.push({ ...interval, first: cut.last + 1n });
    return parts;
  });
}

/** The fewest prefixes that cover exactly the union of `prefixes` (adjacent and nested ones merged). */
export function mergePrefixes(prefixes: readonly IpPrefix[]): IpPrefix[] {
  return mergeIntervals(prefixes.map(prefixInterval)).flatMap(intervalPrefixes);
}

/** The fewest prefixes that cover exactly the interval. */
export function intervalPrefixes(interval: IpInterval): IpPrefix[] {
  const bits = familyBits(interval.family);
  const prefixes: IpPrefix[] = [];
  let first = interval.first;
  while (first <= interval.last) {
    let hostBits = 0;
    while (hostBits < bits && (first & ((1n << BigInt(hostBits + 1)) - 1n)) === 0n && first + (1n << BigInt(hostBits + 1)) - 1n <= interval.last) hostBits++;
    prefixes.push({ family: interval.family, network: first, length: bits - hostBits });
    first += 1n << BigInt(hostBits);
  }
  return prefixes;
}

/** What a special range's addresses mean; none of them can number a pod, Service or node network. */
export type SpecialUse = "this-network" | "unspecified" | "loopback" | "IPv4-mapped" | "link-local" | "multicast";

export interface SpecialRange {
  readonly use: SpecialUse;
  readonly prefix: IpPrefix;
}

const specialRangeTable: readonly SpecialRange[] = [
  { use: "this-network", prefix: parsePrefix("0.0.0.0/8") },
  { use: "loopback", prefix: parsePrefix("127.0.0.0/8") },
  { use: "link-local", prefix: parsePrefix("169.254.0.0/16") },
  { use: "multicast", prefix: parsePrefix("224.0.0.0/4") },
  { use: "unspecified", prefix: parsePrefix("::/128") },
  { use: "loopback", prefix: parsePrefix("::1/128") },
  { use: "IPv4-mapped", prefix: parsePrefix("::ffff:0:0/96") },
  { use: "link-local", prefix: parsePrefix("fe80::/10") },
  { use: "multicast", prefix: parsePrefix("ff00::/8") },
];

/** Ranges of a family whose addresses mean the same on every host (RFC 6890), in address order. */
export function specialRanges(family: Family): readonly SpecialRange[] {
  return specialRangeTable.filter((range) => range.prefix.family === family);
}

/** The special range holding `ip`, or undefined when it is in none of them. */
export function specialRangeOf(ip: IpAddress): SpecialRange | undefined {
  return specialRangeTable.find((range) => prefixContains(range.prefix, ip));
}

function bytesToBigint(bytes: number[]): bigint {
  let value = 0n;
  for (const byte of bytes) value = (value << 8n) | BigInt(byte);
  return value;
}

function formatIpv4(value: bigint): string {
  const number = Number(value);
  return `${number >>> 24}.${(number >>> 16) & 0xff}.${(number >>> 8) & 0xff}.${number & 0xff}`;
}

function formatIpv6(value: bigint): string {
  if (value >> 32n === 0xffffn) return `::ffff:${formatIpv4(value & 0xffffffffn)}`;
  // One conversion to hex, then string work: BigInt shifts per group cost tens of microseconds.
  const digits = value.toString(16).padStart(32, "0");
  const groups: number[] = [];
  for (let i = 0; i < 32; i += 4) groups.push(parseInt(digits.slice(i, i + 4), 16));
  let bestStart = -1;
  let bestLength = 0;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLength && j - i >= 2) {
      bestStart = i;
      bestLength = j - i;
    }
    i = j;
  }
  const hex = groups.map((group) => group.toString(16));
  if (bestStart < 0) return hex.join(":");
  return `${hex.slice(0, bestStart).join(":")}::${hex.slice(bestStart + bestLength).join(":")}`;
}
