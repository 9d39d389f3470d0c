/**
 * `lab status`: what a lab holds and whether its processes run. The JSON form is a contract for
 * scripts: `{name, store, nodes: [{name, netns, addresses, podCidrs, agentPid, agentRunning}],
 * pods: [{name, node, netns, addresses}], external: {netns, addresses}}`, netns as paths (in a
 * Kubernetes lab, pods are every Pod its kubelets run, and `kubernetes` is added); other
 * fields may be added, none of these removed.
 */
import { existsSync } from "node:fs";
import { networkListSubnets, readNetworkList } from "./cni-runtime.js";
import { kubeletLabPods } from "./kubelet.js";
import { isLabProcess } from "./processes.js";
import type { LabProcess, LabState } from "./state.js";
import type { LabFamily, LabMode } from "./topology.js";

export interface LabStatus {
  readonly name: string;
  readonly phase: LabState["phase"];
  readonly store: string;
  readonly family: LabFamily;
  readonly mode: LabMode;
  readonly dir: string;
  readonly planFile: string;
  readonly probePort: number;
  readonly nodes: ReadonlyArray<{
    readonly name: string;
    readonly netns: string;
    readonly addresses: readonly string[];
    readonly podCidrs: readonly string[];
    readonly subnet: number;
    readonly agentPid: number | null;
    readonly agentRunning: boolean;
    readonly agentLog: string;
    /** The agent's command line, to start it again the same way inside `netns`. */
    readonly agentArgv: readonly string[];
    readonly cniConfDir: string;
  }>;
  readonly pods: ReadonlyArray<{
    readonly name: string;
    readonly node: string;
    readonly netns: string;
    readonly addresses: readonly string[];
    readonly containerId: string;
    readonly probePid: number | null;
    readonly probeRunning: boolean;
  }>;
  readonly external: { readonly netns: string; readonly addresses: readonly string[]; readonly probePid: number | null; readonly probeRunning: boolean };
  /** A Kubernetes lab (`--kubernetes`): the API server as this machine reaches it, the admin kubeconfig, and every control-plane process and lab kubelet. */
  readonly kubernetes?: {
    readonly server: string;
    readonly kubeconfig: string;
    readonly control: { readonly netns: string; readonly addresses: readonly string[] };
    readonly processes: Readonly<Record<string, { readonly pid: number; readonly running: boolean; readonly log: string }>>;
  };
  /** Present when the lab runs its own etcd (`--store etcd`): stop it with SIGSTOP or SIGKILL to take the store away. */
  readonly etcd?: { readonly pid: number; readonly running: boolean; readonly argv: readonly string[]; readonly log: string; readonly dataDir: string; readonly netns: string };
  readonly underlay: { readonly netns: string; readonly subnets: ReadonlyArray<{ readonly bridge: string; readonly prefixes: readonly string[]; readonly router: readonly string[] }> };
}

export function labStatus(state: LabState): LabStatus {
  return {
    name: state.name,
    phase: state.phase,
    store: state.store,
    family: state.family,
    mode: state.mode,
    dir: state.dir,
    planFile: state.planFile,
    probePort: state.probePort,
    nodes: state.nodes.map((node) => ({
      name: node.name,
      netns: node.netnsPath,
      addresses: node.addresses,
      podCidrs: podCidrsOf(node.cniConfDir),
      subnet: node.subnet,
      agentPid: node.agent?.pid ?? null,
      agentRunning: node.agent !== undefined && isLabProcess(node.agent, node.netnsPath),
      agentLog: node.agent?.log ?? "",
      agentArgv: node.agent?.argv ?? [],
      cniConfDir: node.cniConfDir,
    })),
    pods: (state.kubernetes && !state.realNodes ? kubeletLabPods(state) : state.pods).map((pod) => {
      // A real node's pod is a container: its process is the one whose namespace the path names.
      const containerPid = state.realNodes ? Number(/^\/proc\/([0-9]+)\//.exec(pod.netnsPath)?.[1]) : NaN;
      return {
        name: pod.name,
        node: pod.node,
        netns: pod.netnsPath,
        addresses: pod.addresses,
        containerId: pod.containerId,
        probePid: Number.isInteger(containerPid) ? containerPid : (pod.probe?.pid ?? null),
        probeRunning: Number.isInteger(containerPid) ? existsSync(`/proc/${containerPid}`) : pod.probe !== undefined && isLabProcess(pod.probe, pod.netnsPath),
      };
    }),
    external: {
      netns: state.external.netnsPath,
      addresses: state.external.addresses,
      probePid: state.external.probe?.pid ?? null,
      probeRunning: state.external.probe !== undefined && isLabProcess(state.external.probe, state.external.netnsPath),
    },
    ...(state.etcd
      ? { etcd: { pid: state.etcd.pid, running: isLabProcess(state.etcd, state.external.netnsPath), argv: state.etcd.argv, log: state.etcd.log, dataDir: state.etcd.dataDir, netns: state.external.netnsPath } }
      : {}),
    ...(state.kubernetes
      ? {
          kubernetes: {
            server: state.kubernetes.localServer,
            kubeconfig: state.kubernetes.adminKubeconfig,
            control: { netns: state.control!.netnsPath, addresses: state.control!.addresses },
            processes: Object.fromEntries(
              Object.entries({ ...state.kubernetes.processes, ...Object.fromEntries(Object.entries(state.kubernetes.kubelets).map(([node, proc]) => [`kubelet-${node}`, proc])), ...realNodeProcesses(state) }).map(([role, proc]) => [
                role,
                { pid: proc.pid, running: isLabProcess(proc), log: proc.log },
              ]),
            ),
          },
        }
      : {}),
    underlay: {
      netns: state.underlay.netnsPath,
      subnets: state.underlay.subnets.map(({ bridge, prefixes, router }) => ({ bridge, prefixes, router })),
    },
  };
}

/** Each real node's containerd, kubelet and kube-proxy, by `containerd-NODE`, `kubelet-NODE` and `kube-proxy-NODE`. */
function realNodeProcesses(state: LabState): Record<string, LabProcess> {
  const processes: Record<string, LabProcess> = {};
  for (const node of state.nodes) {
    if (node.runtime?.containerd) processes[`containerd-${node.name}`] = node.runtime.containerd;
    if (node.runtime?.kubelet) processes[`kubelet-${node.name}`] = node.runtime.kubelet;
    if (node.runtime?.kubeProxy) processes[`kube-proxy-${node.name}`] = node.runtime.kubeProxy;
  }
  return processes;
}

/** The pod CIDRs the node's agent put in its conflist; none while it has written none. */
function podCidrsOf(confDir: string): string[] {
  try {
    const list = readNetworkList(confDir);
    return list ? networkListSubnets(list) : [];
  } catch {
    return [];
  }
}
