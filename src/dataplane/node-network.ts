/**
 * How a node reaches the other nodes' pods, as data: a route per peer pod CIDR, either straight
 * to the peer's node address (direct, the peer on a connected subnet) or over a VXLAN device
 * (flannel's layout: an onlink route via the peer pod CIDR's first address, a permanent
 * neighbour entry for it, and an FDB entry sending its VTEP MAC to the peer's node address).
 * What the kernel holds is parsed into the same shapes; the diff is the ip and bridge commands
 * that change only what differs, and never a route that is not the agent's: a route the kernel
 * or anyone else made is neither replaced nor shadowed by a peer's. Nothing here runs a command.
 */
import { createHash } from "node:crypto";
import { familyName, formatIp, formatPrefix, prefixContains, prefixesOverlap, prefixOf, sameIp, tryParseIp, type Family, type IpAddress, type IpInterfaceAddress, type IpPrefix } from "../net/ip.js";

export type RoutingMode = "direct" | "vxlan" | "auto";
export const ROUTING_MODES: readonly RoutingMode[] = ["direct", "vxlan", "auto"];

/** Routes the agent owns carry this protocol number, so it never touches anyone else's. */
export const ROUTE_PROTOCOL = 153;
export const VXLAN_PORT = 8472;
export const VXLAN_ID = 1;
/** Bytes VXLAN adds to a frame: outer IP + UDP + VXLAN + inner Ethernet. */
export const VXLAN_OVERHEAD: Record<Family, number> = { 4: 50, 6: 70 };

/** What a node publishes for its peers. */
export interface NodeEndpoint {
  readonly name: string;
  /** Underlay addresses, at most one per family. */
  readonly addresses: readonly IpAddress[];
  readonly podCidrs: readonly IpPrefix[];
  /** The VTEP MAC per underlay family the node runs VXLAN on. */
  readonly vteps: ReadonlyArray<{ readonly family: Family; readonly mac: string }>;
}

/** This node's view of its underlay. */
export interface Underlay {
  /** The interface carrying the node addresses. */
  readonly device: string;
  readonly mtu: number;
  /** The node addresses with their prefix lengths: their subnets are the connected ones. */
  readonly addresses: readonly IpInterfaceAddress[];
}

export interface VxlanDevice {
  readonly name: string;
  /** The underlay family it runs over. */
  readonly family: Family;
  readonly id: number;
  readonly port: number;
  readonly local: IpAddress;
  readonly mac: string;
  readonly mtu: number;
  readonly link: string;
  /** As observed; a desired device is always up. */
  readonly up?: boolean;
}

export interface PeerRoute {
  readonly dst: IpPrefix;
  readonly via: IpAddress;
  readonly dev: string;
  readonly onlink: boolean;
}

/** A route in the main table that is not the agent's (the kernel's connected routes, an operator's, another daemon's). */
export interface ForeignRoute {
  readonly dst: IpPrefix;
  /** As ip names it: kernel, boot, static, a number. */
  readonly protocol: string;
  /** Straight to a link, no gateway: a connected subnet. */
  readonly connected: boolean;
}

export interface NeighborEntry {
  readonly dev: string;
  readonly address: IpAddress;
  readonly mac: string;
}

export interface FdbEntry {
  readonly dev: string;
  readonly mac: string;
  readonly dst: IpAddress;
}

/** A peer pod CIDR this node cannot route to in its mode, and why. */
export interface Unroutable {
  readonly peer: string;
  readonly podCidr: IpPrefix;
  readonly reason: string;
}

export interface NodeNetwork {
  readonly vxlan: readonly VxlanDevice[];
  readonly routes: readonly PeerRoute[];
  readonly neighbors: readonly NeighborEntry[];
  readonly fdb: readonly FdbEntry[];
  readonly unroutable: readonly Unroutable[];
}

export function vxlanDeviceName(family: Family): string {
  return `trellis-vx${family}`;
}

/** A VTEP MAC fixed by the node name, so a restarted agent publishes the same one. */
export function vtepMac(node: string, family: Family): string {
  const bytes = createHash("sha256").update(`vtep\0${node}\0${family}`).digest().subarray(0, 6);
  bytes[0] = (bytes[0] & 0xfe) | 0x02;
  return [...bytes].map((byte) => byte.toString(16).padStart(2, "0")).join(":");
}

/** The underlay families a node runs VXLAN on: every family it has an address of, unless the mode is direct. */
export function vxlanFamilies(mode: RoutingMode, addresses: readonly IpAddress[]): Family[] {
  if (mode === "direct") return [];
  return ([4, 6] as const).filter((family) => addresses.some((address) => address.family === family));
}

/** The pods' MTU: the underlay's, less VXLAN's overhead when VXLAN may carry them (IPv6's when it runs over IPv6). */
export function podMtu(mode: RoutingMode, underlay: Underlay): number {
  const families = vxlanFamilies(mode, underlay.addresses.map((entry) => entry.address));
  if (!families.length) return underlay.mtu;
  return underlay.mtu - Math.max(...families.map((family) => VXLAN_OVERHEAD[family]));
}

/** The VXLAN devices a node runs in its mode. */
export function desiredVxlanDevices(self: NodeEndpoint, underlay: Underlay, mode: RoutingMode): VxlanDevice[] {
  return vxlanFamilies(mode, self.addresses).map((family) => ({
    name: vxlanDeviceName(family),
    family,
    id: VXLAN_ID,
    port: VXLAN_PORT,
    local: self.addresses.find((address) => address.family === family)!,
    mac: vtepMac(self.name, family),
    mtu: underlay.mtu - VXLAN_OVERHEAD[family],
    link: underlay.device,
  }));
}

/** The desired state: one route per peer pod CIDR, plus VXLAN devices, neighbours and FDB entries where VXLAN carries them. */
export function desiredNodeNetwork(self: NodeEndpoint, underlay: Underlay, peers: readonly NodeEndpoint[], mode: RoutingMode): NodeNetwork {
  const vxlan = desiredVxlanDevices(self, underlay, mode);
  const parts = [...peers].sort((a, b) => (a.name < b.name ? -1 : 1)).filter((peer) => peer.name !== self.name).map((peer) => desiredPeerNetwork(underlay, vxlan, peer, mode));
  return joinPeerNetworks(vxlan, parts);
}

/** What one peer needs: a node's desired state is the union of its peers' (see `joinPeerNetworks`). */
export function desiredPeerNetwork(underlay: Underlay, vxlan: readonly VxlanDevice[], peer: NodeEndpoint, mode: RoutingMode): NodeNetwork {
  const routes: PeerRoute[] = [];
  const neighbors: NeighborEntry[] = [];
  const fdb: FdbEntry[] = [];
  const unroutable: Unroutable[] = [];
  for (const podCidr of peer.podCidrs) {
    const family = podCidr.family;
    const peerAddress = peer.addresses.find((address) => address.family === family);
    const connected = peerAddress !== undefined && underlay.addresses.some((entry) => entry.address.family === family && prefixContains(entry.prefix, peerAddress));
    if (mode === "direct" || (mode === "auto" && connected)) {
      if (connected) {
        routes.push({ dst: podCidr, via: peerAddress!, dev: underlay.device, onlink: false });
        continue;
      }
      if (mode === "direct") {
        const reason = peerAddress
          ? `its node address ${formatIp(peerAddress)} is not on a subnet connected to this node (${describeConnected(underlay, family)}); direct routing needs the peers on one link: use --mode vxlan or auto`
          : `it has no ${familyName(family)} node address, which direct routing needs; use --mode vxlan or auto`;
        unroutable.push({ peer: peer.name, podCidr, reason });
        continue;
      }
    }
    const carrier = [family, family === 4 ? 6 : 4].find(
      (candidate) => vxlan.some((device) => device.family === candidate) && peer.vteps.some((vtep) => vtep.family === candidate) && peer.addresses.some((address) => address.family === candidate),
    ) as Family | undefined;
    if (carrier === undefined) {
      unroutable.push({ peer: peer.name, podCidr, reason: "it shares no underlay family with this node on which both run VXLAN" });
      continue;
    }
    const dev = vxlanDeviceName(carrier);
    const mac = peer.vteps.find((vtep) => vtep.family === carrier)!.mac;
    const gateway = { family, value: podCidr.network };
    routes.push({ dst: podCidr, via: gateway, dev, onlink: true });
    neighbors.push({ dev, address: gateway, mac });
    const dst = peer.addresses.find((address) => address.family === carrier)!;
    if (!fdb.some((entry) => entry.dev === dev && entry.mac === mac)) fdb.push({ dev, mac, dst });
  }
  return { vxlan, routes, neighbors, fdb, unroutable };
}

/** The union of peers' parts on these devices. */
export function joinPeerNetworks(vxlan: readonly VxlanDevice[], parts: readonly NodeNetwork[]): NodeNetwork {
  return {
    vxlan,
    routes: parts.flatMap((part) => part.routes),
    neighbors: parts.flatMap((part) => part.neighbors),
    fdb: parts.flatMap((part) => part.fdb),
    unroutable: parts.flatMap((part) => part.unroutable),
  };
}

/** What the kernel holds of the agent's objects. */
export interface ObservedNodeNetwork {
  readonly vxlan: readonly VxlanDevice[];
  /** Routes with the agent's protocol number. */
  readonly routes: readonly PeerRoute[];
  /** Permanent neighbours on the agent's VXLAN devices. */
  readonly neighbors: readonly NeighborEntry[];
  /** Permanent FDB entries with a destination on the agent's VXLAN devices. */
  readonly fdb: readonly FdbEntry[];
  /** The main table's other routes: the agent never replaces one, nor routes a peer into a connected one. */
  readonly foreign: readonly ForeignRoute[];
}

/** Parses `ip -d -j link show type vxlan` into the agent's devices (others are ignored). */
export function parseVxlanDevices(json: unknown): VxlanDevice[] {
  if (!Array.isArray(json)) return [];
  return json.flatMap((link: any) => {
    const data = link?.linkinfo?.info_data;
    if (link?.linkinfo?.info_kind !== "vxlan" || !data || !/^trellis-vx[46]$/.test(link.ifname)) return [];
    const local = tryParseIp(data.local ?? data.local6 ?? "");
    if (!local) return [];
    const up = Array.isArray(link.flags) && link.flags.includes("UP");
    return [{ name: link.ifname, family: local.family, id: data.id, port: data.port, local, mac: link.address, mtu: link.mtu, link: data.link ?? "", up }];
  });
}

/** Parses `ip -j route show table all` (both families): the agent's routes (protocol ROUTE_PROTOCOL) in the main table. */
export function parsePeerRoutes(json: unknown): PeerRoute[] {
  if (!Array.isArray(json)) return [];
  return json.flatMap((route: any) => {
    if (!isMainTableRoute(route) || String(route.protocol) !== String(ROUTE_PROTOCOL)) return [];
    const dst = routeDestination(route);
    const via = tryParseIp(route?.gateway ?? "");
    if (!dst || !via || typeof route.dev !== "string") return [];
    return [{ dst, via, dev: route.dev, onlink: Array.isArray(route.flags) && route.flags.includes("onlink") }];
  });
}

/** Parses `ip -j route show table all`: the main table's unicast routes that are not the agent's (default routes left out: a peer's never is one). */
export function parseForeignRoutes(json: unknown): ForeignRoute[] {
  if (!Array.isArray(json)) return [];
  return json.flatMap((route: any) => {
    if (!isMainTableRoute(route) || String(route.protocol) === String(ROUTE_PROTOCOL) || route.dst === "default") return [];
    if (route.type !== undefined && route.type !== "unicast") return [];
    const dst = routeDestination(route);
    if (!dst) return [];
    return [{ dst, protocol: String(route.protocol ?? "boot"), connected: route.gateway === undefined && route.nexthops === undefined && route.via === undefined }];
  });
}

function isMainTableRoute(route: any): boolean {
  return typeof route === "object" && route !== null && (route.table === undefined || route.table === "main");
}

function routeDestination(route: any): IpPrefix | undefined {
  const [text, length] = String(route?.dst ?? "").split("/");
  const address = tryParseIp(text);
  if (!address) return undefined;
  const bits = length === undefined ? (address.family === 4 ? 32 : 128) : Number(length);
  return Number.isInteger(bits) ? prefixOf(address, bits) : undefined;
}

/** Parses `ip -j neigh show nud permanent` for one device. */
export function parseNeighbors(json: unknown, dev: string): NeighborEntry[] {
  if (!Array.isArray(json)) return [];
  return json.flatMap((entry: any) => {
    const address = tryParseIp(entry?.dst ?? "");
    if (!address || typeof entry.lladdr !== "string" || (entry.dev !== undefined && entry.dev !== dev)) return [];
    return [{ dev, address, mac: entry.lladdr }];
  });
}

/** Parses `bridge -j fdb show dev DEV`: the entries that send a MAC to a remote VTEP. */
export function parseFdb(json: unknown, dev: string): FdbEntry[] {
  if (!Array.isArray(json)) return [];
  return json.flatMap((entry: any) => {
    const dst = tryParseIp(entry?.dst ?? "");
    if (!dst || typeof entry.mac !== "string" || entry.state !== "permanent") return [];
    return [{ dev, mac: entry.mac, dst }];
  });
}

export interface NodeNetworkChange {
  /** `ip -batch` commands, in order: devices, neighbours, routes, then removals. */
  readonly ip: string[][];
  /** `bridge -batch` commands for the FDB. */
  readonly bridge: string[][];
  /** One line per change, for the log. */
  readonly summary: string[];
  /** Peer routes left out because a route that is not the agent's holds or covers their destination. */
  readonly blocked: ReadonlyArray<{ readonly dst: IpPrefix; readonly reason: string }>;
}

/**
 * The commands that turn `observed` into `desired`, touching only what differs: a route that
 * is right is never replaced (established traffic sees no gap), a changed one is replaced in
 * place, and only the agent's own objects are removed.
 */
export function diffNodeNetwork(desiredState: NodeNetwork, observedState: ObservedNodeNetwork): NodeNetworkChange {
  const ip: string[][] = [];
  const bridge: string[][] = [];
  const summary: string[] = [];
  const removals: string[][] = [];
  const { desired, blocked } = leaveOutForeign(desiredState, observedState.foreign);
  let observed = observedState;
  const observedDevices = new Map(observed.vxlan.map((device) => [device.name, device]));
  const desiredDevices = new Set(desired.vxlan.map((device) => device.name));
  // Deleting a device takes its routes, neighbours and FDB entries with it: count them as gone.
  const recreated = new Set(desired.vxlan.filter((device) => observedDevices.has(device.name) && !sameDevice(observedDevices.get(device.name)!, device)).map((device) => device.name));
  observed = {
    ...observed,
    routes: observed.routes.filter((route) => !recreated.has(route.dev)),
    neighbors: observed.neighbors.filter((entry) => !recreated.has(entry.dev)),
    fdb: observed.fdb.filter((entry) => !recreated.has(entry.dev)),
  };
  for (const device of desired.vxlan) {
    const have = observedDevices.get(device.name);
    if (have && !sameDevice(have, device)) {
      ip.push(["link", "delete", "dev", device.name]);
      summary.push(`recreate ${device.name}: it runs with other settings`);
    }
    if (!have || !sameDevice(have, device)) {
      ip.push([
        "link", "add", device.name, "address", device.mac, "mtu", String(device.mtu), "type", "vxlan", "id", String(device.id),
        "local", formatIp(device.local), "dev", device.link, "dstport", String(device.port), "nolearning",
      ]);
      summary.push(`add ${device.name} (VXLAN over ${familyName(device.family)} from ${formatIp(device.local)})`);
    } else if (have.mtu !== device.mtu) {
      ip.push(["link", "set", "dev", device.name, "mtu", String(device.mtu)]);
      summary.push(`set ${device.name} mtu ${device.mtu}`);
    }
    if (!have || !sameDevice(have, device) || !have.up) ip.push(["link", "set", "dev", device.name, "up"]);
    if (have && sameDevice(have, device) && !have.up) summary.push(`set ${device.name} up`);
  }
  for (const device of observed.vxlan) {
    if (!desiredDevices.has(device.name)) {
      removals.push(["link", "delete", "dev", device.name]);
      summary.push(`delete ${device.name}`);
    }
  }
  const fdbKey = (entry: FdbEntry) => `${entry.dev} ${entry.mac} ${formatIp(entry.dst)}`;
  const observedFdb = new Set(observed.fdb.map(fdbKey));
  const desiredFdb = new Set(desired.fdb.map(fdbKey));
  for (const entry of desired.fdb) {
    if (observedFdb.has(fdbKey(entry))) continue;
    bridge.push(["fdb", "replace", entry.mac, "dev", entry.dev, "dst", formatIp(entry.dst), "self", "permanent"]);
    summary.push(`fdb ${entry.mac} -> ${formatIp(entry.dst)} on ${entry.dev}`);
  }
  for (const entry of observed.fdb) {
    if (!desiredDevices.has(entry.dev) || desiredFdb.has(fdbKey(entry))) continue;
    bridge.push(["fdb", "del", entry.mac, "dev", entry.dev, "dst", formatIp(entry.dst), "self"]);
    summary.push(`remove fdb ${entry.mac} -> ${formatIp(entry.dst)} on ${entry.dev}`);
  }
  const neighborKey = (entry: NeighborEntry) => `${entry.dev} ${formatIp(entry.address)}`;
  const observedNeighbors = new Map(observed.neighbors.map((entry) => [neighborKey(entry), entry]));
  const desiredNeighbors = new Set(desired.neighbors.map(neighborKey));
  for (const entry of desired.neighbors) {
    if (observedNeighbors.get(neighborKey(entry))?.mac === entry.mac) continue;
    ip.push(["neigh", "replace", formatIp(entry.address), "lladdr", entry.mac, "dev", entry.dev, "nud", "permanent"]);
    summary.push(`neighbour ${formatIp(entry.address)} is ${entry.mac} on ${entry.dev}`);
  }
  const observedRoutes = new Map(observed.routes.map((route) => [formatPrefix(route.dst), route]));
  const desiredRoutes = new Set(desired.routes.map((route) => formatPrefix(route.dst)));
  for (const route of desired.routes) {
    const have = observedRoutes.get(formatPrefix(route.dst));
    if (have && sameRoute(have, route)) continue;
    // Linux refuses to replace an IPv6 route in place with one through another device.
    if (have && have.dev !== route.dev && route.dst.family === 6) ip.push(["route", "del", formatPrefix(route.dst), "proto", String(ROUTE_PROTOCOL)]);
    // Only a route of the agent's is replaced; a new one is added, which the kernel refuses
    // (rather than overwrites) if a route to that destination appeared since the last look.
    const verb = have && !(have.dev !== route.dev && route.dst.family === 6) ? "replace" : "add";
    ip.push(["route", verb, formatPrefix(route.dst), "via", formatIp(route.via), "dev", route.dev, ...(route.onlink ? ["onlink"] : []), "proto", String(ROUTE_PROTOCOL)]);
    summary.push(`route ${formatPrefix(route.dst)} via ${formatIp(route.via)} dev ${route.dev}${have ? " (replaced)" : ""}`);
  }
  for (const route of observed.routes) {
    if (desiredRoutes.has(formatPrefix(route.dst))) continue;
    removals.push(["route", "del", formatPrefix(route.dst), "proto", String(ROUTE_PROTOCOL)]);
    summary.push(`withdraw route ${formatPrefix(route.dst)}`);
  }
  for (const entry of observed.neighbors) {
    if (!desiredDevices.has(entry.dev) || desiredNeighbors.has(neighborKey(entry))) continue;
    removals.push(["neigh", "del", formatIp(entry.address), "dev", entry.dev]);
    summary.push(`remove neighbour ${formatIp(entry.address)} on ${entry.dev}`);
  }
  return { ip: [...ip, ...sortRemovals(removals)], bridge, summary, blocked };
}

/**
 * `desired` less the routes (and their VXLAN neighbours) that a route not of the agent's stands
 * in the way of: one to the same destination (replacing it would take that traffic), or a
 * connected subnet overlapping it (a route into it would take part of that subnet's traffic).
 */
export function leaveOutForeign(desired: NodeNetwork, foreign: readonly ForeignRoute[]): { desired: NodeNetwork; blocked: Array<{ dst: IpPrefix; reason: string }> } {
  if (!foreign.length) return { desired, blocked: [] };
  // By network (a bigint, compared by value): no text is made for the thousands of peer routes.
  const byNetwork = new Map<bigint, ForeignRoute[]>();
  for (const route of foreign) byNetwork.set(route.dst.network, [...(byNetwork.get(route.dst.network) ?? []), route]);
  const connected = foreign.filter((route) => route.connected);
  const blocked: Array<{ dst: IpPrefix; reason: string }> = [];
  const gone = new Set<string>();
  const routes = desired.routes.filter((route) => {
    const same = byNetwork.get(route.dst.network)?.find((other) => other.dst.family === route.dst.family && other.dst.length === route.dst.length);
    const covering = same ? undefined : connected.find((other) => prefixesOverlap(other.dst, route.dst));
    const holder = same ?? covering;
    if (!holder) return true;
    const reason = same
      ? `this node already has a route to ${formatPrefix(route.dst)} (proto ${same.protocol}) that is not Trellis's; it is never replaced`
      : `it overlaps ${formatPrefix(holder.dst)}, a subnet connected to this node (proto ${holder.protocol})`;
    blocked.push({ dst: route.dst, reason });
    gone.add(`${route.dev} ${formatIp(route.via)}`);
    return false;
  });
  if (!blocked.length) return { desired, blocked };
  const neighbors = desired.neighbors.filter((entry) => !gone.has(`${entry.dev} ${formatIp(entry.address)}`));
  return { desired: { ...desired, routes, neighbors }, blocked };
}

/** Routes first, then neighbours, then devices: nothing is removed while something still uses it. */
function sortRemovals(removals: string[][]): string[][] {
  const rank = (command: string[]) => ({ route: 0, neigh: 1, link: 2 })[command[0] as "route" | "neigh" | "link"] ?? 3;
  return [...removals].sort((a, b) => rank(a) - rank(b));
}

function sameDevice(a: VxlanDevice, b: VxlanDevice): boolean {
  return a.id === b.id && a.port === b.port && sameIp(a.local, b.local) && a.mac === b.mac && a.link === b.link;
}

function sameRoute(a: PeerRoute, b: PeerRoute): boolean {
  return sameIp(a.via, b.via) && a.dev === b.dev && a.onlink === b.onlink;
}

function describeConnected(underlay: Underlay, family: Family): string {
  const subnets = underlay.addresses.filter((entry) => entry.address.family === family).map((entry) => formatPrefix(entry.prefix));
  return subnets.length ? subnets.join(", ") : `no ${familyName(family)} subnet`;
}
