/** `trellis lab up|check|status|exec|down`: a virtual cluster of network namespaces and agents on this machine. */
import { Option, type Command } from "commander";
import { checkLab } from "../lab/check.js";
import { labDown } from "../lab/down.js";
import { checkSpecRegex, E2E_LEFT_OUT, renderE2eSummary, runLabE2e } from "../lab/e2e.js";
import { realLabView } from "../lab/real-lab.js";
import { NODE_COMPONENTS, startNodeComponent, stopNodeComponent, type NodeComponent } from "../lab/real-nodes.js";
import { kubeletLabPods, runLabKubelet } from "../lab/kubelet.js";
import { parseRelayAddress, startRelay } from "../lab/relay.js";
import { execInNetns } from "../lab/exec.js";
import { labPodAdd, labPodRm } from "../lab/pods.js";
import { labServicePorts, type LabServicePort } from "../lab/services.js";
import { labMemberNetns, requireLabState, saveLabState, type LabState } from "../lab/state.js";
import { labStatus } from "../lab/status.js";
import { checkLabName, DEFAULT_LAB_NAME, LAB_FAMILIES, LAB_MODES, MAX_NODES, MAX_PODS_PER_NODE, parseLabOptions, type LabOptionsText } from "../lab/topology.js";
import { LabInterrupted, labUp } from "../lab/up.js";
import { renderCheckReport, renderLabStatus } from "./lab-report.js";
import { registerLabUiCommand } from "./ui.js";

const out = (line: string) => process.stdout.write(`${line}\n`);

/** The lab's Services to probe; none (and a note) when its store cannot be read. */
async function servicesOf(state: LabState): Promise<LabServicePort[]> {
  try {
    return await labServicePorts(state);
  } catch (error) {
    process.stderr.write(`note: the Services in ${state.store} cannot be read (${(error as Error).message}); checking pods only\n`);
    return [];
  }
}

function nameOption(): Option {
  return new Option("--name <name>", "the lab's name: its namespaces are NAME-node1, NAME-node1-pod0, …").default(DEFAULT_LAB_NAME);
}

export function registerLabCommands(program: Command): void {
  const lab = program
    .command("lab")
    .description("a virtual cluster on this machine: nodes, pods and an external host in network namespaces, one trellis agent per node")
    .enablePositionalOptions();
  lab
    .command("up")
    .description("build a lab, attach its pods through CNI, then run the connectivity check")
    .addOption(nameOption())
    .option("--nodes <n>", `nodes, 1 to ${MAX_NODES}`, "3")
    .option("--pods-per-node <k>", `pods on each node, 1 to ${MAX_PODS_PER_NODE}`, "2")
    .option("--family <family>", `pod and node address families: ${LAB_FAMILIES.join(", ")}`, "dual")
    .option("--mode <mode>", `how agents route between nodes: ${LAB_MODES.join(", ")}`, "auto")
    .option("--subnets <n>", "underlay subnets joined by a router, 1 or 2 (nodes alternate between them)", "1")
    .option("--store <spec>", "cluster store for the agents (default: sqlite: in the lab's directory), or etcd://HOST:PORT")
    .option("--pod-labels <k=v,…>", "labels of the pods' Pod objects, which Services select", "app=probe")
    .option("--namespace-labels <k=v,…>", "labels of the pods' namespace (default), which policies' namespace selectors select")
    .option("--zones <n>", "spread the nodes over n zones, round robin (topology.kubernetes.io/zone zone-1, zone-2, …), for Services' trafficDistribution")
    .option("--kubernetes", "a real Kubernetes control plane on a control host: Nodes, Pods, Services and EndpointSlices from its API server")
    .option("--kubelet", "real nodes (implies --kubernetes): containerd and a kubelet on every node, Trellis installed from deploy/trellis.yaml as a DaemonSet, CoreDNS")
    .option("--kube-proxy", "real nodes whose Services come from kube-proxy (nftables mode) with the agents' proxy off (implies --kubelet)")
    .option("--reference-cni", "real nodes networked by the reference CNI plugins (bridge, host-local, portmap) and kube-proxy, without Trellis: the baseline (implies --kube-proxy)")
    .action(async (text: LabOptionsText) => {
      const options = parseLabOptions(text);
      try {
        const state = await currentLabState(await labUp(options, { out }));
        out("checking connectivity:");
        const report = await checkLab(state, await servicesOf(state));
        process.stdout.write(renderCheckReport(report));
        out(`next: trellis lab status${nameFlag(state.name)} | trellis lab exec${nameFlag(state.name)} node1-pod0 -- ip address | trellis lab down${nameFlag(state.name)}`);
        if (!report.ok) process.exitCode = 1;
      } catch (error) {
        if (error instanceof LabInterrupted) {
          process.stderr.write(`trellis: lab up ${error.message}; what it had made is removed\n`);
          process.exitCode = 130;
          return;
        }
        throw error;
      }
    });
  const pod = lab.command("pod").description("add a pod to a running lab, or remove one, as a kubelet would");
  pod
    .command("add")
    .description("a pod on a node: namespace, CNI ADD, probe server, and its Pod object in the lab's store")
    .argument("<name>", "the pod's name (a DNS label); its Pod object has it")
    .requiredOption("--node <node>", "the node it runs on: node1, node2, …")
    .option("--label <k=v>", "a label of its Pod object (repeat for more; default: the lab's --pod-labels)", (value: string, previous: string[] = []) => [...previous, value])
    .addOption(nameOption())
    .action(async (podName: string, options: { name: string; node: string; label?: string[] }) => {
      const state = requireLabState(checkLabName(options.name));
      await labPodAdd(state, podName, options.node, options.label ?? [], out);
    });
  pod
    .command("rm")
    .description("remove a pod: its Pod object, CNI DEL, its probe server and namespace")
    .argument("<name>", "the pod's name")
    .addOption(nameOption())
    .action(async (podName: string, options: { name: string }) => {
      await labPodRm(requireLabState(checkLabName(options.name)), podName, out);
    });
  const node = lab.command("node").description("stop or start a real node's kubelet, containerd or kube-proxy (a lab made with --kubelet), as an outage would");
  const componentOption = () => new Option("--component <name>", "the daemon").choices(NODE_COMPONENTS).default("kubelet");
  node
    .command("stop")
    .description("stop a daemon of a real node; what it started keeps running")
    .argument("<node>", "node1, node2, …")
    .addOption(componentOption())
    .option("--kill", "SIGKILL instead of SIGTERM")
    .addOption(nameOption())
    .action(async (nodeName: string, options: { name: string; component: NodeComponent; kill?: boolean }) => {
      const state = requireLabState(checkLabName(options.name));
      const pid = await stopNodeComponent(state, nodeName, options.component, options.kill === true);
      out(pid === undefined ? `the ${options.component} of ${nodeName} was not running` : `stopped the ${options.component} of ${nodeName} (pid ${pid}${options.kill ? ", SIGKILL" : ""})`);
    });
  node
    .command("start")
    .description("start a stopped daemon of a real node again, as the lab first started it")
    .argument("<node>", "node1, node2, …")
    .addOption(componentOption())
    .addOption(nameOption())
    .action((nodeName: string, options: { name: string; component: NodeComponent }) => {
      const state = requireLabState(checkLabName(options.name));
      const started = startNodeComponent(state, nodeName, options.component);
      saveLabState(state);
      out(`started the ${options.component} of ${nodeName} (pid ${started.pid})`);
    });
  lab
    .command("check")
    .description("the connectivity matrix: every pod to every pod (ICMP, TCP with the source address seen), every node to every pod, every pod to external")
    .addOption(nameOption())
    .option("--json", "print every probe's result as JSON")
    .action(async (options: { name: string; json?: boolean }) => {
      const state = requireLabState(checkLabName(options.name));
      if (state.phase !== "up") {
        throw new Error(`lab ${JSON.stringify(state.name)} is not up yet: its \`lab up\` is still running, or ended without finishing (then \`trellis lab down --name ${state.name}\` removes it)`);
      }
      const current = await currentLabState(state);
      const report = await checkLab(current, await servicesOf(current));
      process.stdout.write(options.json ? `${JSON.stringify(report, null, 2)}\n` : renderCheckReport(report));
      if (!report.ok) process.exitCode = 1;
    });
  lab
    .command("status")
    .description("the lab's nodes, pods, addresses and processes")
    .addOption(nameOption())
    .option("--json", "print JSON (a stable shape for scripts)")
    .action(async (options: { name: string; json?: boolean }) => {
      const state = requireLabState(checkLabName(options.name));
      const status = labStatus(state.realNodes && state.phase === "up" ? await currentLabState(state) : state);
      process.stdout.write(options.json ? `${JSON.stringify(status, null, 2)}\n` : renderLabStatus(status));
    });
  lab
    .command("exec")
    .description("run a command in a lab namespace: a node (node1), a pod (node1-pod0), external or underlay")
    .addOption(nameOption())
    .argument("<member>", "node1, node1-pod0, external or underlay")
    .argument("<command...>", "the command and its arguments, after --")
    .passThroughOptions()
    .action(async (member: string, command: string[], options: { name: string }) => {
      // With pass-through options the `--` that ends trellis's own options stays in the command.
      if (command[0] !== "--" && command[0].startsWith("-")) {
        throw new Error(`lab exec: ${command[0]} after the member name is taken as the command; options go first: trellis lab exec --name NAME ${member} -- COMMAND…`);
      }
      const state = requireLabState(checkLabName(options.name));
      const netns = labMemberNetns(await currentLabState(state), member);
      const argv = command[0] === "--" ? command.slice(1) : command;
      if (argv.length === 0) throw new Error("lab exec: give the command after --, such as `trellis lab exec node1-pod0 -- ip address`");
      process.exitCode = await execInNetns(netns, argv);
    });
  lab
    .command("e2e")
    .description("run the upstream Kubernetes e2e suite against a lab of real nodes (--kubelet): the sig-network target set unless --focus says otherwise")
    .addOption(nameOption())
    .option("--focus <regex>", "the specs to run (default: the target set, `trellis lab e2e --list-left-out` names what it leaves out)")
    .option("--skip <regex>", "specs to leave out (default: those the target set leaves out, each for a reason)")
    .option("--parallel <n>", "parallel processes of the suite, 1 to 8", "3")
    .option("--list-left-out", "print the specs the target set leaves out and why, and run nothing")
    .option("--json", "print the summary as JSON")
    .action(async (options: { name: string; focus?: string; skip?: string; parallel: string; listLeftOut?: boolean; json?: boolean }) => {
      if (options.listLeftOut) {
        for (const entry of E2E_LEFT_OUT) out(`${entry.pattern}: ${entry.reason}`);
        return;
      }
      const parallel = Number(options.parallel);
      if (!/^[1-8]$/.test(options.parallel)) throw new Error(`--parallel ${JSON.stringify(options.parallel)} is invalid: expected a whole number from 1 to 8`);
      const focus = options.focus === undefined ? undefined : checkSpecRegex("--focus", options.focus);
      const skip = options.skip === undefined ? undefined : checkSpecRegex("--skip", options.skip);
      const state = requireLabState(checkLabName(options.name));
      const summary = await runLabE2e(state, { focus, skip, parallel, out: (line) => process.stderr.write(`${line}\n`) });
      process.stdout.write(options.json ? `${JSON.stringify(summary, null, 2)}\n` : renderE2eSummary(summary));
      if (summary.failed > 0) process.exitCode = 1;
    });
  lab
    .command("kubeconfig")
    .description("print the path of the admin kubeconfig of a Kubernetes lab (for kubectl on this machine)")
    .addOption(nameOption())
    .action((options: { name: string }) => {
      const state = requireLabState(checkLabName(options.name));
      if (!state.kubernetes) throw new Error(`lab ${JSON.stringify(state.name)} is not a Kubernetes lab (made without --kubernetes): its cluster is in ${state.store}`);
      out(state.kubernetes.adminKubeconfig);
    });
  lab
    .command("kubelet", { hidden: true })
    .description("the network part of a kubelet for one node of a Kubernetes lab (lab up starts it)")
    .addOption(nameOption())
    .requiredOption("--node <node>", "the lab node whose Pods it runs")
    .action(async (options: { name: string; node: string }) => {
      const state = requireLabState(checkLabName(options.name));
      const kubeconfig = state.kubernetes?.nodeKubeconfigs[options.node];
      if (!kubeconfig) throw new Error(`lab ${JSON.stringify(state.name)} has no Kubernetes node ${JSON.stringify(options.node)}`);
      await runLabKubelet(state, options.node, kubeconfig);
    });
  lab
    .command("relay", { hidden: true })
    .description("relay bytes from one socket address to another (lab up starts two for the API server)")
    .requiredOption("--listen <address>", "tcp:HOST:PORT or unix:/PATH")
    .requiredOption("--to <address>", "tcp:HOST:PORT or unix:/PATH")
    .action(async (options: { listen: string; to: string }) => {
      const { address } = await startRelay(parseRelayAddress(options.listen, "listen"), parseRelayAddress(options.to, "target"));
      out(`ready ${address}`);
      await new Promise<void>((resolve) => {
        process.once("SIGTERM", resolve);
        process.once("SIGINT", resolve);
      });
    });
  registerLabUiCommand(lab, currentLabState);
  lab
    .command("down")
    .description("remove everything the lab made: processes, pods (CNI DEL), namespaces, files; safe to repeat")
    .addOption(nameOption())
    .action(async (options: { name: string }) => {
      await labDown(checkLabName(options.name), { out });
    });
}

function nameFlag(name: string): string {
  return name === DEFAULT_LAB_NAME ? "" : ` --name ${name}`;
}

/**
 * The lab as it is now: a Kubernetes lab's pods are the ones its kubelets run (Deployments' too),
 * named as `lab status` names them; real nodes' agents are their agent pods' processes.
 */
async function currentLabState(state: LabState): Promise<LabState> {
  if (state.realNodes) return realLabView(state);
  return state.kubernetes ? { ...state, pods: kubeletLabPods(state) } : state;
}
