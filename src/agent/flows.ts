/**
 * The agent's flow records: conntrack's events of the node's network namespace and the policy
 * deny log, turned into records of the cluster's traffic (a pod, a Service or a NodePort at one
 * end; the node's own management traffic is left out), named with the pods, Services and nodes
 * the agent knows, and kept in a ring that `/flows` serves (see flowsHandler).
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import { parseFlowFilter, type FlowFilter, type FlowFilterInput } from "../flows/filter.js";
import type { FlowEnd, FlowEvent, FlowRecord, FlowVerdict } from "../flows/record.js";
import { FlowRing } from "../flows/ring.js";
import { CONNTRACK_RECORD, KIND_LOST, KINDS, RECORD, STATUS_SEEN_REPLY, recordAddress } from "../linux/conntrack-events.js";
import type { ProxyServicePort } from "../dataplane/service-port.js";
import type { LoggedPacket } from "../linux/nflog.js";
import { formatIp, prefixContains, type IpAddress, type IpPrefix } from "../net/ip.js";
import { renderGauge } from "./metrics.js";

/** Records the ring holds unless told otherwise (`--flow-buffer`). */
export const DEFAULT_FLOW_BUFFER = 4_096;
/** Records a follower of /flows may be behind by before the newest are dropped for it. */
export const FOLLOWER_BOUND = 1_024;
/** Records one answer of /flows holds at most (the newest): an answer is made whole before it is sent. */
export const MAX_ANSWER = 10_000;
/** Followers of /flows at once: one more closes the oldest. */
export const MAX_FOLLOWERS = 8;
/** A follower hears a blank line this often when no record comes, so a dead connection shows. */
const HEARTBEAT_MS = 10_000;

const PROTOCOLS: Record<number, string> = { 1: "ICMP", 6: "TCP", 17: "UDP", 58: "ICMPv6", 132: "SCTP" };
const PROTOCOL_NUMBERS: Record<string, number> = { TCP: 6, UDP: 17, SCTP: 132 };
/** How long the cluster's prefixes and the nodes' addresses are taken as they were. */
const REFRESH_MS = 1_000;

/** What the agent knows of the cluster, asked as flows come (each at most once a second, or when its version changed). */
export interface FlowContext {
  readonly nodeName: string;
  /** This node's pod CIDRs: an end inside is a pod of this node. */
  readonly ownPodCidrs: readonly IpPrefix[];
  /** The cluster's pod CIDRs and Service CIDRs: a flow with an end inside is the cluster's. */
  clusterPrefixes(): readonly IpPrefix[];
  /** Every pod the agent knows, and a number that changes when they do. */
  pods(): { readonly version: number; readonly pods: readonly FlowPod[] };
  /** Every node's addresses. */
  nodes(): ReadonlyArray<{ readonly name: string; readonly addresses: readonly IpAddress[] }>;
  /** Every Service port the proxy holds, and a number that changes when they do; none without a proxy. */
  services(): { readonly version: number; readonly ports: Iterable<FlowServicePort> };
}

export interface FlowPod {
  readonly namespace: string;
  readonly name: string;
  readonly ips: readonly IpAddress[];
  /** Its addresses are its node's: it names no flow (the node does). */
  readonly hostNetwork?: boolean;
}

/** What the records need of a Service port (the proxy's, as worked out). */
export type FlowServicePort = Pick<ProxyServicePort, "namespace" | "name" | "protocol" | "port" | "nodePort" | "clusterIPs" | "externalIPs" | "loadBalancerIPs">;

/** A connection the policy table refused (its deny log), or the Service proxy did (its reject chain's log). */
export type LoggedConnection = Omit<LoggedPacket, "prefix"> & { readonly direction?: string; readonly policy?: string };

/** An address as the indexes key it: a number for IPv4, 32 hex digits for IPv6. */
type AddressKey = number | string;

function keyOf(address: IpAddress): AddressKey {
  return address.family === 4 ? Number(address.value) : address.value.toString(16).padStart(32, "0");
}

function keyAt(buffer: Buffer, at: number, family: number): AddressKey {
  return family === 4 ? buffer.readUInt32BE(at) : buffer.toString("hex", at, at + 16);
}

/** A prefix as the cluster check reads it: IPv4 as numbers, IPv6 as bytes. */
interface PrefixTest {
  readonly family: 4 | 6;
  readonly network: number;
  readonly mask: number;
  readonly bytes: Uint8Array;
  readonly length: number;
}

function prefixTest(prefix: IpPrefix): PrefixTest {
  if (prefix.family === 4) {
    const mask = prefix.length === 0 ? 0 : (0xffffffff << (32 - prefix.length)) >>> 0;
    return { family: 4, network: Number(prefix.network) & mask, mask, bytes: new Uint8Array(), length: prefix.length };
  }
  const bytes = new Uint8Array(16);
  for (let i = 0; i < 16; i++) bytes[i] = Number((prefix.network >> BigInt(8 * (15 - i))) & 255n);
  return { family: 6, network: 0, mask: 0, bytes, length: prefix.length };
}

function inPrefix(test: PrefixTest, buffer: Uint8Array, at: number, family: number): boolean {
  if (test.family !== family) return false;
  if (family === 4) return ((((buffer[at] << 24) | (buffer[at + 1] << 16) | (buffer[at + 2] << 8) | buffer[at + 3]) & test.mask) >>> 0) === test.network;
  let bits = test.length;
  for (let i = 0; bits > 0; i++, bits -= 8) {
    const mask = bits >= 8 ? 0xff : (0xff << (8 - bits)) & 0xff;
    if ((buffer[at + i] & mask) !== test.bytes[i]) return false;
  }
  return true;
}

/**
 * The flow records of a node. conntrack's events come as raw records (see linux/conntrack-events):
 * each of the cluster's is copied into the ring's slot with the pods, nodes and Service its
 * addresses belong to at that moment, and made a FlowRecord only when someone reads it.
 */
export class FlowRecorder {
  readonly ring: FlowRing;
  private readonly raw: Buffer;
  private readonly times: Float64Array;
  private readonly sourcePod: (string | undefined)[];
  private readonly destinationPod: (string | undefined)[];
  private readonly translatedPod: (string | undefined)[];
  private readonly sourceNode: (string | undefined)[];
  private readonly destinationNode: (string | undefined)[];
  private readonly service: (string | undefined)[];
  private readonly totals: Record<FlowVerdict, number> = { forwarded: 0, denied: 0, dropped: 0 };
  /** conntrack's events kept, by kind (1 new, 2 update, 3 destroy). */
  private readonly events = [0, 0, 0, 0];
  /** Times the kernel said it dropped events (each at least one). */
  private lost = 0;
  private leftOut = 0;
  private malformed = 0;
  followerDrops = 0;
  private prefixes: { at: number; tests: readonly PrefixTest[] } | undefined;
  private podIndex: { version: number; index: Map<AddressKey, string> } | undefined;
  private nodeIndex: { at: number; index: Map<AddressKey, string> } | undefined;
  private serviceIndex: { version: number; byAddress: Map<string, string>; byNodePort: Map<number, string> } | undefined;

  constructor(
    private readonly context: FlowContext,
    capacity: number,
    private readonly now: () => number = Date.now,
  ) {
    this.ring = new FlowRing(capacity, (slot) => this.materialize(slot));
    this.raw = Buffer.alloc(capacity * CONNTRACK_RECORD);
    this.times = new Float64Array(capacity);
    this.sourcePod = new Array(capacity);
    this.destinationPod = new Array(capacity);
    this.translatedPod = new Array(capacity);
    this.sourceNode = new Array(capacity);
    this.destinationNode = new Array(capacity);
    this.service = new Array(capacity);
  }

  /** One record of the conntrack reader, where it lies; kept when it is the cluster's traffic. */
  conntrack(buffer: Buffer, offset: number): void {
    const kind = buffer[offset + RECORD.kind];
    if (kind === KIND_LOST) {
      this.lost++;
      return;
    }
    const family = buffer[offset + RECORD.family];
    if (kind < 1 || kind > 3 || (family !== 4 && family !== 6)) {
      this.malformed++;
      return;
    }
    const { tests } = this.prefixesNow();
    const source = offset + RECORD.source;
    const destination = offset + RECORD.destination;
    const replySource = offset + RECORD.replySource;
    let cluster = false;
    for (const test of tests) {
      if (inPrefix(test, buffer, source, family) || inPrefix(test, buffer, destination, family) || inPrefix(test, buffer, replySource, family)) {
        cluster = true;
        break;
      }
    }
    if (!cluster) {
      this.leftOut++;
      return;
    }
    this.events[kind]++;
    this.totals.forwarded++;
    const slot = this.ring.reserve();
    buffer.copy(this.raw, slot * CONNTRACK_RECORD, offset, offset + CONNTRACK_RECORD);
    const pods = this.pods();
    const nodes = this.nodes();
    const sourceKey = keyAt(buffer, source, family);
    const destinationKey = keyAt(buffer, destination, family);
    this.sourcePod[slot] = pods.get(sourceKey);
    this.destinationPod[slot] = pods.get(destinationKey);
    this.sourceNode[slot] = this.sourcePod[slot] === undefined ? nodes.get(sourceKey) : undefined;
    this.destinationNode[slot] = this.destinationPod[slot] === undefined ? nodes.get(destinationKey) : undefined;
    const protocol = buffer[offset + RECORD.protocol];
    const dport = buffer.readUInt16LE(offset + RECORD.dport);
    const translated = buffer.compare(buffer, replySource, replySource + 16, destination, destination + 16) !== 0 || buffer.readUInt16LE(offset + RECORD.replySport) !== dport;
    this.translatedPod[slot] = translated ? pods.get(keyAt(buffer, replySource, family)) : undefined;
    // Only a translated connection (a Service's DNAT) or one to a node (a NodePort) is a Service's.
    this.service[slot] = translated || this.destinationNode[slot] !== undefined ? this.serviceOf(protocol, dport, this.destinationNode[slot] === undefined ? destinationKey : undefined) : undefined;
    const time = this.now();
    this.times[slot] = time;
    this.ring.commit(time);
  }

  /** A connection the policy table denied (see deny-log.ts). */
  denied(connection: LoggedConnection): void {
    this.log(connection, "denied", "denied", connection.direction ? `${connection.direction.toLowerCase()} policy` : "policy", undefined);
  }

  /**
   * A connection the Service proxy refused (its reject chain's log): to a Service port without
   * endpoints, or to a ClusterIP on a port it does not have.
   */
  rejected(connection: LoggedConnection): void {
    const toNode = this.nodes().get(keyOf(connection.to)) !== undefined;
    const protocol = PROTOCOLS[connection.protocol] ?? String(connection.protocol);
    const service = PROTOCOL_NUMBERS[protocol] ? this.serviceOf(connection.protocol, connection.dport, toNode ? undefined : keyOf(connection.to)) : undefined;
    this.log(connection, "rejected", "dropped", service ? "no endpoints" : "no such Service port", service);
  }

  private log(connection: LoggedConnection, event: FlowEvent, verdict: FlowVerdict, reason: string, service: string | undefined): void {
    const ported = connection.protocol === 6 || connection.protocol === 17 || connection.protocol === 132;
    const time = this.now();
    this.totals[verdict]++;
    this.ring.push({
      time: new Date(time).toISOString(),
      node: this.context.nodeName,
      event,
      verdict,
      reason,
      ...(connection.policy ? { policy: connection.policy } : {}),
      protocol: PROTOCOLS[connection.protocol] ?? String(connection.protocol),
      source: this.end(connection.from, ported ? connection.sport : undefined),
      destination: this.end(connection.to, ported ? connection.dport : undefined),
      ...(service ? { service } : {}),
      ...this.direction(connection.from, connection.to),
    }, time);
  }

  /** The record of a slot filled from conntrack. */
  private materialize(slot: number): FlowRecord {
    const at = slot * CONNTRACK_RECORD;
    const raw = this.raw;
    const family = raw[at + RECORD.family] as 4 | 6;
    const kind = KINDS[raw[at + RECORD.kind]] as FlowEvent;
    const protocolNumber = raw[at + RECORD.protocol];
    const ported = protocolNumber === 6 || protocolNumber === 17 || protocolNumber === 132;
    const status = raw.readUInt32LE(at + RECORD.status);
    const end = (address: number, port: number, pod: string | undefined, node: string | undefined): FlowEnd => ({
      address: formatIp(recordAddress(raw, at + address, family)),
      ...(ported ? { port: raw.readUInt16LE(at + port) } : {}),
      ...(pod ? { pod } : {}),
      ...(node ? { node } : {}),
    });
    const translated = raw.compare(raw, at + RECORD.replySource, at + RECORD.replySource + 16, at + RECORD.destination, at + RECORD.destination + 16) !== 0 ||
      raw.readUInt16LE(at + RECORD.replySport) !== raw.readUInt16LE(at + RECORD.dport);
    const reason = kind === "new" ? undefined : kind === "update" ? "answered" : (status & STATUS_SEEN_REPLY) !== 0 ? "closed" : "closed unanswered";
    const packetsOut = Number(raw.readBigUInt64LE(at + RECORD.packetsOut));
    const packetsBack = Number(raw.readBigUInt64LE(at + RECORD.packetsBack));
    const service = this.service[slot];
    return {
      time: new Date(this.times[slot]).toISOString(),
      node: this.context.nodeName,
      event: kind,
      verdict: "forwarded",
      ...(reason ? { reason } : {}),
      protocol: PROTOCOLS[protocolNumber] ?? String(protocolNumber),
      source: end(RECORD.source, RECORD.sport, this.sourcePod[slot], this.sourceNode[slot]),
      destination: end(RECORD.destination, RECORD.dport, this.destinationPod[slot], this.destinationNode[slot]),
      ...(translated ? { translated: end(RECORD.replySource, RECORD.replySport, this.translatedPod[slot], undefined) } : {}),
      ...(service ? { service } : {}),
      ...this.direction(recordAddress(raw, at + RECORD.source, family), recordAddress(raw, at + (translated ? RECORD.replySource : RECORD.destination), family)),
      ...(kind === "destroy" && (packetsOut || packetsBack)
        ? { counters: { packetsSent: packetsOut, bytesSent: Number(raw.readBigUInt64LE(at + RECORD.bytesOut)), packetsReceived: packetsBack, bytesReceived: Number(raw.readBigUInt64LE(at + RECORD.bytesBack)) } }
        : {}),
    };
  }

  private prefixesNow(): { tests: readonly PrefixTest[] } {
    const now = this.now();
    if (!this.prefixes || now - this.prefixes.at >= REFRESH_MS) {
      this.prefixes = { at: now, tests: this.context.clusterPrefixes().map(prefixTest) };
    }
    return this.prefixes;
  }

  private pods(): Map<AddressKey, string> {
    const { version, pods } = this.context.pods();
    if (this.podIndex?.version !== version) {
      const index = new Map<AddressKey, string>();
      for (const pod of pods) if (!pod.hostNetwork) for (const ip of pod.ips) index.set(keyOf(ip), `${pod.namespace}/${pod.name}`);
      this.podIndex = { version, index };
    }
    return this.podIndex.index;
  }

  private nodes(): Map<AddressKey, string> {
    const now = this.now();
    if (!this.nodeIndex || now - this.nodeIndex.at >= REFRESH_MS) {
      const index = new Map<AddressKey, string>();
      for (const node of this.context.nodes()) for (const address of node.addresses) index.set(keyOf(address), node.name);
      this.nodeIndex = { at: now, index };
    }
    return this.nodeIndex.index;
  }

  /** `NAMESPACE/NAME` of the Service at `address` (or at a NodePort, address undefined), protocol and port. */
  private serviceOf(protocol: number, port: number, address: AddressKey | undefined): string | undefined {
    const { version, ports } = this.context.services();
    if (this.serviceIndex?.version !== version) {
      const byAddress = new Map<string, string>();
      const byNodePort = new Map<number, string>();
      for (const servicePort of ports) {
        const name = `${servicePort.namespace}/${servicePort.name}`;
        const number = PROTOCOL_NUMBERS[servicePort.protocol];
        if (number === undefined) continue;
        for (const ip of [...servicePort.clusterIPs, ...servicePort.externalIPs, ...servicePort.loadBalancerIPs]) byAddress.set(`${keyOf(ip)}|${number}|${servicePort.port}`, name);
        if (servicePort.nodePort !== undefined) byNodePort.set(number * 65536 + servicePort.nodePort, name);
      }
      this.serviceIndex = { version, byAddress, byNodePort };
    }
    return address === undefined ? this.serviceIndex.byNodePort.get(protocol * 65536 + port) : this.serviceIndex.byAddress.get(`${address}|${protocol}|${port}`);
  }

  private end(address: IpAddress, port: number | undefined): FlowEnd {
    const key = keyOf(address);
    const pod = this.pods().get(key);
    const node = pod ? undefined : this.nodes().get(key);
    return { address: formatIp(address), ...(port !== undefined ? { port } : {}), ...(pod ? { pod } : {}), ...(node ? { node } : {}) };
  }

  private direction(from: IpAddress, to: IpAddress): { direction?: "ingress" | "egress" } {
    const local = (address: IpAddress) => this.context.ownPodCidrs.some((prefix) => prefixContains(prefix, address));
    if (local(from)) return { direction: "egress" };
    if (local(to)) return { direction: "ingress" };
    return {};
  }

  metrics(): string {
    return (
      renderGauge("trellis_flows_total", "Flow records this node made, by verdict (conntrack's events of the cluster's traffic, the policy deny log, the Service proxy's refusals).", (["forwarded", "denied", "dropped"] as const).map((verdict) => ({ labels: { verdict }, value: this.totals[verdict] })), "counter") +
      renderGauge("trellis_flow_events_total", "conntrack events of the cluster's traffic this node recorded, by kind (new: a connection let through; update: answered; destroy: ended).", (["new", "update", "destroy"] as const).map((event, i) => ({ labels: { event }, value: this.events[i + 1] })), "counter") +
      renderGauge("trellis_flow_events_lost_total", "Times the kernel dropped conntrack events because the agent's reader was behind (each time at least one event).", [{ value: this.lost }], "counter") +
      renderGauge("trellis_flow_events_ignored_total", "conntrack events of the node's own traffic (no pod, Service or NodePort at either end), left out.", [{ value: this.leftOut }], "counter") +
      renderGauge("trellis_flow_events_malformed_total", "Records of the conntrack reader that were not events (a bug of the reader or the agent).", [{ value: this.malformed }], "counter") +
      renderGauge("trellis_flow_records", "Flow records in the ring.", [{ value: this.ring.length }]) +
      renderGauge("trellis_flow_followers", "Clients following /flows.", [{ value: this.ring.followerCount }]) +
      renderGauge("trellis_flow_follower_dropped_total", "Records not sent to a follower of /flows because it was behind by more than it may be.", [{ value: this.followerDrops }], "counter")
    );
  }
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
    let limit = Math.min(recorder.ring.capacity, MAX_ANSWER);
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
        limit = Math.min(Number(limitText), recorder.ring.capacity, MAX_ANSWER);
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
