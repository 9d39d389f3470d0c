/**
 * Real nodes, Trellis against the reference plugins in one run: `lab up --kubelet` and `lab up
 * --reference-cni` (kube-proxy, bridge, host-local, portmap), one after the other on the same
 * machine, each timed from the command to a cluster ready for pods; then on each, pods created
 * in waves and timed from the create request to the moment the API shows them Running with an
 * address (a watch, in this process). The labs alternate (Trellis, reference, Trellis, …) so the
 * machine's noise lands on both. Goals: 3 nodes ready in < 60 s; pod start p50 ≤ 1.0× the
 * reference's.
 *
 *   npm run bench:pods -- [--pods 50] [--wave 5] [--rounds 2] [--nodes 3]
 */
import { spawnSync } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { KubeClient } from "../src/kube/client.js";
import { loadKubeconfig } from "../src/kube/config.js";
import { inform } from "../src/kube/informer.js";
import { gitCommit } from "./commit.js";

const ROOT = resolve(import.meta.dirname, "..");
const TRELLIS = join(ROOT, "dist", "trellis");
const { values } = parseArgs({ options: { pods: { type: "string", default: "50" }, wave: { type: "string", default: "5" }, rounds: { type: "string", default: "2" }, nodes: { type: "string", default: "3" } } });
const PODS = Number(values.pods);
const WAVE = Number(values.wave);
const ROUNDS = Number(values.rounds);
for (const [flag, value, max] of [["--pods", PODS, 500], ["--wave", WAVE, 50], ["--rounds", ROUNDS, 10], ["--nodes", Number(values.nodes), 20]] as const) {
  if (!Number.isInteger(value) || value < 1 || value > max) throw new Error(`${flag} ${value} is invalid: expected a whole number from 1 to ${max}`);
}

type Label = "trellis" | "reference";
const LABS: Record<Label, { name: string; flags: string[] }> = {
  trellis: { name: "bp-trellis", flags: ["--kubelet"] },
  reference: { name: "bp-reference", flags: ["--reference-cni"] },
};

interface PodObject {
  metadata: { name: string; namespace?: string; creationTimestamp?: string };
  status?: { phase?: string; podIPs?: Array<{ ip: string }> };
}

function trellis(args: readonly string[], timeout = 600_000): string {
  const run = spawnSync(TRELLIS, args, { encoding: "utf8", timeout });
  if (run.status !== 0) throw new Error(`trellis ${args.join(" ")} failed (${run.status}): ${run.stderr}${run.stdout.slice(-2000)}`);
  return run.stdout;
}

function percentile(values: readonly number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

/** Times PODS pods from create to Running with an address, WAVE at a time. */
async function podStarts(kubeconfig: string, nodes: number, round: number): Promise<number[]> {
  const client = new KubeClient(loadKubeconfig(kubeconfig));
  const created = new Map<string, number>();
  const running = new Map<string, number>();
  const label = `bench-${round}`;
  let wake: (() => void) | undefined;
  const informer = inform<PodObject>(client, "/api/v1/namespaces/default/pods", {
    change(_key, pod) {
      if (!pod || running.has(pod.metadata.name) || !created.has(pod.metadata.name)) return;
      if (pod.status?.phase === "Running" && (pod.status.podIPs?.length ?? 0) > 0) {
        running.set(pod.metadata.name, performance.now());
        wake?.();
      }
    },
  }, { labelSelector: `bench=${label}` });
  try {
    for (let first = 0; first < PODS; first += WAVE) {
      const names = Array.from({ length: Math.min(WAVE, PODS - first) }, (_, i) => `${label}-${first + i}`);
      await Promise.all(names.map(async (name, i) => {
        created.set(name, performance.now());
        await client.request("POST", "/api/v1/namespaces/default/pods", {
          body: {
            apiVersion: "v1",
            kind: "Pod",
            metadata: { name, labels: { bench: label } },
            spec: { nodeName: `node${((first + i) % nodes) + 1}`, terminationGracePeriodSeconds: 0, containers: [{ name: "pause", image: "registry.k8s.io/pause:3.10.2" }] },
          },
        });
      }));
      const deadline = Date.now() + 120_000;
      while (!names.every((name) => running.has(name))) {
        if (Date.now() > deadline) throw new Error(`pods ${names.filter((name) => !running.has(name)).join(", ")} not Running within 120 s`);
        await new Promise<void>((done) => {
          wake = done;
          setTimeout(done, 250);
        });
      }
    }
    return [...created].map(([name, at]) => running.get(name)! - at);
  } finally {
    informer.stop();
    for (const name of created.keys()) await client.request("DELETE", `/api/v1/namespaces/default/pods/${name}`).catch(() => undefined);
  }
}

const report: Record<string, unknown> = { commit: gitCommit(ROOT), date: new Date().toISOString(), options: values };
const samples: Record<Label, { up: number[]; starts: number[] }> = { trellis: { up: [], starts: [] }, reference: { up: [], starts: [] } };
for (let round = 0; round < ROUNDS; round++) {
  for (const label of ["trellis", "reference"] as const) {
    const lab = LABS[label];
    spawnSync(TRELLIS, ["lab", "down", "--name", lab.name], { encoding: "utf8" });
    const started = performance.now();
    trellis(["lab", "up", "--name", lab.name, "--nodes", values.nodes!, "--pods-per-node", "1", ...lab.flags]);
    samples[label].up.push((performance.now() - started) / 1000);
    try {
      const kubeconfig = trellis(["lab", "kubeconfig", "--name", lab.name]).trim();
      samples[label].starts.push(...(await podStarts(kubeconfig, Number(values.nodes), round)));
    } finally {
      trellis(["lab", "down", "--name", lab.name]);
    }
    process.stderr.write(`round ${round + 1} ${label}: up ${samples[label].up.at(-1)!.toFixed(1)} s, pod start p50 ${percentile(samples[label].starts, 50).toFixed(0)} ms so far\n`);
  }
}
const figures = Object.fromEntries((["trellis", "reference"] as const).map((label) => [label, {
  "lab up to ready (s), median": Number(percentile(samples[label].up, 50).toFixed(1)),
  "pod start to Running with an address (ms) p50": Math.round(percentile(samples[label].starts, 50)),
  "p95": Math.round(percentile(samples[label].starts, 95)),
  pods: samples[label].starts.length,
}]));
const ratio = percentile(samples.trellis.starts, 50) / percentile(samples.reference.starts, 50);
report.figures = figures;
report.ratios = { "pod start p50, Trellis / reference": Number(ratio.toFixed(3)) };
report.goals = {
  [`${values.nodes} nodes ready in < 60 s (Trellis)`]: percentile(samples.trellis.up, 50) < 60,
  "pod start p50 ≤ 1.0× the reference plugins'": ratio <= 1.0,
};
process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
mkdirSync(join(ROOT, "bench", "results"), { recursive: true });
writeFileSync(join(ROOT, "bench", "results", `pods-${new Date().toISOString().replace(/[:.]/g, "-")}.json`), `${JSON.stringify(report, null, 2)}\n`);
