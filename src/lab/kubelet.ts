/**
 * The network part of a kubelet, for a lab on a real control plane (`lab up --kubernetes`): one
 * per node, following the Pods bound to it. For a new Pod it makes the pod's namespace, runs CNI
 * ADD through the node's conflist (as containerd would, with the K8S_POD_* arguments), starts a
 * probe server on the lab's probe port and every port the Pod's containers declare, and writes
 * the Pod's status: Running, Ready, its pod IPs. For a Pod being deleted it runs CNI DEL, stops
 * the server, removes the namespace and deletes the Pod for good. What it made is recorded in the
 * node's kubelet.json, so a restarted kubelet (or `lab down`) takes up where it was.
 */
import { randomUUID } from "node:crypto";
import { existsSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { KubeApiError, KubeClient } from "../kube/client.js";
import { loadKubeconfig } from "../kube/config.js";
import { inform } from "../kube/informer.js";
import { addNamedNetns, deleteNamedNetns, namedNetnsPath } from "../linux/named-netns.js";
import { addNetworkList, delNetworkList, readNetworkList, resultAddresses } from "./cni-runtime.js";
import { isLabProcess, startDetached, stopProcesses } from "./processes.js";
import { selfInvocation } from "./probe.js";
import type { LabPodState, LabProcess, LabState } from "./state.js";
import { kubePodMemberName } from "./topology.js";

export interface KubeletPod {
  readonly uid: string;
  readonly namespace: string;
  readonly name: string;
  readonly netnsName: string;
  readonly netnsPath: string;
  readonly containerId: string;
  addresses: string[];
  cniResult?: unknown;
  probe?: LabProcess;
  /** Whether its status has been written since it was attached. */
  reported?: boolean;
}

interface PodObject {
  readonly metadata: { readonly name: string; readonly namespace?: string; readonly uid?: string; readonly deletionTimestamp?: string; readonly resourceVersion?: string };
  readonly spec?: { readonly nodeName?: string; readonly containers?: ReadonlyArray<{ readonly name: string; readonly ports?: ReadonlyArray<{ readonly containerPort?: number; readonly protocol?: string }> }> };
  readonly status?: { readonly phase?: string };
}

/** Where a node's kubelet keeps what it made. */
export function kubeletStateFile(state: LabState, node: string): string {
  return join(state.dir, node, "kubelet.json");
}

export function readKubeletPods(state: LabState, node: string): KubeletPod[] {
  const file = kubeletStateFile(state, node);
  if (!existsSync(file)) return [];
  try {
    return (JSON.parse(readFileSync(file, "utf8")) as { pods: KubeletPod[] }).pods;
  } catch {
    return [];
  }
}

function writeKubeletPods(state: LabState, node: string, pods: Iterable<KubeletPod>): void {
  const file = kubeletStateFile(state, node);
  writeFileSync(`${file}.tmp`, `${JSON.stringify({ pods: [...pods] }, null, 2)}\n`);
  renameSync(`${file}.tmp`, file);
}

/**
 * Every pod the lab's kubelets run, as the lab's other commands see pods, named by
 * `kubePodMemberName` (`NAME`, or `NAMESPACE/NAME`), node by node.
 */
export function kubeletLabPods(state: LabState): LabPodState[] {
  const nodes = state.nodes.map((node) => node.name);
  return state.nodes.flatMap((node) =>
    readKubeletPods(state, node.name)
      .filter((pod) => pod.reported)
      .map((pod) => ({
        name: kubePodMemberName(pod.namespace, pod.name, nodes),
        node: node.name,
        netnsName: pod.netnsName,
        netnsPath: pod.netnsPath,
        containerId: pod.containerId,
        addresses: pod.addresses,
        ...(pod.probe ? { probe: pod.probe } : {}),
      }))
      .sort((a, b) => (a.name < b.name ? -1 : 1)),
  );
}

/** The namespace of a Kubernetes pod in the lab: `<lab>-kp-<first 8 hex of its uid>`. */
export function kubePodNetnsName(lab: string, uid: string): string {
  return `${lab}-kp-${uid.replace(/-/g, "").slice(0, 8)}`;
}

const CONCURRENCY = 4;
const RETRY_MS = 2_000;

/** Runs the node's kubelet until SIGTERM; logs one JSON line per event on stderr. */
export async function runLabKubelet(state: LabState, nodeName: string, kubeconfig: string): Promise<void> {
  const node = state.nodes.find((candidate) => candidate.name === nodeName);
  if (!node) throw new Error(`lab ${state.name} has no node ${JSON.stringify(nodeName)}`);
  const log = (message: string, fields: Record<string, unknown> = {}) => process.stderr.write(`${JSON.stringify({ time: new Date().toISOString(), node: nodeName, message, ...fields })}\n`);
  const client = new KubeClient(loadKubeconfig(kubeconfig));
  const records = new Map(readKubeletPods(state, nodeName).map((pod) => [pod.uid, pod]));
  /** The latest object of each Pod bound here, by uid. */
  const pods = new Map<string, PodObject>();
  const keyOf = new Map<string, string>();
  const queue = new Set<string>();
  const busy = new Set<string>();
  let synced = false;
  let stopping = false;
  const save = () => writeKubeletPods(state, nodeName, records.values());

  const attach = async (pod: PodObject, uid: string) => {
    const list = readNetworkList(node.cniConfDir);
    if (!list) throw new Error(`node ${nodeName} has no CNI config in ${node.cniConfDir} yet`);
    const namespace = pod.metadata.namespace ?? "default";
    const netnsName = kubePodNetnsName(state.name, uid);
    const record: KubeletPod = { uid, namespace, name: pod.metadata.name, netnsName, netnsPath: namedNetnsPath(netnsName), containerId: randomUUID().replace(/-/g, ""), addresses: [] };
    records.set(uid, record);
    save();
    await addNamedNetns(netnsName);
    const started = Date.now();
    record.cniResult = await addNetworkList(list, {
      nodeNetns: node.netnsPath, containerId: record.containerId, podNetns: record.netnsPath, ifname: "eth0",
      args: { IgnoreUnknown: "1", K8S_POD_NAMESPACE: namespace, K8S_POD_NAME: pod.metadata.name, K8S_POD_INFRA_CONTAINER_ID: record.containerId, K8S_POD_UID: uid },
    });
    record.addresses = resultAddresses(record.cniResult);
    const ports = new Set([state.probePort]);
    for (const container of pod.spec?.containers ?? []) for (const port of container.ports ?? []) if (typeof port.containerPort === "number") ports.add(port.containerPort);
    const probe = startDetached(record.netnsPath, [...selfInvocation(), "probe", "serve", [...ports].join(","), "--name", pod.metadata.name], join(state.dir, nodeName, `kp-${uid}.log`));
    record.probe = { pid: probe.pid, argv: probe.argv, log: probe.log };
    save();
    log("pod attached", { pod: `${namespace}/${pod.metadata.name}`, addresses: record.addresses, ms: Date.now() - started });
  };

  const report = async (pod: PodObject, record: KubeletPod) => {
    const now = new Date().toISOString().replace(/\.\d+Z$/, "Z");
    const condition = (type: string) => ({ type, status: "True", lastTransitionTime: now });
    await client.request("PATCH", `/api/v1/namespaces/${encodeURIComponent(record.namespace)}/pods/${encodeURIComponent(record.name)}/status`, {
      contentType: "application/merge-patch+json",
      body: {
        metadata: { uid: record.uid },
        status: {
          phase: "Running",
          hostIP: node.addresses[0],
          hostIPs: node.addresses.map((ip) => ({ ip })),
          podIP: record.addresses[0],
          podIPs: record.addresses.map((ip) => ({ ip })),
          startTime: now,
          conditions: ["PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready", "PodScheduled"].map(condition),
          containerStatuses: (pod.spec?.containers ?? []).map((container) => ({
            name: container.name, ready: true, started: true, restartCount: 0, image: "trellis-probe", imageID: "", containerID: `lab://${record.containerId}`, state: { running: { startedAt: now } },
          })),
        },
      },
    });
    record.reported = true;
    save();
  };

  const detach = async (record: KubeletPod) => {
    if (record.probe && isLabProcess(record.probe)) await stopProcesses([record.probe.pid]);
    const list = readNetworkList(node.cniConfDir);
    if (list && existsSync(record.netnsPath)) await delNetworkList(list, { nodeNetns: node.netnsPath, containerId: record.containerId, podNetns: record.netnsPath, ifname: "eth0" }, record.cniResult);
    await deleteNamedNetns(record.netnsName).catch(() => undefined);
    records.delete(record.uid);
    save();
    log("pod detached", { pod: `${record.namespace}/${record.name}` });
  };

  /** Brings one pod to what its object asks for. */
  const reconcile = async (uid: string) => {
    const pod = pods.get(uid);
    const record = records.get(uid);
    if (!pod || pod.metadata.deletionTimestamp) {
      if (record) await detach(record);
      if (pod) {
        // The kubelet's last word: the Pod is gone for good, but only this very Pod.
        await client.request("DELETE", `/api/v1/namespaces/${encodeURIComponent(pod.metadata.namespace ?? "default")}/pods/${encodeURIComponent(pod.metadata.name)}`, {
          body: { kind: "DeleteOptions", apiVersion: "v1", gracePeriodSeconds: 0, preconditions: { uid } },
        }).catch((error: unknown) => {
          if (!(error instanceof KubeApiError && (error.status === 404 || error.status === 409))) throw error;
        });
      }
      return;
    }
    if (!record) await attach(pod, uid);
    const current = records.get(uid);
    if (current && (!current.reported || pod.status?.phase !== "Running")) await report(pod, current);
  };

  const work = async () => {
    while (!stopping) {
      const next = [...queue].find((uid) => !busy.has(uid));
      if (next === undefined || busy.size >= CONCURRENCY) return;
      queue.delete(next);
      busy.add(next);
      void reconcile(next)
        .catch((error: unknown) => {
          log("pod sync failed; trying again", { uid: next, error: String(error) });
          setTimeout(() => enqueue(next), RETRY_MS);
        })
        .finally(() => {
          busy.delete(next);
          void work();
        });
    }
  };
  const enqueue = (uid: string) => {
    queue.add(uid);
    void work();
  };

  const informer = inform<PodObject>(client, "/api/v1/pods", {
    change(key, pod) {
      if (pod?.metadata.uid) {
        pods.set(pod.metadata.uid, pod);
        keyOf.set(key, pod.metadata.uid);
        enqueue(pod.metadata.uid);
      } else {
        const uid = keyOf.get(key);
        if (uid === undefined) return;
        keyOf.delete(key);
        pods.delete(uid);
        enqueue(uid);
      }
    },
    synced() {
      // Pods recorded but no longer bound here (deleted while the kubelet was away) go now.
      for (const uid of records.keys()) if (!pods.has(uid)) enqueue(uid);
      if (!synced) log("following the Pods bound to this node", { server: client.connection.server });
      synced = true;
    },
    failed: (error, retryInMs) => log("lost the API server; listing again", { error: error.message, retryInSeconds: retryInMs / 1000 }),
  }, { fieldSelector: `spec.nodeName=${nodeName}` });

  await new Promise<void>((resolve) => {
    const stop = () => {
      stopping = true;
      informer.stop();
      client.close();
      resolve();
    };
    process.once("SIGTERM", stop);
    process.once("SIGINT", stop);
  });
}
