/**
 * networking.k8s.io/v1 NetworkPolicy and v1 Namespace as the apiserver takes them: read with
 * its defaults (a port's protocol TCP; policyTypes Ingress, and Egress when egress rules are
 * given; a Namespace's `kubernetes.io/metadata.name` label set to its name) and checked as
 * ValidateNetworkPolicy and ValidateNamespace check them, worded as they word it.
 */
import { prefixContainsPrefix, tryParseInterfaceAddress } from "../../net/ip.js";
import type { IpBlock, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort, PolicyProtocol } from "../../policy/types.js";
import { checkFields, checkKind, integer, intOrString, list, object, omitUndefined, string, stringList, topLevel } from "./decode.js";
import { forbidden, invalid, notSupported, required, throwIfInvalid, type FieldError } from "./field-errors.js";
import { decodeLabelSelector } from "./label-selector.js";
import { decodeClusterMetadata, decodeMetadata, metadataErrors } from "./object-meta.js";
import { isDns1123Label, isDns1123Subdomain, isValidPortName, isValidPortNum } from "./syntax.js";
import type { ClusterObjectMeta, ObjectMeta } from "./types.js";

export const POLICY_PROTOCOLS: readonly PolicyProtocol[] = ["TCP", "UDP", "SCTP"];
const POLICY_TYPES = ["Ingress", "Egress"] as const;
/** The label the apiserver sets on every Namespace, to its name. */
export const LABEL_METADATA_NAME = "kubernetes.io/metadata.name";

export interface StoredNetworkPolicy extends NetworkPolicy {
  readonly apiVersion: "networking.k8s.io/v1";
  readonly kind: "NetworkPolicy";
  readonly metadata: ObjectMeta;
}

export interface Namespace {
  readonly apiVersion: "v1";
  readonly kind: "Namespace";
  readonly metadata: ClusterObjectMeta;
}

/** A Namespace from a manifest: its name label set, validated. */
export function normalizeNamespace(input: unknown): Namespace {
  const errors: FieldError[] = [];
  const fields = topLevel(input, "Namespace");
  checkKind(fields, "v1", "Namespace", errors);
  // spec.finalizers and status are the namespace controller's, which the store does not run.
  checkFields(fields, "", ["apiVersion", "kind", "metadata", "spec", "status"], errors);
  const metadata = decodeClusterMetadata(fields.metadata, errors);
  errors.push(...metadataErrors(metadata, isDns1123Label, "cluster"));
  throwIfInvalid("Namespace", metadata.name, errors);
  return { apiVersion: "v1", kind: "Namespace", metadata: { ...metadata, labels: { ...(metadata.labels ?? {}), [LABEL_METADATA_NAME]: metadata.name } } };
}

/** A NetworkPolicy from a manifest, with the apiserver's defaults, validated. */
export function normalizeNetworkPolicy(input: unknown): StoredNetworkPolicy {
  const errors: FieldError[] = [];
  const fields = topLevel(input, "NetworkPolicy");
  checkKind(fields, "networking.k8s.io/v1", "NetworkPolicy", errors);
  checkFields(fields, "", ["apiVersion", "kind", "metadata", "spec", "status"], errors);
  const metadata = decodeMetadata(fields.metadata, errors);
  errors.push(...metadataErrors(metadata, isDns1123Subdomain));
  const spec = object(fields.spec, "spec", errors) ?? {};
  checkFields(spec, "spec", ["podSelector", "policyTypes", "ingress", "egress"], errors);
  const podSelector = decodeLabelSelector(spec.podSelector, "spec.podSelector", errors) ?? {};
  const rules = (direction: "ingress" | "egress") =>
    list(spec[direction], `spec.${direction}`, errors, (value, path) => {
      const peersKey = direction === "ingress" ? "from" : "to";
      const rule = object(value, path, errors) ?? {};
      checkFields(rule, path, ["ports", peersKey], errors);
      const ports = list(rule.ports, `${path}.ports`, errors, (port, portPath) => decodePort(port, portPath, errors));
      const peers = list(rule[peersKey], `${path}.${peersKey}`, errors, (peer, peerPath) => decodePeer(peer, peerPath, errors));
      return omitUndefined({ ports: ports?.length ? ports : undefined, [peersKey]: peers?.length ? peers : undefined });
    });
  const ingress = rules("ingress");
  const egress = rules("egress");
  const given = stringList(spec.policyTypes, "spec.policyTypes", errors);
  if (given && given.length > POLICY_TYPES.length) errors.push(invalid("spec.policyTypes", given, "may not specify more than two policyTypes"));
  else given?.forEach((type, i) => {
    if (!(POLICY_TYPES as readonly string[]).includes(type)) errors.push(notSupported(`spec.policyTypes[${i}]`, type, POLICY_TYPES));
  });
  // SetDefaults_NetworkPolicy: Ingress always, Egress when egress rules are given.
  const policyTypes = given?.length ? (given as Array<(typeof POLICY_TYPES)[number]>) : egress?.length ? ["Ingress", "Egress"] as const : ["Ingress"] as const;
  throwIfInvalid("NetworkPolicy", metadata.name, errors);
  return {
    apiVersion: "networking.k8s.io/v1",
    kind: "NetworkPolicy",
    metadata,
    spec: omitUndefined({
      podSelector,
      policyTypes: [...policyTypes],
      ingress: ingress as NetworkPolicy["spec"]["ingress"],
      egress: egress as NetworkPolicy["spec"]["egress"],
    }),
  };
}

/** ValidateNetworkPolicyPort. */
function decodePort(value: unknown, path: string, errors: FieldError[]): NetworkPolicyPort {
  const fields = object(value, path, errors) ?? {};
  checkFields(fields, path, ["protocol", "port", "endPort"], errors);
  const protocol = string(fields.protocol, `${path}.protocol`, errors) || "TCP";
  if (!(POLICY_PROTOCOLS as readonly string[]).includes(protocol)) errors.push(notSupported(`${path}.protocol`, protocol, POLICY_PROTOCOLS));
  const port = intOrString(fields.port, `${path}.port`, errors);
  const endPort = integer(fields.endPort, `${path}.endPort`, errors);
  if (typeof port === "number") {
    for (const message of isValidPortNum(port)) errors.push(invalid(`${path}.port`, port, message));
    if (endPort !== undefined) {
      if (endPort < port) errors.push(invalid(`${path}.endPort`, port, "must be greater than or equal to `port`"));
      for (const message of isValidPortNum(endPort)) errors.push(invalid(`${path}.endPort`, endPort, message));
    }
  } else if (typeof port === "string") {
    if (endPort !== undefined) errors.push(invalid(`${path}.endPort`, endPort, "may not be specified when `port` is non-numeric"));
    for (const message of isValidPortName(port)) errors.push(invalid(`${path}.port`, port, message));
  } else if (endPort !== undefined) errors.push(invalid(`${path}.endPort`, endPort, "may not be specified when `port` is not specified"));
  return omitUndefined({ protocol: protocol as PolicyProtocol, port, endPort });
}

/** ValidateNetworkPolicyPeer: one kind of peer, or a namespace and a pod selector together. */
function decodePeer(value: unknown, path: string, errors: FieldError[]): NetworkPolicyPeer {
  const fields = object(value, path, errors) ?? {};
  checkFields(fields, path, ["podSelector", "namespaceSelector", "ipBlock"], errors);
  const podSelector = decodeLabelSelector(fields.podSelector, `${path}.podSelector`, errors);
  const namespaceSelector = decodeLabelSelector(fields.namespaceSelector, `${path}.namespaceSelector`, errors);
  const ipBlock = fields.ipBlock === undefined || fields.ipBlock === null ? undefined : decodeIpBlock(fields.ipBlock, `${path}.ipBlock`, errors);
  const count = [podSelector, namespaceSelector, ipBlock].filter((entry) => entry !== undefined).length;
  if (count === 0) errors.push(required(path, "must specify a peer"));
  else if (count > 1 && ipBlock) errors.push(forbidden(path, "may not specify both ipBlock and another peer"));
  return omitUndefined({ podSelector, namespaceSelector, ipBlock });
}

const cidrMessage = "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)";

/** ValidateIPBlock: a CIDR, and exceptions strictly inside it. */
function decodeIpBlock(value: unknown, path: string, errors: FieldError[]): IpBlock {
  const fields = object(value, path, errors) ?? {};
  checkFields(fields, path, ["cidr", "except"], errors);
  const cidr = string(fields.cidr, `${path}.cidr`, errors) ?? "";
  const except = stringList(fields.except, `${path}.except`, errors);
  const block = omitUndefined({ cidr, except: except?.length ? except : undefined });
  if (!cidr) {
    errors.push(required(`${path}.cidr`));
    return block;
  }
  const whole = tryParseInterfaceAddress(cidr)?.prefix;
  if (!whole) {
    errors.push(invalid(`${path}.cidr`, cidr, cidrMessage));
    return block;
  }
  except?.forEach((text, i) => {
    const cut = tryParseInterfaceAddress(text)?.prefix;
    if (!cut) errors.push(invalid(`${path}.except[${i}]`, text, cidrMessage));
    else if (cut.length <= whole.length || !prefixContainsPrefix(whole, cut)) {
      errors.push(invalid(`${path}.except[${i}]`, text, "must be a strict subset of `cidr`"));
    }
  });
  return block;
}
