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
 * A claim checked against the plan alone: what other claims cannot change. Worked out once per
 * claim (parsing, and the VTEP MACs' hashes, cost more than the rest of admission together at
 * 1,000 peers), so that a change to one claim re-admits the others from this.
 */
export interface PreparedClaim {
  readonly name: string;
  readonly since: number;
  readonly published: boolean;
  /** The pod CIDRs the plan allows, with their address intervals. */
  readonly podCidrs: ReadonlyArray<{ readonly prefix: IpPrefix; readonly first: bigint; readonly last: bigint }>;
  /** The addresses the plan allows, each with its text. */
  readonly addresses: ReadonlyArray<{ readonly ip: IpAddress; readonly shown: string }>;
  /** The VTEPs, their MACs derived from the name. */
  readonly vteps: ReadonlyArray<{ readonly family: Family; readonly mac: string }>;
  /** What the plan refuses of it (said only of a published claim). */
  readonly refusals: readonly PeerRefusal[];
  /** The peer as routed to when no other claim takes anything of it. */
  readonly endpoint: NodeEndpoint;
}

/**
 * Checks every claim, the oldest first, each against the plan, this node, and what the claims
 * before it kept. This node's own pod CIDRs and addresses are never given up to a peer.
 */
export function admitPeers(plan: PeerPlan, claims: Iterable<PeerClaim>): PeerAdmission {
  return admitPrepared(plan, [...claims].map((claim) => prepareClaim(plan, claim)));
}

/** `admitPeers` from claims already checked against the plan (by `prepareClaim` with the same plan). */
export function admitPrepared(plan: PeerPlan, prepared: Iterable<PreparedClaim>): PeerAdmission {
  const ordered = [...prepared].filter((claim) => claim.name !== plan.self.name).sort((a, b) => a.since - b.since || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const refusals: PeerRefusal[] = [];
  const peers = new Map<string, NodeEndpoint>();
  const podCidrs = new PrefixClaims();
  for (const cidr of plan.self.podCidrs) podCidrs.add(cidr, prefixInterval(cidr), "this node");
  const addresses = new Map<string, string>(plan.self.addresses.map((ip) => [formatIp(ip), "this node"]));
  const macs = new Map<string, string>(plan.self.vteps.map((vtep) => [vtep.mac, "this node"]));
  const holder = (owner: string, what: string) => (owner === "this node" ? `this node's ${what}` : `node ${owner}'s ${what}`);
  for (const claim of ordered) {
    if (claim.published) for (const refusal of claim.refusals) refusals.push(refusal);
    const refuse = (reason: PeerRefusalReason, message: string) => {
      if (claim.published) refusals.push({ peer: claim.name, reason, message: `node ${claim.name}: ${message}` });
    };
    const kept = claim.podCidrs.filter((cidr) => {
      const taken = podCidrs.overlapping(cidr);
      if (taken) {
        refuse("pod-cidr-conflict", `pod CIDR ${formatPrefix(cidr.prefix)} overlaps ${holder(taken.owner, "pod CIDR")} ${formatPrefix(taken.prefix)}, claimed earlier; the older claim keeps it`);
        return false;
      }
      podCidrs.add(cidr.prefix, cidr, claim.name);
      return true;
    });
    if (!claim.published) continue;
    const keptAddresses = claim.addresses.filter(({ shown }) => {
      const owner = addresses.get(shown);
      if (owner) {
        refuse("address-conflict", `node address ${shown} is ${owner === "this node" ? "this node's own" : `node ${owner}'s, claimed earlier`}; the older claim keeps it`);
        return false;
      }
      addresses.set(shown, claim.name);
      return true;
    });
    const vteps = claim.vteps.filter(({ family, mac }) => {
      const owner = macs.get(mac);
      if (owner) {
        refuse("vtep-mac-conflict", `its ${familyName(family)} VTEP MAC ${mac} is ${owner === "this node" ? "this node's own" : `node ${owner}'s, claimed earlier`}; it is not routed over VXLAN on ${familyName(family)}`);
        return false;
      }
      macs.set(mac, claim.name);
      return true;
    });
    const whole = kept.length === claim.podCidrs.length && keptAddresses.length === claim.addresses.length && vteps.length === claim.vteps.length;
    peers.set(claim.name, whole ? claim.endpoint : { name: claim.name, podCidrs: kept.map((cidr) => cidr.prefix), addresses: keptAddresses.map((entry) => entry.ip), vteps });
  }
  return { peers, refusals };
}

/** Checks a claim against the plan alone (see PreparedClaim). */
export function prepareClaim(plan: PeerPlan, claim: PeerClaim): PreparedClaim {
  const refusals: PeerRefusal[] = [];
  const refuse = (reason: PeerRefusalReason, message: string) => refusals.push({ peer: claim.name, reason, message: `node ${claim.name}: ${message}` });
  const podCidrs = preparePodCidrs(plan, claim, refuse).map((prefix) => ({ prefix, ...prefixInterval(prefix) }));
  const addresses = claim.published ? prepareAddresses(plan, claim, refuse) : [];
  const vteps = claim.published ? prepareVteps(claim, refuse) : [];
  return {
    name: claim.name,
    since: claim.since,
    published: claim.published,
    podCidrs,
    addresses,
    vteps,
    refusals,
    endpoint: { name: claim.name, podCidrs: podCidrs.map((cidr) => cidr.prefix), addresses: addresses.map((entry) => entry.ip), vteps },
  };
}

function preparePodCidrs(plan: PeerPlan, claim: PeerClaim, refuse: (reason: PeerRefusalReason, message: string) => void): IpPrefix[] {
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
  return parsed.filter((cidr) => {
    const shown = formatPrefix(cidr);
    if (!plan.clusterPodCidrs.some((cluster) => prefixContainsPrefix(cluster, cidr))) {
      refuse("pod-cidr-outside-cluster", `pod CIDR ${shown} is outside the cluster's pod CIDRs ${listPrefixes(plan.clusterPodCidrs)}`);
      return false;
    }
    const service = plan.serviceCidrs.find((prefix) => prefixesOverlap(prefix, cidr));
    if (service) {
      refuse("pod-cidr-reserved", `pod CIDR ${shown} overlaps the Service CIDR ${formatPrefix(service)}`);
      return false;
    }
    const connected = plan.connected.find((prefix) => prefixesOverlap(prefix, cidr));
    if (connected) {
      refuse("pod-cidr-reserved", `pod CIDR ${shown} overlaps ${formatPrefix(connected)}, a subnet connected to this node`);
      return false;
    }
    const address = plan.self.addresses.find((ip) => prefixContains(cidr, ip));
    if (address) {
      refuse("pod-cidr-reserved", `pod CIDR ${shown} holds this node's address ${formatIp(address)}`);
      return false;
    }
    return true;
  });
}

function prepareAddresses(plan: PeerPlan, claim: PeerClaim, refuse: (reason: PeerRefusalReason, message: string) => void): Array<{ ip: IpAddress; shown: string }> {
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
  return parsed.flatMap((ip) => {
    const shown = formatIp(ip);
    const problem = addressProblem(plan, claim, ip);
    if (problem) {
      refuse(problem.reason, `node address ${shown} ${problem.why}`);
      return [];
    }
    return [{ ip, shown }];
  });
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
function prepareVteps(claim: PeerClaim, refuse: (reason: PeerRefusalReason, message: string) => void): Array<{ family: Family; mac: string }> {
  const vteps: Array<{ family: Family; mac: string }> = [];
  for (const family of [4, 6] as const) {
    const published = claim.vteps.find((vtep) => vtep.family === family);
    if (!published) continue;
    const mac = vtepMac(claim.name, family);
    if (typeof published.mac !== "string" || published.mac.toLowerCase() !== mac) {
      refuse("vtep-mac-mismatch", `publishes VTEP MAC ${quote(published.mac)} for ${familyName(family)}; peers use the one its name gives, ${mac}`);
    }
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

  add(prefix: IpPrefix, interval: { readonly first: bigint; readonly last: bigint }, owner: string): void {
    const list = this.list(prefix.family);
    list.splice(this.firstEndingAtOrAfter(list, interval.first), 0, { first: interval.first, last: interval.last, prefix, owner });
  }

  /** The claimed prefix overlapping `cidr` (a prefix with its interval), if one does. */
  overlapping(cidr: { readonly prefix: IpPrefix; readonly first: bigint; readonly last: bigint }): { prefix: IpPrefix; owner: string } | undefined {
    const list = this.list(cidr.prefix.family);
    const candidate = list[this.firstEndingAtOrAfter(list, cidr.first)];
    return candidate && candidate.first <= cidr.last ? candidate : undefined;
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
