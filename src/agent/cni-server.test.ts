import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { createConnection, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import type { PodNetSource } from "../cni/plugin.js";
import { startCniServer, type CniServer, type CniServerLimits } from "./cni-server.js";

const quiet = () => undefined;
const noPods: PodNetSource = {
  acquire() {
    throw new Error("no pod calls in these tests");
  },
  release: () => undefined,
};

function framed(body: string): Buffer {
  const size = Buffer.alloc(4);
  size.writeUInt32BE(Buffer.byteLength(body));
  return Buffer.concat([size, Buffer.from(body)]);
}

const VERSION_CALL = framed(JSON.stringify({ env: { CNI_COMMAND: "VERSION" }, stdin: '{"cniVersion":"1.1.0"}' }));

/** A client on the socket; `reply` settles with what it got (its JSON body, or "" for none) when the server closes it. */
function client(path: string, options: { allowHalfOpen?: boolean }) {
  const socket: Socket = createConnection({ path, allowHalfOpen: options.allowHalfOpen ?? false });
  const chunks: Buffer[] = [];
  socket.on("data", (chunk: Buffer) => chunks.push(chunk));
  socket.on("error", () => undefined);
  const reply = new Promise<string>((resolve) => socket.once("close", () => resolve(Buffer.concat(chunks).subarray(4).toString("utf8"))));
  const connected = new Promise<void>((resolve) => socket.once("connect", () => resolve()));
  return { socket, reply, connected, closed: () => socket.destroyed };
}

const within = <T>(promise: Promise<T>, ms: number, what: string) =>
  Promise.race([promise, new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms).unref())]);

describe("the agent's CNI socket under hostile clients", () => {
  const dir = mkdtempSync(join(tmpdir(), "trellis-cni-server-"));
  const servers: CniServer[] = [];
  const sockets: Socket[] = [];
  let count = 0;
  const start = async (limits: Partial<CniServerLimits>) => {
    const server = await startCniServer(join(dir, `cni-${count++}.sock`), noPods, () => undefined, quiet, { maxConnections: 1_024, requestTimeoutMs: 10_000, answeredLingerMs: 5_000, ...limits });
    servers.push(server);
    return server;
  };
  const open = (path: string, options: { allowHalfOpen?: boolean } = {}) => {
    const made = client(path, options);
    sockets.push(made.socket);
    return made;
  };
  after(async () => {
    for (const socket of sockets) socket.destroy();
    for (const server of servers) await server.close();
    rmSync(dir, { recursive: true, force: true });
  });

  // Bug caught: connections without bound (each a descriptor of the agent), so that a flood of
  // idle ones runs the agent out of them; and the socket not serving again once they are gone.
  test("holds at most its cap of connections, closing those beyond at once, and serves again once the idle ones expire", async () => {
    const server = await start({ maxConnections: 20, requestTimeoutMs: 500 });
    const idle = Array.from({ length: 60 }, () => open(server.path));
    await Promise.all(idle.map((one) => one.connected));
    await new Promise((resolve) => setTimeout(resolve, 200));
    const closed = idle.filter((one) => one.closed()).length;
    assert.equal(closed, 40, "those beyond the cap are closed, the others held");
    const replies = await within(Promise.all(idle.map((one) => one.reply)), 5_000, "the held ones are let go");
    assert.equal(replies.filter((reply) => /did not arrive whole within 0\.5 s of connecting/.test(reply)).length, 20);
    const call = open(server.path);
    call.socket.write(VERSION_CALL);
    assert.match(JSON.parse(await call.reply).stdout, /supportedVersions/);
  });

  // Bug caught: the request timeout was one of inactivity, so a client sending a byte now and
  // then held its connection (and a descriptor) for ever.
  test("cuts off a client that sends its request a byte at a time at the deadline from connecting", async () => {
    const server = await start({ requestTimeoutMs: 500 });
    const slow = open(server.path);
    await slow.connected;
    slow.socket.write(framed("x".repeat(100)).subarray(0, 4));
    const drip = setInterval(() => slow.socket.write("x"), 100);
    try {
      const reply = await within(slow.reply, 5_000, "cut off");
      assert.match(reply, /did not arrive whole within 0\.5 s of connecting/);
    } finally {
      clearInterval(drip);
    }
  });

  // Bug caught: an answered client that never closed its end kept the connection (and a
  // descriptor of the agent) for ever.
  test("disconnects an answered client that keeps its end open", async () => {
    const server = await start({ answeredLingerMs: 300 });
    const lingering = open(server.path, { allowHalfOpen: true });
    const answered = new Promise<void>((resolve) => lingering.socket.once("end", () => resolve()));
    lingering.socket.write(VERSION_CALL);
    await within(answered, 5_000, "answered");
    await new Promise((resolve) => setTimeout(resolve, 1_000));
    // Its end still open, the client finds the agent's gone: a write fails.
    const written = await new Promise<string>((resolve) => {
      lingering.socket.once("error", (error: NodeJS.ErrnoException) => resolve(error.code ?? String(error)));
      lingering.socket.write("more", (error) => resolve(error ? ((error as NodeJS.ErrnoException).code ?? String(error)) : "written"));
    });
    assert.equal(written, "EPIPE");
  });

  // Bug caught: closing the socket waited for every client, so stalled ones held the agent's
  // shutdown.
  test("close does not wait for stalled clients", async () => {
    const server = await start({});
    const stalled = Array.from({ length: 6 }, () => open(server.path));
    await Promise.all(stalled.map((one) => one.connected));
    for (const [i, one] of stalled.entries()) if (i % 2) one.socket.write(Buffer.from([0, 0]));
    await new Promise((resolve) => setTimeout(resolve, 100));
    await within(server.close(), 2_000, "closed");
    await within(Promise.all(stalled.map((one) => one.reply)), 2_000, "the stalled clients let go");
  });
});
