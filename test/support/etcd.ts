/**
 * A real, throw-away etcd for tests: loopback ports only, its own data directory (in /dev/shm
 * when there is one, so fsync is cheap), stopped and removed by `stop()` and, as a last
 * resort, when the test process exits.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { EtcdEndpoint } from "../../src/store/etcd-kv.js";

export interface TestEtcd {
  readonly endpoint: EtcdEndpoint;
  /** `etcd://127.0.0.1:PORT`, for openStore and the CLI's --store. */
  readonly spec: string;
  readonly dataDir: string;
  /** Stops etcd and removes its data directory; safe to call twice. */
  stop(): Promise<void>;
}

const ETCD_BINARY = process.env.TRELLIS_TEST_ETCD ?? "/usr/bin/etcd";
const running = new Set<ChildProcess>();
const leftoverDirs = new Set<string>();

process.once("exit", () => {
  for (const child of running) child.kill("SIGKILL");
  for (const dir of leftoverDirs) rmSync(dir, { recursive: true, force: true });
});

export async function startTestEtcd(): Promise<TestEtcd> {
  let lastError: unknown;
  // Another process may take a port between choosing it and etcd binding it: try again then.
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      return await startOnce();
    } catch (error) {
      lastError = error;
    }
  }
  throw lastError;
}

async function startOnce(): Promise<TestEtcd> {
  const [clientPort, peerPort] = [await freeLoopbackPort(), await freeLoopbackPort()];
  const base = existsSync("/dev/shm") ? "/dev/shm" : tmpdir();
  const dataDir = mkdtempSync(join(base, "trellis-etcd-"));
  leftoverDirs.add(dataDir);
  const client = `http://127.0.0.1:${clientPort}`;
  const peer = `http://127.0.0.1:${peerPort}`;
  const child = spawn(
    ETCD_BINARY,
    [
      "--data-dir", dataDir,
      "--listen-client-urls", client,
      "--advertise-client-urls", client,
      "--listen-peer-urls", peer,
      "--initial-advertise-peer-urls", peer,
      "--initial-cluster", `default=${peer}`,
      "--logger", "zap",
      "--log-level", "error",
    ],
    { stdio: ["ignore", "ignore", "pipe"] },
  );
  running.add(child);
  let stderr = "";
  child.stderr!.setEncoding("utf8").on("data", (text: string) => {
    stderr = (stderr + text).slice(-4000);
  });
  let exited = false;
  const exit = new Promise<void>((resolve) => {
    child.once("exit", () => {
      exited = true;
      running.delete(child);
      resolve();
    });
    child.once("error", () => resolve());
  });

  const stop = async (): Promise<void> => {
    if (!exited) {
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 5_000);
      await exit;
      clearTimeout(timer);
    }
    rmSync(dataDir, { recursive: true, force: true });
    leftoverDirs.delete(dataDir);
  };

  const deadline = Date.now() + 20_000;
  while (Date.now() < deadline) {
    if (exited) break;
    if (await healthy(client)) {
      return { endpoint: { host: "127.0.0.1", port: clientPort }, spec: `etcd://127.0.0.1:${clientPort}`, dataDir, stop };
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  await stop();
  throw new Error(`test etcd on 127.0.0.1:${clientPort} did not become healthy${exited ? " (it exited)" : " within 20 s"}: ${stderr.trim() || "no output"}`);
}

async function healthy(clientUrl: string): Promise<boolean> {
  try {
    const response = await fetch(`${clientUrl}/health`, { signal: AbortSignal.timeout(1_000) });
    const body = (await response.json()) as { health?: string };
    return body.health === "true";
  } catch {
    return false;
  }
}

/** A port the kernel just handed out on 127.0.0.1. */
export function freeLoopbackPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      const port = typeof address === "object" && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}
