/**
 * v1 Pod, as far as a network plugin reads it: read with the apiserver's defaults (port
 * protocol TCP, host-network host ports, podIP and podIPs in step) and checked as ValidatePod
 * and the status validation check those fields.
 */
import { tryParseIp } from "../../net/ip.js";
import { boolean, checkFields, checkKind, integer, isOneOf, list, nonEmptyList, object, omitUndefined, string, topLevel } from "./decode.js";
import { duplicate, invalid, notSupported, required, throwIfInvalid, type FieldError } from "./field-errors.js";
import { decodeMetadata, metadataErrors } from "./object-meta.js";
import { ipProblems, isDns1123Label, isDns1123Subdomain, isValidPortName, isValidPortNum } from "./syntax.js";
import { PROTOCOLS, type Container, type ContainerPort, type Pod, type PodCondition, type Protocol } from "./types.js";

const podPhases = ["Failed", "Pending", "Running", "Succeeded", "Unknown"];
const conditionStatuses = ["False", "True", "Unknown"];

/**
 * A Pod from a manifest, with the apiserver's defaults, validated. Only what a network plugin
 * reads is kept; the rest of a Pod (images, volumes, ...) is ignored, not refused.
 */
export function normalizePod(input: unknown): Pod {
  const errors: FieldError[] = [];
  const fields = topLevel(input, "Pod");
  checkKind(fields, "v1", "Pod", errors);
  checkFields(fields, "", ["apiVersion", "kind", "metadata", "spec", "status"], errors);
  const metadata = decodeMetadata(fields.metadata, errors);
  const spec = object(fields.spec, "spec", errors) ?? {};
  const status = object(fields.status, "status", errors) ?? {};
  const hostNetwork = boolean(spec.hostNetwork, "spec.hostNetwork", errors) || undefined;
  const specText = (key: string) => string(spec[key], `spec.${key}`, errors) || undefined;
  const podIPs = nonEmptyList(list(status.podIPs, "status.podIPs", errors, (value, path) => {
    const entry = object(value, path, errors) ?? {};
    return { ip: string(entry.ip, `${path}.ip`, errors) ?? "" };
  }));
  // v1 conversion keeps podIP and podIPs in step, each filling the other.
  const podIP = string(status.podIP, "status.podIP", errors) || podIPs?.[0].ip || undefined;
  const conditions = list(status.conditions, "status.conditions", errors, (value, path): PodCondition => {
    const entry = object(value, path, errors) ?? {};
    return { type: string(entry.type, `${path}.type`, errors) ?? "", status: (string(entry.status, `${path}.status`, errors) ?? "") as PodCondition["status"] };
  });
  const pod: Pod = {
    apiVersion: "v1",
    kind: "Pod",
    metadata,
    spec: omitUndefined({
      nodeName: specText("nodeName"),
      hostNetwork,
      hostname: specText("hostname"),
      subdomain: specText("subdomain"),
      containers: list(spec.containers, "spec.containers", errors, (value, path) => decodeContainer(value, path, hostNetwork === true, errors)) ?? [],
    }),
    status: omitUndefined({
      phase: (string(status.phase, "status.phase", errors) || undefined) as Pod["status"]["phase"],
      podIP,
      podIPs: podIPs ?? (podIP ? [{ ip: podIP }] : undefined),
      conditions: nonEmptyList(conditions),
    }),
  };
  throwIfInvalid("Pod", metadata.name, errors);
  validatePod(pod);
  return pod;
}

function decodeContainer(value: unknown, path: string, hostNetwork: boolean, errors: FieldError[]): Container {
  const fields = object(value, path, errors) ?? {};
  const ports = list(fields.ports, `${path}.ports`, errors, (portValue, portPath): ContainerPort => {
    const port = object(portValue, portPath, errors) ?? {};
    const containerPort = integer(port.containerPort, `${portPath}.containerPort`, errors) ?? 0;
    const hostPort = integer(port.hostPort, `${portPath}.hostPort`, errors) || undefined;
    return omitUndefined({
      name: string(port.name, `${portPath}.name`, errors) || undefined,
      containerPort,
      protocol: (string(port.protocol, `${portPath}.protocol`, errors) || "TCP") as Protocol,
      // On the host's network a container port is a host port.
      hostPort: hostPort ?? (hostNetwork && containerPort ? containerPort : undefined),
      hostIP: string(port.hostIP, `${portPath}.hostIP`, errors) || undefined,
    });
  });
  return omitUndefined({ name: string(fields.name, `${path}.name`, errors) ?? "", ports: nonEmptyList(ports) });
}

export function validatePod(pod: Pod): void {
  throwIfInvalid("Pod", pod.metadata.name, podErrors(pod));
}

function podErrors(pod: Pod): FieldError[] {
  const errors = metadataErrors(pod.metadata, isDns1123Subdomain);
  const { spec, status } = pod;
  if (spec.containers.length === 0) errors.push(required("spec.containers"));
  const containerNames = new Set<string>();
  const hostPorts = new Set<string>();
  spec.containers.forEach((container, i) => {
    const path = `spec.containers[${i}]`;
    if (!container.name) errors.push(required(`${path}.name`));
    else {
      for (const message of isDns1123Label(container.name)) errors.push(invalid(`${path}.name`, container.name, message));
      if (containerNames.has(container.name)) errors.push(duplicate(`${path}.name`, container.name));
      containerNames.add(container.name);
    }
    const portNames = new Set<string>();
    container.ports?.forEach((port, j) => {
      errors.push(...containerPortErrors(port, `${path}.ports[${j}]`, portNames, hostPorts, spec.hostNetwork === true));
    });
  });
  if (spec.nodeName) for (const message of isDns1123Subdomain(spec.nodeName)) errors.push(invalid("spec.nodeName", spec.nodeName, message));
  if (spec.hostname) for (const message of isDns1123Label(spec.hostname)) errors.push(invalid("spec.hostname", spec.hostname, message));
  if (spec.subdomain) for (const message of isDns1123Label(spec.subdomain)) errors.push(invalid("spec.subdomain", spec.subdomain, message));

  if (status.phase !== undefined && !podPhases.includes(status.phase)) errors.push(notSupported("status.phase", status.phase, podPhases));
  status.conditions?.forEach((condition, i) => {
    if (!conditionStatuses.includes(condition.status)) errors.push(notSupported(`status.conditions[${i}].status`, condition.status, conditionStatuses));
  });
  errors.push(...podIpErrors(pod));
  return errors;
}

/** validateContainerPorts, AccumulateUniqueHostPorts and validateHostNetwork for one port. */
function containerPortErrors(port: ContainerPort, path: string, names: Set<string>, hostPorts: Set<string>, hostNetwork: boolean): FieldError[] {
  const errors: FieldError[] = [];
  if (port.name) {
    const problems = isValidPortName(port.name);
    for (const message of problems) errors.push(invalid(`${path}.name`, port.name, message));
    if (problems.length === 0 && names.has(port.name)) errors.push(duplicate(`${path}.name`, port.name));
    names.add(port.name);
  }
  if (!port.containerPort) errors.push(required(`${path}.containerPort`));
  else for (const message of isValidPortNum(port.containerPort)) errors.push(invalid(`${path}.containerPort`, port.containerPort, message));
  if (port.hostPort !== undefined) for (const message of isValidPortNum(port.hostPort)) errors.push(invalid(`${path}.hostPort`, port.hostPort, message));
  if (!port.protocol) errors.push(required(`${path}.protocol`));
  else if (!isOneOf(PROTOCOLS, port.protocol)) errors.push(notSupported(`${path}.protocol`, port.protocol, PROTOCOLS));
  if (port.hostIP !== undefined) for (const message of ipProblems(port.hostIP)) errors.push(invalid(`${path}.hostIP`, port.hostIP, message));
  if (port.hostPort) {
    // Two containers of a pod cannot bind one host port.
    const key = `${port.protocol}/${port.hostIP ?? ""}/${port.hostPort}`;
    if (hostPorts.has(key)) errors.push(duplicate(`${path}.hostPort`, key));
    hostPorts.add(key);
  }
  if (hostNetwork && port.hostPort !== port.containerPort) {
    errors.push(invalid(`${path}.hostPort`, port.hostPort ?? 0, "must match `containerPort` when `hostNetwork` is true"));
  }
  return errors;
}

/** validatePodIPs, and podIP agreeing with podIPs[0] as validateHostIPs wants of hostIP. */
function podIpErrors(pod: Pod): FieldError[] {
  const errors: FieldError[] = [];
  const podIPs = pod.status.podIPs ?? [];
  let bad = false;
  podIPs.forEach(({ ip }, i) => {
    for (const message of ipProblems(ip)) {
      bad = true;
      errors.push(invalid(`status.podIPs[${i}]`, ip, message));
    }
  });
  if (!bad && podIPs.length > 1) {
    const families = new Set(podIPs.map(({ ip }) => tryParseIp(ip)!.family));
    if (families.size < 2 || podIPs.length > 2) errors.push(invalid("status.podIPs", podIPs, "may specify no more than one IP for each IP family"));
    podIPs.forEach((podIP, i) => {
      if (podIPs.findIndex((other) => other.ip === podIP.ip) < i) errors.push(duplicate(`status.podIPs[${i}]`, podIP));
    });
  }
  if (podIPs.length > 0 && pod.status.podIP !== podIPs[0].ip) errors.push(invalid("status.podIPs[0].ip", podIPs[0].ip, "must be equal to `podIP`"));
  return errors;
}
