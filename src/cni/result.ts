/** CNI results: one internal shape (1.1.0), converted to the version a runtime asked for. */
import { tryParseInterfaceAddress, tryParseIp } from "../net/ip.js";
import { CniCode, CniError } from "../podnet/errors.js";
import { compareVersions } from "./version.js";

export interface CniInterface {
  name: string;
  mac?: string;
  mtu?: number;
  /** The netns path for container interfaces; absent for host interfaces. */
  sandbox?: string;
}

export interface CniIpConfig {
  /** `ADDRESS/LENGTH` */
  address: string;
  gateway?: string;
  /** Index into `interfaces`. */
  interface?: number;
}

export interface CniRoute {
  dst: string;
  gw?: string;
  mtu?: number;
  advmss?: number;
  priority?: number;
  table?: number;
  scope?: number;
}

export interface CniDns {
  nameservers?: string[];
  domain?: string;
  search?: string[];
  options?: string[];
}

export interface CniResult {
  cniVersion: string;
  interfaces?: CniInterface[];
  ips?: CniIpConfig[];
  routes?: CniRoute[];
  dns?: CniDns;
}

/** Renders a result in the format of `version` (0.3.x and 0.4.0 carry `ips[].version`). */
export function formatResult(result: CniResult, version: string): Record<string, unknown> {
  const out: Record<string, unknown> = { cniVersion: version };
  if (result.interfaces?.length) out.interfaces = result.interfaces;
  if (result.ips?.length) {
    out.ips = compareVersions(version, "1.0.0") < 0
      ? result.ips.map((ip) => ({ version: ip.address.includes(":") ? "6" : "4", ...ip }))
      : result.ips.map((ip) => ({ ...ip }));
  }
  if (result.routes?.length) out.routes = result.routes;
  out.dns = result.dns ?? {};
  return out;
}

/**
 * Reads a result of any supported version (a prevResult, or a delegated IPAM plugin's output),
 * checking the fields Trellis relies on.
 */
export function parseResult(raw: unknown, what: string): CniResult {
  if (!isObject(raw)) throw new CniError(CniCode.decodeFailure, `${what} is not a JSON object`);
  const version = typeof raw.cniVersion === "string" ? raw.cniVersion : "";
  if (!version) throw new CniError(CniCode.decodeFailure, `${what} has no cniVersion`);
  if (compareVersions(version, "0.3.0") < 0) {
    throw new CniError(CniCode.incompatibleVersion, `${what} has cniVersion ${version}; results older than 0.3.0 are not supported`);
  }
  const interfaces = arrayField(raw, "interfaces", what).map((item, i): CniInterface => {
    if (!isObject(item) || typeof item.name !== "string") throw new CniError(CniCode.decodeFailure, `${what}.interfaces[${i}] has no name`);
    return pick(item, ["name", "mac", "mtu", "sandbox"]) as unknown as CniInterface;
  });
  const ips = arrayField(raw, "ips", what).map((item, i): CniIpConfig => {
    if (!isObject(item) || typeof item.address !== "string" || !tryParseInterfaceAddress(item.address)) {
      throw new CniError(CniCode.decodeFailure, `${what}.ips[${i}].address ${JSON.stringify(isObject(item) ? item.address : item)} is not ADDRESS/LENGTH`);
    }
    if (item.gateway !== undefined && (typeof item.gateway !== "string" || !tryParseIp(item.gateway))) {
      throw new CniError(CniCode.decodeFailure, `${what}.ips[${i}].gateway ${JSON.stringify(item.gateway)} is not an IP address`);
    }
    if (item.interface !== undefined && (!Number.isInteger(item.interface) || (item.interface as number) < 0)) {
      throw new CniError(CniCode.decodeFailure, `${what}.ips[${i}].interface ${JSON.stringify(item.interface)} is not an index`);
    }
    return pick(item, ["address", "gateway", "interface"]) as unknown as CniIpConfig;
  });
  const routes = arrayField(raw, "routes", what).map((item, i): CniRoute => {
    if (!isObject(item) || typeof item.dst !== "string" || !tryParseInterfaceAddress(item.dst)) {
      throw new CniError(CniCode.decodeFailure, `${what}.routes[${i}].dst ${JSON.stringify(isObject(item) ? item.dst : item)} is not a CIDR`);
    }
    return pick(item, ["dst", "gw", "mtu", "advmss", "priority", "table", "scope"]) as unknown as CniRoute;
  });
  return { cniVersion: version, interfaces, ips, routes, dns: isObject(raw.dns) ? (raw.dns as CniDns) : undefined };
}

export function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function arrayField(raw: Record<string, unknown>, key: string, what: string): unknown[] {
  const value = raw[key];
  if (value === undefined || value === null) return [];
  if (!Array.isArray(value)) throw new CniError(CniCode.decodeFailure, `${what}.${key} is not a list`);
  return value;
}

function pick(source: Record<string, unknown>, keys: readonly string[]): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const key of keys) if (source[key] !== undefined) out[key] = source[key];
  return out;
}
