/**
 * The lab's shape as data: the namespaces, links and addresses `trellis lab up` builds and the
 * cluster plan it writes, computed from the user's options before anything is created.
 */
import { isQualifiedName, isValidLabelValue } from "../cluster/objects/syntax.js";
import { formatIp, formatPrefix, nthAddress, parsePrefix, subPrefix, type Family, type IpPrefix } from "../net/ip.js";
import { formatPlanFile, validatePlan } from "../plan/plan.js";
import { parseStoreSpec } from "../store/open.js";

export type LabFamily = "ipv4" | "ipv6" | "dual";
export type LabMode = "direct" | "vxlan" | "auto";

export const LAB_FAMILIES: readonly LabFamily[] = ["ipv4", "ipv6", "dual"];
export const LAB_MODES: readonly LabMode[] = ["direct", "vxlan", "auto"];
export const MAX_NODES = 20;
export const MAX_PODS_PER_NODE = 20;
/**
 * Namespace names are `<name>-nodeNN-podNN`; interface names inside them never carry the lab's
 * name. The cap keeps names short enough to read in `ip netns list` and to leave room for the
 * 13 characters the longest suffix adds.
 */
export const MAX_NAME_LENGTH = 32;
export const DEFAULT_LAB_NAME = "lab";
/** TCP and UDP port of the probe servers in pods and in `external`. */
export const PROBE_PORT = 7777;

export interface LabOptions {
  readonly name: string;
  readonly nodes: number;
  readonly podsPerNode: number;
  readonly family: LabFamily;
  readonly mode: LabMode;
  readonly subnets: 1 | 2;
  /**
   * A store spec the user gave, or `etcd` for an etcd the lab runs on its external host;
   * undefined means the lab's own SQLite file.
   */
  readonly store?: string;
  /** Labels of every lab pod's Pod object, besides trellis.dev/lab-pod. */
  readonly podLabels: Readonly<Record<string, string>>;
  /** Labels of the lab pods' namespace (default), besides kubernetes.io/metadata.name; none when empty. */
  readonly namespaceLabels: Readonly<Record<string, string>>;
  /** Zones the nodes are spread over, round robin (node1 in zone-1, …); 0: no zones. */
  readonly zones: number;
  /** A real Kubernetes control plane on a `control` host instead of the Trellis store. */
  readonly kubernetes: boolean;
  /** Real nodes: containerd and a kubelet on every node, Trellis installed from deploy/trellis.yaml (implies kubernetes). */
  readonly kubelet: boolean;
  /** Real nodes' Services from kube-proxy (nftables mode), the agents' proxy off (implies kubelet). */
  readonly kubeProxy: boolean;
  /** Real nodes networked by the reference CNI plugins (bridge, host-local, portmap) instead of Trellis, the baseline (implies kubeProxy). */
  readonly referenceCni: boolean;
}

/** Options as the command line gives them: text, unchecked. */
export interface LabOptionsText {
  readonly name?: string;
  readonly nodes?: string;
  readonly podsPerNode?: string;
  readonly family?: string;
  readonly mode?: string;
  readonly subnets?: string;
  readonly store?: string;
  readonly podLabels?: string;
  readonly namespaceLabels?: string;
  readonly zones?: string;
  readonly kubernetes?: boolean;
  readonly kubelet?: boolean;
  readonly kubeProxy?: boolean;
  readonly referenceCni?: boolean;
}

const NAME = /^[a-z]([a-z0-9-]*[a-z0-9])?$/;

/** What a lab pod's Pod object is labelled with unless `--pod-labels` says otherwise. */
export const DEFAULT_POD_LABELS = "app=probe";

/** Checks a lab name (every lab command takes one); throws naming the value and what is allowed. */
export function checkLabName(name: string): string {
  if (!NAME.test(name)) {
    throw new Error(`--name ${JSON.stringify(name)} is invalid: a lab name starts with a lowercase letter, holds only lowercase letters, digits and "-", and does not end with "-"`);
  }
  if (name.length > MAX_NAME_LENGTH) {
    throw new Error(`--name ${JSON.stringify(name)} is ${name.length} characters long; at most ${MAX_NAME_LENGTH} are allowed, so that every namespace name (${name}-node${MAX_NODES}-pod${MAX_PODS_PER_NODE - 1}) stays short`);
  }
  return name;
}

/** Validates every option and reports every problem at once, one a line. */
export function parseLabOptions(text: LabOptionsText): LabOptions {
  const problems: string[] = [];
  const attempt = <T>(check: () => T): T | undefined => {
    try {
      return check();
    } catch (error) {
      problems.push((error as Error).message);
      return undefined;
    }
  };
  const name = attempt(() => checkLabName(text.name ?? DEFAULT_LAB_NAME));
  const nodes = attempt(() => wholeNumber("--nodes", text.nodes ?? "3", 1, MAX_NODES));
  const podsPerNode = attempt(() => wholeNumber("--pods-per-node", text.podsPerNode ?? "2", 1, MAX_PODS_PER_NODE));
  const family = attempt(() => oneOf("--family", text.family ?? "dual", LAB_FAMILIES));
  const mode = attempt(() => oneOf("--mode", text.mode ?? "auto", LAB_MODES));
  const subnets = attempt(() => oneOf("--subnets", text.subnets ?? "1", ["1", "2"] as const));
  const store = text.store === undefined ? undefined : attempt(() => checkStore(text.store!));
  const podLabels = attempt(() => parsePodLabels(text.podLabels ?? DEFAULT_POD_LABELS));
  const namespaceLabels = attempt(() => parseLabels("--namespace-labels", text.namespaceLabels ?? ""));
  const zones = text.zones === undefined ? 0 : attempt(() => wholeNumber("--zones", text.zones!, 1, nodes ?? MAX_NODES));
  const referenceCni = text.referenceCni === true;
  const kubeProxy = text.kubeProxy === true || referenceCni;
  const kubelet = text.kubelet === true || kubeProxy;
  const kubernetes = text.kubernetes === true || kubelet;
  const flag = referenceCni ? "reference-cni" : kubeProxy ? "kube-proxy" : kubelet ? "kubelet" : "kubernetes";
  if (kubernetes && store !== undefined) problems.push(`--store ${text.store} and --${flag}: a Kubernetes lab keeps its cluster in its own API server, not in a Trellis store`);
  if (problems.length > 0) throw new Error(problems.join("\n"));
  return {
    name: name!, nodes: nodes!, podsPerNode: podsPerNode!, family: family!, mode: mode!, subnets: Number(subnets) as 1 | 2, store, podLabels: podLabels!, namespaceLabels: namespaceLabels!, zones: zones!,
    kubernetes, kubelet, kubeProxy, referenceCni,
  };
}

function wholeNumber(option: string, text: string, min: number, max: number): number {
  const value = Number(text);
  if (!/^[0-9]+$/.test(text) || value < min || value > max) {
    throw new Error(`${option} ${JSON.stringify(text)} is invalid: expected a whole number from ${min} to ${max}`);
  }
  return value;
}

function oneOf<T extends string>(option: string, text: string, allowed: readonly T[]): T {
  if (!(allowed as readonly string[]).includes(text)) {
    throw new Error(`${option} ${JSON.stringify(text)} is invalid: expected one of ${allowed.join(", ")}`);
  }
  return text as T;
}

/** `--store etcd`: the lab starts etcd in its external namespace, where every node reaches it. */
export const LAB_ETCD = "etcd";

function checkStore(text: string): string {
  if (text === LAB_ETCD) return text;
  let spec;
  try {
    spec = parseStoreSpec(text);
  } catch (error) {
    throw new Error(`--store: ${(error as Error).message}; or --store ${LAB_ETCD} for an etcd the lab runs itself`);
  }
  if (spec.kind === "etcd" && (spec.endpoint.host === "localhost" || /^127\.|^::1$/.test(spec.endpoint.host))) {
    throw new Error(
      `--store ${text}: the agents run inside the node namespaces, where ${spec.endpoint.host} is each node's own loopback and no etcd listens; ` +
        `give --store ${LAB_ETCD} to have the lab run etcd on its external host, reachable from every node`,
    );
  }
  return text;
}

export function labFamilies(family: LabFamily): Family[] {
  return family === "ipv4" ? [4] : family === "ipv6" ? [6] : [4, 6];
}

/** The lab's namespaces' names are `<lab>-<member>`; the path is what nsenter and CNI_NETNS take. */
export function labNetnsName(lab: string, member: string): string {
  return `${lab}-${member}`;
}

/** Whether a namespace name is one a lab of this name makes (and no other lab's). */
export function isLabNetnsName(lab: string, netnsName: string): boolean {
  if (!netnsName.startsWith(`${lab}-`)) return false;
  return /^(underlay|external|control|node[0-9]+|node[0-9]+-pod[0-9]+|kp-[0-9a-f]{8})$/.test(netnsName.slice(lab.length + 1));
}

/**
 * The lab's hosts other than its nodes, by the name `lab status` and `lab exec` give them, and
 * what holds each. `control` is kept on every lab, so that no lab has a pod by that name.
 */
const LAB_HOSTS: Readonly<Record<string, (kubernetes: boolean) => string>> = {
  external: () => "taken by the lab's external host",
  underlay: () => "taken by the lab's underlay, the namespace joining its nodes",
  control: (kubernetes) => (kubernetes ? "taken by the lab's control-plane host" : "kept for the control-plane host of Kubernetes labs"),
};

/** Whether `name` names one of the lab's hosts: a node of `nodes`, external, underlay or control. */
function isLabHostName(name: string, nodes: readonly string[]): boolean {
  return nodes.includes(name) || Object.hasOwn(LAB_HOSTS, name);
}

/**
 * Why a new pod cannot be called `name`: a node's or another host's name, since `lab exec NAME`
 * must mean one member. Undefined when no host has it (other pods are the caller's to check).
 */
export function podNameConflict(name: string, nodes: readonly string[], kubernetes: boolean): string | undefined {
  const holder = nodes.includes(name) ? `taken by the lab's node ${name}` : Object.hasOwn(LAB_HOSTS, name) ? LAB_HOSTS[name](kubernetes) : undefined;
  if (holder === undefined) return undefined;
  const numbered = nodes.length > 2 && nodes.every((node, i) => node === `node${i + 1}`);
  const nodeNames = numbered ? `${nodes[0]}…${nodes[nodes.length - 1]}` : nodes.join(", ");
  const members = [`${nodes.length === 1 ? "node" : "nodes"} ${nodeNames}`, "external", "underlay", ...(kubernetes ? ["control"] : []), "and its pods"];
  return `pod name ${JSON.stringify(name)} is ${holder}; lab members are named uniquely: ${members.join(", ")}`;
}

/**
 * The name a Kubernetes Pod goes by in `lab status`, `lab check` and `lab exec`: NAME in namespace
 * default, NAMESPACE/NAME elsewhere, and default/NAME when NAME is a host's (a Pod made with
 * kubectl can be called node1), so that every name means one member.
 */
export function kubePodMemberName(namespace: string, name: string, nodes: readonly string[]): string {
  return namespace === "default" && !isLabHostName(name, nodes) ? name : `${namespace}/${name}`;
}

export interface UnderlaySubnet {
  readonly index: number;
  /** The bridge in the underlay namespace that is this subnet's L2 segment. */
  readonly bridge: string;
  /** Per family in use: the subnet and the router's address on it. */
  readonly prefixes: readonly string[];
  readonly router: readonly string[];
}

/** A host on the underlay: a namespace with eth0 on one subnet's bridge. */
export interface UnderlayHost {
  readonly name: string;
  /** The namespace's name (`ip netns`). */
  readonly netnsName: string;
  readonly subnet: number;
  /** The veth end in the underlay namespace, a port of the subnet's bridge. */
  readonly bridgePort: string;
  readonly addresses: readonly string[];
  /** The same addresses with the subnet's prefix length, as eth0 holds them. */
  readonly interfaceAddresses: readonly string[];
}

export interface LabPodSpec {
  /** `node1-pod0`: what `lab exec` and `lab status` call it. */
  readonly name: string;
  readonly node: string;
  readonly netnsName: string;
  readonly containerId: string;
}

export interface LabLayout {
  readonly name: string;
  readonly families: readonly Family[];
  readonly underlayNetns: string;
  readonly subnets: readonly UnderlaySubnet[];
  readonly nodes: readonly UnderlayHost[];
  readonly external: UnderlayHost;
  /** The control plane's host, in a Kubernetes lab. */
  readonly control?: UnderlayHost;
  readonly pods: readonly LabPodSpec[];
  /** The cluster plan file's text (canonical JSON). */
  readonly planText: string;
}

const UNDERLAY: Readonly<Record<Family, IpPrefix>> = { 4: parsePrefix("198.18.0.0/16"), 6: parsePrefix("fd00:198:18::/48") };
const UNDERLAY_SUBNET_LENGTH: Readonly<Record<Family, number>> = { 4: 24, 6: 64 };
const POD_CIDRS: Readonly<Record<Family, string>> = { 4: "10.244.0.0/16", 6: "fd00:10:244::/56" };
const SERVICE_CIDRS: Readonly<Record<Family, string>> = { 4: "10.96.0.0/16", 6: "fd00:10:96::/112" };
/**
 * Addresses for Services' `externalIPs` (and load-balancer ingress): the underlay's router sends
 * them to node1, as a router in front of a cluster would, so that `external` reaches them.
 * Inside 198.18.0.0/15 (benchmarking) and fd00::/8, beside the underlay.
 */
export const LAB_EXTERNAL_IPS: Readonly<Record<Family, string>> = { 4: "198.19.0.0/24", 6: "fd00:198:19::/64" };
const NODE_MASK_SIZE = { ipv4: 24, ipv6: 64 };
const ROUTER_HOST = 1;
const EXTERNAL_HOST = 200;
const CONTROL_HOST = 2;
const FIRST_NODE_HOST = 10;

/** Every name and address of a lab. The IPv6 host part reads like the IPv4 one: .11 and ::11. */
export function labLayout(options: LabOptions): LabLayout {
  const families = labFamilies(options.family);
  const subnetPrefix = (index: number, family: Family): IpPrefix => subPrefix(UNDERLAY[family], UNDERLAY_SUBNET_LENGTH[family], BigInt(index));
  const hostAddress = (index: number, family: Family, host: number): string =>
    formatIp(nthAddress(subnetPrefix(index, family), family === 4 ? BigInt(host) : BigInt(`0x${host}`)));
  const subnets = Array.from({ length: options.subnets }, (_, index) => ({
    index,
    bridge: `br${index}`,
    prefixes: families.map((family) => formatPrefix(subnetPrefix(index, family))),
    router: families.map((family) => hostAddress(index, family, ROUTER_HOST)),
  }));
  const host = (name: string, subnet: number, number: number): UnderlayHost => {
    const addresses = families.map((family) => hostAddress(subnet, family, number));
    return {
      name,
      netnsName: labNetnsName(options.name, name),
      subnet,
      bridgePort: name,
      addresses,
      interfaceAddresses: addresses.map((address, i) => `${address}/${UNDERLAY_SUBNET_LENGTH[families[i]]}`),
    };
  };
  const nodes = Array.from({ length: options.nodes }, (_, i) => host(`node${i + 1}`, i % options.subnets, FIRST_NODE_HOST + i + 1));
  const pods = nodes.flatMap((node) =>
    Array.from({ length: options.podsPerNode }, (_, j) => {
      const name = `${node.name}-pod${j}`;
      const netnsName = labNetnsName(options.name, name);
      return { name, node: node.name, netnsName, containerId: netnsName };
    }),
  );
  return {
    name: options.name,
    families,
    underlayNetns: labNetnsName(options.name, "underlay"),
    subnets,
    nodes,
    external: host("external", 0, EXTERNAL_HOST),
    ...(options.kubernetes ? { control: host("control", 0, CONTROL_HOST) } : {}),
    pods,
    planText: labPlanText(families),
  };
}

/**
 * The plan: pod and Service CIDRs of the families in use, primary family first, and the
 * underlay's ranges as node CIDRs (a node address outside them is refused by every agent).
 */
function labPlanText(families: readonly Family[]): string {
  const { plan, problems } = validatePlan({
    podCidrs: families.map((family) => POD_CIDRS[family]),
    serviceCidrs: families.map((family) => SERVICE_CIDRS[family]),
    nodeCidrs: families.map((family) => formatPrefix(UNDERLAY[family])),
    nodeMaskSize: Object.fromEntries(families.map((family) => (family === 4 ? ["ipv4", NODE_MASK_SIZE.ipv4] : ["ipv6", NODE_MASK_SIZE.ipv6]))),
  });
  if (!plan) throw new Error(`the lab's own cluster plan is invalid: ${problems.join("; ")}`);
  return formatPlanFile(plan);
}

/** `k=v,k2=v2` as labels, each key and value checked as Kubernetes checks them. */
export function parsePodLabels(text: string): Record<string, string> {
  return parseLabels("--pod-labels", text);
}

/** `k=v,k2=v2` as labels for `flag`, each key and value checked as Kubernetes checks them. */
export function parseLabels(flag: string, text: string): Record<string, string> {
  const labels: Record<string, string> = {};
  if (text.trim() === "") return labels;
  for (const item of text.split(",")) {
    const [key, value, ...rest] = item.split("=");
    const problems = key === undefined || value === undefined || rest.length > 0 ? ["expected KEY=VALUE"] : [...isQualifiedName(key), ...isValidLabelValue(value)];
    if (problems.length > 0) throw new Error(`${flag} ${JSON.stringify(item)} is not a label: ${problems.join("; ")} (e.g. app=web,tier=front)`);
    if (Object.hasOwn(labels, key)) throw new Error(`${flag} gives ${key} twice`);
    labels[key] = value;
  }
  return labels;
}
