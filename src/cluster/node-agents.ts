/**
 * Nodes as their agents keep them: the agent of a node claims it, publishes what peers need
 * to route to its pods, and beats a heartbeat. A node is served by one live agent at a time.
 *
 * Store layout: /nodes/NAME holds the node and, under `network`, the agent's publication;
 * /heartbeats/NAME holds `{agent, at}` rewritten every few seconds by the serving agent.
 */
import type { KvStore } from "../store/kv.js";
import { addNode, heartbeatKey, nodeKey, parseNode, type AgentClaim, type NodeNetworkRecord, type NodeRecord } from "./node-cidrs.js";
import type { Cluster } from "./state.js";

export interface Heartbeat {
  readonly agent: string;
  /** Milliseconds since the epoch, by the agent's clock: for people; peers judge by change, not by value. */
  readonly at: number;
}

/** How the caller judges whether another agent's claim is still served. */
export type ClaimLiveness = (claim: AgentClaim, heartbeat: Heartbeat | undefined) => boolean;

/**
 * Claims `name` for this agent: creates the node (allocating its pod CIDRs) if the store has
 * none, keeps its pod CIDRs if it has, and publishes `network`. Refused, writing nothing, when
 * another agent's claim is live.
 */
export async function claimNode(cluster: Cluster, name: string, network: NodeNetworkRecord, isLive: ClaimLiveness): Promise<NodeRecord> {
  const { store } = cluster;
  for (let attempt = 0; attempt < 100; attempt++) {
    let entry = await store.get(nodeKey(name));
    if (!entry) {
      try {
        await addNode(cluster, name);
      } catch (error) {
        if (!/already exists/.test((error as Error).message)) throw error;
      }
      entry = await store.get(nodeKey(name));
      if (!entry) continue;
    }
    const current = parseNode(entry.value);
    const claim = current.network?.agent;
    if (claim && claim.id !== network.agent.id) {
      const heartbeat = await readHeartbeat(store, name);
      if (isLive(claim, heartbeat)) {
        const beat = heartbeat ? `, last heartbeat ${Math.max(0, Math.round((Date.now() - heartbeat.at) / 1000))} s ago` : "";
        throw new Error(
          `node ${name} is served by a live agent (pid ${claim.pid} on ${claim.host}${beat}); stop that agent, or give this one another --node-name`,
        );
      }
    }
    const record: NodeRecord = { ...current, network };
    const outcome = await store.txn({
      compares: [{ key: entry.key, modRevision: entry.modRevision }],
      operations: [
        { type: "put", key: entry.key, value: JSON.stringify(record) },
        { type: "put", key: heartbeatKey(name), value: JSON.stringify({ agent: network.agent.id, at: Date.now() } satisfies Heartbeat) },
      ],
    });
    if (outcome.succeeded) return record;
  }
  throw new Error(`claiming node ${name}: gave up after 100 attempts, each overtaken by a concurrent change in ${store.spec}`);
}

export async function writeHeartbeat(store: KvStore, name: string, agent: string): Promise<void> {
  await store.txn({ compares: [], operations: [{ type: "put", key: heartbeatKey(name), value: JSON.stringify({ agent, at: Date.now() } satisfies Heartbeat) }] });
}

export async function readHeartbeat(store: KvStore, name: string): Promise<Heartbeat | undefined> {
  const entry = await store.get(heartbeatKey(name));
  return entry ? parseHeartbeat(entry.value) : undefined;
}

export function parseHeartbeat(value: string): Heartbeat | undefined {
  try {
    const parsed = JSON.parse(value) as Partial<Heartbeat>;
    return typeof parsed.agent === "string" && typeof parsed.at === "number" ? { agent: parsed.agent, at: parsed.at } : undefined;
  } catch {
    return undefined;
  }
}
