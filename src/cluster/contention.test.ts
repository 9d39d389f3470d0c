/**
 * Contention proof: 4 processes × 500 cycles each allocate and release a ClusterIP, a NodePort
 * and a node pod CIDR against one store, on both backends. The ranges are small so that the
 * processes keep colliding. Then: no address, port or block was ever held by two owners at once,
 * and after everything is released the ranges are whole again.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import type { Holding } from "../../test/support/cluster-contention.worker.js";
import { assertBandConsistent, testPlan } from "../../test/support/cluster.js";
import { startTestBackend, type BackendName, type TestBackend } from "../../test/support/store-backends.js";
import { runWorker } from "../../test/support/workers.js";
import { listNodes, nodeCidrRanges } from "./node-cidrs.js";
import { nodePortBands } from "./node-ports.js";
import { serviceIpRanges } from "./service-ips.js";
import { listServices } from "./services.js";
import { openCluster } from "./state.js";

const WORKERS = 4;
const CYCLES = 500;

const plan = testPlan({
  podCidrs: ["10.244.0.0/24"],
  serviceCidrs: ["10.96.0.0/27"],
  nodeMaskSize: { 4: 28 },
  nodePortRange: "30000-30063",
});

for (const name of ["sqlite", "etcd"] as BackendName[]) {
  describe(`allocation under contention (${name})`, () => {
    let backend: TestBackend;
    before(async () => {
      backend = await startTestBackend(name);
    });
    after(async () => {
      await backend?.cleanup();
    });

    // About 6 s on SQLite and 40 s on etcd on an idle 2-core machine. The timeout only stops a
    // hung run: how fast it goes is a benchmark's question, not this test's.
    test(`${WORKERS} processes × ${CYCLES} allocate+release cycles never share an address, port or block, and lose none`, { timeout: 600_000 }, async () => {
      const { store, spec, namespace } = await backend.fresh();
      const cluster = await openCluster(store, plan);
      const outputs = await Promise.all(
        Array.from({ length: WORKERS }, (_, i) => runWorker("cluster-contention.worker.ts", [spec, namespace ?? "-", String(i), String(CYCLES)])),
      );
      const holdings = outputs.flatMap(({ stdout }) => stdout.trim().split("\n").map((line) => JSON.parse(line) as Holding));

      for (const kind of ["clusterIP", "nodePort", "podCidr"] as const) {
        const ofKind = holdings.filter((holding) => holding.kind === kind);
        assert.equal(ofKind.length, WORKERS * CYCLES, `every ${kind} allocation is accounted for`);
        const byValue = new Map<string, Holding[]>();
        for (const holding of ofKind) byValue.set(holding.value, [...(byValue.get(holding.value) ?? []), holding]);
        for (const [value, list] of byValue) {
          list.sort((a, b) => a.acquired - b.acquired);
          for (let i = 1; i < list.length; i++) {
            assert.ok(
              list[i].acquired > list[i - 1].released,
              `${kind} ${value} was given to ${list[i].owner} at revision ${list[i].acquired} while ${list[i - 1].owner} held it (until ${list[i - 1].released})`,
            );
          }
        }
        assert.ok(byValue.size > 1, `${kind}: the processes used more than one value`);
      }

      assert.deepEqual((await listServices(cluster.store)).map((s) => `${s.namespace}/${s.name}`), ["default/kubernetes"]);
      assert.deepEqual(await listNodes(cluster.store), []);
      assert.deepEqual((await store.list("/ranges/serviceips/")).entries.map((entry) => entry.key), ["/ranges/serviceips/10.96.0.1"]);
      assert.deepEqual((await store.list("/ranges/servicenodeports/")).entries, []);
      assert.deepEqual((await store.list("/ranges/nodecidrs/")).entries, []);
      const [ips] = serviceIpRanges(plan);
      await assertBandConsistent(store, ips.staticBand);
      await assertBandConsistent(store, ips.dynamicBand);
      const ports = nodePortBands(plan);
      await assertBandConsistent(store, ports.staticBand);
      await assertBandConsistent(store, ports.dynamicBand);
      await assertBandConsistent(store, nodeCidrRanges(plan)[0].band);
    });
  });
}
