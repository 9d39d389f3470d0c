/**
 * What the flow map draws, and where it comes from: the cluster's nodes, pods and Services
 * (`UiTopology`, read again every few seconds) and the flows its agents see (`UiSource.follow`).
 * The CLI plugs a lab or a datastore in; the tests feed one directly.
 *
 * Every box and edge of the map is an entity: `node:NAME`, `pod:NAMESPACE/NAME`,
 * `svc:NAMESPACE/NAME`, `host:NAME` (a named machine outside the nodes, such as the lab's
 * external host) or `addr:ADDRESS` (an address the topology does not name).
 */
import type { FlowEnd, FlowRecord } from "../flows/record.js";
import { formatIp, parsePrefix, prefixContains, tryParseIp, type IpPrefix } from "../net/ip.js";

export interface UiNode {
  readonly name: string;
  readonly addresses: readonly string[];
  readonly podCidrs: readonly string[];
  /** How its agent routes to the other nodes (`direct`, `vxlan`, `auto`), as far as known. */
  readonly mode?: string;
}

export interface UiPod {
  readonly namespace: string;
  readonly name: string;
  readonly node: string;
  readonly addresses: readonly string[];
}

export interface UiServicePort {
  readonly port: number;
  readonly protocol: string;
  readonly nodePort?: number;
}

export interface UiService {
  readonly namespace: string;
  readonly name: string;
  readonly type: string;
  readonly clusterIPs: readonly string[];
  readonly externalIPs: readonly string[];
  readonly ports: readonly UiServicePort[];
  /** Its endpoints' addresses and, when they are pods the topology has, `NAMESPACE/NAME`. */
  readonly endpoints: ReadonlyArray<{ readonly address: string; readonly pod?: string; readonly ready: boolean }>;
}

/** A machine that is not a node but has a name: the lab's external host, its control host. */
export interface UiHost {
  readonly name: string;
  readonly addresses: readonly string[];
}

export interface UiTopology {
  /** What is shown: `lab NAME`, or the store. */
  readonly title: string;
  readonly nodes: readonly UiNode[];
  readonly pods: readonly UiPod[];
  readonly services: readonly UiService[];
  readonly hosts: readonly UiHost[];
  /** Why there are no flows, when none can come (no agents to follow). */
  readonly flowsUnavailable?: string;
}

export interface UiFollow {
  stop(): void;
}

/** Where the map's data comes from. */
export interface UiSource {
  topology(): Promise<UiTopology>;
  /** Hands every flow record of the last minute, then each new one; problems per node as they happen. */
  follow(onRecord: (record: FlowRecord) => void, onProblem: (node: string, message: string) => void): UiFollow;
}

export const podEntity = (namespace: string, name: string) => `pod:${namespace}/${name}`;
export const nodeEntity = (name: string) => `node:${name}`;
export const serviceEntity = (namespace: string, name: string) => `svc:${namespace}/${name}`;
export const hostEntity = (name: string) => `host:${name}`;
export const addressEntity = (address: string) => `addr:${address}`;
/** Where the addresses go once `MAX_ADDRESS_ENTITIES` have their own box. */
export const OTHER_ADDRESSES = "addr:other";
/** Boxes for addresses the topology does not name; more fold into one, so a scan cannot flood the map. */
export const MAX_ADDRESS_ENTITIES = 64;

/** An address as net/ip formats it (RFC 5952), so that the topology's and the records' compare equal; the text itself when it is none. */
export function canonicalAddress(text: string): string {
  const ip = tryParseIp(text);
  return ip ? formatIp(ip) : text;
}

/** Entities by address and by pod name, for placing a flow's ends. */
export class EntityIndex {
  private readonly byAddress = new Map<string, string>();
  private readonly pods = new Set<string>();
  /** Each node's pod CIDRs: an address there that no pod holds is the node's own (its bridge's). */
  private readonly podCidrs: Array<{ readonly prefix: IpPrefix; readonly node: string }> = [];
  private readonly nodes = new Set<string>();
  private readonly addresses = new Set<string>();

  constructor(topology: UiTopology) {
    // Pods win over nodes and hosts for an address (a hostNetwork pod shares its node's).
    for (const host of topology.hosts) for (const address of host.addresses) this.byAddress.set(canonicalAddress(address), hostEntity(host.name));
    for (const node of topology.nodes) {
      this.nodes.add(node.name);
      for (const address of node.addresses) this.byAddress.set(canonicalAddress(address), nodeEntity(node.name));
      for (const cidr of node.podCidrs) {
        try {
          this.podCidrs.push({ prefix: parsePrefix(cidr), node: node.name });
        } catch {
          // A pod CIDR that does not parse places nothing.
        }
      }
    }
    for (const service of topology.services) {
      const entity = serviceEntity(service.namespace, service.name);
      for (const address of service.clusterIPs) this.byAddress.set(canonicalAddress(address), entity);
    }
    for (const pod of topology.pods) {
      const entity = podEntity(pod.namespace, pod.name);
      this.pods.add(`${pod.namespace}/${pod.name}`);
      for (const address of pod.addresses) this.byAddress.set(canonicalAddress(address), entity);
    }
  }

  /** The entity a flow's end is: the pod or node the agent named, else whatever holds the address. */
  entityOf(end: FlowEnd): string {
    if (end.pod && this.pods.has(end.pod)) return `pod:${end.pod}`;
    const address = canonicalAddress(end.address);
    const known = this.byAddress.get(address);
    if (known) return known;
    if (end.pod) return `pod:${end.pod}`;
    if (end.node && this.nodes.has(end.node)) return nodeEntity(end.node);
    const ip = tryParseIp(address);
    const cidr = ip && this.podCidrs.find((each) => prefixContains(each.prefix, ip));
    if (cidr) return nodeEntity(cidr.node);
    if (this.addresses.has(address)) return addressEntity(address);
    if (this.addresses.size >= MAX_ADDRESS_ENTITIES) return OTHER_ADDRESSES;
    this.addresses.add(address);
    return addressEntity(address);
  }
}
