/**
 * NetworkPolicy and ClusterNetworkPolicy as one node's nftables table, the semantics of judge.ts
 * put in the kernel: every decision is the kernel's, per connection, never a process's.
 *
 *   table inet trellis-policy
 *     chain forward { filter hook forward priority 0 }      pods to pods and the world, both ways
 *       ct state established,related accept               a connection let in stays let in
 *       ip saddr vmap @egress-4 ; ip6 saddr vmap @egress-6   a local pod sending: its egress chain
 *       goto judge-ingress
 *     chain input { filter hook input priority 0 }         pods to this node: egress only
 *     chain judge-ingress                                  a local pod receiving: its ingress chain; else accept
 *     chain egress-HASH / ingress-HASH                     the Admin tier, in order; Pass and its end go to
 *     chain egress-rest-HASH / ingress-rest-HASH           the NetworkPolicy tier, or the Baseline tier
 *     chain ingress-port-HASH, map ingress-ports-HASH      a NetworkPolicy tier's rules of one protocol and port,
 *                                                          found by one lookup (from PORT_DISPATCH_MIN ports on)
 *     counter denied-HASH                                  the packets one policy denied in one direction
 *     set peer-HASH-4 / -6                                 the addresses of the pods a selector picks, cluster-wide
 *     set cidr-HASH-4 / -6  (interval)                     an ipBlock less its exceptions, a CNP's networks
 *     set named-NAME-4 / -6                                address . protocol . port of every pod's port of that name
 *
 * Traffic a Service's DNAT sent to a pod is judged after the DNAT (forward comes after
 * prerouting), against the real endpoint. Bridged traffic between two pods of the node passes
 * the same hook (br_netfilter). A pod's chain is named by the hash of what it holds, so pods that
 * the same policies select in the same way share it: the rules grow with policies and peers,
 * not with pods times policies. An egress decision to let through goes on to judge-ingress (a
 * goto, final at any depth), where the destination's ingress is judged; a connection passes only
 * if both let it. A new connection to a pod that 1,000 policies select costs one port lookup and
 * that port's rules, not 1,000 rules; a policy added writes its port's chain and elements, not
 * the pod's other rules again.
 */
import { createHash } from "node:crypto";
import { intervalPrefixes, mergeIntervals, prefixInterval, subtractInterval, tryParseInterfaceAddress, type Family, type IpAddress, type IpInterval } from "../net/ip.js";
import { accept, drop, goto, jump, newSet, rule, verdictRule, type Element, type Field, type Match, type NftSet, type Protocol, type Rule, type Table, type Verdict } from "../nft/model.js";
import { ruleText } from "../nft/text.js";
import { isolatingPolicies, namespaceLabels, networkRulePeers, rulePeers, tierPolicies } from "./judge.js";
import { selects } from "./selector.js";
import type {
  ClusterNetworkPolicy, ClusterPolicyProtocol, ClusterPolicyRule, ClusterPolicyTier, Direction, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort,
  PolicyPod, PolicyProtocol, PolicyWorld,
} from "./types.js";

export const POLICY_TABLE = "trellis-policy";

export interface PolicyRulesInput {
  readonly world: PolicyWorld;
  /** Every pod of the cluster, the peers; host-network pods count as no pod. */
  readonly pods: readonly PolicyPod[];
  /** The pods on this node, whose connections these rules judge. */
  readonly local: readonly PolicyPod[];
  /** Peer sets kept from the table before, brought up to date with what changed (see PeerSets). */
  readonly peerSets?: PeerSets;
  /** Where denied connections are logged: each denial's first packets, at most `rate` a second per deciding policy, to nflog `group`. */
  readonly denyLog?: { readonly group: number; readonly rate: number };
}

/** What a named counter of the table counts: the packets a policy denied in one direction. */
export interface Denial {
  readonly direction: Direction;
  /** `NetworkPolicy NS/NAME` (several, comma-separated, when they isolate the pod together), or `ClusterNetworkPolicy NAME`. */
  readonly policy: string;
}

/** The node's policy table, and what each of its named counters (also its log prefixes) stands for. */
export interface PolicyRules {
  readonly table: Table | undefined;
  readonly denials: ReadonlyMap<string, Denial>;
}

/** A set of pods, as a selector (or a named port) picks them. */
interface PeerEntry {
  picks: (pod: PolicyPod) => boolean;
  /** The picked pods (with an address, on no host network). */
  readonly members: Set<PolicyPod>;
  /** The sets built from `members`, per family; dropped when they change. */
  built: Partial<Record<Family, NftSet>>;
  /** Whether the last table used it. */
  used: boolean;
}

/**
 * The pod peer sets of one node's table, kept from one table to the next: each pod that changed
 * since (a new object) is weighed against every set once, rather than every set against every
 * pod again, and an unchanged set keeps its very object, so the diff passes it over at once. A
 * table of 1,000 policies over 10,000 pods is then built in the time its chains take, and one
 * pod or one policy changed costs that pod or that policy. Namespace labels changing (rare)
 * start every set afresh.
 */
export class PeerSets {
  private readonly entries = new Map<string, PeerEntry>();
  private pods = new Set<PolicyPod>();
  private namespaces = "";

  /** Brings every set up to date with `pods` and the namespaces' labels. */
  update(world: PolicyWorld, pods: readonly PolicyPod[]): void {
    const namespaces = JSON.stringify([...world.namespaces.values()].map((namespace) => [namespace.name, namespace.labels]));
    if (namespaces !== this.namespaces) {
      this.entries.clear();
      this.namespaces = namespaces;
    }
    const now = new Set(pods);
    for (const pod of this.pods) {
      if (now.has(pod)) continue;
      for (const entry of this.entries.values()) if (entry.members.delete(pod)) entry.built = {};
    }
    for (const pod of now) {
      if (this.pods.has(pod)) continue;
      for (const entry of this.entries.values()) {
        if (!pod.hostNetwork && pod.ips.length && entry.picks(pod)) {
          entry.members.add(pod);
          entry.built = {};
        }
      }
    }
    this.pods = now;
    for (const entry of this.entries.values()) entry.used = false;
  }

  /** The set named `name` of the pods `picks` (found on first use), for `family`, built from them by `build`. */
  set(name: string, picks: (pod: PolicyPod) => boolean, family: Family, build: (pods: readonly PolicyPod[]) => NftSet): NftSet {
    let entry = this.entries.get(name);
    if (!entry) {
      entry = { picks, members: new Set(), built: {}, used: true };
      for (const pod of this.pods) if (!pod.hostNetwork && pod.ips.length && picks(pod)) entry.members.add(pod);
      this.entries.set(name, entry);
    }
    entry.used = true;
    entry.picks = picks;
    return (entry.built[family] ??= build([...entry.members]));
  }

  /** Forgets the sets the last table did not use. */
  prune(): void {
    for (const [name, entry] of this.entries) if (!entry.used) this.entries.delete(name);
  }
}

const FAMILIES = [4, 6] as const;
const IP: Record<Family, "ip" | "ip6"> = { 4: "ip", 6: "ip6" };
const NFT_PROTOCOL: Record<PolicyProtocol, Protocol> = { TCP: "tcp", UDP: "udp", SCTP: "sctp" };

/** The node's policy table; undefined when no policy selects any of its pods (the table should not exist). */
export function policyTable(input: PolicyRulesInput): Table | undefined {
  return policyRules(input).table;
}

/** The node's policy table with what its counters count. */
export function policyRules(input: PolicyRulesInput): PolicyRules {
  const peerSets = input.peerSets ?? new PeerSets();
  peerSets.update(input.world, input.pods);
  const builder = new TableBuilder(input, peerSets);
  const table = builder.build();
  peerSets.prune();
  return { table, denials: table ? builder.denials : new Map() };
}

/** One alternative of a rule's tests, per family: undefined when it cannot match that family. */
type Alternative = (family: Family) => Match[] | undefined;

/** A port alternative; `exact` when it is one protocol and port (found by lookup instead of by a rule each). */
interface PortAlternative {
  readonly alternative: Alternative;
  readonly exact?: [Protocol, number];
}

/** The chain a pod's egress goes on to once let through: the receiver's ingress, if it is judged here. */
const JUDGE_INGRESS = "judge-ingress";
/** From this many ports on, a NetworkPolicy chain finds a connection's rules by one lookup of its protocol and port. */
const PORT_DISPATCH_MIN = 4;

class TableBuilder {
  private readonly chains = new Map<string, readonly Rule[]>();
  private readonly sets = new Map<string, NftSet>();
  private readonly vmaps: Record<Direction, Record<Family, Element[]>> = { Ingress: { 4: [], 6: [] }, Egress: { 4: [], 6: [] } };
  /** Each pod chain made, by what decides its rules: pods the same policies judge share it. */
  private readonly podChains = new Map<string, string | undefined>();
  /** The table's named counters, each the denials of one policy (or isolating set) in one direction. */
  readonly denials = new Map<string, Denial>();

  constructor(
    private readonly input: PolicyRulesInput,
    private readonly peerSets: PeerSets,
  ) {}

  build(): Table | undefined {
    for (const pod of this.input.local) {
      if (pod.hostNetwork) continue;
      for (const direction of ["Egress", "Ingress"] as const) {
        const chain = this.podChain(pod, direction);
        if (!chain) continue;
        for (const ip of pod.ips) this.vmaps[direction][ip.family].push({ key: [ip], value: jump(chain) });
      }
    }
    if (this.chains.size === 0) return undefined;
    for (const direction of ["Egress", "Ingress"] as const) {
      for (const family of FAMILIES) {
        this.sets.set(vmapName(direction, family), newSet({ kind: "map", key: [family === 4 ? "ipv4_addr" : "ipv6_addr"], value: "verdict", flags: [] }, this.vmaps[direction][family]));
      }
    }
    const established = verdictRule([{ match: "ct state", states: ["established", "related"] }], accept);
    const dispatch = (direction: Direction) =>
      FAMILIES.map((family) => rule([], { statement: "vmap", key: [`${IP[family]} ${direction === "Egress" ? "saddr" : "daddr"}`], map: vmapName(direction, family) }));
    this.chains.set("forward", [established, ...dispatch("Egress"), verdictRule([], goto(JUDGE_INGRESS))]);
    this.chains.set("input", [established, ...dispatch("Egress")]);
    this.chains.set(JUDGE_INGRESS, [...dispatch("Ingress"), verdictRule([], accept)]);
    return {
      family: "inet",
      name: POLICY_TABLE,
      baseChains: new Map([
        ["forward", { type: "filter", hook: "forward", priority: 0 }],
        ["input", { type: "filter", hook: "input", priority: 0 }],
      ]),
      chains: this.chains,
      sets: this.sets,
      counters: new Set(this.denials.keys()),
    };
  }

  /**
   * The statements that drop what `policy` denies in `direction`, counted by a named counter of
   * its own (and logged, with that name as the prefix, when the input asks for it), as rules
   * with `match`: the log rule goes first (it has no verdict), then the counted drop.
   */
  private denied(match: readonly Match[], direction: Direction, policy: string): Rule[] {
    const counter = `denied-${hashOf([direction, policy])}`;
    this.denials.set(counter, { direction, policy });
    const counted = rule(match, { statement: "counter", name: counter }, { statement: "verdict", verdict: drop });
    const log = this.input.denyLog;
    if (!log) return [counted];
    return [rule(match, { statement: "limit", rate: log.rate, burst: log.rate * 2 }, { statement: "log", prefix: counter, group: log.group }), counted];
  }

  /** The chain that judges `pod` in `direction` (shared with every pod judged alike); undefined when nothing judges it. */
  private podChain(pod: PolicyPod, direction: Direction): string | undefined {
    const { world } = this.input;
    // Let through: ingress at once; egress on to the receiver's ingress (a goto: final at any depth of jumps).
    const allow = direction === "Egress" ? goto(JUDGE_INGRESS) : accept;
    const admin = this.clusterRules("Admin", pod, direction);
    const isolating = isolatingPolicies(world, pod, direction);
    const baseline = this.clusterRules("Baseline", pod, direction);
    if (admin.length === 0 && isolating.length === 0 && baseline.length === 0) return undefined;
    // What the rules depend on besides the policies: the pod's own ports (its named ports).
    const key = JSON.stringify([
      direction,
      admin.map(({ policy }) => policy.metadata.name),
      isolating.map((policy) => `${policy.metadata.namespace}/${policy.metadata.name}`),
      baseline.map(({ policy }) => policy.metadata.name),
      pod.ports ?? [],
    ]);
    if (this.podChains.has(key)) return this.podChains.get(key);
    const name = this.buildPodChain(pod, direction, allow, admin, isolating, baseline);
    this.podChains.set(key, name);
    return name;
  }

  private buildPodChain(
    pod: PolicyPod,
    direction: Direction,
    allow: Verdict,
    admin: ReadonlyArray<{ policy: ClusterNetworkPolicy; rule: ClusterPolicyRule }>,
    isolating: readonly NetworkPolicy[],
    baseline: ReadonlyArray<{ policy: ClusterNetworkPolicy; rule: ClusterPolicyRule }>,
  ): string {
    const rest: Rule[] = [];
    if (isolating.length) {
      // NetworkPolicies add up, in no order: the rules of one protocol and port are found by one
      // lookup of the connection's, then the rest (any port, port ranges, ports named per peer).
      const byPort = new Map<string, { key: [Protocol, number]; alternative: Alternative; peers: Alternative[][] }>();
      const others: Rule[] = [];
      for (const policy of isolating) {
        const rules = (direction === "Ingress" ? policy.spec.ingress : policy.spec.egress) ?? [];
        for (const npRule of rules) {
          const peers = this.networkPeers(policy, networkRulePeers(npRule, direction), direction);
          for (const port of this.networkPorts(npRule.ports, pod, direction)) {
            if (!port.exact) {
              others.push(...this.expand(peers, [port.alternative], allow));
              continue;
            }
            const id = `${port.exact[0]} ${port.exact[1]}`;
            const entry = byPort.get(id) ?? { key: port.exact, alternative: port.alternative, peers: [] };
            entry.peers.push(peers);
            byPort.set(id, entry);
          }
        }
      }
      if (byPort.size >= PORT_DISPATCH_MIN) {
        // A port's chain holds its rules' peer tests alone: the lookup has matched the port.
        const elements = [...byPort.values()].map(({ key, peers }) => ({ key, chain: this.chain(`${direction.toLowerCase()}-port`, peers.flatMap((each) => this.expand(each, [() => []], allow))) }));
        const map = `${direction.toLowerCase()}-ports-${hashOf(elements.map(({ key, chain }) => `${key.join(" ")} ${chain}`))}`;
        this.sets.set(map, newSet({ kind: "map", key: ["inet_proto", "inet_service"], value: "verdict", flags: [] }, elements.map(({ key, chain }) => ({ key, value: jump(chain) }))));
        rest.push(rule([], { statement: "vmap", key: ["meta l4proto", "th dport"], map }));
      } else {
        for (const { alternative, peers } of byPort.values()) for (const each of peers) rest.push(...this.expand(each, [alternative], allow));
      }
      rest.push(...others);
      rest.push(...this.denied([], direction, isolating.map((policy) => `NetworkPolicy ${policy.metadata.namespace}/${policy.metadata.name}`).join(",")));
    } else {
      for (const { policy, rule: cnpRule } of baseline) {
        // Baseline's Pass goes on to the default, which lets the connection through.
        const verdict = cnpRule.action === "Deny" ? this.deniedBy(direction, policy) : allow;
        rest.push(...this.expand(this.clusterPeers(cnpRule, direction), this.clusterProtocols(cnpRule.protocols, pod, direction), verdict));
      }
      rest.push(verdictRule([], allow));
    }
    const restName = this.chain(`${direction.toLowerCase()}-rest`, rest);
    const main: Rule[] = [];
    for (const { policy, rule: cnpRule } of admin) {
      const verdict = cnpRule.action === "Accept" ? allow : cnpRule.action === "Deny" ? this.deniedBy(direction, policy) : goto(restName);
      main.push(...this.expand(this.clusterPeers(cnpRule, direction), this.clusterProtocols(cnpRule.protocols, pod, direction), verdict));
    }
    main.push(verdictRule([], goto(restName)));
    return this.chain(direction.toLowerCase(), main);
  }

  /** Adds a chain named by its kind and the hash of its rules (one chain for every pod that needs the same). */
  private chain(kind: string, rules: readonly Rule[]): string {
    const name = `${kind}-${hashOf([kind, ...rules.map(ruleText)])}`;
    this.chains.set(name, rules);
    return name;
  }

  /** Every combination of a peer alternative and a port alternative, per family, with `verdict` (or the rules of a denial). */
  private expand(peers: readonly Alternative[], ports: readonly Alternative[], verdict: Verdict | ((match: readonly Match[]) => Rule[])): Rule[] {
    const rules: Rule[] = [];
    for (const family of FAMILIES) {
      for (const peer of peers) {
        const peerMatch = peer(family);
        if (!peerMatch) continue;
        for (const port of ports) {
          const portMatch = port(family);
          if (!portMatch) continue;
          const match = [...peerMatch, ...portMatch];
          if (typeof verdict === "function") rules.push(...verdict(match));
          else rules.push(verdictRule(match, verdict));
        }
      }
    }
    return rules;
  }

  /** The rules of a ClusterNetworkPolicy's Deny, for `expand`. */
  private deniedBy(direction: Direction, policy: ClusterNetworkPolicy): (match: readonly Match[]) => Rule[] {
    return (match) => this.denied(match, direction, `ClusterNetworkPolicy ${policy.metadata.name}`);
  }

  private clusterRules(tier: ClusterPolicyTier, pod: PolicyPod, direction: Direction): Array<{ policy: ClusterNetworkPolicy; rule: ClusterPolicyRule }> {
    return tierPolicies(this.input.world, tier, pod)
      .flatMap((policy) => ((direction === "Ingress" ? policy.spec.ingress : policy.spec.egress) ?? []).map((cnpRule) => ({ policy, rule: cnpRule })));
  }

  // ---- peers ----

  private networkPeers(policy: NetworkPolicy, peers: readonly NetworkPolicyPeer[] | undefined, direction: Direction): Alternative[] {
    if (!peers || peers.length === 0) return [() => []];
    return peers.map((peer): Alternative => {
      if (peer.ipBlock) {
        const cut = (peer.ipBlock.except ?? []).flatMap((text) => intervalOf(text) ?? []);
        const whole = intervalOf(peer.ipBlock.cidr);
        const intervals = whole ? cut.reduce((left, except) => subtractInterval(left, except), [whole]) : [];
        return this.cidrAlternative(intervals, direction);
      }
      const namespaceSelector = peer.namespaceSelector;
      const podSelector = peer.podSelector ?? {};
      return this.podsAlternative(
        (candidate) => (namespaceSelector ? selects(namespaceSelector, namespaceLabels(this.input.world, candidate.namespace)) : candidate.namespace === policy.metadata.namespace) && selects(podSelector, candidate.labels),
        { namespace: namespaceSelector ? undefined : policy.metadata.namespace, namespaceSelector, podSelector },
        direction,
      );
    });
  }

  private clusterPeers(cnpRule: ClusterPolicyRule, direction: Direction): Alternative[] {
    return rulePeers(cnpRule, direction).flatMap((peer): Alternative[] => {
      if (peer.namespaces) {
        const selector = peer.namespaces;
        return [this.podsAlternative((candidate) => selects(selector, namespaceLabels(this.input.world, candidate.namespace)), { namespaceSelector: selector }, direction)];
      }
      if (peer.pods) {
        const { namespaceSelector, podSelector } = peer.pods;
        return [this.podsAlternative((candidate) => selects(namespaceSelector, namespaceLabels(this.input.world, candidate.namespace)) && selects(podSelector, candidate.labels), { namespaceSelector, podSelector }, direction)];
      }
      if (direction === "Ingress") return [];
      if (peer.nodes) {
        const selector = peer.nodes;
        const addresses = this.input.world.nodes.filter((node) => selects(selector, node.labels)).flatMap((node) => node.addresses);
        return [this.addressAlternative("nodes", { nodes: selector }, addresses, direction)];
      }
      if (peer.networks) return [this.cidrAlternative(peer.networks.flatMap((text) => intervalOf(text) ?? []), direction)];
      // Domain names are resolved by DNS, which these rules do not see: such a peer matches nothing.
      return [];
    });
  }

  /** Pods that `picks`, as a set of their addresses named by what picks them. */
  private podsAlternative(picks: (pod: PolicyPod) => boolean, identity: object, direction: Direction): Alternative {
    const name = `peer-${hashOf(identity)}`;
    for (const family of FAMILIES) {
      this.sets.set(`${name}-${family}`, this.peerSets.set(name, picks, family, (pods) => addressSet(family, pods.flatMap((pod) => pod.ips.filter((ip) => ip.family === family)))));
    }
    return (family) => [{ match: "in set", key: [peerField(direction, family)], set: `${name}-${family}` }];
  }

  private addressAlternative(kind: string, identity: object, addresses: readonly IpAddress[], direction: Direction): Alternative {
    const name = `${kind}-${hashOf(identity)}`;
    for (const family of FAMILIES) this.sets.set(`${name}-${family}`, addressSet(family, addresses.filter((ip) => ip.family === family)));
    return (family) => [{ match: "in set", key: [peerField(direction, family)], set: `${name}-${family}` }];
  }

  private cidrAlternative(intervals: readonly IpInterval[], direction: Direction): Alternative {
    const merged = mergeIntervals(intervals);
    const name = `cidr-${hashOf(merged.map((interval) => `${interval.family} ${interval.first} ${interval.last}`))}`;
    for (const family of FAMILIES) {
      const elements = merged.filter((interval) => interval.family === family).flatMap(intervalPrefixes).map((prefix) => ({ key: [prefix] }));
      this.sets.set(`${name}-${family}`, newSet({ kind: "set", key: [family === 4 ? "ipv4_addr" : "ipv6_addr"], flags: ["interval"] }, elements));
    }
    // A family with nothing in the block matches nothing of that family.
    return (family) => (merged.some((interval) => interval.family === family) ? [{ match: "in set", key: [peerField(direction, family)], set: `${name}-${family}` }] : undefined);
  }

  // ---- ports ----

  /** `pod`: the pod judged; for ingress it is the destination whose ports names name. */
  private networkPorts(ports: readonly NetworkPolicyPort[] | undefined, pod: PolicyPod, direction: Direction): PortAlternative[] {
    if (!ports || ports.length === 0) return [{ alternative: () => [] }];
    return ports.flatMap((port): PortAlternative[] => {
      const protocol = port.protocol ?? "TCP";
      const proto: Match = { match: "protocol", protocol: NFT_PROTOCOL[protocol] };
      if (port.port === undefined) return [{ alternative: () => [proto] }];
      if (typeof port.port === "number") {
        const number = port.port;
        if (port.endPort !== undefined && port.endPort > number) {
          const last = port.endPort;
          return [{ alternative: () => [proto, { match: "port range", field: "th dport", first: number, last }] }];
        }
        return [{ alternative: () => [proto, { match: "port", field: "th dport", port: number }], exact: [NFT_PROTOCOL[protocol], number] }];
      }
      // Named: for ingress the judged pod's own port (exact); for egress the destinations' (a set).
      if (direction === "Ingress") {
        const found = pod.ports?.find((candidate) => candidate.name === port.port && (candidate.protocol ?? "TCP") === protocol);
        return found ? [{ alternative: () => [proto, { match: "port", field: "th dport", port: found.containerPort }], exact: [NFT_PROTOCOL[protocol], found.containerPort] }] : [];
      }
      return this.namedPort(port.port, protocol, pod, direction).map((alternative) => ({ alternative }));
    });
  }

  private clusterProtocols(protocols: readonly ClusterPolicyProtocol[] | undefined, pod: PolicyPod, direction: Direction): Alternative[] {
    if (!protocols || protocols.length === 0) return [() => []];
    return protocols.flatMap((entry): Alternative[] => {
      if (entry.destinationNamedPort !== undefined) {
        return (["TCP", "UDP", "SCTP"] as const).flatMap((protocol) => this.namedPort(entry.destinationNamedPort!, protocol, pod, direction));
      }
      return (["TCP", "UDP", "SCTP"] as const).flatMap((protocol): Alternative[] => {
        const chosen = { TCP: entry.tcp, UDP: entry.udp, SCTP: entry.sctp }[protocol];
        if (!chosen) return [];
        const proto: Match = { match: "protocol", protocol: NFT_PROTOCOL[protocol] };
        const port = chosen.destinationPort;
        if (port?.number !== undefined) {
          const number = port.number;
          return [() => [proto, { match: "port", field: "th dport", port: number }]];
        }
        if (port?.range) {
          const { start, end } = port.range;
          return [() => [proto, start === end ? { match: "port", field: "th dport", port: start } : { match: "port range", field: "th dport", first: start, last: end }]];
        }
        return [() => [proto]];
      });
    });
  }

  /**
   * A named port: for ingress, the judged pod's own container port of that name (none: nothing
   * matches); for egress, a set of every pod's address, protocol and port of that name, which
   * the destination must be in.
   */
  private namedPort(name: string, protocol: PolicyProtocol, pod: PolicyPod, direction: Direction): Alternative[] {
    const proto: Match = { match: "protocol", protocol: NFT_PROTOCOL[protocol] };
    if (direction === "Ingress") {
      const found = pod.ports?.find((port) => port.name === name && (port.protocol ?? "TCP") === protocol);
      return found ? [() => [proto, { match: "port", field: "th dport", port: found.containerPort }]] : [];
    }
    const setName = `named-${hashOf([name, protocol])}`;
    const portOf = (candidate: PolicyPod) => candidate.ports?.find((port) => port.name === name && (port.protocol ?? "TCP") === protocol);
    for (const family of FAMILIES) {
      const set = this.peerSets.set(setName, (candidate) => portOf(candidate) !== undefined, family, (pods) =>
        newSet(
          { kind: "set", key: [family === 4 ? "ipv4_addr" : "ipv6_addr", "inet_proto", "inet_service"], flags: [] },
          pods.flatMap((candidate) => candidate.ips.filter((ip) => ip.family === family).map((ip) => ({ key: [ip, NFT_PROTOCOL[protocol], portOf(candidate)!.containerPort] }))),
        ),
      );
      this.sets.set(`${setName}-${family}`, set);
    }
    const key = (family: Family): Field[] => [`${IP[family]} daddr`, "meta l4proto", "th dport"];
    return [(family) => [{ match: "in set", key: key(family), set: `${setName}-${family}` }]];
  }


}


function addressSet(family: Family, addresses: readonly IpAddress[]): NftSet {
  return newSet({ kind: "set", key: [family === 4 ? "ipv4_addr" : "ipv6_addr"], flags: [] }, addresses.map((ip) => ({ key: [ip] })));
}

function vmapName(direction: Direction, family: Family): string {
  return `${direction.toLowerCase()}-${family}`;
}

/** The peer's address: the source when judging ingress, the destination when judging egress. */
function peerField(direction: Direction, family: Family): Field {
  return `${IP[family]} ${direction === "Ingress" ? "saddr" : "daddr"}`;
}

function intervalOf(text: string): IpInterval | undefined {
  const parsed = tryParseInterfaceAddress(text);
  return parsed ? prefixInterval(parsed.prefix) : undefined;
}

function hashOf(identity: unknown): string {
  return createHash("sha256").update(JSON.stringify(identity, (_key, value: unknown) => (typeof value === "bigint" ? String(value) : value))).digest("hex").slice(0, 16);
}


