/** What `lab check` and `lab status` print for a person: tables read at a glance. */
import type { CheckProbe, CheckReport } from "../lab/check.js";
import type { LabStatus } from "../lab/status.js";
import { renderTable } from "./table.js";

/** Past this many destinations a matrix of pods no longer fits a terminal. */
const MAX_MATRIX_COLUMNS = 12;
const MAX_FAILURE_LINES = 40;

export function renderCheckReport(report: CheckReport): string {
  const lines: string[] = [];
  const stopped = report.agents.filter((agent) => !agent.running);
  if (stopped.length > 0) lines.push(`note: the agent of ${stopped.map((agent) => agent.node).join(", ")} is not running\n`);
  // A wide lab gets one column per destination node (its pods together) instead of one per pod.
  const byNode = report.destinations.length > MAX_MATRIX_COLUMNS;
  const column = (probe: CheckProbe) => (byNode ? (probe.toNode ?? probe.to) : probe.to);
  const columns = byNode ? [...new Set(report.probes.map(column))].sort(byNodeOrder) : report.destinations;
  const cells = new Map<string, CheckProbe[]>();
  for (const probe of report.probes) {
    const key = `${probe.from}\0${column(probe)}`;
    cells.set(key, [...(cells.get(key) ?? []), probe]);
  }
  const rows = report.sources.map((from) => [from, ...columns.map((to) => cellText(cells.get(`${from}\0${to}`)))]);
  lines.push(renderTable([[byNode ? "FROM \\ TO PODS ON" : "FROM \\ TO", ...columns], ...rows]));
  const failures = report.probes.filter((probe) => !probe.ok);
  if (failures.length > 0) {
    lines.push("failures:\n");
    for (const probe of failures.slice(0, MAX_FAILURE_LINES)) {
      lines.push(`  ${probe.from} -> ${probe.to} ${probe.kind.toUpperCase()} ${probe.family} ${probe.address}: ${probe.error}\n`);
    }
    if (failures.length > MAX_FAILURE_LINES) lines.push(`  … and ${failures.length - MAX_FAILURE_LINES} more (\`trellis lab check --json\` lists every probe)\n`);
  }
  lines.push(
    `${report.ok ? "PASS" : "FAIL"}: ${report.total - report.failed}/${report.total} probes ok in ${report.seconds.toFixed(1)} s ` +
      "(pod to pod: ICMP, and TCP and UDP seeing the sender's pod IP; node to pod: ICMP, TCP and UDP; pod to external: TCP seeing the pod's node address" +
      (report.destinations.some((name) => name.startsWith("svc/"))
        ? "; pod to Service: every ClusterIP and port answered by an endpoint seeing the pod's IP, or refused at once without endpoints" +
          (report.probes.some((probe) => probe.expectEachServerOf) ? ", from the client's zone for a trafficDistribution" : "") +
          "; external to NodePorts)\n"
        : ")\n"),
  );
  return lines.join("");
}

/** node1, node2, …, node10, then external. */
function byNodeOrder(a: string, b: string): number {
  const rank = (name: string) => (name === "external" ? Number.MAX_SAFE_INTEGER : Number(/[0-9]+/.exec(name)?.[0] ?? 0));
  return rank(a) - rank(b);
}

/** `ok` when every probe of the cell passed; else the first failure, short, and how many more. */
function cellText(probes: readonly CheckProbe[] | undefined): string {
  if (!probes || probes.length === 0) return "-";
  const failed = probes.filter((probe) => !probe.ok);
  if (failed.length === 0) return "ok";
  // In direct mode a peer on another subnet is out of reach by design: the whole cell says so.
  if (failed.every((probe) => /unreachable by direct routing/.test(probe.error ?? ""))) return "no direct route";
  const first = failed[0];
  const more = failed.length > 1 ? ` +${failed.length - 1}` : "";
  return `${first.kind}${first.family === "IPv4" ? "4" : "6"} ${shortReason(first)}${more}`;
}

function shortReason(probe: CheckProbe): string {
  const error = probe.error ?? "";
  if (probe.seenSource && /^wrong source/.test(error)) return `src ${probe.seenSource}`;
  if (probe.answeredBy && /^answered by/.test(error)) return `by ${probe.answeredBy}`;
  if (/^timeout/.test(error)) return "timeout";
  if (/network unreachable/.test(error)) return "no route";
  if (/host unreachable/.test(error)) return "unreachable";
  if (/refused/.test(error)) return "refused";
  return "failed";
}

export function renderLabStatus(status: LabStatus): string {
  const list = (values: readonly string[]) => values.join(" ") || "-";
  const running = (pid: number | null, up: boolean) => (pid === null ? "-" : `${pid} ${up ? "running" : "NOT RUNNING"}`);
  const stack = status.family === "dual" ? "dual-stack (IPv4 first)" : status.family === "ipv4" ? "IPv4 only" : "IPv6 only";
  return [
    `lab ${status.name}: ${status.phase}, ${stack}, mode ${status.mode}, store ${status.store}\n`,
    renderTable([
      ["NODE", "NETNS", "ADDRESSES", "POD CIDRS", "AGENT PID"],
      ...status.nodes.map((node) => [node.name, node.netns, list(node.addresses), list(node.podCidrs), running(node.agentPid, node.agentRunning)]),
    ]),
    "\n",
    renderTable([
      ["POD", "NODE", "NETNS", "ADDRESSES", "PROBE PID"],
      ...status.pods.map((pod) => [pod.name, pod.node, pod.netns, list(pod.addresses), running(pod.probePid, pod.probeRunning)]),
    ]),
    "\n",
    `external  ${status.external.netns}  ${list(status.external.addresses)}  probe server ${running(status.external.probePid, status.external.probeRunning)}\n`,
    ...status.underlay.subnets.map((subnet) => `underlay  ${status.underlay.netns}  ${subnet.bridge} ${list(subnet.prefixes)}, router ${list(subnet.router)}\n`),
  ].join("");
}
