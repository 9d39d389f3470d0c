import assert from "node:assert/strict";
import { createServer, request } from "node:http";
import { connect } from "node:net";
import { describe, it } from "node:test";
import { encodeConntrackRecord } from "../linux/conntrack-events.js";
import { parseIp, parsePrefix } from "../net/ip.js";
import { FOLLOWER_BOUND, FlowRecorder, flowsHandler, MAX_ANSWER, type FlowContext } from "./flows.js";

const ip = parseIp;
const PODS = [
  { namespace: "default", name: "client", ips: [ip("10.244.0.2"), ip("fd00:10:244::2")] },
  { namespace: "web", name: "server-0", ips: [ip("10.244.1.5")] },
  // A host-network pod (an agent's, kube-proxy's) has its node's address: flows there are the node's.
  { namespace: "kube-system", name: "agent-x", ips: [ip("198.18.0.11")], hostNetwork: true },
];

let podsVersion = 1;
const context: FlowContext = {
  nodeName: "node1",
  ownPodCidrs: [parsePrefix("10.244.0.0/24"), parsePrefix("fd00:10:244::/64")],
  clusterPrefixes: () => [parsePrefix("10.244.0.0/16"), parsePrefix("10.96.0.0/16"), parsePrefix("fd00:10:244::/56")],
  pods: () => ({ version: podsVersion, pods: PODS }),
  nodes: () => [{ name: "node1", addresses: [ip("198.18.0.11")] }, { name: "node2", addresses: [ip("198.18.0.12")] }],
  services: () => ({ version: 1, ports: [{ namespace: "web", name: "front", protocol: "TCP", port: 80, nodePort: 30080, clusterIPs: [ip("10.96.0.10")], externalIPs: [], loadBalancerIPs: [] }] }),
};

/** One conntrack record through the recorder, as the reader hands it on (at an offset inside a larger chunk). */
function feed(recorder: FlowRecorder, kind: number, from: string, sport: number, to: string, dport: number, replyFrom = to, replySport = dport, protocol = 6, status = 0): void {
  const record = encodeConntrackRecord({ kind, protocol, from, sport, to, dport, replyFrom, replySport, packets: [5, 3], bytes: [274, 164], status, id: 1 });
  const chunk = Buffer.concat([Buffer.alloc(7), record]);
  recorder.conntrack(chunk, 7);
}

describe("flow records from conntrack and the logs", () => {
  const now = () => Date.parse("2026-12-08T10:00:00.000Z");

  // Catches a Service's translation lost (the reply tuple ignored), a NodePort not named as its
  // Service, counters on the wrong side, and the node's own traffic kept.
  it("names the pods, the Service and the translation, and leaves the node's own traffic out", () => {
    const recorder = new FlowRecorder(context, 16, now);
    feed(recorder, 1, "10.244.0.2", 40000, "10.96.0.10", 80, "10.244.1.5", 8080);
    feed(recorder, 3, "10.244.0.2", 40000, "10.96.0.10", 80, "10.244.1.5", 8080, 6, 1 << 1);
    feed(recorder, 1, "198.18.0.200", 5555, "198.18.0.11", 30080, "10.244.1.5", 8080);
    feed(recorder, 1, "198.18.0.11", 5000, "198.18.0.12", 2379);
    feed(recorder, 1, "10.244.1.5", 0, "10.244.0.2", 0, "10.244.0.2", 0, 1);
    const [clusterIp, closed, nodePort, icmp, ...rest] = recorder.ring.recent({});
    assert.deepEqual(rest, [], "node to node traffic left out");
    assert.deepEqual(clusterIp, {
      time: "2026-12-08T10:00:00.000Z", node: "node1", event: "new", verdict: "forwarded", protocol: "TCP",
      source: { address: "10.244.0.2", port: 40000, pod: "default/client" },
      destination: { address: "10.96.0.10", port: 80 },
      translated: { address: "10.244.1.5", port: 8080, pod: "web/server-0" },
      service: "web/front", direction: "egress",
    });
    assert.equal(closed.reason, "closed");
    assert.deepEqual(closed.counters, { packetsSent: 5, bytesSent: 274, packetsReceived: 3, bytesReceived: 164 });
    assert.equal(nodePort.service, "web/front");
    assert.deepEqual(nodePort.destination, { address: "198.18.0.11", port: 30080, node: "node1" }, "the node's, not its host-network pod's");
    assert.equal(nodePort.direction, undefined, "the endpoint is on another node");
    assert.deepEqual([icmp.protocol, icmp.source.port, icmp.direction, icmp.translated], ["ICMP", undefined, "ingress", undefined]);
    assert.match(recorder.metrics(), /^trellis_flows_total\{verdict="forwarded"\} 4$/m);
    assert.match(recorder.metrics(), /^trellis_flow_events_total\{event="new"\} 3$/m);
    assert.match(recorder.metrics(), /^trellis_flow_events_ignored_total 1$/m);
    // IPv6, and a lost record counted.
    feed(recorder, 2, "fd00:10:244::2", 1000, "fd00:10:244:1::9", 53, "fd00:10:244:1::9", 53, 17, 1 << 1);
    assert.deepEqual(recorder.ring.recent({}).at(-1)!.source, { address: "fd00:10:244::2", port: 1000, pod: "default/client" });
    const lost = Buffer.alloc(116);
    lost[0] = 255;
    recorder.conntrack(lost, 0);
    assert.match(recorder.metrics(), /^trellis_flow_events_lost_total 1$/m);
  });

  // Catches names taken when the record is read rather than when the flow was seen (a pod gone
  // since would lose its name, or a new pod at the address take it), and a ring slot reused
  // with the names of the record before.
  it("names a flow as the pods were when it was seen, across the ring's wrap", () => {
    const recorder = new FlowRecorder(context, 2, now);
    feed(recorder, 1, "10.244.0.2", 1, "10.244.1.5", 2);
    podsVersion++;
    const at = PODS.findIndex((pod) => pod.name === "server-0");
    const [saved] = PODS.splice(at, 1);
    try {
      assert.equal(recorder.ring.recent({})[0].destination.pod, "web/server-0");
      feed(recorder, 1, "10.244.0.2", 1, "10.244.1.5", 3);
      feed(recorder, 1, "10.244.0.2", 1, "10.244.1.5", 4);
      assert.deepEqual(recorder.ring.recent({}).map((flow) => [flow.destination.port, flow.destination.pod]), [[3, undefined], [4, undefined]]);
    } finally {
      PODS.splice(at, 0, saved);
      podsVersion++;
    }
  });

  it("records denials with their policy and refusals with their Service", () => {
    const recorder = new FlowRecorder(context, 16, now);
    recorder.denied({ protocol: 17, from: ip("10.244.0.2"), sport: 1234, to: ip("10.244.1.5"), dport: 53, direction: "Ingress", policy: "NetworkPolicy web/deny" });
    recorder.rejected({ protocol: 6, from: ip("10.244.0.2"), sport: 1235, to: ip("10.96.0.10"), dport: 80 });
    recorder.rejected({ protocol: 6, from: ip("10.244.0.2"), sport: 1236, to: ip("10.96.0.10"), dport: 81 });
    const [denied, rejected, noPort] = recorder.ring.recent({});
    assert.deepEqual([denied.verdict, denied.event, denied.reason, denied.policy, denied.destination.pod], ["denied", "denied", "ingress policy", "NetworkPolicy web/deny", "web/server-0"]);
    assert.deepEqual([rejected.verdict, rejected.reason, rejected.service], ["dropped", "no endpoints", "web/front"]);
    assert.deepEqual([noPort.reason, noPort.service], ["no such Service port", undefined]);
    assert.match(recorder.metrics(), /^trellis_flows_total\{verdict="dropped"\} 2$/m);
  });
});

describe("/flows", () => {
  const serve = (recorder: FlowRecorder) => {
    const handler = flowsHandler(recorder, () => undefined);
    const server = createServer((req, res) => handler(req, res, new URL(req.url!, "http://x").searchParams));
    return new Promise<{ port: number; close(): void }>((resolve) => server.listen(0, "127.0.0.1", () => resolve({ port: (server.address() as { port: number }).port, close: () => (server.closeAllConnections(), server.close()) })));
  };
  const get = (port: number, path: string) => new Promise<{ status: number; body: string }>((resolve, reject) => {
    request({ host: "127.0.0.1", port, path }, (res) => {
      let body = "";
      res.on("data", (chunk) => (body += chunk));
      res.on("end", () => resolve({ status: res.statusCode!, body }));
    }).on("error", reject).end();
  });

  // Catches unknown or repeated parameters taken silently, and a bad value answered with
  // anything but a 400 that names it.
  it("answers JSON lines by the filter, and 400 naming what is wrong", async () => {
    const recorder = new FlowRecorder(context, 16);
    recorder.denied({ protocol: 17, from: ip("10.244.0.2"), sport: 1, to: ip("10.244.1.5"), dport: 53, direction: "Ingress", policy: "NetworkPolicy web/deny" });
    feed(recorder, 1, "10.244.0.2", 40000, "10.96.0.10", 80, "10.244.1.5", 8080);
    const server = await serve(recorder);
    try {
      const all = await get(server.port, "/flows");
      assert.equal(all.status, 200);
      assert.equal(all.body.trim().split("\n").length, 2);
      const denied = await get(server.port, "/flows?verdict=denied&pod=web/server-0");
      assert.deepEqual(denied.body.trim().split("\n").map((line) => JSON.parse(line).policy), ["NetworkPolicy web/deny"]);
      assert.equal((await get(server.port, "/flows?limit=1")).body.trim().split("\n").length, 1);
      for (const [path, message] of [
        ["/flows?verdict=maybe", /^verdict "maybe" is not a verdict/],
        ["/flows?color=red", /^"color" is not a parameter of \/flows: expected pod, namespace, service, verdict, since, limit, follow/],
        ["/flows?pod=a/b&pod=c/d", /^pod is given more than once/],
        ["/flows?limit=0", /^limit "0" is not a number of records from 1/],
        ["/flows?follow=yes", /^follow "yes" is not true or false/],
        ["/flows?since=%0a", /^since "\\n" is not a duration/],
      ] as const) {
        const answer = await get(server.port, path);
        assert.equal(answer.status, 400, path);
        assert.match(answer.body, message, path);
      }
    } finally {
      server.close();
    }
  });

  // Catches an answer made whole from a ring of any size (a large --flow-buffer would stall the
  // agent and hold its whole ring as text at once).
  it("answers at most MAX_ANSWER records, the newest", async () => {
    const recorder = new FlowRecorder(context, MAX_ANSWER + 500);
    for (let i = 0; i < MAX_ANSWER + 200; i++) recorder.denied({ protocol: 6, from: ip("10.244.0.2"), sport: 1 + (i % 65000), to: ip("10.244.1.5"), dport: 80, direction: "Ingress", policy: `NetworkPolicy web/p${i}` });
    const server = await serve(recorder);
    try {
      const lines = (await get(server.port, "/flows")).body.trim().split("\n");
      assert.equal(lines.length, MAX_ANSWER);
      assert.equal(JSON.parse(lines.at(-1)!).policy, `NetworkPolicy web/p${MAX_ANSWER + 199}`);
      assert.equal((await get(server.port, `/flows?limit=${MAX_ANSWER * 2}`)).body.trim().split("\n").length, MAX_ANSWER);
    } finally {
      server.close();
    }
  });

  // Catches a follower that never reads growing the agent's memory without bound (records
  // queued forever), drops uncounted, and followers beyond the cap kept.
  it("holds at most its bound for a follower that does not read, and counts what it drops", async () => {
    const recorder = new FlowRecorder(context, 64);
    const server = await serve(recorder);
    const stalled = connect(server.port, "127.0.0.1");
    try {
      stalled.write("GET /flows?follow=true HTTP/1.1\r\nhost: x\r\n\r\n");
      stalled.pause();
      await new Promise((resolve) => setTimeout(resolve, 100));
      // Far more than the socket's buffers and the bound together.
      for (let i = 0; i < 60_000; i++) {
        feed(recorder, 1, "10.244.0.2", 1 + (i % 60000), "10.96.0.10", 80, "10.244.1.5", 8080);
        if (i % 5_000 === 0) await new Promise((resolve) => setImmediate(resolve));
      }
      await new Promise((resolve) => setTimeout(resolve, 200));
      assert.match(recorder.metrics(), /^trellis_flow_followers 1$/m);
      const dropped = Number(/^trellis_flow_follower_dropped_total (\d+)$/m.exec(recorder.metrics())![1]);
      assert.ok(dropped > 60_000 - FOLLOWER_BOUND * 20, `most records dropped for the stalled follower: ${dropped}`);
      // A follower that reads gets what comes.
      const lines: string[] = [];
      const reader = request({ host: "127.0.0.1", port: server.port, path: "/flows?follow=true&verdict=denied" }, (res) => res.on("data", (chunk: Buffer) => lines.push(...chunk.toString().split("\n").filter((line) => line.trim()))));
      reader.end();
      await new Promise((resolve) => setTimeout(resolve, 100));
      recorder.denied({ protocol: 6, from: ip("10.244.0.2"), sport: 9, to: ip("10.244.1.5"), dport: 80, direction: "Ingress", policy: "NetworkPolicy web/x" });
      await new Promise((resolve) => setTimeout(resolve, 100));
      assert.deepEqual(lines.map((line) => JSON.parse(line).policy), ["NetworkPolicy web/x"]);
      reader.destroy();
    } finally {
      stalled.destroy();
      server.close();
    }
  });
});
