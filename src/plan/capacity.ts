/**
 * What a plan's ranges can hold: node blocks and pods per node for pod CIDRs, ClusterIPs for
 * service CIDRs, ports for the NodePort range. The allocators count the same way.
 */
import { familyBits, formatPrefix, prefixSize, type Family, type IpPrefix } from "../net/ip.js";
import { formatNodePortRange, primaryFamily, type ClusterPlan, type NodePortRange } from "./plan.js";

export type PlanRangeKind = "pod" | "service" | "node" | "nodePort";

/** One row of the plan's capacity: a range and what it holds. */
export interface PlanRange {
  readonly kind: PlanRangeKind;
  /** A canonical CIDR, or FIRST-LAST for the NodePort range. */
  readonly range: string;
  /** Absent for the NodePort range, which serves every family. */
  readonly family?: Family;
  /** True for pod and service ranges of the cluster's primary family. */
  readonly primary: boolean;
  /** Addresses, or ports for the NodePort range. */
  readonly size: bigint;
  readonly nodeBlocks?: bigint;
  readonly nodeMaskSize?: number;
  readonly podsPerNode?: bigint;
  readonly serviceIps?: bigint;
  readonly nodePorts?: bigint;
}

/** How many node blocks of `nodeMaskSize` a cluster pod CIDR splits into. */
export function nodeBlockCount(podCidr: IpPrefix, nodeMaskSize: number): bigint {
  return nodeMaskSize < podCidr.length ? 0n : 1n << BigInt(nodeMaskSize - podCidr.length);
}

/**
 * Pods one node block holds: all its addresses but the network address and the gateway (the
 * node's side, network+1), and for IPv4 the broadcast address. IPv6 keeps the all-ones address,
 * as host-local does.
 */
export function podsPerNodeBlock(family: Family, nodeMaskSize: number): bigint {
  const size = 1n << BigInt(familyBits(family) - nodeMaskSize);
  const reserved = family === 4 ? 3n : 2n;
  return size > reserved ? size - reserved : 0n;
}

/**
 * ClusterIPs a service CIDR holds, counted as Kubernetes' ServiceCIDR allocator (default since
 * 1.33) does: every address but the network address, and for IPv4 the broadcast address. The
 * legacy bitmap allocator also capped IPv6 at 65535 to bound its bitmap; current Kubernetes
 * does not, so a /108 holds 2^20-1.
 */
export function serviceIpCount(serviceCidr: IpPrefix): bigint {
  const reserved = serviceCidr.family === 4 ? 2n : 1n;
  const size = prefixSize(serviceCidr);
  return size > reserved ? size - reserved : 0n;
}

export function nodePortCount(range: NodePortRange): bigint {
  return BigInt(range.last - range.first + 1);
}

/** Every range of the plan with its capacity: pods, then services, nodes and NodePorts. */
export function planRanges(plan: ClusterPlan): PlanRange[] {
  const primary = primaryFamily(plan);
  const pods = plan.podCidrs.map((cidr): PlanRange => {
    const nodeMaskSize = plan.nodeMaskSize[cidr.family];
    return {
      ...cidrRow("pod", cidr, cidr.family === primary),
      nodeBlocks: nodeBlockCount(cidr, nodeMaskSize),
      nodeMaskSize,
      podsPerNode: podsPerNodeBlock(cidr.family, nodeMaskSize),
    };
  });
  const services = plan.serviceCidrs.map((cidr): PlanRange => ({
    ...cidrRow("service", cidr, cidr.family === primary),
    serviceIps: serviceIpCount(cidr),
  }));
  const nodes = plan.nodeCidrs.map((cidr) => cidrRow("node", cidr, false));
  const ports = nodePortCount(plan.nodePortRange);
  const nodePorts: PlanRange = { kind: "nodePort", range: formatNodePortRange(plan.nodePortRange), primary: false, size: ports, nodePorts: ports };
  return [...pods, ...services, ...nodes, nodePorts];
}

function cidrRow(kind: PlanRangeKind, cidr: IpPrefix, primary: boolean): PlanRange {
  return { kind, range: formatPrefix(cidr), family: cidr.family, primary, size: prefixSize(cidr) };
}
