/**
 * kill -9 at each step of ADD, DEL and GC, placed exactly: with TRELLIS_FAULT_POINT set, the
 * plugin SIGKILLs itself when it reaches that step (src/podnet/handle.ts). Each test reads what
 * the state and the node hold right after the kill, then runs the verb a runtime would run
 * next (GC, ADD again, DEL) and shows the node ends as if the crash had never happened: no
 * record, lease, veth or masquerade chain left over, and the pods that should live still work.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import type { FaultPoint } from "../src/podnet/handle.js";
import { inNetns, NetnsPool, sweepStaleNamespaces, type TestNetns } from "./support/netns.js";
import {
  addPod, addressesOf, hostVeths, ping, recordedPods, tempDir, trellis, trellisAtFaultPoint, type FaultOutcome, type PodAttachmentResult, type PodRecord,
} from "./support/trellis-cni.js";

const NETWORK = "crashy";

type AddFaultPoint = Extract<FaultPoint, `add-${string}`>;

/** What a kill at each step of ADD leaves behind; typed so a new ADD fault point needs a row here. */
const LEFT_BY: Record<AddFaultPoint, { state: "adding" | "ready"; hostVeth: boolean; podConfigured: boolean }> = {
  "add-reserved": { state: "adding", hostVeth: false, podConfigured: false },
  "add-host-side": { state: "adding", hostVeth: true, podConfigured: false },
  "add-pod-side": { state: "adding", hostVeth: true, podConfigured: true },
  "add-committed": { state: "ready", hostVeth: true, podConfigured: true },
};

interface LivePod {
  netns: TestNetns;
  result: PodAttachmentResult;
}

describe("trellis killed at each fault point, then the runtime's next verb", () => {
  const pool = new NetnsPool();
  const state = tempDir("crash");
  const config = {
    cniVersion: "1.1.0", name: NETWORK, type: "trellis", ipMasq: true,
    ipam: { ranges: [[{ subnet: "10.244.9.0/24" }], [{ subnet: "fd00:10:244:9::/64" }]], dataDir: state.path },
  };
  let node: TestNetns;
  /** The pods the runtime believes run: every GC's valid list, and what each test checks is untouched. */
  const live = new Map<string, LivePod>();

  before(async () => {
    sweepStaleNamespaces();
    node = pool.create("node");
    await addLive("healthy");
  });
  after(() => {
    pool.removeAll();
    state.remove();
  });

  async function addLive(id: string): Promise<LivePod> {
    const netns = pool.create("pod");
    const pod = { netns, result: await addPod(node, config, { id, netns: netns.path }) };
    live.set(id, pod);
    return pod;
  }

  function recordOf(id: string): PodRecord | undefined {
    return recordedPods(state.path, NETWORK).find((record) => record.containerId === id);
  }

  function assertKilled(outcome: FaultOutcome, what: string): void {
    assert.equal(outcome.signal, "SIGKILL", `${what} died by SIGKILL (it exited ${outcome.code}: ${outcome.stdout} ${outcome.stderr})`);
    assert.equal(outcome.stdout, "", `${what} printed no result`);
  }

  /** ADD with the fault point set; returns the record the dead ADD left. */
  async function addKilledAt(point: AddFaultPoint, id: string, netns: TestNetns): Promise<PodRecord> {
    assertKilled(await trellisAtFaultPoint(point, "ADD", node, config, { id, netns: netns.path }), `ADD of ${id} at ${point}`);
    const record = recordOf(id);
    assert.ok(record, `the ADD of ${id} killed at ${point} left its record`);
    return record;
  }

  /** The record, host veth and pod interface match what ADD had done when killed at `point`. */
  function assertLeftBy(point: AddFaultPoint, record: PodRecord, netns: TestNetns): void {
    const expected = LEFT_BY[point];
    assert.equal(record.state, expected.state, `state of the record after a kill at ${point}`);
    assert.deepEqual(record.addresses.map(familyOf).sort(), [4, 6], `one address per family reserved: ${record.addresses}`);
    assert.equal(hostVeths(node).includes(record.hostIfname), expected.hostVeth, `host veth ${record.hostIfname} exists after a kill at ${point}`);
    assert.deepEqual(podAddresses(netns), expected.podConfigured ? [...record.addresses].sort() : [], `pod eth0 addresses after a kill at ${point}`);
  }

  /** The record, its leases, the host veth and the pod's end of it are all gone. */
  function assertGone(record: PodRecord, netns: TestNetns): void {
    assert.equal(recordOf(record.containerId), undefined, `no record or lease of ${record.containerId} is left`);
    assert.ok(!hostVeths(node).includes(record.hostIfname), `host veth ${record.hostIfname} of ${record.containerId} is gone`);
    assert.deepEqual(podAddresses(netns), [], `pod ${record.containerId} has no eth0 left`);
  }

  async function gc(): Promise<void> {
    const outcome = await trellis("GC", node, { ...config, "cni.dev/valid-attachments": validList() });
    assert.equal(outcome.code, 0, `GC: ${outcome.stdout} ${outcome.stderr}`);
  }

  function validList(): Array<{ containerID: string; ifname: string }> {
    return [...live.keys()].map((id) => ({ containerID: id, ifname: "eth0" }));
  }

  async function del(id: string, netns: TestNetns): Promise<void> {
    const outcome = await trellis("DEL", node, config, { id, netns: netns.path });
    assert.equal(outcome.code, 0, `DEL of ${id}: ${outcome.stdout} ${outcome.stderr}`);
  }

  /** Every live pod keeps its ready record, its addresses, its veth, its traffic on both families, and passes CHECK. */
  async function assertLivePodsWork(): Promise<void> {
    const veths = hostVeths(node);
    for (const [id, { netns, result }] of live) {
      const record = recordOf(id);
      assert.equal(record?.state, "ready", `live pod ${id} is recorded ready`);
      assert.deepEqual([...record.addresses].sort(), addressesOf(result).sort(), `live pod ${id} keeps the addresses ADD returned`);
      assert.ok(veths.includes(result.interfaces[1].name), `live pod ${id} keeps its veth ${result.interfaces[1].name}`);
      for (const address of addressesOf(result)) assert.ok(ping(node, address), `the node reaches live pod ${id} at ${address}`);
      const check = await trellis("CHECK", node, { ...config, prevResult: result }, { id, netns: netns.path });
      assert.equal(check.code, 0, `CHECK of live pod ${id}: ${check.stdout} ${check.stderr}`);
    }
  }

  /** The node holds nothing the state does not own, the state nothing the node lacks, and no address is held twice. */
  function assertNoLeaks(): void {
    const records = recordedPods(state.path, NETWORK);
    assert.deepEqual(records.filter((record) => record.state !== "ready"), [], "every record is ready and every lease has a record");
    assert.deepEqual(hostVeths(node), records.map((record) => record.hostIfname).sort(), "every veth has a record, every record its veth");
    const addresses = records.flatMap((record) => record.addresses);
    assert.equal(new Set(addresses).size, addresses.length, `no address is held twice: ${addresses.join(" ")}`);
    assert.deepEqual(records.map((record) => record.containerId).sort(), [...live.keys()].sort(), "the records are the live pods");
    assert.deepEqual(masqueradeChains(node), records.length ? [`masq-${NETWORK}`] : undefined, "a masquerade chain exactly while the network has pods");
  }

  for (const point of ["add-reserved", "add-host-side", "add-pod-side"] as const) {
    // Bug caught: GC taking a killed ADD's `adding` record for one still running (its owner is
    // dead) and keeping its addresses forever; or releasing the record but not its leases or
    // its veth; or touching a pod its valid list names.
    it(`ADD killed at ${point}: GC without it releases its record, leases and veth, and leaves the live pods alone`, async () => {
      const netns = pool.create("pod");
      const killed = await addKilledAt(point, `gc-after-${point}`, netns);
      assertLeftBy(point, killed, netns);
      await gc();
      assertGone(killed, netns);
      await assertLivePodsWork();
      assertNoLeaks();
    });

    // Bug caught: the retried ADD refused as a duplicate or as "already running" because the
    // dead ADD's record was not taken over; or given fresh addresses while the dead record's
    // leases stayed (an address held twice); or failing on the veth the dead ADD left.
    it(`ADD killed at ${point}: ADD again takes the dead record over and the pod works`, async () => {
      const id = `readd-after-${point}`;
      const netns = pool.create("pod");
      assertLeftBy(point, await addKilledAt(point, id, netns), netns);
      const result = await addPod(node, config, { id, netns: netns.path });
      live.set(id, { netns, result });
      for (const address of addressesOf(live.get("healthy")!.result)) assert.ok(ping(netns, address), `the retried pod reaches the healthy pod at ${address}`);
      await assertLivePodsWork();
      assertNoLeaks();
    });
  }

  // Bug caught: a pod the runtime never got a result for cannot be deleted without that result:
  // DEL must find everything (veth, leases, masquerade share) from the record alone.
  it("ADD killed at add-committed leaves a ready pod the runtime never heard of; its DEL removes all of it", async () => {
    const netns = pool.create("pod");
    const killed = await addKilledAt("add-committed", "del-after-add-committed", netns);
    assertLeftBy("add-committed", killed, netns);
    assert.deepEqual(masqueradeChains(node), [`masq-${NETWORK}`]);
    await del(killed.containerId, netns);
    assertGone(killed, netns);
    await assertLivePodsWork();
    assertNoLeaks();
  });

  // Bug caught: DEL that cannot resume: the second DEL failing on the veth the first already
  // deleted, or finding no veth and taking the pod for gone, leaving its record and leases.
  it("DEL killed at del-unlinked keeps the record and leases; a second DEL finishes", async () => {
    const id = "del-twice";
    const netns = pool.create("pod");
    const result = await addPod(node, config, { id, netns: netns.path });
    assertKilled(await trellisAtFaultPoint("del-unlinked", "DEL", node, config, { id, netns: netns.path }), `DEL of ${id} at del-unlinked`);
    const record = recordOf(id);
    assert.equal(record?.state, "ready", "the record outlives the killed DEL");
    assert.deepEqual([...record.addresses].sort(), addressesOf(result).sort(), "and so do its leases");
    assert.ok(!hostVeths(node).includes(record.hostIfname), "the killed DEL had deleted the veth");
    await del(id, netns);
    assertGone(record, netns);
    await assertLivePodsWork();
    assertNoLeaks();
  });

  // Bug caught: GC deleting only the veths of the records it released, a list the kill loses:
  // those veths would then stay forever. The next GC must find them by their alias.
  it("GC killed at gc-released leaves the released pods' veths without records; the next GC removes them", async () => {
    const doomed = await Promise.all(["gone-1", "gone-2"].map(async (id) => {
      const netns = pool.create("pod");
      await addPod(node, config, { id, netns: netns.path });
      return { record: recordOf(id)!, netns };
    }));
    const outcome = await trellisAtFaultPoint("gc-released", "GC", node, { ...config, "cni.dev/valid-attachments": validList() });
    assertKilled(outcome, "GC at gc-released");
    for (const { record } of doomed) {
      assert.equal(recordOf(record.containerId), undefined, `the killed GC released ${record.containerId}`);
      assert.equal(vethAlias(node, record.hostIfname), `trellis:${NETWORK}`, `the veth of ${record.containerId} is left, with the network's alias`);
    }
    await gc();
    for (const { record, netns } of doomed) assertGone(record, netns);
    await assertLivePodsWork();
    assertNoLeaks();
  });

  // Bug caught: any crash path above leaving something (a veth, a lease, a masquerade chain)
  // that the runtime's DELs of the pods it knows would not remove.
  it("after all of it, DEL of every live pod leaves no record, lease, veth or masquerade table", async () => {
    assertNoLeaks();
    for (const [id, { netns }] of live) {
      await del(id, netns);
      live.delete(id);
      assertNoLeaks();
    }
    assert.deepEqual(recordedPods(state.path, NETWORK), []);
    assert.deepEqual(hostVeths(node), []);
    assert.equal(masqueradeChains(node), undefined, "the masquerade table went with the last pod");
  });
});

function familyOf(address: string): 4 | 6 {
  return address.includes(":") ? 6 : 4;
}

/** Global addresses on the pod's eth0, sorted; none when it has no eth0. */
function podAddresses(netns: TestNetns): string[] {
  const links = JSON.parse(inNetns(netns, "ip", ["-json", "address", "show"])) as Array<{ ifname: string; addr_info?: Array<{ local: string; scope: string }> }>;
  const eth0 = links.find((link) => link.ifname === "eth0");
  return (eth0?.addr_info ?? []).filter((info) => info.scope === "global").map((info) => info.local).sort();
}

function vethAlias(node: TestNetns, name: string): string | undefined {
  const [link] = JSON.parse(inNetns(node, "ip", ["-json", "link", "show", "dev", name])) as Array<{ ifalias?: string }>;
  return link?.ifalias;
}

/** The network chains of the node's Trellis masquerade table; undefined when the table does not exist. */
function masqueradeChains(node: TestNetns): string[] | undefined {
  const { nftables } = JSON.parse(inNetns(node, "nft", ["-j", "list", "ruleset"])) as { nftables: Array<{ table?: { name: string }; chain?: { table: string; name: string } }> };
  const table = nftables.find((item) => item.table?.name.startsWith("trellis-cni"))?.table?.name;
  if (table === undefined) return undefined;
  return nftables.flatMap((item) => (item.chain?.table === table && item.chain.name !== "postrouting" ? [item.chain.name] : [])).sort();
}
