/**
 * Whether policy lets a connection through, and every step that decided it: the semantics the
 * agent's nftables rules implement and `trellis policy explain` prints, from the same data.
 *
 * A pod reaching its own address always passes (it never leaves the pod). Otherwise a
 * connection passes when both ends let it: egress at its source pod, ingress at its
 * destination pod (an end that is no pod, or a host-network pod, judges nothing). Each direction
 * goes through the tiers in the API's order:
 *
 * 1. Admin ClusterNetworkPolicies selecting the pod, by priority (lower first; equal priorities
 *    by name, one order of the several the API allows), each one's rules in order: the first
 *    rule whose peer and protocol match decides. Accept and Deny end the judging; Pass skips the
 *    rest of the tier.
 * 2. NetworkPolicies of the pod's namespace selecting it for that direction: when there are any,
 *    they decide (the connection passes if a rule of one of them matches it, else not).
 * 3. Baseline ClusterNetworkPolicies, as the Admin ones: Accept and Deny decide, Pass skips.
 * 4. Otherwise the connection passes, as Kubernetes has it.
 */
import { prefixContains, sameIp, tryParseInterfaceAddress, type IpAddress, type IpPrefix } from "../net/ip.js";
import { selects, type Labels } from "./selector.js";
import type {
  ClusterNetworkPolicy, ClusterPolicyPeer, ClusterPolicyPort, ClusterPolicyProtocol, ClusterPolicyRule, ClusterPolicyTier, Connection, Direction,
  NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort, PolicyEndpoint, PolicyPod, PolicyProtocol, PolicyWorld,
} from "./types.js";

export type Tier = ClusterPolicyTier | "NetworkPolicy" | "Default";

/** One step of a direction's judging, as explain prints it. */
export interface PolicyStep {
  readonly tier: Tier;
  /** `NAME` of a ClusterNetworkPolicy, `NAMESPACE/NAME` of a NetworkPolicy. */
  readonly policy?: string;
  /** The deciding rule: its name, else `ingress[i]` / `egress[i]`. */
  readonly rule?: string;
  readonly outcome: "allow" | "deny" | "pass" | "isolates";
  readonly reason: string;
}

export interface DirectionVerdict {
  readonly direction: Direction;
  /** The pod judged (`NAMESPACE/NAME`), if that end is one. */
  readonly pod?: string;
  readonly allowed: boolean;
  readonly steps: readonly PolicyStep[];
}

export interface Verdict {
  readonly allowed: boolean;
  readonly egress: DirectionVerdict;
  readonly ingress: DirectionVerdict;
}

export function judge(world: PolicyWorld, connection: Connection): Verdict {
  const { from, to } = connection;
  if (from.pod && to.pod && from.pod.namespace === to.pod.namespace && from.pod.name === to.pod.name && sameIp(from.address, to.address)) {
    // A pod reaching its own address never leaves its network namespace: no policy sees it, as
    // the upstream suites expect (their AllowLoopback).
    const steps: PolicyStep[] = [{ tier: "Default", outcome: "allow", reason: "a pod reaching its own address: the traffic stays inside the pod" }];
    const id = `${from.pod.namespace}/${from.pod.name}`;
    return { allowed: true, egress: { direction: "Egress", pod: id, allowed: true, steps }, ingress: { direction: "Ingress", pod: id, allowed: true, steps } };
  }
  const egress = judgeDirection(world, connection, "Egress");
  const ingress = judgeDirection(world, connection, "Ingress");
  return { allowed: egress.allowed && ingress.allowed, egress, ingress };
}

/** The API's defaulting of policyTypes: Ingress always, Egress when the policy has egress rules. */
export function policyTypes(policy: NetworkPolicy): readonly Direction[] {
  const given = policy.spec.policyTypes;
  if (given && given.length) return given;
  return policy.spec.egress && policy.spec.egress.length ? ["Ingress", "Egress"] : ["Ingress"];
}

function judgeDirection(world: PolicyWorld, connection: Connection, direction: Direction): DirectionVerdict {
  const [self, peer] = direction === "Egress" ? [connection.from, connection.to] : [connection.to, connection.from];
  const pod = policyPod(self);
  if (!pod) {
    const reason = self.pod ? "a host-network pod is judged by no policy" : "this end is no pod: no policy judges it";
    return { direction, allowed: true, steps: [{ tier: "Default", outcome: "allow", reason }] };
  }
  const steps: PolicyStep[] = [];
  const id = `${pod.namespace}/${pod.name}`;
  const done = (allowed: boolean) => ({ direction, pod: id, allowed, steps });

  const admin = clusterTier(world, "Admin", pod, peer, connection, direction, steps);
  if (admin !== "pass") return done(admin === "allow");

  const isolating = isolatingPolicies(world, pod, direction);
  if (isolating.length) {
    for (const policy of isolating) {
      const rules = (direction === "Ingress" ? policy.spec.ingress : policy.spec.egress) ?? [];
      const index = rules.findIndex((rule) => {
        const peers = networkRulePeers(rule, direction);
        return networkPeersMatch(world, policy.metadata.namespace, peers, peer) && networkPortsMatch(rule.ports, connection, direction === "Ingress" ? self : peer);
      });
      const name = `${policy.metadata.namespace}/${policy.metadata.name}`;
      if (index >= 0) {
        steps.push({ tier: "NetworkPolicy", policy: name, rule: `${direction.toLowerCase()}[${index}]`, outcome: "allow", reason: `its ${direction.toLowerCase()} rule ${index} matches` });
        return done(true);
      }
      steps.push({ tier: "NetworkPolicy", policy: name, outcome: "isolates", reason: rules.length ? `selects the pod for ${direction}; no rule of it matches` : `selects the pod for ${direction} and allows nothing` });
    }
    return done(false);
  }

  const baseline = clusterTier(world, "Baseline", pod, peer, connection, direction, steps);
  if (baseline !== "pass") return done(baseline === "allow");
  steps.push({ tier: "Default", outcome: "allow", reason: "no policy decided: Kubernetes lets it through" });
  return done(true);
}

/** A tier of ClusterNetworkPolicies for this pod and direction: its decision, or "pass" when it made none. */
function clusterTier(world: PolicyWorld, tier: ClusterPolicyTier, pod: PolicyPod, peer: PolicyEndpoint, connection: Connection, direction: Direction, steps: PolicyStep[]): "allow" | "deny" | "pass" {
  for (const policy of tierPolicies(world, tier, pod)) {
    const rules = (direction === "Ingress" ? policy.spec.ingress : policy.spec.egress) ?? [];
    const index = rules.findIndex((rule) => clusterPeersMatch(world, rulePeers(rule, direction), peer, direction) && clusterProtocolsMatch(rule.protocols, connection, direction === "Ingress" ? { address: connection.to.address, pod } : peer));
    if (index < 0) continue;
    const rule = rules[index];
    const outcome = rule.action === "Accept" ? "allow" : rule.action === "Deny" ? "deny" : "pass";
    steps.push({ tier, policy: policy.metadata.name, rule: rule.name || `${direction.toLowerCase()}[${index}]`, outcome, reason: `priority ${policy.spec.priority}: ${rule.action}` });
    return outcome;
  }
  return "pass";
}

export function rulePeers(rule: ClusterPolicyRule, direction: Direction): readonly ClusterPolicyPeer[] {
  return (direction === "Ingress" ? rule.from : rule.to) ?? [];
}

/** A NetworkPolicy rule's peers in `direction` (its `from` or `to`; absent or empty: every peer). */
export function networkRulePeers(rule: NetworkPolicyIngressRule | NetworkPolicyEgressRule, direction: Direction): readonly NetworkPolicyPeer[] | undefined {
  return direction === "Ingress" ? (rule as NetworkPolicyIngressRule).from : (rule as NetworkPolicyEgressRule).to;
}

/** The ClusterNetworkPolicies of `tier` that select `pod`, in the order they decide: priority, then name. */
export function tierPolicies(world: PolicyWorld, tier: ClusterPolicyTier, pod: PolicyPod): ClusterNetworkPolicy[] {
  return world.clusterPolicies
    .filter((policy) => policy.spec.tier === tier && subjectSelects(world, policy, pod))
    .sort((a, b) => a.spec.priority - b.spec.priority || compareText(a.metadata.name, b.metadata.name));
}

/** The NetworkPolicies that select `pod` for `direction` (they isolate it there), by name. */
export function isolatingPolicies(world: PolicyWorld, pod: PolicyPod, direction: Direction): NetworkPolicy[] {
  return world.networkPolicies
    .filter((policy) => policy.metadata.namespace === pod.namespace && policyTypes(policy).includes(direction) && selects(policy.spec.podSelector, pod.labels))
    .sort((a, b) => compareText(a.metadata.name, b.metadata.name));
}

/** The pod policy sees at this end: none for an address, or a host-network pod. */
function policyPod(end: PolicyEndpoint): PolicyPod | undefined {
  return end.pod && !end.pod.hostNetwork ? end.pod : undefined;
}

export function namespaceLabels(world: PolicyWorld, namespace: string): Labels {
  // A namespace the world does not hold has the one label the API sets on every namespace.
  return world.namespaces.get(namespace)?.labels ?? { "kubernetes.io/metadata.name": namespace };
}

function subjectSelects(world: PolicyWorld, policy: ClusterNetworkPolicy, pod: PolicyPod): boolean {
  const { namespaces, pods } = policy.spec.subject;
  if (namespaces) return selects(namespaces, namespaceLabels(world, pod.namespace));
  if (pods) return selects(pods.namespaceSelector, namespaceLabels(world, pod.namespace)) && selects(pods.podSelector, pod.labels);
  return false;
}

function networkPeersMatch(world: PolicyWorld, namespace: string, peers: readonly NetworkPolicyPeer[] | undefined, end: PolicyEndpoint): boolean {
  if (!peers || peers.length === 0) return true;
  return peers.some((peer) => {
    if (peer.ipBlock) {
      const cidr = parseCidr(peer.ipBlock.cidr);
      return cidr !== undefined && prefixContains(cidr, end.address) && !(peer.ipBlock.except ?? []).some((text) => within(text, end.address));
    }
    const pod = policyPod(end);
    if (!pod) return false;
    if (peer.namespaceSelector && !selects(peer.namespaceSelector, namespaceLabels(world, pod.namespace))) return false;
    if (!peer.namespaceSelector && pod.namespace !== namespace) return false;
    return peer.podSelector === undefined || selects(peer.podSelector, pod.labels);
  });
}

/** `destination`: the end whose container ports name ports (the pod judged for ingress, the peer for egress). */
function networkPortsMatch(ports: readonly NetworkPolicyPort[] | undefined, connection: Connection, destination: PolicyEndpoint): boolean {
  if (!ports || ports.length === 0) return true;
  return ports.some((port) => {
    const protocol = port.protocol ?? "TCP";
    if (protocol !== connection.protocol) return false;
    if (port.port === undefined) return true;
    if (typeof port.port === "number") return port.endPort === undefined ? connection.port === port.port : connection.port >= port.port && connection.port <= port.endPort;
    return namedPort(destination, port.port, protocol) === connection.port;
  });
}

function clusterPeersMatch(world: PolicyWorld, peers: readonly ClusterPolicyPeer[], end: PolicyEndpoint, direction: Direction): boolean {
  return peers.some((peer) => {
    const pod = policyPod(end);
    if (peer.namespaces) return pod !== undefined && selects(peer.namespaces, namespaceLabels(world, pod.namespace));
    if (peer.pods) return pod !== undefined && selects(peer.pods.namespaceSelector, namespaceLabels(world, pod.namespace)) && selects(peer.pods.podSelector, pod.labels);
    if (direction === "Ingress") return false;
    if (peer.nodes) {
      const selector = peer.nodes;
      return world.nodes.some((node) => selects(selector, node.labels) && node.addresses.some((address) => sameIp(address, end.address)));
    }
    if (peer.networks) return peer.networks.some((text) => within(text, end.address));
    return false;
  });
}

function clusterProtocolsMatch(protocols: readonly ClusterPolicyProtocol[] | undefined, connection: Connection, destination: PolicyEndpoint): boolean {
  if (!protocols || protocols.length === 0) return true;
  return protocols.some((entry) => {
    if (entry.destinationNamedPort !== undefined) {
      return namedPort(destination, entry.destinationNamedPort, connection.protocol) === connection.port;
    }
    const forProtocol: Record<PolicyProtocol, { destinationPort?: ClusterPolicyPort } | undefined> = { TCP: entry.tcp, UDP: entry.udp, SCTP: entry.sctp };
    const chosen = forProtocol[connection.protocol];
    if (!chosen) return false;
    const port = chosen.destinationPort;
    if (!port) return true;
    if (port.number !== undefined) return connection.port === port.number;
    if (port.range) return connection.port >= port.range.start && connection.port <= port.range.end;
    return true;
  });
}

/** The number a pod's container port of this name and protocol has; undefined when the end is no pod or has none. */
function namedPort(end: PolicyEndpoint, name: string, protocol: PolicyProtocol): number | undefined {
  const pod = policyPod(end);
  return pod?.ports?.find((port) => port.name === name && (port.protocol ?? "TCP") === protocol)?.containerPort;
}

/** The network a CIDR names (host bits dropped, as the kernel would); undefined when it does not parse. */
function parseCidr(text: string): IpPrefix | undefined {
  return tryParseInterfaceAddress(text)?.prefix;
}

function within(cidrText: string, address: IpAddress): boolean {
  const cidr = parseCidr(cidrText);
  return cidr !== undefined && prefixContains(cidr, address);
}

function compareText(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
