/**
 * Real nodes for a Kubernetes lab (`lab up --kubelet`): on each lab node, containerd and a real
 * kubelet, both in the node's network namespace and in a mount namespace of the node's own,
 * where the directories a node's CNI plugin and agent use (/etc/cni/net.d, /opt/cni/bin,
 * /var/lib/cni, /run/trellis, /var/lib/trellis, /run/netns) are the node's directories in the
 * lab, so that deploy/trellis.yaml's hostPaths mean one node each, as on separate machines. Both
 * run in the node's control group, and the kubelet puts the pods under it too: `lab down` finds
 * everything the node started there, stops it, and removes the groups.
 *
 * The machine is left as it was: nothing is mounted in its own mount namespace but the lab's
 * namespace files (under the lab's directory), and a standard directory the node view needs
 * but the machine lacks is created empty, recorded, and removed by `lab down`.
 */
import { chmodSync, copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, rmdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { stringify as stringifyYaml } from "yaml";
import { cgroupHierarchies, cgroupPids, createCgroup, removeCgroup } from "../linux/cgroups.js";
import { run } from "../linux/exec.js";
import type { ImageArchive } from "./images.js";
import { isLabProcess, logTail, sleep, startDetached, stopProcesses, type StartedProcess } from "./processes.js";
import { LAB_ROOT, labNodeZone, type LabNodeState, type LabProcess, type LabState } from "./state.js";
import { LABEL_TOPOLOGY_ZONE } from "../cluster/objects/types.js";

/** The standard paths a node's view has of its own, and the directory of the node in the lab that backs each. */
export const NODE_VIEW_DIRS: ReadonlyArray<{ readonly path: string; readonly dir: string }> = [
  { path: "/etc/cni/net.d", dir: "etc-cni-net.d" },
  { path: "/opt/cni/bin", dir: "opt-cni-bin" },
  { path: "/var/lib/cni", dir: "var-lib-cni" },
  { path: "/var/lib/trellis", dir: "var-lib-trellis" },
  { path: "/run/netns", dir: "run-netns" },
  // Last: it hides the lab's directory (under /run/trellis/lab), which is bound back inside it first.
  { path: "/run/trellis", dir: "run-trellis" },
];

/** The plugins of the reference set a node has before any network plugin is installed (the runtime's own loopback). */
const NODE_BASE_PLUGINS = ["loopback"];
/** The reference plugins the baseline networks nodes with. */
const REFERENCE_PLUGINS = ["bridge", "host-local", "portmap"];
const REFERENCE_PLUGIN_DIR = "/usr/lib/cni";

/** What a real node's runtime is, in the lab's state. */
export interface RealNodeRuntime {
  /** The node's control group (kubelet's cgroupRoot): its pods are below it. */
  readonly cgroup: string;
  /** containerd's and the kubelet's own group. */
  readonly daemonCgroup: string;
  /** The node's mount namespace, kept by a bind mount of this file. */
  readonly mountNs: string;
  /** Its directory in the lab (configs, containerd's root, the kubelet's root, logs). */
  readonly dir: string;
  readonly containerdSocket: string;
  containerd?: LabProcess;
  kubelet?: LabProcess;
  kubeProxy?: LabProcess;
}

/** What every real node of a lab shares, in the lab's state. */
export interface RealNodesState {
  /** The lab's control group: every node's is below it. */
  readonly cgroup: string;
  /** A private bind mount holding the nodes' mount namespace files. */
  readonly mountDir: string;
  /** Standard directories the machine lacked and the lab created (empty) as mount points; removed by `lab down`. */
  readonly createdDirs: string[];
  /** The images each node's containerd imported. */
  readonly images: readonly ImageArchive[];
  /** What networks the nodes: Trellis (deploy/trellis.yaml), or the reference CNI plugins (the baseline). */
  readonly network: "trellis" | "reference";
  /** Whether kube-proxy serves the Services (the agents' proxy off) rather than Trellis. */
  readonly kubeProxy: boolean;
}

export function labCgroup(lab: string): string {
  return `/trellis-lab-${lab}`;
}

/** The machine-wide part: the lab's group, the mount point for namespace files, the standard directories. */
export async function prepareRealNodes(state: LabState, images: readonly ImageArchive[], choice: Pick<RealNodesState, "network" | "kubeProxy">): Promise<RealNodesState> {
  const real: RealNodesState = { cgroup: labCgroup(state.name), mountDir: join(state.dir, "mnt"), createdDirs: [], images, ...choice };
  state.realNodes = real;
  for (const { path } of NODE_VIEW_DIRS) {
    // Parents first, so that each created directory is recorded and removed deepest first.
    const missing: string[] = [];
    for (let dir = path; !existsSync(dir); dir = dir.slice(0, dir.lastIndexOf("/")) || "/") missing.unshift(dir);
    for (const dir of missing) {
      mkdirSync(dir, { mode: 0o755 });
      real.createdDirs.push(dir);
    }
  }
  // Other labs' nodes mount on them too: the last lab of real nodes to go removes them (hostDirsLedger).
  recordHostDirs(real.createdDirs);
  createCgroup(real.cgroup);
  mkdirSync(real.mountDir, { recursive: true });
  // A mount namespace can be kept by a bind mount only on a mount that propagates nowhere.
  await run("mount", ["--bind", real.mountDir, real.mountDir]);
  await run("mount", ["--make-private", real.mountDir]);
  return real;
}

/**
 * The standard directories labs of real nodes created, in creation order, kept beside the labs:
 * a directory one lab made may be where another lab's nodes mount their own (removing it would
 * take those mounts away), so only the last lab to go removes them.
 */
function hostDirsLedger(): string {
  return join(LAB_ROOT, ".host-dirs.json");
}

function recordHostDirs(dirs: readonly string[]): void {
  if (dirs.length === 0) return;
  const known = readHostDirs();
  writeFileSync(hostDirsLedger(), `${JSON.stringify([...known, ...dirs.filter((dir) => !known.includes(dir))])}\n`);
}

function readHostDirs(): string[] {
  try {
    const value = JSON.parse(readFileSync(hostDirsLedger(), "utf8")) as unknown;
    return Array.isArray(value) ? value.filter((dir): dir is string => typeof dir === "string" && NODE_VIEW_DIRS.some(({ path }) => path === dir || path.startsWith(`${dir}/`))) : [];
  } catch {
    return [];
  }
}

/**
 * Once no lab but `leaving` remains, removes the standard directories labs created (deepest
 * first, where still empty) and the ledger; `alsoCreated` are this lab's, from its state.
 */
export function removeCreatedDirs(leaving: string, alsoCreated: readonly string[]): void {
  let others: string[];
  try {
    others = readdirSync(LAB_ROOT).filter((entry) => !entry.startsWith(".") && entry !== leaving);
  } catch {
    others = [];
  }
  if (others.length > 0) return;
  const dirs = [...new Set([...readHostDirs(), ...alsoCreated])].sort((a, b) => b.length - a.length);
  for (const dir of dirs) {
    try {
      rmdirSync(dir);
    } catch {
      // not empty (something else uses it now), or gone
    }
  }
  rmSync(hostDirsLedger(), { force: true });
}

/**
 * Makes the node's directories, its mount namespace with the node view, its control groups, and
 * starts containerd there; resolves once containerd answers and has imported the images.
 */
export async function startRealNodeRuntime(state: LabState, node: LabNodeState, save: () => void, signal: AbortSignal): Promise<RealNodeRuntime> {
  const real = state.realNodes!;
  const dir = join(state.dir, node.name);
  const runtime: RealNodeRuntime = {
    cgroup: `${real.cgroup}/${node.name}`,
    daemonCgroup: `${real.cgroup}/${node.name}-runtime`,
    mountNs: join(real.mountDir, node.name),
    dir,
    containerdSocket: join(dir, "containerd", "containerd.sock"),
  };
  node.runtime = runtime;
  save();
  for (const { dir: name } of NODE_VIEW_DIRS) mkdirSync(join(dir, "fs", name), { recursive: true });
  for (const plugin of real.network === "reference" ? [...NODE_BASE_PLUGINS, ...REFERENCE_PLUGINS] : NODE_BASE_PLUGINS) {
    const target = join(dir, "fs", "opt-cni-bin", plugin);
    copyFileSync(join(REFERENCE_PLUGIN_DIR, plugin), target);
    chmodSync(target, 0o755);
  }
  // The lab's own directory, seen at its own path inside the node view too (configs, logs).
  const labInside = join(dir, "fs", "run-trellis", "lab", state.name);
  mkdirSync(labInside, { recursive: true });
  writeFileSync(runtime.mountNs, "");
  await run("unshare", [`--mount=${runtime.mountNs}`, "--propagation", "private", "true"]);
  const inNode = (args: string[]) => run("nsenter", [`--mount=${runtime.mountNs}`, "--", ...args]);
  // Mounts the node's pods make (volumes, their namespaces' files) reach its containers, never the machine.
  await inNode(["mount", "--make-rshared", "/"]);
  await inNode(["mount", "--bind", state.dir, labInside]);
  for (const { path, dir: name } of NODE_VIEW_DIRS) await inNode(["mount", "--rbind", join(dir, "fs", name), path]);

  const daemonProcs = createCgroup(runtime.daemonCgroup);
  createCgroup(runtime.cgroup);

  const containerdDir = join(dir, "containerd");
  mkdirSync(containerdDir, { recursive: true });
  const config = join(containerdDir, "config.toml");
  writeFileSync(config, containerdConfig(containerdDir, real.images.find((image) => /\/pause:/.test(image.ref))!.ref));
  const containerd = startDetached(node.netnsPath, ["containerd", "--config", config], join(dir, "containerd.log"), { mountNs: runtime.mountNs, cgroupProcs: daemonProcs });
  runtime.containerd = { pid: containerd.pid, argv: containerd.argv, log: containerd.log };
  save();
  await waitForContainerd(runtime, containerd, signal);
  for (const image of real.images) {
    signal.throwIfAborted();
    await run("ctr", ["--address", runtime.containerdSocket, "--namespace", "k8s.io", "images", "import", "--no-unpack=false", image.file], { timeoutMs: 300_000 });
  }
  return runtime;
}

/** containerd's configuration (version 2, containerd 1.6): every path its own, runc under cgroupfs. */
export function containerdConfig(dir: string, pauseImage: string): string {
  const q = (text: string) => JSON.stringify(text);
  return `version = 2
root = ${q(join(dir, "root"))}
state = ${q(join(dir, "state"))}
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = ${q(join(dir, "containerd.sock"))}

[ttrpc]
  address = ${q(join(dir, "containerd.sock.ttrpc"))}

[debug]
  level = "warn"

[plugins."io.containerd.internal.v1.opt"]
  path = ${q(join(dir, "opt"))}

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = ${q(pauseImage)}
  # This machine refuses negative OOM scores to containers (no CAP_SYS_RESOURCE).
  restrict_oom_score_adj = true
  enable_selinux = false

[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
  SystemdCgroup = false
  Root = ${q(join(dir, "runc"))}

[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "/opt/cni/bin"
  conf_dir = "/etc/cni/net.d"
  max_conf_num = 1
`;
}

async function waitForContainerd(runtime: RealNodeRuntime, containerd: StartedProcess, signal: AbortSignal): Promise<void> {
  const deadline = Date.now() + 30_000;
  let last = "";
  for (;;) {
    signal.throwIfAborted();
    const ended = containerd.ended();
    if (ended) throw new Error(`containerd ended (${ended}); the end of ${containerd.log}:\n${logTail(containerd.log)}`);
    if (existsSync(runtime.containerdSocket)) {
      try {
        await run("ctr", ["--address", runtime.containerdSocket, "version"], { timeoutMs: 5000 });
        return;
      } catch (error) {
        last = (error as Error).message;
      }
    }
    if (Date.now() > deadline) throw new Error(`containerd is not answering on ${runtime.containerdSocket} after 30 s (${last}); the end of ${containerd.log}:\n${logTail(containerd.log)}`);
    await sleep(100);
  }
}

export interface KubeletSpec {
  readonly kubeconfig: string;
  readonly caCert: string;
  /** The cluster DNS Service's addresses, primary family first. */
  readonly clusterDns: readonly string[];
}

/** Starts the node's kubelet (in its network and mount namespaces and its daemons' group). */
export function startRealKubelet(state: LabState, node: LabNodeState, spec: KubeletSpec): StartedProcess {
  const runtime = node.runtime!;
  const dir = join(runtime.dir, "kubelet");
  mkdirSync(join(dir, "root"), { recursive: true });
  mkdirSync(join(dir, "pod-logs"), { recursive: true });
  const config = join(dir, "config.yaml");
  writeFileSync(config, kubeletConfig(runtime, dir, node.addresses[0], spec));
  const argv = ["kubelet", `--config=${config}`, `--kubeconfig=${spec.kubeconfig}`, `--root-dir=${join(dir, "root")}`, `--hostname-override=${node.name}`, `--node-ip=${node.addresses.join(",")}`, ...(labNodeZone(state, node.name) ? [`--node-labels=${LABEL_TOPOLOGY_ZONE}=${labNodeZone(state, node.name)}`] : []), "--v=1"];
  const binDir = state.kubernetes!.binDir;
  const kubelet = startDetached(node.netnsPath, [join(binDir, "kubelet"), ...argv.slice(1)], join(runtime.dir, "kubelet.log"), { mountNs: runtime.mountNs, cgroupProcs: createCgroup(runtime.daemonCgroup) });
  runtime.kubelet = { pid: kubelet.pid, argv: kubelet.argv, log: kubelet.log };
  return kubelet;
}

/** The KubeletConfiguration: what this machine needs (see the comments), the lab's DNS, the node's own paths. */
export function kubeletConfig(runtime: RealNodeRuntime, dir: string, address: string, spec: KubeletSpec): string {
  return stringifyYaml({
    apiVersion: "kubelet.config.k8s.io/v1beta1",
    kind: "KubeletConfiguration",
    address,
    readOnlyPort: 0,
    authentication: { anonymous: { enabled: false }, webhook: { enabled: true }, x509: { clientCAFile: spec.caCert } },
    authorization: { mode: "Webhook" },
    containerRuntimeEndpoint: `unix://${runtime.containerdSocket}`,
    // The node's own group, below the lab's; cgroupfs: PID 1 here is not systemd.
    cgroupDriver: "cgroupfs",
    cgroupRoot: runtime.cgroup,
    // This machine has cgroup v1, which the kubelet refuses unless told otherwise.
    failCgroupV1: false,
    failSwapOn: false,
    // Nodes share one machine: no node may reserve or evict on the machine's account.
    enforceNodeAllocatable: [],
    evictionHard: {},
    imageGCHighThresholdPercent: 100,
    imageGCLowThresholdPercent: 99,
    clusterDNS: [...spec.clusterDns],
    clusterDomain: "cluster.local",
    // The machine's resolvers are not the lab's (nothing outside is reachable).
    resolvConf: "",
    podLogsDir: join(dir, "pod-logs"),
    serializeImagePulls: false,
    maxPods: 110,
  });
}

/** Starts kube-proxy (nftables mode) on the node, as the node's daemon, with the lab's kube-proxy identity. */
export function startRealKubeProxy(state: LabState, node: LabNodeState, kubeconfig: string, clusterCidrs: readonly string[]): StartedProcess {
  const runtime = node.runtime!;
  const config = join(runtime.dir, "kube-proxy.yaml");
  writeFileSync(config, stringifyYaml({
    apiVersion: "kubeproxy.config.k8s.io/v1alpha1",
    kind: "KubeProxyConfiguration",
    mode: "nftables",
    clientConnection: { kubeconfig },
    hostnameOverride: node.name,
    clusterCIDR: clusterCidrs.join(","),
    // The node's namespace cannot set the machine-wide conntrack table size.
    conntrack: { maxPerCore: 0 },
  }));
  const proxy = startDetached(node.netnsPath, [join(state.kubernetes!.binDir, "kube-proxy"), `--config=${config}`, "--v=1"], join(runtime.dir, "kube-proxy.log"), { mountNs: runtime.mountNs, cgroupProcs: createCgroup(runtime.daemonCgroup) });
  runtime.kubeProxy = { pid: proxy.pid, argv: proxy.argv, log: proxy.log };
  return proxy;
}

/**
 * The baseline's network on a node: the reference bridge plugin with host-local addresses from
 * the Node's pod CIDRs and portmap, as a conflist in the node's /etc/cni/net.d; traffic leaving
 * the cluster masqueraded (nftables), as a plugin for Kubernetes must; no NAT between pods.
 */
export async function writeReferenceNetwork(node: LabNodeState, podCidrs: readonly string[], clusterCidrs: readonly string[]): Promise<void> {
  const runtime = node.runtime!;
  const conflist = {
    cniVersion: "1.0.0",
    name: "reference",
    plugins: [
      {
        type: "bridge",
        bridge: "cni0",
        isGateway: true,
        hairpinMode: true,
        ipam: { type: "host-local", ranges: podCidrs.map((subnet) => [{ subnet }]), routes: podCidrs.map((cidr) => ({ dst: cidr.includes(":") ? "::/0" : "0.0.0.0/0" })) },
      },
      { type: "portmap", capabilities: { portMappings: true } },
    ],
  };
  const rules = clusterCidrs.map((cidr) => {
    const family = cidr.includes(":") ? "ip6" : "ip";
    return `    ${family} saddr ${cidr} ${family} daddr != ${cidr} oifname "eth0" masquerade`;
  });
  await run("nft", ["-f", "-"], { netns: node.netnsPath, input: `table inet trellis-lab-reference {\n  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n${rules.join("\n")}\n  }\n}\n` });
  for (const key of ["net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"]) await run("sysctl", ["-q", "-w", `${key}=1`], { netns: node.netnsPath });
  writeFileSync(join(runtime.dir, "fs", "etc-cni-net.d", "10-reference.conflist"), `${JSON.stringify(conflist, null, 2)}\n`);
}

/** Waits until the kubelet answers on its healthz port inside the node. */
export async function waitForKubelet(node: LabNodeState, kubelet: StartedProcess, signal: AbortSignal): Promise<void> {
  const deadline = Date.now() + 60_000;
  for (;;) {
    signal.throwIfAborted();
    const ended = kubelet.ended();
    if (ended) throw new Error(`the kubelet of ${node.name} ended (${ended}); the end of ${kubelet.log}:\n${logTail(kubelet.log)}`);
    try {
      const { stdout } = await run("curl", ["-s", "--max-time", "2", "http://127.0.0.1:10248/healthz"], { netns: node.netnsPath, timeoutMs: 5000 });
      if (stdout.trim() === "ok") return;
    } catch {
      // not yet
    }
    if (Date.now() > deadline) throw new Error(`the kubelet of ${node.name} is not healthy after 60 s; the end of ${kubelet.log}:\n${logTail(kubelet.log)}`);
    await sleep(250);
  }
}

/** The directories (`pod<UID>`) of a pod's groups on a real node, in one hierarchy. */
function podCgroupDirs(hierarchy: string, runtime: RealNodeRuntime, uid: string): string[] {
  const found: string[] = [];
  const walk = (path: string, depth: number): void => {
    if (depth > 3) return;
    let entries;
    try {
      entries = readdirSync(path, { withFileTypes: true });
    } catch {
      return;
    }
    for (const entry of entries) {
      if (!entry.isDirectory()) continue;
      if (entry.name === `pod${uid}`) found.push(join(path, entry.name));
      else if (!entry.name.startsWith("pod")) walk(join(path, entry.name), depth + 1);
    }
  };
  walk(join(hierarchy, runtime.cgroup), 0);
  return found;
}

/** The pids of a pod's processes on a real node (every container's, the sandbox's pause among them). */
function podPids(runtime: RealNodeRuntime, uid: string): number[] {
  const hierarchy = cgroupHierarchies().find((candidate) => candidate.controllers.includes("pids")) ?? cgroupHierarchies()[0];
  if (!hierarchy) return [];
  return podCgroupDirs(hierarchy.mountPoint, runtime, uid).flatMap((dir) => cgroupPids(dir.slice(hierarchy.mountPoint.length), [hierarchy]));
}

/** A pid of any process of the pod, for its network namespace: /proc/PID/ns/net. */
export function podPid(runtime: RealNodeRuntime, uid: string): number | undefined {
  return podPids(runtime, uid)[0];
}

/** The pid of the trellis agent in an agent pod (the process running `trellis agent`). */
export function podAgentPid(runtime: RealNodeRuntime, uid: string): number | undefined {
  for (const pid of podPids(runtime, uid)) {
    try {
      const argv = readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0");
      if (argv[1] === "agent") return pid;
    } catch {
      // gone meanwhile
    }
  }
  return undefined;
}

/**
 * Takes a lab's real nodes apart (from its state, or from the lab's name alone): stops every
 * process in the lab's control groups (kubelets, containerd, shims, containers), unmounts what
 * the lab mounted under its directory, removes the groups and the standard directories it made.
 * Returns how many processes it stopped.
 */
export async function stopRealNodes(lab: string, state: LabState | undefined, labDirectory: string): Promise<number> {
  const cgroup = state?.realNodes?.cgroup ?? labCgroup(lab);
  let stopped = 0;
  for (let round = 0; round < 3; round++) {
    const pids = cgroupPids(cgroup).filter((pid) => pid !== process.pid);
    if (pids.length === 0) break;
    await stopProcesses(pids);
    stopped += pids.length;
  }
  const prefix = `${labDirectory}/`;
  const mounts = readFileSync("/proc/self/mountinfo", "utf8").split("\n").map((line) => line.split(" ")[4]?.replace(/\\040/g, " ")).filter((point): point is string => !!point && point.startsWith(prefix));
  for (const point of [...new Set(mounts)].sort((a, b) => b.length - a.length)) {
    try {
      await run("umount", [point]);
    } catch {
      await run("umount", ["--lazy", point]).catch(() => undefined);
    }
  }
  const left = removeCgroup(cgroup);
  if (left.length > 0) throw new Error(`control groups of lab ${lab} still hold processes: ${left.slice(0, 3).join(", ")}`);
  removeCreatedDirs(lab, state?.realNodes?.createdDirs ?? []);
  return stopped;
}

/** The daemons of a real node that `lab node stop` and `lab node start` take down and bring back. */
export const NODE_COMPONENTS = ["kubelet", "containerd", "kube-proxy"] as const;
export type NodeComponent = (typeof NODE_COMPONENTS)[number];

function componentRecord(runtime: RealNodeRuntime, component: NodeComponent): LabProcess | undefined {
  return component === "kubelet" ? runtime.kubelet : component === "containerd" ? runtime.containerd : runtime.kubeProxy;
}

function realNodeRuntime(state: LabState, nodeName: string, component: NodeComponent): { node: LabNodeState; runtime: RealNodeRuntime; record: LabProcess } {
  const node = state.nodes.find((candidate) => candidate.name === nodeName);
  if (!node) throw new Error(`lab ${JSON.stringify(state.name)} has no node ${JSON.stringify(nodeName)}; its nodes are ${state.nodes.map((candidate) => candidate.name).join(", ")}`);
  if (!node.runtime) throw new Error(`node ${node.name} of lab ${JSON.stringify(state.name)} is not a real node (made without --kubelet)`);
  const record = componentRecord(node.runtime, component);
  if (!record) throw new Error(`node ${node.name} runs no ${component}${component === "kube-proxy" ? " (the lab was made without --kube-proxy)" : ""}`);
  return { node, runtime: node.runtime, record };
}

/**
 * Stops a real node's daemon (SIGTERM, or SIGKILL with `kill`), checking first that the pid is
 * still the process the lab started. What it started (containers, their shims) keeps running.
 * Resolves with the pid stopped, or undefined when it was not running.
 */
export async function stopNodeComponent(state: LabState, nodeName: string, component: NodeComponent, kill: boolean): Promise<number | undefined> {
  const { node, record } = realNodeRuntime(state, nodeName, component);
  if (!isLabProcess(record, node.netnsPath)) return undefined;
  if (kill) {
    process.kill(record.pid, "SIGKILL");
    for (let i = 0; i < 100 && isLabProcess(record, node.netnsPath); i++) await sleep(20);
  } else {
    await stopProcesses([record.pid]);
  }
  return record.pid;
}

/** Starts a real node's daemon again as the lab first started it; refuses while it runs. */
export function startNodeComponent(state: LabState, nodeName: string, component: NodeComponent): LabProcess {
  const { node, runtime, record } = realNodeRuntime(state, nodeName, component);
  if (isLabProcess(record, node.netnsPath)) throw new Error(`the ${component} of ${node.name} is running (pid ${record.pid}): \`trellis lab node stop\` it first`);
  const started = startDetached(node.netnsPath, record.argv, record.log, { mountNs: runtime.mountNs, cgroupProcs: createCgroup(runtime.daemonCgroup) });
  const fresh: LabProcess = { pid: started.pid, argv: started.argv, log: started.log };
  if (component === "kubelet") runtime.kubelet = fresh;
  else if (component === "containerd") runtime.containerd = fresh;
  else runtime.kubeProxy = fresh;
  return fresh;
}
