/**
 * A Kubernetes lab of real nodes (`lab up --kubelet`), after its control plane: the images, each
 * node's containerd and kubelet (real-nodes.ts), then Trellis installed as a user installs it
 * (deploy/trellis.yaml with the lab's values, `kubectl apply`), CoreDNS behind the kube-dns
 * Service, and the lab's probe pods as Pods of Trellis's image, one set per node.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { parseAllDocuments } from "yaml";
import { formatIp, nthAddress, parsePrefix } from "../net/ip.js";
import { mapConcurrently } from "./concurrently.js";
import { deployManifest, KUBE_LAB_CIDRS, labKubectl, type LabKubernetes } from "./kube-lab.js";
import { buildLabImages } from "./lab-images.js";
import { LAB_POD_LABEL } from "./pod-objects.js";
import { logTail, sleep, type StartedProcess } from "./processes.js";
import { podAgentPid, podPid, prepareRealNodes, startRealKubelet, startRealKubeProxy, startRealNodeRuntime, waitForKubelet, writeReferenceNetwork } from "./real-nodes.js";
import { routeInHost, routeInUnderlay } from "./underlay.js";
import type { LabNodeState, LabPodState, LabState } from "./state.js";
import { kubePodMemberName, LAB_EXTERNAL_IPS } from "./topology.js";

/** The cluster DNS Service's address in each Service CIDR (the tenth, as kubeadm gives it). */
export function clusterDnsAddresses(state: Pick<LabState, "families">): string[] {
  return state.families.map((family) => formatIp(nthAddress(parsePrefix(KUBE_LAB_CIDRS[family].services), 10n)));
}

const NODE_CONCURRENCY = 3;
/**
 * The documentation range (TEST-NET-3) the upstream e2e suite gives Services as external and
 * load-balancer addresses: a cluster that serves external IPs lets its operator name the ranges
 * they may come from, and the lab names this one beside its own.
 */
const E2E_EXTERNAL_IPS = "203.0.113.0/24";

export interface RealLabChoice {
  /** kube-proxy serves the Services; the agents' proxy is off. */
  readonly kubeProxy: boolean;
  /** The reference CNI plugins network the nodes; Trellis is not installed. */
  readonly referenceCni: boolean;
}

export async function startRealLab(state: LabState, save: () => void, signal: AbortSignal, out: (line: string) => void, choice: RealLabChoice): Promise<void> {
  const kube = state.kubernetes!;
  let started = Date.now();
  const images = await buildLabImages(kube.binDir, join(kube.binDir, "..", "images"));
  out(`images (${((Date.now() - started) / 1000).toFixed(1)} s): ${Object.values(images).map((image) => image.ref).join(", ")}`);
  await prepareRealNodes(state, Object.values(images), { network: choice.referenceCni ? "reference" : "trellis", kubeProxy: choice.kubeProxy });
  save();

  started = Date.now();
  await mapConcurrently(state.nodes, NODE_CONCURRENCY, async (node) => {
    signal.throwIfAborted();
    await startRealNodeRuntime(state, node, save, signal);
  });
  out(`containerd on every node, images imported (${((Date.now() - started) / 1000).toFixed(1)} s)`);

  const kubelets = new Map<string, StartedProcess>();
  for (const node of state.nodes) {
    kubelets.set(node.name, startRealKubelet(state, node, { kubeconfig: kube.nodeKubeconfigs[node.name], caCert: kube.caCert!, clusterDns: clusterDnsAddresses(state) }));
  }
  save();
  for (const node of state.nodes) await waitForKubelet(node, kubelets.get(node.name)!, signal);
  let registered: string[] = [];
  try {
    await waitFor(signal, 60_000, "every Node registered by its kubelet", async () => {
      registered = (await labKubectl(kube, ["get", "nodes", "-o", "jsonpath={.items[*].metadata.name}"])).split(/\s+/);
      return state.nodes.every((node) => registered.includes(node.name));
    });
  } catch (error) {
    const missing = state.nodes.find((node) => !registered.includes(node.name));
    throw missing ? new Error(`${(error as Error).message}; the end of ${missing.name}'s kubelet log:\n${logTail(missing.runtime!.kubelet!.log, 30)}`) : error;
  }
  out(`kubelets started; Nodes registered: ${state.nodes.map((node) => `${node.name} (kubelet pid ${node.runtime!.kubelet!.pid})`).join(", ")}`);
  const podCidrs = await nodePodCidrs(state, kube, signal);
  await routeControlToPods(state, podCidrs);

  const clusterCidrs = state.families.map((family) => KUBE_LAB_CIDRS[family].pods);
  if (choice.kubeProxy) {
    for (const node of state.nodes) startRealKubeProxy(state, node, join(state.dir, "kubernetes", "kube-proxy.kubeconfig"), clusterCidrs);
    save();
    out(`kube-proxy (nftables) on every node: ${state.nodes.map((node) => `${node.name} pid ${node.runtime!.kubeProxy!.pid}`).join(", ")}`);
  }
  started = Date.now();
  if (choice.referenceCni) {
    await installReferenceNetwork(state, podCidrs);
  } else {
    await installTrellis(state, kube, !choice.kubeProxy);
    await labKubectl(kube, ["-n", "trellis-system", "rollout", "status", "daemonset/trellis", "--timeout=120s"]);
  }
  await labKubectl(kube, ["wait", "--for=condition=Ready", "node", "--all", "--timeout=120s"]);
  out(choice.referenceCni
    ? `the reference plugins (bridge, host-local, portmap) network every node, routes through the underlay's router; every node network-ready (${((Date.now() - started) / 1000).toFixed(1)} s)`
    : `Trellis installed from deploy/trellis.yaml (image ${images.trellis.ref}${choice.kubeProxy ? ", its proxy off" : ""}); every node network-ready (${((Date.now() - started) / 1000).toFixed(1)} s)`);

  await labKubectl(kube, ["apply", "-f", "-"], coreDnsManifest(state, images.coredns.ref));
  await labKubectl(kube, ["-n", "kube-system", "rollout", "status", "deployment/coredns", "--timeout=120s"]);
  out(`CoreDNS serves cluster.local behind kube-dns ${clusterDnsAddresses(state).join(" ")}`);

  const manifests = state.pods.map((pod) => JSON.stringify(probePod(state, pod.name, pod.node, images.trellis.ref)));
  await labKubectl(kube, ["apply", "-f", "-"], manifests.join("\n---\n"));
  await labKubectl(kube, ["wait", "--for=condition=Ready", "pod", "-l", LAB_POD_LABEL, "--timeout=120s"]);
}

/**
 * deploy/trellis.yaml with what a user sets for this cluster: the cluster CIDRs of the lab's
 * families, the lab's external-address ranges and routing mode, and the API server's address.
 */
export function labTrellisManifest(state: Pick<LabState, "families" | "mode">, manifestText: string, proxy = true): string {
  const documents = parseAllDocuments(manifestText).map((document) => document.toJS() as Record<string, unknown>);
  for (const object of documents) {
    if (object?.kind !== "DaemonSet") continue;
    const spec = (object.spec as { template: { spec: { containers: Array<{ name: string; command?: string[]; env?: Array<{ name: string; value?: string }> }> } } }).template.spec;
    const agent = spec.containers.find((container) => container.name === "agent");
    if (!agent) throw new Error("deploy/trellis.yaml's DaemonSet has no container named agent");
    // With another proxy serving the Services, the agent leaves them alone.
    if (!proxy) agent.command = [...(agent.command ?? []), "--no-proxy"];
    const values: Record<string, string> = {
      TRELLIS_CLUSTER_CIDR: state.families.map((family) => KUBE_LAB_CIDRS[family].pods).join(","),
      TRELLIS_EXTERNAL_IP_CIDRS: [...state.families.map((family) => LAB_EXTERNAL_IPS[family]), ...(state.families.includes(4) ? [E2E_EXTERNAL_IPS] : [])].join(","),
      TRELLIS_MODE: state.mode,
    };
    const env = agent.env ?? [];
    for (const [name, value] of Object.entries(values)) {
      const found = env.find((entry) => entry.name === name);
      if (found) found.value = value;
      else env.push({ name, value });
    }
    agent.env = env;
  }
  return documents.map((object) => JSON.stringify(object)).join("\n---\n");
}

async function installTrellis(state: LabState, kube: LabKubernetes, proxy: boolean): Promise<void> {
  const control = state.control!.addresses[0];
  const manifest = labTrellisManifest(state, readFileSync(deployManifest(), "utf8"), proxy);
  await labKubectl(kube, ["apply", "-f", "-"], manifest);
  await labKubectl(kube, ["apply", "-f", "-"], JSON.stringify({
    apiVersion: "v1",
    kind: "ConfigMap",
    metadata: { name: "trellis-apiserver", namespace: "trellis-system" },
    data: { KUBERNETES_SERVICE_HOST: control, KUBERNETES_SERVICE_PORT: "6443" },
  }));
}

/** Each lab node's pod CIDRs, once node IPAM has given every node one per family. */
async function nodePodCidrs(state: LabState, kube: LabKubernetes, signal: AbortSignal): Promise<Map<string, string[]>> {
  type NodeList = { items: Array<{ metadata: { name: string }; spec: { podCIDRs?: string[] } }> };
  const cidrs = new Map<string, string[]>();
  await waitFor(signal, 60_000, "every Node given its pod CIDRs by node IPAM", async () => {
    for (const item of (JSON.parse(await labKubectl(kube, ["get", "nodes", "-o", "json"])) as NodeList).items) cidrs.set(item.metadata.name, item.spec.podCIDRs ?? []);
    return state.nodes.every((node) => cidrs.get(node.name)?.length === state.families.length);
  });
  return cidrs;
}

/** A route to a node's pod CIDR: via the node's address of the CIDR's family. */
function podCidrRoute(state: LabState, node: LabNodeState, cidr: string): { range: string; via: string } {
  return { range: cidr, via: node.addresses[state.families.indexOf(cidr.includes(":") ? 6 : 4)] };
}

/**
 * The baseline's network: each node's conflist from its Node's pod CIDRs (node IPAM gave them),
 * and a route per pod CIDR on the underlay's router to its node, as a cloud's route table does.
 */
async function installReferenceNetwork(state: LabState, podCidrs: ReadonlyMap<string, readonly string[]>): Promise<void> {
  const routes: Array<{ range: string; via: string }> = [];
  for (const node of state.nodes) {
    const cidrs = podCidrs.get(node.name) ?? [];
    await writeReferenceNetwork(node, cidrs, state.families.map((family) => KUBE_LAB_CIDRS[family].pods));
    routes.push(...cidrs.map((cidr) => podCidrRoute(state, node, cidr)));
  }
  await routeInUnderlay(state.underlay.netnsName, routes);
}

/**
 * The API server proxies to pods (pods/proxy, services/proxy, which the e2e suite's DNS and Proxy
 * specs use), so the control host reaches each node's pod CIDRs, as a control-plane host that is
 * no node does through its network's routes: straight to a node on its own subnet, otherwise
 * through the underlay's router. Nodes' pods reach each other by the plugin's own routes, never
 * these.
 */
async function routeControlToPods(state: LabState, podCidrs: ReadonlyMap<string, readonly string[]>): Promise<void> {
  const control = state.control!;
  const onLink: Array<{ range: string; via: string }> = [];
  const viaRouter: Array<{ range: string; via: string }> = [];
  for (const node of state.nodes) {
    for (const cidr of podCidrs.get(node.name) ?? []) (node.subnet === control.subnet ? onLink : viaRouter).push(podCidrRoute(state, node, cidr));
  }
  await routeInHost(control.netnsName, onLink);
  if (viaRouter.length > 0) await routeInUnderlay(state.underlay.netnsName, viaRouter);
}

/** A lab probe pod: Trellis's image serving the probe port, bound to its node. */
function probePod(state: LabState, name: string, node: string, image: string): object {
  return {
    apiVersion: "v1",
    kind: "Pod",
    metadata: { name, namespace: "default", labels: { ...state.podLabels, [LAB_POD_LABEL]: name } },
    spec: {
      nodeName: node,
      terminationGracePeriodSeconds: 1,
      containers: [{
        name: "probe",
        image,
        args: ["probe", "serve", String(state.probePort), "--name", name],
        ports: [{ name: "probe", containerPort: state.probePort, protocol: "TCP" }, { name: "probe-udp", containerPort: state.probePort, protocol: "UDP" }],
      }],
    },
  };
}

/** CoreDNS as kubeadm installs it, serving the cluster's names only (the lab reaches nothing outside). */
export function coreDnsManifest(state: Pick<LabState, "families">, image: string): string {
  const corefile = `.:53 {
    errors
    health {
        lameduck 5s
    }
    ready
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 30
    }
    cache 30
    loop
    loadbalance
}
`;
  const labels = { "k8s-app": "kube-dns" };
  const addresses = clusterDnsAddresses(state);
  const objects = [
    { apiVersion: "v1", kind: "ServiceAccount", metadata: { name: "coredns", namespace: "kube-system" } },
    {
      apiVersion: "rbac.authorization.k8s.io/v1",
      kind: "ClusterRole",
      metadata: { name: "system:coredns" },
      rules: [
        { apiGroups: [""], resources: ["endpoints", "services", "pods", "namespaces"], verbs: ["list", "watch"] },
        { apiGroups: ["discovery.k8s.io"], resources: ["endpointslices"], verbs: ["list", "watch"] },
      ],
    },
    {
      apiVersion: "rbac.authorization.k8s.io/v1",
      kind: "ClusterRoleBinding",
      metadata: { name: "system:coredns" },
      roleRef: { apiGroup: "rbac.authorization.k8s.io", kind: "ClusterRole", name: "system:coredns" },
      subjects: [{ kind: "ServiceAccount", name: "coredns", namespace: "kube-system" }],
    },
    { apiVersion: "v1", kind: "ConfigMap", metadata: { name: "coredns", namespace: "kube-system" }, data: { Corefile: corefile } },
    {
      apiVersion: "apps/v1",
      kind: "Deployment",
      metadata: { name: "coredns", namespace: "kube-system", labels },
      spec: {
        replicas: 2,
        selector: { matchLabels: labels },
        template: {
          metadata: { labels },
          spec: {
            serviceAccountName: "coredns",
            priorityClassName: "system-cluster-critical",
            dnsPolicy: "Default",
            tolerations: [{ key: "node-role.kubernetes.io/control-plane", effect: "NoSchedule" }],
            affinity: { podAntiAffinity: { preferredDuringSchedulingIgnoredDuringExecution: [{ weight: 100, podAffinityTerm: { labelSelector: { matchLabels: labels }, topologyKey: "kubernetes.io/hostname" } }] } },
            containers: [{
              name: "coredns",
              image,
              args: ["-conf", "/etc/coredns/Corefile"],
              ports: [{ name: "dns", containerPort: 53, protocol: "UDP" }, { name: "dns-tcp", containerPort: 53, protocol: "TCP" }, { name: "metrics", containerPort: 9153, protocol: "TCP" }],
              volumeMounts: [{ name: "config", mountPath: "/etc/coredns", readOnly: true }],
              livenessProbe: { httpGet: { path: "/health", port: 8080 }, initialDelaySeconds: 10, periodSeconds: 10, failureThreshold: 5 },
              readinessProbe: { httpGet: { path: "/ready", port: 8181 }, periodSeconds: 2 },
            }],
            volumes: [{ name: "config", configMap: { name: "coredns" } }],
          },
        },
      },
    },
    {
      apiVersion: "v1",
      kind: "Service",
      metadata: { name: "kube-dns", namespace: "kube-system", labels: { ...labels, "kubernetes.io/name": "CoreDNS" } },
      spec: {
        selector: labels,
        clusterIP: addresses[0],
        clusterIPs: addresses,
        ipFamilyPolicy: addresses.length > 1 ? "RequireDualStack" : "SingleStack",
        ports: [{ name: "dns", port: 53, protocol: "UDP" }, { name: "dns-tcp", port: 53, protocol: "TCP" }, { name: "metrics", port: 9153, protocol: "TCP" }],
      },
    },
  ];
  return objects.map((object) => JSON.stringify(object)).join("\n---\n");
}

async function waitFor(signal: AbortSignal, timeoutMs: number, what: string, check: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last = "";
  for (;;) {
    signal.throwIfAborted();
    try {
      if (await check()) return;
    } catch (error) {
      last = `: ${(error as Error).message}`;
    }
    if (Date.now() > deadline) throw new Error(`not ${what} after ${timeoutMs / 1000} s${last}`);
    await sleep(250);
  }
}

interface PodListItem {
  readonly metadata: { readonly name: string; readonly namespace: string; readonly uid: string; readonly labels?: Record<string, string> };
  readonly spec: { readonly nodeName?: string; readonly hostNetwork?: boolean };
  readonly status: { readonly phase?: string; readonly podIPs?: ReadonlyArray<{ readonly ip: string }> };
}

/**
 * The lab as its other commands see it now: its probe pods (running, with their addresses and a
 * path to their network namespace, /proc/PID/ns/net of one of their processes) and each node's
 * agent (the process of its agent pod).
 */
export async function realLabView(state: LabState): Promise<LabState> {
  const kube = state.kubernetes!;
  const items = (JSON.parse(await labKubectl(kube, ["get", "pods", "--all-namespaces", "-o", "json"])) as { items: PodListItem[] }).items;
  const netnsOf = (item: PodListItem): string | undefined => {
    const node = state.nodes.find((candidate) => candidate.name === item.spec.nodeName);
    const pid = node?.runtime ? podPid(node.runtime, item.metadata.uid) : undefined;
    return pid === undefined ? undefined : `/proc/${pid}/ns/net`;
  };
  const pods: LabPodState[] = [];
  for (const item of items) {
    if (item.status.phase !== "Running" || item.spec.hostNetwork || item.metadata.labels?.[LAB_POD_LABEL] === undefined) continue;
    const netnsPath = netnsOf(item);
    if (!netnsPath || !item.spec.nodeName) continue;
    const name = kubePodMemberName(item.metadata.namespace, item.metadata.name, state.nodes.map((node) => node.name));
    pods.push({ name, node: item.spec.nodeName, netnsName: "", netnsPath, containerId: item.metadata.uid, addresses: (item.status.podIPs ?? []).map((entry) => entry.ip), labels: item.metadata.labels });
  }
  const nodes = state.nodes.map((node) => {
    const agentPod = items.find((item) => item.metadata.namespace === "trellis-system" && item.spec.nodeName === node.name && item.status.phase === "Running" && item.metadata.name.startsWith("trellis-"));
    const pid = agentPod && node.runtime ? podAgentPid(node.runtime, agentPod.metadata.uid) : undefined;
    return pid === undefined ? { ...node, agent: undefined } : { ...node, agent: { pid, argv: readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").slice(0, -1), log: join(state.dir, node.name, "kubelet", "pod-logs") } };
  });
  return { ...state, nodes, pods: pods.sort((a, b) => (a.name < b.name ? -1 : 1)) };
}
