/**
 * What the kernel should hold for one pod on the node bridge, as plain data, and the
 * iproute2 commands that make it so. Nothing here touches the kernel.
 */
import { createHash, randomBytes } from "node:crypto";
import { defaultPrefix, formatIp, formatPrefix, type Family, type IpAddress, type IpPrefix } from "../net/ip.js";

export interface PodAddress {
  readonly address: IpAddress;
  /** The subnet the address is in; its length is the address's prefix length. */
  readonly subnet: IpPrefix;
  readonly gateway: IpAddress;
}

export interface PodRoute {
  readonly dst: IpPrefix;
  readonly gateway?: IpAddress;
}

export interface BridgeSpec {
  readonly name: string;
  /** Gateway addresses, one per pod subnet, with the subnet's prefix length. */
  readonly gateways: readonly PodGateway[];
}

export interface PodGateway {
  readonly address: IpAddress;
  readonly length: number;
}

export interface HostVethSpec {
  readonly name: string;
  readonly mac: string;
  readonly hairpin: boolean;
  /** Names the network that owns the veth, so GC can tell its own strays from others'. */
  readonly alias: string;
}

export interface PodAttachmentSpec {
  readonly bridge: BridgeSpec;
  readonly hostVeth: HostVethSpec;
  readonly container: {
    readonly ifname: string;
    readonly mac: string;
    readonly mtu?: number;
    readonly addresses: readonly PodAddress[];
    readonly routes: readonly PodRoute[];
  };
}

export interface PodAttachmentInput {
  readonly network: string;
  readonly containerId: string;
  readonly ifname: string;
  readonly bridge: string;
  readonly mtu?: number;
  readonly hairpin: boolean;
  readonly mac?: string;
  readonly addresses: readonly PodAddress[];
  /** Extra routes; a missing gateway means the gateway of the route's family. */
  readonly routes: readonly PodRoute[];
  readonly defaultRoutes: boolean;
}

const HOST_VETH_PREFIX = "trv";
const ALIAS_PREFIX = "trellis:";

/** The host end's name: fixed by the attachment, so DEL and GC find it without the netns. */
export function hostVethName(network: string, containerId: string, ifname: string): string {
  return HOST_VETH_PREFIX + createHash("sha256").update(`${network}\0${containerId}\0${ifname}`).digest("hex").slice(0, 12);
}

export function isHostVethName(name: string): boolean {
  return /^trv[0-9a-f]{12}$/.test(name);
}

/** The alias a network's host veths carry. */
export function hostVethAlias(network: string): string {
  return ALIAS_PREFIX + network;
}

/** A random locally administered unicast MAC. */
export function randomMac(): string {
  const bytes = randomBytes(6);
  bytes[0] = (bytes[0] & 0xfe) | 0x02;
  return [...bytes].map((byte) => byte.toString(16).padStart(2, "0")).join(":");
}

/**
 * The MAC a pod's interface gets when none is asked for: 0a:58 (locally administered, unicast)
 * and the low 32 bits of its IPv4 address, or of its first IPv6 address in an IPv6-only pod.
 * A pod that is given an address another pod had before gets the MAC that went with it, so the
 * neighbour caches of the node and of the bridge's other pods stay right; with a fresh random
 * MAC they keep the old one until it ages out and the new pod is unreachable meanwhile.
 */
export function addressMac(addresses: readonly PodAddress[]): string | undefined {
  const source = addresses.find((address) => address.address.family === 4) ?? addresses[0];
  if (!source) return undefined;
  const low = source.address.value & 0xffffffffn;
  const bytes = [0x0a, 0x58, Number((low >> 24n) & 0xffn), Number((low >> 16n) & 0xffn), Number((low >> 8n) & 0xffn), Number(low & 0xffn)];
  return bytes.map((byte) => byte.toString(16).padStart(2, "0")).join(":");
}

export function planPodAttachment(input: PodAttachmentInput): PodAttachmentSpec {
  const gatewayOf = (family: Family) => input.addresses.find((address) => address.address.family === family)?.gateway;
  const routes: PodRoute[] = [];
  const seen = new Set<string>();
  const addRoute = (route: PodRoute) => {
    const key = formatPrefix(route.dst);
    if (seen.has(key)) return;
    seen.add(key);
    routes.push(route);
  };
  for (const route of input.routes) addRoute({ dst: route.dst, gateway: route.gateway ?? gatewayOf(route.dst.family) });
  if (input.defaultRoutes) {
    for (const family of [...new Set(input.addresses.map((address) => address.address.family))]) {
      addRoute({ dst: defaultPrefix(family), gateway: gatewayOf(family) });
    }
  }
  return {
    bridge: { name: input.bridge, gateways: bridgeGateways(input.addresses) },
    hostVeth: {
      name: hostVethName(input.network, input.containerId, input.ifname),
      mac: randomMac(),
      hairpin: input.hairpin,
      alias: hostVethAlias(input.network),
    },
    container: { ifname: input.ifname, mac: input.mac ?? addressMac(input.addresses) ?? randomMac(), mtu: input.mtu, addresses: input.addresses, routes },
  };
}

/** The gateway addresses the bridge carries for these pod addresses, each once. */
export function bridgeGateways(addresses: readonly PodAddress[]): PodGateway[] {
  const gateways = new Map<string, PodGateway>();
  for (const address of addresses) gateways.set(`${formatIp(address.gateway)}/${address.subnet.length}`, { address: address.gateway, length: address.subnet.length });
  return [...gateways.values()];
}

/**
 * Creates the bridge (its MTU is set only here: an existing bridge is shared and never changed)
 * with a MAC of its own, fixed by `identity` (the node and state it belongs to): a bridge made
 * again after it was deleted has the MAC its pods' neighbour entries name for their gateway, so
 * they reach it at once instead of after their entries go stale (5–10 s). The kernel's own
 * choice would follow the ports, changing as pods come and go.
 */
export function renderBridgeCreate(name: string, mtu: number | undefined, identity: string): string[][] {
  return [["link", "add", name, ...(mtu === undefined ? [] : ["mtu", String(mtu)]), "address", bridgeMac(name, identity), "type", "bridge"]];
}

/** A locally administered unicast MAC for bridge `name` of `identity`. */
export function bridgeMac(name: string, identity: string): string {
  const bytes = createHash("sha256").update(`bridge\0${identity}\0${name}`).digest().subarray(0, 6);
  bytes[0] = (bytes[0] & 0xfe) | 0x02;
  return [...bytes].map((byte) => byte.toString(16).padStart(2, "0")).join(":");
}

/** The bridge up with its gateway addresses (idempotent). */
export function renderBridgeAddresses(bridge: BridgeSpec): string[][] {
  return [
    ["link", "set", "dev", bridge.name, "up"],
    ...bridge.gateways.map((gateway) => ["address", "replace", `${formatIp(gateway.address)}/${gateway.length}`, "dev", bridge.name, ...(gateway.address.family === 6 ? ["nodad"] : [])]),
  ];
}

/** A host veth on its bridge, with hairpin as recorded: for a new pod and for a recreated bridge alike. */
export function renderBridgePort(bridge: string, veth: { readonly name: string; readonly hairpin: boolean }): string[][] {
  return [
    ["link", "set", "dev", veth.name, "master", bridge],
    ...(veth.hairpin ? [["link", "set", "dev", veth.name, "type", "bridge_slave", "hairpin", "on"]] : []),
    ["link", "set", "dev", veth.name, "up"],
  ];
}

/**
 * Host-side commands once the bridge exists: gateway addresses (unless `bridgeReady`: the bridge
 * was last seen up with them), the veth pair created on the bridge and up with its pod end moved
 * into the namespace `podNetns` refers to, its alias and hairpin. Ends by showing the bridge
 * with its addresses: its MAC goes into the result, and the next ADD knows what it holds.
 */
export function renderHostCommands(spec: PodAttachmentSpec, podNetns: string, options: { bridgeReady?: boolean } = {}): string[][] {
  const { bridge, hostVeth, container } = spec;
  const mtu = container.mtu === undefined ? [] : ["mtu", String(container.mtu)];
  return [
    ...(options.bridgeReady ? [] : renderBridgeAddresses(bridge)),
    [
      "link", "add", hostVeth.name, ...mtu, "address", hostVeth.mac, "master", bridge.name, "up",
      "type", "veth", "peer", "name", container.ifname, ...mtu, "address", container.mac, "netns", podNetns,
    ],
    ["link", "set", "dev", hostVeth.name, "alias", hostVeth.alias],
    ...(hostVeth.hairpin ? [["link", "set", "dev", hostVeth.name, "type", "bridge_slave", "hairpin", "on"]] : []),
    ["address", "show", "dev", bridge.name],
  ];
}

/** Commands run inside the pod's network namespace. */
export function renderContainerCommands(spec: PodAttachmentSpec): string[][] {
  const { container } = spec;
  const address = (entry: PodAddress) => ["address", "add", `${formatIp(entry.address)}/${entry.subnet.length}`, "dev", container.ifname, ...(entry.address.family === 6 ? ["nodad"] : [])];
  // IPv6 first: where the namespace disables it, the batch fails before changing anything.
  return [
    ...container.addresses.filter((entry) => entry.address.family === 6).map(address),
    ["link", "set", "dev", "lo", "up"],
    ...container.addresses.filter((entry) => entry.address.family === 4).map(address),
    ["link", "set", "dev", container.ifname, "up"],
    ...container.routes.map((route) => ["route", "add", formatPrefix(route.dst), ...(route.gateway ? ["via", formatIp(route.gateway)] : []), "dev", container.ifname]),
  ];
}

/** Whether the pod side needs IPv6 switched on (a namespace may start with it disabled). */
export function needsIpv6(spec: PodAttachmentSpec): boolean {
  return spec.container.addresses.some((address) => address.address.family === 6);
}
