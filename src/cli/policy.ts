/**
 * `trellis policy explain`: whether a connection passes NetworkPolicy and ClusterNetworkPolicy,
 * and every policy and rule that decided it, worked out by the same code (policy/judge.ts) from
 * the same objects as the rules the agents write.
 */
import type { Command } from "commander";
import { listPolicyWorld } from "../agent/policy-loop.js";
import { kubePolicySource, storePolicySource } from "../agent/policy-source.js";
import { isDns1123Label, isDns1123Subdomain } from "../cluster/objects/syntax.js";
import { KubeClient } from "../kube/client.js";
import { loadKubeconfig } from "../kube/config.js";
import { requireLabState } from "../lab/state.js";
import { checkLabName } from "../lab/topology.js";
import { formatIp, sameIp, tryParseIp, type Family, type IpAddress } from "../net/ip.js";
import { judge, type DirectionVerdict, type Verdict } from "../policy/judge.js";
import type { PolicyEndpoint, PolicyPod, PolicyProtocol } from "../policy/types.js";
import { withClusterOptions, withStore, type ClusterOptions } from "./cluster-options.js";

interface ExplainOptions extends ClusterOptions {
  readonly lab?: string;
  readonly kubeconfig?: string;
  readonly from: string;
  readonly to: string;
  readonly port: string;
  readonly family?: string;
  readonly output?: string;
}

export function registerPolicyCommands(program: Command): void {
  const policy = program.command("policy").description("NetworkPolicy and ClusterNetworkPolicy as the agents enforce them");
  withClusterOptions(policy.command("explain"))
    .description("whether a connection passes the cluster's policies, and every policy and rule that decided it")
    .requiredOption("--from <end>", "NAMESPACE/POD, or an IP address")
    .requiredOption("--to <end>", "NAMESPACE/POD, or an IP address")
    .requiredOption("--port <port>", "PORT or PORT/PROTOCOL (TCP, UDP, SCTP; TCP when not given): the destination port as the pod sees it")
    .option("--family <4|6>", "the address family, when both ends are pods with both (the first they share otherwise)")
    .option("--kubeconfig <file>", "the cluster's kubeconfig, when the Kubernetes API is the datastore (KUBECONFIG when not given and --store is not)")
    .option("--lab <name>", "a lab's cluster: its store, or its API server for a lab made with --kubernetes")
    .option("-o, --output <format>", "text or json", "text")
    .action(async (options: ExplainOptions, command: Command) => {
      const port = parsePort(options.port);
      const family = options.family === undefined ? undefined : parseFamily(options.family);
      if (options.output !== "text" && options.output !== "json") throw new Error(`-o ${JSON.stringify(options.output)}: expected text or json`);
      const from = parseEnd("--from", options.from);
      const to = parseEnd("--to", options.to);
      const lab = options.lab === undefined ? undefined : requireLabState(checkLabName(options.lab));
      if (lab && (options.kubeconfig !== undefined || command.getOptionValueSource("store") === "cli")) throw new Error("--lab names the cluster itself: give it without --kubeconfig or --store");
      // A lab's own; else the API when a kubeconfig is named (and --store is not given on the command line); else the store.
      const kubeconfig = lab ? lab.kubernetes?.adminKubeconfig : options.kubeconfig ?? (command.getOptionValueSource("store") === "cli" ? undefined : process.env.KUBECONFIG);
      const storeOptions = lab && !lab.kubernetes ? { ...options, store: lab.store } : options;
      const listed = kubeconfig
        ? await (async () => {
            const client = new KubeClient(loadKubeconfig(kubeconfig));
            try {
              return await listPolicyWorld(kubePolicySource(client));
            } finally {
              client.close();
            }
          })()
        : await withStore(storeOptions, undefined, (store) => listPolicyWorld(storePolicySource(store)));
      const { world, pods } = listed;
      const ends = resolveEnds(from, to, pods, family);
      const verdict = judge(world, { from: ends.from, to: ends.to, protocol: port.protocol, port: port.number });
      if (options.output === "json") {
        process.stdout.write(`${JSON.stringify({ from: describe(ends.from), to: describe(ends.to), port: port.number, protocol: port.protocol, ...verdict }, null, 2)}\n`);
      } else {
        process.stdout.write(explainText(ends.from, ends.to, port, verdict));
      }
    });
}

type End = { readonly pod: { readonly namespace: string; readonly name: string } } | { readonly address: IpAddress };

/** NAMESPACE/POD or an IP address, refused with what is allowed. */
export function parseEnd(flag: string, text: string): End {
  const slash = text.indexOf("/");
  if (slash > 0) {
    const [namespace, name] = [text.slice(0, slash), text.slice(slash + 1)];
    if (isDns1123Label(namespace).length === 0 && isDns1123Subdomain(name).length === 0) return { pod: { namespace, name } };
  }
  const address = tryParseIp(text);
  if (address) return { address };
  throw new Error(`${flag} ${JSON.stringify(text)}: expected NAMESPACE/POD (names of lower-case letters, digits, "-" and ".") or an IP address`);
}

/** PORT or PORT/PROTOCOL. */
export function parsePort(text: string): { number: number; protocol: PolicyProtocol } {
  const match = /^([0-9]{1,5})(?:\/(TCP|UDP|SCTP))?$/i.exec(text);
  const number = match ? Number(match[1]) : Number.NaN;
  if (!match || number < 1 || number > 65535) throw new Error(`--port ${JSON.stringify(text)}: expected PORT or PORT/PROTOCOL, PORT from 1 to 65535 and PROTOCOL TCP, UDP or SCTP`);
  return { number, protocol: (match[2]?.toUpperCase() ?? "TCP") as PolicyProtocol };
}

function parseFamily(text: string): Family {
  if (text === "4" || text === "6") return Number(text) as Family;
  throw new Error(`--family ${JSON.stringify(text)}: expected 4 or 6`);
}

/** Both ends as policy sees them: a pod at one of its addresses, or an address (a pod's, when one holds it). */
function resolveEnds(from: End, to: End, pods: readonly PolicyPod[], family: Family | undefined): { from: PolicyEndpoint; to: PolicyEndpoint } {
  const podOf = (end: End, flag: string): PolicyPod | undefined => {
    if ("address" in end) return pods.find((pod) => pod.ips.some((ip) => sameIp(ip, end.address)));
    const found = pods.find((pod) => pod.namespace === end.pod.namespace && pod.name === end.pod.name);
    if (!found || !found.ips.length) throw new Error(`${flag} ${end.pod.namespace}/${end.pod.name}: no such pod with an address (it may not run yet)`);
    return found;
  };
  const [fromPod, toPod] = [podOf(from, "--from"), podOf(to, "--to")];
  const families = (end: End, pod: PolicyPod | undefined): Family[] => ("address" in end ? [end.address.family] : [...new Set(pod!.ips.map((ip) => ip.family))]);
  const shared = families(from, fromPod).filter((each) => families(to, toPod).includes(each));
  const chosen = family ?? shared[0];
  if (chosen === undefined || !shared.includes(chosen)) {
    throw new Error(`the two ends share no address family${family ? ` ${family}` : ""}: --from has IPv${families(from, fromPod).join("/IPv")}, --to has IPv${families(to, toPod).join("/IPv")}`);
  }
  const endpoint = (end: End, pod: PolicyPod | undefined): PolicyEndpoint => {
    const address = "address" in end ? end.address : pod!.ips.find((ip) => ip.family === chosen)!;
    return pod ? { pod, address } : { address };
  };
  return { from: endpoint(from, fromPod), to: endpoint(to, toPod) };
}

function describe(end: PolicyEndpoint): string {
  return end.pod ? `${end.pod.namespace}/${end.pod.name} (${formatIp(end.address)})` : formatIp(end.address);
}

function explainText(from: PolicyEndpoint, to: PolicyEndpoint, port: { number: number; protocol: PolicyProtocol }, verdict: Verdict): string {
  const direction = (side: DirectionVerdict, where: PolicyEndpoint) => [
    `  ${side.direction.toLowerCase()} at ${describe(where)}: ${side.allowed ? "allowed" : "denied"}`,
    ...side.steps.map((step) => `    ${step.tier}${step.policy ? ` ${step.policy}` : ""}${step.rule ? ` ${step.rule}` : ""}: ${step.outcome}, ${step.reason}`),
  ];
  return [
    `${describe(from)} -> ${describe(to)} port ${port.number}/${port.protocol}: ${verdict.allowed ? "ALLOWED" : "DENIED"}`,
    ...direction(verdict.egress, from),
    ...direction(verdict.ingress, to),
    "",
  ].join("\n");
}
