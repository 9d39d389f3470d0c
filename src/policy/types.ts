/**
 * What policy is judged over, in the shapes the Kubernetes API gives (the fields read, no more):
 * NetworkPolicy (networking.k8s.io/v1), ClusterNetworkPolicy (policy.networking.k8s.io,
 * network-policy-api v0.3.0), and the pods, namespaces and nodes they select. The objects are
 * validated by the API (or `trellis apply`) before they get here; what still does not parse here
 * (a CIDR, say) matches nothing, so a policy never opens more than it says.
 */
import type { IpAddress } from "../net/ip.js";
import type { LabelSelector, Labels } from "./selector.js";

export type PolicyProtocol = "TCP" | "UDP" | "SCTP";
export type Direction = "Ingress" | "Egress";

export interface ContainerPort {
  readonly name?: string;
  readonly containerPort: number;
  /** TCP when absent, as the API defaults it. */
  readonly protocol?: PolicyProtocol;
}

export interface PolicyPod {
  readonly namespace: string;
  readonly name: string;
  readonly labels: Labels;
  readonly ips: readonly IpAddress[];
  /** A host-network pod is no pod to policy: it is neither selected nor a pod peer, only its node's address. */
  readonly hostNetwork?: boolean;
  /** Its containers' ports, for named ports. */
  readonly ports?: readonly ContainerPort[];
}

export interface PolicyNamespace {
  readonly name: string;
  readonly labels: Labels;
}

export interface PolicyNode {
  readonly name: string;
  readonly labels: Labels;
  readonly addresses: readonly IpAddress[];
}

/** One end of a connection: a pod at one of its addresses, or an address no pod holds (a node, the world outside). */
export interface PolicyEndpoint {
  readonly address: IpAddress;
  readonly pod?: PolicyPod;
}

export interface Connection {
  readonly from: PolicyEndpoint;
  readonly to: PolicyEndpoint;
  readonly protocol: PolicyProtocol;
  /** The destination port, as the destination pod sees it (after a Service's DNAT). */
  readonly port: number;
}

export interface ObjectName {
  readonly name: string;
  readonly namespace?: string;
}

// networking.k8s.io/v1 NetworkPolicy

export interface IpBlock {
  readonly cidr: string;
  readonly except?: readonly string[];
}

export interface NetworkPolicyPeer {
  readonly podSelector?: LabelSelector;
  readonly namespaceSelector?: LabelSelector;
  readonly ipBlock?: IpBlock;
}

export interface NetworkPolicyPort {
  /** TCP when absent. */
  readonly protocol?: PolicyProtocol;
  /** A number, or a container port's name; every port when absent. */
  readonly port?: number | string;
  /** With a numeric port: the range port..endPort. */
  readonly endPort?: number;
}

export interface NetworkPolicyIngressRule {
  /** Absent or empty: from anywhere. */
  readonly from?: readonly NetworkPolicyPeer[];
  /** Absent or empty: every port. */
  readonly ports?: readonly NetworkPolicyPort[];
}

export interface NetworkPolicyEgressRule {
  readonly to?: readonly NetworkPolicyPeer[];
  readonly ports?: readonly NetworkPolicyPort[];
}

export interface NetworkPolicy {
  readonly metadata: ObjectName & { readonly namespace: string };
  readonly spec: {
    readonly podSelector: LabelSelector;
    readonly policyTypes?: readonly Direction[];
    readonly ingress?: readonly NetworkPolicyIngressRule[];
    readonly egress?: readonly NetworkPolicyEgressRule[];
  };
}

// policy.networking.k8s.io ClusterNetworkPolicy (v1beta1; v1alpha2 is the same)

export type ClusterPolicyTier = "Admin" | "Baseline";
export type ClusterPolicyAction = "Accept" | "Deny" | "Pass";

export interface NamespacedPods {
  readonly namespaceSelector: LabelSelector;
  readonly podSelector: LabelSelector;
}

/** Exactly one of its fields, as the API validates it. */
export interface ClusterPolicySubject {
  readonly namespaces?: LabelSelector;
  readonly pods?: NamespacedPods;
}

export interface ClusterPolicyPeer {
  readonly namespaces?: LabelSelector;
  readonly pods?: NamespacedPods;
  /** Egress only. */
  readonly nodes?: LabelSelector;
  /** Egress only: CIDRs. */
  readonly networks?: readonly string[];
  /** Egress only (Accept rules): names are resolved by DNS, which policy here does not see: such a peer matches nothing. */
  readonly domainNames?: readonly string[];
}

export interface ClusterPolicyPort {
  readonly number?: number;
  readonly range?: { readonly start: number; readonly end: number };
}

export interface ClusterPolicyProtocol {
  readonly tcp?: { readonly destinationPort?: ClusterPolicyPort };
  readonly udp?: { readonly destinationPort?: ClusterPolicyPort };
  readonly sctp?: { readonly destinationPort?: ClusterPolicyPort };
  readonly destinationNamedPort?: string;
}

export interface ClusterPolicyRule {
  readonly name?: string;
  readonly action: ClusterPolicyAction;
  readonly from?: readonly ClusterPolicyPeer[];
  readonly to?: readonly ClusterPolicyPeer[];
  /** Absent or empty: every protocol and port. */
  readonly protocols?: readonly ClusterPolicyProtocol[];
}

export interface ClusterNetworkPolicy {
  readonly metadata: ObjectName;
  readonly spec: {
    readonly tier: ClusterPolicyTier;
    /** 0 to 1000; lower first. */
    readonly priority: number;
    readonly subject: ClusterPolicySubject;
    readonly ingress?: readonly ClusterPolicyRule[];
    readonly egress?: readonly ClusterPolicyRule[];
  };
}

/** Everything a verdict depends on. */
export interface PolicyWorld {
  readonly namespaces: ReadonlyMap<string, PolicyNamespace>;
  readonly nodes: readonly PolicyNode[];
  readonly networkPolicies: readonly NetworkPolicy[];
  readonly clusterPolicies: readonly ClusterNetworkPolicy[];
}
