/**
 * The lab's physical network: one namespace holding a bridge per underlay subnet, routing
 * between them, and hosts (nodes, `external`) each with an `eth0` on one subnet's bridge and a
 * default route via the router.
 */
import { ipBatch, type IpCommand } from "../linux/iproute.js";
import { addNamedNetns, namedNetnsPath, setNetnsSysctls } from "../linux/named-netns.js";
import { openNetns } from "../linux/netns.js";
import type { UnderlayHost, UnderlaySubnet } from "./topology.js";

/** The host side of every underlay link. */
export const UPLINK = "eth0";

/** Creates the underlay namespace: one bridge per subnet holding the router's addresses, forwarding on. */
export async function buildUnderlay(netnsName: string, subnets: readonly UnderlaySubnet[]): Promise<void> {
  await addNamedNetns(netnsName);
  await setNetnsSysctls(namedNetnsPath(netnsName), { "net.ipv4.ip_forward": "1", "net.ipv6.conf.all.forwarding": "1" });
  // A bridge takes the lowest MAC of its ports unless given one: a fixed MAC keeps the
  // router's address stable while hosts join, so no host caches a MAC that goes away.
  const commands = subnets.flatMap((subnet): IpCommand[] => [
    ["link", "add", subnet.bridge, "address", `02:18:18:00:00:${String(subnet.index).padStart(2, "0")}`, "type", "bridge"],
    ...subnet.router.map((address, i) => addressCommand(`${address}/${subnet.prefixes[i].split("/")[1]}`, subnet.bridge)),
    ["link", "set", subnet.bridge, "up"],
  ]);
  await inNetns(netnsName, commands);
}

/** Creates a host's namespace, plugs its eth0 into its subnet's bridge, and routes everything via the router. */
export async function attachUnderlayHost(underlayNetnsName: string, subnets: readonly UnderlaySubnet[], host: UnderlayHost): Promise<void> {
  const subnet = subnets[host.subnet];
  await addNamedNetns(host.netnsName);
  await inNetns(host.netnsName, [["link", "add", UPLINK, "type", "veth", "peer", "name", host.bridgePort, "netns", underlayNetnsName]]);
  await inNetns(underlayNetnsName, [
    ["link", "set", host.bridgePort, "master", subnet.bridge],
    ["link", "set", host.bridgePort, "up"],
  ]);
  await inNetns(host.netnsName, [
    ...host.interfaceAddresses.map((address) => addressCommand(address, UPLINK)),
    ["link", "set", UPLINK, "up"],
    ...subnet.router.map((router): IpCommand => ["route", "add", "default", "via", router, "dev", UPLINK]),
  ]);
}

/** Routes `ranges` in the underlay namespace via `via` (one address per range, same family). */
export async function routeInUnderlay(underlayNetnsName: string, routes: ReadonlyArray<{ readonly range: string; readonly via: string }>): Promise<void> {
  await routeInHost(underlayNetnsName, routes);
}

/** Routes `ranges` in a lab host's namespace via `via` (one address per range, same family). */
export async function routeInHost(netnsName: string, routes: ReadonlyArray<{ readonly range: string; readonly via: string }>): Promise<void> {
  await inNetns(netnsName, routes.map(({ range, via }): IpCommand => ["route", "replace", range, "via", via]));
}

/** IPv6 addresses skip duplicate address detection: the lab's addresses are unique by construction. */
function addressCommand(address: string, dev: string): IpCommand {
  return ["address", "add", address, "dev", dev, ...(address.includes(":") ? ["nodad"] : [])];
}

async function inNetns(netnsName: string, commands: readonly IpCommand[]): Promise<void> {
  const netns = openNetns(namedNetnsPath(netnsName));
  try {
    await ipBatch(commands, { netns });
  } finally {
    netns.close();
  }
}
