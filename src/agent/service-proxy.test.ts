import assert from "node:assert/strict";
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { parseIp, parsePrefix } from "../net/ip.js";
import type { ProxySource } from "./proxy-source.js";
import { Rejections } from "./rejections.js";
import { startServiceProxy } from "./service-proxy.js";

const quiet = () => undefined;

/** Polls until `check` holds (every 20 ms, at most `timeoutMs`). */
async function eventually(what: string, check: () => boolean, timeoutMs = 5_000): Promise<void> {
  const started = Date.now();
  while (!check()) {
    if (Date.now() - started > timeoutMs) throw new Error(`${what}: not within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

describe("the Service proxy's sync health", () => {
  const dir = mkdtempSync(join(tmpdir(), "trellis-proxy-test-"));
  after(() => rmSync(dir, { recursive: true, force: true }));

  // Bug caught (hostile-client review, 6): a sync that waited on something without a deadline
  // (there, health check clients) stayed "running" for minutes while /healthz answered 200.
  test("a sync that runs past its bound shows in its metrics and makes it unhealthy, until it ends", async () => {
    // A netlink writer that takes every batch and never answers: the first sync waits on it.
    const writer = join(dir, "stalled-writer");
    const pidFile = join(dir, "writer.pid");
    writeFileSync(writer, `#!/bin/sh\necho $$ > ${pidFile}\nexec cat > /dev/null\n`);
    chmodSync(writer, 0o755);
    const source: ProxySource = {
      endpoints: "slices",
      follow(sink) {
        setImmediate(() => sink.listed());
        return { relist: () => undefined, stop: () => undefined };
      },
    };
    const proxy = startServiceProxy({
      source,
      node: { name: "node", addresses: [parseIp("198.18.0.1")], podCidrs: [parsePrefix("10.244.0.0/16")] },
      minSyncIntervalMs: 0,
      log: quiet,
      nftWriter: writer,
      syncStuckAfterSeconds: 0.3,
      rejections: new Rejections(quiet),
    });
    proxy.setExternalPolicy({ allowed: [], podCidrs: [], serviceCidrs: [], reserved: new Map() });
    const running = () => Number(/^trellis_proxy_sync_running_seconds (\S+)$/m.exec(proxy.metrics())?.[1]);
    try {
      await eventually("a sync runs", () => proxy.syncRunningSeconds() > 0);
      assert.equal(proxy.unhealthy(), undefined, "not within its bound yet");
      await eventually("the sync is past its bound", () => proxy.unhealthy() !== undefined);
      assert.match(proxy.unhealthy()!, /^the Service proxy's sync has run for \d+ s \(more than 0\.3 s: it is stuck\)$/);
      assert.ok(running() > 0.3, proxy.metrics());
    } finally {
      // The writer gone, the sync fails and ends.
      if (existsSync(pidFile)) process.kill(Number(readFileSync(pidFile, "utf8")), "SIGKILL");
    }
    await eventually("the sync ends", () => proxy.syncRunningSeconds() === 0);
    assert.equal(proxy.unhealthy(), undefined);
    assert.equal(running(), 0);
    await proxy.stop();
  });
});
