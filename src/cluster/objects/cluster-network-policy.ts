/**
 * policy.networking.k8s.io ClusterNetworkPolicy (network-policy-api v0.3.0; v1beta1, and
 * v1alpha2 which is the same) as the apiserver takes it through the CRD that deploy/ ships:
 * its schema's types, enums, bounds and one-of objects, and its two CEL rules (a port range's
 * start below its end; a network a CIDR with no host bits), worded as the apiserver words them.
 * `nodes` peers are the experimental channel's and are taken too.
 */
import { tryParseInterfaceAddress } from "../../net/ip.js";
import type { ClusterNetworkPolicy, ClusterPolicyPeer, ClusterPolicyPort, ClusterPolicyProtocol, ClusterPolicyRule, NamespacedPods } from "../../policy/types.js";
import type { LabelSelector } from "../../policy/selector.js";
import { checkFields, integer, list, object, omitUndefined, string, stringList, topLevel, type Fields } from "./decode.js";
import { invalid, notSupported, required, tooLong, tooMany, throwIfInvalid, type FieldError } from "./field-errors.js";
import { decodeLabelSelector } from "./label-selector.js";
import { decodeClusterMetadata, metadataErrors } from "./object-meta.js";
import { isDns1123Subdomain } from "./syntax.js";
import type { ClusterObjectMeta } from "./types.js";

export const CLUSTER_NETWORK_POLICY_VERSIONS = ["policy.networking.k8s.io/v1beta1", "policy.networking.k8s.io/v1alpha2"] as const;

export interface StoredClusterNetworkPolicy extends ClusterNetworkPolicy {
  readonly apiVersion: (typeof CLUSTER_NETWORK_POLICY_VERSIONS)[number];
  readonly kind: "ClusterNetworkPolicy";
  readonly metadata: ClusterObjectMeta;
}

const TIERS = ["Admin", "Baseline"] as const;
const ACTIONS = ["Accept", "Deny", "Pass"] as const;
const MAX_RULES = 25;

/** A ClusterNetworkPolicy from a manifest, validated as its CRD validates it. */
export function normalizeClusterNetworkPolicy(input: unknown): StoredClusterNetworkPolicy {
  const errors: FieldError[] = [];
  const fields = topLevel(input, "ClusterNetworkPolicy");
  const apiVersion = (fields.apiVersion ?? CLUSTER_NETWORK_POLICY_VERSIONS[0]) as StoredClusterNetworkPolicy["apiVersion"];
  if (!(CLUSTER_NETWORK_POLICY_VERSIONS as readonly unknown[]).includes(apiVersion)) errors.push(notSupported("apiVersion", apiVersion, CLUSTER_NETWORK_POLICY_VERSIONS));
  if (fields.kind !== undefined && fields.kind !== "ClusterNetworkPolicy") errors.push(notSupported("kind", fields.kind, ["ClusterNetworkPolicy"]));
  checkFields(fields, "", ["apiVersion", "kind", "metadata", "spec", "status"], errors);
  const metadata = decodeClusterMetadata(fields.metadata, errors);
  errors.push(...metadataErrors(metadata, isDns1123Subdomain, "cluster"));
  const spec = object(fields.spec, "spec", errors);
  if (!spec) errors.push(required("spec"));
  const body = spec ?? {};
  checkFields(body, "spec", ["tier", "priority", "subject", "ingress", "egress"], errors);
  const tier = string(body.tier, "spec.tier", errors);
  if (tier === undefined) errors.push(required("spec.tier"));
  else if (!(TIERS as readonly string[]).includes(tier)) errors.push(notSupported("spec.tier", tier, TIERS));
  const priority = integer(body.priority, "spec.priority", errors);
  if (priority === undefined) errors.push(required("spec.priority"));
  else bounded(priority, "spec.priority", 0, 1000, errors);
  const subject = oneOf(body.subject, "spec.subject", ["namespaces", "pods"], errors, (key, value, path) =>
    key === "namespaces" ? { namespaces: decodeLabelSelector(value, path, errors) ?? {} } : { pods: decodePods(value, path, errors) },
  );
  if (body.subject === undefined || body.subject === null) errors.push(required("spec.subject"));
  const ingress = rules(body.ingress, "spec.ingress", "from", errors);
  const egress = rules(body.egress, "spec.egress", "to", errors);
  throwIfInvalid("ClusterNetworkPolicy", metadata.name, errors);
  return {
    apiVersion,
    kind: "ClusterNetworkPolicy",
    metadata,
    spec: omitUndefined({ tier: tier as ClusterNetworkPolicy["spec"]["tier"], priority: priority!, subject: subject ?? {}, ingress, egress }),
  };
}

function rules(value: unknown, path: string, peersKey: "from" | "to", errors: FieldError[]): ClusterPolicyRule[] | undefined {
  const items = list(value, path, errors, (item, itemPath): ClusterPolicyRule => {
    const rule = object(item, itemPath, errors) ?? {};
    checkFields(rule, itemPath, ["name", "action", peersKey, "protocols"], errors);
    const name = string(rule.name, `${itemPath}.name`, errors);
    if (name !== undefined && Buffer.byteLength(name) > 100) errors.push(tooLong(`${itemPath}.name`, 100));
    const action = string(rule.action, `${itemPath}.action`, errors);
    if (action === undefined) errors.push(required(`${itemPath}.action`));
    else if (!(ACTIONS as readonly string[]).includes(action)) errors.push(notSupported(`${itemPath}.action`, action, ACTIONS));
    if (rule[peersKey] === undefined || rule[peersKey] === null) errors.push(required(`${itemPath}.${peersKey}`));
    const peers = sized(list(rule[peersKey], `${itemPath}.${peersKey}`, errors, (peer, peerPath) => decodePeer(peer, peerPath, peersKey === "to", errors)), `${itemPath}.${peersKey}`, 1, errors);
    const protocols = sized(list(rule.protocols, `${itemPath}.protocols`, errors, (entry, entryPath) => decodeProtocol(entry, entryPath, errors)), `${itemPath}.protocols`, 1, errors);
    return omitUndefined({ name, action: action as ClusterPolicyRule["action"], [peersKey]: peers, protocols });
  });
  return sized(items, path, 0, errors);
}

/** minItems and maxItems (25 throughout this CRD). */
function sized<T>(items: T[] | undefined, path: string, min: number, errors: FieldError[]): T[] | undefined {
  if (items === undefined) return undefined;
  if (items.length > MAX_RULES) errors.push(tooMany(path, items.length, MAX_RULES));
  if (items.length < min) errors.push(invalid(path, items.length, `${path} in body should have at least ${min} items`));
  return items;
}

function bounded(value: number, path: string, min: number, max: number, errors: FieldError[]): void {
  if (value < min) errors.push(invalid(path, value, `${path} in body should be greater than or equal to ${min}`));
  if (value > max) errors.push(invalid(path, value, `${path} in body should be less than or equal to ${max}`));
}

/** An object with exactly one of `keys` set (minProperties 1, maxProperties 1). */
function oneOf<T>(value: unknown, path: string, keys: readonly string[], errors: FieldError[], read: (key: string, value: unknown, path: string) => T): T | undefined {
  const fields = object(value, path, errors);
  if (!fields) return undefined;
  checkFields(fields, path, keys, errors);
  const set = Object.keys(fields).filter((key) => keys.includes(key) && fields[key] !== null && fields[key] !== undefined);
  if (set.length === 0) errors.push(invalid(path, 0, `${path} in body should have at least 1 properties`));
  if (set.length > 1) errors.push(tooMany(path, set.length, 1));
  return set.length === 1 ? read(set[0], fields[set[0]], `${path}.${set[0]}`) : undefined;
}

function decodePods(value: unknown, path: string, errors: FieldError[]): NamespacedPods {
  const fields: Fields = object(value, path, errors) ?? {};
  checkFields(fields, path, ["namespaceSelector", "podSelector"], errors);
  if (fields.podSelector === undefined || fields.podSelector === null) errors.push(required(`${path}.podSelector`));
  return {
    namespaceSelector: decodeLabelSelector(fields.namespaceSelector, `${path}.namespaceSelector`, errors) ?? {},
    podSelector: decodeLabelSelector(fields.podSelector, `${path}.podSelector`, errors) ?? {},
  };
}

function decodePeer(value: unknown, path: string, egress: boolean, errors: FieldError[]): ClusterPolicyPeer {
  const keys = egress ? ["namespaces", "pods", "networks", "nodes"] : ["namespaces", "pods"];
  return (
    oneOf<ClusterPolicyPeer>(value, path, keys, errors, (key, entry, at) => {
      if (key === "namespaces") return { namespaces: decodeLabelSelector(entry, at, errors) ?? {} };
      if (key === "nodes") return { nodes: decodeLabelSelector(entry, at, errors) ?? ({} as LabelSelector) };
      if (key === "pods") return { pods: decodePods(entry, at, errors) };
      const networks = sized(stringList(entry, at, errors), at, 1, errors) ?? [];
      networks.forEach((text, i) => {
        const parsed = tryParseInterfaceAddress(text);
        if (Buffer.byteLength(text) > 43) errors.push(tooLong(`${at}[${i}]`, 43));
        else if (!parsed || parsed.address.value !== parsed.prefix.network) errors.push(invalid(`${at}[${i}]`, text, "Invalid CIDR format provided"));
      });
      if (new Set(networks).size !== networks.length) errors.push(invalid(at, networks, "must not contain duplicates (a set)"));
      return { networks };
    }) ?? {}
  );
}

function decodeProtocol(value: unknown, path: string, errors: FieldError[]): ClusterPolicyProtocol {
  return (
    oneOf<ClusterPolicyProtocol>(value, path, ["tcp", "udp", "sctp"], errors, (key, entry, at) => {
      const fields: Fields = object(entry, at, errors) ?? {};
      checkFields(fields, at, ["destinationPort"], errors);
      if (Object.keys(fields).length === 0) errors.push(invalid(at, 0, `${at} in body should have at least 1 properties`));
      const destinationPort = oneOf<ClusterPolicyPort>(fields.destinationPort, `${at}.destinationPort`, ["number", "range"], errors, (which, port, portPath) => {
        if (which === "number") {
          const number = integer(port, portPath, errors) ?? 0;
          bounded(number, portPath, 1, 65535, errors);
          return { number };
        }
        const range: Fields = object(port, portPath, errors) ?? {};
        checkFields(range, portPath, ["start", "end"], errors);
        const start = integer(range.start, `${portPath}.start`, errors);
        const end = integer(range.end, `${portPath}.end`, errors);
        if (start === undefined) errors.push(required(`${portPath}.start`));
        else bounded(start, `${portPath}.start`, 1, 65535, errors);
        if (end === undefined) errors.push(required(`${portPath}.end`));
        else bounded(end, `${portPath}.end`, 1, 65535, errors);
        if (start !== undefined && end !== undefined && !(start < end)) errors.push(invalid(portPath, { start, end }, "Start port must be less than End port"));
        return { range: { start: start ?? 0, end: end ?? 0 } };
      });
      return { [key]: omitUndefined({ destinationPort }) };
    }) ?? {}
  );
}
