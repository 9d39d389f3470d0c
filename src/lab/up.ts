/**
 * `lab up`: builds a lab from its layout, step by step, recording each step in state.json so
 * that `lab down` can take away whatever exists, and does so itself when a step fails or the
 * user interrupts.
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { addNamedNetns, listNamedNetns, namedNetnsPath } from "../linux/named-netns.js";
import { formatHostPort } from "../net/ip.js";
import { addNetworkList, CONFLIST_FILE, networkListSubnets, readNetworkList, resultAddresses } from "./cni-runtime.js";
import { labDown } from "./down.js";
import { logTail, runningChildren, sleep, startDetached, stopProcesses, type StartedProcess } from "./processes.js";
import { mapConcurrently } from "./concurrently.js";
import { KUBE_LAB_CIDRS, labKubectl, labKubePod, startKubeControlPlane } from "./kube-lab.js";
import { labStore } from "./store-access.js";
import { readKubeletPods } from "./kubelet.js";
import { startRealLab } from "./real-lab.js";
import { LAB_POD_LABEL, labPodCniArgs, recordLabPods } from "./pod-objects.js";
import { selfInvocation } from "./probe.js";
import { labDir, labNodeZone, nodeCniConfDir, nodeCniDataDir, readLabState, saveLabState, type LabNodeState, type LabPodState, type LabState } from "./state.js";
import { isLabNetnsName, LAB_ETCD, LAB_EXTERNAL_IPS, labLayout, PROBE_PORT, type LabLayout, type LabOptions } from "./topology.js";
import { attachUnderlayHost, buildUnderlay, routeInUnderlay } from "./underlay.js";

export interface LabUpSettings {
  readonly out: (line: string) => void;
}

export class LabInterrupted extends Error {
  constructor(signal: string) {
    super(`interrupted by ${signal}`);
  }
}

/** How long a probe server or the lab's etcd gets to start listening. */
const READY_TIMEOUT_MS = 30_000;
/** How long every agent gets to register its node and write its conflist. */
const AGENT_READY_TIMEOUT_MS = 60_000;
const ETCD_CLIENT_PORT = 2379;
const PROGRESS_EVERY_MS = 5000;
const ATTACH_CONCURRENCY = 4;

/** Builds the lab; on failure or SIGINT/SIGTERM removes what it made and rethrows. */
export async function labUp(options: LabOptions, settings: LabUpSettings): Promise<LabState> {
  const { out } = settings;
  refuseExistingLab(options.name);
  if (process.getuid?.() !== 0) throw new Error("trellis lab needs root: it creates network namespaces and starts agents in them");
  const started = Date.now();
  const layout = labLayout(options);
  const state = initialState(options, layout);
  const controller = new AbortController();
  const onSignal = (signal: NodeJS.Signals) => controller.abort(new LabInterrupted(signal));
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  try {
    await build(state, layout, options, settings, controller.signal);
    state.phase = "up";
    saveLabState(state);
    out(`lab ${state.name} is up (${((Date.now() - started) / 1000).toFixed(1)} s)`);
    return state;
  } catch (error) {
    const reason = controller.signal.aborted ? (controller.signal.reason as Error) : (error as Error);
    out(`lab ${state.name} ${controller.signal.aborted ? "interrupted" : "failed"}; removing what was made`);
    // What this run started goes first: one started a moment before the interruption may not
    // yet be in the control group or the command line that lab down finds it by.
    await stopProcesses(runningChildren());
    await labDown(state.name, { out: (line) => out(`  ${line}`) }).catch((cleanupError: Error) => out(`  cleanup failed: ${cleanupError.message}`));
    throw reason;
  } finally {
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
  }
}

/** A lab of this name that exists, even in part, is refused before anything is made. */
function refuseExistingLab(name: string): void {
  const how = `remove it first with \`trellis lab down --name ${name}\`, or choose another --name`;
  if (readLabState(name) || existsSync(labDir(name))) throw new Error(`a lab named ${JSON.stringify(name)} is already up (its state is in ${labDir(name)}): ${how}`);
  const leftovers = listNamedNetns().filter((netns) => isLabNetnsName(name, netns));
  if (leftovers.length > 0) throw new Error(`namespaces of a lab named ${JSON.stringify(name)} exist (${leftovers.slice(0, 5).join(", ")}${leftovers.length > 5 ? ", …" : ""}): ${how}`);
}

function initialState(options: LabOptions, layout: LabLayout): LabState {
  const dir = labDir(options.name);
  const withPath = <T extends { netnsName: string }>(member: T) => ({ ...member, netnsPath: namedNetnsPath(member.netnsName) });
  return {
    name: options.name,
    phase: "building",
    createdAt: new Date().toISOString(),
    dir,
    store: options.kubernetes ? "kubernetes" : options.store === LAB_ETCD ? `etcd://${formatHostPort(layout.external.addresses[0], ETCD_CLIENT_PORT)}` : (options.store ?? `sqlite:${join(dir, "cluster.db")}`),
    planFile: join(dir, "plan.json"),
    family: options.family,
    families: layout.families,
    mode: options.mode,
    probePort: PROBE_PORT,
    podLabels: options.podLabels,
    ...(options.zones ? { zones: options.zones } : {}),
    underlay: { netnsName: layout.underlayNetns, netnsPath: namedNetnsPath(layout.underlayNetns), subnets: layout.subnets },
    nodes: layout.nodes.map((node) => ({
      ...withPath(node),
      // A real node's conflist and CNI state are where its agent pod writes them: the node view's /etc/cni/net.d and /var/lib/cni.
      cniConfDir: options.kubelet ? join(dir, node.name, "fs", "etc-cni-net.d") : nodeCniConfDir(options.name, node.name),
      cniDataDir: options.kubelet ? join(dir, node.name, "fs", "var-lib-cni", "trellis") : nodeCniDataDir(options.name, node.name),
    })),
    pods: layout.pods.map((pod) => ({ ...withPath(pod), addresses: [] })),
    external: withPath(layout.external),
    ...(layout.control ? { control: withPath(layout.control) } : {}),
  };
}

async function build(state: LabState, layout: LabLayout, options: LabOptions, settings: LabUpSettings, signal: AbortSignal): Promise<void> {
  const { kubernetes, kubelet } = options;
  const runEtcd = options.store === LAB_ETCD;
  const { out } = settings;
  const step = () => signal.throwIfAborted();
  const stack = state.families.length === 2 ? "dual-stack (IPv4 first)" : state.family === "ipv4" ? "IPv4 only" : "IPv6 only";
  const subnets = state.underlay.subnets;
  out(`lab ${state.name}: ${state.nodes.length} nodes × ${state.pods.length / state.nodes.length} pods, ${stack}, mode ${state.mode}, ${subnets.length} underlay subnet${subnets.length > 1 ? "s" : ""}, store ${state.store}`);
  mkdirSync(state.dir, { recursive: true });
  saveLabState(state);
  writeFileSync(state.planFile, layout.planText);

  await buildUnderlay(state.underlay.netnsName, subnets);
  for (const subnet of subnets) out(`underlay ${state.underlay.netnsName}: ${subnet.bridge} ${subnet.prefixes.join(" ")}, router ${subnet.router.join(" ")}`);
  for (const host of [...state.nodes, state.external, ...(state.control ? [state.control] : [])]) {
    step();
    await attachUnderlayHost(state.underlay.netnsName, subnets, host);
    out(`${host.name} ${host.netnsName}: eth0 ${host.interfaceAddresses.join(" ")} on ${subnets[host.subnet].bridge}`);
  }

  // Services' external IPs reach the cluster through node1, as a router in front of it would send them.
  const first = state.nodes[0];
  const routes = state.families.map((family, i) => ({ range: LAB_EXTERNAL_IPS[family], via: first.addresses[i] }));
  await routeInUnderlay(state.underlay.netnsName, routes);
  state.externalIps = { ranges: routes.map((route) => route.range), node: first.name };
  saveLabState(state);
  out(`underlay routes Services' external IPs ${state.externalIps.ranges.join(" ")} to ${first.name}`);

  step();
  const external = startProbeServer(state.external.netnsPath, "external", join(state.dir, "external.log"));
  state.external.probe = forState(external);
  saveLabState(state);
  await waitForProbeServer(external, signal);
  out(`external ${state.external.netnsName}: probe server on port ${state.probePort} (pid ${external.pid})`);

  if (runEtcd) {
    step();
    await startEtcd(state, signal);
    out(`etcd on external: ${state.store} (pid ${state.etcd!.pid}, data in ${state.etcd!.dataDir})`);
  }

  if (kubernetes) {
    step();
    await startKubeControlPlane(state, state.control!, () => saveLabState(state), signal, out, kubelet);
    await labelLabNamespace(state, options.namespaceLabels);
  }
  if (kubelet) {
    step();
    await startRealLab(state, () => saveLabState(state), signal, out, { kubeProxy: options.kubeProxy, referenceCni: options.referenceCni });
    return;
  }

  step();
  const agents = startAgents(state);
  saveLabState(state);
  out(`agents started (${state.nodes.map((node) => `${node.name} pid ${node.agent!.pid}`).join(", ")}); waiting for each to register its node and write ${CONFLIST_FILE}`);
  await waitForConflists(state, agents, out, signal);

  if (kubernetes) {
    step();
    await startKubelets(state, signal, out);
    return;
  }

  step();
  // A kubelet's pods exist before their sandboxes: the agent knows a pod's labels, and so the
  // policies that apply to it, while its ADD is served. Their namespace's labels come first.
  await labelLabNamespace(state, options.namespaceLabels);
  await recordLabPods(state, state.pods);
  out(`pods: CNI ADD through each node's ${CONFLIST_FILE}, as containerd would`);
  const probes = await mapConcurrently(state.pods, ATTACH_CONCURRENCY, async (pod) => {
    step();
    return attachLabPod(state, pod, out);
  });
  for (const probe of probes) await waitForProbeServer(probe, signal);
  out(`probe servers listen on TCP and UDP port ${state.probePort} in every pod`);
  await recordLabPods(state, state.pods);
  const labels = Object.entries(state.podLabels ?? {}).map(([key, value]) => `${key}=${value}`).join(",");
  out(`pods recorded as Pod objects in ${state.store}${labels ? ` with labels ${labels}` : ""}: \`trellis apply --store ${state.store} -f SERVICE.yaml\` gives them Services`);
}

/**
 * Gives the lab pods' namespace (default) `labels`, for policies' namespace selectors: a
 * Namespace object in the lab's store, or the labels on the API server's own. Nothing when none.
 */
async function labelLabNamespace(state: LabState, labels: Readonly<Record<string, string>>): Promise<void> {
  const pairs = Object.entries(labels);
  if (pairs.length === 0) return;
  if (state.kubernetes) {
    await labKubectl(state.kubernetes, ["label", "namespace", "default", "--overwrite", ...pairs.map(([key, value]) => `${key}=${value}`)]);
    return;
  }
  await labStore(state, ["apply", "-f", "-"], JSON.stringify({ apiVersion: "v1", kind: "Namespace", metadata: { name: "default", labels } }));
}

/**
 * A pod's namespace, its CNI ADD through its node's conflist (as containerd would) and its probe
 * server; the state is saved with what was made. Resolves once the server is started (not yet
 * ready: see `waitForProbeServer`).
 */
export async function attachLabPod(state: LabState, pod: LabPodState, out: (line: string) => void): Promise<StartedProcess> {
  const node = state.nodes.find((candidate) => candidate.name === pod.node)!;
  await addNamedNetns(pod.netnsName);
  const list = readNetworkList(node.cniConfDir);
  if (!list) throw new Error(`node ${node.name} has no CNI config in ${node.cniConfDir}: is its agent running?`);
  const begun = Date.now();
  const result = await addNetworkList(list, { nodeNetns: node.netnsPath, containerId: pod.containerId, podNetns: pod.netnsPath, ifname: "eth0", args: labPodCniArgs(pod) });
  pod.cniResult = result;
  pod.addresses = resultAddresses(result);
  const probe = startProbeServer(pod.netnsPath, pod.name, join(state.dir, node.name, `${pod.name}.log`));
  pod.probe = forState(probe);
  saveLabState(state);
  out(`  ${pod.name} ${pod.netnsName}: ${pod.addresses.join(" ")} (ADD ${Date.now() - begun} ms)`);
  return probe;
}

function forState(proc: StartedProcess) {
  return { pid: proc.pid, argv: proc.argv, log: proc.log };
}

/** Starts etcd in the external namespace, serving clients on the external host's address. */
async function startEtcd(state: LabState, signal: AbortSignal): Promise<void> {
  const dataDir = join(state.dir, "etcd");
  const client = `http://${formatHostPort(state.external.addresses[0], ETCD_CLIENT_PORT)}`;
  // Peers talk over the external host's own loopback: a one-member cluster.
  const peer = "http://127.0.0.1:2380";
  const argv = [
    "etcd", "--name", state.name, "--data-dir", dataDir,
    "--listen-client-urls", client, "--advertise-client-urls", client,
    "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer, "--initial-cluster", `${state.name}=${peer}`,
    "--logger", "zap",
  ];
  const etcd = startDetached(state.external.netnsPath, argv, join(state.dir, "etcd.log"));
  state.etcd = { ...forState(etcd), dataDir };
  saveLabState(state);
  await waitForLogLine(etcd, "serving client traffic", signal);
}

function startProbeServer(netnsPath: string, name: string, log: string): StartedProcess {
  return startDetached(netnsPath, [...selfInvocation(), "probe", "serve", String(PROBE_PORT), "--name", name], log);
}

export function waitForProbeServer(proc: StartedProcess, signal: AbortSignal): Promise<void> {
  return waitForLogLine(proc, "ready\n", signal);
}

/** Waits for `text` in the process's log; fails with the log's tail if the process ends or takes too long. */
async function waitForLogLine(proc: StartedProcess, text: string, signal: AbortSignal): Promise<void> {
  const deadline = Date.now() + READY_TIMEOUT_MS;
  while (!readFileSync(proc.log, "utf8").includes(text)) {
    signal.throwIfAborted();
    const ended = proc.ended();
    if (ended) throw new Error(`${proc.argv.join(" ")} ended (${ended}); the end of ${proc.log}:\n${logTail(proc.log)}`);
    if (Date.now() > deadline) throw new Error(`${proc.argv.join(" ")} (pid ${proc.pid}) not ready after ${READY_TIMEOUT_MS / 1000} s; the end of ${proc.log}:\n${logTail(proc.log)}`);
    await sleep(50);
  }
}

function startAgents(state: LabState): Map<LabNodeState, StartedProcess> {
  const agents = new Map<LabNodeState, StartedProcess>();
  const kube = state.kubernetes;
  const datastore = (node: LabNodeState) => kube
    ? ["--datastore", "kubernetes", "--kubeconfig", kube.agentKubeconfigs[node.name], "--cluster-cidr", state.families.map((family) => KUBE_LAB_CIDRS[family].pods).join(",")]
    : ["--store", state.store, "--plan", state.planFile];
  for (const node of state.nodes) {
    mkdirSync(node.cniConfDir, { recursive: true });
    mkdirSync(node.cniDataDir, { recursive: true });
    const argv = [
      ...selfInvocation(),
      "agent",
      "--node-name", node.name,
      "--node-ip", node.addresses.join(","),
      ...(!kube && labNodeZone(state, node.name) ? ["--zone", labNodeZone(state, node.name)!] : []),
      ...datastore(node),
      "--mode", state.mode,
      "--cni-conf-dir", node.cniConfDir,
      "--cni-data-dir", node.cniDataDir,
      "--cni-socket", join(labDir(state.name), node.name, "cni.sock"),
      "--resync-interval", "2",
      // The addresses the underlay's router sends to the nodes: Services may take them as external addresses.
      "--external-ip-cidrs", state.families.map((family) => LAB_EXTERNAL_IPS[family]).join(","),
    ];
    const agent = startDetached(node.netnsPath, argv, join(state.dir, node.name, "agent.log"));
    node.agent = forState(agent);
    agents.set(node, agent);
  }
  return agents;
}

/** Waits until every agent has written its conflist, showing progress; an agent that ends fails the lab with its log. */
async function waitForConflists(state: LabState, agents: ReadonlyMap<LabNodeState, StartedProcess>, out: (line: string) => void, signal: AbortSignal): Promise<void> {
  const started = Date.now();
  const waiting = new Set(state.nodes);
  let lastProgress = started;
  while (waiting.size > 0) {
    signal.throwIfAborted();
    for (const node of [...waiting]) {
      let list;
      try {
        list = readNetworkList(node.cniConfDir);
      } catch {
        list = undefined;
      }
      if (list) {
        waiting.delete(node);
        out(`  ${node.name}: ready after ${((Date.now() - started) / 1000).toFixed(1)} s, pod CIDRs ${networkListSubnets(list).join(" ")}`);
        continue;
      }
      const how = agents.get(node)!.ended();
      if (how) throw new Error(`the agent of ${node.name} ended (${how}) before writing its conflist; the end of ${node.agent!.log}:\n${logTail(node.agent!.log)}`);
    }
    if (waiting.size === 0) break;
    const elapsed = Date.now() - started;
    if (elapsed > AGENT_READY_TIMEOUT_MS) {
      const node = [...waiting][0];
      throw new Error(`no conflist from the agent of ${[...waiting].map((n) => n.name).join(", ")} after ${AGENT_READY_TIMEOUT_MS / 1000} s; the end of ${node.agent!.log}:\n${logTail(node.agent!.log)}`);
    }
    if (Date.now() - lastProgress >= PROGRESS_EVERY_MS) {
      lastProgress = Date.now();
      out(`  still waiting for ${[...waiting].map((n) => n.name).join(", ")} (${Math.round(elapsed / 1000)} s)`);
    }
    await sleep(100);
  }
}

/**
 * Starts each node's lab kubelet, then gives every lab pod a Pod object bound to its node (as the
 * scheduler would have) and waits until the kubelets have attached them and reported them Ready.
 */
async function startKubelets(state: LabState, signal: AbortSignal, out: (line: string) => void): Promise<void> {
  const kube = state.kubernetes!;
  for (const node of state.nodes) {
    const kubelet = startDetached(undefined, [...selfInvocation(), "lab", "kubelet", "--name", state.name, "--node", node.name], join(state.dir, node.name, "kubelet.log"));
    kube.kubelets[node.name] = forState(kubelet);
  }
  saveLabState(state);
  out(`lab kubelets started (${state.nodes.map((node) => `${node.name} pid ${kube.kubelets[node.name].pid}`).join(", ")}): each attaches the Pods bound to its node`);
  const manifests = state.pods.map((pod) => JSON.stringify(labKubePod(state, pod.name, pod.node, { ...state.podLabels, [LAB_POD_LABEL]: pod.name })));
  await labKubectl(kube, ["apply", "-f", "-"], manifests.join("\n---\n"));
  const deadline = Date.now() + AGENT_READY_TIMEOUT_MS;
  for (;;) {
    signal.throwIfAborted();
    const records = state.nodes.flatMap((node) => readKubeletPods(state, node.name).map((record) => ({ record, node: node.name })));
    const ready = state.pods.map((pod) => records.find(({ record, node }) => record.namespace === "default" && record.name === pod.name && node === pod.node && record.reported));
    if (ready.every((found) => found !== undefined)) {
      const attached = state.pods.map((pod, i) => {
        const { record } = ready[i]!;
        return { ...pod, netnsName: record.netnsName, netnsPath: record.netnsPath, containerId: record.containerId, addresses: record.addresses, cniResult: record.cniResult, probe: record.probe };
      });
      state.pods.splice(0, state.pods.length, ...attached);
      saveLabState(state);
      for (const pod of state.pods) out(`  ${pod.name} ${pod.netnsName}: ${pod.addresses.join(" ")}`);
      break;
    }
    if (Date.now() > deadline) {
      const missing = state.pods.filter((_, i) => !ready[i]).map((pod) => pod.name);
      throw new Error(`the lab kubelets did not run ${missing.join(", ")} within ${AGENT_READY_TIMEOUT_MS / 1000} s; see ${state.nodes.map((node) => join(state.dir, node.name, "kubelet.log")).join(", ")}`);
    }
    await sleep(200);
  }
  for (const pod of state.pods) {
    const probe = pod.probe;
    if (probe) await waitForLogLine({ ...probe, ended: () => undefined }, "ready\n", signal);
  }
  out(`pods are Kubernetes Pods, probe servers on port ${state.probePort}: \`kubectl --kubeconfig ${kube.adminKubeconfig} get pods -o wide\``);
}
