/**
 * The lab as a real Kubernetes cluster (`lab up --kubernetes`): the control plane runs on the
 * lab's `control` host; each lab node is a Node object (registered and given a status here, as
 * its kubelet would); each agent uses the API with the ServiceAccount of deploy/trellis.yaml and a
 * token bound to its Node, as a DaemonSet pod's token is bound to its pod on its node, so the
 * manifest's admission policy holds it to its own Node; a lab kubelet per node plays the network
 * part of a kubelet (kubelet.ts). The machine's kubectl
 * reaches the API server through two relays (relay.ts) with the admin kubeconfig `lab
 * kubeconfig` prints.
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { run } from "../linux/exec.js";
import { formatHostPort, parseIp, parsePrefix, type Family } from "../net/ip.js";
import { clientKubeconfig, controlPlaneCommands, kubeconfigText, tokenKubeconfigText, writeControlPlaneFiles, type ControlPlaneSpec } from "./control-plane.js";
import { logTail, sleep, startDetached, type StartedProcess } from "./processes.js";
import { selfInvocation } from "./probe.js";
import { labNodeZone, type LabProcess, type LabState } from "./state.js";
import { LABEL_TOPOLOGY_ZONE } from "../cluster/objects/types.js";

/** The pod CIDRs, Service CIDRs and node mask sizes of a Kubernetes lab, per family. */
export const KUBE_LAB_CIDRS: Readonly<Record<Family, { pods: string; services: string; mask: number }>> = {
  4: { pods: "10.244.0.0/16", services: "10.96.0.0/16", mask: 24 },
  6: { pods: "fd00:10:244::/56", services: "fd00:10:96::/112", mask: 64 },
};

/** The relay that runs in the machine's own namespace (the others run on `control`). */
export const LOCAL_RELAY = "relay-local";


export interface LabKubernetes {
  /** The API server as the lab's members reach it: `https://CONTROL:6443`. */
  readonly server: string;
  /** The API server as the machine reaches it, through the relays: `https://127.0.0.1:PORT`. */
  localServer: string;
  /** Admin kubeconfig for the machine (kubectl, tests). */
  readonly adminKubeconfig: string;
  /** Admin kubeconfig for the lab's own namespaces. */
  readonly inLabAdminKubeconfig: string;
  /** Each node's agent kubeconfig (the trellis ServiceAccount, a token bound to that Node), by node. */
  readonly agentKubeconfigs: Readonly<Record<string, string>>;
  /** Each node's kubelet kubeconfig (system:node:NAME), by node. */
  readonly nodeKubeconfigs: Readonly<Record<string, string>>;
  /** etcd, the control plane and the relays, by name. */
  readonly processes: Record<string, LabProcess>;
  /** Each node's lab kubelet, by node. */
  readonly kubelets: Record<string, LabProcess>;
  readonly binDir: string;
  /** The cluster's CA certificate (absent in labs made before it was recorded). */
  readonly caCert?: string;
}

/** Where the built control plane is: TRELLIS_KUBE_BIN, else test/kube/bin of the checkout this trellis was built from. */
export function kubeBinDir(): string {
  if (process.env.TRELLIS_KUBE_BIN) return process.env.TRELLIS_KUBE_BIN;
  const self = selfInvocation();
  return resolve(dirname(self[self.length - 1]), "..", "test", "kube", "bin");
}

/** deploy/trellis.yaml of the checkout this trellis was built from. */
export function deployManifest(): string {
  const self = selfInvocation();
  // dist/trellis, or src/main.ts when run from the sources: the checkout is one level up either way.
  const path = resolve(dirname(self[self.length - 1]), "..", "deploy", "trellis.yaml");
  if (!existsSync(path)) throw new Error(`deploy/trellis.yaml is not in the checkout this trellis was built from (no ${path})`);
  return path;
}

/** Why a Kubernetes lab cannot be made here, or undefined. */
export function kubeLabUnavailable(): string | undefined {
  const bin = kubeBinDir();
  const missing = ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl"].filter((name) => !existsSync(join(bin, name)));
  return missing.length ? `${missing.join(", ")} not in ${bin}: build them with scripts/build-kube.sh (or set TRELLIS_KUBE_BIN)` : undefined;
}

/** A lab pod as a Pod bound to its node (as the scheduler would have bound it), serving the probe port. */
export function labKubePod(state: Pick<LabState, "probePort">, name: string, node: string, labels: Readonly<Record<string, string>>): object {
  return {
    apiVersion: "v1",
    kind: "Pod",
    metadata: { name, namespace: "default", labels },
    spec: {
      nodeName: node,
      containers: [{ name: "probe", image: "trellis-probe", ports: [{ name: "probe", containerPort: state.probePort, protocol: "TCP" }, { name: "probe-udp", containerPort: state.probePort, protocol: "UDP" }] }],
    },
  };
}

/** kubectl with the machine's admin kubeconfig. */
export async function labKubectl(kube: Pick<LabKubernetes, "adminKubeconfig" | "binDir">, args: readonly string[], input?: string): Promise<string> {
  const { stdout } = await run(join(kube.binDir, "kubectl"), ["--kubeconfig", kube.adminKubeconfig, ...args], { input, timeoutMs: 120_000 });
  return stdout;
}

/**
 * Starts the control plane on `control`, the relays, the RBAC of deploy/trellis.yaml, and the
 * Node objects; records every process in `state.kubernetes` as it goes (`save` after each).
 */
export async function startKubeControlPlane(state: LabState, control: { readonly netnsPath: string; readonly addresses: readonly string[] }, save: () => void, signal: AbortSignal, out: (line: string) => void, kubelets = false): Promise<LabKubernetes> {
  const unavailable = kubeLabUnavailable();
  if (unavailable) throw new Error(`lab up --kubernetes: ${unavailable}`);
  const binDir = kubeBinDir();
  const dir = join(state.dir, "kubernetes");
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const spec: ControlPlaneSpec = {
    dir,
    binDir,
    address: parseIp(control.addresses[0]),
    ports: { apiserver: 6443, etcdClient: 2379, etcdPeer: 2380 },
    podCidrs: state.families.map((family) => parsePrefix(KUBE_LAB_CIDRS[family].pods)),
    serviceCidrs: state.families.map((family) => parsePrefix(KUBE_LAB_CIDRS[family].services)),
    nodeMaskSizes: { 4: KUBE_LAB_CIDRS[4].mask, 6: KUBE_LAB_CIDRS[6].mask },
    nodePortRange: "30000-32767",
    kubelets,
  };
  const files = await writeControlPlaneFiles(spec);
  const nodeKubeconfigs: Record<string, string> = {};
  const agentKubeconfigs: Record<string, string> = {};
  const kube: LabKubernetes = {
    server: files.server,
    localServer: "",
    adminKubeconfig: join(dir, "local-admin.kubeconfig"),
    inLabAdminKubeconfig: files.adminKubeconfig,
    agentKubeconfigs,
    nodeKubeconfigs,
    processes: {},
    kubelets: {},
    binDir,
    caCert: files.caCert,
  };
  state.kubernetes = kube;
  save();
  for (const command of controlPlaneCommands(spec, files)) {
    signal.throwIfAborted();
    const started = startDetached(control.netnsPath, command.argv, command.log);
    kube.processes[command.name] = { pid: started.pid, argv: started.argv, log: started.log };
    save();
    if (command.name === "kube-apiserver") await waitForApiserver(started, files.adminKubeconfig, binDir, control.netnsPath, signal);
  }
  out(`control plane on control (${control.addresses[0]}): etcd, kube-apiserver ${files.server}, kube-controller-manager, kube-scheduler (logs in ${dir})`);

  // The machine's kubectl reaches the API server through the lab's directory.
  const socket = join(dir, "apiserver.sock");
  const inner = startRelayProcess(control.netnsPath, `unix:${socket}`, `tcp:${formatHostPort(control.addresses[0], 6443)}`, join(dir, "relay-control.log"));
  kube.processes["relay-control"] = inner.process;
  save();
  await waitForRelay(inner.started, signal);
  const outer = startRelayProcess(undefined, "tcp:127.0.0.1:0", `unix:${socket}`, join(dir, "relay-local.log"));
  kube.processes[LOCAL_RELAY] = outer.process;
  save();
  const local = await waitForRelay(outer.started, signal);
  kube.localServer = `https://${local}`;
  writeFileSync(kube.adminKubeconfig, kubeconfigText(kube.localServer, files.caCert, "trellis-admin", join(dir, "pki", "admin.crt"), join(dir, "pki", "admin.key")), { mode: 0o600 });
  save();

  if (kubelets) {
    // Real kubelets register their Nodes themselves, and Trellis is installed as a user installs it (real-lab.ts).
    for (const node of state.nodes) {
      nodeKubeconfigs[node.name] = await clientKubeconfig(dir, `kubelet-${node.name}`, `/O=system:nodes/CN=system:node:${node.name}`, `system:node:${node.name}`, kube.server);
    }
    save();
    return kube;
  }
  // The agents' rights are the manifest's, and only those.
  await labKubectl(kube, ["apply", "-f", deployManifest()]);
  out("deploy/trellis.yaml applied");

  for (const node of state.nodes) {
    nodeKubeconfigs[node.name] = await clientKubeconfig(dir, `kubelet-${node.name}`, `/O=system:nodes/CN=system:node:${node.name}`, `system:node:${node.name}`, kube.localServer);
    await registerNode(kube, node.name, node.addresses, labNodeZone(state, node.name));
    agentKubeconfigs[node.name] = await agentKubeconfig(kube, dir, files.caCert, node.name);
  }
  save();
  out(`nodes registered: ${state.nodes.map((node) => node.name).join(", ")} (node IPAM gives their pod CIDRs); each agent has a token of the trellis ServiceAccount bound to its Node`);
  return kube;
}

/**
 * A kubeconfig for the agent of `node`: the trellis ServiceAccount's token bound to the Node, so
 * it carries the node's name (authentication.kubernetes.io/node-name), as a DaemonSet pod's does.
 * The Node must exist; the token lasts a year (the API server caps it only when started with
 * --service-account-max-token-expiration) and ends with the Node.
 */
async function agentKubeconfig(kube: LabKubernetes, dir: string, caCert: string, node: string): Promise<string> {
  const token = (await labKubectl(kube, ["create", "token", "trellis", "-n", "trellis-system", "--bound-object-kind", "Node", "--bound-object-name", node, "--duration=8760h"])).trim();
  const tokenFile = join(dir, `trellis-${node}.token`);
  writeFileSync(tokenFile, token, { mode: 0o600 });
  const file = join(dir, `trellis-${node}.kubeconfig`);
  writeFileSync(file, tokenKubeconfigText(kube.server, caCert, "trellis", tokenFile), { mode: 0o600 });
  return file;
}

/** A Node as its kubelet would register it: labels, then a status with addresses, capacity and Ready, untainted. */
async function registerNode(kube: LabKubernetes, name: string, addresses: readonly string[], zone: string | undefined): Promise<void> {
  await labKubectl(kube, ["apply", "-f", "-"], JSON.stringify({
    apiVersion: "v1",
    kind: "Node",
    metadata: { name, labels: { "kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64", ...(zone ? { [LABEL_TOPOLOGY_ZONE]: zone } : {}) } },
  }));
  const now = new Date().toISOString().replace(/\.\d+Z$/, "Z");
  const resources = { cpu: "8", memory: "16Gi", pods: "110", "ephemeral-storage": "100Gi" };
  await labKubectl(kube, ["patch", "node", name, "--subresource=status", "--type=merge", "-p", JSON.stringify({
    status: {
      addresses: [...addresses.map((address) => ({ type: "InternalIP", address })), { type: "Hostname", address: name }],
      capacity: resources,
      allocatable: resources,
      conditions: [{ type: "Ready", status: "True", reason: "LabKubeletReady", message: "the lab's kubelet runs pods' networks on this node", lastHeartbeatTime: now, lastTransitionTime: now }],
      nodeInfo: { kubeletVersion: "v1.37.2", containerRuntimeVersion: "trellis-lab://1", operatingSystem: "linux", architecture: "amd64", kernelVersion: "", osImage: "trellis lab", kubeProxyVersion: "", machineID: "", systemUUID: "", bootID: "" },
    },
  })]);
  // The API server taints a new Node not-ready; the node lifecycle controller (which needs
  // kubelet heartbeats, so the lab does not run it) would lift the taint once the Node is Ready.
  await labKubectl(kube, ["patch", "node", name, "--type=merge", "-p", JSON.stringify({ spec: { taints: null } })]);
}

async function waitForApiserver(apiserver: StartedProcess, kubeconfig: string, binDir: string, netnsPath: string, signal: AbortSignal): Promise<void> {
  const deadline = Date.now() + 120_000;
  let last = "";
  while (Date.now() < deadline) {
    signal.throwIfAborted();
    const ended = apiserver.ended();
    if (ended) throw new Error(`kube-apiserver ended (${ended}); the end of ${apiserver.log}:\n${logTail(apiserver.log)}`);
    try {
      const { stdout } = await run(join(binDir, "kubectl"), ["--kubeconfig", kubeconfig, "get", "--raw", "/readyz", "--request-timeout=2s"], { netns: netnsPath, timeoutMs: 10_000 });
      if (stdout.trim() === "ok") return;
    } catch (error) {
      last = (error as Error).message;
    }
    await sleep(250);
  }
  throw new Error(`kube-apiserver not ready after 120 s (${last}); the end of ${apiserver.log}:\n${logTail(apiserver.log)}`);
}

/** A relay in the namespace at `netnsPath` (undefined: the machine's own, where `lab up` runs). */
function startRelayProcess(netnsPath: string | undefined, listen: string, to: string, log: string): { process: LabProcess; started: StartedProcess } {
  const started = startDetached(netnsPath, [...selfInvocation(), "lab", "relay", "--listen", listen, "--to", to], log);
  return { process: { pid: started.pid, argv: started.argv, log: started.log }, started };
}

/** Resolves with the address the relay listens on (`ready ADDRESS` in its log). */
async function waitForRelay(relay: StartedProcess, signal: AbortSignal): Promise<string> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    signal.throwIfAborted();
    const match = /^ready (\S+)$/m.exec(readFileSync(relay.log, "utf8"));
    if (match) return match[1];
    const ended = relay.ended();
    if (ended) throw new Error(`the relay ${relay.argv.join(" ")} ended (${ended}): ${logTail(relay.log)}`);
    if (Date.now() > deadline) throw new Error(`the relay ${relay.argv.join(" ")} is not listening after 30 s: ${logTail(relay.log)}`);
    await sleep(50);
  }
}
