/**
 * What the kernel should hold for one pod on the node bridge, as plain data, and the
 * iproute2 / nftables text that makes it so. Nothing here touches the kernel.
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
  readonly mtu?: number;
  /** Gateway addresses, `GW/LEN`, one per pod subnet. */
  readonly addresses: readonly string[];
}

export interface PodAttachmentSpec {
  readonly bridge: BridgeSpec;
  readonly hostVeth: { readonly name: string; readonly mac: string; readonly hairpin: boolean };
  readonly container: {
    readonly netns: string;
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
  readonly netns: string;
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

/** The host end's name: fixed by the attachment, so DEL and GC find it without the netns. */
export function hostVethName(network: string, containerId: string, ifname: string): string {
  return HOST_VETH_PREFIX + createHash("sha256").update(`${network}\0${containerId}\0${ifname}`).digest("hex").slice(0, 12);
}

export function isHostVethName(name: string): boolean {
  return name.length === 15 && name.startsWith(HOST_VETH_PREFIX);
}

/** A random locally administered unicast MAC. */
export function randomMac(): string {
  const bytes = randomBytes(6);
  bytes[0] = (bytes[0] & 0xfe) | 0x02;
  return [...bytes].map((byte) => byte.toString(16).padStart(2, "0")).join(":");
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
  const bridgeAddresses = [...new Set(input.addresses.map((address) => `${formatIp(address.gateway)}/${address.subnet.length}`))];
  return {
    bridge: { name: input.bridge, mtu: input.mtu, addresses: bridgeAddresses },
    hostVeth: { name: hostVethName(input.network, input.containerId, input.ifname), mac: randomMac(), hairpin: input.hairpin },
    container: {
      netns: input.netns,
      ifname: input.ifname,
      mac: input.mac ?? randomMac(),
      mtu: input.mtu,
      addresses: input.addresses,
      routes,
    },
  };
}

/** Host-side commands once the bridge exists: bridge settings, gateway addresses, the veth pair. */
export function renderHostCommands(spec: PodAttachmentSpec): string[] {
  const { bridge, hostVeth, container } = spec;
  const mtu = container.mtu === undefined ? "" : ` mtu ${container.mtu}`;
  return [
    `link set dev ${bridge.name}${bridge.mtu === undefined ? "" : ` mtu ${bridge.mtu}`} up`,
    ...bridge.addresses.map((address) => `address replace ${address} dev ${bridge.name}${address.includes(":") ? " nodad" : ""}`),
    `link add ${hostVeth.name}${mtu} address ${hostVeth.mac} type veth peer name ${container.ifname}${mtu} address ${container.mac} netns ${container.netns}`,
    `link set dev ${hostVeth.name} master ${bridge.name}`,
    ...(hostVeth.hairpin ? [`link set dev ${hostVeth.name} type bridge_slave hairpin on`] : []),
    `link set dev ${hostVeth.name} up`,
  ];
}

/** Commands run inside the pod's network namespace. */
export function renderContainerCommands(spec: PodAttachmentSpec): string[] {
  const { container } = spec;
  return [
    "link set dev lo up",
    ...container.addresses.map(
      (address) => `address add ${formatIp(address.address)}/${address.subnet.length} dev ${container.ifname}${address.address.family === 6 ? " nodad" : ""}`,
    ),
    `link set dev ${container.ifname} up`,
    ...container.routes.map(
      (route) => `route add ${formatPrefix(route.dst)}${route.gateway ? ` via ${formatIp(route.gateway)}` : ""} dev ${container.ifname}`,
    ),
  ];
}

export const MASQUERADE_TABLE = "trellis-cni";

/**
 * The masquerade table: traffic from a pod subnet to anywhere outside the pod subnets (and
 * not multicast) leaves with the node's address; pod-to-pod traffic keeps its source.
 * The script is idempotent and applies as one transaction.
 */
export function renderMasquerade(podSubnets: readonly IpPrefix[]): string {
  const t = `inet ${MASQUERADE_TABLE}`;
  const lines = [
    `add table ${t}`,
    `add set ${t} pod-subnets-v4 { type ipv4_addr; flags interval; auto-merge; }`,
    `add set ${t} pod-subnets-v6 { type ipv6_addr; flags interval; auto-merge; }`,
    `add chain ${t} postrouting { type nat hook postrouting priority srcnat; policy accept; }`,
    `flush chain ${t} postrouting`,
    `add rule ${t} postrouting ip saddr @pod-subnets-v4 ip daddr != @pod-subnets-v4 ip daddr != 224.0.0.0/4 masquerade`,
    `add rule ${t} postrouting ip6 saddr @pod-subnets-v6 ip6 daddr != @pod-subnets-v6 ip6 daddr != ff00::/8 masquerade`,
  ];
  for (const family of [4, 6] as const) {
    const subnets = podSubnets.filter((subnet) => subnet.family === family).map(formatPrefix);
    if (subnets.length) lines.push(`add element ${t} pod-subnets-v${family} { ${subnets.join(", ")} }`);
  }
  return lines.join("\n") + "\n";
}
