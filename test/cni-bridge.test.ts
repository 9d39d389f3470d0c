/**
 * The trellis plugin on real namespaces: a test netns plays the node, three netns play pods.
 * IPv4-only, IPv6-only and dual-stack networks.
 */
import assert from "node:assert/strict";
import type { ChildProcess } from "node:child_process";
import { after, before, describe, it } from "node:test";
import { inNetns, NetnsPool, sweepStaleNamespaces, type TestNetns } from "./support/netns.js";
import { addPod, addressesOf, cniSuite, ping, type PodAttachmentResult, recordedPods, startPeerEcho, tcpPeerSeenBy, tempDir, trellis } from "./support/trellis-cni.js";

const modes = {
  "IPv4-only": [[{ subnet: "10.244.1.0/24" }]],
  "IPv6-only": [[{ subnet: "fd00:10:244:1::/64" }]],
  "dual-stack": [[{ subnet: "10.244.1.0/24" }], [{ subnet: "fd00:10:244:1::/64" }]],
};

for (const [mode, ranges] of Object.entries(modes)) {
  describe(cniSuite(`trellis bridge attachment, ${mode}`), () => {
    const pool = new NetnsPool();
    const state = tempDir("bridge");
    const servers: ChildProcess[] = [];
    let node: TestNetns;
    let pods: TestNetns[];
    let results: PodAttachmentResult[];
    const config = { cniVersion: "1.1.0", name: "pods", type: "trellis", ipMasq: true, hairpinMode: true, ipam: { ranges, dataDir: state.path } };

    before(async () => {
      sweepStaleNamespaces();
      node = pool.create("node");
      pods = [pool.create("pod"), pool.create("pod"), pool.create("pod")];
      results = [];
      for (const [i, pod] of pods.entries()) results.push(await addPod(node, config, { id: `pod-${i}`, netns: pod.path }));
    });

    after(() => {
      for (const server of servers) server.kill("SIGKILL");
      pool.removeAll();
      state.remove();
    });

    // Bug caught: the bridge's link-local address in duplicate address detection for 1-2 s after
    // its first pod gave it carrier, while the node cannot solicit its pods for traffic it
    // forwards: a hostPort connection from outside to a new node's first pods waited for TCP's
    // retransmission (4 test runs in 10 failed their 2 s probe).
    it("leaves no IPv6 address of the bridge tentative once its first pods are attached", { skip: ranges.some(([range]) => range.subnet.includes(":")) ? false : "no IPv6 range" }, () => {
      const [bridge] = JSON.parse(inNetns(node, "ip", ["-6", "-j", "address", "show", "dev", "trellis0"])) as Array<{ addr_info: Array<{ local: string; tentative?: boolean }> }>;
      assert.ok(bridge.addr_info.some((address) => address.local.startsWith("fe80:")), "the bridge has its link-local address");
      assert.deepEqual(bridge.addr_info.filter((address) => address.tentative).map((address) => address.local), []);
    });

    it("gives each pod one address per family, with interfaces, gateway and routes in the result", () => {
      const families = ranges.length;
      for (const result of results) {
        assert.equal(result.ips.length, families);
        assert.deepEqual(result.interfaces.map((iface) => iface.name).slice(0, 1), ["trellis0"]);
        assert.equal(result.interfaces[2].name, "eth0");
        assert.ok(result.interfaces[2].sandbox?.startsWith("/var/run/netns/"));
        for (const ip of result.ips) assert.equal(ip.interface, 2);
        assert.equal(result.routes?.length, families, "a default route per family");
      }
      const all = results.flatMap(addressesOf);
      assert.equal(new Set(all).size, all.length, "addresses are distinct");
    });

    it("lets every pod reach every other pod over ICMP and TCP with its own source address", async () => {
      for (const [i, pod] of pods.entries()) servers.push(await startPeerEcho(pod, 8080 + i));
      for (const [i, from] of pods.entries()) {
        for (const [j] of pods.entries()) {
          if (i === j) continue;
          for (const [family, target] of addressesOf(results[j]).entries()) {
            assert.ok(ping(from, target), `ping ${target} from pod ${i}`);
            assert.equal(tcpPeerSeenBy(from, target, 8080 + j), addressesOf(results[i])[family], `pod ${j} sees pod ${i}'s own address`);
          }
        }
      }
    });

    it("lets the node reach its pods", () => {
      for (const result of results) for (const address of addressesOf(result)) assert.ok(ping(node, address), `node pings ${address}`);
    });

    it("lets two processes in one pod talk over localhost", async () => {
      const echo = await startPeerEcho(pods[0], 9090);
      servers.push(echo);
      assert.equal(tcpPeerSeenBy(pods[0], "127.0.0.1", 9090), "127.0.0.1");
      assert.equal(tcpPeerSeenBy(pods[0], "::1", 9090), "::1");
    });

    it("CHECK passes, then fails once an address or a route is removed by hand", async () => {
      const pod = { id: "pod-1", netns: pods[1].path };
      const checkConfig = { ...config, prevResult: results[1] };
      const ok = await trellis("CHECK", node, checkConfig, pod);
      assert.equal(ok.code, 0, ok.stdout + ok.stderr);
      assert.equal(ok.stdout, "");

      const [address] = results[1].ips.map((ip) => ip.address);
      inNetns(pods[1], "ip", ["address", "del", address, "dev", "eth0"]);
      const noAddress = await trellis("CHECK", node, checkConfig, pod);
      assert.equal(noAddress.code, 1);
      const error = JSON.parse(noAddress.stdout) as { code: number; msg: string };
      assert.equal(error.code, 105);
      assert.match(error.msg, new RegExp(`address ${address.replaceAll(".", "\\.")} is missing from eth0`));

      const route = results[2].routes![0];
      const family = route.dst.includes(":") ? "-6" : "-4";
      inNetns(pods[2], "ip", [family, "route", "del", route.dst === "0.0.0.0/0" || route.dst === "::/0" ? "default" : route.dst]);
      const noRoute = await trellis("CHECK", node, { ...config, prevResult: results[2] }, { id: "pod-2", netns: pods[2].path });
      assert.equal(noRoute.code, 1);
      assert.match((JSON.parse(noRoute.stdout) as { msg: string }).msg, /route default via \S+ is missing from eth0/);
    });

    it("DEL removes the pod's interface and releases its addresses, and succeeds again when repeated", async () => {
      const first = await trellis("DEL", node, config, { id: "pod-0", netns: pods[0].path });
      assert.equal(first.code, 0, first.stdout);
      assert.throws(() => inNetns(pods[0], "ip", ["link", "show", "dev", "eth0"]), "eth0 is gone from the pod");
      assert.ok(!recordedPods(state.path, "pods").some((pod) => pod.containerId === "pod-0"), "pod-0's record and leases are gone");
      const again = await trellis("DEL", node, config, { id: "pod-0", netns: pods[0].path });
      assert.equal(again.code, 0, again.stdout);
    });

    it("ADD right after a DEL of the same pod reuses its veth name and addresses while the kernel still frees the old pair", async () => {
      // DEL answers once the old pair is unlisted, before the kernel has freed it: the names
      // and addresses must already be free for an ADD of the same pod.
      const pod = { id: "pod-2", netns: pods[2].path };
      const before = addressesOf(results[2]);
      for (let round = 0; round < 3; round++) {
        const del = await trellis("DEL", node, config, pod);
        assert.equal(del.code, 0, del.stdout + del.stderr);
        const again = await addPod(node, { ...config, args: { cni: { ips: before } } }, pod);
        assert.deepEqual(addressesOf(again), before);
        for (const address of before) assert.ok(ping(node, address), `node pings ${address} after round ${round}`);
      }
    });

    it("DEL after the netns is deleted frees the address for a new pod", async () => {
      const freed = addressesOf(results[1]);
      pool.remove(pods[1]);
      const del = await trellis("DEL", node, config, { id: "pod-1", netns: pods[1].path });
      assert.equal(del.code, 0, del.stdout + del.stderr);
      assert.deepEqual(recordedPods(state.path, "pods").map((pod) => pod.containerId), ["pod-2"], "pod-1's addresses are free again");
      const hostLinks = inNetns(node, "ip", ["-o", "link", "show", "master", "trellis0"]);
      assert.equal(hostLinks.trim().split("\n").filter(Boolean).length, 1, "only pod-2's veth is left on the bridge");
      const reuse = pool.create("pod");
      const result = await addPod(node, { ...config, args: { cni: { ips: freed } } }, { id: "pod-3", netns: reuse.path });
      assert.deepEqual(addressesOf(result), freed);
      // The node and pod-2 both talked to pod-1 (the matrix above): their neighbour caches
      // hold pod-1's MAC for these addresses, and must still be right for pod-3.
      for (const address of freed) {
        assert.ok(ping(node, address), `node pings ${address}, now pod-3's`);
        assert.ok(ping(pods[2], address), `pod-2 pings ${address}, now pod-3's`);
      }
    });
  });
}

describe(cniSuite("trellis pod MACs on an IPv6-only network with two ranges"), () => {
  const pool = new NetnsPool();
  const state = tempDir("bridge-mac");
  const ranges = [[{ subnet: "fd00:10:244:a::/64" }, { subnet: "fd00:10:244:b::/64" }]];
  const config = { cniVersion: "1.1.0", name: "pods", type: "trellis", ipam: { ranges, dataDir: state.path } };
  after(() => {
    pool.removeAll();
    state.remove();
  });

  // Bug caught: MACs taken from the low 32 bits of IPv6 addresses alone collide for ::5 of two ranges on one bridge.
  it("gives two pods whose addresses share their low 32 bits different MACs, and both are reachable", async () => {
    sweepStaleNamespaces();
    const node = pool.create("node");
    const pods = [pool.create("pod"), pool.create("pod")];
    const ips = ["fd00:10:244:a::5/64", "fd00:10:244:b::5/64"];
    const results = [];
    for (const [i, pod] of pods.entries()) results.push(await addPod(node, { ...config, args: { cni: { ips: [ips[i]] } } }, { id: `mac-${i}`, netns: pod.path }));
    const macs = results.map((result) => result.interfaces[2].mac);
    assert.equal(macs[0], "0a:58:00:00:00:05");
    assert.notEqual(macs[1], macs[0]);
    // Both addresses share one solicited-node multicast group, and the bridge's MLD snooping may
    // forward the first neighbour solicitations to the later pod only: allow a few seconds.
    const pingSoon = (from: TestNetns, address: string) => Array.from({ length: 5 }).some(() => ping(from, address));
    for (const [i, result] of results.entries()) for (const address of addressesOf(result)) assert.ok(pingSoon(pods[1 - i], address), `pod ${1 - i} pings ${address}`);
  });
});
