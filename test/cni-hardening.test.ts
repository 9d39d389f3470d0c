/**
 * The attach path under conditions a real node meets: IPv6 disabled by default, hostile
 * namespace paths, a config that would shrink a shared bridge, a bridge deleted by hand.
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { inNetns, NetnsPool, sweepStaleNamespaces, type TestNetns } from "./support/netns.js";
import { addPod, addressesOf, cniSuite, ping, type PodAttachmentResult, recordedPods, tempDir, trellis } from "./support/trellis-cni.js";

function links(ns: TestNetns): string[] {
  return (JSON.parse(inNetns(ns, "ip", ["-json", "link", "show"])) as Array<{ ifname: string }>).map((link) => link.ifname);
}

function mtuOf(ns: TestNetns, ifname: string): number {
  return (JSON.parse(inNetns(ns, "ip", ["-json", "link", "show", "dev", ifname])) as Array<{ mtu: number }>)[0].mtu;
}

describe(cniSuite("trellis on a hardened or disturbed node"), () => {
  const pool = new NetnsPool();
  const state = tempDir("hardening");
  const mounts: string[] = [];
  let node: TestNetns;
  const dual = (name: string, third: number, extra: object = {}) => ({
    cniVersion: "1.1.0", name, type: "trellis", bridge: `tb-${name}`,
    ipam: { ranges: [[{ subnet: `10.244.${third}.0/24` }], [{ subnet: `fd00:10:244:${third}::/64` }]], dataDir: state.path },
    ...extra,
  });

  before(() => {
    sweepStaleNamespaces();
    node = pool.create("node");
  });
  after(() => {
    for (const mount of mounts) execFileSync("umount", [mount], { stdio: "ignore" });
    pool.removeAll();
    state.remove();
  });

  // Bug caught: with IPv6 off for new interfaces (a common hardening), every dual-stack ADD failed with 103.
  it("attaches dual-stack pods when the node and the pods disable IPv6 on new interfaces", async () => {
    const pods = [pool.create("pod"), pool.create("pod")];
    for (const ns of [node, ...pods]) inNetns(ns, "sysctl", ["-q", "-w", "net.ipv6.conf.default.disable_ipv6=1"]);
    const config = dual("v6off", 70);
    const results = [];
    for (const [i, ns] of pods.entries()) results.push(await addPod(node, config, { id: `v6off-${i}`, netns: ns.path }));
    const [, v6a] = addressesOf(results[0]);
    const [, v6b] = addressesOf(results[1]);
    assert.ok(ping(pods[0], v6b), "pod to pod over IPv6");
    assert.ok(ping(node, v6a), "node to pod over IPv6");
    inNetns(node, "sysctl", ["-q", "-w", "net.ipv6.conf.default.disable_ipv6=0"]);
  });

  // Bug caught: CNI_NETNS was pasted into an `ip -batch` script: a newline in it started a command of its own.
  it("treats a namespace path with a newline and an ip command in it as a file name only", async () => {
    const dir = join(state.path, "ns paths");
    mkdirSync(dir);
    const pod = pool.create("pod");
    const hostile = join(dir, "pod\nlink add pwned type bridge");
    const spaced = join(dir, "pod with spaces");
    for (const path of [hostile, spaced]) {
      writeFileSync(path, "");
      execFileSync("mount", ["--bind", pod.path, path]);
      mounts.push(path);
    }
    const config = dual("paths", 71);
    const result = await addPod(node, config, { id: "hostile", netns: hostile });
    assert.ok(!links(node).includes("pwned"), "no command from the path ran");
    assert.ok(ping(node, addressesOf(result)[0]), "the pod behind the hostile path works");
    const del = await trellis("DEL", node, config, { id: "hostile", netns: hostile });
    assert.equal(del.code, 0, del.stdout);
    const spacedResult = await addPod(node, config, { id: "spaced", netns: spaced });
    assert.ok(ping(node, addressesOf(spacedResult)[1]), "a path with spaces is a fine path");
  });

  // Bug caught: `mtu: 576` on a second network sharing the bridge lowered the bridge, which stripped
  // its IPv6 gateways: existing pods lost IPv6 and every later ADD failed with 103.
  it("refuses a config that would shrink a bridge other pods share, and they keep working", async () => {
    const shared = dual("shared", 72);
    const first = await addPod(node, shared, { id: "shared-0", netns: pool.create("pod").path });
    const small = { cniVersion: "1.1.0", name: "small", type: "trellis", bridge: "tb-shared", mtu: 576, ipam: { ranges: [[{ subnet: "10.244.73.0/24" }]], dataDir: state.path } };
    const refused = await trellis("ADD", node, small, { id: "small-0", netns: pool.create("pod").path });
    assert.deepEqual(JSON.parse(refused.stdout), {
      cniVersion: "1.1.0", code: 7,
      msg: "mtu 576 is below the MTU 1500 of bridge tb-shared, which other pods share: a smaller port would lower the bridge's MTU under them; use mtu 1500 or another bridge",
    });
    assert.equal(mtuOf(node, "tb-shared"), 1500);
    assert.deepEqual(recordedPods(state.path, "small"), []);
    assert.ok(ping(node, addressesOf(first)[1]), "the existing pod keeps IPv6");
    const later = await addPod(node, shared, { id: "shared-1", netns: pool.create("pod").path });
    assert.ok(ping(node, addressesOf(later)[1]), "a later ADD works");
  });

  // Bug caught: after the bridge was deleted by hand, a new ADD recreated it but the existing pods' veths stayed detached.
  it("puts the recorded pods back on a bridge that was deleted by hand", async () => {
    const config = dual("repair", 74, { hairpinMode: true });
    const pods = [pool.create("pod"), pool.create("pod")];
    const first: PodAttachmentResult = await addPod(node, config, { id: "repair-0", netns: pods[0].path });
    inNetns(node, "ip", ["link", "delete", "tb-repair"]);
    const broken = await trellis("CHECK", node, { ...config, prevResult: first }, { id: "repair-0", netns: pods[0].path });
    assert.equal(JSON.parse(broken.stdout).code, 105);
    assert.match(JSON.parse(broken.stdout).msg, /bridge tb-repair is missing/);
    const second = await addPod(node, config, { id: "repair-1", netns: pods[1].path });
    const check = await trellis("CHECK", node, { ...config, prevResult: first }, { id: "repair-0", netns: pods[0].path });
    assert.equal(check.code, 0, check.stdout);
    const detail = JSON.parse(inNetns(node, "ip", ["-json", "-details", "link", "show", "dev", first.interfaces[1].name])) as Array<{ linkinfo: { info_slave_data: { hairpin: boolean } } }>;
    assert.equal(detail[0].linkinfo.info_slave_data.hairpin, true, "hairpin is restored with the port");
    for (const [family, address] of addressesOf(second).entries()) {
      assert.ok(ping(pods[0], address), `the old pod reaches the new one (family ${family})`);
      assert.ok(ping(node, addressesOf(first)[family]), `the node reaches the old pod (family ${family})`);
    }
  });

  // Bug caught: a long-lived plugin process (the agent) that remembers the bridge as holding its
  // gateways and skips setting them, after they were removed by hand: new pods get no gateway.
  it("puts back a gateway removed from the bridge by hand with the next ADD", async () => {
    const config = dual("gateway", 75);
    const pods = [pool.create("pod"), pool.create("pod")];
    const first: PodAttachmentResult = await addPod(node, config, { id: "gateway-0", netns: pods[0].path });
    inNetns(node, "ip", ["address", "flush", "dev", "tb-gateway"]);
    inNetns(node, "ip", ["link", "set", "dev", "tb-gateway", "down"]);
    const second = await addPod(node, config, { id: "gateway-1", netns: pods[1].path });
    for (const [family, gateway] of [first.ips[0].gateway!, first.ips[1].gateway!].entries()) {
      assert.ok(ping(pods[1], gateway), `the new pod reaches its gateway (family ${family})`);
      assert.ok(ping(pods[0], addressesOf(second)[family]), `the old pod reaches the new one (family ${family})`);
    }
  });
});
