/**
 * The lab's pods as Kubernetes Pod objects in the lab's store, so that Services applied to that
 * store (`trellis apply --store …`) select them by label, as they would select a kubelet's pods:
 * each with its node, its pod IPs, Ready, and its probe server's port (named `probe`, TCP and UDP).
 */
import { labStore } from "./store-access.js";
import type { LabPodState, LabState } from "./state.js";

/** Labels every lab pod carries besides those given: which lab pod and node it is. */
export const LAB_POD_LABEL = "trellis.dev/lab-pod";

export function labPodObject(state: LabState, pod: LabPodState): object {
  return {
    apiVersion: "v1",
    kind: "Pod",
    metadata: { name: pod.name, namespace: "default", labels: { ...(pod.labels ?? state.podLabels), [LAB_POD_LABEL]: pod.name } },
    spec: {
      nodeName: pod.node,
      containers: [{ name: "probe", ports: [{ name: "probe", containerPort: state.probePort, protocol: "TCP" }, { name: "probe-udp", containerPort: state.probePort, protocol: "UDP" }] }],
    },
    // Before its ADD, a pod is Pending with no address.
    status: {
      phase: pod.addresses.length ? "Running" : "Pending",
      ...(pod.addresses[0] ? { podIP: pod.addresses[0] } : {}),
      podIPs: pod.addresses.map((ip) => ({ ip })),
      conditions: [{ type: "Ready", status: pod.addresses.length ? "True" : "False" }],
    },
  };
}

/** CNI_ARGS as a Kubernetes runtime passes them for the pod's Pod object. */
export function labPodCniArgs(pod: LabPodState): Record<string, string> {
  return { IgnoreUnknown: "1", K8S_POD_NAMESPACE: "default", K8S_POD_NAME: pod.name, K8S_POD_INFRA_CONTAINER_ID: pod.containerId };
}

/** Writes (creates or updates) the Pod objects of `pods` in the lab's store, in one apply. */
export async function recordLabPods(state: LabState, pods: readonly LabPodState[]): Promise<void> {
  await labStore(state, ["apply", "-f", "-"], pods.map((pod) => JSON.stringify(labPodObject(state, pod))).join("\n---\n"));
}
