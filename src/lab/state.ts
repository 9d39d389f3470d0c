/**
 * A lab's record on disk: `/run/trellis/lab/<name>/state.json` says what `lab up` made (and,
 * while it builds, what it has made so far), so that `status`, `check`, `exec` and `down` work
 * from any later process.
 */
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { listNamedNetns } from "../linux/named-netns.js";
import type { Family } from "../net/ip.js";
import type { LabKubernetes } from "./kube-lab.js";
import type { RealNodeRuntime, RealNodesState } from "./real-nodes.js";
import { isLabNetnsName, type LabFamily, type LabMode, type LabPodSpec, type UnderlayHost, type UnderlaySubnet } from "./topology.js";

export const LAB_ROOT = "/run/trellis/lab";

export function labDir(name: string): string {
  return join(LAB_ROOT, name);
}

/** A process the lab started detached; `argv` is its command line, checked before it is signalled. */
export interface LabProcess {
  readonly pid: number;
  readonly argv: readonly string[];
  readonly log: string;
}

export interface LabNodeState extends UnderlayHost {
  /** Path of the namespace, what nsenter and CNI_NETNS take. */
  readonly netnsPath: string;
  /** Where the agent writes the node's conflist. */
  readonly cniConfDir: string;
  /** The CNI state directory the agent names in the conflist. */
  readonly cniDataDir: string;
  agent?: LabProcess;
  /** Its containerd and kubelet, on a lab of real nodes (`--kubelet`). */
  runtime?: RealNodeRuntime;
}

export interface LabPodState extends LabPodSpec {
  readonly netnsPath: string;
  /** Pod IPs from the CNI result, primary family first. */
  addresses: string[];
  /** The last plugin's result, handed back as prevResult on DEL (as a runtime caches it). */
  cniResult?: unknown;
  probe?: LabProcess;
  /** Its Pod object's labels when given (`lab pod add --label`); else the lab's `podLabels`. */
  readonly labels?: Readonly<Record<string, string>>;
}

export interface LabExternalState extends UnderlayHost {
  readonly netnsPath: string;
  probe?: LabProcess;
}

export interface LabState {
  readonly name: string;
  /** `building` until `lab up` has attached every pod. */
  phase: "building" | "up";
  readonly createdAt: string;
  readonly dir: string;
  readonly store: string;
  readonly planFile: string;
  readonly family: LabFamily;
  readonly families: readonly Family[];
  readonly mode: LabMode;
  readonly probePort: number;
  /** Labels of the pods' Pod objects (besides trellis.dev/lab-pod); absent in labs made before them. */
  readonly podLabels?: Readonly<Record<string, string>>;
  /** Zones the nodes are spread over (`--zones`); absent or 0: none. */
  readonly zones?: number;
  readonly underlay: { readonly netnsName: string; readonly netnsPath: string; readonly subnets: readonly UnderlaySubnet[] };
  readonly nodes: LabNodeState[];
  readonly pods: LabPodState[];
  readonly external: LabExternalState;
  /** Where the underlay routes Services' external IPs (LAB_EXTERNAL_IPS); absent in labs made before. */
  externalIps?: { readonly ranges: readonly string[]; readonly node: string };
  /** The etcd the lab runs on its external host (`--store etcd`). */
  etcd?: LabProcess & { readonly dataDir: string };
  /** A lab on a real Kubernetes control plane (`--kubernetes`): its `control` host. */
  readonly control?: LabExternalState;
  /** A lab on a real Kubernetes control plane: its processes, kubeconfigs and kubelets. */
  kubernetes?: LabKubernetes;
  /** A lab of real nodes (`--kubelet`): what the nodes share. */
  realNodes?: RealNodesState;
}

/** The zone (topology.kubernetes.io/zone) of the lab node `nodeN`: zone-1, zone-2, … round robin; undefined without zones. */
export function labNodeZone(state: Pick<LabState, "zones">, node: string): string | undefined {
  const index = Number(/^node([0-9]+)$/.exec(node)?.[1]);
  if (!state.zones || !Number.isInteger(index) || index < 1) return undefined;
  return `zone-${((index - 1) % state.zones) + 1}`;
}

/** Where the agent of `node` writes its conflist. */
export function nodeCniConfDir(name: string, node: string): string {
  return join(labDir(name), node, "net.d");
}

/** The CNI state directory of `node`'s pods. */
export function nodeCniDataDir(name: string, node: string): string {
  return join(labDir(name), node, "cni");
}

export function stateFile(name: string): string {
  return join(labDir(name), "state.json");
}

/** Writes the state atomically, so a reader never sees half a file. */
export function saveLabState(state: LabState): void {
  mkdirSync(state.dir, { recursive: true });
  const file = stateFile(state.name);
  writeFileSync(`${file}.tmp`, `${JSON.stringify(state, null, 2)}\n`);
  renameSync(`${file}.tmp`, file);
}

/** The state of a lab; undefined when it has none (never made, or already down). */
export function readLabState(name: string): LabState | undefined {
  const file = stateFile(name);
  if (!existsSync(file)) return undefined;
  try {
    return JSON.parse(readFileSync(file, "utf8")) as LabState;
  } catch (error) {
    throw new Error(`the state of lab ${JSON.stringify(name)} in ${file} cannot be read: ${(error as Error).message}; \`trellis lab down --name ${name}\` still removes the lab`);
  }
}

/** The state of a lab that must exist, with a message saying how to make one otherwise. */
export function requireLabState(name: string): LabState {
  const state = readLabState(name);
  if (state) return state;
  const leftovers = listNamedNetns().filter((netns) => isLabNetnsName(name, netns));
  const how = leftovers.length > 0
    ? `its namespaces (${leftovers.length}) are left from a lab that went part way: \`trellis lab down --name ${name}\` removes them`
    : `start one with \`trellis lab up --name ${name}\``;
  throw new Error(`no lab named ${JSON.stringify(name)} is up (no ${stateFile(name)}); ${how}`);
}

/** Looks a member up by the name `status` shows: `node1`, `node1-pod0`, `external`, `control` or `underlay`. */
export function labMemberNetns(state: LabState, member: string): string {
  if (member === "underlay") return state.underlay.netnsPath;
  // Hosts before pods: a pod that took a host's name (in a lab made before that was refused) never hides the host.
  const found = [...state.nodes, state.external, ...(state.control ? [state.control] : []), ...state.pods].find((candidate) => candidate.name === member);
  if (!found) {
    const names = ["underlay", "external", ...(state.control ? ["control"] : []), ...state.nodes.map((node) => node.name), ...state.pods.map((pod) => pod.name)];
    throw new Error(`lab ${JSON.stringify(state.name)} has no member ${JSON.stringify(member)}; its members are ${names.join(", ")}`);
  }
  return found.netnsPath;
}
