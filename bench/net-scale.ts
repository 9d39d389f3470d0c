/**
 * One real agent against 1,000 peer nodes, in VXLAN mode (the heavier case: per peer and family
 * a route, a permanent neighbour and an FDB entry). The node is a bare namespace whose `eth0`
 * (a veth into a second bare namespace) holds 198.18.0.10/16 and fd00:198:18::10/64; the store
 * is a SQLite file in a temporary directory whose plan has room for 32,768 nodes; the peers are
 * written straight through the store API (`claimNode`, as their agents would, with a claim from
 * another boot, their VTEP MACs and a heartbeat), so nothing but the agent under test runs.
 *
 * Measured: agent start → every peer's routes in the kernel; one change (a new peer publishing
 * its network: one store transaction) → its routes in the kernel, from `ip -ts monitor route`;
 * the periodic full resync with nothing to change (the agent's `synced` debug log); the agent's
 * resident memory after all that.
 */
import { randomUUID } from "node:crypto";
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { claimNode } from "../src/cluster/node-agents.js";
import { addNode, type NodeNetworkRecord } from "../src/cluster/node-cidrs.js";
import { openCluster } from "../src/cluster/state.js";
import { ROUTE_PROTOCOL, vtepMac } from "../src/dataplane/node-network.js";
import { logTail, startDetached, stopProcesses, type StartedProcess } from "../src/lab/processes.js";
import { run } from "../src/linux/exec.js";
import { validatePlan } from "../src/plan/plan.js";
import { openStore } from "../src/store/open.js";
import { agentLogEntries, waitFor } from "../test/support/lab.js";
import { inNetns, type TestNetns } from "../test/support/netns.js";
import { TRELLIS } from "../test/support/trellis-cni.js";
import { monitorRoutes, routesChangedBy, summarize, type Made, type Summary } from "./net-support.js";

export const SCALE_PLAN = {
  podCidrs: ["10.128.0.0/9", "fd00:10:244::/48"],
  serviceCidrs: ["10.96.0.0/16", "fd00:10:96::/112"],
  nodeMaskSize: { ipv4: 24, ipv6: 64 },
};
/** 10.128.0.0/9 in /24 blocks. */
export const MAX_SCALE_PEERS = 32_000;
const NODE_NAME = "bench-node";
const NODE_ADDRESSES = ["198.18.0.10/16", "fd00:198:18::10/64"];
const PEERS_PER_OCTET = 250;
const QUIET_RESYNCS = 5;
const RESYNC_SECONDS = 2;

export interface ScaleFigures {
  readonly peers: number;
  readonly mode: "vxlan";
  /** Writing the peers through the store API, before the agent starts. */
  readonly registerSeconds: number;
  readonly startToClaimedMs: number;
  /** Agent start → the kernel held every peer route (polled every 100 ms). */
  readonly startToAllRoutesMs: number;
  /** The agent's first sync, from its `synced` log line. */
  readonly firstSyncMs: number;
  /** What the kernel held of the agent's once it had converged. */
  readonly kernel: { readonly routes: number; readonly neighbors: number; readonly fdb: number };
  /** One peer publishing its network (one store transaction) → both its routes in the kernel. */
  readonly changeMs: Summary;
  /** The publishing transaction alone, as the writer saw it. */
  readonly changeWriteMs: Summary;
  /** The `synced` durationMs of the sync that applied each change. */
  readonly changeSyncMs: Summary;
  /** Periodic full resyncs that changed nothing (`synced`, changes 0). */
  readonly quietResyncMs: Summary;
  readonly rssMiB: number;
  readonly peakRssMiB: number;
  /** Of rssMiB: the agent's own memory (heap, malloc), and the executable's file pages shared with every trellis process. */
  readonly anonMiB: number;
  readonly fileMiB: number;
}

export async function measureScale(settings: { peers: number; changes: number }, made: Made, say: (line: string) => void): Promise<ScaleFigures> {
  const dir = mkdtempSync(join(tmpdir(), "trellis-bench-net-"));
  made.dirs.add(dir);
  const node = made.pool.create("bscale");
  const wire = made.pool.create("bwire");
  inNetns(node, "ip", ["link", "add", "eth0", "type", "veth", "peer", "name", "wire0", "netns", wire.path]);
  for (const address of NODE_ADDRESSES) inNetns(node, "ip", ["address", "add", address, "dev", "eth0", ...(address.includes(":") ? ["nodad"] : [])]);
  inNetns(node, "ip", ["link", "set", "eth0", "up"]);
  inNetns(wire, "ip", ["link", "set", "wire0", "up"]);

  const { plan, problems } = validatePlan(SCALE_PLAN);
  if (!plan) throw new Error(`the scale plan is invalid: ${problems.join("; ")}`);
  const storeSpec = `sqlite:${join(dir, "cluster.db")}`;
  const store = await openStore(storeSpec);
  made.stores.add(store);
  const cluster = await openCluster(store, plan);
  const registerStarted = Date.now();
  for (let index = 1; index <= settings.peers; index++) await claimNode(cluster, peerName(index), peerNetwork(index), () => false);
  const registerSeconds = (Date.now() - registerStarted) / 1000;
  say(`  ${settings.peers} peers written through the store in ${registerSeconds.toFixed(1)} s`);

  const log = join(dir, "agent.log");
  // An agent may serve CNI calls on a socket, by default the machine's /run/trellis/cni.sock:
  // this one gets its own in the temporary directory (an agent without that socket ignores the
  // variable). env execs the agent in place, so the pid stays the agent's.
  const argv = [
    "env", `TRELLIS_CNI_SOCKET=${join(dir, "cni.sock")}`,
    TRELLIS, "agent",
    "--node-name", NODE_NAME,
    "--node-ip", NODE_ADDRESSES.map((address) => address.split("/")[0]).join(","),
    "--store", storeSpec,
    "--mode", "vxlan",
    "--cni-conf-dir", join(dir, "net.d"),
    "--cni-data-dir", join(dir, "cni"),
    "--peer-grace", "3600",
    "--resync-interval", String(RESYNC_SECONDS),
    "--log-level", "debug",
  ];
  const startedAt = Date.now();
  const agent = startDetached(node.path, argv, log);
  made.agents.add(agent);
  const failure = () => {
    const how = agent.ended();
    return how ? `the agent ended (${how}); the end of ${log}:\n${logTail(log)}` : undefined;
  };
  const check = () => {
    const reason = failure();
    if (reason) throw new Error(reason);
  };
  const startToAllRoutesMs = await pollRoutes(node, 2 * settings.peers, startedAt, failure);
  await waitFor("the first sync logged", () => (check(), syncs(log).length > 0), 30_000);
  const claimed = agentLogEntries(log, "node claimed")[0] as { time: string } | undefined;
  const firstSyncMs = syncs(log)[0].durationMs;
  const kernel = await kernelObjects(node);
  say(`  agent converged: ${kernel.routes} routes, ${kernel.neighbors} neighbours, ${kernel.fdb} FDB entries, ${startToAllRoutesMs} ms after start (first sync ${firstSyncMs} ms)`);

  const monitor = await monitorRoutes(node.path, made);
  const change: number[] = [];
  const changeWrite: number[] = [];
  const changeSync: number[] = [];
  try {
    for (let k = 1; k <= settings.changes; k++) {
      const index = settings.peers + k;
      // Allocation first, as a joining agent does; the timed change is its publication.
      const { result } = await addNode(cluster, peerName(index));
      const allocatedAt = Date.now();
      await waitFor("the agent's sync after the allocation", () => (check(), syncs(log).some((sync) => sync.startedAt >= allocatedAt)), 30_000);
      const writeStarted = Date.now();
      await claimNode(cluster, peerName(index), peerNetwork(index), () => false);
      changeWrite.push(Date.now() - writeStarted);
      const routedAt = await routesChangedBy([monitor], result.podCidrs, "added", writeStarted, 30_000, failure);
      change.push(routedAt - writeStarted);
      await waitFor("the sync that applied the change logged", () => (check(), syncs(log).some((sync) => sync.startedAt >= writeStarted && sync.changes > 0)), 30_000);
      changeSync.push(syncs(log).find((sync) => sync.startedAt >= writeStarted && sync.changes > 0)!.durationMs);
      say(`  change ${k}/${settings.changes}: ${result.podCidrs.join(" ")} in the kernel ${(routedAt - writeStarted).toFixed(1)} ms after the write (that sync took ${changeSync.at(-1)} ms)`);
    }
  } finally {
    monitor.stop();
  }

  const quietFrom = Date.now();
  const quiet = () => syncs(log).filter((sync) => sync.startedAt >= quietFrom && sync.changes === 0);
  await waitFor(`${QUIET_RESYNCS} periodic resyncs`, () => (check(), quiet().length >= QUIET_RESYNCS), (QUIET_RESYNCS + 5) * RESYNC_SECONDS * 1000 + 30_000);
  const memory = residentMemory(agent);
  await stopProcesses([agent.pid]);
  return {
    peers: settings.peers,
    mode: "vxlan",
    registerSeconds,
    startToClaimedMs: claimed ? Date.parse(claimed.time) - startedAt : NaN,
    startToAllRoutesMs,
    firstSyncMs,
    kernel,
    changeMs: summarize(change),
    changeWriteMs: summarize(changeWrite),
    changeSyncMs: summarize(changeSync),
    quietResyncMs: summarize(quiet().map((sync) => sync.durationMs)),
    ...memory,
  };
}

function peerName(index: number): string {
  return `peer-${String(index).padStart(5, "0")}`;
}

/** Peer `index` (from 1) as its agent would publish it: 198.18.X.Y and fd00:198:18::X:Y, VTEPs on both families. */
function peerNetwork(index: number): NodeNetworkRecord {
  const x = 1 + Math.floor((index - 1) / PEERS_PER_OCTET);
  const y = 1 + ((index - 1) % PEERS_PER_OCTET);
  const name = peerName(index);
  return {
    addresses: [`198.18.${x}.${y}`, `fd00:198:18::${x}:${y}`],
    vteps: [{ family: 4, mac: vtepMac(name, 4) }, { family: 6, mac: vtepMac(name, 6) }],
    mtu: 1500,
    // Another machine's agent: a boot id that is not this machine's, so no process here is taken for it.
    agent: { id: randomUUID(), host: `bench-${name}`, bootId: randomUUID(), pid: index, startTime: "0" },
  };
}

interface SyncEntry {
  readonly startedAt: number;
  readonly durationMs: number;
  readonly changes: number;
}

function syncs(log: string): SyncEntry[] {
  return agentLogEntries(log, "synced").map((entry) => {
    const { time, durationMs, changes } = entry as { time: string; durationMs: number; changes: number };
    return { startedAt: Date.parse(time) - durationMs, durationMs, changes };
  });
}

/** Polls the node's agent routes every 100 ms until there are `expected`; the time since `since`. */
async function pollRoutes(node: TestNetns, expected: number, since: number, failure: () => string | undefined): Promise<number> {
  const deadline = Date.now() + 120_000;
  for (;;) {
    const routes = JSON.parse((await run("ip", ["-json", "route", "show", "table", "all", "proto", String(ROUTE_PROTOCOL)], { netns: node.path })).stdout || "[]") as unknown[];
    if (routes.length >= expected) return Date.now() - since;
    const reason = failure();
    if (reason) throw new Error(reason);
    if (Date.now() > deadline) throw new Error(`the agent holds ${routes.length} of ${expected} peer routes after 120 s`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

async function kernelObjects(node: TestNetns): Promise<ScaleFigures["kernel"]> {
  const json = async (command: string, args: string[]): Promise<Array<Record<string, unknown>>> => {
    const { stdout } = await run(command, ["-json", ...args], { netns: node.path });
    return stdout.trim() ? (JSON.parse(stdout) as Array<Record<string, unknown>>) : [];
  };
  const routes = await json("ip", ["route", "show", "table", "all", "proto", String(ROUTE_PROTOCOL)]);
  const neighbors = (await json("ip", ["neigh", "show", "nud", "permanent"])).filter((entry) => String(entry.dev).startsWith("trellis-vx"));
  const fdb = [...(await json("bridge", ["fdb", "show", "dev", "trellis-vx4"])), ...(await json("bridge", ["fdb", "show", "dev", "trellis-vx6"]))].filter((entry) => entry.dst !== undefined);
  return { routes: routes.length, neighbors: neighbors.length, fdb: fdb.length };
}

function residentMemory(agent: StartedProcess): { rssMiB: number; peakRssMiB: number; anonMiB: number; fileMiB: number } {
  const status = readFileSync(`/proc/${agent.pid}/status`, "utf8");
  const kib = (field: string): number => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(status)?.[1] ?? NaN);
  const mib = (field: string) => Math.round(kib(field) / 102.4) / 10;
  return { rssMiB: mib("VmRSS"), peakRssMiB: mib("VmHWM"), anonMiB: mib("RssAnon"), fileMiB: mib("RssFile") };
}
