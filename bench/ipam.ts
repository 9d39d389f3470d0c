/**
 * Cost of one cluster allocation as its range fills, on SQLite and on etcd: a ClusterIP from a
 * /16 (65,534 addresses) and a node pod CIDR from a /8 split into /24 blocks (65,536 blocks),
 * at 0, 50, 90 and 99% full. Each level gets a fresh store, prefilled straight through the
 * store in batched transactions (items plus the matching free-run index, taken at random so the
 * free space is as fragmented as it gets), then a window of allocations is timed one by one
 * through the real allocators (`addService`, `addNode`). The point: the per-allocation cost
 * must not grow with the fill.
 *
 *   npm run bench:ipam -- [--window 200] [--backends sqlite,etcd]
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { cpus, loadavg, tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { parsePrefix } from "../src/net/ip.js";
import type { ClusterPlan } from "../src/plan/plan.js";
import { initialRunOperations, randomBelow, type IndexBand } from "../src/cluster/free-runs.js";
import { addService } from "../src/cluster/services.js";
import { openCluster, type Cluster } from "../src/cluster/state.js";
import { addNode, nodeCidrRanges } from "../src/cluster/node-cidrs.js";
import { serviceIpRanges } from "../src/cluster/service-ips.js";
import { MAX_TXN_OPERATIONS, type KvOperation, type KvStore } from "../src/store/kv.js";
import { openStore } from "../src/store/open.js";
import { startTestEtcd, type TestEtcd } from "../test/support/etcd.js";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const LEVELS = [0, 50, 90, 99] as const;
type Backend = "sqlite" | "etcd";
type Kind = "clusterIP" | "nodeCidr";

interface Figure {
  readonly backend: Backend;
  readonly kind: Kind;
  readonly fillPercent: number;
  readonly taken: number;
  readonly size: number;
  readonly allocations: number;
  readonly meanMs: number;
  readonly p50Ms: number;
  readonly p99Ms: number;
  readonly prefillSeconds: number;
}

const plan: ClusterPlan = {
  podCidrs: [parsePrefix("10.0.0.0/8")],
  serviceCidrs: [parsePrefix("172.20.0.0/16")],
  nodeCidrs: [],
  nodeMaskSize: { 4: 24, 6: 64 },
  nodePortRange: { first: 30000, last: 32767 },
};

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { window: { type: "string", default: "200" }, backends: { type: "string", default: "sqlite,etcd" } } });
  const window = Number(values.window);
  const backends = values.backends.split(",") as Backend[];
  const figures: Figure[] = [];
  const dir = mkdtempSync(join(tmpdir(), "trellis-bench-ipam-"));
  let etcd: TestEtcd | undefined;
  let counter = 0;
  try {
    for (const backend of backends) {
      if (backend === "etcd") etcd = await startTestEtcd();
      for (const kind of ["clusterIP", "nodeCidr"] as Kind[]) {
        for (const level of LEVELS) {
          const namespace = `/bench-${counter++}`;
          const store = backend === "sqlite" ? await openStore(`sqlite:${join(dir, `bench-${counter}.db`)}`) : await openStore(etcd!.spec, { etcd: { namespace } });
          try {
            const cluster = await openCluster(store, plan);
            const figure = await measure(cluster, backend, kind, level, window);
            figures.push(figure);
            printFigure(figure);
          } finally {
            await store.close();
          }
        }
      }
      await etcd?.stop();
      etcd = undefined;
    }
  } finally {
    await etcd?.stop();
    rmSync(dir, { recursive: true, force: true });
  }
  const resultsDir = join(ROOT, "bench/results");
  mkdirSync(resultsDir, { recursive: true });
  const file = join(resultsDir, `ipam-${new Date().toISOString().replace(/[:.]/g, "-")}.json`);
  writeFileSync(file, `${JSON.stringify({ date: new Date().toISOString(), cpus: cpus().length, loadavg: loadavg(), window, figures }, null, 2)}\n`);
  process.stdout.write(`\n${summary(figures)}\nwrote ${file}\n`);
}

async function measure(cluster: Cluster, backend: Backend, kind: Kind, level: number, window: number): Promise<Figure> {
  const band = kind === "clusterIP" ? serviceIpRanges(plan)[0].dynamicBand : nodeCidrRanges(plan)[0].band;
  const size = kind === "clusterIP" ? Number(serviceIpRanges(plan)[0].size) : Number(nodeCidrRanges(plan)[0].blockCount);
  const prefillStarted = Date.now();
  const taken = Math.floor((size * level) / 100);
  // default/kubernetes already holds the first address; the rest of the ClusterIPs fit the upper band.
  const toTake = kind === "clusterIP" ? Math.max(0, taken - 1) : taken;
  await prefill(cluster.store, band, toTake);
  const prefillSeconds = (Date.now() - prefillStarted) / 1000;
  const times: number[] = [];
  for (let i = 0; i < window; i++) {
    const started = performance.now();
    if (kind === "clusterIP") await addService(cluster, { name: `bench-${i}` });
    else await addNode(cluster, `bench-${i}`);
    times.push(performance.now() - started);
  }
  times.sort((a, b) => a - b);
  const ms = (value: number): number => Math.round(value * 1000) / 1000;
  return {
    backend,
    kind,
    fillPercent: level,
    taken,
    size,
    allocations: window,
    meanMs: ms(times.reduce((sum, time) => sum + time, 0) / times.length),
    p50Ms: ms(times[Math.floor(times.length / 2)]),
    p99Ms: ms(times[Math.min(times.length - 1, Math.floor(times.length * 0.99))]),
    prefillSeconds,
  };
}

/** Takes `count` random indices of the band and rewrites its free runs to match, in batches. */
async function prefill(store: KvStore, band: IndexBand, count: number): Promise<void> {
  if (count === 0) return;
  const width = Number(band.last - band.first + 1n);
  const chosen = new Set<number>();
  while (chosen.size < count) chosen.add(Number(randomBelow(BigInt(width))));
  const indices = [...chosen].map((offset) => band.first + BigInt(offset)).sort((a, b) => (a < b ? -1 : 1));
  const value = JSON.stringify({ owner: "bench/prefill" });
  const operations: KvOperation[] = [
    ...initialRunOperations(band, []).map((put): KvOperation => ({ type: "delete", key: put.key })),
    ...indices.map((index): KvOperation => ({ type: "put", key: band.itemKey(index), value })),
    ...initialRunOperations(band, indices.map((index) => ({ first: index, last: index }))),
  ];
  for (let first = 0; first < operations.length; first += MAX_TXN_OPERATIONS) {
    await store.txn({ compares: [], operations: operations.slice(first, first + MAX_TXN_OPERATIONS) });
  }
}

function printFigure(figure: Figure): void {
  process.stdout.write(
    `${figure.backend.padEnd(6)} ${figure.kind.padEnd(9)} ${String(figure.fillPercent).padStart(2)}% full (${figure.taken}/${figure.size}): ` +
      `mean ${figure.meanMs.toFixed(3)} ms, p50 ${figure.p50Ms.toFixed(3)} ms, p99 ${figure.p99Ms.toFixed(3)} ms per allocation ` +
      `(${figure.allocations} timed; prefill ${figure.prefillSeconds.toFixed(1)} s)\n`,
  );
}

function summary(figures: readonly Figure[]): string {
  const rows = [["BACKEND", "KIND", ...LEVELS.map((level) => `${level}% p50/p99 ms`)]];
  for (const backend of new Set(figures.map((figure) => figure.backend))) {
    for (const kind of ["clusterIP", "nodeCidr"] as Kind[]) {
      const cells = LEVELS.map((level) => {
        const figure = figures.find((f) => f.backend === backend && f.kind === kind && f.fillPercent === level);
        return figure ? `${figure.p50Ms.toFixed(2)}/${figure.p99Ms.toFixed(2)}` : "-";
      });
      rows.push([backend, kind, ...cells]);
    }
  }
  const widths = rows[0].map((_, column) => Math.max(...rows.map((row) => row[column].length)));
  return rows.map((row) => row.map((cell, column) => cell.padEnd(widths[column])).join("  ").trimEnd()).join("\n");
}

await main();
