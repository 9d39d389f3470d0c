/**
 * The Kubernetes API client and informer against a real kube-apiserver: lists in pages, follows
 * changes, survives connections cut mid-watch, a silent peer and an API server restart, relists
 * after 410 Gone (reporting what vanished meanwhile), and leaves no connection behind.
 */
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { KubeApiError, KubeClient } from "../src/kube/client.js";
import { loadKubeconfig } from "../src/kube/config.js";
import { inform, type KubeObject } from "../src/kube/informer.js";
import { kubeconfigText } from "../src/lab/control-plane.js";
import { startTestControlPlane, type TestControlPlane } from "./support/kube.js";
import { startTcpRelay, type TcpRelay } from "./support/tcp-relay.js";

interface ConfigMap extends KubeObject {
  data?: Record<string, string>;
}

describe("Kubernetes API client and informer (real kube-apiserver)", { timeout: 300_000 }, () => {
  let plane: TestControlPlane;
  let relay: TcpRelay;
  let viaRelay: KubeClient;

  before(async () => {
    plane = await startTestControlPlane();
    relay = await startTcpRelay(plane.spec.ports.apiserver);
    const pki = join(plane.spec.dir, "pki");
    const kubeconfig = join(plane.spec.dir, "relay.kubeconfig");
    writeFileSync(kubeconfig, kubeconfigText(`https://127.0.0.1:${relay.port}`, join(pki, "ca.crt"), "trellis-admin", join(pki, "admin.crt"), join(pki, "admin.key")));
    viaRelay = new KubeClient(loadKubeconfig(kubeconfig));
    await plane.admin.request("POST", "/api/v1/namespaces", { body: { apiVersion: "v1", kind: "Namespace", metadata: { name: "informer" } } });
  });

  after(async () => {
    viaRelay?.close();
    await relay?.close();
    await plane?.stop();
  });

  const configMap = (name: string, value: string) => ({ apiVersion: "v1", kind: "ConfigMap", metadata: { name, namespace: "informer" }, data: { value } });
  const create = (name: string, value = "1") => plane.admin.request("POST", "/api/v1/namespaces/informer/configmaps", { body: configMap(name, value) });
  const remove = (name: string) => plane.admin.request("DELETE", `/api/v1/namespaces/informer/configmaps/${name}`);

  /** An informer on the namespace's ConfigMaps, and the state it has told of. */
  function follow(client: KubeClient, options: Parameters<typeof inform>[3] = {}) {
    const seen = new Map<string, string>();
    let syncs = 0;
    const failures: string[] = [];
    const waiters: (() => void)[] = [];
    const informer = inform<ConfigMap>(client, "/api/v1/namespaces/informer/configmaps", {
      change(key, object) {
        if (object) seen.set(key, object.data?.value ?? "");
        else seen.delete(key);
        for (const wake of waiters.splice(0)) wake();
      },
      synced: () => void syncs++,
      failed: (error) => void failures.push(error.message),
    }, { firstRetryMs: 100, maxRetryMs: 1_000, ...options });
    const until = async (what: string, test: () => boolean, timeoutMs = 20_000) => {
      const deadline = Date.now() + timeoutMs;
      while (!test()) {
        if (Date.now() > deadline) assert.fail(`${what}: not within ${timeoutMs} ms; seen ${JSON.stringify([...seen])}, failures ${JSON.stringify(failures)}`);
        await new Promise<void>((resolve) => {
          waiters.push(resolve);
          setTimeout(resolve, 100);
        });
      }
    };
    return { seen, informer, until, syncs: () => syncs, failures };
  }

  it("lists in pages, then tells of every object that comes, changes and goes", async () => {
    for (let i = 0; i < 7; i++) await create(`paged-${i}`);
    const { seen, informer, until } = follow(plane.admin, { pageSize: 3 });
    try {
      // Bug caught: only the first page taken (3 of 7), or a continue token dropped.
      await until("all 7 listed", () => [...seen.keys()].filter((key) => key.startsWith("informer/paged-")).length === 7);
      await plane.admin.request("PATCH", "/api/v1/namespaces/informer/configmaps/paged-3", { body: { data: { value: "changed" } }, contentType: "application/merge-patch+json" });
      await until("the change", () => seen.get("informer/paged-3") === "changed");
      await remove("paged-4");
      await until("the deletion", () => !seen.has("informer/paged-4"));
      await create("later", "new");
      await until("the new one", () => seen.get("informer/later") === "new");
    } finally {
      informer.stop();
      for (let i = 0; i < 7; i++) await remove(`paged-${i}`).catch(() => undefined);
      await remove("later").catch(() => undefined);
    }
  });

  it("after its connection is cut and the API server restarts, lists again (410) and tells of what went meanwhile", async () => {
    await create("stays", "a");
    await create("goes", "b");
    const { seen, informer, until, syncs } = follow(viaRelay);
    try {
      await until("both listed", () => seen.has("informer/stays") && seen.has("informer/goes"));
      const listsBefore = syncs();
      relay.cut();
      await remove("goes");
      await plane.admin.request("PATCH", "/api/v1/namespaces/informer/configmaps/stays", { body: { data: { value: "changed while away" } }, contentType: "application/merge-patch+json" });
      // The restarted API server's watch cache starts after the informer's resource version:
      // its next watch gets 410 Gone, and only a new list can bring it up to date.
      await plane.restartApiserver();
      relay.restore();
      // Bug caught: a watch that resumes from its version after a restart and never hears of the deletion.
      await until("the deletion made while away", () => !seen.has("informer/goes"), 30_000);
      await until("the change made while away", () => seen.get("informer/stays") === "changed while away");
      assert.ok(syncs() > listsBefore, "it listed again");
      await create("after", "c");
      await until("a change after the restart", () => seen.get("informer/after") === "c");
    } finally {
      informer.stop();
      for (const name of ["stays", "goes", "after"]) await remove(name).catch(() => undefined);
    }
  });

  it("replaces a watch whose peer went silent, and leaves no connection behind after ten cuts", async () => {
    const { seen, informer, until } = follow(viaRelay, { idleTimeoutMs: 1_500 });
    try {
      await until("listed", () => informer.synced());
      relay.stall();
      await create("while-stalled", "m");
      // Bug caught: a watch on a dead connection waits for ever (no idle timeout), or the next
      // list goes over a pooled connection on the same dead path.
      await until("the object made after the path died", () => seen.get("informer/while-stalled") === "m", 15_000);
      for (let i = 0; i < 10; i++) {
        relay.cut();
        relay.restore();
        await create(`cut-${i}`);
        await until(`object after cut ${i}`, () => seen.has(`informer/cut-${i}`));
      }
      // One watch and at most the pool's few request connections; a leak grows by one per cut.
      assert.ok(relay.open() <= 3, `${relay.open()} connections open after ten cuts`);
    } finally {
      informer.stop();
      await remove("while-stalled").catch(() => undefined);
      for (let i = 0; i < 10; i++) await remove(`cut-${i}`).catch(() => undefined);
    }
    // Once stopped (and the pool closed), nothing of it is left open.
    viaRelay.close();
    const deadline = Date.now() + 5_000;
    while (relay.open() > 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 50));
    assert.equal(relay.open(), 0, "connections left open after stop");
  });

  it("names the API server's refusal: status, reason and message", async () => {
    const error = await plane.admin.request("GET", "/api/v1/namespaces/informer/configmaps/missing").catch((caught: unknown) => caught);
    assert.ok(error instanceof KubeApiError);
    assert.equal(error.status, 404);
    assert.equal(error.reason, "NotFound");
    assert.match(error.message, /configmaps "missing" not found/);
  });
});
