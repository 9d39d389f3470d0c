/**
 * Which families a Service gets ClusterIPs in, decided as kube-apiserver does on create
 * (initIPFamilyFields): ipFamilyPolicy defaults to SingleStack; the families come from
 * ipFamilies, then from requested clusterIPs, then the primary service range; PreferDualStack
 * and RequireDualStack add the cluster's other family when it has one. Every problem is
 * reported at once.
 */
import { familyName, formatIp, formatPrefix, tryParseIp, type Family, type IpAddress, type IpPrefix } from "../net/ip.js";

export const IP_FAMILY_POLICIES = ["SingleStack", "PreferDualStack", "RequireDualStack"] as const;
export type IpFamilyPolicy = (typeof IP_FAMILY_POLICIES)[number];
export type IpFamilyName = "IPv4" | "IPv6";

export interface ServiceFamilyRequest {
  readonly ipFamilyPolicy?: string;
  readonly ipFamilies?: readonly string[];
  readonly clusterIPs?: readonly string[];
}

export interface ServiceFamilies {
  readonly ipFamilyPolicy: IpFamilyPolicy;
  /** In order; the first is the Service's primary family. */
  readonly families: readonly Family[];
  /** Requested address per family position, undefined for "pick one". */
  readonly requested: readonly (IpAddress | undefined)[];
}

/** `serviceCidrs` in plan order; its first family is the cluster's default for Services. */
export function resolveServiceFamilies(request: ServiceFamilyRequest, serviceCidrs: readonly IpPrefix[]): ServiceFamilies {
  const configured = serviceCidrs.map((cidr) => cidr.family);
  const rangesText = `service CIDRs are ${serviceCidrs.map(formatPrefix).join(", ")}`;
  const problems: string[] = [];

  let policy: IpFamilyPolicy = "SingleStack";
  if (request.ipFamilyPolicy !== undefined) {
    if ((IP_FAMILY_POLICIES as readonly string[]).includes(request.ipFamilyPolicy)) policy = request.ipFamilyPolicy as IpFamilyPolicy;
    else problems.push(`invalid ipFamilyPolicy ${JSON.stringify(request.ipFamilyPolicy)}: expected ${IP_FAMILY_POLICIES.join(", ")}`);
  }

  const families: Family[] = [];
  const givenFamilies = request.ipFamilies ?? [];
  if (givenFamilies.length > 2) problems.push(`ipFamilies lists ${givenFamilies.length} families (${givenFamilies.join(",")}): at most 2, one of each`);
  givenFamilies.forEach((name, i) => {
    const family = name === "IPv4" ? 4 : name === "IPv6" ? 6 : undefined;
    if (family === undefined) problems.push(`invalid ipFamilies[${i}] ${JSON.stringify(name)}: expected IPv4 or IPv6`);
    else if (families.includes(family)) problems.push(`ipFamilies lists ${name} twice: give each family once`);
    else families.push(family);
  });

  const requested: IpAddress[] = [];
  const givenIps = request.clusterIPs ?? [];
  if (givenIps.length > 2) problems.push(`${givenIps.length} ClusterIPs given (${givenIps.join(",")}): at most 2, one per family`);
  givenIps.forEach((text, i) => {
    const ip = tryParseIp(text);
    if (!ip) {
      problems.push(`invalid ClusterIP ${JSON.stringify(text)}: expected an IPv4 address (10.96.0.10) or an IPv6 address (fd00:10:96::a)`);
      return;
    }
    if (requested.some((other) => other.family === ip.family)) {
      problems.push(`ClusterIPs ${givenIps.join(",")} are both ${familyName(ip.family)}: a dual-stack Service has one address of each family`);
      return;
    }
    const named = givenFamilies[i];
    if (named !== undefined && families[i] !== undefined && families[i] !== ip.family) {
      problems.push(`ClusterIP ${formatIp(ip)} is ${familyName(ip.family)} but ipFamilies[${i}] is ${named}: the addresses must follow ipFamilies' order`);
      return;
    }
    requested.push(ip);
  });
  if (problems.length > 0) throw new Error(problems.join("; "));

  if (policy === "SingleStack") {
    if (givenIps.length === 2) problems.push("ipFamilyPolicy SingleStack allows one ClusterIP: use RequireDualStack or PreferDualStack when giving two");
    if (givenFamilies.length === 2) problems.push("ipFamilyPolicy SingleStack allows one IP family: use RequireDualStack or PreferDualStack when giving two");
  }
  requested.forEach((ip, i) => {
    if (i < families.length) return;
    if (configured.includes(ip.family)) families.push(ip.family);
    else problems.push(`ClusterIP ${formatIp(ip)}: ${familyName(ip.family)} is not configured on this cluster (${rangesText})`);
  });
  if (problems.length > 0) throw new Error(problems.join("; "));

  if (policy === "RequireDualStack" && configured.length < 2) {
    problems.push(`ipFamilyPolicy RequireDualStack: this cluster is not configured for dual-stack Services (${rangesText})`);
  }
  families.forEach((family, i) => {
    if (!configured.includes(family)) problems.push(`ipFamilies[${i}] ${familyName(family)} is not configured on this cluster (${rangesText})`);
  });
  if (problems.length > 0) throw new Error(problems.join("; "));

  if (families.length === 0) families.push(configured[0]);
  if (policy !== "SingleStack" && families.length === 1 && configured.length === 2) families.push(families[0] === 4 ? 6 : 4);
  return { ipFamilyPolicy: policy, families, requested: families.map((_, i) => requested[i]) };
}
