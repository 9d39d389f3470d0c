/**
 * `trellis probe batch`, as `lab check` runs it inside each source namespace: repeated
 * connections report who answered each, and bad requests are refused naming the probe.
 */
import assert from "node:assert/strict";
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { after, before, describe, it } from "node:test";
import { NetnsPool, sweepStaleNamespaces, type TestNetns } from "./support/netns.js";
import { TRELLIS } from "./support/trellis-cni.js";

describe("trellis probe batch", () => {
  const pool = new NetnsPool();
  let netns: TestNetns;
  let server: ChildProcess;

  before(async () => {
    sweepStaleNamespaces();
    netns = pool.create("probe");
    server = spawn("nsenter", [`--net=${netns.path}`, TRELLIS, "probe", "serve", "7777", "--name", "only"], { stdio: ["ignore", "pipe", "inherit"] });
    await new Promise<void>((resolve) => server.stdout!.once("data", () => resolve()));
  });

  after(() => {
    server?.kill("SIGKILL");
    pool.removeAll();
  });

  const batch = (requests: unknown) =>
    spawnSync("nsenter", [`--net=${netns.path}`, TRELLIS, "probe", "batch"], { input: JSON.stringify(requests), encoding: "utf8", timeout: 30_000 });

  it("connects `repeat` times in a row, TCP and UDP, and lists who answered each", () => {
    // Catches: a repeated probe that connects once (affinity would pass whatever the rules do).
    const result = batch([{ kind: "tcp", address: "127.0.0.1", port: 7777, repeat: 5 }, { kind: "udp", address: "127.0.0.1", port: 7777, repeat: 3 }, { kind: "tcp", address: "127.0.0.1", port: 7777 }]);
    assert.equal(result.status, 0, result.stderr);
    const [tcp, udp, once] = JSON.parse(result.stdout) as Array<{ ok: boolean; server?: string; servers?: string[] }>;
    assert.deepEqual([tcp.ok, tcp.servers], [true, ["only", "only", "only", "only", "only"]]);
    assert.deepEqual([udp.ok, udp.servers], [true, ["only", "only", "only"]]);
    assert.equal(once.servers, undefined);
  });

  it("refuses a repeat that is not a whole number from 1 to 100, naming the probe", () => {
    // Catches: a huge repeat holding a source's batch (and lab check) for hours, or a fraction looping.
    for (const repeat of [0, 101, 1.5, "5", -1]) {
      const result = batch([{ kind: "tcp", address: "127.0.0.1", port: 7777 }, { kind: "tcp", address: "127.0.0.1", port: 7777, repeat }]);
      assert.notEqual(result.status, 0, `repeat ${JSON.stringify(repeat)}`);
      assert.ok(result.stderr.includes(`probe 1 has repeat ${JSON.stringify(repeat)}: expected a whole number from 1 to 100`), result.stderr);
    }
  });
});
