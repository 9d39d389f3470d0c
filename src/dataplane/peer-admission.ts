/**
 * Which of what the other nodes claim this node acts on. A peer's pod CIDRs, node addresses and
 * VTEPs come from objects that other agents, people and compromised nodes can write (a Node on
 * the Kubernetes API, a node record in the Trellis store), and each turns into routes, FDB
 * entries, neighbours and masquerade exclusions on every node. So each claim is checked against
 * the cluster's plan and against what this node and the other nodes already hold; where two
 * nodes claim the same thing the older claim keeps it; what can be derived (a VTEP MAC, from the
 * node name) is derived rather than taken. What is refused is said, with why, for the log,
 * metrics and events; the rest of the peer is still served. Pure: no kernel, no store.
 */
import {
  familyName, formatIp, formatPrefix, prefixContains, prefixContainsPrefix, prefixesOverlap, prefixInterval, specialRangeOf, tryParseInterfaceAddress, tryParseIp,
  type Family, type IpAddress, type IpPrefix,
} from "../net/ip.js";
import { vtepMac, type NodeEndpoint } from "./node-network.js";

/** What one peer node claims, as read from its Node object or its record in the store. */
export interface PeerClaim {
  readonly name: string;
  /** When it claimed (ms since the epoch, or a store revision): the lower is older and keeps what two claims share; ties go to the lower name. */
  readonly since: number;
  /** Whether its agent has published: only then is it routed to. Before, its pod CIDRs still count as taken. */
  readonly published: boolean;
  /** Its pod CIDRs as written (one per family). */
  readonly podCidrs: readonly string[];
  /** The node addresses it publishes, as written. */
  readonly addresses: readonly string[];
  /** The families it runs VXLAN on, with the MAC it publishes for each (only compared: the MAC used is derived from its name). */
  readonly vteps: ReadonlyArray<{ readonly family: Family; readonly mac: string }>;
  /**
   * On the Kubernetes API, the Node's own status.addresses (as its kubelet set them), which its
   * published addresses must be among, unless its agent was given them (`--node-ip`).
   */
  readonly status?: { readonly addresses: readonly IpAddress[]; readonly nodeIpGiven: boolean };
}

/** What claims are checked against. */
export interface PeerPlan {
  readonly self: NodeEndpoint;
  /** The cluster's pod CIDRs: every node pod CIDR lies inside one. */
  readonly clusterPodCidrs: readonly IpPrefix[];
  readonly serviceCidrs: readonly IpPrefix[];
  /** The ranges node addresses come from (the plan's nodeCidrs); empty when not known. */
  readonly nodeCidrs: readonly IpPrefix[];
  /** This node's connected subnets (its underlay's): no pod CIDR may take a route to them. */
  readonly connected: readonly IpPrefix[];
}

export const PEER_REFUSAL_REASONS = [
  "pod-cidr-invalid", "pod-cidr-outside-cluster", "pod-cidr-reserved", "pod-cidr-conflict",
  "address-invalid", "address-count", "address-reserved", "address-outside-node-cidrs", "address-not-in-status", "address-conflict",
  "vtep-mac-mismatch", "vtep-mac-conflict",
] as const;
export type PeerRefusalReason = (typeof PEER_REFUSAL_REASONS)[number];

export interface PeerRefusal {
  readonly peer: string;
  readonly reason: PeerRefusalReason;
  /** Names the peer, the value and why, e.g. `node evil: pod CIDR 192.0.0.0/8 is outside the cluster's pod CIDRs 10.244.0.0/16`. */
  readonly message: string;
}

export interface PeerAdmission {
  /** The published peers as this node routes to them: only what passed. */
  readonly peers: ReadonlyMap<string, NodeEndpoint>;
  readonly refusals: readonly PeerRefusal[];
}

/** A node publishes one address per family (`--node-ip` takes at most two). */
export const MAX_NODE_ADDRESSES = 2;

/**
 * Checks every claim, the oldest first, each against the plan, this node, and what the claims
 * before it kept. This node's own pod CIDRs and addresses are never given up to a peer.
 */
export function admitPeers(plan: PeerPlan, claims: Iterable<PeerClaim>): PeerAdmission {
  const ordered = [...claims].filter((claim) => claim.name !== plan.self.name).sort((a, b) => a.since - b.since || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const refusals: PeerRefusal[] = [];
  const peers = new Map<string, NodeEndpoint>();
  const podCidrs = new PrefixClaims();
  for (const cidr of plan.self.podCidrs) podCidrs.add(cidr, "this node");
  const addresses = new Map<string, string>(plan.self.addresses.map((ip) => [formatIp(ip), "this node"]));
  const macs = new Map<string, string>(plan.self.vteps.map((vtep) => [vtep.mac, "this node"]));
  for (const claim of ordered) {
    const refuse = (reason: PeerRefusalReason, message: string) => {
      if (claim.published) refusals.push({ peer: claim.name, reason, message: `node ${claim.name}: ${message}` });
    };
    const kept = admitPodCidrs(plan, claim, podCidrs, refuse);
    if (!claim.published) continue;
    const keptAddresses = admitAddresses(plan, claim, addresses, refuse);
    const vteps = admitVteps(claim, macs, refuse);
    peers.set(claim.name, { name: claim.name, addresses: keptAddresses, podCidrs: kept, vteps });
  }
  return { peers, refusals };
}

function admitPodCidrs(plan: PeerPlan, claim: PeerClaim, taken: PrefixClaims, refuse: (reason: PeerRefusalReason, message: string) => void): IpPrefix[] {
  if (claim.podCidrs.length > 2) {
    refuse("pod-cidr-invalid", `claims ${claim.podCidrs.length} pod CIDRs; a node has at most one per family`);
    return [];
  }
  const parsed: IpPrefix[] = [];
  for (const text of claim.podCidrs) {
    const entry = typeof text === "string" ? tryParseInterfaceAddress(text) : undefined;
    if (!entry || entry.address.value !== entry.prefix.network) refuse("pod-cidr-invalid", `pod CIDR ${quote(text)} is not a network prefix such as 10.244.1.0/24`);
    else parsed.push(entry.prefix);
  }
  if (parsed.length > 2 || new Set(parsed.map((cidr) => cidr.family)).size !== parsed.length) {
    refuse("pod-cidr-invalid", `pod CIDRs ${parsed.map(formatPrefix).join(", ")} are not one per family`);
    return [];
  }
  const kept: IpPrefix[] = [];
  for (const cidr of parsed) {
    const shown = formatPrefix(cidr);
    if (!plan.clusterPodCidrs.some((cluster) => prefixContainsPrefix(cluster, cidr))) {
      refuse("pod-cidr-outside-cluster", `pod CIDR ${shown} is outside the cluster's pod CIDRs ${listPrefixes(plan.clusterPodCidrs)}`);
      continue;
    }
    const service = plan.serviceCidrs.find((prefix) => prefixesOverlap(prefix, cidr));
    if (service) {
      refuse("pod-cidr-reserved", `pod CIDR ${shown} overlaps the Service CIDR ${formatPrefix(service)}`);
      continue;
    }
    const connected = plan.connected.find((prefix) => prefixesOverlap(prefix, cidr));
    if (connected) {
      refuse("pod-cidr-reserved", `pod CIDR ${shown} overlaps ${formatPrefix(connected)}, a subnet connected to this node`);
      continue;
    }
    const address = plan.self.addresses.find((ip) => prefixContains(cidr, ip));
    if (address) {
      refuse("pod-cidr-reserved", `pod CIDR ${shown} holds this node's address ${formatIp(address)}`);
      continue;
    }
    const holder = taken.overlapping(cidr);
    if (holder) {
      refuse("pod-cidr-conflict", `pod CIDR ${shown} overlaps ${holder.owner === "this node" ? "this node's" : `node ${holder.owner}'s`} pod CIDR ${formatPrefix(holder.prefix)}, claimed earlier; the older claim keeps it`);
      continue;
    }
    taken.add(cidr, claim.name);
    kept.push(cidr);
  }
  return kept;
}

function admitAddresses(plan: PeerPlan, claim: PeerClaim, taken: Map<string, string>, refuse: (reason: PeerRefusalReason, message: string) => void): IpAddress[] {
  if (claim.addresses.length > MAX_NODE_ADDRESSES) {
    refuse("address-count", `publishes ${claim.addresses.length} node addresses; a node has at most one per family`);
    return [];
  }
  const parsed: IpAddress[] = [];
  for (const text of claim.addresses) {
    const ip = typeof text === "string" ? tryParseIp(text.trim()) : undefined;
    if (!ip) refuse("address-invalid", `node address ${quote(text)} is not an IP address`);
    else parsed.push(ip);
  }
  if (new Set(parsed.map((ip) => ip.family)).size !== parsed.length) {
    refuse("address-count", `node addresses ${parsed.map(formatIp).join(", ")} are not one per family`);
    return [];
  }
  const kept: IpAddress[] = [];
  for (const ip of parsed) {
    const shown = formatIp(ip);
    const problem = addressProblem(plan, claim, ip);
    if (problem) {
      refuse(problem.reason, `node address ${shown} ${problem.why}`);
      continue;
    }
    const holder = taken.get(shown);
    if (holder) {
      refuse("address-conflict", `node address ${shown} is ${holder === "this node" ? "this node's own" : `node ${holder}'s, claimed earlier`}; the older claim keeps it`);
      continue;
    }
    taken.set(shown, claim.name);
    kept.push(ip);
  }
  return kept;
}

function addressProblem(plan: PeerPlan, claim: PeerClaim, ip: IpAddress): { reason: PeerRefusalReason; why: string } | undefined {
  const special = specialRangeOf(ip);
  if (special) return { reason: "address-reserved", why: `is a ${special.use} address` };
  const pods = plan.clusterPodCidrs.find((prefix) => prefixContains(prefix, ip));
  if (pods) return { reason: "address-reserved", why: `lies in the pod CIDR ${formatPrefix(pods)}` };
  const services = plan.serviceCidrs.find((prefix) => prefixContains(prefix, ip));
  if (services) return { reason: "address-reserved", why: `lies in the Service CIDR ${formatPrefix(services)}` };
  const ranges = plan.nodeCidrs.filter((prefix) => prefix.family === ip.family);
  if (ranges.length && !ranges.some((prefix) => prefixContains(prefix, ip))) {
    return { reason: "address-outside-node-cidrs", why: `is outside the cluster's node CIDRs ${listPrefixes(ranges)}` };
  }
  const status = claim.status;
  if (status && !status.nodeIpGiven) {
    const listed = status.addresses.filter((entry) => entry.family === ip.family);
    if (listed.length && !listed.some((entry) => entry.value === ip.value)) {
      return { reason: "address-not-in-status", why: `is not among its Node's ${familyName(ip.family)} status.addresses (${listed.map(formatIp).join(", ")})` };
    }
  }
  return undefined;
}

/** The VTEP MAC of each family the peer runs VXLAN on, derived from its name; a published one that differs is said and ignored. */
function admitVteps(claim: PeerClaim, taken: Map<string, string>, refuse: (reason: PeerRefusalReason, message: string) => void): Array<{ family: Family; mac: string }> {
  const vteps: Array<{ family: Family; mac: string }> = [];
  for (const family of [4, 6] as const) {
    const published = claim.vteps.find((vtep) => vtep.family === family);
    if (!published) continue;
    const mac = vtepMac(claim.name, family);
    if (typeof published.mac !== "string" || published.mac.toLowerCase() !== mac) {
      refuse("vtep-mac-mismatch", `publishes VTEP MAC ${quote(published.mac)} for ${familyName(family)}; peers use the one its name gives, ${mac}`);
    }
    const holder = taken.get(mac);
    if (holder) {
      refuse("vtep-mac-conflict", `its ${familyName(family)} VTEP MAC ${mac} is ${holder === "this node" ? "this node's own" : `node ${holder}'s, claimed earlier`}; it is not routed over VXLAN on ${familyName(family)}`);
      continue;
    }
    taken.set(mac, claim.name);
    vteps.push({ family, mac });
  }
  return vteps;
}

/**
 * Prefixes claimed so far, none overlapping another: per family, their address intervals in
 * order, so a new claim is checked with a binary search rather than against every peer.
 */
class PrefixClaims {
  private readonly byFamily = new Map<Family, Array<{ first: bigint; last: bigint; prefix: IpPrefix; owner: string }>>();

  add(prefix: IpPrefix, owner: string): void {
    const list = this.list(prefix.family);
    const { first, last } = prefixInterval(prefix);
    list.splice(this.firstEndingAtOrAfter(list, first), 0, { first, last, prefix, owner });
  }

  /** The claimed prefix overlapping `prefix`, if one does. */
  overlapping(prefix: IpPrefix): { prefix: IpPrefix; owner: string } | undefined {
    const list = this.list(prefix.family);
    const { first, last } = prefixInterval(prefix);
    const candidate = list[this.firstEndingAtOrAfter(list, first)];
    return candidate && candidate.first <= last ? candidate : undefined;
  }

  private list(family: Family) {
    let list = this.byFamily.get(family);
    if (!list) this.byFamily.set(family, (list = []));
    return list;
  }

  /** The index of the first interval that ends at or after `address` (they are disjoint, so sorted by both ends). */
  private firstEndingAtOrAfter(list: ReadonlyArray<{ last: bigint }>, address: bigint): number {
    let low = 0;
    let high = list.length;
    while (low < high) {
      const middle = (low + high) >> 1;
      if (list[middle].last < address) low = middle + 1;
      else high = middle;
    }
    return low;
  }
}

function listPrefixes(prefixes: readonly IpPrefix[]): string {
  return prefixes.length ? prefixes.map(formatPrefix).join(", ") : "(none)";
}

/** A value from another node, shown safely and briefly in a message. */
function quote(value: unknown): string {
  const text = JSON.stringify(typeof value === "string" ? value : String(value));
  return text.length > 80 ? `${text.slice(0, 77)}..."` : text;
}
