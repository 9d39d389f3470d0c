/**
 * The README's main job: `trellis lab up` builds a 3-node dual-stack cluster of namespaces with
 * real agents, the check passes, status/exec work for scripts, and `lab down` leaves nothing.
 */
import assert from "node:assert/strict";
import { spawn, spawnSync, type SpawnSyncReturns } from "node:child_process";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { after, describe, it } from "node:test";
import { TRELLIS } from "./support/trellis-cni.js";

const LAB_ROOT = "/run/trellis/lab";
const names = new Set<string>();

/** A lab name unique to this test process. */
function labName(tag: string): string {
  const name = `lt${process.pid}${tag}`;
  names.add(name);
  return name;
}

function trellis(args: string[], timeout = 180_000): SpawnSyncReturns<string> {
  return spawnSync(TRELLIS, args, { encoding: "utf8", timeout });
}

/** Whether the process runs; a zombie waiting for init to reap it has ended. */
function running(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return !/^[ZX]/.test(stat.slice(stat.lastIndexOf(")") + 2));
  } catch {
    return false;
  }
}

function labNamespaces(name: string): string[] {
  const all = existsSync("/var/run/netns") ? readdirSync("/var/run/netns") : [];
  return all.filter((netns) => netns.startsWith(`${name}-`));
}

after(() => {
  for (const name of names) trellis(["lab", "down", "--name", name], 60_000);
});

interface Status {
  name: string;
  store: string;
  nodes: Array<{ name: string; netns: string; addresses: string[]; podCidrs: string[]; agentPid: number; agentRunning: boolean }>;
  pods: Array<{ name: string; node: string; netns: string; addresses: string[]; probePid: number }>;
  external: { netns: string; addresses: string[]; probePid: number };
}

interface CheckJson {
  ok: boolean;
  total: number;
  probes: Array<{ from: string; to: string; kind: string; ok: boolean; expectedSource?: string; seenSource?: string; error?: string }>;
}

describe("trellis lab", () => {
  it("up (direct, dual-stack, 3 nodes x 2 pods) passes its check; status, check --json and exec serve scripts; down leaves nothing", { timeout: 300_000 }, () => {
    const name = labName("a");
    const up = trellis(["lab", "up", "--name", name, "--mode", "direct", "--nodes", "3", "--pods-per-node", "2", "--family", "dual", "--subnets", "1"]);
    assert.equal(up.status, 0, up.stdout + up.stderr);
    assert.match(up.stdout, /PASS: 300\/300 probes ok/);

    const statusRun = trellis(["lab", "status", "--name", name, "--json"]);
    assert.equal(statusRun.status, 0, statusRun.stderr);
    const status = JSON.parse(statusRun.stdout) as Status;
    assert.equal(status.name, name);
    assert.equal(status.store, `sqlite:${LAB_ROOT}/${name}/cluster.db`);
    assert.deepEqual(status.nodes.map((node) => [node.name, node.netns, node.addresses]), [
      ["node1", `/var/run/netns/${name}-node1`, ["198.18.0.11", "fd00:198:18::11"]],
      ["node2", `/var/run/netns/${name}-node2`, ["198.18.0.12", "fd00:198:18::12"]],
      ["node3", `/var/run/netns/${name}-node3`, ["198.18.0.13", "fd00:198:18::13"]],
    ]);
    for (const node of status.nodes) {
      assert.equal(node.podCidrs.length, 2, JSON.stringify(node));
      assert.match(node.podCidrs[0], /^10\.244\.[0-9]+\.0\/24$/);
      assert.match(node.podCidrs[1], /^fd00:10:244:[0-9a-f:]*:\/64$/);
      assert.equal(typeof node.agentPid, "number");
      assert.equal(node.agentRunning, true);
    }
    assert.equal(new Set(status.nodes.flatMap((node) => node.podCidrs)).size, 6, "every node has its own pod CIDRs");
    assert.equal(status.pods.length, 6);
    for (const pod of status.pods) {
      assert.equal(pod.netns, `/var/run/netns/${name}-${pod.name}`);
      assert.equal(pod.addresses.length, 2, JSON.stringify(pod));
      assert.ok(existsSync(pod.netns));
    }
    assert.deepEqual(status.external, { ...status.external, netns: `/var/run/netns/${name}-external`, addresses: ["198.18.0.200", "fd00:198:18::200"] });

    const check = trellis(["lab", "check", "--name", name, "--json"], 120_000);
    assert.equal(check.status, 0, check.stdout + check.stderr);
    const report = JSON.parse(check.stdout) as CheckJson;
    assert.equal(report.ok, true);
    // pod to pod: 6 x 5 x 2 families x ICMP, TCP, UDP; pod to external: 6 x 2; node to pod: 3 x 6 x 2 x 3
    assert.equal(report.total, 180 + 12 + 108);
    const sourced = report.probes.filter((probe) => probe.expectedSource !== undefined);
    assert.equal(sourced.length, 6 * 5 * 2 * 2 + 6 * 2);
    for (const probe of sourced) assert.equal(probe.seenSource, probe.expectedSource, JSON.stringify(probe));

    const [pod] = status.pods;
    const address = trellis(["lab", "exec", "--name", name, pod.name, "--", "ip", "-o", "address", "show", "dev", "eth0"]);
    assert.equal(address.status, 0, address.stderr);
    assert.ok(address.stdout.includes(`inet ${pod.addresses[0]}/24`), address.stdout);
    assert.equal(trellis(["lab", "exec", "--name", name, "underlay", "--", "sh", "-c", "exit 3"]).status, 3);
    const unknown = trellis(["lab", "exec", "--name", name, "node9", "--", "true"]);
    assert.notEqual(unknown.status, 0);
    assert.match(unknown.stderr, /has no member "node9"; its members are underlay, external, node1/);

    // Bug caught: `lab pod add external --node node1` accepted, after which `lab exec external` ran in the pod.
    const statusBefore = trellis(["lab", "status", "--name", name, "--json"]).stdout;
    for (const [podName, holder] of [["external", "taken by the lab's external host"], ["node2", "taken by the lab's node node2"], ["underlay", "taken by the lab's underlay"], ["control", "kept for the control-plane host of Kubernetes labs"]]) {
      const refused = trellis(["lab", "pod", "add", podName, "--node", "node1", "--name", name]);
      assert.notEqual(refused.status, 0, podName);
      assert.ok(refused.stderr.includes(`pod name "${podName}" is ${holder}`), refused.stderr);
      assert.ok(refused.stderr.includes("lab members are named uniquely: nodes node1…node3, external, underlay, and its pods"), refused.stderr);
    }
    assert.equal(trellis(["lab", "status", "--name", name, "--json"]).stdout, statusBefore, "the refused pods changed nothing");
    assert.equal(labNamespaces(name).length, 11, "no namespace was made for them");
    const external = trellis(["lab", "exec", "--name", name, "external", "--", "ip", "-o", "address", "show", "dev", "eth0"]);
    assert.ok(external.stdout.includes("inet 198.18.0.200/24"), external.stdout + external.stderr);

    const again = trellis(["lab", "up", "--name", name]);
    assert.notEqual(again.status, 0);
    assert.match(again.stderr, new RegExp(`a lab named "${name}" is already up .*trellis lab down --name ${name}`));
    assert.equal(trellis(["lab", "status", "--name", name, "--json"]).status, 0, "the refused lab up left the running lab alone");

    const pids = [...status.nodes.map((node) => node.agentPid), ...status.pods.map((p) => p.probePid), status.external.probePid];
    const down = trellis(["lab", "down", "--name", name], 120_000);
    assert.equal(down.status, 0, down.stdout + down.stderr);
    assert.match(down.stdout, new RegExp(`lab ${name} removed: 11 namespaces, 10 processes, 6 pods released through CNI DEL`));
    assert.deepEqual(labNamespaces(name), []);
    assert.deepEqual(pids.filter(running), []);
    assert.equal(existsSync(`${LAB_ROOT}/${name}`), false);
    const twice = trellis(["lab", "down", "--name", name]);
    assert.equal(twice.status, 0);
    assert.match(twice.stdout, /nothing to remove/);
  });

  it("refuses bad input with the value and what is allowed, creating nothing", () => {
    const name = labName("b");
    const cases: Array<[string[], RegExp]> = [
      [["--mode", "bgp"], /--mode "bgp" is invalid: expected one of direct, vxlan, auto/],
      [["--nodes", "0"], /--nodes "0" is invalid: expected a whole number from 1 to 20/],
      [["--pods-per-node", "x"], /--pods-per-node "x" is invalid: expected a whole number from 1 to 20/],
      [["--family", "ipv5"], /--family "ipv5" is invalid: expected one of ipv4, ipv6, dual/],
      [["--subnets", "3"], /--subnets "3" is invalid: expected one of 1, 2/],
      [["--store", "etcd://127.0.0.1:2379"], /127\.0\.0\.1 is each node's own loopback/],
    ];
    for (const [args, message] of cases) {
      const run = trellis(["lab", "up", "--name", name, ...args]);
      assert.notEqual(run.status, 0, args.join(" "));
      assert.match(run.stderr, message);
    }
    const slash = trellis(["lab", "up", "--name", `${name}/x`]);
    assert.notEqual(slash.status, 0);
    assert.match(slash.stderr, /--name "lt[0-9]+b\/x" is invalid: a lab name starts with a lowercase letter, holds only lowercase letters, digits and "-"/);
    const long = `${name}${"x".repeat(40)}`;
    const tooLong = trellis(["lab", "up", "--name", long]);
    assert.notEqual(tooLong.status, 0);
    assert.match(tooLong.stderr, /is [0-9]+ characters long; at most 32 are allowed/);
    assert.deepEqual([...labNamespaces(name), ...labNamespaces(long)], []);
    assert.equal(existsSync(`${LAB_ROOT}/${name}`), false);
    assert.notEqual(trellis(["lab", "status", "--name", name]).status, 0);
  });

  it("lab up interrupted by SIGINT removes what it had made", { timeout: 180_000 }, async () => {
    const name = labName("c");
    const child = spawn(TRELLIS, ["lab", "up", "--name", name, "--nodes", "2", "--pods-per-node", "3"], { stdio: ["ignore", "pipe", "pipe"] });
    let output = "";
    let interrupted = false;
    child.stdout.on("data", (chunk: Buffer) => {
      output += chunk.toString();
      if (!interrupted && /agents started/.test(output)) interrupted = child.kill("SIGINT");
    });
    child.stderr.on("data", (chunk: Buffer) => (output += chunk.toString()));
    const code = await new Promise<number | null>((resolve) => child.on("close", resolve));
    assert.equal(code, 130, output);
    assert.match(output, new RegExp(`lab ${name} interrupted; removing what was made`));
    assert.deepEqual(labNamespaces(name), []);
    assert.equal(existsSync(`${LAB_ROOT}/${name}`), false);
  });
});
