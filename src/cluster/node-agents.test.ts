import assert from "node:assert/strict";
import { after, describe, test } from "node:test";
import { temporaryStores, testPlan } from "../../test/support/cluster.js";
import { claimNode, parseHeartbeat, readHeartbeat, type ClaimLiveness, type Heartbeat } from "./node-agents.js";
import { addNode, heartbeatKey, listNodes, removeNode, type AgentClaim, type NodeNetworkRecord, type NodeRecord } from "./node-cidrs.js";
import { openCluster, type Cluster } from "./state.js";

const stores = temporaryStores();
after(() => stores.cleanup());

function cluster(): Promise<Cluster> {
  return openCluster(stores.open(), testPlan({ podCidrs: ["10.244.0.0/16", "fd00:10:244::/56"], serviceCidrs: ["10.96.0.0/16", "fd00:10:96::/112"] }));
}

function agent(id: string, host: string, pid: number): AgentClaim {
  return { id, host, bootId: `boot-of-${host}`, pid, startTime: "123456" };
}

function network(claim: AgentClaim, address: string): NodeNetworkRecord {
  return { addresses: [address], vteps: [{ family: 4, mac: "02:00:00:00:00:01" }], mtu: 1500, agent: claim };
}

const FIRST = agent("agent-1", "host-a", 4242);
const SECOND = agent("agent-2", "host-b", 777);

/** A liveness judge that records what it was asked and answers `live`. */
function judge(live: boolean): { isLive: ClaimLiveness; asked: Array<[AgentClaim, Heartbeat | undefined]> } {
  const asked: Array<[AgentClaim, Heartbeat | undefined]> = [];
  return { isLive: (claim, heartbeat) => (asked.push([claim, heartbeat]), live), asked };
}

const neverAsked: ClaimLiveness = () => assert.fail("no other agent's claim to judge");

/** Everything the store holds, with its revision: what "writes nothing" is checked against. */
async function snapshot(c: Cluster) {
  const { entries, revision } = await c.store.list("/");
  return { revision, entries: entries.map((entry) => [entry.key, entry.value, entry.modRevision]) };
}

/** The heartbeat with `at` replaced by whether it lies in [from, to]: the agent stamps it with its own clock. */
function stamped(heartbeat: Heartbeat | undefined, from: number, to: number) {
  return heartbeat && { agent: heartbeat.agent, stampedDuringClaim: heartbeat.at >= from && heartbeat.at <= to };
}

/** Puts a heartbeat as another agent would have left it. */
async function putHeartbeat(c: Cluster, name: string, heartbeat: Heartbeat): Promise<void> {
  await c.store.txn({ compares: [], operations: [{ type: "put", key: heartbeatKey(name), value: JSON.stringify(heartbeat) }] });
}

describe("claimNode", () => {
  // Bugs caught: a new node without pod CIDRs (or one family only); no heartbeat written at
  // claim time (peers would drop the node's routes until the first beat).
  test("a first claim creates the node with its pod CIDRs and writes a heartbeat", async () => {
    const c = await cluster();
    const published = network(FIRST, "198.18.0.10");
    const from = Date.now();
    const record = await claimNode(c, "node-1", published, neverAsked);
    const to = Date.now();
    const expected: NodeRecord = { name: "node-1", podCidrs: ["10.244.0.0/24", "fd00:10:244::/64"], network: published };
    assert.deepEqual(record, expected);
    assert.deepEqual(await listNodes(c.store), [expected]);
    assert.deepEqual(stamped(await readHeartbeat(c.store, "node-1"), from, to), { agent: "agent-1", stampedDuringClaim: true });
  });

  // Bug caught: a restarted agent (new id) given new pod CIDRs, so every pod it had keeps an
  // address from a block now routed elsewhere, or its old block leaks.
  test("a later claim by another agent keeps the pod CIDRs when the old claim is not live", async () => {
    const c = await cluster();
    await claimNode(c, "node-1", network(FIRST, "198.18.0.10"), neverAsked);
    const oldBeat = { agent: "agent-1", at: Date.now() - 90_000 };
    await putHeartbeat(c, "node-1", oldBeat);
    const { isLive, asked } = judge(false);
    const published = network(SECOND, "198.18.0.20");
    const from = Date.now();
    const record = await claimNode(c, "node-1", published, isLive);
    const to = Date.now();
    assert.deepEqual(asked, [[FIRST, oldBeat]], "judged on the old claim and its heartbeat");
    const expected: NodeRecord = { name: "node-1", podCidrs: ["10.244.0.0/24", "fd00:10:244::/64"], network: published };
    assert.deepEqual(record, expected);
    assert.deepEqual(await listNodes(c.store), [expected]);
    assert.deepEqual(stamped(await readHeartbeat(c.store, "node-1"), from, to), { agent: "agent-2", stampedDuringClaim: true });
  });

  // Bug caught: two agents serving one node, both installing routes and handing out the same pod IPs.
  test("a claim is refused, writing nothing, while another agent's claim is live", async () => {
    const c = await cluster();
    await claimNode(c, "node-1", network(FIRST, "198.18.0.10"), neverAsked);
    const liveBeat = { agent: "agent-1", at: Date.now() - 42_000 };
    await putHeartbeat(c, "node-1", liveBeat);
    const before = await snapshot(c);
    const { isLive, asked } = judge(true);
    await assert.rejects(
      claimNode(c, "node-1", network(SECOND, "198.18.0.20"), isLive),
      (error: Error) => {
        assert.equal(
          error.message,
          "node node-1 is served by a live agent (pid 4242 on host-a, last heartbeat 42 s ago); stop that agent, or give this one another --node-name",
        );
        return true;
      },
    );
    assert.deepEqual(asked, [[FIRST, liveBeat]]);
    assert.deepEqual(await snapshot(c), before, "the node record and the heartbeat are unchanged");
  });

  // Bug caught: a claim whose heartbeat is gone judged by a crash on `undefined`, or the message claiming a heartbeat.
  test("a live claim without a heartbeat is refused with no heartbeat age", async () => {
    const c = await cluster();
    await claimNode(c, "node-1", network(FIRST, "198.18.0.10"), neverAsked);
    await c.store.delete(heartbeatKey("node-1"));
    const before = await snapshot(c);
    const { isLive, asked } = judge(true);
    await assert.rejects(claimNode(c, "node-1", network(SECOND, "198.18.0.20"), isLive), (error: Error) => {
      assert.equal(error.message, "node node-1 is served by a live agent (pid 4242 on host-a); stop that agent, or give this one another --node-name");
      return true;
    });
    assert.deepEqual(asked, [[FIRST, undefined]]);
    assert.deepEqual(await snapshot(c), before);
  });

  // Bug caught: an agent refusing its own earlier claim (after a store reconnect), or a node
  // added by `trellis node add` (no agent yet) treated as claimed.
  test("the same agent, or a node no agent has claimed, is not judged", async () => {
    const c = await cluster();
    await claimNode(c, "node-1", network(FIRST, "198.18.0.10"), neverAsked);
    const again = await claimNode(c, "node-1", network(FIRST, "198.18.0.11"), neverAsked);
    assert.deepEqual(again, { name: "node-1", podCidrs: ["10.244.0.0/24", "fd00:10:244::/64"], network: network(FIRST, "198.18.0.11") });
    await addNode(c, "node-2");
    const adopted = await claimNode(c, "node-2", network(SECOND, "198.18.0.20"), neverAsked);
    assert.deepEqual(adopted, { name: "node-2", podCidrs: ["10.244.1.0/24", "fd00:10:244:1::/64"], network: network(SECOND, "198.18.0.20") });
  });
});

describe("removeNode", () => {
  // Bug caught: a removed node's heartbeat left behind, so a new node of that name looks alive to its peers.
  test("also deletes the node's heartbeat", async () => {
    const c = await cluster();
    await claimNode(c, "node-1", network(FIRST, "198.18.0.10"), neverAsked);
    await claimNode(c, "node-2", network(SECOND, "198.18.0.20"), neverAsked);
    await removeNode(c, "node-1");
    assert.deepEqual(
      [(await c.store.list("/heartbeats/")).entries.map((entry) => entry.key), (await listNodes(c.store)).map((node) => node.name)],
      [[heartbeatKey("node-2")], ["node-2"]],
    );
  });
});

describe("parseHeartbeat", () => {
  // Bug caught: a corrupt heartbeat crashing the agent, or read as a live one.
  test("refuses garbage and reads a well-formed heartbeat", () => {
    const values = ["", "not json", "null", "42", "[]", "{}", '{"agent":1,"at":2}', '{"agent":"agent-1"}', '{"agent":"agent-1","at":"5"}', '{"agent":"agent-1","at":5,"extra":true}'];
    assert.deepEqual(
      values.map((value) => parseHeartbeat(value)),
      [undefined, undefined, undefined, undefined, undefined, undefined, undefined, undefined, undefined, { agent: "agent-1", at: 5 }],
    );
  });
});
