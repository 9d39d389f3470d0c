/**
 * A flow record: what one node saw of one connection of the cluster's traffic, from conntrack
 * (a connection let through: `new`, `update` when it was answered, `destroy` with its counters)
 * or from the policy deny log (a connection policy refused). The same shape is kept in an
 * agent's ring, served on its `/flows`, merged by `trellis flows` and drawn by `trellis ui`.
 */

export const FLOW_VERDICTS = ["forwarded", "denied", "dropped"] as const;
export type FlowVerdict = (typeof FLOW_VERDICTS)[number];

/** new, update and destroy: conntrack's events; denied: the policy deny log; rejected: a Service without endpoints. */
export type FlowEvent = "new" | "update" | "destroy" | "denied" | "rejected";

export interface FlowEnd {
  /** The address as formatted by net/ip (RFC 5952 for IPv6). */
  readonly address: string;
  /** Absent for a protocol without ports (ICMP). */
  readonly port?: number;
  /** `NAMESPACE/NAME` of the pod at the address, when it is one the agent knows. */
  readonly pod?: string;
  /** The node whose address it is, when it is a node's. */
  readonly node?: string;
}

export interface FlowCounters {
  /** From the connection's initiator. */
  readonly packetsSent: number;
  readonly bytesSent: number;
  /** Back to the initiator. */
  readonly packetsReceived: number;
  readonly bytesReceived: number;
}

export interface FlowRecord {
  /** When the agent read it, as RFC 3339 with milliseconds (UTC). */
  readonly time: string;
  /** The node that saw it. */
  readonly node: string;
  readonly event: FlowEvent;
  readonly verdict: FlowVerdict;
  /** Why, beside the verdict: the deciding policy's direction, `no-endpoints`, `answered`, … */
  readonly reason?: string;
  /** The policy that decided it (denied), `KIND NAMESPACE/NAME` or `KIND NAME`. */
  readonly policy?: string;
  /** TCP, UDP, SCTP, ICMP, ICMPv6, or the protocol number. */
  readonly protocol: string;
  /** The connection's initiator. */
  readonly source: FlowEnd;
  /** The destination it asked for (a Service's ClusterIP or a NodePort before translation). */
  readonly destination: FlowEnd;
  /** Where the node sent it instead (a Service's endpoint), when translated. */
  readonly translated?: FlowEnd;
  /** `NAMESPACE/NAME` of the Service the destination belongs to. */
  readonly service?: string;
  /** egress: the source is a pod of this node; ingress: the destination is, and the source is not. */
  readonly direction?: "ingress" | "egress";
  /** On destroy (and update), when the node counts them. */
  readonly counters?: FlowCounters;
}
