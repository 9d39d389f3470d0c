/**
 * dist/trellis-cni, the native plugin, on its own: what it forwards to the agent and how, what
 * it answers without one, and how it fails. The agent here is a stand-in unix server in the
 * test (the plugin's framing and fallback are the logic under test); the real agent behind it
 * is exercised by cni-agent.test.ts and the test/via-agent suites.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdirSync, symlinkSync, writeFileSync } from "node:fs";
import { createServer, type Server, type Socket } from "node:net";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { TRELLIS_NATIVE } from "./support/node-agent.js";
import { tempDir } from "./support/trellis-cni.js";

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
  ms: number;
}

function runPlugin(plugin: string, env: Record<string, string>, stdin: string | Buffer): Promise<Run> {
  return new Promise((resolve, reject) => {
    const started = performance.now();
    const child = spawn(plugin, [], { env, stdio: ["pipe", "pipe", "pipe"], timeout: 20_000 });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, stdout, stderr, ms: performance.now() - started }));
    child.stdin.on("error", () => undefined);
    child.stdin.end(stdin);
  });
}

/** A stand-in agent: collects each framed request and answers with `reply(request)` (or does what `reply` does to the socket). */
function fakeAgent(path: string, reply: (request: Buffer, socket: Socket) => void): Promise<Server> {
  const server = createServer((socket) => {
    const chunks: Buffer[] = [];
    socket.on("data", (chunk: Buffer) => {
      chunks.push(chunk);
      const all = Buffer.concat(chunks);
      if (all.length >= 4 && all.length >= 4 + all.readUInt32BE(0)) reply(all.subarray(4, 4 + all.readUInt32BE(0)), socket);
    });
    socket.on("error", () => undefined);
  });
  return new Promise((resolve) => server.listen(path, () => resolve(server)));
}

function frame(value: unknown): Buffer {
  const body = Buffer.from(JSON.stringify(value));
  const size = Buffer.alloc(4);
  size.writeUInt32BE(body.length);
  return Buffer.concat([size, body]);
}

describe("the native trellis plugin (dist/trellis-cni)", () => {
  const dir = tempDir("forward");
  const servers: Server[] = [];
  const env = { PATH: "/usr/sbin:/usr/bin:/sbin:/bin", CNI_COMMAND: "ADD", CNI_CONTAINERID: "c1", CNI_NETNS: "/run/netns/x", CNI_IFNAME: "eth0", CNI_PATH: "/opt/cni/bin", CNI_ARGS: "K8S_POD_NAME=a b;X=%d", SECRET_TOKEN: "not for the agent" };
  let bin: string;

  before(() => {
    bin = join(dir.path, "bin");
    mkdirSync(bin);
    symlinkSync(TRELLIS_NATIVE, join(bin, "trellis"));
  });
  after(() => {
    for (const server of servers) server.close();
    dir.remove();
  });

  // Bug caught: VERSION waiting on an agent (or failing without one); a runtime asks it often.
  it("answers VERSION itself, with no agent and no stdin", async () => {
    const run = await runPlugin(join(bin, "trellis"), { PATH: env.PATH, CNI_COMMAND: "VERSION" }, "");
    assert.equal(run.code, 0);
    assert.deepEqual(JSON.parse(run.stdout), { cniVersion: "1.1.0", supportedVersions: ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] });
  });

  // Bug caught: stdin re-encoded or trimmed, environment other than CNI_* and PATH leaking to
  // the agent, or the agent's exit code, stdout and stderr not passed through as they are.
  it("forwards the CNI_* environment, PATH and stdin exactly, and passes the reply through", async () => {
    const socket = join(dir.path, "agent.sock");
    let seen: { env: Record<string, string>; stdin: string } | undefined;
    servers.push(await fakeAgent(socket, (request, conn) => {
      seen = JSON.parse(request.toString("utf8"));
      conn.end(frame({ exitCode: 3, stdout: "out\u00e9\n", stderr: "err line\n" }));
    }));
    const stdin = JSON.stringify({ cniVersion: "1.1.0", name: "n", type: "trellis", agentSocket: socket, note: "é \u2603 \\n %d ../x", pad: "x".repeat(300_000) }) + "\n  ";
    const run = await runPlugin(join(bin, "trellis"), env, stdin);
    assert.equal(run.code, 3);
    assert.equal(run.stdout, "out\u00e9\n");
    assert.equal(run.stderr, "err line\n");
    assert.ok(seen);
    assert.equal(seen.stdin, stdin, "stdin byte for byte, trailing whitespace included");
    const { SECRET_TOKEN: _secret, ...forwarded } = env;
    assert.deepEqual(seen.env, forwarded);
  });

  // Bug caught: a dead or broken agent turned into a success, a hang, or a code a runtime would
  // not retry.
  it("answers 11 when the agent closes without a reply or replies with garbage", async () => {
    const closing = join(dir.path, "closing.sock");
    servers.push(await fakeAgent(closing, (_request, conn) => conn.destroy()));
    const garbage = join(dir.path, "garbage.sock");
    servers.push(await fakeAgent(garbage, (_request, conn) => conn.end(Buffer.concat([Buffer.from([0, 0, 0, 5]), Buffer.from("nope!")]))));
    for (const [socket, message] of [[closing, /closed the connection before answering/], [garbage, /answered something that is not a reply/]] as const) {
      const run = await runPlugin(join(bin, "trellis"), env, JSON.stringify({ cniVersion: "1.0.0", name: "n", type: "trellis", agentSocket: socket }));
      assert.equal(run.code, 1);
      const error = JSON.parse(run.stdout) as { cniVersion: string; code: number; msg: string };
      assert.equal(error.code, 11);
      assert.equal(error.cniVersion, "1.0.0", "in the config's version");
      assert.match(error.msg, message);
    }
  });

  // Bug caught: a node without an agent unable to attach pods, or the fallback given other input.
  it("without an agent, runs trellis-standalone beside itself with the same environment and stdin", async () => {
    const standaloneBin = join(dir.path, "with-standalone");
    mkdirSync(standaloneBin);
    symlinkSync(TRELLIS_NATIVE, join(standaloneBin, "trellis"));
    writeFileSync(join(standaloneBin, "trellis-standalone"), `#!/bin/sh\necho "argv0=$0 cmd=$CNI_COMMAND args=$CNI_ARGS secret=$SECRET_TOKEN"\ncat\nexit 4\n`, { mode: 0o755 });
    const stdin = JSON.stringify({ cniVersion: "1.1.0", name: "n", type: "trellis", agentSocket: join(dir.path, "nobody-listens.sock") });
    const run = await runPlugin(join(standaloneBin, "trellis"), env, stdin);
    assert.equal(run.code, 4, "the standalone plugin's exit code");
    assert.equal(run.stdout, `argv0=${join(standaloneBin, "trellis-standalone")} cmd=ADD args=${env.CNI_ARGS} secret=${env.SECRET_TOKEN}\n${stdin}`);
    // Without the standalone plugin either: a clear error naming where it looked.
    const lonely = await runPlugin(join(bin, "trellis"), env, stdin);
    assert.equal(lonely.code, 1);
    const error = JSON.parse(lonely.stdout) as { code: number; msg: string };
    assert.equal(error.code, 50);
    assert.match(error.msg, new RegExp(`no trellis agent answers and the standalone plugin ${join(bin, "trellis-standalone").replace(/[.]/g, "\\.")} cannot run`));
  });

  // Bug caught: an endless or huge stdin read into memory and sent on.
  it("refuses a config over 1 MiB with 7 without contacting anyone", async () => {
    const run = await runPlugin(join(bin, "trellis"), env, Buffer.alloc((1 << 20) + 1, 0x20));
    assert.equal(run.code, 1);
    const error = JSON.parse(run.stdout) as { code: number; msg: string };
    assert.equal(error.code, 7);
    assert.match(error.msg, /larger than 1048576 bytes/);
  });
});
