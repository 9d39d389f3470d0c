/**
 * CNI GC on a node shared by several networks, racing ADDs, and after the state was deleted by
 * hand. GC may release only what its own network's records say it owns, and never what an ADD
 * recorded after the GC began.
 */
import assert from "node:assert/strict";
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { execCniPlugin } from "./support/cni-exec.js";
import { inNetns, NetnsPool, sweepStaleNamespaces, type TestNetns } from "./support/netns.js";
import { agentFor, pluginPath, withAgentSocket } from "./support/node-agent.js";
import { addPod, addressesOf, hostVeths, ping, recordedPods, cniSuite, tempDir, trellis, type PodAttachmentResult } from "./support/trellis-cni.js";

const valid = (ids: string[]) => ids.map((id) => ({ containerID: id, ifname: "eth0" }));

describe(cniSuite("GC with two networks on one bridge"), () => {
  const pool = new NetnsPool();
  const state = tempDir("gc-shared");
  const otherState = tempDir("gc-shared-other");
  let node: TestNetns;
  const a = { cniVersion: "1.1.0", name: "net-a", type: "trellis", ipam: { ranges: [[{ subnet: "10.244.50.0/24" }], [{ subnet: "fd00:10:244:50::/64" }]], dataDir: state.path } };
  const b = { cniVersion: "1.1.0", name: "net-b", type: "trellis", ipam: { ranges: [[{ subnet: "10.244.51.0/24" }], [{ subnet: "fd00:10:244:51::/64" }]], dataDir: state.path } };
  const c = { cniVersion: "1.1.0", name: "net-c", type: "trellis", ipam: { ranges: [[{ subnet: "10.244.52.0/24" }]], dataDir: otherState.path } };

  before(() => {
    sweepStaleNamespaces();
    node = pool.create("node");
  });
  after(() => {
    pool.removeAll();
    state.remove();
    otherState.remove();
  });

  // Bug caught: GC swept every Trellis veth on the bridge that was not in its own keep list.
  it("releases only its own network's pods; the other networks' pods keep their veths and traffic", async () => {
    const podA = pool.create("pod");
    const podB = pool.create("pod");
    const podC = pool.create("pod");
    await addPod(node, a, { id: "a1", netns: podA.path });
    const resultB = await addPod(node, b, { id: "b1", netns: podB.path });
    const resultC = await addPod(node, c, { id: "c1", netns: podC.path });
    const gc = await trellis("GC", node, { ...a, "cni.dev/valid-attachments": [] });
    assert.equal(gc.code, 0, gc.stdout + gc.stderr);
    assert.deepEqual(recordedPods(state.path, "net-a"), []);
    assert.deepEqual(recordedPods(state.path, "net-b").map((pod) => pod.containerId), ["b1"]);
    assert.deepEqual(hostVeths(node), [resultB.interfaces[1].name, resultC.interfaces[1].name].sort());
    for (const address of [...addressesOf(resultB), ...addressesOf(resultC)]) assert.ok(ping(node, address), `node still reaches ${address}`);
    const check = await trellis("CHECK", node, { ...b, prevResult: resultB }, { id: "b1", netns: podB.path });
    assert.equal(check.code, 0, check.stdout);
  });
});

describe(cniSuite("GC racing bursts of ADD"), () => {
  const ROUNDS = 6;
  const BURST = 29;
  const pool = new NetnsPool();
  const state = tempDir("gc-race");
  let node: TestNetns;
  const config = { cniVersion: "1.1.0", name: "race", type: "trellis", ipam: { ranges: [[{ subnet: "10.244.53.0/24" }], [{ subnet: "fd00:10:244:53::/64" }]], dataDir: state.path } };
  const survivors = new Map<string, PodAttachmentResult>();

  before(() => {
    sweepStaleNamespaces();
    node = pool.create("node");
  });
  after(() => {
    pool.removeAll();
    state.remove();
  });

  // Bug caught: GC released leases by a stale valid list outside the transaction that kept the
  // record, so ADDs racing it kept their records but lost their leases, and the addresses could
  // be handed out twice. Now each pod is either wholly kept or wholly released (record, leases
  // and veth), and no address is ever held by two live pods.
  it(`keeps every pod whole or releases it whole (${ROUNDS} rounds of ${BURST} ADDs racing GCs)`, async () => {
    for (let round = 0; round < ROUNDS; round++) {
      const listedBefore = [...survivors.keys()];
      const pods = Array.from({ length: BURST }, (_, i) => ({ id: `race-${round}-${i}`, netns: pool.create("pod").path }));
      let finished = 0;
      const adds = Promise.all(pods.map((pod) => trellis("ADD", node, config, pod).finally(() => finished++)));
      // GCs start 100 ms apart through the first half of the burst; none after, so nothing
      // tidies up what the last of them leaves while the other half is still being added.
      const gcs: Array<ReturnType<typeof trellis>> = [];
      while (finished < BURST / 2) {
        gcs.push(trellis("GC", node, { ...config, "cni.dev/valid-attachments": valid(listedBefore) }));
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
      const [outcomes, gcOutcomes] = await Promise.all([adds, Promise.all(gcs)]);
      for (const gc of gcOutcomes) assert.equal(gc.code, 0, gc.stdout + gc.stderr);
      const recorded = new Map(recordedPods(state.path, "race").map((pod) => [pod.containerId, pod]));
      const veths = new Set(hostVeths(node));
      for (const [i, outcome] of outcomes.entries()) {
        assert.equal(outcome.code, 0, `ADD ${pods[i].id}: ${outcome.stdout}${outcome.stderr}`);
        const result = JSON.parse(outcome.stdout) as PodAttachmentResult;
        const pod = recorded.get(pods[i].id);
        if (pod) {
          assert.equal(pod.state, "ready");
          assert.deepEqual([...pod.addresses].sort(), addressesOf(result).sort(), `round ${round}: ${pods[i].id} keeps all its leases`);
          assert.ok(veths.has(result.interfaces[1].name), `round ${round}: ${pods[i].id} keeps its veth`);
          survivors.set(pods[i].id, result);
        } else {
          assert.ok(!veths.has(result.interfaces[1].name), `round ${round}: released ${pods[i].id} lost its veth too`);
        }
      }
      for (const id of listedBefore) assert.ok(recorded.has(id), `round ${round}: listed pod ${id} is kept`);
      const all = [...recorded.values()].flatMap((pod) => pod.addresses);
      assert.equal(new Set(all).size, all.length, `round ${round}: no address is leased twice`);
      assert.equal(veths.size, recorded.size, `round ${round}: one veth per recorded pod`);
    }
  });

  // Bug caught: GC released an attachment whose ADD was still running; the ADD then reported
  // addresses that were free again.
  it("leaves an ADD that is still running alone, and that ADD completes", async () => {
    const gate = join(state.path, "gate");
    const plugins = join(state.path, "plugins");
    mkdirSync(plugins);
    writeFileSync(join(plugins, "gated-host-local"), `#!/bin/sh\nif [ "$CNI_COMMAND" = ADD ]; then i=0; while [ ! -e ${gate} ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; fi\nexec /usr/lib/cni/host-local "$@"\n`, { mode: 0o755 });
    const gated = withAgentSocket({ cniVersion: "1.0.0", name: "gated", type: "trellis", dataDir: state.path, ipam: { type: "gated-host-local", dataDir: join(state.path, "leases"), ranges: [[{ subnet: "10.244.56.0/24" }]] } }, await agentFor(node));
    const pod = pool.create("pod");
    const add = execCniPlugin({ command: "ADD", plugin: pluginPath(), cniPath: `${plugins}:/usr/lib/cni`, config: gated, node, containerId: "slow", netns: pod.path, ifname: "eth0", timeoutMs: 60_000 });
    while (!recordedPods(state.path, "gated").some((record) => record.containerId === "slow")) await new Promise((resolve) => setTimeout(resolve, 20));
    assert.equal(recordedPods(state.path, "gated")[0].state, "adding");
    const gc = await execCniPlugin({ command: "GC", plugin: pluginPath(), cniPath: `${plugins}:/usr/lib/cni`, config: { ...gated, "cni.dev/valid-attachments": [] }, node });
    assert.equal(gc.code, 0, gc.stdout + gc.stderr);
    assert.equal(recordedPods(state.path, "gated").length, 1, "the running ADD's record survives the GC");
    writeFileSync(gate, "");
    const outcome = await add;
    assert.equal(outcome.code, 0, outcome.stdout + outcome.stderr);
    assert.deepEqual(recordedPods(state.path, "gated").map((record) => record.state), ["ready"]);
    const address = addressesOf(JSON.parse(outcome.stdout))[0];
    assert.ok(ping(node, address), "the pod that raced the GC works");
    const del = await execCniPlugin({ command: "DEL", plugin: pluginPath(), cniPath: `${plugins}:/usr/lib/cni`, config: gated, node, containerId: "slow", netns: pod.path, ifname: "eth0" });
    assert.equal(del.code, 0, del.stdout);
  });

  it("a GC with the full list afterwards changes nothing, and one with an empty list releases everything", async () => {
    const keep = await trellis("GC", node, { ...config, "cni.dev/valid-attachments": valid([...survivors.keys()]) });
    assert.equal(keep.code, 0, keep.stdout);
    assert.equal(recordedPods(state.path, "race").length, survivors.size);
    const none = await trellis("GC", node, { ...config, "cni.dev/valid-attachments": [] });
    assert.equal(none.code, 0, none.stdout);
    assert.deepEqual(recordedPods(state.path, "race"), []);
    assert.deepEqual(hostVeths(node), []);
  });
});

describe(cniSuite("GC after the node state was deleted by hand"), () => {
  const pool = new NetnsPool();
  const state = tempDir("gc-lost");
  const otherState = tempDir("gc-lost-other");
  let node: TestNetns;
  const lost = { cniVersion: "1.1.0", name: "lost", type: "trellis", ipam: { ranges: [[{ subnet: "10.244.54.0/24" }]], dataDir: state.path } };
  const kept = { cniVersion: "1.1.0", name: "kept", type: "trellis", ipam: { ranges: [[{ subnet: "10.244.55.0/24" }]], dataDir: otherState.path } };

  before(() => {
    sweepStaleNamespaces();
    node = pool.create("node");
  });
  after(() => {
    pool.removeAll();
    state.remove();
    otherState.remove();
  });

  // Bug caught: without records, a GC either leaks the network's veths forever or deletes other networks'.
  it("removes the veths its network created, and only those", async () => {
    const lostResult = await addPod(node, lost, { id: "lost1", netns: pool.create("pod").path });
    const keptResult = await addPod(node, kept, { id: "kept1", netns: pool.create("pod").path });
    inNetns(node, "ip", ["link", "add", "trv0000000000aa", "type", "veth", "peer", "name", "someone-else"]);
    for (const file of ["state.db", "state.db-wal", "state.db-shm"]) rmSync(join(state.path, file), { force: true });
    const gc = await trellis("GC", node, { ...lost, "cni.dev/valid-attachments": [] });
    assert.equal(gc.code, 0, gc.stdout + gc.stderr);
    const left = hostVeths(node);
    assert.ok(!left.includes(lostResult.interfaces[1].name), "the lost network's veth is gone");
    assert.ok(left.includes(keptResult.interfaces[1].name), "the other network's veth stays");
    assert.ok(left.includes("trv0000000000aa"), "a veth Trellis did not make stays");
  });
});
