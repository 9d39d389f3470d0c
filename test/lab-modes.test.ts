/**
 * The lab in every routing mode: VXLAN and auto across two underlay subnets (dual-stack), each
 * family alone, and direct where it cannot work, which must be said, never black-holed. Each
 * run's whole matrix must pass: every pod to every pod on every family with its own source
 * address, every node to every pod, every pod to the outside through its node's address.
 */
import assert from "node:assert/strict";
import { after, describe, it } from "node:test";
import { agentLogEntries, agentRoutes, downAll, labName, labStatus, runTrellis } from "./support/lab.js";

after(downAll);

const runs = [
  { tag: "vx", mode: "vxlan", family: "dual", probes: 300 },
  { tag: "au", mode: "auto", family: "dual", probes: 300 },
  { tag: "v4", mode: "auto", family: "ipv4", probes: 150 },
  { tag: "v6", mode: "auto", family: "ipv6", probes: 150 },
];

describe("trellis lab across two underlay subnets", () => {
  for (const run of runs) {
    // Bug caught: a mode or family whose routes, VXLAN entries or masquerade leave some pair of pods apart.
    it(`${run.mode}, ${run.family}: the whole matrix passes`, { timeout: 180_000 }, () => {
      const name = labName(run.tag);
      const up = runTrellis(["lab", "up", "--name", name, "--mode", run.mode, "--family", run.family, "--subnets", "2"]);
      assert.equal(up.status, 0, up.stdout + up.stderr);
      assert.match(up.stdout, new RegExp(`PASS: ${run.probes}/${run.probes} probes ok`));
      const status = labStatus(name);
      const [node1, node2, node3] = status.nodes;
      const routes = agentRoutes(name, "node1");
      for (const cidr of node3.podCidrs) {
        // node1 and node3 share subnet 0; node2 sits on subnet 1.
        const expected = run.mode === "auto" ? `dev eth0` : `dev trellis-vx${cidr.includes(":") ? 6 : 4}`;
        assert.ok(routes.some((route) => route.startsWith(cidr) && route.endsWith(expected)), `${cidr} ${expected} in ${routes.join("; ")}`);
      }
      for (const cidr of node2.podCidrs) {
        assert.ok(routes.some((route) => route.startsWith(cidr) && /dev trellis-vx[46]$/.test(route)), `${cidr} over VXLAN in ${routes.join("; ")}`);
      }
      assert.equal(routes.length, node2.podCidrs.length + node3.podCidrs.length, "one route per peer pod CIDR, none for node1's own");
      assert.ok(node1.agentRunning);
      const down = runTrellis(["lab", "down", "--name", name]);
      assert.equal(down.status, 0, down.stderr);
    });
  }

  // Bug caught: direct routing to a peer off the connected subnet installed a route into nowhere and said nothing.
  it("direct: peers on the other subnet are named unreachable by direct routing, in the agent's log and in the check", { timeout: 180_000 }, () => {
    const name = labName("dr");
    const up = runTrellis(["lab", "up", "--name", name, "--mode", "direct", "--subnets", "2"]);
    assert.equal(up.status, 1, up.stdout + up.stderr);
    assert.match(up.stdout, /unreachable by direct routing/);
    const status = labStatus(name);
    const [node1, node2] = status.nodes;
    const unreachable = agentLogEntries(node1.agentLog, "peer unreachable");
    assert.deepEqual(unreachable.map((entry) => [entry.peer, entry.podCidr]).sort(), node2.podCidrs.map((cidr) => ["node2", cidr]).sort());
    assert.match(String(unreachable[0].reason), /its node address 198\.18\.1\.12 is not on a subnet connected to this node \(198\.18\.0\.0\/24\); direct routing needs the peers on one link: use --mode vxlan or auto|fd00:198:18:1::12/);
    assert.ok(!agentRoutes(name, "node1").some((route) => node2.podCidrs.some((cidr) => route.startsWith(cidr))), "no route into nowhere");
    const check = runTrellis(["lab", "check", "--name", name, "--json"]);
    const result = JSON.parse(check.stdout) as { probes: Array<{ fromNode?: string; toNode?: string; ok: boolean }> };
    const sameSubnet = result.probes.filter((probe) => probe.fromNode !== "node2" && probe.toNode !== "node2" && probe.toNode !== undefined);
    assert.ok(sameSubnet.length > 0 && sameSubnet.every((probe) => probe.ok), "node1 and node3 share a subnet and reach each other directly");
  });
});
