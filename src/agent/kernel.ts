/**
 * The agent's reach into its node's kernel: read the routes, VXLAN devices, neighbours and FDB
 * entries it owns, apply a diff in one `ip` and one `bridge` batch, and keep forwarding on.
 */
import { readFileSync, writeFileSync } from "node:fs";
import {
  parseFdb, parseForeignRoutes, parseNeighbors, parsePeerRoutes, parseVxlanDevices, type NodeNetworkChange, type ObservedNodeNetwork,
} from "../dataplane/node-network.js";
import { bridgeBatch, bridgeJson, ipBatch, ipJson, localLinkNames } from "../linux/iproute.js";

export async function observeNodeNetwork(): Promise<ObservedNodeNetwork> {
  const [devices, routes, neighbors] = await Promise.all([
    ipJson(["-details", "link", "show", "type", "vxlan"]),
    // Every route, not only the agent's: the others are what it must never replace or shadow.
    ipJson(["route", "show", "table", "all"]),
    ipJson(["neigh", "show", "nud", "permanent"]),
  ]);
  const vxlan = parseVxlanDevices(devices);
  const fdb = (await Promise.all(vxlan.map(async (device) => parseFdb(await bridgeJson(["fdb", "show", "dev", device.name]), device.name)))).flat();
  const permanent = (neighbors as Array<{ dev?: string }>).filter((entry) => vxlan.some((device) => device.name === entry.dev));
  return {
    vxlan,
    routes: parsePeerRoutes(routes),
    foreign: parseForeignRoutes(routes),
    neighbors: vxlan.flatMap((device) => parseNeighbors(permanent.filter((entry) => entry.dev === device.name), device.name)),
    fdb,
  };
}

/** Applies the change; each batch carries on past a failing command and reports it after. */
export async function applyNodeNetwork(change: NodeNetworkChange): Promise<void> {
  await ipBatch(change.ip, { force: true });
  await bridgeBatch(change.bridge, { force: true });
}

/**
 * Forwarding, interface by interface: IPv4 on the underlay, the pod bridge and the VXLAN
 * devices; IPv6 globally (Linux has no per-interface IPv6 forwarding switch), after the
 * underlay is told to keep taking router advertisements (accept_ra=2) if it took them, so a
 * node whose IPv6 default route comes from SLAAC keeps it.
 */
export function ensureForwarding(underlay: string, interfaces: readonly string[], families: ReadonlySet<4 | 6>): string[] {
  const changed: string[] = [];
  const set = (path: string, value: string) => {
    const key = `/proc/sys/net/${path}`;
    if (readFileSync(key, "utf8").trim() === value) return;
    writeFileSync(key, value);
    changed.push(`${path.replaceAll("/", ".")}=${value}`);
  };
  const present = localLinkNames();
  if (families.has(4)) for (const name of [underlay, ...interfaces]) if (present.has(name)) set(`ipv4/conf/${name}/forwarding`, "1");
  if (families.has(6)) {
    if (readFileSync(`/proc/sys/net/ipv6/conf/${underlay}/accept_ra`, "utf8").trim() === "1") set(`ipv6/conf/${underlay}/accept_ra`, "2");
    set("ipv6/conf/all/forwarding", "1");
    for (const name of interfaces) if (present.has(name)) set(`ipv6/conf/${name}/disable_ipv6`, "0");
  }
  return changed;
}
