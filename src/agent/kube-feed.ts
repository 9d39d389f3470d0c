/**
 * The agent on the Kubernetes API. Its Node must exist (the kubelet, or the lab, makes it) and
 * have its pod CIDRs from node IPAM; the agent waits for both. It then publishes what peers need
 * as annotations, follows every Node, routes to each that a Trellis agent has published, and
 * marks its own Node's network available once its routes are in place. Every other Node is an
 * untrusted claim the PeerBook admits or refuses (the older Node keeping what two claim); what
 * is refused is also written as an Event on the Node. Services and EndpointSlices come from the
 * API too; ClusterIPs and NodePorts are the API server's.
 */
import { zoneName } from "../cluster/objects/syntax.js";
import { LABEL_TOPOLOGY_ZONE } from "../cluster/objects/types.js";
import { vtepMac, vxlanFamilies, type NodeEndpoint, type Underlay } from "../dataplane/node-network.js";
import type { PeerClaim } from "../dataplane/peer-admission.js";
import { KubeApiError, KubeClient } from "../kube/client.js";
import { inClusterConnection, loadKubeconfig } from "../kube/config.js";
import { EventRecorder } from "../kube/events.js";
import { inform, type Informer, type KubeObject } from "../kube/informer.js";
import { markNetworkAvailable, nodeInternalIps, nodePodCidrs, nodePodCidrTexts, nodePublication, nodeStatusAddresses, publishNodeNetwork, type KubeNode } from "../kube/nodes.js";
import { formatIp, formatPrefix, mergePrefixes, prefixContains, prefixContainsPrefix, tryParseInterfaceAddress, tryParseIp, type IpAddress, type IpPrefix } from "../net/ip.js";
import type { ClusterFeed, FeedEvents } from "./feed.js";
import { defaultRouteAddresses } from "./host.js";
import type { Logger } from "./log.js";
import type { AgentOptions } from "./options.js";
import { PeerBook } from "./peer-book.js";
import { kubePolicySource } from "./policy-source.js";
import { kubeProxySource } from "./proxy-source.js";
import type { Rejection, Rejections } from "./rejections.js";

/** How often the agent looks again for its Node or its pod CIDRs while they are not there. */
const NODE_POLL_MS = 1_000;

/**
 * Waits for the Node, takes its addresses (`--node-ip`, else its InternalIPs, else the default
 * route's) and underlay, and publishes; rejects, having published nothing, on bad input.
 */
export async function openKubeFeed(
  options: AgentOptions,
  log: Logger,
  underlayOf: (nodeIps: readonly IpAddress[]) => Promise<Underlay>,
  rejections: Rejections,
): Promise<{ feed: ClusterFeed; nodeIps: IpAddress[]; underlay: Underlay }> {
  const connection = options.kubeconfig ? loadKubeconfig(options.kubeconfig) : inClusterConnection();
  const client = new KubeClient(connection);
  try {
    const node = await waitForNode(client, options.nodeName, log);
    const internal = nodeInternalIps(node);
    const nodeIps = options.nodeIps.length ? [...options.nodeIps] : internal.length ? internal : await defaultRouteAddresses();
    if (!nodeIps.length) throw new Error(`node ${options.nodeName} has no InternalIP in its status.addresses and this node has no default route: give its addresses with --node-ip`);
    let underlay: Underlay;
    try {
      underlay = await underlayOf(nodeIps);
    } catch (error) {
      if (options.nodeIps.length || !internal.length) throw error;
      throw new Error(`node ${options.nodeName}'s InternalIPs ${internal.map(formatIp).join(",")} (status.addresses) are not this host's: ${(error as Error).message}`);
    }
    const podCidrs = nodePodCidrs(node);
    for (const cidr of podCidrs) {
      if (!options.clusterCidrs.some((cluster) => prefixContainsPrefix(cluster, cidr))) {
        throw new Error(`node ${options.nodeName}'s pod CIDR ${formatPrefix(cidr)} is outside --cluster-cidr ${options.clusterCidrs.map(formatPrefix).join(",")}`);
      }
    }
    const vteps = vxlanFamilies(options.mode, nodeIps).map((family) => ({ family, mac: vtepMac(options.nodeName, family) }));
    await publishNodeNetwork(client, options.nodeName, { addresses: nodeIps, nodeIpGiven: options.nodeIps.length > 0, vteps, mode: options.mode, mtu: underlay.mtu });
    const self: NodeEndpoint = { name: options.nodeName, addresses: [...nodeIps], podCidrs, vteps };
    return { feed: kubeFeed(options, log, client, self, nodeZone(node), underlay, rejections), nodeIps, underlay };
  } catch (error) {
    client.close();
    throw error instanceof KubeApiError ? new Error(`${error.message}${rightsHint(error)}`) : error;
  }
}

/** The Node, once it exists with pod CIDRs; a refusal of the API server other than "not found" fails at once. */
async function waitForNode(client: KubeClient, name: string, log: Logger): Promise<KubeNode> {
  let said = "";
  for (;;) {
    let node: KubeNode | undefined;
    try {
      node = await client.request<KubeNode>("GET", `/api/v1/nodes/${encodeURIComponent(name)}`);
    } catch (error) {
      if (!(error instanceof KubeApiError && error.status === 404)) throw error;
    }
    if (node && nodePodCidrs(node).length) return node;
    const waiting = node ? "waiting for node IPAM to give the Node its pod CIDRs (spec.podCIDRs)" : "waiting for the Node to be registered";
    if (waiting !== said) log("info", waiting, { node: name, server: client.connection.server });
    said = waiting;
    await new Promise((resolve) => setTimeout(resolve, NODE_POLL_MS));
  }
}

function kubeFeed(options: AgentOptions, log: Logger, client: KubeClient, self: NodeEndpoint, zone: string | undefined, underlay: Underlay, rejections: Rejections): ClusterFeed {
  /** Every Node's zone label, this node's own included (a change of it moves the Service rules to the new zone's endpoints). */
  const zones = new Map<string, string>();
  if (zone !== undefined) zones.set(self.name, zone);
  const book = new PeerBook(
    { self, clusterPodCidrs: options.clusterCidrs, serviceCidrs: [], nodeCidrs: [], connected: underlay.addresses.map((entry) => entry.prefix) },
    rejections,
    serverAddresses(client.connection.server),
  );
  let eventsFailing = false;
  const recorder = new EventRecorder(client, self.name, (error) => {
    if (!eventsFailing) log("warn", "cannot write an Event about a refused object; going on without it", { error: `${error.message}${error instanceof KubeApiError ? rightsHint(error) : ""}` });
    eventsFailing = true;
  });
  rejections.publishWith((rejection: Rejection) => recorder.record({ regarding: rejection, reason: eventReason(rejection.reason), note: rejection.message }));
  let events: FeedEvents | undefined;
  let listed = false;
  let failing = false;
  let available = false;
  let marking = false;
  let informer: Informer | undefined;
  /** networking.k8s.io/v1 ServiceCIDRs by name (the CIDRs taken, and those refused), and the union of the CIDRs taken. */
  const serviceCidrObjects = new Map<string, { cidrs: readonly IpPrefix[]; refused: readonly Rejection[] }>();
  let serviceCidrList: readonly IpPrefix[] = [];
  let serviceCidrInformer: Informer | undefined;
  let serviceCidrsListed = false;
  let serviceCidrsFailing = false;
  const followServiceCidrs = () => {
    serviceCidrInformer = inform<KubeServiceCidr>(client, "/apis/networking.k8s.io/v1/servicecidrs", {
      change(name, object) {
        if (object) serviceCidrObjects.set(name, serviceCidrsOf(object, [...options.clusterCidrs], self.addresses));
        else serviceCidrObjects.delete(name);
        if (serviceCidrsListed) publishServiceCidrs();
      },
      synced() {
        serviceCidrsListed = true;
        serviceCidrsFailing = false;
        publishServiceCidrs();
      },
      failed(error, retryInMs) {
        // An API server without ServiceCIDRs (before Kubernetes 1.33) has none to follow.
        if (error instanceof KubeApiError && error.status === 404) {
          log("info", "the API server serves no ServiceCIDR objects; Service CIDRs stay unknown", { server: client.connection.server });
          serviceCidrInformer?.stop();
          return;
        }
        if (!serviceCidrsFailing) {
          log("warn", "cannot follow ServiceCIDR objects; listing them again until it works", { error: `${error.message}${error instanceof KubeApiError ? rightsHint(error) : ""}`, retryInSeconds: retryInMs / 1000 });
        }
        serviceCidrsFailing = true;
      },
    });
  };
  const publishServiceCidrs = () => {
    rejections.report("ServiceCIDRs", [...serviceCidrObjects.values()].flatMap((entry) => entry.refused));
    const merged = mergePrefixes([...serviceCidrObjects.values()].flatMap((entry) => entry.cidrs));
    if (merged.map(formatPrefix).join(",") === serviceCidrList.map(formatPrefix).join(",")) return;
    serviceCidrList = merged;
    log("info", "Service CIDRs", { cidrs: merged.map(formatPrefix) });
    events?.serviceCidrsChanged();
  };
  return {
    description: client.connection.server,
    self,
    zone: () => zones.get(self.name),
    nodeZones: () => zones,
    clusterPodCidrs: options.clusterCidrs,
    serviceCidrs: () => serviceCidrList,
    reservedAddresses: () => book.reservedAddresses(),
    listed: () => listed,
    livePeers: () => book.all(),
    livePeer: (name) => book.get(name),
    follow(handlers) {
      events = handlers;
      followServiceCidrs();
      informer = inform<KubeNode>(client, "/api/v1/nodes", {
        change(name, node) {
          // This node's own label too, unless the Node went (then the agent stops anyway).
          if (name !== self.name || node) {
            const nodeZoneNow = node && nodeZone(node);
            if (zones.get(name) !== nodeZoneNow) {
              if (nodeZoneNow === undefined) zones.delete(name);
              else zones.set(name, nodeZoneNow);
              if (listed || name === self.name) events?.zonesChanged();
            }
          }
          if (name === self.name) {
            if (!node) {
              log("error", "this node was deleted from the Kubernetes API; the agent stops serving it", { node: name });
              events?.lost(new Error(`node ${name} was deleted from the Kubernetes API at ${client.connection.server}`));
            }
            return;
          }
          // A Node no Trellis agent has published for is no peer yet: it comes with the
          // annotations. Its pod CIDRs count as taken meanwhile.
          if (!book.put(name, node && nodeClaim(node)) || !listed) return;
          for (const changed of book.settle()) events?.changed(changed);
        },
        synced() {
          if (failing) {
            log("info", "Kubernetes API reachable again", { server: client.connection.server });
            failing = false;
            events?.reconnected();
          }
          listed = true;
          book.settle();
          events?.changed();
        },
        failed(error, retryInMs) {
          if (!failing) {
            log("warn", "lost the Kubernetes API; keeping the routes as they are and listing again", {
              server: client.connection.server, error: `${error.message}${error instanceof KubeApiError ? rightsHint(error) : ""}`, retryInSeconds: retryInMs / 1000,
            });
          }
          failing = true;
        },
      });
    },
    routesProgrammed() {
      if (available || marking) return;
      marking = true;
      markNetworkAvailable(client, self.name)
        .then(() => {
          available = true;
          log("info", "node network marked available", { node: self.name, condition: "NetworkUnavailable=False" });
        })
        .catch((error: unknown) => log("warn", "cannot mark the node's network available; trying again at the next sync", { node: self.name, error: `${String(error)}${error instanceof KubeApiError ? rightsHint(error) : ""}` }))
        .finally(() => (marking = false));
    },
    services: kubeProxySource(client),
    policies: kubePolicySource(client),
    kubeClient: client,
    async close() {
      informer?.stop();
      serviceCidrInformer?.stop();
      recorder.stop();
      client.close();
    },
  };
}

/** The API server's address, when the kubeconfig names it by one (its other addresses are the endpoints of default/kubernetes, which the proxy reserves itself). */
function serverAddresses(server: string): Map<string, string> {
  let host = "";
  try {
    host = new URL(server).hostname.replace(/^\[(.*)\]$/, "$1");
  } catch {
    return new Map();
  }
  const ip = tryParseIp(host);
  return new Map(ip ? [[formatIp(ip), `the API server's address (${server})`]] : []);
}

interface KubeServiceCidr extends KubeObject {
  readonly spec?: { readonly cidrs?: readonly unknown[] };
}

/**
 * A ServiceCIDR's CIDRs (networking.k8s.io/v1: one or two, one per family), and what of them is
 * refused: one that does not parse, one that overlaps the cluster's pod CIDRs, and one that holds
 * this node's own address. The proxy drops traffic to a Service CIDR's unheld addresses, so such
 * a CIDR would black-hole pods or the node (`0.0.0.0/0` everything).
 */
function serviceCidrsOf(object: KubeServiceCidr, podCidrs: readonly IpPrefix[], nodeAddresses: readonly IpAddress[]): { cidrs: IpPrefix[]; refused: Rejection[] } {
  const name = object.metadata.name;
  const texts = Array.isArray(object.spec?.cidrs) ? object.spec!.cidrs : [];
  const cidrs: IpPrefix[] = [];
  const refused: Rejection[] = [];
  const refuse = (text: unknown, reason: string, why: string) =>
    refused.push({ kind: "ServiceCIDR", name, reason, message: `ServiceCIDR ${name}: ${JSON.stringify(String(text))} ${why}; it is not used` });
  for (const text of texts) {
    const parsed = typeof text === "string" ? tryParseInterfaceAddress(text) : undefined;
    if (!parsed || parsed.address.value !== parsed.prefix.network || texts.length > 2) {
      refuse(text, "service-cidr-invalid", texts.length > 2 ? "is one of more than two CIDRs" : "is not a CIDR");
      continue;
    }
    const prefix = parsed.prefix;
    const pods = podCidrs.find((cidr) => cidr.family === prefix.family && (prefixContainsPrefix(cidr, prefix) || prefixContainsPrefix(prefix, cidr)));
    const node = nodeAddresses.find((address) => prefixContains(prefix, address));
    if (pods) refuse(text, "service-cidr-overlap", `overlaps the pod CIDR ${formatPrefix(pods)}`);
    else if (node) refuse(text, "service-cidr-overlap", `holds this node's address ${formatIp(node)}`);
    else cidrs.push(prefix);
  }
  return { cidrs, refused };
}

/** A Node's topology.kubernetes.io/zone label, when it is a label value. */
function nodeZone(node: KubeNode): string | undefined {
  return zoneName(node.metadata.labels?.[LABEL_TOPOLOGY_ZONE]);
}

/** What a Node claims, as written; the PeerBook checks it. */
function nodeClaim(node: KubeNode): PeerClaim {
  const published = nodePublication(node);
  const created = Date.parse(node.metadata.creationTimestamp ?? "");
  return {
    name: node.metadata.name,
    // A Node without a creation time (never, from an API server) counts as the newest.
    since: Number.isFinite(created) ? created : Number.MAX_SAFE_INTEGER,
    published: published !== undefined,
    podCidrs: nodePodCidrTexts(node),
    addresses: published?.addresses ?? [],
    vteps: published?.vteps ?? [],
    status: { addresses: nodeStatusAddresses(node), nodeIpGiven: published?.nodeIpGiven ?? false },
  };
}

/** A refusal's reason as an Event's: `pod-cidr-conflict` is `PodCIDRConflict`. */
function eventReason(reason: string): string {
  const words: Record<string, string> = { cidr: "CIDR", ip: "IP", ips: "IPs", mac: "MAC", vtep: "VTEP", api: "API" };
  return reason.split("-").map((word) => words[word] ?? word.charAt(0).toUpperCase() + word.slice(1)).join("");
}

/** For a refusal of rights: where the agent's rights come from (its ClusterRole, or the admission policy that holds it to its own Node). */
function rightsHint(error: KubeApiError): string {
  if (error.status !== 403) return "";
  if (/ValidatingAdmissionPolicy/.test(error.message)) {
    return " (deploy/trellis.yaml's admission policy trellis-agent-own-node refused it: the agent may change only its own Node, and its token must be bound to its pod or its Node)";
  }
  return " (the agent's identity lacks this right: deploy/trellis.yaml's ClusterRole lists what it needs)";
}
