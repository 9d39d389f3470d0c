/**
 * v1 Service: read with the apiserver's defaults (SetDefaults_Service and the REST layer's
 * clusterIP/clusterIPs normalizing) and checked as ValidateService checks it, plus the
 * allocator's ipFamilyPolicy checks that need no cluster plan.
 */
import { familyName, tryParseIp } from "../../net/ip.js";
import { IP_FAMILY_POLICIES } from "../service-ips-families.js";
import {
  boolean, checkFields, checkKind, child, integer, intOrString, isOneOf, list, nonEmptyList, nonEmptyMap, object, omitUndefined, string, stringList,
  stringMap, topLevel, type Fields,
} from "./decode.js";
import { duplicate, forbidden, invalid, notSupported, refused, required, throwIfInvalid, type FieldError } from "./field-errors.js";
import { decodeMetadata, labelErrors, metadataErrors } from "./object-meta.js";
import { ipProblems, isDns1035Label, isDns1123Label, isDns1123Subdomain, isQualifiedName, isValidPortName, isValidPortNum, specialIpProblems } from "./syntax.js";
import {
  IP_FAMILY_NAMES, PROTOCOLS, TRAFFIC_DISTRIBUTIONS, type IpFamilyName, type IpFamilyPolicy, type LoadBalancerIngress, type Protocol, type Service, type ServicePort,
  type ServiceSpec, type ServiceStatus,
} from "./types.js";

/** Kubernetes' list, which the apiserver prints; ExternalName is then refused on its own. */
const kubernetesServiceTypes = ["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"];
const serviceTypes = ["ClusterIP", "LoadBalancer", "NodePort"];
const sessionAffinities = ["ClientIP", "None"];
const trafficPolicies = ["Cluster", "Local"];
const LOAD_BALANCER_IP_MODES = ["Proxy", "VIP"];
const defaultClientIpTimeoutSeconds = 10800;
const maxClientIpTimeoutSeconds = 86400;

const serviceSpecFields = [
  "type", "clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy", "ports", "selector", "externalIPs", "sessionAffinity",
  "sessionAffinityConfig", "externalTrafficPolicy", "internalTrafficPolicy", "healthCheckNodePort", "allocateLoadBalancerNodePorts",
  "publishNotReadyAddresses", "trafficDistribution",
  // Kubernetes' fields that change nothing Trellis programs: accepted and not kept.
  "loadBalancerIP", "loadBalancerClass", "externalName",
];
const unsupportedServiceSpecFields = {
  loadBalancerSourceRanges: "a load balancer's source filter would be silently open; filter in front of the nodes instead",
};
const servicePortFields = ["name", "protocol", "port", "targetPort", "nodePort", "appProtocol"];

/** A Service from a manifest, with the apiserver's defaults, validated. */
export function normalizeService(input: unknown): Service {
  const errors: FieldError[] = [];
  const fields = topLevel(input, "Service");
  checkKind(fields, "v1", "Service", errors);
  checkFields(fields, "", ["apiVersion", "kind", "metadata", "spec", "status"], errors);
  const metadata = decodeMetadata(fields.metadata, errors);
  const spec = decodeServiceSpec(object(fields.spec, "spec", errors) ?? {}, errors);
  const status = decodeServiceStatus(object(fields.status, "status", errors) ?? {}, errors);
  throwIfInvalid("Service", metadata.name, errors);
  const service: Service = omitUndefined({ apiVersion: "v1", kind: "Service", metadata, spec, status });
  validateService(service);
  return service;
}

function decodeServiceSpec(fields: Fields, errors: FieldError[]): ServiceSpec {
  const path = (key: string) => child("spec", key);
  checkFields(fields, "spec", serviceSpecFields, errors, unsupportedServiceSpecFields);
  const text = (key: string) => string(fields[key], path(key), errors) || undefined;

  const type = (text("type") ?? "ClusterIP") as ServiceSpec["type"];
  const ports = list(fields.ports, path("ports"), errors, (value, portPath) => decodeServicePort(value, portPath, errors)) ?? [];
  const selector = nonEmptyMap(stringMap(fields.selector, path("selector"), errors));
  const externalIPs = nonEmptyList(stringList(fields.externalIPs, path("externalIPs"), errors));

  // The apiserver fills clusterIPs from clusterIP (old clients); Trellis also fills clusterIP from clusterIPs.
  let clusterIP = text("clusterIP");
  let clusterIPs = nonEmptyList(stringList(fields.clusterIPs, path("clusterIPs"), errors));
  if (clusterIP !== undefined && clusterIPs === undefined) clusterIPs = [clusterIP];
  if (clusterIP === undefined && clusterIPs !== undefined) clusterIP = clusterIPs[0];

  const sessionAffinity = (text("sessionAffinity") ?? "None") as ServiceSpec["sessionAffinity"];
  const affinityConfig = object(fields.sessionAffinityConfig, path("sessionAffinityConfig"), errors);
  const clientIp = affinityConfig && object(affinityConfig.clientIP, path("sessionAffinityConfig.clientIP"), errors);
  const timeoutSeconds = clientIp && integer(clientIp.timeoutSeconds, path("sessionAffinityConfig.clientIP.timeoutSeconds"), errors);

  // kube-apiserver's ExternallyAccessible: what outside clients reach gets an external policy.
  const externallyAccessible = type === "NodePort" || type === "LoadBalancer" || (type === "ClusterIP" && externalIPs !== undefined);
  return omitUndefined({
    type,
    clusterIP,
    clusterIPs,
    ipFamilies: nonEmptyList(stringList(fields.ipFamilies, path("ipFamilies"), errors)) as IpFamilyName[] | undefined,
    ipFamilyPolicy: (text("ipFamilyPolicy") ?? "SingleStack") as IpFamilyPolicy,
    ports,
    selector,
    externalIPs,
    sessionAffinity,
    sessionAffinityConfig: sessionAffinity === "ClientIP" ? { clientIP: { timeoutSeconds: timeoutSeconds ?? defaultClientIpTimeoutSeconds } } : undefined,
    externalTrafficPolicy: (text("externalTrafficPolicy") ?? (externallyAccessible ? "Cluster" : undefined)) as ServiceSpec["externalTrafficPolicy"],
    internalTrafficPolicy: (text("internalTrafficPolicy") ?? "Cluster") as ServiceSpec["internalTrafficPolicy"],
    trafficDistribution: text("trafficDistribution") as ServiceSpec["trafficDistribution"],
    healthCheckNodePort: integer(fields.healthCheckNodePort, path("healthCheckNodePort"), errors) || undefined,
    allocateLoadBalancerNodePorts:
      boolean(fields.allocateLoadBalancerNodePorts, path("allocateLoadBalancerNodePorts"), errors) ?? (type === "LoadBalancer" ? true : undefined),
    publishNotReadyAddresses: boolean(fields.publishNotReadyAddresses, path("publishNotReadyAddresses"), errors) ?? false,
  });
}

function decodeServicePort(value: unknown, path: string, errors: FieldError[]): ServicePort {
  const fields = object(value, path, errors) ?? {};
  checkFields(fields, path, servicePortFields, errors);
  const port = integer(fields.port, `${path}.port`, errors) ?? 0;
  const targetPort = intOrString(fields.targetPort, `${path}.targetPort`, errors);
  return omitUndefined({
    name: string(fields.name, `${path}.name`, errors) || undefined,
    protocol: (string(fields.protocol, `${path}.protocol`, errors) || "TCP") as Protocol,
    port,
    targetPort: targetPort === undefined || targetPort === 0 || targetPort === "" ? port : targetPort,
    nodePort: integer(fields.nodePort, `${path}.nodePort`, errors) || undefined,
    appProtocol: string(fields.appProtocol, `${path}.appProtocol`, errors),
  });
}

function decodeServiceStatus(fields: Fields, errors: FieldError[]): ServiceStatus | undefined {
  checkFields(fields, "status", ["loadBalancer", "conditions"], errors);
  const loadBalancer = object(fields.loadBalancer, "status.loadBalancer", errors) ?? {};
  checkFields(loadBalancer, "status.loadBalancer", ["ingress"], errors);
  const ingress = list(loadBalancer.ingress, "status.loadBalancer.ingress", errors, (value, path): LoadBalancerIngress => {
    const entry = object(value, path, errors) ?? {};
    checkFields(entry, path, ["ip", "hostname", "ipMode", "ports"], errors);
    const ip = string(entry.ip, `${path}.ip`, errors) || undefined;
    // The apiserver's default: an ip without a mode is a VIP.
    const ipMode = (string(entry.ipMode, `${path}.ipMode`, errors) || (ip ? "VIP" : undefined)) as LoadBalancerIngress["ipMode"];
    return omitUndefined({ ip, hostname: string(entry.hostname, `${path}.hostname`, errors) || undefined, ipMode });
  });
  return ingress?.length ? { loadBalancer: { ingress } } : undefined;
}

/** ValidateService, plus the allocator's checks that need no cluster plan. */
export function validateService(service: Service): void {
  throwIfInvalid("Service", service.metadata.name, serviceErrors(service));
}

function serviceErrors(service: Service): FieldError[] {
  const errors = metadataErrors(service.metadata, isDns1035Label);
  const { spec } = service;
  const type: string = spec.type;
  const headless = isHeadless(spec);

  if (spec.ports.length === 0 && !headless && type !== "ExternalName") errors.push(required("spec.ports"));
  if ((type === "LoadBalancer" || type === "NodePort") && headless) {
    errors.push(invalid("spec.clusterIPs[0]", "None", `may not be set to 'None' for ${type} services`));
  }
  const portNames = new Set<string>();
  spec.ports.forEach((port, i) => errors.push(...servicePortErrors(port, `spec.ports[${i}]`, spec.ports.length > 1, portNames)));
  if (spec.selector) errors.push(...labelErrors(spec.selector, "spec.selector"));
  errors.push(...sessionAffinityErrors(spec));
  errors.push(...clusterIpErrors(spec, headless));
  spec.externalIPs?.forEach((text, i) => {
    const problems = ipProblems(text);
    const ip = tryParseIp(text);
    for (const message of problems.length > 0 || !ip ? problems : specialIpProblems(ip, text)) errors.push(invalid(`spec.externalIPs[${i}]`, text, message));
  });

  if (!type) errors.push(required("spec.type"));
  else if (type === "ExternalName") {
    errors.push(refused("spec.type", type, "an ExternalName Service is a DNS alias (CNAME) that no network plugin proxies", serviceTypes));
  } else if (!serviceTypes.includes(type)) errors.push(notSupported("spec.type", type, kubernetesServiceTypes));

  if (type === "ClusterIP") {
    spec.ports.forEach((port, i) => {
      if (port.nodePort) errors.push(forbidden(`spec.ports[${i}].nodePort`, "may not be used when `type` is 'ClusterIP'"));
    });
  }
  const nodePorts = new Set<string>();
  const ports = new Set<string>();
  spec.ports.forEach((port, i) => {
    if (port.nodePort) {
      const key = `${port.protocol}/${port.nodePort}`;
      if (nodePorts.has(key)) errors.push(duplicate(`spec.ports[${i}].nodePort`, port.nodePort));
      nodePorts.add(key);
    }
    const key = `${port.protocol}/${port.port}`;
    if (ports.has(key)) errors.push(duplicate(`spec.ports[${i}]`, { protocol: port.protocol, port: port.port }));
    ports.add(key);
  });

  if (spec.allocateLoadBalancerNodePorts !== undefined && type !== "LoadBalancer") {
    errors.push(forbidden("spec.allocateLoadBalancerNodePorts", "may only be used when `type` is 'LoadBalancer'"));
  }
  if (type === "LoadBalancer" && spec.allocateLoadBalancerNodePorts === undefined) errors.push(required("spec.allocateLoadBalancerNodePorts"));
  errors.push(...trafficPolicyErrors(spec));
  errors.push(...loadBalancerStatusErrors(service));
  return errors;
}

/** kube-apiserver's isHeadlessService. */
function isHeadless(spec: ServiceSpec): boolean {
  return spec.clusterIPs?.length === 1 && spec.clusterIPs[0] === "None";
}

function servicePortErrors(port: ServicePort, path: string, requireName: boolean, names: Set<string>): FieldError[] {
  const errors: FieldError[] = [];
  if (requireName && !port.name) errors.push(required(`${path}.name`));
  else if (port.name) {
    for (const message of isDns1123Label(port.name)) errors.push(invalid(`${path}.name`, port.name, message));
    if (names.has(port.name)) errors.push(duplicate(`${path}.name`, port.name));
    names.add(port.name);
  }
  for (const message of isValidPortNum(port.port)) errors.push(invalid(`${path}.port`, port.port, message));
  if (!port.protocol) errors.push(required(`${path}.protocol`));
  else if (!isOneOf(PROTOCOLS, port.protocol)) errors.push(notSupported(`${path}.protocol`, port.protocol, PROTOCOLS));
  const targetProblems = typeof port.targetPort === "number" ? isValidPortNum(port.targetPort) : isValidPortName(port.targetPort);
  for (const message of targetProblems) errors.push(invalid(`${path}.targetPort`, port.targetPort, message));
  if (port.appProtocol !== undefined) {
    for (const message of isQualifiedName(port.appProtocol)) errors.push(invalid(`${path}.appProtocol`, port.appProtocol, message));
  }
  // The allocator checks the cluster's NodePort range; a number that is no port is refused here.
  if (port.nodePort !== undefined) {
    for (const message of isValidPortNum(port.nodePort)) errors.push(invalid(`${path}.nodePort`, port.nodePort, message));
  }
  return errors;
}

function sessionAffinityErrors(spec: ServiceSpec): FieldError[] {
  const errors: FieldError[] = [];
  const affinity: string = spec.sessionAffinity;
  const configPath = "spec.sessionAffinityConfig";
  if (!affinity) errors.push(required("spec.sessionAffinity"));
  else if (!sessionAffinities.includes(affinity)) errors.push(notSupported("spec.sessionAffinity", affinity, sessionAffinities));
  if (affinity === "ClientIP") {
    const detail = "when session affinity type is ClientIP";
    const timeout = spec.sessionAffinityConfig?.clientIP?.timeoutSeconds;
    if (!spec.sessionAffinityConfig) errors.push(required(configPath, detail));
    else if (!spec.sessionAffinityConfig.clientIP) errors.push(required(`${configPath}.clientIP`, detail));
    else if (timeout === undefined) errors.push(required(`${configPath}.clientIP.timeoutSeconds`, detail));
    else if (timeout <= 0 || timeout > maxClientIpTimeoutSeconds) {
      // Kubernetes' wording; 86400 itself is allowed.
      errors.push(invalid(`${configPath}.clientIP.timeoutSeconds`, timeout, `must be greater than 0 and less than ${maxClientIpTimeoutSeconds}`));
    }
  } else if (affinity === "None" && spec.sessionAffinityConfig) {
    errors.push(forbidden(configPath, "must not be set when session affinity is None"));
  }
  return errors;
}

/**
 * ValidateServiceClusterIPsRelatedFields, then the allocator's SingleStack checks. Whether the
 * families are configured on this cluster is the allocator's (resolveServiceFamilies).
 */
function clusterIpErrors(spec: ServiceSpec, headless: boolean): FieldError[] {
  const errors: FieldError[] = [];
  const ips = spec.clusterIPs ?? [];
  const families: readonly string[] = spec.ipFamilies ?? [];
  const policy: string = spec.ipFamilyPolicy;

  if (spec.clusterIP) {
    if (ips.length === 0) errors.push(required("spec.clusterIPs"));
    else if (ips[0] !== spec.clusterIP) errors.push(invalid("spec.clusterIPs", ips, "first value must match `clusterIP`"));
  } else if (ips.length > 0) {
    errors.push(invalid("spec.clusterIPs", ips, "must be empty when `clusterIP` is not specified"));
  }
  families.forEach((family, i) => {
    if (!isOneOf(IP_FAMILY_NAMES, family)) errors.push(notSupported(`spec.ipFamilies[${i}]`, family, IP_FAMILY_NAMES));
    if (families.indexOf(family) < i) errors.push(duplicate(`spec.ipFamilies[${i}]`, family));
  });
  if (!policy) errors.push(required("spec.ipFamilyPolicy"));
  else if (!isOneOf(IP_FAMILY_POLICIES, policy)) errors.push(notSupported("spec.ipFamilyPolicy", policy, IP_FAMILY_POLICIES));

  let badIps = false;
  ips.forEach((ip, i) => {
    if (i === 0 && ip === "None") {
      if (ips.length > 1) {
        badIps = true;
        errors.push(invalid("spec.clusterIPs", ips, "'None' must be the first and only value"));
      }
      return;
    }
    for (const message of ipProblems(ip)) {
      badIps = true;
      errors.push(invalid(`spec.clusterIPs[${i}]`, ip, message));
    }
  });
  if (ips.length > 2) errors.push(invalid("spec.clusterIPs", ips, "may only hold up to 2 values"));
  // A bad address would only make the family checks below misleading.
  if (badIps) return errors;

  if (!headless) {
    const ipFamilies = ips.map((ip) => familyName(tryParseIp(ip)!.family));
    if (ips.length > 1 && new Set(ipFamilies).size < 2) errors.push(invalid("spec.clusterIPs", ips, "may specify no more than one IP for each IP family"));
    ips.forEach((ip, i) => {
      if (i < families.length && isOneOf(IP_FAMILY_NAMES, families[i]) && families[i] !== ipFamilies[i]) {
        errors.push(invalid(`spec.clusterIPs[${i}]`, ip, `expected an ${families[i]} value as indicated by \`ipFamilies[${i}]\``));
      }
    });
  }
  if (errors.length === 0 && policy === "SingleStack") {
    if (ips.length === 2) errors.push(invalid("spec.ipFamilyPolicy", policy, "must be 'RequireDualStack' or 'PreferDualStack' when multiple cluster IPs are specified"));
    if (families.length === 2) errors.push(invalid("spec.ipFamilyPolicy", policy, "must be 'RequireDualStack' or 'PreferDualStack' when multiple IP families are specified"));
  }
  return errors;
}

function trafficPolicyErrors(spec: ServiceSpec): FieldError[] {
  const errors: FieldError[] = [];
  const type: string = spec.type;
  const external: string | undefined = spec.externalTrafficPolicy;
  const internal: string = spec.internalTrafficPolicy;
  const externallyAccessible = type === "NodePort" || type === "LoadBalancer" || (type === "ClusterIP" && (spec.externalIPs?.length ?? 0) > 0);
  if (!externallyAccessible) {
    if (external) errors.push(invalid("spec.externalTrafficPolicy", external, "may only be set for externally-accessible services"));
  } else if (!external) errors.push(required("spec.externalTrafficPolicy"));
  else if (!trafficPolicies.includes(external)) errors.push(notSupported("spec.externalTrafficPolicy", external, trafficPolicies));

  // The allocator assigns one when it is needed and not given, so only a given one is checked.
  const needsHealthCheck = type === "LoadBalancer" && external === "Local";
  if (spec.healthCheckNodePort !== undefined) {
    if (!needsHealthCheck) {
      errors.push(invalid("spec.healthCheckNodePort", spec.healthCheckNodePort, "may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'"));
    } else {
      for (const message of isValidPortNum(spec.healthCheckNodePort)) errors.push(invalid("spec.healthCheckNodePort", spec.healthCheckNodePort, message));
    }
  }

  if (!internal) errors.push(required("spec.internalTrafficPolicy"));
  else if (!trafficPolicies.includes(internal)) errors.push(notSupported("spec.internalTrafficPolicy", internal, trafficPolicies));
  const distribution: string | undefined = spec.trafficDistribution;
  if (distribution !== undefined && !(TRAFFIC_DISTRIBUTIONS as readonly string[]).includes(distribution)) {
    errors.push(notSupported("spec.trafficDistribution", distribution, TRAFFIC_DISTRIBUTIONS));
  }
  return errors;
}

/** ValidateLoadBalancerStatus. */
function loadBalancerStatusErrors(service: Service): FieldError[] {
  const ingress = service.status?.loadBalancer?.ingress ?? [];
  if (ingress.length > 0 && service.spec.type !== "LoadBalancer") {
    return [forbidden("status.loadBalancer.ingress", "may only be used when `spec.type` is 'LoadBalancer'")];
  }
  const errors: FieldError[] = [];
  ingress.forEach((entry, i) => {
    const path = `status.loadBalancer.ingress[${i}]`;
    if (entry.ip) for (const message of ipProblems(entry.ip)) errors.push(invalid(`${path}.ip`, entry.ip, message));
    const ipMode: string | undefined = entry.ipMode;
    if (ipMode !== undefined && !entry.ip) errors.push(forbidden(`${path}.ipMode`, "may not be specified when `ip` is not set"));
    else if (ipMode !== undefined && !LOAD_BALANCER_IP_MODES.includes(ipMode)) errors.push(notSupported(`${path}.ipMode`, ipMode, LOAD_BALANCER_IP_MODES));
    if (entry.hostname) {
      for (const message of isDns1123Subdomain(entry.hostname)) errors.push(invalid(`${path}.hostname`, entry.hostname, message));
      if (tryParseIp(entry.hostname)) errors.push(invalid(`${path}.hostname`, entry.hostname, "must be a DNS name, not an IP address"));
    }
  });
  return errors;
}
