import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { formatIp, nthAddress, parseIp, parsePrefix } from "../net/ip.js";
import type { SqliteDatabase } from "../store/sqlite.js";
import { openPodState } from "./state.js";
import { allocatePodIps, listLeases, PodIpError, releasePodIps, type PodIpRangeSet } from "./pod-ips.js";

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
});
