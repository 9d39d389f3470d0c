/*
 * The Service proxy's tables through the netlink writer against nft itself: the same change written by `nft -f`
 * in one new network namespace and by `trellis-nft-batch` in another must leave the same
 * ruleset, as `nft list` prints it. Every namespace is made by `unshare -n` for one shell and
 * ends with it.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { after, describe, it } from "node:test";
import {
  desiredProxyRuleset, PROXY_TABLE, proxyChangeOps, proxyFullOps, renderProxyFull, renderProxyOps, type ProxyEndpoint, type ProxyNode, type ProxyServicePort,
} from "../src/dataplane/service-proxy.js";
import { NftBatchWriter, NftWriteError } from "../src/linux/nft-netlink.js";
import { goto, verdictRule } from "../src/nft/model.js";
import { encodeBatch as encodeNftBatch } from "../src/nft/netlink.js";
import { parseIp, parsePrefix } from "../src/net/ip.js";
import { inNetns, NetnsPool } from "./support/netns.js";

const WRITER = resolve("dist/trellis-nft-batch");
const dir = mkdtempSync(join(tmpdir(), "trellis-nft-netlink-"));
const pool = new NetnsPool();
after(() => {
  pool.removeAll();
  rmSync(dir, { recursive: true, force: true });
});

const NODE: ProxyNode = {
  name: "node-a",
  addresses: [parseIp("198.18.0.1"), parseIp("fd00:198:18::1")],
  podCidrs: [parsePrefix("10.244.0.0/16"), parsePrefix("fd00:10:244::/56")],
};

function endpoint(address: string, extra: Partial<ProxyEndpoint> = {}): ProxyEndpoint {
  return { address: parseIp(address), port: 8080, ready: true, serving: true, terminating: false, nodeName: "node-b", ...extra };
}

function port(name: string, extra: Partial<ProxyServicePort> = {}): ProxyServicePort {
  return {
    namespace: "default", name, portName: "", protocol: "TCP", port: 80,
    clusterIPs: [parseIp("10.96.0.10")], externalIPs: [], loadBalancerIPs: [],
    externalTrafficPolicy: "Cluster", internalTrafficPolicy: "Cluster",
    endpoints: [endpoint("10.244.1.5"), endpoint("10.244.2.6")],
    ...extra,
  };
}

/** Runs `script` in a new network namespace; its stdout. */
function inNewNetns(script: string): { status: number | null; stdout: string; stderr: string } {
  const result = spawnSync("unshare", ["-n", "sh", "-ec", script], { encoding: "utf8", maxBuffer: 1 << 28 });
  return { status: result.status, stdout: result.stdout, stderr: result.stderr };
}

function file(name: string, content: string | Buffer): string {
  const path = join(dir, name);
  writeFileSync(path, content);
  return path;
}

/** The namespace holds only what the test wrote: the whole ruleset is the proxy's tables. */
const LIST = "nft list ruleset";

describe("trellis-nft-batch", () => {
  const before = desiredProxyRuleset(NODE, [
    port("gone", { clusterIPs: [parseIp("10.96.0.20")], nodePort: 30020 }),
    port("stays", { clusterIPs: [parseIp("10.96.0.21"), parseIp("fd00:10:96::21")], endpoints: [endpoint("10.244.1.9"), endpoint("fd00:10:244::9")] }),
    port("empties", { clusterIPs: [parseIp("10.96.0.22")] }),
  ]);
  // Every form of rule, set and element the proxy writes, on both families.
  const afterwards = desiredProxyRuleset(NODE, [
    port("stays", { clusterIPs: [parseIp("10.96.0.21"), parseIp("fd00:10:96::21")], endpoints: [endpoint("10.244.1.10"), endpoint("fd00:10:244::10")] }),
    port("empties", { clusterIPs: [parseIp("10.96.0.22")], endpoints: [], externalIPs: [parseIp("203.0.113.22")], nodePort: 30022 }),
    port("affinity", { clusterIPs: [parseIp("10.96.0.23"), parseIp("fd00:10:96::23")], sessionAffinityTimeoutSeconds: 600, endpoints: [endpoint("10.244.1.11"), endpoint("10.244.3.12"), endpoint("fd00:10:244::11")] }),
    port("local", {
      clusterIPs: [parseIp("10.96.0.24"), parseIp("fd00:10:96::24")], protocol: "UDP", port: 53, nodePort: 30053, externalTrafficPolicy: "Local",
      externalIPs: [parseIp("203.0.113.24"), parseIp("2001:db8::24")], loadBalancerIPs: [parseIp("203.0.113.124")],
      endpoints: [endpoint("10.244.0.13", { nodeName: "node-a" }), endpoint("10.244.1.14"), endpoint("fd00:10:244::13", { nodeName: "node-a" })],
    }),
    port("internal", { clusterIPs: [parseIp("10.96.0.25")], protocol: "SCTP", port: 9000, internalTrafficPolicy: "Local", endpoints: [endpoint("10.244.0.15", { nodeName: "node-a" }), endpoint("10.244.2.16")] }),
    port("terminating", { clusterIPs: [parseIp("10.96.0.26")], endpoints: [endpoint("10.244.2.17", { ready: false, serving: true, terminating: true })] }),
  ]);

  it("leaves the ruleset nft -f leaves, for a change with every kind of rule, set and element", () => {
    // Catches: an expression encoded otherwise than nft encodes it (a register, a byte order, a flag),
    // which `nft list` shows as a different rule, or the kernel refuses.
    const ops = proxyChangeOps(before, afterwards);
    assert.ok(ops.some((op) => op.op === "add set") && ops.some((op) => op.op === "delete chain") && ops.some((op) => op.op === "delete element"), "the change covers creation and deletion");
    const full = file("full.nft", renderProxyFull(before));
    const change = file("change.nft", renderProxyOps(ops));
    const batch = file("change.batch", encodeNftBatch(ops));
    const byNft = inNewNetns(`nft -f ${full}; nft -f ${change}; ${LIST}`);
    assert.equal(byNft.status, 0, byNft.stderr);
    const byWriter = inNewNetns(`nft -f ${full}; ${WRITER} < ${batch}; ${LIST}`);
    assert.equal(byWriter.status, 0, byWriter.stderr);
    assert.equal(byWriter.stdout, byNft.stdout);
    assert.match(byWriter.stdout, /dnat to \[fd00:10:244::10\]:8080/);
    assert.match(byWriter.stdout, /meta l4proto udp dnat ip to numgen random mod 2 map @eps-svc-[0-9a-f]{8}-default\/local\/udp\//);
    assert.match(byWriter.stdout, /typeof numgen random mod 2 : ip daddr \. udp dport\n\t\telements = \{ 0 : 10\.244\.0\.13 \. 8080, 1 : 10\.244\.1\.14 \. 8080 \}/);
  });

  it("writes whole tables as nft -f does: base chains, fixed chains and maps, every Service form", () => {
    // Catches: pod CIDRs (an interval set) held otherwise than nft holds them; a fixed rule (reject, masquerade, marks, conntrack state, fib) or a base chain's
    // hook, priority or type encoded otherwise than nft encodes it.
    const ops = proxyFullOps(afterwards);
    assert.ok(ops.some((op) => op.op === "add element" && op.set.flags.includes("interval")), "pod CIDRs, an interval set");
    const batch = file("full.batch", encodeNftBatch(ops));
    const byNft = inNewNetns(`nft -f ${file("full3.nft", renderProxyFull(afterwards))}; ${LIST}`);
    assert.equal(byNft.status, 0, byNft.stderr);
    const byWriter = inNewNetns(`${WRITER} < ${batch}; ${LIST}`);
    assert.equal(byWriter.status, 0, byWriter.stderr);
    assert.equal(byWriter.stdout, byNft.stdout);
    assert.match(byWriter.stdout, /type nat hook prerouting priority dstnat; policy accept;/);
  });

  it("is refused whole, naming the message, when one step cannot be applied", () => {
    // Catches: a partly applied batch, or a refusal the writer does not report (exit 0 with nothing done).
    const full = file("full2.nft", renderProxyFull(before));
    const bad = encodeNftBatch([
      { op: "add chain", family: "ip", table: PROXY_TABLE, name: "new-chain" },
      { op: "add rule", family: "ip", table: PROXY_TABLE, chain: "new-chain", rule: verdictRule([], goto("no-such-chain")) },
    ]);
    const result = inNewNetns(`nft -f ${full}; if ${WRITER} < ${file("bad.batch", bad)}; then echo APPLIED; fi; ${LIST}`);
    assert.equal(result.status, 0, result.stderr);
    assert.doesNotMatch(result.stdout, /APPLIED/);
    assert.doesNotMatch(result.stdout, /new-chain/, "the chain of the refused batch stays out");
    assert.match(result.stderr, /message 3: No such file or directory/);
  });

  it("refuses input that is not one batch, and sends nothing", () => {
    // Catches: the writer sending arbitrary bytes (a truncated batch, text, a batch without its end) to the kernel.
    const whole = encodeNftBatch([{ op: "add chain", family: "ip", table: PROXY_TABLE, name: "x" }]);
    const withoutEnd = whole.subarray(0, whole.length - 20);
    for (const input of [Buffer.from("add chain ip t x\n"), whole.subarray(0, whole.length - 8), withoutEnd, withoutEnd.subarray(20), Buffer.alloc(0)]) {
      const result = spawnSync(WRITER, [], { input, encoding: "utf8" });
      assert.equal(result.status, 2, `${input.toString("hex").slice(0, 40)}: ${result.stderr}`);
      assert.match(result.stderr, /not one nftables batch/);
    }
  });

  it("lists the namespace's tables (--tables) as nft does, leaving out a name nft could not print", async () => {
    // Catches: a table missed or made up by the dump (the agent would not rewrite a table deleted by hand,
    // or would trust one that is not there), a family named otherwise than nft names it, or a forged
    // name (one carrying a newline and a second "FAMILY NAME") taken for a table.
    const ns = pool.create("nftt");
    const forged = encodeNftBatch([{ op: "add table", family: "ip", table: "zzzzzzzzzzzzzzzzzz" }]);
    const at = forged.indexOf("zzzzzzzzzzzzzzzzzz");
    forged.write("x y\nip trellis-pr", at, "latin1");
    const setup = spawnSync("nsenter", [`--net=${ns.path}`, WRITER], { input: forged, encoding: "utf8" });
    assert.equal(setup.status, 0, setup.stderr);
    inNetns(ns, "nft", ["-f", file("tables.nft", "add table ip trellis-proxy\nadd table ip6 trellis-proxy-1f\nadd table inet other\nadd table netdev dev.t/x\n")]);
    const wrapper = file("tables.sh", `#!/bin/sh\nexec nsenter --net=${ns.path} ${WRITER} "$@"\n`);
    chmodSync(wrapper, 0o755);
    const tables = await new NftBatchWriter(wrapper).listTables();
    assert.deepEqual([...tables].sort(), ["inet other", "ip trellis-proxy", "ip6 trellis-proxy-1f", "netdev dev.t/x"]);
    const listed = inNetns(ns, "nft", ["list", "tables"]);
    assert.match(listed, /x y/, "the forged table exists");
    const byNft = listed.split("\n").filter((line) => line.startsWith("table ")).map((line) => line.replace(/^table /, ""));
    assert.deepEqual([...tables].sort(), byNft.filter((line) => !line.includes("x y")).sort());
    const missing = new NftBatchWriter(file("no-such-writer", "")).listTables();
    await assert.rejects(missing, NftWriteError);
  });

  it("kept running (--serve), applies batch after batch, reports a refusal and goes on, and starts again after it is killed", async () => {
    // Catches: a serving writer that stops after a refused batch, answers the wrong caller, or
    // leaves the agent with no writer once its process died.
    const ns = pool.create("nftw");
    // The writer acts in the namespace it runs in: this one, never the test's own.
    const wrapper = file("writer.sh", `#!/bin/sh\nexec nsenter --net=${ns.path} ${WRITER} "$@"\n`);
    chmodSync(wrapper, 0o755);
    const writer = new NftBatchWriter(wrapper);
    try {
      await writer.apply(encodeNftBatch([{ op: "add table", family: "ip", table: PROXY_TABLE }, { op: "add chain", family: "ip", table: PROXY_TABLE, name: "first" }]));
      const refused = writer.apply(encodeNftBatch([{ op: "add chain", family: "ip", table: PROXY_TABLE, name: "half" }, { op: "add rule", family: "ip", table: PROXY_TABLE, chain: "half", rule: verdictRule([], goto("nowhere")) }]));
      const third = writer.apply(encodeNftBatch([{ op: "add chain", family: "ip", table: PROXY_TABLE, name: "third" }]));
      await assert.rejects(refused, (error: Error) => error instanceof NftWriteError && /message 3: No such file or directory/.test(error.message));
      await third;
      const chains = () => inNetns(ns, "nft", ["list", "table", "ip", PROXY_TABLE]);
      assert.match(chains(), /chain first/);
      assert.match(chains(), /chain third/);
      assert.doesNotMatch(chains(), /chain half/);
      // Killed: the next batch starts it again.
      assert.ok(writer.pid);
      process.kill(writer.pid, "SIGKILL");
      await new Promise((resolve) => setTimeout(resolve, 100));
      await writer.apply(encodeNftBatch([{ op: "add chain", family: "ip", table: PROXY_TABLE, name: "after-kill" }]));
      assert.match(chains(), /chain after-kill/);
    } finally {
      writer.close();
    }
  });
});
