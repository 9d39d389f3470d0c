/**
 * hostPort: what the chained `portmap` plugin does for other plugins, as data. A pod's port
 * mappings (CNI's `portMappings` capability: hostPort, containerPort, protocol, hostIP) become
 * DNAT rules for traffic to the node's own addresses, in one nftables table per state
 * directory, written whole from every recorded mapping. A mapping with a hostIP answers on that
 * address only; without one, on every local address of each family the pod has. A client that
 * is itself a pod of the node (it may reach its own hostPort) is masqueraded, so the answer
 * comes back the way the request went; other clients keep their address.
 */
import { formatIp, formatPrefix, mergePrefixes, type Family, type IpAddress, type IpPrefix } from "../net/ip.js";

export type HostPortProtocol = "tcp" | "udp" | "sctp";

export interface HostPortMapping {
  readonly hostPort: number;
  readonly containerPort: number;
  readonly protocol: HostPortProtocol;
  readonly hostIP?: IpAddress;
}

/** One attachment's mappings, with its addresses. */
export interface HostPortContribution {
  /** Names the attachment in messages: `container ID interface IF in network NET`. */
  readonly owner: string;
  readonly mappings: readonly HostPortMapping[];
  readonly addresses: readonly IpAddress[];
  readonly subnets: readonly IpPrefix[];
}

/** The mark a hostPort DNAT leaves, for the masquerade of pod clients in postrouting. */
export const HOSTPORT_MARK = 0x2000;
const MARK = `0x${HOSTPORT_MARK.toString(16).padStart(8, "0")}`;

/**
 * The first mapping of `mine` that another attachment already holds: same protocol and port,
 * and the same hostIP or either without one (Kubernetes' own rule for hostPort conflicts).
 */
export function hostPortConflict(others: readonly HostPortContribution[], mine: readonly HostPortMapping[]): string | undefined {
  for (const mapping of mine) {
    for (const other of others) {
      const clash = other.mappings.find(
        (held) => held.protocol === mapping.protocol && held.hostPort === mapping.hostPort && (!held.hostIP || !mapping.hostIP || formatIp(held.hostIP) === formatIp(mapping.hostIP)),
      );
      if (clash) return `hostPort ${describe(mapping)} is taken by ${other.owner} (${describe(clash)})`;
    }
  }
  return undefined;
}

/** A script that makes the table hold exactly these mappings (and removes it when there are none), in one transaction. */
export function renderHostPorts(table: string, contributions: readonly HostPortContribution[]): string {
  if (!/^[A-Za-z][A-Za-z0-9_-]*$/.test(table)) throw new Error(`nftables table name ${JSON.stringify(table)} is not a plain word`);
  const lines = [`add table inet ${table}`, `delete table inet ${table}`];
  const rules = mappingRules(contributions);
  if (rules.length === 0) return lines.join("\n") + "\n";
  const subnets = (family: Family) => mergePrefixes(contributions.flatMap((contribution) => contribution.subnets.filter((prefix) => prefix.family === family)));
  lines.push(`table inet ${table} {`);
  lines.push("  chain prerouting {", "    type nat hook prerouting priority -101; policy accept;", "    fib daddr type local jump hostports", "  }");
  // The node's own clients: a mapping pinned to a loopback hostIP answers them there (the
  // upstream HostPort conformance spec dials 127.0.0.1 from the node); one without a hostIP does
  // not, so a hostPort never appears on the node's loopback unasked.
  lines.push("  chain output {", "    type nat hook output priority -101; policy accept;", "    fib daddr type local jump hostports", "  }");
  lines.push("  chain hostports {", ...rules.map((rule) => `    ${rule}`), "  }");
  lines.push("  chain postrouting {", "    type nat hook postrouting priority 99; policy accept;");
  for (const family of [4, 6] as const) {
    const own = subnets(family);
    if (own.length) lines.push(`    meta mark & ${MARK} == ${MARK} ${family === 4 ? "ip" : "ip6"} saddr { ${own.map(formatPrefix).join(", ")} } masquerade`);
  }
  lines.push("  }", "}");
  return lines.join("\n") + "\n";
}

/** One DNAT rule per mapping and pod address of a family it answers in: hostIP-specific rules first. */
function mappingRules(contributions: readonly HostPortContribution[]): string[] {
  const specific: string[] = [];
  const wildcard: string[] = [];
  for (const contribution of contributions) {
    for (const mapping of contribution.mappings) {
      checkPort(mapping.hostPort, "hostPort");
      checkPort(mapping.containerPort, "containerPort");
      for (const address of contribution.addresses) {
        if (mapping.hostIP && mapping.hostIP.family !== address.family) continue;
        const payload = address.family === 4 ? "ip" : "ip6";
        const to = address.family === 4 ? `${formatIp(address)}:${mapping.containerPort}` : `[${formatIp(address)}]:${mapping.containerPort}`;
        const match = mapping.hostIP ? `${payload} daddr ${formatIp(mapping.hostIP)}` : address.family === 4 ? "ip daddr != 127.0.0.0/8" : "ip6 daddr != ::1";
        const rule = `${match} meta l4proto ${mapping.protocol} th dport ${mapping.hostPort} meta mark set meta mark | ${MARK} dnat ${payload} to ${to}`;
        (mapping.hostIP ? specific : wildcard).push(rule);
      }
    }
  }
  return [...specific, ...wildcard];
}

function checkPort(port: number, what: string): void {
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw new Error(`${what} ${port} is not from 1 to 65535`);
}

function describe(mapping: HostPortMapping): string {
  return `${mapping.hostIP ? `${formatIp(mapping.hostIP)}:` : ""}${mapping.hostPort}/${mapping.protocol}`;
}
