/** What the attach engine is asked to do, and what it answers: plain data, no CNI wire format. */
import type { HostPortMapping } from "../dataplane/hostports.js";
import type { PodAddress, PodRoute } from "../dataplane/pod-attachment.js";
import type { IpAddress, IpPrefix } from "../net/ip.js";
import type { PodIpRangeSet } from "../podipam/pod-ips.js";

/** One network configuration, validated. */
export interface PodNetwork {
  readonly name: string;
  readonly bridge: string;
  readonly mtu?: number;
  readonly hairpin: boolean;
  readonly ipMasq: boolean;
  /** Destinations that keep the pod's own source address under ipMasq: the cluster's pod and Service CIDRs. */
  readonly nonMasqueradeCidrs: readonly IpPrefix[];
  readonly isDefaultGateway: boolean;
  readonly ipam: BuiltinPodIpam | DelegatedPodIpam;
}

export interface BuiltinPodIpam {
  readonly kind: "builtin";
  readonly ranges: readonly PodIpRangeSet[];
  readonly routes: readonly PodRoute[];
}

export interface DelegatedPodIpam {
  readonly kind: "delegated";
  readonly plugin: DelegatedIpam;
}

/** An IPAM plugin run on the engine's behalf (e.g. host-local), already bound to one request. */
export interface DelegatedIpam {
  readonly type: string;
  add(): Promise<{ addresses: PodAddress[]; routes: PodRoute[] }>;
  del(): Promise<void>;
  /** DEL of another attachment of the network (GC releasing it): frees the plugin's lease whatever version it speaks. */
  release(ref: AttachmentRef): Promise<void>;
  check(): Promise<void>;
  /** GC and STATUS reach only plugins that speak CNI 1.1.0; for others these do nothing. */
  gc(): Promise<void>;
  status(): Promise<void>;
}

export interface AttachmentRef {
  readonly containerId: string;
  readonly ifname: string;
}

export interface AttachmentRequest extends AttachmentRef {
  readonly network: PodNetwork;
}

export interface AddRequest extends AttachmentRequest {
  readonly netns: string;
  readonly requestedIps: readonly IpAddress[];
  readonly mac?: string;
  /** hostPorts DNAT'ed to the pod (the portMappings capability). */
  readonly portMappings?: readonly HostPortMapping[];
  /** Aborting rolls back whatever the ADD has done so far. */
  readonly signal?: AbortSignal;
}

export interface CheckRequest extends AttachmentRequest {
  readonly netns: string;
  /** What the runtime was told on ADD. */
  readonly expected: { readonly addresses: readonly PodAddress[]; readonly routes: readonly PodRoute[]; readonly mac?: string };
}

export interface GcRequest {
  readonly network: PodNetwork;
  /** Attachments the runtime still uses; everything else of the network is released. */
  readonly valid: readonly AttachmentRef[];
}

export interface AttachResult {
  readonly bridge: { readonly name: string; readonly mac: string };
  readonly hostVeth: { readonly name: string; readonly mac: string };
  readonly container: { readonly ifname: string; readonly mac: string; readonly netns: string; readonly mtu?: number };
  readonly addresses: readonly PodAddress[];
  readonly routes: readonly PodRoute[];
}
