import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { CheckProbe, CheckReport } from "../lab/check.js";
import { renderCheckReport } from "./lab-report.js";

const nodeOf = (name: string) => name.split("-")[0];
const probe = (from: string, to: string, extra: Partial<CheckProbe> = {}): CheckProbe => ({
  from, to, fromNode: nodeOf(from), ...(to === "external" ? {} : { toNode: nodeOf(to) }), kind: "tcp", family: "IPv4", address: "10.244.2.2", ok: true, ms: 1, ...extra,
});

function report(probes: CheckProbe[]): CheckReport {
  const failed = probes.filter((p) => !p.ok).length;
  return {
    lab: "t", ok: failed === 0, total: probes.length, failed, seconds: 1.23,
    agents: [{ node: "node1", pid: 1, running: true }, { node: "node2", pid: 2, running: false }],
    sources: ["node1-pod0", "node2-pod0", "node1"],
    destinations: ["node1-pod0", "node2-pod0", "external"],
    probes,
  };
}

describe("lab check report", () => {
  it("shows one row per source, ok or the first failure in short, every failure in full, and a summary", () => {
    const text = renderCheckReport(report([
      probe("node1-pod0", "node2-pod0", { ok: false, seenSource: "198.18.0.11", error: "wrong source address 198.18.0.11 (expected 10.244.1.2)" }),
      probe("node1-pod0", "node2-pod0", { kind: "icmp", family: "IPv6", ok: false, error: "timeout: no echo reply within 3000 ms" }),
      probe("node1-pod0", "external"),
      probe("node2-pod0", "node1-pod0"),
      probe("node1", "node2-pod0", { kind: "icmp" }),
    ]));
    assert.equal(text, [
      "note: the agent of node2 is not running",
      "FROM \\ TO   node1-pod0  node2-pod0               external",
      "node1-pod0  -           tcp4 src 198.18.0.11 +1  ok",
      "node2-pod0  ok          -                        -",
      "node1       -           ok                       -",
      "failures:",
      "  node1-pod0 -> node2-pod0 TCP IPv4 10.244.2.2: wrong source address 198.18.0.11 (expected 10.244.1.2)",
      "  node1-pod0 -> node2-pod0 ICMP IPv6 10.244.2.2: timeout: no echo reply within 3000 ms",
      "FAIL: 3/5 probes ok in 1.2 s (pod to pod: ICMP, and TCP and UDP seeing the sender's pod IP; node to pod: ICMP, TCP and UDP; pod to external: TCP seeing the pod's node address)",
      "",
    ].join("\n"));
  });

  it("gives a wide lab one column per destination node", () => {
    const pods = Array.from({ length: 14 }, (_, i) => `node${(i % 2) + 1}-pod${Math.floor(i / 2)}`);
    const probes = pods.flatMap((from) => pods.filter((to) => to !== from).map((to) => probe(from, to, to === "node2-pod3" ? { ok: false, error: "timeout: no connection within 3000 ms" } : {})));
    const text = renderCheckReport({ ...report(probes), sources: pods, destinations: [...pods, "external"] });
    const [, header, first] = text.split("\n");
    assert.equal(header, "FROM \\ TO PODS ON  node1  node2");
    assert.equal(first, "node1-pod0         ok     tcp4 timeout");
  });

  it("says `no direct route` where direct routing cannot reach a node on another subnet", () => {
    const text = renderCheckReport(report([probe("node1-pod0", "node2-pod0", { ok: false, error: "timeout: no connection within 3000 ms (unreachable by direct routing: node1 and node2 are on different underlay subnets)" })]));
    assert.match(text, /node1-pod0 +- +no direct route/);
  });
});
