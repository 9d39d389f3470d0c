import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { parseIp, parsePrefix } from "../net/ip.js";
import { diffPodAttachment, parseIpLinks, parseIpRoutes, type ObservedLink, type ObservedPod } from "./pod-check.js";
import { planPodAttachment } from "./pod-attachment.js";

/*
 * Fixtures are real `ip -json` output (iproute2 6.1), taken in two throw-away network namespaces:
 * one played the node, the other the pod, and SPEC was attached between them with the commands
 * renderBridgeCreate, renderHostCommands and renderContainerCommands render. Each drifted
 * fixture was taken after one change (named above it) to that healthy attachment.
 */

/** `ip -json address show dev trv0c7483136469` on the node. */
const HOST_VETH = [
  {"ifindex":3,"link_index":2,"ifname":"trv0c7483136469","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"mtu":1400,"qdisc":"noqueue","master":"trellis0","operstate":"UP","group":"default","txqlen":1000,"link_type":"ether","address":"0a:58:00:00:00:01","broadcast":"ff:ff:ff:ff:ff:ff","link_netnsid":0,"addr_info":[{"family":"inet6","local":"fe80::858:ff:fe00:1","prefixlen":64,"scope":"link","tentative":true,"valid_life_time":4294967295,"preferred_life_time":4294967295}]},
];
/** `ip -json address show dev trellis0` on the node. */
const BRIDGE = [
  {"ifindex":2,"ifname":"trellis0","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"mtu":1400,"qdisc":"noqueue","operstate":"UP","group":"default","txqlen":1000,"link_type":"ether","address":"6a:e2:94:2b:75:a0","broadcast":"ff:ff:ff:ff:ff:ff","addr_info":[{"family":"inet","local":"10.244.1.1","prefixlen":24,"scope":"global","label":"trellis0","valid_life_time":4294967295,"preferred_life_time":4294967295},{"family":"inet6","local":"fd00:10:244:1::1","prefixlen":64,"scope":"global","nodad":true,"valid_life_time":4294967295,"preferred_life_time":4294967295},{"family":"inet6","local":"fe80::68e2:94ff:fe2b:75a0","prefixlen":64,"scope":"link","tentative":true,"valid_life_time":4294967295,"preferred_life_time":4294967295}]},
];
/** `ip -json address show` in the pod. */
const POD_ADDRESSES = [
  {"ifindex":1,"ifname":"lo","flags":["LOOPBACK","UP","LOWER_UP"],"mtu":65536,"qdisc":"noqueue","operstate":"UNKNOWN","group":"default","txqlen":1000,"link_type":"loopback","address":"00:00:00:00:00:00","broadcast":"00:00:00:00:00:00","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8,"scope":"host","label":"lo","valid_life_time":4294967295,"preferred_life_time":4294967295},{"family":"inet6","local":"::1","prefixlen":128,"scope":"host","valid_life_time":4294967295,"preferred_life_time":4294967295}]},
  {"ifindex":2,"link_index":3,"ifname":"eth0","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"mtu":1400,"qdisc":"noqueue","operstate":"UP","group":"default","txqlen":1000,"link_type":"ether","address":"0a:58:0a:f4:01:02","broadcast":"ff:ff:ff:ff:ff:ff","link_netnsid":0,"addr_info":[{"family":"inet","local":"10.244.1.2","prefixlen":24,"scope":"global","label":"eth0","valid_life_time":4294967295,"preferred_life_time":4294967295},{"family":"inet6","local":"fd00:10:244:1::2","prefixlen":64,"scope":"global","nodad":true,"valid_life_time":4294967295,"preferred_life_time":4294967295},{"family":"inet6","local":"fe80::858:aff:fef4:102","prefixlen":64,"scope":"link","tentative":true,"valid_life_time":4294967295,"preferred_life_time":4294967295}]},
];
/** `ip -json route show table all root 0.0.0.0/0` in the pod: main-table routes, then the local table's. */
const POD_ROUTES_V4 = [
  {"dst":"default","gateway":"10.244.1.1","dev":"eth0","flags":[]},
  {"dst":"10.96.0.0/16","gateway":"10.244.1.1","dev":"eth0","flags":[]},
  {"dst":"10.244.1.0/24","dev":"eth0","protocol":"kernel","scope":"link","prefsrc":"10.244.1.2","flags":[]},
  {"type":"local","dst":"10.244.1.2","dev":"eth0","table":"local","protocol":"kernel","scope":"host","prefsrc":"10.244.1.2","flags":[]},
  {"type":"broadcast","dst":"10.244.1.255","dev":"eth0","table":"local","protocol":"kernel","scope":"link","prefsrc":"10.244.1.2","flags":[]},
  {"type":"local","dst":"127.0.0.0/8","dev":"lo","table":"local","protocol":"kernel","scope":"host","prefsrc":"127.0.0.1","flags":[]},
  {"type":"local","dst":"127.0.0.1","dev":"lo","table":"local","protocol":"kernel","scope":"host","prefsrc":"127.0.0.1","flags":[]},
  {"type":"broadcast","dst":"127.255.255.255","dev":"lo","table":"local","protocol":"kernel","scope":"link","prefsrc":"127.0.0.1","flags":[]},
];
/** `ip -json route show table all root ::/0` in the pod. */
const POD_ROUTES_V6 = [
  {"dst":"fd00:10:244:1::/64","dev":"eth0","protocol":"kernel","metric":256,"flags":[],"pref":"medium"},
  {"dst":"fe80::/64","dev":"eth0","protocol":"kernel","metric":256,"flags":[],"pref":"medium"},
  {"dst":"default","gateway":"fd00:10:244:1::1","dev":"eth0","metric":1024,"flags":[],"pref":"medium"},
  {"type":"local","dst":"::1","dev":"lo","table":"local","protocol":"kernel","metric":0,"flags":[],"pref":"medium"},
  {"type":"local","dst":"fd00:10:244:1::2","dev":"eth0","table":"local","protocol":"kernel","metric":0,"flags":[],"pref":"medium"},
  {"type":"multicast","dst":"ff00::/8","dev":"eth0","table":"local","protocol":"kernel","metric":256,"flags":[],"pref":"medium"},
];

/** After `ip link add other0 type bridge; ip link set dev trv0c7483136469 master other0`. */
const HOST_VETH_ON_OTHER_BRIDGE = [
  {"ifindex":3,"link_index":2,"ifname":"trv0c7483136469","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"mtu":1400,"qdisc":"noqueue","master":"other0","operstate":"UP","group":"default","txqlen":1000,"link_type":"ether","address":"0a:58:00:00:00:01","broadcast":"ff:ff:ff:ff:ff:ff","link_netnsid":0,"addr_info":[{"family":"inet6","local":"fe80::858:ff:fe00:1","prefixlen":64,"scope":"link","tentative":true,"valid_life_time":4294967295,"preferred_life_time":4294967295}]},
];
/** After `ip link set dev trv0c7483136469 down`. */
const HOST_VETH_DOWN = [
  {"ifindex":3,"link_index":2,"ifname":"trv0c7483136469","flags":["BROADCAST","MULTICAST"],"mtu":1400,"qdisc":"noqueue","master":"trellis0","operstate":"DOWN","group":"default","txqlen":1000,"link_type":"ether","address":"0a:58:00:00:00:01","broadcast":"ff:ff:ff:ff:ff:ff","link_netnsid":0,"addr_info":[]},
];
/** After `ip address del fd00:10:244:1::1/64 dev trellis0`. */
const BRIDGE_WITHOUT_V6_GATEWAY = [
  {"ifindex":2,"ifname":"trellis0","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"mtu":1400,"qdisc":"noqueue","operstate":"UP","group":"default","txqlen":1000,"link_type":"ether","address":"6a:e2:94:2b:75:a0","broadcast":"ff:ff:ff:ff:ff:ff","addr_info":[{"family":"inet","local":"10.244.1.1","prefixlen":24,"scope":"global","label":"trellis0","valid_life_time":4294967295,"preferred_life_time":4294967295},{"family":"inet6","local":"fe80::68e2:94ff:fe2b:75a0","prefixlen":64,"scope":"link","tentative":true,"valid_life_time":4294967295,"preferred_life_time":4294967295}]},
];
/** `ip -json address show dev eth0` in the pod after `ip address del fd00:10:244:1::2/64 dev eth0`. */
const POD_ETH0_WITHOUT_V6_ADDRESS = [
  {"ifindex":2,"link_index":3,"ifname":"eth0","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"mtu":1400,"qdisc":"noqueue","operstate":"UP","group":"default","txqlen":1000,"link_type":"ether","address":"0a:58:0a:f4:01:02","broadcast":"ff:ff:ff:ff:ff:ff","link_netnsid":0,"addr_info":[{"family":"inet","local":"10.244.1.2","prefixlen":24,"scope":"global","label":"eth0","valid_life_time":4294967295,"preferred_life_time":4294967295},{"family":"inet6","local":"fe80::858:aff:fef4:102","prefixlen":64,"scope":"link","tentative":true,"valid_life_time":4294967295,"preferred_life_time":4294967295}]},
];
/** After `ip route replace 0.0.0.0/0 via 10.244.1.254 dev eth0`. */
const POD_ROUTES_V4_WRONG_GATEWAY = [
  {"dst":"default","gateway":"10.244.1.254","dev":"eth0","flags":[]},
  {"dst":"10.96.0.0/16","gateway":"10.244.1.1","dev":"eth0","flags":[]},
  {"dst":"10.244.1.0/24","dev":"eth0","protocol":"kernel","scope":"link","prefsrc":"10.244.1.2","flags":[]},
  {"type":"local","dst":"10.244.1.2","dev":"eth0","table":"local","protocol":"kernel","scope":"host","prefsrc":"10.244.1.2","flags":[]},
  {"type":"broadcast","dst":"10.244.1.255","dev":"eth0","table":"local","protocol":"kernel","scope":"link","prefsrc":"10.244.1.2","flags":[]},
  {"type":"local","dst":"127.0.0.0/8","dev":"lo","table":"local","protocol":"kernel","scope":"host","prefsrc":"127.0.0.1","flags":[]},
  {"type":"local","dst":"127.0.0.1","dev":"lo","table":"local","protocol":"kernel","scope":"host","prefsrc":"127.0.0.1","flags":[]},
  {"type":"broadcast","dst":"127.255.255.255","dev":"lo","table":"local","protocol":"kernel","scope":"link","prefsrc":"127.0.0.1","flags":[]},
];
/** After the 10.96.0.0/16 route moved to table 100 (`ip route add 10.96.0.0/16 via 10.244.1.1 dev eth0 table 100`). */
const POD_ROUTES_V4_SERVICE_ROUTE_IN_TABLE_100 = [
  {"dst":"10.96.0.0/16","gateway":"10.244.1.1","dev":"eth0","table":"100","flags":[]},
  {"dst":"default","gateway":"10.244.1.1","dev":"eth0","flags":[]},
  {"dst":"10.244.1.0/24","dev":"eth0","protocol":"kernel","scope":"link","prefsrc":"10.244.1.2","flags":[]},
  {"type":"local","dst":"10.244.1.2","dev":"eth0","table":"local","protocol":"kernel","scope":"host","prefsrc":"10.244.1.2","flags":[]},
  {"type":"broadcast","dst":"10.244.1.255","dev":"eth0","table":"local","protocol":"kernel","scope":"link","prefsrc":"10.244.1.2","flags":[]},
  {"type":"local","dst":"127.0.0.0/8","dev":"lo","table":"local","protocol":"kernel","scope":"host","prefsrc":"127.0.0.1","flags":[]},
  {"type":"local","dst":"127.0.0.1","dev":"lo","table":"local","protocol":"kernel","scope":"host","prefsrc":"127.0.0.1","flags":[]},
  {"type":"broadcast","dst":"127.255.255.255","dev":"lo","table":"local","protocol":"kernel","scope":"link","prefsrc":"127.0.0.1","flags":[]},
];
/** After `ip route del ::/0 dev eth0`. */
const POD_ROUTES_V6_WITHOUT_DEFAULT = [
  {"dst":"fd00:10:244:1::/64","dev":"eth0","protocol":"kernel","metric":256,"flags":[],"pref":"medium"},
  {"dst":"fe80::/64","dev":"eth0","protocol":"kernel","metric":256,"flags":[],"pref":"medium"},
  {"type":"local","dst":"::1","dev":"lo","table":"local","protocol":"kernel","metric":0,"flags":[],"pref":"medium"},
  {"type":"local","dst":"fd00:10:244:1::2","dev":"eth0","table":"local","protocol":"kernel","metric":0,"flags":[],"pref":"medium"},
  {"type":"multicast","dst":"ff00::/8","dev":"eth0","table":"local","protocol":"kernel","metric":256,"flags":[],"pref":"medium"},
];
/** After a second interface took the default route: `ip route replace 0.0.0.0/0 via 10.244.1.1 dev net1 onlink`. */
const POD_ROUTES_V4_DEFAULT_VIA_NET1 = [
  {"dst":"default","gateway":"10.244.1.1","dev":"net1","flags":["onlink"]},
  {"dst":"10.96.0.0/16","gateway":"10.244.1.1","dev":"eth0","flags":[]},
  {"dst":"10.244.1.0/24","dev":"eth0","protocol":"kernel","scope":"link","prefsrc":"10.244.1.2","flags":[]},
  {"type":"local","dst":"10.244.1.2","dev":"eth0","table":"local","protocol":"kernel","scope":"host","prefsrc":"10.244.1.2","flags":[]},
  {"type":"broadcast","dst":"10.244.1.255","dev":"eth0","table":"local","protocol":"kernel","scope":"link","prefsrc":"10.244.1.2","flags":[]},
  {"type":"local","dst":"127.0.0.0/8","dev":"lo","table":"local","protocol":"kernel","scope":"host","prefsrc":"127.0.0.1","flags":[]},
  {"type":"local","dst":"127.0.0.1","dev":"lo","table":"local","protocol":"kernel","scope":"host","prefsrc":"127.0.0.1","flags":[]},
  {"type":"broadcast","dst":"127.255.255.255","dev":"lo","table":"local","protocol":"kernel","scope":"link","prefsrc":"127.0.0.1","flags":[]},
];
/** `ip -json link show dev trellis0` right after the bridge was created: up, but no port yet, so NO-CARRIER. */
const BRIDGE_WITHOUT_PORTS = [
  {"ifindex":2,"ifname":"trellis0","flags":["NO-CARRIER","BROADCAST","MULTICAST","UP"],"mtu":1400,"qdisc":"noqueue","operstate":"DOWN","linkmode":"DEFAULT","group":"default","txqlen":1000,"link_type":"ether","address":"0e:33:d0:0a:af:d3","broadcast":"ff:ff:ff:ff:ff:ff"},
];
/** After `ip link set dev eth0 down` in the pod: the kernel drops its routes and its IPv6 address with it. */
const POD_ETH0_DOWN = [
  {"ifindex":2,"link_index":3,"ifname":"eth0","flags":["BROADCAST","MULTICAST"],"mtu":1400,"qdisc":"noqueue","operstate":"DOWN","group":"default","txqlen":1000,"link_type":"ether","address":"0a:58:0a:f4:01:02","broadcast":"ff:ff:ff:ff:ff:ff","link_netnsid":0,"addr_info":[{"family":"inet","local":"10.244.1.2","prefixlen":24,"scope":"global","label":"eth0","valid_life_time":4294967295,"preferred_life_time":4294967295}]},
];
const POD_ROUTES_V4_ETH0_DOWN = [
  {"type":"local","dst":"10.244.1.2","dev":"eth0","table":"local","protocol":"kernel","scope":"host","prefsrc":"10.244.1.2","flags":[]},
  {"type":"local","dst":"127.0.0.0/8","dev":"lo","table":"local","protocol":"kernel","scope":"host","prefsrc":"127.0.0.1","flags":[]},
  {"type":"local","dst":"127.0.0.1","dev":"lo","table":"local","protocol":"kernel","scope":"host","prefsrc":"127.0.0.1","flags":[]},
  {"type":"broadcast","dst":"127.255.255.255","dev":"lo","table":"local","protocol":"kernel","scope":"link","prefsrc":"127.0.0.1","flags":[]},
];
const POD_ROUTES_V6_ETH0_DOWN = [
  {"type":"local","dst":"::1","dev":"lo","table":"local","protocol":"kernel","metric":0,"flags":[],"pref":"medium"},
];

const SPEC_INPUT = {
  network: "pods",
  containerId: "abc",
  ifname: "eth0",
  bridge: "trellis0",
  mtu: 1400,
  hairpin: true,
  mac: "0a:58:0a:f4:01:02",
  addresses: [
    { address: parseIp("10.244.1.2"), subnet: parsePrefix("10.244.1.0/24"), gateway: parseIp("10.244.1.1") },
    { address: parseIp("fd00:10:244:1::2"), subnet: parsePrefix("fd00:10:244:1::/64"), gateway: parseIp("fd00:10:244:1::1") },
  ],
  routes: [{ dst: parsePrefix("10.96.0.0/16") }],
  defaultRoutes: true,
};
const SPEC = planPodAttachment(SPEC_INPUT);

const only = (json: unknown): ObservedLink => {
  const links = parseIpLinks(json);
  assert.equal(links.length, 1, "the fixture shows one link");
  return links[0];
};

/** The healthy attachment, with any part replaced by a drifted fixture. */
function observe(parts: { hostVeth?: unknown; bridge?: unknown; podLink?: unknown; v4?: unknown; v6?: unknown } = {}): ObservedPod {
  const podLink = parts.podLink === undefined ? parseIpLinks(POD_ADDRESSES).find((link) => link.name === "eth0") : only(parts.podLink);
  return {
    hostVeth: only(parts.hostVeth ?? HOST_VETH),
    bridge: only(parts.bridge ?? BRIDGE),
    container: { link: podLink, routes: [...parseIpRoutes(parts.v4 ?? POD_ROUTES_V4, 4), ...parseIpRoutes(parts.v6 ?? POD_ROUTES_V6, 6)] },
  };
}

const address = (text: string, length: number) => ({ address: parseIp(text), length });

describe("dataplane/pod-check", () => {
  it("the fixtures were taken for this spec", () => {
    // Guards the fixtures themselves: a changed host veth name would make every diff below vacuous.
    assert.equal(SPEC.hostVeth.name, "trv0c7483136469");
  });

  describe("parseIpLinks", () => {
    it("reads name, MAC, UP, MTU and global addresses; link-scope addresses are dropped", () => {
      // Catches: fe80:: addresses counted (they come and go with DAD), UP read from operstate, MAC lost.
      const eth0 = parseIpLinks(POD_ADDRESSES).find((link) => link.name === "eth0");
      assert.deepEqual(eth0, {
        name: "eth0",
        mac: "0a:58:0a:f4:01:02",
        up: true,
        master: undefined,
        alias: undefined,
        kind: undefined,
        mtu: 1400,
        addresses: [address("10.244.1.2", 24), address("fd00:10:244:1::2", 64)],
      });
      assert.deepEqual(parseIpLinks(POD_ADDRESSES).map((link) => link.name), ["lo", "eth0"]);
    });

    it("reads the bridge's gateways and the port's master", () => {
      // Catches: `master` not read, so every port looks detached (or attached).
      const bridge = only(BRIDGE);
      assert.deepEqual(bridge.addresses, [address("10.244.1.1", 24), address("fd00:10:244:1::1", 64)]);
      assert.equal(bridge.up, true);
      const veth = only(HOST_VETH);
      assert.equal(veth.master, "trellis0");
      assert.deepEqual(veth.addresses, []);
      assert.equal(only(HOST_VETH_ON_OTHER_BRIDGE).master, "other0");
    });

    it("reads UP as the administrative state, whatever the carrier", () => {
      // Catches: LOWER_UP or operstate taken for the admin state, which `ip link set up` repairs.
      assert.equal(only(POD_ETH0_DOWN).up, false);
      assert.equal(only(HOST_VETH_DOWN).up, false);
      assert.equal(only(BRIDGE_WITHOUT_PORTS).up, true);
    });

    it("returns nothing for output that is not a list", () => {
      assert.deepEqual(parseIpLinks(undefined), []);
      assert.deepEqual(parseIpLinks({ ifname: "eth0" }), []);
    });
  });

  describe("parseIpRoutes", () => {
    it("keeps the main table's routes and drops the local table's local, broadcast and multicast routes", () => {
      // Catches: `local 10.244.1.2 dev eth0` or `ff00::/8 dev eth0 table local` taken as pod routes.
      assert.deepEqual(parseIpRoutes(POD_ROUTES_V4, 4), [
        { dst: parsePrefix("0.0.0.0/0"), gateway: parseIp("10.244.1.1"), dev: "eth0" },
        { dst: parsePrefix("10.96.0.0/16"), gateway: parseIp("10.244.1.1"), dev: "eth0" },
        { dst: parsePrefix("10.244.1.0/24"), gateway: undefined, dev: "eth0" },
      ]);
      assert.deepEqual(parseIpRoutes(POD_ROUTES_V6, 6), [
        { dst: parsePrefix("fd00:10:244:1::/64"), gateway: undefined, dev: "eth0" },
        { dst: parsePrefix("fe80::/64"), gateway: undefined, dev: "eth0" },
        { dst: parsePrefix("::/0"), gateway: parseIp("fd00:10:244:1::1"), dev: "eth0" },
      ]);
    });

    it("drops routes of other tables", () => {
      // Catches: a route in table 100 (which the pod's lookups never consult) counted as present.
      assert.deepEqual(
        parseIpRoutes(POD_ROUTES_V4_SERVICE_ROUTE_IN_TABLE_100, 4).map((route) => route.dst),
        [parsePrefix("0.0.0.0/0"), parsePrefix("10.244.1.0/24")],
      );
    });

    it("returns nothing for output that is not a list", () => {
      assert.deepEqual(parseIpRoutes(undefined, 4), []);
    });
  });

  describe("diffPodAttachment", () => {
    it("finds nothing wrong with a healthy attachment, MAC included", () => {
      // Catches: false alarms from what the kernel adds on its own: link-local addresses, subnet routes, the local table.
      assert.deepEqual(diffPodAttachment(SPEC, observe(), { checkMac: true }), []);
    });

    it("names a missing pod address", () => {
      assert.deepEqual(diffPodAttachment(SPEC, observe({ podLink: POD_ETH0_WITHOUT_V6_ADDRESS }), { checkMac: true }), [
        "address fd00:10:244:1::2/64 is missing from eth0",
      ]);
    });

    it("names a missing default route", () => {
      // Catches: the default route matched by family alone, or any route to anywhere accepted.
      assert.deepEqual(diffPodAttachment(SPEC, observe({ v6: POD_ROUTES_V6_WITHOUT_DEFAULT }), { checkMac: true }), [
        "route default via fd00:10:244:1::1 is missing from eth0",
      ]);
    });

    it("names a route through the wrong gateway", () => {
      // Catches: routes compared by destination only.
      assert.deepEqual(diffPodAttachment(SPEC, observe({ v4: POD_ROUTES_V4_WRONG_GATEWAY }), { checkMac: true }), [
        "route default via 10.244.1.1 is missing from eth0",
      ]);
    });

    it("does not count a route through another interface", () => {
      // Catches: routes compared without their device, so a second interface (e.g. one Multus
      // added) holding the default route makes eth0's look present.
      assert.deepEqual(diffPodAttachment(SPEC, observe({ v4: POD_ROUTES_V4_DEFAULT_VIA_NET1 }), { checkMac: true }), [
        "route default via 10.244.1.1 is missing from eth0",
      ]);
    });

    it("does not count a route that is only in another table", () => {
      assert.deepEqual(diffPodAttachment(SPEC, observe({ v4: POD_ROUTES_V4_SERVICE_ROUTE_IN_TABLE_100 }), { checkMac: true }), [
        "route 10.96.0.0/16 via 10.244.1.1 is missing from eth0",
      ]);
    });

    it("does not count the local table's host routes as the pod's routes", () => {
      // The local table holds `local 10.244.1.2 dev eth0`; a spec asking for 10.244.1.2/32 on eth0
      // must not be satisfied by it. Catches: the table field ignored.
      const spec = { ...SPEC, container: { ...SPEC.container, routes: [{ dst: parsePrefix("10.244.1.2/32") }] } };
      assert.deepEqual(diffPodAttachment(spec, observe(), { checkMac: true }), [
        "route 10.244.1.2/32 is missing from eth0",
      ]);
    });

    it("names a pod interface that is down, with everything the kernel dropped along with it", () => {
      // Catches: `up` not checked (a down link still lists its IPv4 address).
      assert.deepEqual(
        diffPodAttachment(SPEC, observe({ podLink: POD_ETH0_DOWN, v4: POD_ROUTES_V4_ETH0_DOWN, v6: POD_ROUTES_V6_ETH0_DOWN }), { checkMac: true }),
        [
          "interface eth0 is down",
          "address fd00:10:244:1::2/64 is missing from eth0",
          "route 10.96.0.0/16 via 10.244.1.1 is missing from eth0",
          "route default via 10.244.1.1 is missing from eth0",
          "route default via fd00:10:244:1::1 is missing from eth0",
        ],
      );
    });

    it("names a host veth that is down", () => {
      assert.deepEqual(diffPodAttachment(SPEC, observe({ hostVeth: HOST_VETH_DOWN }), { checkMac: true }), ["host interface trv0c7483136469 is down"]);
    });

    it("names a host veth on another bridge", () => {
      // Catches: a port's master not compared, so a pod cut off from its bridge passes CHECK.
      assert.deepEqual(diffPodAttachment(SPEC, observe({ hostVeth: HOST_VETH_ON_OTHER_BRIDGE }), { checkMac: true }), [
        "host interface trv0c7483136469 is not attached to bridge trellis0",
      ]);
    });

    it("names a gateway missing from the bridge", () => {
      // Catches: only the first family's gateway checked.
      assert.deepEqual(diffPodAttachment(SPEC, observe({ bridge: BRIDGE_WITHOUT_V6_GATEWAY }), { checkMac: true }), [
        "gateway fd00:10:244:1::1/64 is missing from bridge trellis0",
      ]);
    });

    it("compares the MAC only when asked to", () => {
      // Catches: CHECK failing every pod whose prevResult carried no MAC (the spec then holds a
      // random one), or a wrong MAC never reported when the runtime did give one.
      const other = planPodAttachment({ ...SPEC_INPUT, mac: "0a:58:0a:f4:01:99" });
      assert.deepEqual(diffPodAttachment(other, observe(), { checkMac: false }), []);
      assert.deepEqual(diffPodAttachment(other, observe(), { checkMac: true }), ["interface eth0 has MAC 0a:58:0a:f4:01:02, expected 0a:58:0a:f4:01:99"]);
    });

    it("names what is missing when links or the namespace are gone", () => {
      // Catches: a crash (or silence) on an attachment half torn down.
      assert.deepEqual(diffPodAttachment(SPEC, {}, { checkMac: true }), [
        "host interface trv0c7483136469 is missing",
        "bridge trellis0 is missing",
        "the pod's network namespace does not exist",
      ]);
      assert.deepEqual(diffPodAttachment(SPEC, { ...observe(), container: { routes: [] } }, { checkMac: true }), ["interface eth0 is missing in the pod"]);
    });
  });
});
