/**
 * `lab e2e`: the upstream Kubernetes e2e suite (`e2e.test`, built from the release the lab's
 * control plane runs) against a lab of real nodes, with the built kubectl. The specs run in
 * parallel processes under the release's ginkgo; the JUnit XML, the suite's log and a summary
 * (every spec that ran or skipped itself, with its time) go under the lab's directory.
 */
import { spawn } from "node:child_process";
import { closeSync, mkdirSync, openSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { LabState } from "./state.js";

/** The specs Trellis is judged by: every sig-network Conformance spec, and the sig-network areas a network plugin and Service proxy own. */
export const E2E_TARGET_FOCUS: readonly string[] = [
  String.raw`\[sig-network\].*\[Conformance\]`,
  String.raw`\[sig-network\] Networking Granular Checks`,
  String.raw`\[sig-network\] Networking should`,
  String.raw`\[sig-network\] Services `,
  String.raw`\[sig-network\] Conntrack`,
  String.raw`\[sig-network\] HostPort`,
  String.raw`\[sig-network\] DNS `,
  String.raw`\[sig-network\] NoSNAT`,
  String.raw`\[sig-network\] Connectivity Pod Lifecycle`,
  String.raw`\[sig-network\] Netpol `,
];

/** Specs of the target areas left out, each with why (the README lists them). */
export const E2E_LEFT_OUT: ReadonlyArray<{ readonly pattern: string; readonly reason: string }> = [
  { pattern: "SCTP", reason: "the kernel of this machine has no SCTP (no sctp module), so no SCTP socket opens in any pod" },
  { pattern: String.raw`DNS configMap`, reason: "each forwards to an upstream name server outside the cluster; the lab reaches nothing outside this machine" },
  { pattern: String.raw`\[Feature:Networking-(IPv4|IPv6|DNS)\]`, reason: "each connects to the Internet, which the lab cannot reach" },
  { pattern: String.raw`\[Provider:gce\]`, reason: "GCE only: it resolves google.com and GCE's metadata server" },
  { pattern: String.raw`Networking should recreate its iptables rules`, reason: "it deletes iptables rules over SSH to the nodes; lab nodes have no SSH, and Trellis writes nftables (its own tests delete its tables by hand and see them come back)" },
  { pattern: String.raw`Services should work after restarting (apiserver|kube-proxy)`, reason: "each restarts its component by deleting that component's pods in kube-system; in the lab the API server (and kube-proxy, with --kube-proxy) are processes, so the spec would skip itself, and as [Disruptive] it may not share the cluster with the parallel specs. Trellis's own tests kill its agent and delete its pod instead" },
  { pattern: String.raw`Type LoadBalancer`, reason: "needs a cloud load balancer to fill the Service's load-balancer status" },
];

export interface E2eOptions {
  readonly focus?: string;
  readonly skip?: string;
  /** Parallel ginkgo processes. */
  readonly parallel: number;
  readonly out: (line: string) => void;
}

export interface E2eSpec {
  readonly name: string;
  readonly status: "passed" | "failed" | "skipped";
  readonly seconds: number;
  readonly message?: string;
}

export interface E2eSummary {
  readonly lab: string;
  readonly focus: string;
  readonly skip: string;
  readonly passed: number;
  readonly failed: number;
  readonly skipped: number;
  readonly seconds: number;
  readonly reportDir: string;
  readonly specs: readonly E2eSpec[];
}

export function targetFocus(): string {
  return E2E_TARGET_FOCUS.join("|");
}

export function targetSkip(): string {
  return E2E_LEFT_OUT.map((entry) => entry.pattern).join("|");
}

/** Checks a regular expression the user gives (Go's RE2 takes what JavaScript's does, near enough for a check). */
export function checkSpecRegex(option: string, text: string): string {
  if (text.length === 0 || text.length > 4096 || /[\0\n]/.test(text)) throw new Error(`${option} ${JSON.stringify(text.slice(0, 80))} is invalid: give a regular expression of 1 to 4096 characters on one line`);
  try {
    new RegExp(text);
  } catch (error) {
    throw new Error(`${option} ${JSON.stringify(text)} is not a regular expression: ${(error as Error).message}`);
  }
  return text;
}

/** Runs the suite; resolves with the summary (also written as summary.json and summary.txt in the report directory). */
export async function runLabE2e(state: LabState, options: E2eOptions): Promise<E2eSummary> {
  const kube = state.kubernetes;
  if (!kube || !state.realNodes) throw new Error(`lab ${JSON.stringify(state.name)} has no real nodes: the e2e suite needs kubelets (\`trellis lab up --kubelet\`)`);
  const focus = options.focus ?? targetFocus();
  const skip = options.skip ?? targetSkip();
  const reportDir = join(state.dir, "e2e", new Date().toISOString().replace(/[:.]/g, "-"));
  mkdirSync(reportDir, { recursive: true });
  const suite = [
    `--kubeconfig=${kube.adminKubeconfig}`, "--provider=local", `--kubectl-path=${join(kube.binDir, "kubectl")}`, `--report-dir=${reportDir}`,
    `--e2e-output-dir=${reportDir}`, "--dump-logs-on-failure=false",
    // Counted by the suite's first process only: the others would take -1 and skip every spec
    // that needs two nodes ("Requires at least 2 nodes (not -1)").
    `--num-nodes=${state.nodes.length}`,
  ];
  const ginkgo = [`--focus=${focus}`, `--skip=${skip}`, "--no-color", "--timeout=6h", "--poll-progress-after=10m"];
  const argv = options.parallel > 1
    ? [join(kube.binDir, "ginkgo"), `--procs=${options.parallel}`, ...ginkgo, join(kube.binDir, "e2e.test"), "--", ...suite]
    : [join(kube.binDir, "e2e.test"), ...ginkgo.map((flag) => flag.replace(/^--/, "--ginkgo.")), ...suite];
  const log = join(reportDir, "e2e.log");
  options.out(`e2e: ${options.parallel > 1 ? `${options.parallel} processes` : "one process"}, output in ${log}`);
  const started = Date.now();
  const code = await runToLog(argv, log, reportDir);
  const seconds = (Date.now() - started) / 1000;
  let specs: E2eSpec[];
  try {
    specs = parseJunit(readFileSync(join(reportDir, "junit_01.xml"), "utf8"));
  } catch (error) {
    throw new Error(`the e2e suite wrote no report (exit ${code}): ${(error as Error).message}; see ${log}`);
  }
  const count = (status: E2eSpec["status"]) => specs.filter((spec) => spec.status === status).length;
  const summary: E2eSummary = { lab: state.name, focus, skip, passed: count("passed"), failed: count("failed"), skipped: count("skipped"), seconds, reportDir, specs };
  writeFileSync(join(reportDir, "summary.json"), `${JSON.stringify(summary, null, 2)}\n`);
  writeFileSync(join(reportDir, "summary.txt"), renderE2eSummary(summary));
  if (summary.failed === 0 && code !== 0) throw new Error(`the e2e suite ended with exit ${code} but reported no failed spec; see ${log}`);
  return summary;
}

function runToLog(argv: readonly string[], log: string, cwd: string): Promise<number> {
  const fd = openSync(log, "a");
  try {
    const child = spawn(argv[0], argv.slice(1), { cwd, stdio: ["ignore", fd, fd] });
    return new Promise((resolve, reject) => {
      child.once("error", reject);
      child.once("exit", (code, signal) => resolve(code ?? (signal ? 128 : 1)));
    });
  } finally {
    closeSync(fd);
  }
}

const ENTITIES: Readonly<Record<string, string>> = { amp: "&", lt: "<", gt: ">", quot: '"', apos: "'" };

function unescapeXml(text: string): string {
  return text.replace(/&(#x[0-9a-fA-F]+|#[0-9]+|[a-z]+);/g, (whole, entity: string) => {
    if (entity.startsWith("#x")) return String.fromCodePoint(parseInt(entity.slice(2), 16));
    if (entity.startsWith("#")) return String.fromCodePoint(Number(entity.slice(1)));
    return ENTITIES[entity] ?? whole;
  });
}

/**
 * The specs of a ginkgo JUnit report that ran, or skipped themselves while running (a missing
 * capability, say); specs the focus and skip filtered out are left out, as are the suite's
 * set-up nodes that passed.
 */
export function parseJunit(xml: string): E2eSpec[] {
  const specs: E2eSpec[] = [];
  const testcase = /<testcase\s+([^>]*?)(\/>|>([\s\S]*?)<\/testcase>)/g;
  for (const match of xml.matchAll(testcase)) {
    const attributes = Object.fromEntries([...match[1].matchAll(/([a-zA-Z]+)="([^"]*)"/g)].map((attribute) => [attribute[1], unescapeXml(attribute[2])]));
    const body = match[3] ?? "";
    const rawName = attributes.name ?? "";
    const status = attributes.status;
    const seconds = Number(attributes.time ?? 0);
    const skippedMessage = /<skipped\s+message="([^"]*)"/.exec(body)?.[1];
    if (status === "skipped" && (skippedMessage === undefined || unescapeXml(skippedMessage) === "skipped")) continue;
    const name = rawName.replace(/^\[It\]\s+/, "");
    if (status === "passed" && !rawName.startsWith("[It]")) continue;
    if (status === "passed") specs.push({ name, status, seconds });
    else if (status === "skipped") specs.push({ name, status, seconds, message: unescapeXml(skippedMessage!).slice(0, 500) });
    else {
      // Ginkgo leaves the attribute empty and writes the failure as the element's text.
      const failure = /<(failure|error)\s+message="([^"]*)"[^>]*>([^<]*)/.exec(body);
      const message = unescapeXml(failure?.[2] || failure?.[3] || status || "failed").trim();
      specs.push({ name, status: "failed", seconds, message: message.slice(0, 2000) });
    }
  }
  return specs;
}

export function renderE2eSummary(summary: E2eSummary): string {
  const lines = [
    `e2e on lab ${summary.lab}: ${summary.passed} passed, ${summary.failed} failed, ${summary.skipped} skipped themselves, in ${Math.round(summary.seconds)} s`,
    `report: ${summary.reportDir}`,
  ];
  // The target set's own exclusions, named with their reasons (SCTP among them: this kernel has none).
  if (summary.skip === targetSkip()) {
    lines.push("", "LEFT OUT by the target set (trellis lab e2e --list-left-out)");
    for (const entry of E2E_LEFT_OUT) lines.push(`  ${entry.pattern}: ${entry.reason}`);
  }
  for (const status of ["failed", "passed", "skipped"] as const) {
    const specs = summary.specs.filter((spec) => spec.status === status);
    if (specs.length === 0) continue;
    lines.push("", `${status.toUpperCase()} (${specs.length})`);
    for (const spec of [...specs].sort((a, b) => b.seconds - a.seconds)) {
      lines.push(`  ${spec.seconds.toFixed(1).padStart(6)} s  ${spec.name}`);
      if (spec.message) lines.push(`            ${spec.message.split("\n")[0].slice(0, 300)}`);
    }
  }
  return `${lines.join("\n")}\n`;
}
