/**
 * The agent's flow records: conntrack's events of the node's network namespace and the policy
 * deny log, turned into records of the cluster's traffic (a pod, a Service or a NodePort at one
 * end; the node's own management traffic is left out), named with the pods, Services and nodes
 * the agent knows, and kept in a ring that `/flows` serves (see flowsHandler).
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import { parseFlowFilter, type FlowFilter, type FlowFilterInput } from "../flows/filter.js";
import type { FlowEnd, FlowRecord, FlowVerdict } from "../flows/record.js";
import { FlowRing } from "../flows/ring.js";
import { STATUS_SEEN_REPLY, type ConntrackEvent } from "../linux/conntrack-events.js";
import { formatIp, prefixContains, type IpAddress, type IpPrefix } from "../net/ip.js";
import { renderGauge } from "./metrics.js";

/** Records the ring holds unless told otherwise (`--flow-buffer`). */
export const DEFAULT_FLOW_BUFFER = 4_096;
/** Records a follower of /flows may be behind by before the newest are dropped for it. */
export const FOLLOWER_BOUND = 1_024;
/** Followers of /flows at once: one more closes the oldest. */
export const MAX_FOLLOWERS = 8;
/** A follower hears a blank line this often when no record comes, so a dead connection shows. */
const HEARTBEAT_MS = 10_000;

const PROTOCOLS: Record<number, string> = { 1: "ICMP", 6: "TCP", 17: "UDP", 58: "ICMPv6", 132: "SCTP" };

/** What the agent knows of the cluster, asked for each flow. */
export interface FlowContext {
  readonly nodeName: string;
  /** The cluster's pod CIDRs and Service CIDRs: a flow with an end inside is the cluster's. */
  clusterPrefixes(): readonly IpPrefix[];
  /** This node's pod CIDRs: an end inside is a pod of this node. */
  readonly ownPodCidrs: readonly IpPrefix[];
  pod(address: IpAddress): { readonly namespace: string; readonly name: string } | undefined;
  /** The node an address is one of. */
  nodeAt(address: IpAddress): string | undefined;
  /** See ServiceProxy.serviceAt; undefined without a Service proxy. */
  service(protocol: string, port: number, address?: IpAddress): string | undefined;
}

/** A connection the policy table refused, as its deny log read it. */
export interface DeniedConnection {
  readonly protocol: number;
  readonly from: IpAddress;
  readonly sport: number;
  readonly to: IpAddress;
  readonly dport: number;
  readonly direction?: string;
  readonly policy?: string;
}

export class FlowRecorder {
  readonly ring: FlowRing;
  private readonly totals: Record<FlowVerdict, number> = { forwarded: 0, denied: 0, dropped: 0 };
  /** conntrack's events kept, by kind. */
  private readonly events: Record<ConntrackEvent["kind"], number> = { new: 0, update: 0, destroy: 0 };
  /** Times the kernel said it dropped events (each at least one). */
  private lost = 0;
  private leftOut = 0;
  followerDrops = 0;

  constructor(
    private readonly context: FlowContext,
    capacity: number,
    private readonly now: () => number = Date.now,
  ) {
    this.ring = new FlowRing(capacity);
  }

  /** A conntrack event; kept when it is the cluster's traffic. */
  conntrack(event: ConntrackEvent): void {
    const prefixes = this.context.clusterPrefixes();
    const inCluster = (address: IpAddress) => prefixes.some((prefix) => prefixContains(prefix, address));
    const { original, reply } = event;
    if (!inCluster(original.source) && !inCluster(original.destination) && !inCluster(reply.source)) {
      this.leftOut++;
      return;
    }
    this.events[event.kind]++;
    const protocol = PROTOCOLS[event.protocol] ?? String(event.protocol);
    const ported = event.protocol === 6 || event.protocol === 17 || event.protocol === 132;
    const translated = !sameAddress(reply.source, original.destination) || (ported && reply.sport !== original.dport);
    const destinationNode = this.context.nodeAt(original.destination);
    const service = ported
      ? destinationNode !== undefined ? this.context.service(protocol, original.dport) : this.context.service(protocol, original.dport, original.destination)
      : undefined;
    const answered = (event.status & STATUS_SEEN_REPLY) !== 0;
    const reason = event.kind === "new" ? undefined : event.kind === "update" ? "answered" : answered ? "closed" : "closed unanswered";
    const source = this.end(original.source, ported ? original.sport : undefined);
    const destination = this.end(original.destination, ported ? original.dport : undefined);
    const to = translated ? this.end(reply.source, ported ? reply.sport : undefined) : undefined;
    this.add({
      time: new Date(this.now()).toISOString(),
      node: this.context.nodeName,
      event: event.kind,
      verdict: "forwarded",
      ...(reason ? { reason } : {}),
      protocol,
      source,
      destination,
      ...(to ? { translated: to } : {}),
      ...(service ? { service } : {}),
      ...this.direction(original.source, translated ? reply.source : original.destination),
      ...(event.kind === "destroy" && (event.packets[0] || event.packets[1])
        ? { counters: { packetsSent: event.packets[0], bytesSent: event.bytes[0], packetsReceived: event.packets[1], bytesReceived: event.bytes[1] } }
        : {}),
    });
  }

  /** A connection the policy table denied (see deny-log.ts). */
  denied(connection: DeniedConnection): void {
    const ported = connection.protocol === 6 || connection.protocol === 17 || connection.protocol === 132;
    this.add({
      time: new Date(this.now()).toISOString(),
      node: this.context.nodeName,
      event: "denied",
      verdict: "denied",
      reason: connection.direction ? `${connection.direction.toLowerCase()} policy` : "policy",
      ...(connection.policy ? { policy: connection.policy } : {}),
      protocol: PROTOCOLS[connection.protocol] ?? String(connection.protocol),
      source: this.end(connection.from, ported ? connection.sport : undefined),
      destination: this.end(connection.to, ported ? connection.dport : undefined),
      ...this.direction(connection.from, connection.to),
    });
  }

  /**
   * A connection the Service proxy refused (its reject chain's log): to a Service port without
   * endpoints, or to a ClusterIP on a port it does not have.
   */
  rejected(connection: DeniedConnection): void {
    const ported = connection.protocol === 6 || connection.protocol === 17 || connection.protocol === 132;
    const protocol = PROTOCOLS[connection.protocol] ?? String(connection.protocol);
    const service = ported ? (this.context.nodeAt(connection.to) !== undefined ? this.context.service(protocol, connection.dport) : this.context.service(protocol, connection.dport, connection.to)) : undefined;
    this.add({
      time: new Date(this.now()).toISOString(),
      node: this.context.nodeName,
      event: "rejected",
      verdict: "dropped",
      reason: service ? "no endpoints" : "no such Service port",
      protocol,
      source: this.end(connection.from, ported ? connection.sport : undefined),
      destination: this.end(connection.to, ported ? connection.dport : undefined),
      ...(service ? { service } : {}),
      ...this.direction(connection.from, connection.to),
    });
  }

  /** The kernel dropped conntrack events: the reader was behind. */
  eventsLost(): void {
    this.lost++;
  }

  private add(record: FlowRecord): void {
    this.totals[record.verdict]++;
    this.ring.push(record);
  }

  private end(address: IpAddress, port: number | undefined): FlowEnd {
    const pod = this.context.pod(address);
    const node = pod ? undefined : this.context.nodeAt(address);
    return { address: formatIp(address), ...(port !== undefined ? { port } : {}), ...(pod ? { pod: `${pod.namespace}/${pod.name}` } : {}), ...(node ? { node } : {}) };
  }

  private direction(from: IpAddress, to: IpAddress): { direction?: "ingress" | "egress" } {
    const local = (address: IpAddress) => this.context.ownPodCidrs.some((prefix) => prefixContains(prefix, address));
    if (local(from)) return { direction: "egress" };
    if (local(to)) return { direction: "ingress" };
    return {};
  }

  metrics(): string {
    return (
      renderGauge("trellis_flows_total", "Flow records this node made, by verdict (conntrack's events of the cluster's traffic, and the policy deny log).", (["forwarded", "denied", "dropped"] as const).map((verdict) => ({ labels: { verdict }, value: this.totals[verdict] })), "counter") +
      renderGauge("trellis_flow_events_total", "conntrack events of the cluster's traffic this node recorded, by kind (new: a connection let through; update: answered; destroy: ended).", (["new", "update", "destroy"] as const).map((event) => ({ labels: { event }, value: this.events[event] })), "counter") +
      renderGauge("trellis_flow_events_lost_total", "Times the kernel dropped conntrack events because the agent's reader was behind (each time at least one event).", [{ value: this.lost }], "counter") +
      renderGauge("trellis_flow_events_ignored_total", "conntrack events of the node's own traffic (no pod, Service or NodePort at either end), left out.", [{ value: this.leftOut }], "counter") +
      renderGauge("trellis_flow_records", "Flow records in the ring.", [{ value: this.ring.length }]) +
      renderGauge("trellis_flow_followers", "Clients following /flows.", [{ value: this.ring.followerCount }]) +
      renderGauge("trellis_flow_follower_dropped_total", "Records not sent to a follower of /flows because it was behind by more than it may be.", [{ value: this.followerDrops }], "counter")
    );
  }
}

function sameAddress(a: IpAddress, b: IpAddress): boolean {
  return a.family === b.family && a.value === b.value;
}

/**
 * GET /flows[?pod=NS/NAME&namespace=NS&service=NS/NAME&verdict=V&since=5m&limit=N&follow=true]:
 * the ring's records the filter asks for as JSON lines, oldest first; with follow, then the new
 * ones as they come, on a connection that stays open. A follower that reads slowly is sent at
 * most FOLLOWER_BOUND records ahead (the socket's own buffer aside) and is told, in a
 * `{"dropped":N}` line, how many it missed; the oldest follower is closed to make room for the
 * MAX_FOLLOWERS+1th. `keep(socket)` takes a following connection out of the short lifetime of
 * the endpoint's other requests.
 */
export function flowsHandler(recorder: FlowRecorder, keep: (response: ServerResponse) => void) {
  const followers = new Set<ServerResponse>();
  return (request: IncomingMessage, response: ServerResponse, query: URLSearchParams) => {
    const fail = (message: string) => {
      response.writeHead(400, { "content-type": "text/plain; charset=utf-8", connection: "close" });
      response.end(`${message}\n`);
    };
    let filter: FlowFilter;
    let limit = recorder.ring.capacity;
    let follow = false;
    try {
      const known = new Set(["pod", "namespace", "service", "verdict", "since", "limit", "follow"]);
      for (const key of query.keys()) if (!known.has(key)) throw new Error(`${JSON.stringify(key)} is not a parameter of /flows: expected ${[...known].join(", ")}`);
      for (const key of known) if (query.getAll(key).length > 1) throw new Error(`${key} is given more than once`);
      const input: { -readonly [K in keyof FlowFilterInput]: FlowFilterInput[K] } = {};
      for (const key of ["pod", "namespace", "service", "verdict", "since"] as const) {
        const value = query.get(key);
        if (value !== null) input[key] = value;
      }
      filter = parseFlowFilter(input, Date.now(), (key) => key);
      const limitText = query.get("limit");
      if (limitText !== null) {
        if (!/^[0-9]{1,9}$/.test(limitText) || Number(limitText) < 1) throw new Error(`limit ${JSON.stringify(limitText)} is not a number of records from 1`);
        limit = Math.min(Number(limitText), recorder.ring.capacity);
      }
      const followText = query.get("follow");
      if (followText !== null) {
        if (!["", "true", "1", "false", "0"].includes(followText)) throw new Error(`follow ${JSON.stringify(followText)} is not true or false`);
        follow = ["", "true", "1"].includes(followText);
      }
    } catch (error) {
      return fail((error as Error).message);
    }
    const lines = (records: readonly FlowRecord[]) => records.map((record) => `${JSON.stringify(record)}\n`).join("");
    const body = lines(recorder.ring.recent(filter, limit));
    if (!follow || request.method === "HEAD") {
      response.writeHead(200, { "content-type": "application/x-ndjson", "content-length": Buffer.byteLength(body), connection: "close" });
      response.end(request.method === "HEAD" ? undefined : body);
      return;
    }
    keep(response);
    if (followers.size >= MAX_FOLLOWERS) followers.values().next().value!.destroy();
    followers.add(response);
    response.writeHead(200, { "content-type": "application/x-ndjson", "cache-control": "no-store", connection: "close" });
    response.write(body);
    let waitingForDrain = false;
    const send = () => {
      if (waitingForDrain || response.destroyed) return;
      const { records, dropped } = follower.take();
      if (dropped) recorder.followerDrops += dropped;
      const text = (dropped ? `${JSON.stringify({ dropped })}\n` : "") + lines(records);
      // Past the socket's buffer the next records wait in the follower's bounded queue.
      if (text && !response.write(text)) {
        waitingForDrain = true;
        response.once("drain", () => {
          waitingForDrain = false;
          if (follower.pending) send();
        });
      }
    };
    const follower = recorder.ring.follow(filter, FOLLOWER_BOUND, () => setImmediate(send));
    const heartbeat = setInterval(() => {
      if (!waitingForDrain && !follower.pending) response.write("\n");
    }, HEARTBEAT_MS);
    response.on("close", () => {
      clearInterval(heartbeat);
      follower.stop();
      followers.delete(response);
    });
  };
}
