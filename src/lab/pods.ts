/**
 * `trellis lab pod add NAME --node N [--label k=v]…` and `lab pod rm NAME`: a pod joins or leaves
 * a running lab as a kubelet would add or remove one: namespace, CNI ADD or DEL through its
 * node's conflist, its probe server, and its Pod object in the lab's store. On a Kubernetes lab
 * the Pod is made (or deleted) through the API server, bound to its node, and the node's lab
 * kubelet does the rest.
 */
import { join } from "node:path";
import { isDns1123Label } from "../cluster/objects/syntax.js";
import { deleteNamedNetns, namedNetnsPath } from "../linux/named-netns.js";
import { delNetworkList, readNetworkList } from "./cni-runtime.js";
import { labKubectl, labKubePod } from "./kube-lab.js";
import { kubeletLabPods } from "./kubelet.js";
import { LAB_POD_LABEL, labPodCniArgs, labPodObject, recordLabPods } from "./pod-objects.js";
import { isLabProcess, sleep, stopProcesses } from "./processes.js";
import { labStore } from "./store-access.js";
import { labNetnsName, MAX_PODS_PER_NODE, parsePodLabels, podNameConflict } from "./topology.js";
import { saveLabState, type LabPodState, type LabState } from "./state.js";
import { attachLabPod, waitForProbeServer } from "./up.js";

export async function labPodAdd(state: LabState, name: string, nodeName: string, labelTexts: readonly string[], out: (line: string) => void): Promise<LabPodState> {
  const problems = isDns1123Label(name);
  if (problems.length) throw new Error(`pod name ${JSON.stringify(name)} is invalid: ${problems.join("; ")}`);
  const conflict = podNameConflict(name, state.nodes.map((node) => node.name), state.kubernetes !== undefined);
  if (conflict) throw new Error(conflict);
  // A Kubernetes lab's pods are the ones its kubelets run now, whoever made them.
  if ((state.kubernetes ? kubeletLabPods(state) : state.pods).some((pod) => pod.name === name)) throw new Error(`lab ${state.name} already has a pod named ${name}; \`trellis lab pod rm --name ${state.name} ${name}\` removes it`);
  const node = state.nodes.find((candidate) => candidate.name === nodeName);
  if (!node) throw new Error(`lab ${state.name} has no node ${JSON.stringify(nodeName)}; its nodes are ${state.nodes.map((candidate) => candidate.name).join(", ")}`);
  const labels = labelTexts.length ? parsePodLabels(labelTexts.join(",")) : undefined;
  if (state.kubernetes) return kubePodAdd(state, name, node.name, labels, out);
  // The namespace is named by node and slot, as those of `lab up` are, so `lab down` finds it.
  const used = new Set(state.pods.filter((pod) => pod.node === node.name).map((pod) => pod.netnsName));
  const slot = Array.from({ length: MAX_PODS_PER_NODE }, (_, i) => i).find((i) => !used.has(labNetnsName(state.name, `${node.name}-pod${i}`)));
  if (slot === undefined) throw new Error(`node ${node.name} already has ${MAX_PODS_PER_NODE} pods, the most a lab node holds`);
  const netnsName = labNetnsName(state.name, `${node.name}-pod${slot}`);
  const pod: LabPodState = { name, node: node.name, netnsName, containerId: netnsName, netnsPath: namedNetnsPath(netnsName), addresses: [], ...(labels ? { labels } : {}) };
  state.pods.push(pod);
  saveLabState(state);
  // The Pod first, as a kubelet's exists before its sandbox: its labels decide its policies at ADD.
  await recordLabPods(state, [pod]);
  const probe = await attachLabPod(state, pod, out);
  await waitForProbeServer(probe, new AbortController().signal);
  await recordLabPods(state, [pod]);
  out(`pod ${name} on ${node.name}: ${pod.addresses.join(" ")}, Pod object written with labels ${JSON.stringify((labPodObject(state, pod) as { metadata: { labels: object } }).metadata.labels)}`);
  return pod;
}

export async function labPodRm(state: LabState, name: string, out: (line: string) => void): Promise<void> {
  if (state.kubernetes) {
    const running = kubeletLabPods(state);
    if (!running.some((pod) => pod.name === name)) throw new Error(`lab ${state.name} runs no Pod ${JSON.stringify(name)}; its pods are ${running.map((pod) => pod.name).join(", ")}`);
    // Named as `lab status` names it: NAME in namespace default, or NAMESPACE/NAME.
    const [namespace, podName] = name.includes("/") ? name.split("/") : ["default", name];
    // The kubelet of its node runs CNI DEL and removes its namespace, then deletes the Pod for good.
    await labKubectl(state.kubernetes, ["delete", "pod", podName, "--namespace", namespace, "--wait=true", "--timeout=60s"]);
    state.pods.splice(0, state.pods.length, ...state.pods.filter((pod) => pod.name !== name));
    saveLabState(state);
    out(`pod ${name} removed: Pod deleted through the API server, CNI DEL and its namespace by its node's lab kubelet`);
    return;
  }
  const pod = state.pods.find((candidate) => candidate.name === name);
  if (!pod) throw new Error(`lab ${state.name} has no pod ${JSON.stringify(name)}; its pods are ${state.pods.map((candidate) => candidate.name).join(", ")}`);
  // The Pod object first: its Services stop sending to it before it goes.
  await labStore(state, ["delete", "-f", "-"], JSON.stringify(labPodObject(state, pod))).catch((error: Error) => {
    if (!/not found/.test(error.message)) throw error;
  });
  if (pod.probe && isLabProcess(pod.probe, pod.netnsPath)) await stopProcesses([pod.probe.pid]);
  const node = state.nodes.find((candidate) => candidate.name === pod.node)!;
  const list = readNetworkList(node.cniConfDir);
  if (list) await delNetworkList(list, { nodeNetns: node.netnsPath, containerId: pod.containerId, podNetns: pod.netnsPath, ifname: "eth0", args: labPodCniArgs(pod) }, pod.cniResult);
  await deleteNamedNetns(pod.netnsName);
  state.pods.splice(state.pods.indexOf(pod), 1);
  saveLabState(state);
  out(`pod ${name} removed: Pod object deleted, CNI DEL on ${node.name}, namespace ${pod.netnsName} gone`);
}

/** A Pod bound to `node` through the API server; resolves once that node's lab kubelet runs it. */
async function kubePodAdd(state: LabState, name: string, node: string, labels: Readonly<Record<string, string>> | undefined, out: (line: string) => void): Promise<LabPodState> {
  const kube = state.kubernetes!;
  const manifest = labKubePod(state, name, node, { ...(labels ?? state.podLabels), [LAB_POD_LABEL]: name });
  await labKubectl(kube, ["create", "-f", "-"], JSON.stringify(manifest)).catch((error: Error) => {
    throw /AlreadyExists|already exists/.test(error.message) ? new Error(`lab ${state.name} already has a pod named ${name}; \`trellis lab pod rm --name ${state.name} ${name}\` removes it`) : error;
  });
  const deadline = Date.now() + 60_000;
  for (;;) {
    const pod = kubeletLabPods(state).find((candidate) => candidate.name === name && candidate.node === node);
    if (pod) {
      out(`pod ${name} on ${node}: ${pod.addresses.join(" ")}, a Pod run by ${node}'s lab kubelet`);
      return pod;
    }
    if (Date.now() > deadline) throw new Error(`the lab kubelet of ${node} did not run Pod ${name} within 60 s; see ${join(state.dir, node, "kubelet.log")}`);
    await sleep(200);
  }
}
