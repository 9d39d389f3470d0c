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
  /** The routing mode and underlay MTU, for people reading the Node. */
  mode: "trellis.dev/routing-mode",
  mtu: "trellis.dev/underlay-mtu",
} as const;

export interface NodeNetworkAnnotations {
  readonly addresses: readonly IpAddress[];
  readonly vteps: ReadonlyArray<{ readonly family: Family; readonly mac: string }>;
  readonly mode: string;
  readonly mtu: number;
}

/** What a Node says about routing to its pods; undefined until its agent has published. */
export interface NodeRouting {
  readonly name: string;
  readonly addresses: readonly IpAddress[];
  readonly podCidrs: readonly IpPrefix[];
  readonly vteps: ReadonlyArray<{ readonly family: Family; readonly mac: string }>;
}

const UNICAST_MAC = /^[0-9a-fA-F][02468aceACE](:[0-9a-fA-F]{2}){5}$/;

/** The Node's pod CIDRs (`spec.podCIDRs`, else the older `spec.podCIDR`), the unparsable left out. */
export function nodePodCidrs(node: KubeNode): IpPrefix[] {
  const texts = node.spec?.podCIDRs?.length ? node.spec.podCIDRs : node.spec?.podCIDR ? [node.spec.podCIDR] : [];
  return texts.flatMap((text) => {
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

/**
 * How to route to a Node's pods, read from what its agent published. Nodes come from other
 * agents and from people: anything that does not parse is left out, so one bad Node can cost
 * its own routes but never the others'.
 */
export function nodeRouting(node: KubeNode): NodeRouting | undefined {
  const annotations = node.metadata.annotations ?? {};
  const published = annotations[NODE_ANNOTATIONS.addresses];
  if (typeof published !== "string") return undefined;
  const addresses = published.split(",").flatMap((text) => tryParseIp(text.trim()) ?? []);
  const vteps = ([4, 6] as const).flatMap((family) => {
    const mac = annotations[NODE_ANNOTATIONS.vtepMac[family]];
    return typeof mac === "string" && UNICAST_MAC.test(mac) ? [{ family, mac: mac.toLowerCase() }] : [];
  });
  return { name: node.metadata.name, addresses, podCidrs: nodePodCidrs(node), vteps };
}

/** The annotations for `network`, with null for each Trellis annotation it no longer has (a merge patch removes those). */
export function nodeAnnotations(network: NodeNetworkAnnotations): Record<string, string | null> {
  const vtep = (family: Family) => network.vteps.find((entry) => entry.family === family)?.mac ?? null;
  return {
    [NODE_ANNOTATIONS.addresses]: network.addresses.map(formatIp).join(","),
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
