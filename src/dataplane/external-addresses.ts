/**
 * Which external addresses a Service may have. `externalIPs` are written by whoever can write
 * the Service (a tenant), and load-balancer ingress addresses by whoever can write its status;
 * each becomes a DNAT rule on every node, met before routing by every packet to that address
 * and port, from pods and from outside. So an address that already means something in the
 * cluster (a node, a pod, a ClusterIP, the API server) is never one, and the operator says
 * where external addresses may be at all (`--external-ip-cidrs`, none by default, as upstream's
 * DenyServiceExternalIPs recommends). Pure.
 */
import { formatPrefix, prefixContains, specialRangeOf, type IpAddress, type IpPrefix } from "../net/ip.js";

export interface ExternalAddressPolicy {
  /** Where external addresses may be (`--external-ip-cidrs`); empty: nowhere. */
  readonly allowed: readonly IpPrefix[];
  readonly podCidrs: readonly IpPrefix[];
  readonly serviceCidrs: readonly IpPrefix[];
  /** Addresses that are something else, by `formatIp`: each node's, the API server's. The value says what it is ("node node2's address"). */
  readonly reserved: ReadonlyMap<string, string>;
}

export const EXTERNAL_REFUSAL_REASONS = ["external-ip-not-allowed", "external-ip-reserved", "external-ip-taken"] as const;
export type ExternalRefusalReason = (typeof EXTERNAL_REFUSAL_REASONS)[number];

/**
 * Why `address` (shown as `shown`) cannot be an external address of a Service, or undefined
 * when it can. `meaning` says what else the address is, when the caller knows (the ClusterIP
 * of another Service, an endpoint of the API server).
 */
export function externalAddressProblem(
  address: IpAddress,
  shown: string,
  policy: ExternalAddressPolicy,
  meaning: string | undefined,
): { reason: ExternalRefusalReason; why: string } | undefined {
  const special = specialRangeOf(address);
  if (special) return { reason: "external-ip-reserved", why: `${shown} is a ${special.use} address` };
  const reserved = meaning ?? policy.reserved.get(shown);
  if (reserved !== undefined) return { reason: "external-ip-reserved", why: `${shown} is ${reserved}` };
  const pods = policy.podCidrs.find((prefix) => prefixContains(prefix, address));
  if (pods) return { reason: "external-ip-reserved", why: `${shown} lies in the pod CIDR ${formatPrefix(pods)}` };
  const services = policy.serviceCidrs.find((prefix) => prefixContains(prefix, address));
  if (services) return { reason: "external-ip-reserved", why: `${shown} lies in the Service CIDR ${formatPrefix(services)}` };
  if (!policy.allowed.some((prefix) => prefixContains(prefix, address))) {
    const where = policy.allowed.length ? `outside --external-ip-cidrs ${policy.allowed.map(formatPrefix).join(",")}` : "not allowed: the agent's --external-ip-cidrs allows no external address";
    return { reason: "external-ip-not-allowed", why: `${shown} is ${where}` };
  }
  return undefined;
}
