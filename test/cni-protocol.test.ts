/**
 * The rest of the protocol on real namespaces: VERSION, STATUS, older result formats, the
 * per-network options (mtu, MAC, hairpin, ipMasq) and IPAM delegated to host-local.
 */
import assert from "node:assert/strict";
import type { ChildProcess } from "node:child_process";
import { existsSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { inNetns, NetnsPool, sweepStaleNamespaces, type TestNetns } from "./support/netns.js";
import { addPod, addressesOf, cniSuite, hostVeths, recordedPods, startPeerEcho, tcpPeerSeenBy, tempDir, trellis } from "./support/trellis-cni.js";

describe(cniSuite("trellis protocol details"), () => {
  const pool = new NetnsPool();
  const state = tempDir("protocol");
  const servers: ChildProcess[] = [];
  let node: TestNetns;

  before(() => {
    sweepStaleNamespaces();
    node = pool.create("node");
  });
  after(() => {
    for (const server of servers) server.kill("SIGKILL");
    pool.removeAll();
    state.remove();
  });

  it("VERSION lists 0.3.0 to 1.1.0", async () => {
    const outcome = await trellis("VERSION", node, { cniVersion: "1.1.0" });
    assert.equal(outcome.code, 0);
    assert.deepEqual(JSON.parse(outcome.stdout), { cniVersion: "1.1.0", supportedVersions: ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] });
  });

  it("answers in the requested version's result format", async () => {
    for (const [i, version] of ["0.3.0", "0.3.1", "0.4.0", "1.0.0"].entries()) {
      const pod = pool.create("pod");
      const config = { cniVersion: version, name: `v${i}`, type: "trellis", bridge: "tb-old", ipam: { ranges: [[{ subnet: `10.244.${20 + i}.0/24` }], [{ subnet: `fd00:10:244:${20 + i}::/64` }]], dataDir: state.path } };
      const result = (await addPod(node, config, { id: `old-${i}`, netns: pod.path })) as unknown as { cniVersion: string; ips: Array<{ version?: string }> };
      assert.equal(result.cniVersion, version);
      assert.deepEqual(result.ips.map((ip) => ip.version), version === "1.0.0" ? [undefined, undefined] : ["4", "6"]);
    }
  });

  it("STATUS stays ready when a range is full (a failing STATUS would mark the node NotReady); ADD says 100", async () => {
    const config = { cniVersion: "1.1.0", name: "tiny", type: "trellis", bridge: "tb-tiny", ipam: { ranges: [[{ subnet: "10.244.30.0/30" }]], dataDir: state.path } };
    const ok = await trellis("STATUS", node, config);
    assert.equal(ok.code, 0, ok.stdout);
    await addPod(node, config, { id: "tiny-0", netns: pool.create("pod").path });
    const full = await trellis("STATUS", node, config);
    assert.equal(full.code, 0, full.stdout);
    const add = await trellis("ADD", node, config, { id: "tiny-1", netns: pool.create("pod").path });
    assert.deepEqual(JSON.parse(add.stdout), { cniVersion: "1.1.0", code: 100, msg: "no IP addresses available in range set 10.244.30.1-10.244.30.2 of network tiny" });
    assert.deepEqual(recordedPods(state.path, "tiny").map((pod) => pod.containerId), ["tiny-0"], "the refused ADD left no record");
  });

  it("STATUS says 50, naming the directory, when the state cannot be written", async () => {
    const blocker = join(state.path, "not-a-directory");
    writeFileSync(blocker, "");
    const config = { cniVersion: "1.1.0", name: "nostate", type: "trellis", ipam: { ranges: [[{ subnet: "10.244.35.0/24" }]], dataDir: join(blocker, "state") } };
    const status = await trellis("STATUS", node, config);
    assert.equal(JSON.parse(status.stdout).code, 50);
    assert.match(JSON.parse(status.stdout).msg, /^ipam\.dataDir \S+\/not-a-directory\/state cannot hold the node state: \S+\/not-a-directory is not a directory$/);
    const add = await trellis("ADD", node, config, { id: "nostate", netns: pool.create("pod").path });
    assert.equal(JSON.parse(add.stdout).code, 104);
  });

  it("refuses a second ADD of the same attachment, and an interface name taken in the pod, leaking nothing", async () => {
    const pod = pool.create("pod");
    const config = { cniVersion: "1.1.0", name: "twice", type: "trellis", bridge: "tb-twice", ipam: { ranges: [[{ subnet: "10.244.34.0/24" }]], dataDir: state.path } };
    const first = await addPod(node, config, { id: "twice", netns: pod.path });
    const again = await trellis("ADD", node, config, { id: "twice", netns: pod.path });
    assert.equal(JSON.parse(again.stdout).code, 102);
    assert.match(JSON.parse(again.stdout).msg, /^container twice already has interface eth0 in network twice; DEL it before adding it again$/);
    const clash = await trellis("ADD", node, config, { id: "other", netns: pod.path });
    assert.deepEqual(JSON.parse(clash.stdout), { cniVersion: "1.1.0", code: 103, msg: `interface eth0 already exists in ${pod.path}` });
    assert.deepEqual(recordedPods(state.path, "twice").map((record) => [record.containerId, record.addresses]), [["twice", addressesOf(first)]]);
    assert.equal(hostVeths(node).filter((name) => name === first.interfaces[1].name).length, 1);
    assert.equal(JSON.parse(inNetns(node, "ip", ["-json", "link", "show", "master", "tb-twice"])).length, 1, "the failed ADD's veth is gone");
  });

  it("applies mtu, an explicit MAC and hairpin mode", async () => {
    const pod = pool.create("pod");
    const config = { cniVersion: "1.1.0", name: "opts", type: "trellis", bridge: "tb-opts", mtu: 1400, hairpinMode: true, ipam: { ranges: [[{ subnet: "10.244.31.0/24" }]], dataDir: state.path } };
    const result = await addPod(node, { ...config, runtimeConfig: { mac: "0a:58:0a:f4:1f:07" } }, { id: "opts", netns: pod.path });
    const [eth0] = JSON.parse(inNetns(pod, "ip", ["-json", "link", "show", "dev", "eth0"])) as Array<{ mtu: number; address: string }>;
    assert.deepEqual([eth0.mtu, eth0.address], [1400, "0a:58:0a:f4:1f:07"]);
    assert.equal(result.interfaces[2].mac, "0a:58:0a:f4:1f:07");
    const hostVeth = result.interfaces[1].name;
    const [detail] = JSON.parse(inNetns(node, "ip", ["-json", "-d", "link", "show", "dev", hostVeth])) as Array<{ mtu: number; linkinfo: { info_slave_data: { hairpin: boolean } } }>;
    assert.equal(detail.mtu, 1400);
    assert.equal(detail.linkinfo.info_slave_data.hairpin, true);
  });

  it("masquerades traffic leaving the pod network when ipMasq is set, and only then", async () => {
    // A namespace outside the cluster, reached from the node over a veth on the benchmarking range.
    const outside = pool.create("ext");
    inNetns(node, "ip", ["link", "add", "ext0", "type", "veth", "peer", "name", "eth0", "netns", outside.path]);
    inNetns(node, "ip", ["address", "add", "198.18.0.1/24", "dev", "ext0"]);
    inNetns(node, "ip", ["link", "set", "ext0", "up"]);
    inNetns(outside, "ip", ["address", "add", "198.18.0.2/24", "dev", "eth0"]);
    inNetns(outside, "ip", ["link", "set", "eth0", "up"]);
    inNetns(outside, "ip", ["route", "add", "10.244.0.0/16", "via", "198.18.0.1"]);
    servers.push(await startPeerEcho(outside, 7070));
    const masq = { cniVersion: "1.1.0", name: "masq", type: "trellis", bridge: "tb-masq", ipMasq: true, ipam: { ranges: [[{ subnet: "10.244.32.0/24" }]], dataDir: state.path } };
    const plain = { ...masq, name: "plain", bridge: "tb-plain", ipMasq: false, ipam: { ranges: [[{ subnet: "10.244.33.0/24" }]], dataDir: state.path } };
    const masqPod = pool.create("pod");
    const plainPod = pool.create("pod");
    await addPod(node, masq, { id: "masq", netns: masqPod.path });
    const plainResult = await addPod(node, plain, { id: "plain", netns: plainPod.path });
    assert.equal(tcpPeerSeenBy(masqPod, "198.18.0.2", 7070), "198.18.0.1", "masqueraded to the node's address");
    assert.equal(tcpPeerSeenBy(plainPod, "198.18.0.2", 7070), addressesOf(plainResult)[0], "not masqueraded");
  });

  it("delegates IPAM to host-local through CNI_PATH, and falls back to a version it speaks", async () => {
    const leases = join(state.path, "host-local");
    for (const version of ["1.0.0", "1.1.0"]) {
      const pod = pool.create("pod");
      const name = `hl${version.replaceAll(".", "")}`;
      const config = { cniVersion: version, name, type: "trellis", bridge: `tb-${name}`, dataDir: state.path, ipam: { type: "host-local", dataDir: leases, ranges: [[{ subnet: "10.244.40.0/24" }], [{ subnet: "fd00:10:244:40::/64" }]] } };
      const result = await addPod(node, config, { id: `hl-${version}`, netns: pod.path });
      assert.equal(result.ips.length, 2);
      const files = readdirSync(join(leases, name));
      for (const address of addressesOf(result)) assert.ok(files.includes(address), `host-local leased ${address}`);
      const check = await trellis("CHECK", node, { ...config, prevResult: result }, { id: `hl-${version}`, netns: pod.path });
      assert.equal(check.code, 0, check.stdout);
      const del = await trellis("DEL", node, config, { id: `hl-${version}`, netns: pod.path });
      assert.equal(del.code, 0, del.stdout);
      for (const address of addressesOf(result)) assert.ok(!existsSync(join(leases, name, address)), `host-local released ${address}`);
      assert.deepEqual(recordedPods(state.path, name), []);
    }
    assert.ok(!hostVeths(node).some((name) => name.startsWith("tb-hl")));
  });

  it("answers 106 when the delegated IPAM plugin fails, quoting its own code, and keeps nothing", async () => {
    const pod = pool.create("pod");
    const config = {
      cniVersion: "1.0.0", name: "hlbad", type: "trellis", bridge: "tb-hlbad", dataDir: state.path,
      ipam: { type: "host-local", dataDir: join(state.path, "host-local"), ranges: [[{ subnet: "10.244.41.0/24", rangeStart: "10.244.42.1" }]] },
    };
    const add = await trellis("ADD", node, config, { id: "hlbad", netns: pod.path });
    assert.deepEqual(JSON.parse(add.stdout), {
      cniVersion: "1.0.0", code: 106, msg: "ipam plugin host-local ADD failed with code 999: invalid range set 0: RangeStart 10.244.42.1 not in network 10.244.41.0/24",
    });
    assert.deepEqual(recordedPods(state.path, "hlbad"), []);
    assert.doesNotMatch(inNetns(pod, "ip", ["-o", "link"]), /eth0/);
  });
});
