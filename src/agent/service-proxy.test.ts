import assert from "node:assert/strict";
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { parseIp, parsePrefix } from "../net/ip.js";
import type { EndpointSlice, Service } from "../cluster/objects/types.js";
import type { StaleFlow } from "../dataplane/service-conntrack.js";
import type { ProxyOp } from "../dataplane/service-proxy.js";
import { NftWriteError } from "../linux/nft-netlink.js";
import { ruleText } from "../nft/text.js";
import type { ProxySink, ProxySource } from "./proxy-source.js";
import { Rejections } from "./rejections.js";
import type { HealthCheck } from "./health-checks.js";
import { startServiceProxy, type ProxyKernel, type ProxyParts } from "./service-proxy.js";

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

/** A source the test drives: the sink the proxy gave it, and the list announced at once. */
function drivenSource(endpoints: "slices" | "pods" = "slices"): { source: ProxySource; sink: () => ProxySink } {
  let given: ProxySink | undefined;
  return {
    source: {
      endpoints,
      follow(sink) {
        given = sink;
        setImmediate(() => sink.listed());
        return { relist: () => undefined, stop: () => undefined };
      },
    },
    sink: () => given!,
  };
}

/** A kernel that records what it is asked to write, and refuses while `refuse` says so. */
function recordingKernel() {
  const calls: Array<{ kind: "full" | "change"; ops?: readonly ProxyOp[]; at: number }> = [];
  let refuse = 0;
  const kernel: ProxyKernel = {
    via: "netlink",
    async write(ops) {
      if (refuse > 0) {
        refuse--;
        throw new NftWriteError("the kernel did not take the nftables batch: refused by the test");
      }
      calls.push({ kind: "change", ops, at: performance.now() });
    },
    async writeFull() {
      if (refuse > 0) {
        refuse--;
        throw new NftWriteError("the kernel did not take the nftables batch: refused by the test");
      }
      calls.push({ kind: "full", at: performance.now() });
    },
    tables: async () => [],
    close: () => undefined,
  };
  return { kernel, calls, refuseNext: (n: number) => (refuse = n) };
}

function service(name: string, extra: Record<string, unknown> = {}): Service {
  return {
    apiVersion: "v1", kind: "Service", metadata: { name, namespace: "default" },
    spec: { type: "ClusterIP", clusterIP: "10.96.0.10", clusterIPs: ["10.96.0.10"], ipFamilies: ["IPv4"], ipFamilyPolicy: "SingleStack", ports: [{ name: "dns", protocol: "UDP", port: 53, targetPort: 5353 }], ...extra },
  } as unknown as Service;
}

function slice(owner: string, addresses: readonly string[], nodeName = "node-b"): EndpointSlice {
  return {
    apiVersion: "discovery.k8s.io/v1", kind: "EndpointSlice", metadata: { name: `${owner}-1`, namespace: "default", labels: { "kubernetes.io/service-name": owner } },
    addressType: "IPv4", endpoints: addresses.map((address) => ({ addresses: [address], conditions: { ready: true, serving: true, terminating: false }, nodeName })),
    ports: [{ name: "dns", protocol: "UDP", port: 5353 }],
  } as EndpointSlice;
}

describe("the Service proxy's loop, with a kernel that records", () => {
  const node = { name: "node-a", addresses: [parseIp("198.18.0.1")], podCidrs: [parsePrefix("10.244.0.0/16")] };
  const start = (minSyncIntervalMs: number, parts: Partial<ProxyParts> & { kernel: ProxyKernel }) => {
    const driven = drivenSource();
    const updates: Array<ReadonlyMap<number, HealthCheck>> = [];
    const proxy = startServiceProxy(
      { source: driven.source, node, minSyncIntervalMs, log: quiet, rejections: new Rejections(quiet) },
      {
        deleteFlow: async () => 0,
        healthChecks: { update: async (wanted) => void updates.push(wanted), metrics: () => "" },
        ...parts,
      },
    );
    proxy.setExternalPolicy({ allowed: [parsePrefix("198.19.0.0/24")], podCidrs: [parsePrefix("10.244.0.0/16")], serviceCidrs: [], reserved: new Map() });
    return { proxy, sink: driven.sink, updates };
  };

  // Bugs caught: every sync a whole rewrite (the cost the incremental state exists to avoid), or a
  // change written before the first full write (onto tables that do not exist).
  test("writes the tables whole once, then only a change's steps", async () => {
    const { kernel, calls } = recordingKernel();
    const { proxy, sink } = start(0, { kernel });
    sink().service("default/dns", service("dns"));
    sink().slice("s/dns", slice("dns", ["10.244.1.5", "10.244.2.6"]));
    await eventually("the first sync", () => calls.length === 1);
    assert.equal(calls[0].kind, "full");
    sink().slice("s/dns", slice("dns", ["10.244.1.5", "10.244.3.7"]));
    await eventually("the change", () => calls.length === 2);
    assert.equal(calls[1].kind, "change");
    assert.deepEqual(calls[1].ops!.map((op) => op.op), ["delete element", "add element"], "one endpoint replaced: one element of its map");
    await proxy.stop();
  });

  // Bug caught: a sync per change under a burst (each one a kernel transaction), or changes lost
  // between two syncs.
  test("syncs at most once per interval, the changes made meanwhile together", async () => {
    const { kernel, calls } = recordingKernel();
    const { proxy, sink } = start(300, { kernel });
    sink().service("default/dns", service("dns"));
    sink().slice("s/dns", slice("dns", ["10.244.1.5"]));
    await eventually("the first sync", () => calls.length === 1);
    for (const name of ["a", "b", "c"]) sink().service(`default/${name}`, service(name, { clusterIP: `10.96.0.${name.charCodeAt(0)}`, clusterIPs: [`10.96.0.${name.charCodeAt(0)}`] }));
    await eventually("the second sync", () => calls.length === 2, 2_000);
    await new Promise((resolve) => setTimeout(resolve, 400));
    assert.equal(calls.length, 2, "one sync for the three changes");
    assert.ok(calls[1].at - calls[0].at >= 290, `${calls[1].at - calls[0].at} ms apart`);
    await proxy.stop();
  });

  // Bugs caught: a refused write never tried again (the rules stay wrong until the next change),
  // tried again at once forever, or tried again as a change onto tables in an unknown state.
  test("tries a refused write again after a delay, whole, and counts the failure", async () => {
    const { kernel, calls, refuseNext } = recordingKernel();
    const { proxy, sink } = start(0, { kernel });
    refuseNext(1);
    const started = performance.now();
    sink().service("default/dns", service("dns"));
    sink().slice("s/dns", slice("dns", ["10.244.1.5"]));
    await eventually("the retry", () => calls.length === 1, 3_000);
    assert.equal(calls[0].kind, "full", "the tables' state is unknown after a refusal: written whole");
    assert.ok(calls[0].at - started >= 900, `retried ${Math.round(calls[0].at - started)} ms later (FIRST_RETRY_DELAY_MS 1 s)`);
    assert.match(proxy.metrics(), /^trellis_sync_proxy_rules_failures_total 1$/m);
    await proxy.stop();
  });

  // Bug caught: a UDP client that keeps sending stays stuck on a gone endpoint (its conntrack
  // entry), or the flows deleted before the rules changed (and made again by the next packet).
  test("deletes the UDP flows an endpoint's going leaves behind, after the rules are written", async () => {
    const { kernel, calls } = recordingKernel();
    const deleted: Array<{ flow: StaleFlow; writes: number }> = [];
    const { proxy, sink } = start(0, { kernel, deleteFlow: async (flow) => (deleted.push({ flow, writes: calls.length }), 1) });
    sink().service("default/dns", service("dns"));
    sink().slice("s/dns", slice("dns", ["10.244.1.5", "10.244.2.6"]));
    await eventually("the first sync", () => calls.length === 1);
    sink().slice("s/dns", slice("dns", ["10.244.1.5"]));
    await eventually("the flows deleted", () => deleted.length > 0);
    assert.ok(deleted.every((entry) => entry.writes === 2), "after the change was written");
    assert.ok(deleted.some((entry) => JSON.stringify(entry.flow, (_k, v) => (typeof v === "bigint" ? String(v) : v)).includes(String(parseIp("10.244.2.6").value))), JSON.stringify(deleted, (_k, v) => (typeof v === "bigint" ? String(v) : v)));
    await proxy.stop();
  });

  // Bug caught: a Local LoadBalancer's health check port never served (its load balancer sends
  // to no node), or served on a node without a local endpoint (it sends traffic that is dropped).
  test("serves the health check port of a Local LoadBalancer Service with the node's endpoint count", async () => {
    const { kernel } = recordingKernel();
    const { proxy, sink, updates } = start(0, { kernel });
    sink().service("default/lb", service("lb", { type: "LoadBalancer", externalTrafficPolicy: "Local", healthCheckNodePort: 32000, ports: [{ name: "dns", protocol: "UDP", port: 53, targetPort: 5353, nodePort: 30053 }] }));
    sink().slice("s/lb", slice("lb", ["10.244.0.5", "10.244.2.6"], "node-a"));
    await eventually("the health check served", () => updates.some((wanted) => wanted.has(32000)));
    const last = updates.filter((wanted) => wanted.has(32000)).at(-1)!;
    assert.deepEqual(last.get(32000), { namespace: "default", name: "lb", localEndpoints: 2 }, "two endpoints on this node");
    await proxy.stop();
    assert.equal(updates.at(-1)!.size, 0, "stopped: no port served");
  });

  // Bug caught: this node's zone read once at start, so a Node relabelled into another zone keeps
  // sending PreferClose traffic to its old zone's endpoints until the agent restarts.
  test("follows this node's zone: a new zone narrows a hinted Service to that zone's endpoints", async () => {
    const { kernel, calls } = recordingKernel();
    const { proxy, sink } = start(0, { kernel });
    const hinted = slice("dns", ["10.244.1.5", "10.244.2.6"]);
    const zones = ["zone-a", "zone-b"];
    sink().service("default/dns", service("dns", { trafficDistribution: "PreferClose" }));
    sink().slice("s/dns", { ...hinted, endpoints: hinted.endpoints.map((endpoint, i) => ({ ...endpoint, zone: zones[i], hints: { forZones: [{ name: zones[i] }] } })) } as EndpointSlice);
    await eventually("the first sync", () => calls.length === 1);
    proxy.setZone("zone-b");
    await eventually("the zone's change written", () => calls.length === 2);
    const added = calls[1].ops!.flatMap((op) => (op.op === "add rule" ? [ruleText(op.rule)] : []));
    assert.ok(added.some((rule) => rule.endsWith("dnat ip to 10.244.2.6:5353")), added.join("\n"));
    proxy.setZone("zone-b");
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.equal(calls.length, 2, "the same zone again changes nothing");
    await proxy.stop();
  });
});
