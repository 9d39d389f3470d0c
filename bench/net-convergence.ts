/**
 * How soon the peers route to a node whose agent starts: in a running 3-node lab, node3's
 * agent is stopped and node3 removed from the store (`trellis node rm`), so that it comes back
 * as a new node with new pod CIDRs; once node1 and node2 have dropped the old routes, the
 * agent is started again with the lab's own command line, and the clock runs from that start
 * until both peers hold routes (protocol 153) to every one of the new pod CIDRs.
 *
 * Route times come from `ip -ts monitor route` in node1 and node2; the agent's own start-up is
 * told apart by the time of its "node claimed" log line (written once the node record, which
 * the peers watch, is in the store).
 */
import { isLabProcess, logTail, startDetached, stopProcesses, type StartedProcess } from "../src/lab/processes.js";
import { agentLogEntries, labStatus, runTrellis, waitFor } from "../test/support/lab.js";
import { monitorRoutes, routesChangedBy, summarize, type Made, type Summary } from "./net-support.js";

export interface ConvergenceSample {
  readonly oldPodCidrs: readonly string[];
  readonly newPodCidrs: readonly string[];
  /** `trellis node rm` started (the command's own start-up included) → both peers had deleted the old routes. */
  readonly rmToWithdrawnMs: number;
  readonly startToClaimedMs: number;
  readonly claimedToRoutedMs: number;
  readonly startToRoutedMs: number;
}

export interface ConvergenceFigures {
  readonly node: string;
  readonly peers: readonly string[];
  readonly startToRoutedMs: Summary;
  readonly claimedToRoutedMs: Summary;
  readonly startToClaimedMs: Summary;
  readonly rmToWithdrawnMs: Summary;
  readonly samples: readonly ConvergenceSample[];
}

const CLAIMED = "node claimed";
const STEP_TIMEOUT_MS = 15_000;

export async function measureConvergence(lab: string, restarts: number, made: Made, say: (line: string) => void): Promise<ConvergenceFigures> {
  const status = labStatus(lab);
  if (status.nodes.length < 3) throw new Error(`lab ${lab} has ${status.nodes.length} nodes; the convergence figure needs 3`);
  const [peerA, peerB, node] = status.nodes;
  if (!node.agentRunning) throw new Error(`the agent of ${node.name} in lab ${lab} is not running (pid ${node.agentPid}); see ${node.agentLog}:\n${logTail(node.agentLog)}`);
  const monitors = [await monitorRoutes(peerA.netns, made), await monitorRoutes(peerB.netns, made)];
  const samples: ConvergenceSample[] = [];
  let running: { pid: number; argv: readonly string[] } | StartedProcess = { pid: node.agentPid, argv: node.agentArgv };
  let podCidrs: readonly string[] = node.podCidrs;
  try {
    for (let i = 0; i < restarts; i++) {
      if (isLabProcess({ ...running, log: node.agentLog }, node.netns)) await stopProcesses([running.pid]);
      const removedAt = Date.now();
      const rm = runTrellis(["node", "rm", node.name, "--store", status.store]);
      if (rm.status !== 0) throw new Error(`trellis node rm ${node.name} --store ${status.store} failed (exit ${rm.status}): ${rm.stderr.trim()}`);
      const withdrawnAt = await routesChangedBy(monitors, podCidrs, "deleted", removedAt, STEP_TIMEOUT_MS);

      const claimedBefore = agentLogEntries(node.agentLog, CLAIMED).length;
      const startedAt = Date.now();
      const agent = startDetached(node.netns, node.agentArgv, node.agentLog);
      made.agents.add(agent);
      running = agent;
      const failure = () => {
        const how = agent.ended();
        return how ? `the agent of ${node.name} ended (${how}); the end of ${node.agentLog}:\n${logTail(node.agentLog)}` : undefined;
      };
      await waitFor(`${node.name}'s agent claims its node`, () => {
        const reason = failure();
        if (reason) throw new Error(reason);
        return agentLogEntries(node.agentLog, CLAIMED).length > claimedBefore;
      }, STEP_TIMEOUT_MS);
      const claim = agentLogEntries(node.agentLog, CLAIMED)[claimedBefore] as { time: string; podCidrs: string[] };
      const claimedAt = Date.parse(claim.time);
      const routedAt = await routesChangedBy(monitors, claim.podCidrs, "added", startedAt, STEP_TIMEOUT_MS, failure);
      const sample: ConvergenceSample = {
        oldPodCidrs: podCidrs,
        newPodCidrs: claim.podCidrs,
        rmToWithdrawnMs: round(withdrawnAt - removedAt),
        startToClaimedMs: round(claimedAt - startedAt),
        claimedToRoutedMs: round(routedAt - claimedAt),
        startToRoutedMs: round(routedAt - startedAt),
      };
      samples.push(sample);
      podCidrs = claim.podCidrs;
      say(`  restart ${i + 1}/${restarts}: ${podCidrs.join(" ")} routed by ${peerA.name} and ${peerB.name} ${sample.startToRoutedMs} ms after the agent started (claimed at ${sample.startToClaimedMs} ms)`);
    }
  } finally {
    for (const monitor of monitors) monitor.stop();
  }
  return {
    node: node.name,
    peers: [peerA.name, peerB.name],
    startToRoutedMs: summarize(samples.map((sample) => sample.startToRoutedMs)),
    claimedToRoutedMs: summarize(samples.map((sample) => sample.claimedToRoutedMs)),
    startToClaimedMs: summarize(samples.map((sample) => sample.startToClaimedMs)),
    rmToWithdrawnMs: summarize(samples.map((sample) => sample.rmToWithdrawnMs)),
    samples,
  };
}

function round(ms: number): number {
  return Math.round(ms * 10) / 10;
}
