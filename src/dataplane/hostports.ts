/**
 * hostPort: what the chained `portmap` plugin does for other plugins, as data. A pod's port
 * mappings (CNI's `portMappings` capability: hostPort, containerPort, protocol, hostIP) become
 * DNAT rules for traffic to the node's own addresses, in one nftables table per state
 * directory, written whole from every recorded mapping. A mapping with a hostIP answers on that
 * address only; without one, on every local address of each family the pod has. A client that
 * is itself a pod of the node (it may reach its own hostPort) is masqueraded, so the answer
 * comes back the way the request went; other clients keep their address.
 */
import { formatIp, mergePrefixes, parsePrefix, type Family, type IpAddress, type IpPrefix } from "../net/ip.js";
import { deleteTable, rewriteTable } from "../nft/diff.js";
import { addressField, addressType, jump, newSet, rule, verdictRule, type Match, type NftSet, type Op, type Rule, type Table } from "../nft/model.js";
import { renderOps } from "../nft/text.js";

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

/**
 * The steps that make the table hold exactly these mappings, written whole in one transaction
 * (and that remove it when there are none), whether or not it exists: through nftables' model,
 * so the netlink writer can send them without nft's read of the whole namespace.
 */
export function hostPortOps(table: string, contributions: readonly HostPortContribution[]): Op[] {
  if (!/^[A-Za-z][A-Za-z0-9_-]*$/.test(table)) throw new Error(`nftables table name ${JSON.stringify(table)} is not a plain word`);
  const desired = desiredHostPorts(table, contributions);
  return desired ? rewriteTable(desired) : deleteTable("inet", table, false);
}

/** `hostPortOps` as an `nft -f` script. */
export function renderHostPorts(table: string, contributions: readonly HostPortContribution[]): string {
  return renderOps(hostPortOps(table, contributions));
}

/** The table these mappings need; undefined when there are none. */
export function desiredHostPorts(table: string, contributions: readonly HostPortContribution[]): Table | undefined {
  const rules = mappingRules(contributions);
  if (rules.length === 0) return undefined;
  const subnets = (family: Family) => mergePrefixes(contributions.flatMap((contribution) => contribution.subnets.filter((prefix) => prefix.family === family)));
  const toLocal = verdictRule([{ match: "fib local", field: "daddr" }], jump("hostports"));
  const postrouting: Rule[] = [];
  const sets = new Map<string, NftSet>();
  for (const family of [4, 6] as const) {
    const own = subnets(family);
    if (!own.length) continue;
    const name = `pod-subnets-${family === 4 ? "ip" : "ip6"}`;
    sets.set(name, newSet({ kind: "set", key: [addressType(family)], flags: ["interval"] }, own.map((prefix) => ({ key: [prefix] }))));
    postrouting.push(rule([{ match: "mark", mask: HOSTPORT_MARK, value: HOSTPORT_MARK }, { match: "in set", key: [addressField(family, "saddr")], set: name }], { statement: "masquerade" }));
  }
  return {
    family: "inet",
    name: table,
    baseChains: new Map([
      ["prerouting", { type: "nat", hook: "prerouting", priority: -101 }],
      ["output", { type: "nat", hook: "output", priority: -101 }],
      ["postrouting", { type: "nat", hook: "postrouting", priority: 99 }],
    ]),
    chains: new Map([
      ["prerouting", [toLocal]],
      // The node's own clients: a mapping pinned to a loopback hostIP answers them there (the
      // upstream HostPort conformance spec dials 127.0.0.1 from the node); one without a hostIP does
      // not, so a hostPort never appears on the node's loopback unasked.
      ["output", [toLocal]],
      ["hostports", rules],
      ["postrouting", postrouting],
    ]),
    sets,
  };
}

const LOOPBACK: Record<Family, IpPrefix> = { 4: parsePrefix("127.0.0.0/8"), 6: parsePrefix("::1/128") };

/** One DNAT rule per mapping and pod address of a family it answers in: hostIP-specific rules first. */
function mappingRules(contributions: readonly HostPortContribution[]): Rule[] {
  const specific: Rule[] = [];
  const wildcard: Rule[] = [];
  for (const contribution of contributions) {
    for (const mapping of contribution.mappings) {
      checkPort(mapping.hostPort, "hostPort");
      checkPort(mapping.containerPort, "containerPort");
      for (const address of contribution.addresses) {
        if (mapping.hostIP && mapping.hostIP.family !== address.family) continue;
        const daddr = addressField(address.family, "daddr");
        const to: Match = mapping.hostIP
          ? { match: "address", field: daddr, value: mapping.hostIP }
          : { match: "address", field: daddr, value: LOOPBACK[address.family], negate: true };
        const dnat = rule(
          [to, { match: "protocol", protocol: mapping.protocol }, { match: "port", field: "th dport", port: mapping.hostPort }],
          { statement: "mark", op: "or", bits: HOSTPORT_MARK },
          { statement: "dnat", family: address.family, address, port: mapping.containerPort },
        );
        (mapping.hostIP ? specific : wildcard).push(dnat);
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
