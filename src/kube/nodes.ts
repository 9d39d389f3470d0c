/**
 * Nodes as a network plugin keeps them in the Kubernetes API (flannel's pattern): the node's pod
 * CIDRs are Kubernetes' (`spec.podCIDRs`, from node IPAM); what peers need to route to its pods
 * is published by its agent as `trellis.dev/` annotations, patched through `nodes/status` so the
 * agent needs no right to change a Node's spec; and the agent clears the `NetworkUnavailable`
 * condition once its routes are in place.
 */
import { formatIp, tryParseInterfaceAddress, tryParseIp, type Family, type IpAddress, type IpPrefix } from "../net/ip.js";
import type { KubeClient } from "./client.js";
import type { KubeObject } from "./informer.js";

export interface KubeNode extends KubeObject {
  readonly spec?: { readonly podCIDR?: string; readonly podCIDRs?: readonly string[] };
  readonly status?: {
    readonly addresses?: ReadonlyArray<{ readonly type: string; readonly address: string }>;
    readonly conditions?: ReadonlyArray<{ readonly type: string; readonly status: string; readonly reason?: string }>;
  };
}

/** Annotations a Trellis agent publishes on its Node. */
export const NODE_ANNOTATIONS = {
  /** The node addresses peers route to, one per family: `198.18.0.10,fd00:198:18::10`. */
  addresses: "trellis.dev/node-addresses",
  /** The node's VXLAN tunnel endpoint MAC, per underlay family it runs VXLAN on. */
  vtepMac: { 4: "trellis.dev/vtep-mac-ipv4", 6: "trellis.dev/vtep-mac-ipv6" },
  /**
   * `node-ip` when the agent was given its addresses (`--node-ip`), which then need not be among
   * the Node's status.addresses; absent when they are the Node's own InternalIPs (or its default route's).
   */
  addressesFrom: "trellis.dev/node-addresses-from",
  /** The routing mode and underlay MTU, for people reading the Node. */
  mode: "trellis.dev/routing-mode",
  mtu: "trellis.dev/underlay-mtu",
} as const;

export interface NodeNetworkAnnotations {
  readonly addresses: readonly IpAddress[];
  /** Whether they were given with --node-ip. */
  readonly nodeIpGiven: boolean;
  readonly vteps: ReadonlyArray<{ readonly family: Family; readonly mac: string }>;
  readonly mode: string;
  readonly mtu: number;
}

/** What a Node's agent published for its peers, as written (every value unchecked); undefined until it has. */
export interface NodePublication {
  readonly addresses: readonly string[];
  readonly nodeIpGiven: boolean;
  readonly vteps: ReadonlyArray<{ readonly family: Family; readonly mac: string }>;
}

/** The Node's pod CIDRs as written (`spec.podCIDRs`, else the older `spec.podCIDR`). */
export function nodePodCidrTexts(node: KubeNode): readonly string[] {
  const cidrs = node.spec?.podCIDRs;
  if (Array.isArray(cidrs) && cidrs.length) return cidrs;
  return typeof node.spec?.podCIDR === "string" && node.spec.podCIDR ? [node.spec.podCIDR] : [];
}

/** The Node's pod CIDRs (`spec.podCIDRs`, else the older `spec.podCIDR`), the unparsable left out. */
export function nodePodCidrs(node: KubeNode): IpPrefix[] {
  return nodePodCidrTexts(node).flatMap((text) => {
    const parsed = typeof text === "string" ? tryParseInterfaceAddress(text) : undefined;
    return parsed && parsed.address.value === parsed.prefix.network ? [parsed.prefix] : [];
  });
}

/** The Node's InternalIP addresses (`status.addresses`, as the kubelet set them), the first of each family, in order. */
export function nodeInternalIps(node: KubeNode): IpAddress[] {
  const found: IpAddress[] = [];
  for (const entry of node.status?.addresses ?? []) {
    if (entry?.type !== "InternalIP" || typeof entry.address !== "string") continue;
    const ip = tryParseIp(entry.address);
    if (ip && !found.some((other) => other.family === ip.family)) found.push(ip);
  }
  return found;
}

/** The Node's addresses of every type but Hostname (status.addresses, as its kubelet set them), the unparsable left out. */
export function nodeStatusAddresses(node: KubeNode): IpAddress[] {
  const entries = node.status?.addresses;
  if (!Array.isArray(entries)) return [];
  return entries.flatMap((entry) => (entry?.type !== "Hostname" && typeof entry?.address === "string" ? (tryParseIp(entry.address) ?? []) : []));
}

/**
 * What a Node's agent published, as written: Nodes come from other agents and from people, so
 * the caller checks every value (agent/peer-book.ts) before anything is routed.
 */
export function nodePublication(node: KubeNode): NodePublication | undefined {
  const annotations = node.metadata.annotations ?? {};
  const published = annotations[NODE_ANNOTATIONS.addresses];
  if (typeof published !== "string") return undefined;
  const vteps = ([4, 6] as const).flatMap((family) => {
    const mac = annotations[NODE_ANNOTATIONS.vtepMac[family]];
    return typeof mac === "string" ? [{ family, mac }] : [];
  });
  return { addresses: published === "" ? [] : published.split(","), nodeIpGiven: annotations[NODE_ANNOTATIONS.addressesFrom] === "node-ip", vteps };
}

/** The annotations for `network`, with null for each Trellis annotation it no longer has (a merge patch removes those). */
export function nodeAnnotations(network: NodeNetworkAnnotations): Record<string, string | null> {
  const vtep = (family: Family) => network.vteps.find((entry) => entry.family === family)?.mac ?? null;
  return {
    [NODE_ANNOTATIONS.addresses]: network.addresses.map(formatIp).join(","),
    [NODE_ANNOTATIONS.addressesFrom]: network.nodeIpGiven ? "node-ip" : null,
    [NODE_ANNOTATIONS.vtepMac[4]]: vtep(4),
    [NODE_ANNOTATIONS.vtepMac[6]]: vtep(6),
    [NODE_ANNOTATIONS.mode]: network.mode,
    [NODE_ANNOTATIONS.mtu]: String(network.mtu),
  };
}

const nodeStatusPath = (name: string) => `/api/v1/nodes/${encodeURIComponent(name)}/status`;

/** Publishes the node's network annotations (a merge patch of `nodes/status`). */
export async function publishNodeNetwork(client: KubeClient, name: string, network: NodeNetworkAnnotations): Promise<void> {
  await client.request("PATCH", nodeStatusPath(name), {
    body: { metadata: { annotations: nodeAnnotations(network) } },
    contentType: "application/merge-patch+json",
  });
}

/** Sets the Node's NetworkUnavailable condition to False: its routes are in place. */
export async function markNetworkAvailable(client: KubeClient, name: string, now = new Date()): Promise<void> {
  const time = now.toISOString().replace(/\.\d+Z$/, "Z");
  await client.request("PATCH", nodeStatusPath(name), {
    body: {
      status: {
        conditions: [{ type: "NetworkUnavailable", status: "False", reason: "TrellisIsUp", message: "the Trellis agent routes to every peer's pods", lastTransitionTime: time, lastHeartbeatTime: time }],
      },
    },
    contentType: "application/strategic-merge-patch+json",
  });
}
