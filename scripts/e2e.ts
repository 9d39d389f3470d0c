/**
 * `npm run e2e`: the upstream sig-network target set (src/lab/e2e.ts) on two labs of real
 * nodes built side by side, one networked by Trellis (its CNI plugin and its Service proxy), one
 * by the reference plugins and kube-proxy. Prints each run's figures, and every spec that passed
 * on the reference lab but not on Trellis's; exits 1 if there is one, or if Trellis failed any.
 * The summaries (every spec with its time) go to bench/results/e2e-<time>.json.
 *
 *   npm run e2e -- [--nodes N] [--parallel N] [--family ipv4|ipv6|dual] [--focus REGEX] [--only trellis|reference]
 */
import { spawn } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import type { E2eSummary } from "../src/lab/e2e.js";

const root = resolve(import.meta.dirname, "..");
const trellis = join(root, "dist", "trellis");
const { values } = parseArgs({
  options: {
    nodes: { type: "string", default: "3" },
    parallel: { type: "string", default: "4" },
    family: { type: "string", default: "dual" },
    focus: { type: "string" },
    only: { type: "string" },
  },
});
if (values.only !== undefined && !["trellis", "reference"].includes(values.only)) throw new Error(`--only ${JSON.stringify(values.only)} is invalid: expected trellis or reference`);

interface Run {
  readonly label: "trellis" | "reference";
  readonly lab: string;
  readonly up: readonly string[];
}

const runs: Run[] = ([
  { label: "trellis", lab: "e2e-trellis", up: ["--kubelet"] },
  { label: "reference", lab: "e2e-reference", up: ["--reference-cni"] },
] as const).filter((run) => values.only === undefined || run.label === values.only);

function trellisCommand(args: readonly string[], prefix: string): Promise<{ code: number; stdout: string }> {
  return new Promise((resolveRun, reject) => {
    const child = spawn(trellis, args, { stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    child.stdout.on("data", (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on("data", (chunk: Buffer) => process.stderr.write(chunk.toString().split("\n").filter(Boolean).map((line) => `${prefix} ${line}\n`).join("")));
    child.once("error", reject);
    child.once("exit", (code) => resolveRun({ code: code ?? 1, stdout }));
  });
}

async function one(run: Run): Promise<E2eSummary & { upSeconds: number }> {
  const prefix = `[${run.label}]`;
  await trellisCommand(["lab", "down", "--name", run.lab], prefix);
  const started = Date.now();
  const up = await trellisCommand(["lab", "up", "--name", run.lab, "--nodes", values.nodes!, "--family", values.family!, ...run.up], prefix);
  process.stderr.write(up.stdout.split("\n").filter(Boolean).map((line) => `${prefix} ${line}\n`).join(""));
  if (up.code !== 0) throw new Error(`${prefix} lab up failed (exit ${up.code})`);
  const upSeconds = (Date.now() - started) / 1000;
  try {
    const e2e = await trellisCommand(["lab", "e2e", "--name", run.lab, "--parallel", values.parallel!, "--json", ...(values.focus ? ["--focus", values.focus] : [])], prefix);
    if (!e2e.stdout.trim()) throw new Error(`${prefix} lab e2e printed no summary (exit ${e2e.code})`);
    return { ...(JSON.parse(e2e.stdout) as E2eSummary), upSeconds };
  } finally {
    await trellisCommand(["lab", "down", "--name", run.lab], prefix);
  }
}

const results = await Promise.all(runs.map(one));
const byLabel = Object.fromEntries(runs.map((run, i) => [run.label, results[i]]));
const lines: string[] = [];
for (const run of runs) {
  const summary = byLabel[run.label];
  const ran = summary.passed + summary.failed;
  lines.push(`${run.label}: ${summary.passed} of ${ran} passed (${summary.skipped} skipped themselves) in ${Math.round(summary.seconds)} s; lab up ${summary.upSeconds.toFixed(1)} s`);
  for (const spec of summary.specs.filter((candidate) => candidate.status === "failed")) lines.push(`  FAILED ${spec.name}: ${(spec.message ?? "").split("\n")[0].slice(0, 200)}`);
}
let regressions: string[] = [];
if (byLabel.trellis && byLabel.reference) {
  const passedOnTrellis = new Set(byLabel.trellis.specs.filter((spec) => spec.status === "passed").map((spec) => spec.name));
  regressions = byLabel.reference.specs.filter((spec) => spec.status === "passed" && !passedOnTrellis.has(spec.name)).map((spec) => spec.name);
  const referencePassed = byLabel.reference.passed;
  lines.push(`passed on the reference lab and on Trellis: ${referencePassed - regressions.length} of ${referencePassed}${regressions.length ? "; not on Trellis:" : ""}`);
  for (const name of regressions) lines.push(`  ${name}`);
}
process.stdout.write(`${lines.join("\n")}\n`);
mkdirSync(join(root, "bench", "results"), { recursive: true });
const file = join(root, "bench", "results", `e2e-${new Date().toISOString().replace(/[:.]/g, "-")}.json`);
writeFileSync(file, `${JSON.stringify({ options: values, results: byLabel, regressions }, null, 2)}\n`);
process.stdout.write(`results: ${file}\n`);
if (regressions.length > 0 || (byLabel.trellis?.failed ?? 0) > 0) process.exitCode = 1;
