import assert from "node:assert/strict";
import { request, type IncomingHttpHeaders } from "node:http";
import { connect, type Socket } from "node:net";
import { after, describe, it } from "node:test";
import type { FlowRecord } from "../flows/record.js";
import { edgeId } from "./flow-window.js";
import type { EdgesEvent, FlowsAnswer, SnapshotEvent, UiStatus } from "./protocol.js";
import { startUiServer, type UiServer, type UiServerOptions } from "./server.js";
import type { UiSource, UiTopology } from "./topology.js";

const TOPOLOGY: UiTopology = {
  title: "lab <script>alert(1)</script>",
  nodes: [
    { name: "node1", addresses: ["198.18.0.11"], podCidrs: ["10.244.1.0/24"], mode: "auto" },
    { name: "node2", addresses: ["198.18.0.12"], podCidrs: ["10.244.2.0/24"], mode: "auto" },
  ],
  pods: [
    { namespace: "default", name: "node1-pod0", node: "node1", addresses: ["10.244.1.2"] },
    { namespace: "default", name: "node2-pod0", node: "node2", addresses: ["10.244.2.2"] },
  ],
  services: [],
  hosts: [],
};
const EDGE = edgeId("pod:default/node1-pod0", "pod:default/node2-pod0", "forwarded");
const DENIED_EDGE = edgeId("pod:default/node1-pod0", "pod:default/node2-pod0", "denied");

function record(overrides: Partial<FlowRecord> = {}): FlowRecord {
  return {
    time: new Date().toISOString(),
    node: "node1",
    event: "new",
    verdict: "forwarded",
    protocol: "TCP",
    source: { address: "10.244.1.2", port: 40000, pod: "default/node1-pod0" },
    destination: { address: "10.244.2.2", port: 7777, pod: "default/node2-pod0" },
    ...overrides,
  };
}

interface FakeSource {
  source: UiSource;
  onRecord: (record: FlowRecord) => void;
  onProblem: (node: string, message: string) => void;
  following: boolean;
}

/** A source the test drives: its topology, and the records and problems it hands on. */
function fakeSource(topology: () => UiTopology = () => TOPOLOGY): FakeSource {
  const fake: FakeSource = {
    onRecord: () => undefined,
    onProblem: () => undefined,
    following: false,
    source: {
      topology: async () => topology(),
      follow(onRecord, onProblem) {
        fake.onRecord = onRecord;
        fake.onProblem = onProblem;
        fake.following = true;
        return { stop: () => (fake.following = false) };
      },
    },
  };
  return fake;
}

const servers: UiServer[] = [];
after(() => Promise.all(servers.map((server) => server.close())));

async function serve(source: UiSource, options: Partial<UiServerOptions> = {}): Promise<UiServer> {
  const server = await startUiServer({ listen: { host: "127.0.0.1", port: 0, loopback: true }, source, tickMs: 20, ...options });
  servers.push(server);
  return server;
}

function fetchText(server: UiServer, path: string, init: { method?: string; host?: string } = {}): Promise<{ status: number; headers: IncomingHttpHeaders; body: string }> {
  return new Promise((resolve, reject) => {
    const call = request({ host: "127.0.0.1", port: server.port, path, method: init.method ?? "GET", headers: { host: init.host ?? `127.0.0.1:${server.port}` } }, (response) => {
      let body = "";
      response.setEncoding("utf8");
      response.on("data", (chunk: string) => (body += chunk));
      response.on("end", () => resolve({ status: response.statusCode!, headers: response.headers, body }));
    });
    call.on("error", reject);
    call.end();
  });
}

/** Follows /events, parsing as EventSource does; `next` waits for the first event after the last taken that passes `wanted`. */
function followEvents(server: UiServer) {
  const events: Array<{ event: string; data: unknown }> = [];
  let buffer = "";
  let taken = 0;
  const call = request({ host: "127.0.0.1", port: server.port, path: "/events", headers: { host: `127.0.0.1:${server.port}` } }, (response) => {
    response.setEncoding("utf8");
    response.on("data", (chunk: string) => {
      buffer += chunk;
      let end: number;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const event = /^event: (.*)$/m.exec(block)?.[1];
        const data = [...block.matchAll(/^data: (.*)$/gm)].map((match) => match[1]).join("\n");
        if (event) events.push({ event, data: JSON.parse(data) });
      }
    });
  });
  call.on("error", () => undefined);
  call.end();
  return {
    async next<T>(event: string, wanted: (data: T) => boolean = () => true, timeoutMs = 3000): Promise<T> {
      const started = Date.now();
      for (;;) {
        while (taken < events.length) {
          const candidate = events[taken++];
          if (candidate.event === event && wanted(candidate.data as T)) return candidate.data as T;
        }
        if (Date.now() - started > timeoutMs) throw new Error(`no ${event} event within ${timeoutMs} ms; had ${events.map((each) => each.event).join(", ")}`);
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
    },
    close: () => call.destroy(),
  };
}

async function until(what: string, condition: () => boolean, timeoutMs = 5000): Promise<void> {
  const started = Date.now();
  while (!condition()) {
    if (Date.now() - started > timeoutMs) throw new Error(`${what}: not within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

describe("the flow map's server", () => {
  it("serves the page with the title escaped, a script of its own and nothing from elsewhere", async () => {
    // Catches: a lab or store name (chosen by whoever made it) put into the page as markup, and
    // a page that loads anything from another origin (there is no network to reach it).
    const server = await serve(fakeSource().source);
    const page = await fetchText(server, "/");
    assert.equal(page.status, 200);
    assert.match(String(page.headers["content-type"]), /^text\/html/);
    assert.ok(page.body.includes("lab &lt;script&gt;alert(1)&lt;/script&gt;"), page.body);
    assert.ok(!page.body.includes("<script>alert"), "no markup from data");
    assert.deepEqual([...page.body.matchAll(/(?:src|href)="([^"]*)"/g)].map((match) => match[1]), ["data:,", "/app.css", "/app.js"]);
    assert.match(String(page.headers["content-security-policy"]), /default-src 'none'; script-src 'self';/);
    assert.equal(page.headers["x-content-type-options"], "nosniff");
    const script = await fetchText(server, "/app.js");
    assert.equal(script.status, 200);
    assert.match(String(script.headers["content-type"]), /^text\/javascript/);
    assert.ok(script.body.length > 100_000 && script.body.includes("cytoscape"), "the page's script with cytoscape in it");
    assert.ok(!/\bimport\s*\(|\bimport\s+[\w{*]/.test(script.body.slice(0, 2000)), "one bundled script, loading no module");
    const css = await fetchText(server, "/app.css");
    assert.match(String(css.headers["content-type"]), /^text\/css/);
  });

  it("answers HEAD with the headers alone and refuses every other method", async () => {
    // Catches: a server that takes writes (it is read-only), or HEAD answered with a body.
    const server = await serve(fakeSource().source);
    const head = await fetchText(server, "/", { method: "HEAD" });
    assert.equal(head.status, 200);
    assert.equal(head.body, "");
    assert.ok(Number(head.headers["content-length"]) > 100);
    const events = await fetchText(server, "/events", { method: "HEAD" });
    assert.equal(events.status, 200);
    assert.match(String(events.headers["content-type"]), /^text\/event-stream/);
    for (const method of ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"]) {
      const refused = await fetchText(server, "/", { method });
      assert.equal(refused.status, 405, method);
      assert.equal(refused.headers.allow, "GET, HEAD");
      assert.match(refused.body, new RegExp(`${method} is not served: only GET and HEAD`));
    }
    assert.equal((await fetchText(server, "/nothing")).status, 404);
  });

  it("on loopback, answers only requests for a loopback host", async () => {
    // Catches: a web page elsewhere reading the cluster's flows through a name it rebinds to
    // 127.0.0.1 (DNS rebinding), which the browser would let it do for its own origin.
    const server = await serve(fakeSource().source);
    assert.equal((await fetchText(server, "/api/topology", { host: `attacker.example:${server.port}` })).status, 421);
    assert.equal((await fetchText(server, "/api/topology", { host: `localhost:${server.port}` })).status, 200);
    assert.equal((await fetchText(server, "/api/topology", { host: `[::1]:${server.port}` })).status, 200);
  });

  it("streams a snapshot, then the edges that change, and what the agents' problems are", async () => {
    // Catches: a page that never updates after it loaded, edges sent without their verdict or
    // policy, or an agent that cannot be reached not said (or still said once it answers again).
    const fake = fakeSource();
    const server = await serve(fake.source);
    const events = followEvents(server);
    const snapshot = await events.next<SnapshotEvent>("snapshot");
    assert.equal(snapshot.topology.pods.length, 2);
    assert.deepEqual(snapshot.edges, []);
    fake.onRecord(record());
    const added = await events.next<EdgesEvent>("edges");
    assert.deepEqual(added.changed.map((edge) => [edge.id, edge.verdict, edge.connections]), [[EDGE, "forwarded", 1]]);
    fake.onRecord(record({ node: "node2", event: "denied", verdict: "denied", policy: "NetworkPolicy default/deny-all", reason: "ingress", source: { address: "10.244.1.2", port: 40001 } }));
    const denied = await events.next<EdgesEvent>("edges");
    assert.deepEqual(denied.changed.map((edge) => [edge.id, edge.policies]), [[DENIED_EDGE, ["NetworkPolicy default/deny-all"]]]);
    fake.onProblem("node2", "cannot reach its agent: connection refused");
    const problem = await events.next<UiStatus>("status", (status) => status.problems.length > 0);
    assert.deepEqual(problem.problems.map(({ node, message }) => [node, message]), [["node2", "cannot reach its agent: connection refused"]]);
    fake.onRecord(record({ node: "node2", source: { address: "10.244.1.2", port: 40002 } }));
    await events.next<UiStatus>("status", (status) => status.problems.length === 0);
    events.close();
  });

  it("sends a new snapshot when the topology changes", async () => {
    // Catches: a pod added to the cluster never appearing on an open page.
    let topology = TOPOLOGY;
    const server = await serve(fakeSource(() => topology).source, { topologyIntervalMs: 20 });
    const events = followEvents(server);
    await events.next<SnapshotEvent>("snapshot");
    topology = { ...TOPOLOGY, pods: [...TOPOLOGY.pods, { namespace: "default", name: "node2-pod1", node: "node2", addresses: ["10.244.2.3"] }] };
    const next = await events.next<SnapshotEvent>("snapshot");
    assert.equal(next.topology.pods.length, 3);
    events.close();
  });

  it("answers the flows of an edge or an entity, with their policies; a bad question says what is allowed", async () => {
    // Catches: a click on an edge or pod that shows nothing, or not the policy that decided.
    const fake = fakeSource();
    const server = await serve(fake.source);
    fake.onRecord(record());
    fake.onRecord(record({ node: "node2", event: "denied", verdict: "denied", policy: "NetworkPolicy default/deny-all", reason: "ingress", source: { address: "10.244.1.2", port: 40001 } }));
    const byEdge = JSON.parse((await fetchText(server, `/api/flows?edge=${encodeURIComponent(DENIED_EDGE)}`)).body) as FlowsAnswer;
    assert.deepEqual(byEdge.connections.map((connection) => [connection.verdict, connection.records[0].policy]), [["denied", "NetworkPolicy default/deny-all"]]);
    const byPod = JSON.parse((await fetchText(server, `/api/flows?entity=${encodeURIComponent("pod:default/node2-pod0")}`)).body) as FlowsAnswer;
    assert.equal(byPod.connections.length, 2);
    assert.equal(byPod.truncated, false);
    const unknown = await fetchText(server, "/api/flows?pod=x");
    assert.equal(unknown.status, 400);
    assert.equal(unknown.body, 'unknown query parameter "pod": expected edge=ID or entity=ID\n');
    assert.equal((await fetchText(server, "/api/flows")).status, 400);
    assert.equal((await fetchText(server, "/api/flows?edge=a&entity=b")).status, 400);
  });

  it("a client that never reads holds at most its bound, is made right by a snapshot once it reads, and is closed when it stays behind", async () => {
    // Catches: an open tab in the background (or a client that connects and reads nothing)
    // growing the server's memory with every event; a client that fell behind never shown
    // what it missed; and one that never reads again holding its connection for ever.
    const bound = 256 * 1024;
    let generation = 0;
    // A topology that changes at every read: a 300 kB snapshot to every client 50 times a second.
    const big = () => ({ ...TOPOLOGY, title: `lab big ${++generation}`, pods: Array.from({ length: 2000 }, (_, i) => ({ namespace: "default", name: `pod-${i}-${"x".repeat(100)}`, node: "node1", addresses: [`10.244.${i >> 8}.${i & 255}`] })) });
    const server = await serve(fakeSource(big).source, { topologyIntervalMs: 20, clientBufferBytes: bound, staleCloseMs: 60_000 });
    const snapshotBytes = Buffer.byteLength(JSON.stringify(big())) + 1000;
    const socket: Socket = connect(server.port, "127.0.0.1");
    await new Promise((resolve) => socket.once("connect", resolve));
    socket.write(`GET /events HTTP/1.1\r\nHost: 127.0.0.1:${server.port}\r\n\r\n`);
    socket.pause();
    // Until the kernel's buffers are full and the server has had to drop.
    await until("the server drops events for the client", () => (server.stats().clients[0]?.dropped ?? 0) > 20, 30_000);
    for (let i = 0; i < 20; i++) {
      const [client] = server.stats().clients;
      assert.ok(client.buffered <= bound + snapshotBytes, `buffered ${client.buffered} bytes; bound ${bound} + one snapshot ${snapshotBytes}`);
      await new Promise((resolve) => setTimeout(resolve, 25));
    }
    assert.ok(server.stats().clients[0].stale);
    // Reading again, it catches up with a snapshot.
    socket.resume();
    socket.on("data", () => undefined);
    await until("the client is right again", () => server.stats().clients[0]?.stale === false, 10_000);
    socket.destroy();
  });

  it("closes a client behind for longer than allowed, and the oldest when too many follow", async () => {
    // Catches: stalled clients keeping their connections for ever, or a burst of tabs holding
    // more connections than the server means to keep.
    const fake = fakeSource();
    const server = await serve(fake.source, { clientBufferBytes: 1024, staleCloseMs: 200, maxEventClients: 2 });
    const first = followEvents(server);
    await first.next("snapshot");
    const second = followEvents(server);
    await second.next("snapshot");
    const third = followEvents(server);
    await third.next("snapshot");
    await until("the oldest client is closed", () => server.stats().clients.length === 2 && server.stats().closedClients === 1);
    first.close();
    second.close();
    third.close();
    await until("the clients are gone", () => server.stats().clients.length === 0);

    const socket = connect(server.port, "127.0.0.1");
    await new Promise((resolve) => socket.once("connect", resolve));
    socket.write(`GET /events HTTP/1.1\r\nHost: 127.0.0.1:${server.port}\r\n\r\n`);
    socket.pause();
    const closed = new Promise((resolve) => socket.once("close", resolve));
    // Many edges, so that the events outrun what the kernel holds for the socket.
    for (let round = 0; server.stats().closedClients < 2; round++) {
      for (let i = 0; i < 500; i++) fake.onRecord(record({ source: { address: `192.0.2.${i % 250}`, port: round * 1000 + i }, destination: { address: "10.244.2.2", port: 7000 + (i % 500) } }));
      await new Promise((resolve) => setTimeout(resolve, 5));
      if (round > 4000) assert.fail("the stalled client was never closed");
    }
    socket.resume();
    await closed;
  });

  it("holds at most 256 connections at once, and still serves once a flood has gone", async () => {
    // Catches: a local client opening connections without end holding the server's descriptors.
    const server = await serve(fakeSource().source);
    const sockets = Array.from({ length: 300 }, () => connect(server.port, "127.0.0.1"));
    const closed = await Promise.all(sockets.map((socket) => new Promise<boolean>((resolve) => {
      socket.on("error", () => resolve(true));
      socket.on("close", () => resolve(true));
      setTimeout(() => resolve(false), 1_000);
    })));
    assert.equal(closed.filter(Boolean).length, 300 - 256, "the ones past the cap closed at once");
    for (const socket of sockets) socket.destroy();
    await new Promise((resolve) => setTimeout(resolve, 100));
    assert.equal((await fetchText(server, "/api/topology")).status, 200);
  });

  it("stops following the agents when closed", async () => {
    // Catches: `trellis ui` leaving its agents' followers (processes in the nodes' namespaces) behind.
    const fake = fakeSource();
    const server = await startUiServer({ listen: { host: "127.0.0.1", port: 0, loopback: true }, source: fake.source });
    assert.equal(fake.following, true);
    await server.close();
    assert.equal(fake.following, false);
  });

  it("names the address when it cannot listen", async () => {
    const server = await serve(fakeSource().source);
    await assert.rejects(startUiServer({ listen: { host: "127.0.0.1", port: server.port, loopback: true }, source: fakeSource().source }), new RegExp(`cannot serve the flow map on http://127.0.0.1:${server.port}/: the port is taken`));
  });
});
