/**
 * `lab down`: takes a lab apart in the order that leaves nothing behind, from whatever exists.
 * It works from state.json when there is one and from the lab's naming conventions when there
 * is not, so a half-built or half-removed lab goes too; running it twice is harmless.
 */
import { existsSync, readdirSync, readFileSync, rmdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import { deleteNamedNetns, listNamedNetns, namedNetnsPath, namedNetnsPids } from "../linux/named-netns.js";
import { delNetworkList, readNetworkList } from "./cni-runtime.js";
import { LOCAL_RELAY } from "./kube-lab.js";
import { readKubeletPods } from "./kubelet.js";
import { stopRealNodes } from "./real-nodes.js";
import { isLabProcess, stopProcesses } from "./processes.js";
import { mapConcurrently } from "./concurrently.js";
import { LAB_ROOT, labDir, nodeCniConfDir, readLabState, type LabProcess, type LabState } from "./state.js";
import { isLabNetnsName, labNetnsName } from "./topology.js";

export interface LabDownSettings {
  readonly out: (line: string) => void;
}

const DEL_CONCURRENCY = 4;

export async function labDown(name: string, settings: LabDownSettings): Promise<void> {
  const { out } = settings;
  let state: LabState | undefined;
  try {
    state = readLabState(name);
  } catch (error) {
    out(`${(error as Error).message.split(";")[0]}; removing the lab by its namespace names`);
  }
  const namespaces = new Set(listNamedNetns().filter((netns) => isLabNetnsName(name, netns)));
  const pods = [...namespaces].filter((netns) => /-(node[0-9]+-pod[0-9]+|kp-[0-9a-f]{8})$/.test(netns)).sort();
  const nodes = [...namespaces].filter((netns) => /-node[0-9]+$/.test(netns)).sort();
  const others = [labNetnsName(name, "external"), labNetnsName(name, "control"), labNetnsName(name, "underlay")].filter((netns) => namespaces.has(netns));
  if (!state && namespaces.size === 0 && !existsSync(labDir(name))) {
    out(`no lab named ${JSON.stringify(name)}: nothing to remove`);
    return;
  }

  // The lab kubelets first (they would attach pods again), then pods, then CNI DEL while the
  // agents and nodes are still there, then the rest.
  const kubeletsStopped = await stopLabProcesses([], Object.values(state?.kubernetes?.kubelets ?? {}).map((kubelet) => recordedHere(kubelet)));
  // Real nodes: everything in their control groups, then their mounts; their pods' CNI state goes with the lab's directory.
  const realStopped = await stopRealNodes(name, state, labDir(name));
  const podStopped = await stopLabProcesses(pods, (state?.pods ?? []).map((pod) => recorded(pod.probe, pod.netnsPath)));
  const released = await releasePods(name, state, pods, out);
  const hostRecords = [
    ...(state?.nodes ?? []).map((node) => recorded(node.agent, node.netnsPath)),
    recorded(state?.external.probe, state?.external.netnsPath),
    recorded(state?.etcd, state?.external.netnsPath),
    ...Object.entries(state?.kubernetes?.processes ?? {}).map(([role, proc]) => (role === LOCAL_RELAY ? recordedHere(proc) : recorded(proc, state?.control?.netnsPath))),
  ];
  const agentsStopped = await stopLabProcesses([...nodes, ...others], hostRecords);
  // Anything still living in a lab namespace (a `lab exec` left running, say) keeps it alive.
  // The agents' idle `ip` children end on their own as their parent goes: a moment for that.
  if ((await Promise.all([...namespaces].map(namedNetnsPids))).flat().length > 0) await new Promise((resolve) => setTimeout(resolve, 200));
  const straysStopped = await stopLabProcesses([...namespaces], []);
  for (const netns of [...pods, ...nodes, ...others]) await deleteNamedNetns(netns);
  rmSync(labDir(name), { recursive: true, force: true });
  removeSharedPluginLinks();
  out(
    `lab ${name} removed: ${namespaces.size} namespaces, ${kubeletsStopped + realStopped + podStopped + agentsStopped + straysStopped} processes` +
      `${released > 0 ? `, ${released} pods released through CNI DEL` : ""}, ${labDir(name)}`,
  );
}

/** A process the state recorded, if it still runs as the lab started it. */
function recorded(proc: LabProcess | undefined, netnsPath: string | undefined): number | undefined {
  return proc && isLabProcess(proc, netnsPath) ? proc.pid : undefined;
}

/** A process the lab started in the machine's own namespace, if it still runs as started (its command line). */
function recordedHere(proc: LabProcess | undefined): number | undefined {
  return proc && isLabProcess(proc) ? proc.pid : undefined;
}

/**
 * Stops the recorded processes that are still the lab's and every other process inside those
 * namespaces; returns how many there were.
 */
async function stopLabProcesses(netnsNames: readonly string[], recordedPids: ReadonlyArray<number | undefined>): Promise<number> {
  const inside = (await Promise.all(netnsNames.map(namedNetnsPids))).flat();
  const known = recordedPids.filter((pid): pid is number => pid !== undefined);
  const all = new Set([...known, ...inside]);
  // A child of one of them (an agent's idle `ip`) ends with its parent: not one more to stop.
  // One that has ended since the listing (its parent unknown now) is not one either.
  const pids = [...all].filter((pid) => {
    const parent = parentPid(pid);
    return pid !== process.pid && parent !== undefined && !all.has(parent);
  });
  await stopProcesses(pids);
  return pids.length;
}

/** CNI DEL of every pod whose node still has its conflist, so the node's CNI state ends clean; best effort. */
async function releasePods(name: string, state: LabState | undefined, podNetnsNames: readonly string[], out: (line: string) => void): Promise<number> {
  // A Kubernetes pod's node and container id are in its node's kubelet record.
  const kubeletPods = new Map((state?.nodes ?? []).flatMap((node) => readKubeletPods(state!, node.name).map((pod) => [pod.netnsName, { node: node.name, pod }] as const)));
  const results = await mapConcurrently(podNetnsNames, DEL_CONCURRENCY, async (netnsName) => {
    const kubelet = kubeletPods.get(netnsName);
    const node = kubelet?.node ?? /-(node[0-9]+)-pod[0-9]+$/.exec(netnsName)?.[1];
    if (node === undefined) return false;
    const nodeNetns = namedNetnsPath(labNetnsName(name, node));
    try {
      const list = existsSync(nodeNetns) ? readNetworkList(nodeCniConfDir(name, node)) : undefined;
      if (!list) return false;
      const cached = kubelet?.pod.cniResult ?? state?.pods.find((pod) => pod.netnsName === netnsName)?.cniResult;
      await delNetworkList(list, { nodeNetns, containerId: kubelet?.pod.containerId ?? netnsName, podNetns: namedNetnsPath(netnsName), ifname: "eth0" }, cached);
      return true;
    } catch (error) {
      out(`CNI DEL of ${netnsName} failed (the namespace goes anyway): ${(error as Error).message}`);
      return false;
    }
  });
  return results.filter(Boolean).length;
}

/** The parent of a running process, from /proc; undefined once it is gone. */
function parentPid(pid: number): number | undefined {
  try {
    // The command name (field 2) is in parentheses and may hold spaces: fields count from its end.
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
  } catch {
    return undefined;
  }
}

/** The plugin links labs share (`LAB_ROOT/.bin`) go with the last lab; a lab being made re-creates them. */
function removeSharedPluginLinks(): void {
  let entries: string[];
  try {
    entries = readdirSync(LAB_ROOT);
  } catch {
    return;
  }
  if (entries.some((entry) => entry !== ".bin")) return;
  rmSync(join(LAB_ROOT, ".bin"), { recursive: true, force: true });
  try {
    rmdirSync(LAB_ROOT);
  } catch {
    // a lab appeared meanwhile
  }
}
