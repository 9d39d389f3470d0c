/**
 * The flows of the last minute, as the map draws them: records become connections, and
 * connections become edges between entities (topology.ts), one edge per pair and verdict.
 *
 * One connection is usually seen twice, by the sender's node and by the receiver's; its records
 * are put together by what they share (protocol, source, and the destination after translation,
 * which is where both nodes see it go), so it counts once. Its verdict is the sternest any node
 * gave (a connection the receiver's node denied was denied, whatever the sender's node let
 * through) and its bytes the most any node counted.
 *
 * Memory is bounded: at most `maxConnections` (the oldest make room) and a few records each.
 * Changes are collected and taken as a delta (`takeChanges`), so the server sends each edge at
 * most once per tick however many records moved it.
 */
import { FLOW_VERDICTS, type FlowRecord, type FlowVerdict } from "../flows/record.js";
import { canonicalAddress, EntityIndex, type UiTopology } from "./topology.js";

export const FLOW_WINDOW_MS = 60_000;
export const MAX_CONNECTIONS = 20_000;
/** Records kept per connection: the newest from each node that saw it, as a rule two. */
export const MAX_RECORDS_PER_CONNECTION = 4;
/** Policies and Services named on one edge's summary; the rest are in its flows. */
const MAX_NAMES_PER_EDGE = 8;

export interface EdgeSummary {
  readonly id: string;
  readonly source: string;
  readonly target: string;
  readonly verdict: FlowVerdict;
  readonly connections: number;
  readonly bytes: number;
  readonly packets: number;
  /** Policies that decided its connections (denied ones name theirs). */
  readonly policies: readonly string[];
  readonly services: readonly string[];
  /** ms since the epoch. */
  readonly lastSeen: number;
}

export interface ConnectionView {
  readonly key: string;
  readonly edge: string;
  readonly verdict: FlowVerdict;
  readonly bytes: number;
  readonly packets: number;
  readonly firstSeen: number;
  readonly lastSeen: number;
  readonly records: readonly FlowRecord[];
}

interface Connection {
  readonly key: string;
  edge: Edge;
  verdict: FlowVerdict;
  bytes: number;
  packets: number;
  firstSeen: number;
  lastSeen: number;
  records: FlowRecord[];
}

interface Edge {
  readonly id: string;
  readonly source: string;
  readonly target: string;
  readonly verdict: FlowVerdict;
  readonly connections: Set<Connection>;
}

const SEVERITY: Record<FlowVerdict, number> = Object.fromEntries(FLOW_VERDICTS.map((verdict) => [verdict, { forwarded: 0, dropped: 1, denied: 2 }[verdict]])) as Record<FlowVerdict, number>;

export function edgeId(source: string, target: string, verdict: FlowVerdict): string {
  return `${verdict} ${source} -> ${target}`;
}

/** The identity both nodes see of one connection. */
export function connectionKey(record: FlowRecord): string {
  const to = record.translated ?? record.destination;
  return [record.protocol, canonicalAddress(record.source.address), record.source.port ?? "", canonicalAddress(to.address), to.port ?? ""].join(" ");
}

export class FlowWindow {
  private index: EntityIndex;
  /** Oldest first: a connection is moved to the end when a record comes for it. */
  private readonly connections = new Map<string, Connection>();
  private readonly edges = new Map<string, Edge>();
  private readonly changed = new Set<string>();
  /** Connections let go to stay under the bound, since the start. */
  evicted = 0;

  constructor(
    topology: UiTopology,
    private readonly now: () => number = Date.now,
    private readonly maxConnections = MAX_CONNECTIONS,
  ) {
    this.index = new EntityIndex(topology);
  }

  add(record: FlowRecord): void {
    const parsed = Date.parse(record.time);
    const time = Number.isFinite(parsed) ? Math.min(parsed, this.now()) : this.now();
    if (time < this.now() - FLOW_WINDOW_MS) return;
    const key = connectionKey(record);
    let connection = this.connections.get(key);
    if (connection) {
      this.connections.delete(key);
    } else {
      connection = { key, edge: undefined!, verdict: record.verdict, bytes: 0, packets: 0, firstSeen: time, lastSeen: time, records: [] };
    }
    this.connections.set(key, connection);
    // One record per node: a newer one from the same node replaces the older.
    const others = connection.records.filter((kept) => kept.node !== record.node);
    connection.records = [...others, record].slice(-MAX_RECORDS_PER_CONNECTION);
    connection.firstSeen = Math.min(connection.firstSeen, time);
    connection.lastSeen = Math.max(connection.lastSeen, time);
    this.judge(connection);
    while (this.connections.size > this.maxConnections) {
      this.remove(this.connections.values().next().value!);
      this.evicted++;
    }
  }

  /** Lets go of the connections last seen more than a minute ago. */
  expire(): void {
    const cutoff = this.now() - FLOW_WINDOW_MS;
    // Mostly oldest first; records that came late may sit behind newer ones until then.
    for (const connection of this.connections.values()) if (connection.lastSeen < cutoff) this.remove(connection);
  }

  /** Places every connection again: a pod that appeared takes over the flows to its address. */
  setTopology(topology: UiTopology): void {
    this.index = new EntityIndex(topology);
    for (const connection of this.connections.values()) this.judge(connection);
  }

  /** Every edge now. */
  summaries(): EdgeSummary[] {
    return [...this.edges.values()].map(summarize);
  }

  /** The edges that changed since the last call, and the ids of those that went. */
  takeChanges(): { changed: EdgeSummary[]; removed: string[] } {
    const changed: EdgeSummary[] = [];
    const removed: string[] = [];
    for (const id of this.changed) {
      const edge = this.edges.get(id);
      if (edge) changed.push(summarize(edge));
      else removed.push(id);
    }
    this.changed.clear();
    return { changed, removed };
  }

  /** The connections of an edge, or of everything an entity sent or received, newest first. */
  connectionsOf(query: { edge: string } | { entity: string }, limit: number): ConnectionView[] {
    const views: ConnectionView[] = [];
    const wanted = "edge" in query ? (connection: Connection) => connection.edge.id === query.edge : (connection: Connection) => connection.edge.source === query.entity || connection.edge.target === query.entity;
    // The map holds them oldest first: turned around, the last touched come first among equal times.
    const all = [...this.connections.values()].reverse().sort((a, b) => b.lastSeen - a.lastSeen);
    for (const connection of all) {
      if (views.length >= limit) break;
      if (!wanted(connection)) continue;
      const { key, verdict, bytes, packets, firstSeen, lastSeen, records } = connection;
      views.push({ key, edge: connection.edge.id, verdict, bytes, packets, firstSeen, lastSeen, records });
    }
    return views;
  }

  get size(): number {
    return this.connections.size;
  }

  get edgeCount(): number {
    return this.edges.size;
  }

  /** Works the connection's verdict, counters and edge out of its records, moving it between edges when they changed. */
  private judge(connection: Connection): void {
    let verdict: FlowVerdict = "forwarded";
    let bytes = 0;
    let packets = 0;
    for (const record of connection.records) {
      if (SEVERITY[record.verdict] > SEVERITY[verdict]) verdict = record.verdict;
      const counters = record.counters;
      if (counters) {
        bytes = Math.max(bytes, counters.bytesSent + counters.bytesReceived);
        packets = Math.max(packets, counters.packetsSent + counters.packetsReceived);
      }
    }
    connection.verdict = verdict;
    connection.bytes = bytes;
    connection.packets = packets;
    // Where it went: the endpoint a Service sent it to; else what holds the address it asked for
    // (a Service's ClusterIP when it had no endpoint to go to).
    const translated = connection.records.find((record) => record.translated)?.translated;
    const source = this.index.entityOf(connection.records[0].source);
    const target = this.index.entityOf(translated ?? connection.records[0].destination);
    const id = edgeId(source, target, verdict);
    if (connection.edge?.id !== id) {
      if (connection.edge) this.leave(connection);
      let edge = this.edges.get(id);
      if (!edge) {
        edge = { id, source, target, verdict, connections: new Set() };
        this.edges.set(id, edge);
      }
      edge.connections.add(connection);
      connection.edge = edge;
    }
    this.changed.add(id);
  }

  private remove(connection: Connection): void {
    this.connections.delete(connection.key);
    this.leave(connection);
  }

  private leave(connection: Connection): void {
    const edge = connection.edge;
    edge.connections.delete(connection);
    if (edge.connections.size === 0) this.edges.delete(edge.id);
    this.changed.add(edge.id);
  }
}

function summarize(edge: Edge): EdgeSummary {
  let bytes = 0;
  let packets = 0;
  let lastSeen = 0;
  const policies = new Set<string>();
  const services = new Set<string>();
  for (const connection of edge.connections) {
    bytes += connection.bytes;
    packets += connection.packets;
    lastSeen = Math.max(lastSeen, connection.lastSeen);
    for (const record of connection.records) {
      if (record.policy && policies.size < MAX_NAMES_PER_EDGE) policies.add(record.policy);
      if (record.service && services.size < MAX_NAMES_PER_EDGE) services.add(record.service);
    }
  }
  return { id: edge.id, source: edge.source, target: edge.target, verdict: edge.verdict, connections: edge.connections.size, bytes, packets, policies: [...policies], services: [...services], lastSeen };
}
