import assert from "node:assert/strict";
import { request, type Server } from "node:http";
import type { AddressInfo, Socket } from "node:net";
import { after, describe, test } from "node:test";
import { stalledClient } from "../../test/support/connection-flood.js";
import { closeNow, connectionCap, connectionCounts, createLimitedHttpServer, listen, type ConnectionCap } from "./connection-limits.js";

const quiet = () => undefined;
const servers: Server[] = [];
const clients: Socket[] = [];

async function serve(caps: ConnectionCap[], lifetimeMs = 60_000) {
  const counts = connectionCounts();
  const server = createLimitedHttpServer({ caps, lifetimeMs, counts, what: "test server", log: quiet }, (_request, response) => {
    response.writeHead(200, { connection: "close" });
    response.end("ok");
  });
  servers.push(server);
  await listen(server, 0, "127.0.0.1", { what: "test server", log: quiet });
  return { server, counts, port: (server.address() as AddressInfo).port };
}

/** A client that connects, sends `payload` and then nothing more; `closed` settles when the server closes it. */
const stall = (port: number, payload = "") => stalledClient(port, clients, payload);

function get(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = request({ host: "127.0.0.1", port, path: "/" }, (response) => {
      let body = "";
      response.on("data", (chunk: Buffer) => (body += chunk.toString()));
      response.on("end", () => resolve(`${response.statusCode} ${body}`));
    });
    req.setTimeout(5_000, () => req.destroy(new Error("no answer within 5 s")));
    req.on("error", reject);
    req.end();
  });
}

const within = <T>(promise: Promise<T>, ms: number, what: string) =>
  Promise.race([promise, new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms).unref())]);

/** Lets the server's side see what the clients did (accepts, data) before looking at it. */
const settle = () => new Promise((resolve) => setTimeout(resolve, 100));

const HALF_HEADER = "GET / HTTP/1.1\r\nHost: x\r\n";

describe("the agent's connection limits", () => {
  after(() => {
    for (const client of clients) client.destroy();
    for (const server of servers) closeNow(server);
  });

  // Bug caught: a connection that sends nothing, or half a header, held for as long as its
  // client likes (Node times out headers only every connectionsCheckingInterval, and a silent
  // connection by no timeout of its own).
  test("closes a silent connection and one stalled half-way through a header at the end of their lifetime", async () => {
    const { port, counts } = await serve([connectionCap(10)], 300);
    const silent = await stall(port);
    const half = await stall(port, HALF_HEADER);
    await within(Promise.all([silent.closed, half.closed]), 5_000, "both closed");
    assert.equal(counts.expired, 2);
  });

  // Bug caught: connections without bound (each a descriptor of the agent), or a full cap
  // refusing the probe that came last, for as long as the flood holds it.
  test("at its cap, closes the oldest connection for a new one; the newest is answered", async () => {
    const cap = connectionCap(5);
    const { port, counts } = await serve([cap]);
    const idle = [];
    for (let i = 0; i < 8; i++) idle.push(await stall(port));
    await settle();
    assert.deepEqual(idle.map((client) => client.isClosed()), [true, true, true, false, false, false, false, false]);
    assert.equal(cap.sockets.size, 5);
    assert.equal(await get(port), "200 ok");
    assert.equal(counts.dropped, 4);
    assert.ok(idle[3].isClosed(), "the oldest idle one made room for the request");
  });

  // Bug caught: a cap per server only, so that many servers together hold without bound.
  test("a cap shared by two servers holds their connections together", async () => {
    const shared = connectionCap(4);
    const one = await serve([connectionCap(10), shared]);
    const two = await serve([connectionCap(10), shared]);
    const clientsOfOne = [await stall(one.port), await stall(one.port), await stall(one.port)];
    await settle();
    const clientsOfTwo = [await stall(two.port), await stall(two.port)];
    await settle();
    assert.equal(shared.sockets.size, 4);
    assert.deepEqual(clientsOfOne.map((client) => client.isClosed()), [true, false, false]);
    assert.deepEqual(clientsOfTwo.map((client) => client.isClosed()), [false, false]);
  });

  // Bug caught: closing a server waited for its clients (server.close() waits for every open
  // connection and no longer times out their headers), holding whatever awaited the close.
  test("closeNow closes the server and its stalled connections at once", async () => {
    const { server, port } = await serve([connectionCap(10)]);
    const stalled = await Promise.all(Array.from({ length: 5 }, (_, i) => stall(port, i % 2 ? HALF_HEADER : "")));
    await settle();
    const closed = new Promise<void>((resolve) => server.once("close", () => resolve()));
    closeNow(server);
    await within(Promise.all([closed, ...stalled.map((client) => client.closed)]), 2_000, "the server and its clients closed");
    await assert.rejects(get(port), /ECONNREFUSED/);
  });
});
