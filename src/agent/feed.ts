/**
 * What the agent's loops need of the cluster, whichever datastore holds it: the Trellis store
 * (store-feed.ts) or the Kubernetes API (kube-feed.ts). A feed registers the node, follows its
 * peers and tells the agent which changed; the agent's loops do the rest the same way for both.
 */
import type { NodeEndpoint } from "../dataplane/node-network.js";
import type { IpPrefix } from "../net/ip.js";
import type { KubeClient } from "../kube/client.js";
import type { ProxySource } from "./proxy-source.js";
import type { PolicySource } from "./policy-source.js";

export interface FeedEvents {
  /** A peer came, changed or went (`name`), or any may have (a new list: undefined). */
  changed(name?: string): void;
  /** A node's zone came, changed or went (nodeZones() says how they stand now). */
  zonesChanged(): void;
  /** The Service CIDRs changed (a ServiceCIDR object came, changed or went). */
  serviceCidrsChanged(): void;
  /** The datastore answers again after an outage: every watch is renewed. */
  reconnected(): void;
  /** The node can no longer be served (removed from the cluster): the agent stops with this error. */
  lost(error: Error): void;
}

export interface ClusterFeed {
  /** The datastore, for logs: `sqlite:/path`, `https://apiserver:6443`. */
  readonly description: string;
  /** This node as its peers route to it. */
  readonly self: NodeEndpoint;
  /** This node's zone (topology.kubernetes.io/zone) now, when it has one. */
  zone(): string | undefined;
  /** Every known node's zone, this one's included, by node name: endpoints' zones (trafficDistribution). */
  nodeZones(): ReadonlyMap<string, string>;
  /** The cluster's pod CIDRs: what counts as "from a pod" (masquerade, Service source rules). */
  readonly clusterPodCidrs: readonly IpPrefix[];
  /** The cluster's Service CIDRs: the plan's, or the API's ServiceCIDR objects' as they stand now. */
  serviceCidrs(): readonly IpPrefix[];
  /** What no Service may take as an external address (every node's address, the datastore's), by `formatIp`, with what each is; the same map while nothing changes. */
  reservedAddresses(): ReadonlyMap<string, string>;
  /** Whether the peer list has been read once: routes are synced only after it. */
  listed(): boolean;
  /** The peers to route to now. */
  livePeers(): NodeEndpoint[];
  /** One peer, if it is to be routed to now. */
  livePeer(name: string): NodeEndpoint | undefined;
  /** Starts following the peers. */
  follow(events: FeedEvents): void;
  /** The node's routes are in place (after every full sync that completed). */
  routesProgrammed(): void;
  /** Where the Service proxy takes Services and endpoints from. */
  readonly services: ProxySource;
  /** Where the policy loop takes NetworkPolicies, ClusterNetworkPolicies and their pods, namespaces and nodes from. */
  readonly policies: PolicySource;
  /** The Kubernetes API, when it is the datastore. */
  readonly kubeClient?: KubeClient;
  /** Stops following and closes the datastore. */
  close(): Promise<void>;
}
