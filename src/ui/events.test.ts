import assert from "node:assert/strict";
import type { ServerResponse } from "node:http";
import { Writable } from "node:stream";
import { describe, it } from "node:test";
import { EventClient, sseFrame } from "./events.js";

/** Events as a browser's EventSource reads a stream (the parts of the spec the server uses). */
function parseEvents(stream: string): Array<{ event: string; data: string }> {
  const events: Array<{ event: string; data: string }> = [];
  for (const block of stream.split(/\r\n\r\n|\n\n|\r\r/)) {
    let event = "message";
    const data: string[] = [];
    for (const line of block.split(/\r\n|\r|\n/)) {
      if (line === "" || line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
      if (field === "event") event = value;
      if (field === "data") data.push(value);
    }
    if (data.length) events.push({ event, data: data.join("\n") });
  }
  return events;
}

/** A response whose client reads nothing until `release`: what it was sent stays in its buffer, as Node buffers for a socket that does not drain. */
function stalledResponse(): { response: ServerResponse; release(): void; written: string[] } {
  const held: Array<() => void> = [];
  const written: string[] = [];
  let flowing = false;
  const stream = new Writable({
    highWaterMark: 16 * 1024,
    write(chunk: Buffer, _encoding, callback) {
      written.push(chunk.toString("utf8"));
      if (flowing) callback();
      else held.push(callback);
    },
  });
  const release = () => {
    flowing = true;
    for (const callback of held.splice(0)) callback();
  };
  return { response: stream as unknown as ServerResponse, release, written };
}

describe("server-sent events", () => {
  it("frames each event as one event, whatever its data holds", () => {
    // Catches: a pod or policy name with a line break ending the data field early, so that the
    // rest of it is read as a field or an event of its own (a forged event from tenant input).
    const hostile = { name: "x\n\nevent: snapshot\ndata: {}\r\rdata: y\r\n" };
    const frame = sseFrame("edges", hostile);
    const events = parseEvents(frame);
    assert.equal(events.length, 1);
    assert.equal(events[0].event, "edges");
    assert.deepEqual(JSON.parse(events[0].data), hostile);
    assert.ok(frame.endsWith("\n\n"), "the frame ends the event");
    assert.equal(frame.split("\n").filter((line) => line.startsWith("data:")).length, 1);
  });

  it("refuses an event name that is not one the page knows", () => {
    assert.throws(() => sseFrame("edges\ndata: x" as "edges", {}), /event name/);
  });

  it("a client that reads nothing holds at most the bound plus one event; once it reads again it gets a snapshot", () => {
    // Catches: a stalled browser tab (or a client that connects and never reads) growing the
    // server's memory by every event sent to it, without end; and a client that fell behind left
    // with a map that misses the edges it was not sent.
    const { response, release, written } = stalledResponse();
    const bound = 64 * 1024;
    let snapshots = 0;
    const client = new EventClient(response, bound, () => sseFrame("snapshot", { n: ++snapshots }));
    const event = sseFrame("edges", { changed: [{ id: "x".repeat(10_000) }], removed: [] });
    for (let i = 0; i < 1000; i++) client.send(event);
    const stats = client.stats();
    assert.ok(stats.buffered <= bound + Buffer.byteLength(event), `buffered ${stats.buffered} bytes, bound ${bound}`);
    assert.ok(stats.dropped >= 990, `dropped ${stats.dropped}`);
    assert.equal(stats.stale, true);
    assert.equal(client.poll(60_000), false);
    assert.equal(client.stats().stale, true, "still behind, it stays stale");
    release();
    assert.equal(client.poll(60_000), false);
    assert.equal(client.stats().stale, false, "drained, it is right again");
    assert.equal(snapshots, 1);
    assert.deepEqual(parseEvents(written.at(-1)!).map((each) => each.event), ["snapshot"]);
    assert.equal(client.send(event), true);
    assert.equal(client.stats().dropped, stats.dropped, "events flow again");
  });

  it("a client behind for longer than allowed is closed", () => {
    // Catches: a client that never reads again keeping its connection (and buffer) for ever.
    const { response } = stalledResponse();
    let now = 0;
    let destroyed = false;
    (response as unknown as { destroy(): void }).destroy = () => (destroyed = true);
    const client = new EventClient(response, 1024, () => "", () => now);
    const event = sseFrame("edges", { pad: "x".repeat(4000) });
    client.send(event);
    client.send(event);
    assert.equal(client.stats().stale, true);
    now = 29_999;
    assert.equal(client.poll(30_000), false);
    now = 30_000;
    assert.equal(client.poll(30_000), true);
    assert.equal(destroyed, true);
    assert.equal(client.send(event), false, "a closed client takes nothing more");
  });

  it("takes one event larger than the bound when nothing waits", () => {
    // Catches: a snapshot of a large cluster never reaching a client that keeps up.
    const { response, release } = stalledResponse();
    release();
    const client = new EventClient(response, 1024, () => "");
    client.send(sseFrame("snapshot", { pad: "x".repeat(100_000) }));
    assert.equal(client.stats().dropped, 0);
  });
});
