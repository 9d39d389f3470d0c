import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { parseIp, parsePrefix } from "../net/ip.js";
import {
  bridgeGateways, hostVethAlias, hostVethName, isHostVethName, needsIpv6, planPodAttachment, randomMac, renderBridgeCreate, renderBridgePort,
  renderContainerCommands, renderHostCommands, type PodAddress, type PodAttachmentInput,
} from "./pod-attachment.js";

const v4: PodAddress = { address: parseIp("10.244.1.2"), subnet: parsePrefix("10.244.1.0/24"), gateway: parseIp("10.244.1.1") };
const v6: PodAddress = { address: parseIp("fd00:10:244:1::2"), subnet: parsePrefix("fd00:10:244:1::/64"), gateway: parseIp("fd00:10:244:1::1") };

const DUAL_STACK: PodAttachmentInput = {
  network: "pods",
  containerId: "abc",
  ifname: "eth0",
  bridge: "trellis0",
  mtu: 1400,
  hairpin: true,
  mac: "0a:58:0a:f4:01:02",
  addresses: [v4, v6],
  routes: [{ dst: parsePrefix("10.96.0.0/16") }],
  defaultRoutes: true,
};

/** A locally administered unicast MAC: bit 1 of the first octet set, bit 0 clear. */
function assertLocalUnicastMac(mac: string): void {
  assert.match(mac, /^([0-9a-f]{2}:){5}[0-9a-f]{2}$/);
  const first = parseInt(mac.slice(0, 2), 16);
  assert.equal(first & 0x03, 0x02, `${mac} is not a locally administered unicast MAC`);
}

describe("dataplane/pod-attachment", () => {
  describe("planPodAttachment", () => {
    it("plans bridge, host veth and pod side; a route without gateway takes its family's, defaults follow the address order", () => {
      // Catches: extra routes sent through no gateway (or the other family's), a missing default
      // route for the second family, the bridge given the pod's address instead of the gateway.
      const spec = planPodAttachment(DUAL_STACK);
      assertLocalUnicastMac(spec.hostVeth.mac);
      assert.deepEqual(spec, {
        bridge: { name: "trellis0", gateways: [{ address: parseIp("10.244.1.1"), length: 24 }, { address: parseIp("fd00:10:244:1::1"), length: 64 }] },
        hostVeth: { name: hostVethName("pods", "abc", "eth0"), mac: spec.hostVeth.mac, hairpin: true, alias: "trellis:pods" },
        container: {
          ifname: "eth0",
          mac: "0a:58:0a:f4:01:02",
          mtu: 1400,
          addresses: [v4, v6],
          routes: [
            { dst: parsePrefix("10.96.0.0/16"), gateway: parseIp("10.244.1.1") },
            { dst: parsePrefix("0.0.0.0/0"), gateway: parseIp("10.244.1.1") },
            { dst: parsePrefix("::/0"), gateway: parseIp("fd00:10:244:1::1") },
          ],
        },
      });
    });

    it("keeps a configured route's own gateway and does not add a second default route over it", () => {
      // Catches: two `route add 0.0.0.0/0` (the second fails with "File exists" and the ADD with it),
      // or the configured gateway replaced by the pod subnet's.
      const spec = planPodAttachment({
        ...DUAL_STACK,
        addresses: [v4],
        routes: [{ dst: parsePrefix("0.0.0.0/0"), gateway: parseIp("10.244.1.254") }, { dst: parsePrefix("10.96.0.0/16") }, { dst: parsePrefix("10.96.0.0/16") }],
      });
      assert.deepEqual(spec.container.routes, [
        { dst: parsePrefix("0.0.0.0/0"), gateway: parseIp("10.244.1.254") },
        { dst: parsePrefix("10.96.0.0/16"), gateway: parseIp("10.244.1.1") },
      ]);
    });

    it("adds no default route when not asked to", () => {
      // Catches: defaultRoutes ignored (CHECK plans with defaultRoutes false and the prevResult's routes).
      assert.deepEqual(planPodAttachment({ ...DUAL_STACK, defaultRoutes: false }).container.routes, [
        { dst: parsePrefix("10.96.0.0/16"), gateway: parseIp("10.244.1.1") },
      ]);
    });

    it("gives the pod the MAC of its IPv4 address (else its first IPv6 address) when none is asked for, and the host end a fresh one", () => {
      // Catches: a fixed MAC (two pods on one bridge collide), a multicast/global MAC, or a fresh
      // random pod MAC (a pod given a former pod's address stays unreachable until neighbour
      // caches age out).
      const v6First = planPodAttachment({ ...DUAL_STACK, mac: undefined, addresses: [v6, v4] });
      assert.equal(v6First.container.mac, "0a:58:0a:f4:01:02", "the IPv4 address decides, whichever family is first");
      const other = planPodAttachment({ ...DUAL_STACK, mac: undefined, addresses: [{ ...v4, address: parseIp("10.244.1.255") }] });
      assert.equal(other.container.mac, "0a:58:0a:f4:01:ff");
      const v6Only = planPodAttachment({ ...DUAL_STACK, mac: undefined, addresses: [{ ...v6, address: parseIp("fd00:10:244:1::ab:cdef") }] });
      assert.equal(v6Only.container.mac, "0a:58:00:ab:cd:ef");
      for (const spec of [v6First, other, v6Only]) assertLocalUnicastMac(spec.container.mac);
      assert.equal(planPodAttachment({ ...DUAL_STACK, mac: undefined, addresses: [] }).container.mac.length, 17, "no address: a random MAC");
      const [a, b] = [planPodAttachment(DUAL_STACK), planPodAttachment(DUAL_STACK)];
      assert.notEqual(a.hostVeth.mac, b.hostVeth.mac);
      for (let i = 0; i < 64; i++) assertLocalUnicastMac(randomMac());
    });
  });

  describe("bridgeGateways", () => {
    it("lists each gateway once, with its subnet's length", () => {
      // Catches: `address replace` of one gateway twice (harmless) or, worse, with the pod's /32.
      const second: PodAddress = { ...v4, address: parseIp("10.244.1.3") };
      const wider: PodAddress = { address: parseIp("10.245.0.9"), subnet: parsePrefix("10.245.0.0/16"), gateway: parseIp("10.245.0.1") };
      assert.deepEqual(bridgeGateways([v4, second, v6, wider]), [
        { address: parseIp("10.244.1.1"), length: 24 },
        { address: parseIp("fd00:10:244:1::1"), length: 64 },
        { address: parseIp("10.245.0.1"), length: 16 },
      ]);
      assert.deepEqual(bridgeGateways([]), []);
    });
  });

  describe("host veth names", () => {
    it("derives the name from network, container and interface, and keeps it stable across versions", () => {
      // Catches: a changed derivation (DEL and GC of pods added by the previous version would no
      // longer find their veths), a name over 15 bytes (IFNAMSIZ), two attachments sharing a name.
      assert.equal(hostVethName("pods", "abc", "eth0"), "trv0c7483136469");
      assert.ok(hostVethName("pods", "abc", "eth0").length <= 15);
      const names = new Set([
        hostVethName("pods", "abc", "eth0"),
        hostVethName("pods", "abc", "eth1"),
        hostVethName("pods", "abd", "eth0"),
        hostVethName("other", "abc", "eth0"),
        hostVethName("pods", "abceth", "0"),
      ]);
      assert.equal(names.size, 5);
    });

    it("tells Trellis's host veths from other links", () => {
      // Catches: GC deleting a link it did not create, such as the bridge or a foreign veth.
      assert.equal(isHostVethName(hostVethName("pods", "abc", "eth0")), true);
      for (const name of ["trellis0", "eth0", "veth0c748313", "trv0c748313646", "trv0c74831364699", "trv0C7483136469", "xtrv0c7483136469"]) {
        assert.equal(isHostVethName(name), false, name);
      }
    });

    it("names the owning network in the alias", () => {
      assert.equal(hostVethAlias("pods"), "trellis:pods");
    });
  });

  describe("iproute2 commands", () => {
    const spec = planPodAttachment(DUAL_STACK);
    const veth = spec.hostVeth.name;

    it("renders the bridge with its MTU and a MAC of its own, the same when it is made again", () => {
      // Catches: the kernel's derived bridge MAC (it changes as ports come and go), the MTU
      // dropped, or a bridge made again after a deletion with a new MAC (its pods' neighbour
      // entries name the old one, and they are cut off until the entries go stale).
      const commands = renderBridgeCreate("trellis0", 1400, "node-a\0/var/lib/cni/trellis");
      const mac = commands[0][6];
      assertLocalUnicastMac(mac);
      assert.deepEqual(commands, [["link", "add", "trellis0", "mtu", "1400", "address", mac, "type", "bridge"]]);
      const plain = renderBridgeCreate("trellis0", undefined, "node-a\0/var/lib/cni/trellis");
      assert.deepEqual(plain, [["link", "add", "trellis0", "address", mac, "type", "bridge"]], "the same bridge of the same node: the same MAC");
      assert.notEqual(renderBridgeCreate("trellis0", undefined, "node-b\0/var/lib/cni/trellis")[0][4], mac, "another node's");
      assert.notEqual(renderBridgeCreate("cni1", undefined, "node-a\0/var/lib/cni/trellis")[0][4], mac, "another bridge's");
    });

    it("renders a bridge port with hairpin only when asked", () => {
      // Catches: hairpin always on (or never), or the port left down.
      assert.deepEqual(renderBridgePort("trellis0", { name: veth, hairpin: true }), [
        ["link", "set", "dev", veth, "master", "trellis0"],
        ["link", "set", "dev", veth, "type", "bridge_slave", "hairpin", "on"],
        ["link", "set", "dev", veth, "up"],
      ]);
      assert.deepEqual(renderBridgePort("trellis0", { name: veth, hairpin: false }), [
        ["link", "set", "dev", veth, "master", "trellis0"],
        ["link", "set", "dev", veth, "up"],
      ]);
    });

    it("renders the host side: gateways, the veth pair created on the bridge and up with its pod end in the namespace path given, alias, hairpin, then shows the bridge", () => {
      // Catches: the pod end not moved into the netns passed (e.g. the CNI_NETNS path instead of the
      // descriptor path), IPv6 gateways without nodad (DAD delays them), the alias GC relies on
      // missing, the veth not on the bridge or not up, the bridge not shown last with its
      // addresses (its MAC goes into the result; the next ADD knows its gateways from it).
      assert.deepEqual(renderHostCommands(spec, "/proc/self/fd/3"), [
        ["link", "set", "dev", "trellis0", "up"],
        ["address", "replace", "10.244.1.1/24", "dev", "trellis0"],
        ["address", "replace", "fd00:10:244:1::1/64", "dev", "trellis0", "nodad"],
        [
          "link", "add", veth, "mtu", "1400", "address", spec.hostVeth.mac, "master", "trellis0", "up", "type", "veth",
          "peer", "name", "eth0", "mtu", "1400", "address", "0a:58:0a:f4:01:02", "netns", "/proc/self/fd/3",
        ],
        ["link", "set", "dev", veth, "alias", "trellis:pods"],
        ["link", "set", "dev", veth, "type", "bridge_slave", "hairpin", "on"],
        ["address", "show", "dev", "trellis0"],
      ]);
    });

    it("leaves the MTU to the kernel when none is configured, and the gateways alone on a bridge seen ready", () => {
      // Catches: `mtu undefined` rendered as a word; gateways rewritten on every ADD although the
      // bridge was last seen holding them.
      const plain = planPodAttachment({ ...DUAL_STACK, mtu: undefined, hairpin: false, addresses: [v4] });
      const name = plain.hostVeth.name;
      assert.deepEqual(renderHostCommands(plain, "/proc/self/fd/4", { bridgeReady: true }), [
        ["link", "add", name, "address", plain.hostVeth.mac, "master", "trellis0", "up", "type", "veth", "peer", "name", "eth0", "address", "0a:58:0a:f4:01:02", "netns", "/proc/self/fd/4"],
        ["link", "set", "dev", name, "alias", "trellis:pods"],
        ["address", "show", "dev", "trellis0"],
      ]);
    });

    it("renders the pod side: IPv6 addresses (without DAD) first, lo up, IPv4 addresses, link up, then routes", () => {
      // Catches: routes added before the link is up (the kernel refuses them), lo left down,
      // an address with the subnet's length lost, a command applied before the IPv6 address
      // (in a namespace that disables IPv6 it would be applied twice when the batch is retried).
      assert.deepEqual(renderContainerCommands(spec), [
        ["address", "add", "fd00:10:244:1::2/64", "dev", "eth0", "nodad"],
        ["link", "set", "dev", "lo", "up"],
        ["address", "add", "10.244.1.2/24", "dev", "eth0"],
        ["link", "set", "dev", "eth0", "up"],
        ["route", "add", "10.96.0.0/16", "via", "10.244.1.1", "dev", "eth0"],
        ["route", "add", "0.0.0.0/0", "via", "10.244.1.1", "dev", "eth0"],
        ["route", "add", "::/0", "via", "fd00:10:244:1::1", "dev", "eth0"],
      ]);
    });

    it("renders an on-link route without via", () => {
      const onLink = { ...spec, container: { ...spec.container, addresses: [v4], routes: [{ dst: parsePrefix("10.97.0.0/16") }] } };
      assert.deepEqual(renderContainerCommands(onLink), [
        ["link", "set", "dev", "lo", "up"],
        ["address", "add", "10.244.1.2/24", "dev", "eth0"],
        ["link", "set", "dev", "eth0", "up"],
        ["route", "add", "10.97.0.0/16", "dev", "eth0"],
      ]);
    });

    it("asks for IPv6 in the pod only when it has an IPv6 address", () => {
      assert.equal(needsIpv6(spec), true);
      assert.equal(needsIpv6(planPodAttachment({ ...DUAL_STACK, addresses: [v4] })), false);
    });
  });
});
