/**
 * What the agent learns about its own node from the kernel: the node addresses (by default
 * those of the interface holding the default route), the underlay interface with its subnets
 * and MTU, and who it is (host, boot, process).
 */
import { randomUUID } from "node:crypto";
import { hostname } from "node:os";
import type { Underlay } from "../dataplane/node-network.js";
import { ipJson } from "../linux/iproute.js";
import { bootId, ownProcess } from "../linux/process.js";
import { formatIp, prefixOf, sameIp, tryParseIp, type IpAddress } from "../net/ip.js";
import type { AgentClaim } from "../cluster/node-cidrs.js";

interface AddressJson {
  ifname: string;
  mtu: number;
  addr_info?: Array<{ family: string; local: string; prefixlen: number; scope: string }>;
}

/** The global addresses of the interface each family's default route leaves by (one per family). */
export async function defaultRouteAddresses(): Promise<IpAddress[]> {
  const found: IpAddress[] = [];
  for (const family of ["-4", "-6"]) {
    const routes = await ipJson<Array<{ dev?: string }>>([family, "route", "show", "default"]);
    const dev = routes.find((route) => route.dev)?.dev;
    if (!dev) continue;
    const [link] = await ipJson<AddressJson[]>([family, "address", "show", "dev", dev, "scope", "global"]);
    const address = link?.addr_info?.map((info) => tryParseIp(info.local)).find((ip) => ip !== undefined);
    if (address) found.push(address);
  }
  return found;
}

/** The interface holding the node addresses, with their prefix lengths and its MTU; errors name an address not on this node. */
export async function findUnderlay(nodeAddresses: readonly IpAddress[]): Promise<Underlay> {
  const links = await ipJson<AddressJson[]>(["address", "show"]);
  const holders = nodeAddresses.map((address) => {
    for (const link of links) {
      const info = link.addr_info?.find((candidate) => {
        const local = tryParseIp(candidate.local);
        return local !== undefined && sameIp(local, address);
      });
      if (info) return { link, address, length: info.prefixlen };
    }
    const here = links.flatMap((link) => (link.addr_info ?? []).filter((info) => info.scope === "global").map((info) => info.local));
    throw new Error(`--node-ip ${formatIp(address)} is not an address of this node (its addresses: ${here.join(", ") || "none"})`);
  });
  const devices = [...new Set(holders.map((holder) => holder.link.ifname))];
  if (devices.length > 1) throw new Error(`the node addresses are on different interfaces (${devices.join(", ")}); give addresses of one interface with --node-ip`);
  return {
    device: devices[0],
    mtu: holders[0].link.mtu,
    addresses: holders.map((holder) => ({ address: holder.address, prefix: prefixOf(holder.address, holder.length) })),
  };
}

/** This agent process, as it claims its node. */
export function agentClaim(): AgentClaim {
  return { id: randomUUID(), host: hostname(), bootId: bootId(), ...ownProcess() };
}
