import assert from "node:assert/strict";
import { request } from "node:http";
import { createServer, type AddressInfo, type Socket } from "node:net";
import { after, describe, test } from "node:test";
import { stalledClient } from "../../test/support/connection-flood.js";
import { startHealthCheckServers, type HealthCheckServers } from "./health-checks.js";

const quiet = () => undefined;
const clients: Socket[] = [];
const running: HealthCheckServers[] = [];

/** A port free on loopback now. */
async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", () => resolve()));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

function get(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = request({ host: "127.0.0.1", port, path: "/healthz" }, (response) => {
      let body = "";
      response.on("data", (chunk: Buffer) => (body += chunk.toString()));
      response.on("end", () => resolve(`${response.statusCode} ${body.trim()}`));
    });
    req.setTimeout(5_000, () => req.destroy(new Error("no answer within 5 s")));
    req.on("error", reject);
    req.end();
  });
}

/** A client that connects, sends `payload` and then nothing more; `closed` settles when the server closes it. */
const stall = (port: number, payload = "") => stalledClient(port, clients, payload);

describe("health check servers", () => {
  after(async () => {
    for (const client of clients) client.destroy();
    for (const servers of running) await servers.update(new Map());
  });

  // Bug caught (hostile-client review, 6): `update` awaited server.close(), which waits for
  // every client: five stalled half-way through a request header held the Service proxy's sync
  // (which awaits `update`) for as long as they stayed.
  test("closing a port never waits for its clients: five stalled ones are disconnected, the port refuses", async () => {
    const servers = startHealthCheckServers({ log: quiet, host: "127.0.0.1" });
    running.push(servers);
    const port = await freePort();
    await servers.update(new Map([[port, { namespace: "default", name: "lb", localEndpoints: 2 }]]));
    assert.equal(await get(port), '200 {"service":{"namespace":"default","name":"lb"},"localEndpoints":2,"serviceProxyHealthy":true}');
    const stalled = await Promise.all(Array.from({ length: 5 }, () => stall(port, "GET /healthz HTTP/1.1\r\nHost: node\r\n")));
    await new Promise((resolve) => setTimeout(resolve, 100));
    const update = servers.update(new Map());
    const outcome = await Promise.race([update.then(() => "closed"), new Promise((resolve) => setTimeout(() => resolve("still waiting after 2 s"), 2_000).unref())]);
    assert.equal(outcome, "closed");
    await Promise.all(stalled.map((client) => client.closed));
    await assert.rejects(get(port), /ECONNREFUSED/);
  });

  // Bug caught: a changed count not served (the old server kept, its check not updated), or a
  // port that cannot be bound failing the others.
  test("answers 503 once no endpoint is local, and serves the other ports when one cannot be bound", async () => {
    const servers = startHealthCheckServers({ log: quiet, host: "127.0.0.1" });
    running.push(servers);
    const [port, taken] = [await freePort(), await freePort()];
    const holder = createServer();
    await new Promise<void>((resolve) => holder.listen(taken, "127.0.0.1", () => resolve()));
    try {
      await servers.update(new Map([[port, { namespace: "default", name: "lb", localEndpoints: 1 }], [taken, { namespace: "default", name: "other", localEndpoints: 1 }]]));
      assert.match(await get(port), /^200 /);
      await servers.update(new Map([[port, { namespace: "default", name: "lb", localEndpoints: 0 }]]));
      assert.equal(await get(port), '503 {"service":{"namespace":"default","name":"lb"},"localEndpoints":0,"serviceProxyHealthy":true}');
      assert.match(servers.metrics(), /^trellis_health_check_ports 1$/m);
    } finally {
      holder.close();
    }
  });
});
