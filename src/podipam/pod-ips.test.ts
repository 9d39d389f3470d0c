import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { formatIp, nthAddress, parseIp, parsePrefix } from "../net/ip.js";
import type { SqliteDatabase } from "../store/sqlite.js";
import { openPodState } from "./state.js";
import { allocatePodIps, listLeases, PodIpError, rangeSetKey, releasePodIps, type PodIpRangeSet } from "./pod-ips.js";

function rangeSet(subnet: string, start?: string, end?: string): PodIpRangeSet {
  const prefix = parsePrefix(subnet);
  const v4 = prefix.family === 4;
  return [{
    subnet: prefix,
    start: start ? parseIp(start) : nthAddress(prefix, 1n),
    end: end ? parseIp(end) : nthAddress(prefix, v4 ? -2n : -1n),
    gateway: nthAddress(prefix, 1n),
  }];
}

const owner = (containerId: string, ifname = "eth0") => ({ network: "net", containerId, ifname });

describe("ipam/pod-ips", () => {
  let dir: string;
  let db: SqliteDatabase;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), "trellis-podips-"));
    db = openPodState(dir);
  });
  after(() => {
    db.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it("hands out addresses round robin, skipping the gateway, and wraps to freed ones", () => {
    const sets = [rangeSet("10.244.1.0/29")];
    const got = ["a", "b", "c", "d", "e"].map((id) => formatIp(allocatePodIps(db, owner(id), sets, [])[0].address));
    assert.deepEqual(got, ["10.244.1.2", "10.244.1.3", "10.244.1.4", "10.244.1.5", "10.244.1.6"]);
    assert.throws(() => allocatePodIps(db, owner("f"), sets, []), (error: unknown) =>
      error instanceof PodIpError && error.kind === "exhausted" && /no IP addresses available in range set 10\.244\.1\.1-10\.244\.1\.6 of network net/.test(error.message));
    assert.deepEqual(releasePodIps(db, owner("b")), ["10.244.1.3"]);
    assert.equal(formatIp(allocatePodIps(db, owner("g"), sets, [])[0].address), "10.244.1.3");
    for (const id of ["a", "c", "d", "e", "g"]) releasePodIps(db, owner(id));
    assert.equal(formatIp(allocatePodIps(db, owner("h"), sets, [])[0].address), "10.244.1.4", "continues after the last lease, not from the start");
    releasePodIps(db, owner("h"));
  });

  it("gives one address per range set for dual-stack", () => {
    const sets = [rangeSet("10.244.2.0/24"), rangeSet("fd00:10:244:2::/64")];
    const leases = allocatePodIps(db, owner("dual"), sets, []);
    assert.deepEqual(leases.map((lease) => formatIp(lease.address)), ["10.244.2.2", "fd00:10:244:2::2"]);
    assert.deepEqual(leases.map((lease) => formatIp(lease.gateway)), ["10.244.2.1", "fd00:10:244:2::1"]);
    assert.equal(releasePodIps(db, owner("dual")).length, 2);
  });

  it("honours requested addresses and refuses bad ones with the reason", () => {
    const sets = [rangeSet("10.244.3.0/24"), rangeSet("fd00:10:244:3::/64")];
    const leases = allocatePodIps(db, owner("req"), sets, [parseIp("10.244.3.77")]);
    assert.deepEqual(leases.map((lease) => formatIp(lease.address)), ["10.244.3.77", "fd00:10:244:3::2"]);
    assert.throws(() => allocatePodIps(db, owner("req2"), sets, [parseIp("10.244.3.77")]), /requested IP 10\.244\.3\.77 is already leased to container req interface eth0/);
    assert.throws(() => allocatePodIps(db, owner("req3"), sets, [parseIp("10.9.9.9")]), /requested IP 10\.9\.9\.9 is outside every range/);
    assert.throws(() => allocatePodIps(db, owner("req4"), sets, [parseIp("10.244.3.1")]), /requested IP 10\.244\.3\.1 is the gateway of 10\.244\.3\.0\/24/);
    assert.throws(() => allocatePodIps(db, owner("req"), sets, []), /duplicate allocation is not allowed/);
    releasePodIps(db, owner("req"));
    assert.equal(listLeases(db, "net").length, 0);
  });

  it("respects rangeStart and rangeEnd", () => {
    const sets = [rangeSet("10.244.4.0/24", "10.244.4.100", "10.244.4.101")];
    const got = ["x", "y"].map((id) => formatIp(allocatePodIps(db, owner(id), sets, [])[0].address));
    assert.deepEqual(got, ["10.244.4.100", "10.244.4.101"]);
    assert.throws(() => allocatePodIps(db, owner("z"), sets, []), /10\.244\.4\.100-10\.244\.4\.101/);
    releasePodIps(db, owner("x"));
    releasePodIps(db, owner("y"));
  });

  it("keys leases by the range set itself, so reordering or prepending sets continues each set's round robin", () => {
    // Catches: leases and cursors keyed by the set's position (schema v1): after a reorder the
    // IPv6 set would take over the IPv4 set's cursor and restart, handing a just-freed address
    // to the next pod while a stale conntrack entry or a peer's cache may still point at it.
    const at = (containerId: string) => ({ network: "keyed", containerId, ifname: "eth0" });
    const v4 = rangeSet("10.77.1.0/24");
    const v6 = rangeSet("fd00:77:1::/64");
    const extra = rangeSet("10.78.0.0/24");
    const addresses = (leases: ReturnType<typeof allocatePodIps>) => leases.map((lease) => formatIp(lease.address));
    const first = allocatePodIps(db, at("one"), [v4, v6], []);
    assert.deepEqual(addresses(first), ["10.77.1.2", "fd00:77:1::2"]);
    assert.deepEqual(first.map((lease) => lease.rangeSet), [rangeSetKey(v4), rangeSetKey(v6)]);
    releasePodIps(db, at("one"));
    assert.deepEqual(addresses(allocatePodIps(db, at("two"), [v6, v4], [])), ["fd00:77:1::3", "10.77.1.3"]);
    releasePodIps(db, at("two"));
    assert.deepEqual(addresses(allocatePodIps(db, at("three"), [extra, v4, v6], [])), ["10.78.0.2", "10.77.1.4", "fd00:77:1::4"]);
    assert.deepEqual(listLeases(db, "keyed"), [
      { address: "10.77.1.4", rangeSet: rangeSetKey(v4), containerId: "three", ifname: "eth0" },
      { address: "10.78.0.2", rangeSet: rangeSetKey(extra), containerId: "three", ifname: "eth0" },
      { address: "fd00:77:1::4", rangeSet: rangeSetKey(v6), containerId: "three", ifname: "eth0" },
    ]);
    releasePodIps(db, at("three"));
  });

  it("never hands out a range's gateway that lies in another range of the same set", () => {
    // Both ranges share 10.77.0.0/24; parseRange allows a gateway anywhere in its subnet and only
    // refuses overlapping start-end spans, so each gateway here sits inside the other range.
    // Catches: a gateway skipped only within its own range, which leases .1 (range 2's gateway)
    // and .200 (range 1's) to pods, answering ARP for the bridge's address.
    const at = (containerId: string) => ({ network: "gateways", containerId, ifname: "eth0" });
    const subnet = parsePrefix("10.77.0.0/24");
    const set: PodIpRangeSet = [
      { subnet, start: parseIp("10.77.0.1"), end: parseIp("10.77.0.100"), gateway: parseIp("10.77.0.200") },
      { subnet, start: parseIp("10.77.0.101"), end: parseIp("10.77.0.254"), gateway: parseIp("10.77.0.1") },
    ];
    for (const gateway of ["10.77.0.1", "10.77.0.200"]) {
      assert.throws(
        () => allocatePodIps(db, at("asks-for-gateway"), [set], [parseIp(gateway)]),
        (error: unknown) => error instanceof PodIpError && error.kind === "unavailable" && error.message === `requested IP ${gateway} is the gateway of 10.77.0.0/24`,
      );
    }
    const handedOut: string[] = [];
    for (let i = 0; ; i++) {
      try {
        handedOut.push(formatIp(allocatePodIps(db, at(`pod${i}`), [set], [])[0].address));
      } catch (error) {
        assert.ok(error instanceof PodIpError && error.kind === "exhausted", String(error));
        break;
      }
    }
    assert.equal(handedOut.length, 254 - 2);
    assert.equal(new Set(handedOut).size, handedOut.length);
    assert.ok(!handedOut.includes("10.77.0.1") && !handedOut.includes("10.77.0.200"), "no gateway is leased");
    assert.deepEqual([handedOut[0], handedOut[handedOut.length - 1]], ["10.77.0.2", "10.77.0.254"]);
    for (let i = 0; i < handedOut.length; i++) releasePodIps(db, at(`pod${i}`));
    assert.equal(listLeases(db, "gateways").length, 0);
  });

  it("keys a range set by its ranges whatever their order in the config", () => {
    // Catches: a set whose ranges are listed the other way round losing its round robin and its leases' key.
    const [low] = rangeSet("10.244.9.0/25");
    const [high] = rangeSet("10.244.9.128/25");
    assert.equal(rangeSetKey([high, low]), rangeSetKey([low, high]));
  });
});
