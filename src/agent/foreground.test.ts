import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { encodeBatchSliced } from "../nft/netlink.js";
import { Foreground } from "./foreground.js";

const tick = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe("the foreground (CNI requests before the proxy's slices)", () => {
  it("lets background work go on at the next turn while no request is in progress", async () => {
    const foreground = new Foreground(1_000);
    const started = performance.now();
    await foreground.pause();
    assert.ok(performance.now() - started < 50);
  });

  it("holds background work while a request is in progress and lets it go once the request is answered", async () => {
    // Catches: a full write's slices running between the round trips of a pod's ADD (each of them
    // waiting a slice), or a slice held after the request is over.
    const foreground = new Foreground(10_000);
    const end = foreground.begin();
    let resumed = false;
    const paused = foreground.pause().then(() => (resumed = true));
    await tick(30);
    assert.equal(resumed, false);
    const second = foreground.begin();
    end();
    end();
    await tick(10);
    assert.equal(resumed, false, "another request is still in progress");
    second();
    await paused;
    assert.equal(foreground.busy, false);
    assert.equal(foreground.cutShort, 0);
  });

  it("never holds background work longer than its limit at a time, however long requests go on", async () => {
    // Catches: a stuck or endless stream of CNI calls stopping the Service proxy.
    const foreground = new Foreground(20);
    const end = foreground.begin();
    const started = performance.now();
    await foreground.pause();
    await foreground.pause();
    const waited = performance.now() - started;
    assert.ok(waited >= 38 && waited < 500, `${waited} ms`);
    assert.equal(foreground.cutShort, 2);
    end();
  });

  it("is what the netlink encoder waits on between its slices", async () => {
    // Catches: an encoder that slices on its own timer and never asks the agent.
    const foreground = new Foreground(5);
    const end = foreground.begin();
    const ops = Array.from({ length: 256 }, (_, i) => ({ op: "add table" as const, family: "ip" as const, table: `t-${i}` }));
    await encodeBatchSliced(ops, 0, foreground.pause);
    end();
    assert.equal(foreground.cutShort, 4);
  });
});
