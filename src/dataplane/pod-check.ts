/**
 * CHECK as data: what `ip -json` shows, parsed into addresses, prefixes and flags, compared with
 * the desired attachment. Nothing here runs a command.
 */
import { defaultPrefix, formatIp, formatPrefix, prefixOf, sameIp, tryParseIp, type Family, type IpAddress, type IpPrefix } from "../net/ip.js";
import type { PodAttachmentSpec } from "./pod-attachment.js";

export interface ObservedLink {
  readonly name: string;
  readonly mac?: string;
  readonly up: boolean;
  readonly master?: string;
  readonly alias?: string;
  readonly kind?: string;
  readonly mtu?: number;
  /** Addresses other than link-local ones, with their prefix lengths. */
  readonly addresses: ReadonlyArray<{ readonly address: IpAddress; readonly length: number }>;
}

export interface ObservedRoute {
  readonly dst: IpPrefix;
  readonly gateway?: IpAddress;
  readonly dev?: string;
}

export interface ObservedPod {
  readonly hostVeth?: ObservedLink;
  readonly bridge?: ObservedLink;
  /** Undefined when the namespace is gone. */
  readonly container?: { readonly link?: ObservedLink; readonly routes: readonly ObservedRoute[] };
}

interface IpLinkJson {
  ifname?: string;
  address?: string;
  flags?: string[];
  master?: string;
  ifalias?: string;
  mtu?: number;
  linkinfo?: { info_kind?: string };
  addr_info?: Array<{ family?: string; local?: string; prefixlen?: number; scope?: string }>;
}

interface IpRouteJson {
  dst?: string;
  gateway?: string;
  dev?: string;
  table?: string;
  type?: string;
}

/** Links from `ip -json [-d] link|address show`. */
export function parseIpLinks(json: unknown): ObservedLink[] {
  if (!Array.isArray(json)) return [];
  return (json as IpLinkJson[]).filter((link) => typeof link.ifname === "string").map((link) => ({
    name: link.ifname!,
    mac: link.address,
    up: link.flags?.includes("UP") ?? false,
    master: link.master,
    alias: link.ifalias,
    kind: link.linkinfo?.info_kind,
    mtu: link.mtu,
    addresses: (link.addr_info ?? [])
      .filter((info) => info.scope !== "link" && typeof info.local === "string" && typeof info.prefixlen === "number")
      .flatMap((info) => {
        const address = tryParseIp(info.local!);
        return address ? [{ address, length: info.prefixlen! }] : [];
      }),
  }));
}

/** Unicast routes of the main table from `ip -json route show table all …`. */
export function parseIpRoutes(json: unknown, family: Family): ObservedRoute[] {
  if (!Array.isArray(json)) return [];
  return (json as IpRouteJson[])
    .filter((route) => (route.table === undefined || route.table === "main") && (route.type === undefined || route.type === "unicast"))
    .flatMap((route) => {
      const dst = parseRouteDst(route.dst, family);
      if (!dst) return [];
      const gateway = route.gateway ? tryParseIp(route.gateway) : undefined;
      return [{ dst, gateway, dev: route.dev }];
    });
}

/**
 * What is wrong with the attachment; empty when everything the spec says is in place. The MAC
 * is compared only with `checkMac` (a runtime's prevResult may not carry one).
 */
export function diffPodAttachment(spec: PodAttachmentSpec, observed: ObservedPod, options: { checkMac: boolean }): string[] {
  const problems: string[] = [];
  const { hostVeth, bridge, container } = spec;
  if (!observed.hostVeth) {
    problems.push(`host interface ${hostVeth.name} is missing`);
  } else {
    if (observed.hostVeth.master !== bridge.name) problems.push(`host interface ${hostVeth.name} is not attached to bridge ${bridge.name}`);
    if (!observed.hostVeth.up) problems.push(`host interface ${hostVeth.name} is down`);
  }
  if (!observed.bridge) {
    problems.push(`bridge ${bridge.name} is missing`);
  } else {
    for (const gateway of bridge.gateways) {
      if (!observed.bridge.addresses.some((have) => sameIp(have.address, gateway.address) && have.length === gateway.length)) {
        problems.push(`gateway ${formatIp(gateway.address)}/${gateway.length} is missing from bridge ${bridge.name}`);
      }
    }
  }
  if (!observed.container) return [...problems, "the pod's network namespace does not exist"];
  const link = observed.container.link;
  if (!link) return [...problems, `interface ${container.ifname} is missing in the pod`];
  if (options.checkMac && link.mac !== container.mac) problems.push(`interface ${container.ifname} has MAC ${link.mac}, expected ${container.mac}`);
  if (!link.up) problems.push(`interface ${container.ifname} is down`);
  for (const address of container.addresses) {
    if (!link.addresses.some((have) => sameIp(have.address, address.address) && have.length === address.subnet.length)) {
      problems.push(`address ${formatIp(address.address)}/${address.subnet.length} is missing from ${container.ifname}`);
    }
  }
  for (const route of container.routes) {
    const found = observed.container.routes.some(
      (have) =>
        have.dst.family === route.dst.family &&
        have.dst.network === route.dst.network &&
        have.dst.length === route.dst.length &&
        have.dev === container.ifname &&
        (!route.gateway || (have.gateway !== undefined && sameIp(have.gateway, route.gateway))),
    );
    if (!found) problems.push(`route ${describeDst(route.dst)}${route.gateway ? ` via ${formatIp(route.gateway)}` : ""} is missing from ${container.ifname}`);
  }
  return problems;
}

function describeDst(dst: IpPrefix): string {
  return dst.length === 0 ? "default" : formatPrefix(dst);
}

function parseRouteDst(dst: string | undefined, family: Family): IpPrefix | undefined {
  if (!dst) return undefined;
  if (dst === "default") return defaultPrefix(family);
  const [text, length] = dst.split("/");
  const address = tryParseIp(text);
  if (!address || address.family !== family) return undefined;
  return prefixOf(address, length === undefined ? (family === 4 ? 32 : 128) : Number(length));
}
