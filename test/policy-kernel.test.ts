/*
 * NetworkPolicy and ClusterNetworkPolicy in the kernel: a node namespace with a bridge and pods
 * of namespaces x and y on it (both families), the policy table (src/policy/rules.ts) written
 * through the netlink writer, and every pod probing every pod over TCP on ports 80 and 81. What
 * the kernel lets through must be what the semantics (src/policy/judge.ts) say, cell by cell;
 * a failing step prints both matrices.
 */
import assert from "node:assert/strict";
import { execFileSync, spawn, spawnSync, type ChildProcess } from "node:child_process";
import { after, before, describe, it } from "node:test";
import { parseLine } from "../src/linux/nflog.js";
import { formatIp, parseIp, type Family } from "../src/net/ip.js";
import { tableOps } from "../src/nft/diff.js";
import { encodeBatch } from "../src/nft/netlink.js";
import { judge } from "../src/policy/judge.js";
import { policyRules, POLICY_TABLE, type Denial } from "../src/policy/rules.js";
import type { ClusterNetworkPolicy, NetworkPolicy, PolicyPod, PolicyWorld } from "../src/policy/types.js";
import type { Table } from "../src/nft/model.js";
import { TRELLIS } from "./support/cli-cluster.js";
import { inNetns, NetnsPool, sweepStaleNamespaces, type TestNetns } from "./support/netns.js";

const WRITER = new URL("../dist/trellis-nft-batch", import.meta.url).pathname;
const PORTS = [80, 81] as const;
const LOG_GROUP = 2709;

interface TestPod extends PolicyPod {
  readonly netns: TestNetns;
}

describe("policy in the kernel: one node's pods, both families", { timeout: 300_000 }, () => {
  const pool = new NetnsPool();
  const servers: ChildProcess[] = [];
  let node: TestNetns;
  const pods: TestPod[] = [];
  let written: Table | undefined;
  let denials: ReadonlyMap<string, Denial> = new Map();

  before(async () => {
    sweepStaleNamespaces();
    node = pool.create("polnode");
    const sh = (ns: TestNetns, script: string) => execFileSync("nsenter", [`--net=${ns.path}`, "sh", "-ec", script], { stdio: ["ignore", "ignore", "inherit"] });
    sh(node, [
      "ip link add br0 type bridge", "ip addr add 10.244.0.1/24 dev br0", "ip addr add fd00:10:244::1/64 dev br0 nodad", "ip link set br0 up",
      "sysctl -qw net.ipv4.ip_forward=1", "sysctl -qw net.ipv6.conf.all.forwarding=1",
      // Bridged traffic between two pods passes the inet hooks, as on a node.
      "sysctl -qw net.bridge.bridge-nf-call-iptables=1", "sysctl -qw net.bridge.bridge-nf-call-ip6tables=1",
    ].join("\n"));
    const specs: Array<[string, string, string]> = [["x", "a", "x"], ["x", "b", "x"], ["y", "a", "y"], ["y", "c", "y"]];
    for (const [i, [namespace, name]] of specs.entries()) {
      const netns = pool.create(`pol${namespace}${name}`);
      const host = `vp${process.pid % 10000}${i}`;
      const [v4, v6] = [`10.244.0.${10 + i}`, `fd00:10:244::${10 + i}`];
      execFileSync("ip", ["-n", node.name, "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", netns.name]);
      sh(node, `ip link set ${host} master br0 up`);
      sh(netns, [`ip addr add ${v4}/24 dev eth0`, `ip addr add ${v6}/64 dev eth0 nodad`, "ip link set eth0 up", "ip route add default via 10.244.0.1", "ip -6 route add default via fd00:10:244::1"].join("\n"));
      const server = spawn("nsenter", [`--net=${netns.path}`, TRELLIS, "probe", "serve", PORTS.join(","), "--name", `${namespace}/${name}`], { stdio: ["ignore", "pipe", "inherit"] });
      servers.push(server);
      await new Promise<void>((resolve) => server.stdout!.once("data", () => resolve()));
      pods.push({
        namespace, name, netns, labels: { pod: name }, ips: [parseIp(v4), parseIp(v6)],
        ports: [{ name: "serve-80", containerPort: 80 }, { name: "serve-81", containerPort: 81 }],
      });
    }
  });

  after(() => {
    for (const server of servers) server.kill("SIGKILL");
    pool.removeAll();
  });

  const world = (networkPolicies: NetworkPolicy[], clusterPolicies: ClusterNetworkPolicy[] = []): PolicyWorld => ({
    namespaces: new Map(["x", "y"].map((ns) => [ns, { name: ns, labels: { "kubernetes.io/metadata.name": ns, ns } }])),
    nodes: [],
    networkPolicies,
    clusterPolicies,
  });

  /** Writes the node's table for `state` (removing it when nothing is wanted), as one transaction. */
  const write = (state: PolicyWorld) => {
    const rules = policyRules({ world: state, pods, local: pods, denyLog: { group: LOG_GROUP, rate: 10 } });
    const table = rules.table;
    denials = rules.denials;
    const ops = tableOps(written, table);
    if (ops.length) {
      const result = spawnSync("nsenter", [`--net=${node.path}`, WRITER], { input: encodeBatch(ops) });
      assert.equal(result.status, 0, result.stderr.toString());
    }
    written = table;
  };

  /** Both matrices for one family: what the kernel let through, and what the semantics say. */
  const matrices = (state: PolicyWorld, family: Family) => {
    const seen: string[] = [];
    const want: string[] = [];
    for (const from of pods) {
      const targets = pods.flatMap((to) => PORTS.map((port) => ({ to, port })));
      const result = spawnSync("nsenter", [`--net=${from.netns.path}`, TRELLIS, "probe", "batch"], {
        input: JSON.stringify(targets.map(({ to, port }) => ({ kind: "tcp", address: formatFor(to, family), port, timeoutMs: 400 }))),
        encoding: "utf8",
        timeout: 60_000,
      });
      assert.equal(result.status, 0, result.stderr);
      const outcomes = JSON.parse(result.stdout) as Array<{ ok: boolean }>;
      const id = `${from.namespace}/${from.name}`.padEnd(5);
      seen.push(`${id} ${outcomes.map((outcome) => (outcome.ok ? "." : "X")).join("")}`);
      want.push(`${id} ${targets.map(({ to, port }) => (judge(state, { from: { pod: from, address: from.ips[family === 4 ? 0 : 1] }, to: { pod: to, address: to.ips[family === 4 ? 0 : 1] }, protocol: "TCP", port }).allowed ? "." : "X")).join("")}`);
    }
    return { seen: seen.join("\n"), want: want.join("\n") };
  };

  const step = (state: PolicyWorld, expectSomeDenied: boolean) => {
    write(state);
    for (const family of [4, 6] as const) {
      const { seen, want } = matrices(state, family);
      assert.equal(seen, want, `IPv${family}: the kernel (first) against the semantics (second); columns are x/a x/b y/a y/c, ports 80 81 each`);
      assert.equal(want.includes("X"), expectSomeDenied, "the step denies what it should at all");
    }
  };

  /** The packets each denying policy and direction dropped, from the table's named counters. */
  const denied = () => {
    const counts = new Map<string, number>();
    for (const line of inNetns(node, WRITER, ["--counters", "inet", POLICY_TABLE]).split("\n").filter(Boolean)) {
      const [counter, packets] = line.split(" ");
      const denial = denials.get(counter);
      assert.ok(denial, `counter ${counter} stands for a denial of the rules written`);
      counts.set(`${denial.direction} ${denial.policy}`, (counts.get(`${denial.direction} ${denial.policy}`) ?? 0) + Number(packets));
    }
    return counts;
  };

  it("with no policy the table does not exist and everything passes", () => {
    step(world([]), false);
    const tables = inNetns(node, WRITER, ["--tables"]);
    assert.doesNotMatch(tables, new RegExp(POLICY_TABLE));
  });

  it("NetworkPolicy: x's pods take only y/a, on port 80; everything else is refused, both families, counted and logged", async () => {
    // Catches: rules that let through what the semantics refuse (an ingress chain that returns
    // instead of dropping, a peer set holding other pods) or refuse what they allow (a port
    // tested on the wrong side, bridged traffic judged before the peer sets are filled).
    // The deny log's reader, bound to the node's nflog group while the step runs.
    const reader = spawn("nsenter", [`--net=${node.path}`, WRITER, "--nflog", String(LOG_GROUP)], { stdio: ["pipe", "pipe", "inherit"] });
    servers.push(reader);
    let logged = "";
    reader.stdout.on("data", (chunk: Buffer) => (logged += chunk.toString("utf8")));
    step(world([{ metadata: { namespace: "x", name: "from-y-a" }, spec: { podSelector: {}, ingress: [{ from: [{ namespaceSelector: { matchLabels: { ns: "y" } }, podSelector: { matchLabels: { pod: "a" } } }], ports: [{ port: "serve-80" }] }] } }]), true);
    // The probes ran synchronously: the reader's lines are read now.
    for (let waited = 0; waited < 3_000 && !logged.includes(" 80\n"); waited += 50) await new Promise((resolve) => setTimeout(resolve, 50));
    reader.stdin.end();
    // Catches denials not logged, logged under another prefix, or with ends or ports misread.
    const lines = logged.split("\n").filter(Boolean).map((line) => parseLine(line));
    assert.ok(lines.length > 0 && lines.every((line) => line && denials.get(line.prefix)?.policy === "NetworkPolicy x/from-y-a"), logged);
    const xb = pods.find((pod) => pod.namespace === "x" && pod.name === "b")!;
    const yc = pods.find((pod) => pod.namespace === "y" && pod.name === "c")!;
    assert.ok(
      lines.some((line) => line && formatIp(line.from) === formatIp(yc.ips[0]) && formatIp(line.to) === formatIp(xb.ips[0]) && line.protocol === 6 && line.dport === 80),
      `y/c -> x/b port 80 logged: ${logged}`,
    );
    // Catches denials dropped uncounted, or counted under another policy or direction.
    const counts = denied();
    assert.deepEqual([...counts.keys()], ["Ingress NetworkPolicy x/from-y-a"]);
    assert.ok(counts.get("Ingress NetworkPolicy x/from-y-a")! > 0, JSON.stringify([...counts]));
  });

  it("egress and ingress together: y/c may send only to x, and x/b takes nothing but port 81", () => {
    step(world([
      { metadata: { namespace: "y", name: "c-to-x" }, spec: { podSelector: { matchLabels: { pod: "c" } }, policyTypes: ["Egress"], egress: [{ to: [{ namespaceSelector: { matchLabels: { ns: "x" } } }] }] } },
      { metadata: { namespace: "x", name: "b-81" }, spec: { podSelector: { matchLabels: { pod: "b" } }, ingress: [{ ports: [{ port: 80, endPort: 81 }] }, { ports: [{ port: 81 }] }] } },
      { metadata: { namespace: "x", name: "b-81-only" }, spec: { podSelector: { matchLabels: { pod: "b" } }, ingress: [{ from: [{ podSelector: {} }], ports: [{ port: 81 }] }] } },
    ]), true);
  });

  it("many ports: a chain that finds a connection's rules by one lookup of its protocol and port, for ingress and egress, with named ports and a range beside it", () => {
    // Catches the port lookup's faults: a port's rules reached for another port or protocol, an
    // egress let through that then skips the receiver's ingress, a rule missed when none of its
    // port's peers match (it must fall on to the rules beside the lookup, then the drop).
    const ports = (...numbers: Array<number | string>) => numbers.map((port) => ({ port }));
    step(world([
      { metadata: { namespace: "x", name: "many-in" }, spec: { podSelector: {}, ingress: [
        { from: [{ namespaceSelector: { matchLabels: { ns: "y" } }, podSelector: { matchLabels: { pod: "a" } } }], ports: ports(80, 1001, 1002, 1003) },
        { from: [{ namespaceSelector: { matchLabels: { ns: "y" } }, podSelector: { matchLabels: { pod: "c" } } }], ports: ports("serve-81", 2001) },
        { from: [{ podSelector: { matchLabels: { pod: "b" } } }], ports: [{ port: 70, endPort: 80 }] },
      ] } },
      { metadata: { namespace: "y", name: "many-out" }, spec: { podSelector: { matchLabels: { pod: "c" } }, policyTypes: ["Egress"], egress: [
        { to: [{ namespaceSelector: { matchLabels: { ns: "x" } } }], ports: ports(81, 3001, 3002, 3003) },
        { to: [{ podSelector: { matchLabels: { pod: "a" } } }], ports: ports(80) },
      ] } },
    ]), true);
    assert.match(inNetns(node, "nft", ["list", "table", "inet", POLICY_TABLE]), /meta l4proto \. th dport vmap @ingress-ports-[0-9a-f]+[\s\S]*meta l4proto \. th dport vmap @egress-ports-/, "both directions go through a port lookup");
  });

  it("ClusterNetworkPolicy: an Admin Deny over a NetworkPolicy that allows, a Pass handing y/a to it, a Baseline Deny where no NetworkPolicy selects", () => {
    const allowX = { metadata: { namespace: "x", name: "allow-all" }, spec: { podSelector: {}, ingress: [{}] } } satisfies NetworkPolicy;
    step(world([allowX], [
      { metadata: { name: "pass-y-a" }, spec: { tier: "Admin", priority: 1, subject: { namespaces: {} }, ingress: [{ action: "Pass", from: [{ pods: { namespaceSelector: {}, podSelector: { matchLabels: { pod: "a" } } } }] }] } },
      { metadata: { name: "deny-y" }, spec: { tier: "Admin", priority: 2, subject: { namespaces: { matchLabels: { ns: "x" } } }, ingress: [{ action: "Deny", from: [{ namespaces: { matchLabels: { ns: "y" } } }], protocols: [{ tcp: { destinationPort: { number: 80 } } }] }] } },
      { metadata: { name: "baseline-y" }, spec: { tier: "Baseline", priority: 10, subject: { namespaces: { matchLabels: { ns: "y" } } }, ingress: [{ action: "Deny", from: [{ namespaces: { matchLabels: { ns: "x" } } }] }] } },
    ]), true);
    const counts = denied();
    assert.ok(counts.get("Ingress ClusterNetworkPolicy deny-y")! > 0 && counts.get("Ingress ClusterNetworkPolicy baseline-y")! > 0, JSON.stringify([...counts]));
    assert.equal(counts.has("Ingress NetworkPolicy x/from-y-a"), false, "the counter of a policy gone went with it");
  });

  it("taking the policies away removes the table and every pod reaches every pod again", () => {
    step(world([]), false);
    assert.doesNotMatch(inNetns(node, WRITER, ["--tables"]), new RegExp(POLICY_TABLE));
  });
});

function formatFor(pod: PolicyPod, family: Family): string {
  return formatIp(pod.ips.find((address) => address.family === family)!);
}
