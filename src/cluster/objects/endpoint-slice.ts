/**
 * discovery.k8s.io/v1 EndpointSlice: read with the apiserver's defaults (port name "" and
 * protocol TCP) and the API's documented meaning of absent conditions, and checked as
 * ValidateEndpointSlice checks it.
 */
import { familyName, tryParseIp } from "../../net/ip.js";
import { boolean, checkFields, checkKind, integer, isOneOf, list, object, omitUndefined, string, stringList, topLevel } from "./decode.js";
import { duplicate, invalid, notSupported, refused, required, throwIfInvalid, tooMany, type FieldError } from "./field-errors.js";
import { decodeMetadata, metadataErrors } from "./object-meta.js";
import { ipProblems, isDns1123Label, isDns1123Subdomain, isQualifiedName, isValidLabelValue, isValidPortNum, specialIpProblems } from "./syntax.js";
import { ADDRESS_TYPES, PROTOCOLS, type Endpoint, type EndpointHints, type EndpointPort, type EndpointSlice, type Protocol } from "./types.js";

const kubernetesAddressTypes = ["FQDN", "IPv4", "IPv6"];
const maxEndpoints = 1000;
const maxAddresses = 100;
const maxPorts = 100;
const maxHints = 8;

const endpointFields = ["addresses", "conditions", "hostname", "nodeName", "zone", "targetRef", "hints", "deprecatedTopology"];
const objectReferenceFields = ["kind", "namespace", "name", "uid", "apiVersion", "resourceVersion", "fieldPath"];

/** An EndpointSlice from a manifest, with the apiserver's defaults, validated. */
export function normalizeEndpointSlice(input: unknown): EndpointSlice {
  const errors: FieldError[] = [];
  const fields = topLevel(input, "EndpointSlice");
  checkKind(fields, "discovery.k8s.io/v1", "EndpointSlice", errors);
  checkFields(fields, "", ["apiVersion", "kind", "metadata", "addressType", "endpoints", "ports"], errors);
  const metadata = decodeMetadata(fields.metadata, errors);
  const slice: EndpointSlice = {
    apiVersion: "discovery.k8s.io/v1",
    kind: "EndpointSlice",
    metadata,
    addressType: (string(fields.addressType, "addressType", errors) ?? "") as EndpointSlice["addressType"],
    endpoints: list(fields.endpoints, "endpoints", errors, (value, path) => decodeEndpoint(value, path, errors)) ?? [],
    ports: list(fields.ports, "ports", errors, (value, path) => decodeEndpointPort(value, path, errors)) ?? [],
  };
  throwIfInvalid("EndpointSlice", metadata.name, errors);
  validateEndpointSlice(slice);
  return slice;
}

function decodeEndpoint(value: unknown, path: string, errors: FieldError[]): Endpoint {
  const fields = object(value, path, errors) ?? {};
  checkFields(fields, path, endpointFields, errors);
  const conditions = object(fields.conditions, `${path}.conditions`, errors) ?? {};
  checkFields(conditions, `${path}.conditions`, ["ready", "serving", "terminating"], errors);
  const condition = (key: string) => boolean(conditions[key], `${path}.conditions.${key}`, errors);
  // The API's documented meanings of absent conditions, written down once.
  const ready = condition("ready") ?? true;
  const text = (key: string) => string(fields[key], `${path}.${key}`, errors) || undefined;
  return omitUndefined({
    addresses: stringList(fields.addresses, `${path}.addresses`, errors) ?? [],
    conditions: { ready, serving: condition("serving") ?? ready, terminating: condition("terminating") ?? false },
    hostname: text("hostname"),
    nodeName: text("nodeName"),
    zone: text("zone"),
    hints: decodeHints(fields.hints, `${path}.hints`, errors),
    targetRef: decodeObjectReference(fields.targetRef, `${path}.targetRef`, errors),
  });
}

function decodeHints(value: unknown, path: string, errors: FieldError[]): EndpointHints | undefined {
  const fields = object(value, path, errors);
  if (!fields) return undefined;
  checkFields(fields, path, ["forZones", "forNodes"], errors);
  const names = (key: "forZones" | "forNodes") => list(fields[key], `${path}.${key}`, errors, (item, itemPath) => {
    const entry = object(item, itemPath, errors) ?? {};
    checkFields(entry, itemPath, ["name"], errors);
    return { name: string(entry.name, `${itemPath}.name`, errors) ?? "" };
  });
  return omitUndefined({ forZones: names("forZones"), forNodes: names("forNodes") });
}

function decodeObjectReference(value: unknown, path: string, errors: FieldError[]): Endpoint["targetRef"] {
  const fields = object(value, path, errors);
  if (!fields) return undefined;
  checkFields(fields, path, objectReferenceFields, errors);
  const text = (key: string) => string(fields[key], `${path}.${key}`, errors) || undefined;
  return omitUndefined({ kind: text("kind") ?? "", namespace: text("namespace"), name: text("name") ?? "", uid: text("uid") });
}

function decodeEndpointPort(value: unknown, path: string, errors: FieldError[]): EndpointPort {
  const fields = object(value, path, errors) ?? {};
  checkFields(fields, path, ["name", "protocol", "port", "appProtocol"], errors);
  return omitUndefined({
    name: string(fields.name, `${path}.name`, errors) ?? "",
    protocol: (string(fields.protocol, `${path}.protocol`, errors) ?? "TCP") as Protocol,
    port: integer(fields.port, `${path}.port`, errors),
    appProtocol: string(fields.appProtocol, `${path}.appProtocol`, errors),
  });
}

export function validateEndpointSlice(slice: EndpointSlice): void {
  throwIfInvalid("EndpointSlice", slice.metadata.name, endpointSliceErrors(slice));
}

function endpointSliceErrors(slice: EndpointSlice): FieldError[] {
  const errors = metadataErrors(slice.metadata, isDns1123Subdomain);
  const addressType: string = slice.addressType;
  if (!addressType) errors.push(required("addressType"));
  else if (addressType === "FQDN") errors.push(refused("addressType", addressType, "a network plugin forwards to addresses, not names", ADDRESS_TYPES));
  else if (!isOneOf(ADDRESS_TYPES, addressType)) errors.push(notSupported("addressType", addressType, kubernetesAddressTypes));

  if (slice.endpoints.length > maxEndpoints) errors.push(tooMany("endpoints", slice.endpoints.length, maxEndpoints));
  else slice.endpoints.forEach((endpoint, i) => errors.push(...endpointErrors(endpoint, `endpoints[${i}]`, addressType)));

  if (slice.ports.length > maxPorts) {
    errors.push(tooMany("ports", slice.ports.length, maxPorts));
    return errors;
  }
  const names = new Set<string>();
  slice.ports.forEach((port, i) => {
    const path = `ports[${i}]`;
    if (port.name) for (const message of isDns1123Label(port.name)) errors.push(invalid(`${path}.name`, port.name, message));
    if (names.has(port.name)) errors.push(duplicate(`${path}.name`, port.name));
    names.add(port.name);
    if (!port.protocol) errors.push(required(`${path}.protocol`));
    else if (!isOneOf(PROTOCOLS, port.protocol)) errors.push(notSupported(`${path}.protocol`, port.protocol, PROTOCOLS));
    if (port.appProtocol !== undefined) {
      for (const message of isQualifiedName(port.appProtocol)) errors.push(invalid(`${path}.appProtocol`, port.appProtocol, message));
    }
    // Kubernetes leaves the number unchecked; Trellis programs it, so it must be a port.
    if (port.port !== undefined) for (const message of isValidPortNum(port.port)) errors.push(invalid(`${path}.port`, port.port, message));
  });
  return errors;
}

function endpointErrors(endpoint: Endpoint, path: string, addressType: string): FieldError[] {
  const errors: FieldError[] = [];
  const addressesPath = `${path}.addresses`;
  if (endpoint.addresses.length === 0) errors.push(required(addressesPath, "must contain at least 1 address"));
  else if (endpoint.addresses.length > maxAddresses) errors.push(tooMany(addressesPath, endpoint.addresses.length, maxAddresses));
  if (isOneOf(ADDRESS_TYPES, addressType)) {
    endpoint.addresses.forEach((text, i) => {
      const ip = tryParseIp(text);
      const addressPath = `${addressesPath}[${i}]`;
      if (!ip || ipProblems(text).length > 0 || familyName(ip.family) !== addressType) {
        errors.push(invalid(addressPath, text, `must be a valid ${addressType} address`));
      } else {
        for (const message of specialIpProblems(ip, text)) errors.push(invalid(addressPath, text, message));
      }
    });
  }
  if (endpoint.nodeName !== undefined) {
    for (const message of isDns1123Subdomain(endpoint.nodeName)) errors.push(invalid(`${path}.nodeName`, endpoint.nodeName, message));
  }
  if (endpoint.hostname !== undefined) {
    for (const message of isDns1123Label(endpoint.hostname)) errors.push(invalid(`${path}.hostname`, endpoint.hostname, message));
  }
  if (endpoint.zone !== undefined) {
    for (const message of isValidLabelValue(endpoint.zone)) errors.push(invalid(`${path}.zone`, endpoint.zone, message));
  }
  if (endpoint.hints) errors.push(...hintErrors(endpoint.hints, `${path}.hints`));
  return errors;
}

/** validateHints: at most 8 of each, no name twice, zones label values, nodes DNS subdomains. */
function hintErrors(hints: EndpointHints, path: string): FieldError[] {
  const errors: FieldError[] = [];
  for (const [key, check] of [["forZones", isValidLabelValue], ["forNodes", isDns1123Subdomain]] as const) {
    const entries = hints[key] ?? [];
    if (entries.length > maxHints) {
      errors.push(tooMany(`${path}.${key}`, entries.length, maxHints));
      continue;
    }
    const seen = new Set<string>();
    entries.forEach(({ name }, i) => {
      const namePath = `${path}.${key}[${i}].name`;
      if (seen.has(name)) errors.push(duplicate(namePath, name));
      seen.add(name);
      for (const message of check(name)) errors.push(invalid(namePath, name, message));
    });
  }
  return errors;
}
