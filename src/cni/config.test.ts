import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { formatIp, formatPrefix, parsePrefix } from "../net/ip.js";
import { parseNetConf } from "./config.js";
import { CniError } from "../podnet/errors.js";
import { formatResult, parseResult } from "./result.js";

const none = new Map<string, string>();

describe("cni/config", () => {
  it("applies host-local's defaults to a dual-stack config", () => {
    const conf = parseNetConf(JSON.stringify({
      cniVersion: "1.1.0", name: "pods", type: "trellis",
      ipam: { ranges: [[{ subnet: "10.244.1.0/24" }], [{ subnet: "fd00:10:244:1::/64" }]], routes: [{ dst: "10.96.0.0/16" }] },
    }), none);
    assert.equal(conf.bridge, "trellis0");
    assert.equal(conf.isDefaultGateway, true);
    assert.equal(conf.ipam.kind, "builtin");
    if (conf.ipam.kind !== "builtin") return;
    const [v4, v6] = conf.ipam.ranges.map((set) => set[0]);
    assert.deepEqual([formatIp(v4.start), formatIp(v4.end), formatIp(v4.gateway)], ["10.244.1.1", "10.244.1.254", "10.244.1.1"]);
    assert.deepEqual([formatIp(v6.start), formatIp(v6.end)], ["fd00:10:244:1::1", "fd00:10:244:1:ffff:ffff:ffff:ffff"]);
    assert.equal(formatPrefix(v6.subnet), "fd00:10:244:1::/64");
    assert.deepEqual(conf.ipam.routes, [{ dst: parsePrefix("10.96.0.0/16") }]);
  });

  it("collects requested addresses and MAC from runtimeConfig, args and CNI_ARGS", () => {
    const conf = parseNetConf(JSON.stringify({
      cniVersion: "1.0.0", name: "pods", type: "trellis",
      runtimeConfig: { ips: ["10.244.1.9/24"], mac: "0A:58:0A:F4:01:09" },
      args: { cni: { ips: ["fd00:10:244:1::9"] } },
      ipam: { ranges: [[{ subnet: "10.244.1.0/24" }]] },
    }), new Map([["IP", "10.244.1.9"]]));
    assert.deepEqual(conf.requestedIps.map(formatIp), ["10.244.1.9", "fd00:10:244:1::9"]);
    assert.equal(conf.mac, "0a:58:0a:f4:01:09");
  });

  // Bugs caught: a mapping with a bad port, protocol or hostIP accepted (then written to nftables
  // or silently dropped), or hostIP "" / 0.0.0.0 taken as an address instead of "every address".
  it("reads runtimeConfig.portMappings, refusing bad entries by index and field", () => {
    const parse = (portMappings: unknown) =>
      parseNetConf(JSON.stringify({ cniVersion: "1.0.0", name: "pods", type: "trellis", runtimeConfig: { portMappings }, ipam: { ranges: [[{ subnet: "10.244.1.0/24" }]] } }), none).portMappings;
    const mappings = parse([{ hostPort: 80, containerPort: 8080 }, { hostPort: 53, containerPort: 53, protocol: "UDP", hostIP: "" }, { hostPort: 443, containerPort: 443, protocol: "sctp", hostIP: "fd00::1" }]);
    assert.deepEqual(mappings.map((m) => [m.hostPort, m.containerPort, m.protocol, m.hostIP && formatIp(m.hostIP)]), [[80, 8080, "tcp", undefined], [53, 53, "udp", undefined], [443, 443, "sctp", "fd00::1"]]);
    assert.deepEqual(parse(undefined), []);
    // Bug caught (upstream e2e HostPort spec on real nodes): containerd 1.6 sends Go's field names,
    // {"HostPort":54323,"ContainerPort":8080,"Protocol":"tcp","HostIP":"127.0.0.1"}, and every
    // pod with a hostPort failed its sandbox with "hostPort undefined is invalid".
    const containerd = parse([{ HostPort: 54323, ContainerPort: 8080, Protocol: "tcp", HostIP: "127.0.0.1" }]);
    assert.deepEqual(containerd.map((m) => [m.hostPort, m.containerPort, m.protocol, m.hostIP && formatIp(m.hostIP)]), [[54323, 8080, "tcp", "127.0.0.1"]]);
    const refused: Array<[unknown, RegExp]> = [
      [[{ hostPort: 80, HostPort: 81, containerPort: 80 }], /^runtimeConfig\.portMappings\[0\] has "hostPort" and "HostPort": give hostPort once$/],
      [[{ HostPort: 80, HOSTPORT: 81, containerPort: 80 }], /^runtimeConfig\.portMappings\[0\] has "HostPort" and "HOSTPORT": give hostPort once$/],
      ["80", /^runtimeConfig\.portMappings is not a list/],
      [[{ hostPort: 0, containerPort: 80 }], /^runtimeConfig\.portMappings\[0\]\.hostPort 0 is invalid: expected an integer from 1 to 65535$/],
      [[{ hostPort: 80, containerPort: "80" }], /^runtimeConfig\.portMappings\[0\]\.containerPort "80" is invalid/],
      [[{ hostPort: 80, containerPort: 80 }, { hostPort: 81, containerPort: 81, protocol: "icmp" }], /^runtimeConfig\.portMappings\[1\]\.protocol "icmp" is invalid: expected tcp, udp or sctp$/],
      [[{ hostPort: 80, containerPort: 80, hostIP: "1.2.3.4; drop" }], /^runtimeConfig\.portMappings\[0\]\.hostIP "1\.2\.3\.4; drop" is not an IP address/],
      [Array(1025).fill({ hostPort: 80, containerPort: 80 }), /has 1025 entries; at most 1024 are allowed/],
    ];
    for (const [value, message] of refused) {
      assert.throws(() => parse(value), (error: unknown) => error instanceof CniError && error.code === 7 && message.test(error.message));
    }
  });

  it("delegates any other ipam type and keeps the raw config for it", () => {
    const conf = parseNetConf(JSON.stringify({ cniVersion: "0.4.0", name: "n", type: "trellis", ipam: { type: "host-local", subnet: "10.1.0.0/24" } }), none);
    assert.deepEqual(conf.ipam, { kind: "delegated", type: "host-local" });
    assert.equal((conf.raw.ipam as { subnet: string }).subnet, "10.1.0.0/24");
  });

  it("reads GC's attachment list under either key", () => {
    for (const key of ["cni.dev/valid-attachments", "cni.dev/attachments"]) {
      const conf = parseNetConf(JSON.stringify({ cniVersion: "1.1.0", name: "n", type: "trellis", ipam: { ranges: [[{ subnet: "10.1.0.0/24" }]] }, [key]: [{ containerID: "a", ifname: "eth0" }] }), none);
      assert.deepEqual(conf.validAttachments, [{ containerId: "a", ifname: "eth0" }]);
    }
  });

  it("rejects a bad range with code 7 naming the field", () => {
    assert.throws(
      () => parseNetConf(JSON.stringify({ cniVersion: "1.1.0", name: "n", ipam: { ranges: [[{ subnet: "10.1.0.0/24", rangeStart: "10.2.0.5" }]] } }), none),
      (error: unknown) => error instanceof CniError && error.code === 7 && error.message === "ipam.ranges[0][0].rangeStart 10.2.0.5 is outside subnet 10.1.0.0/24",
    );
  });

  it("reads nonMasqueradeCidrs and refuses host bits in a subnet or an MTU too small for IPv6", () => {
    const base = { cniVersion: "1.1.0", name: "n", type: "trellis", ipam: { ranges: [[{ subnet: "10.1.0.0/24" }], [{ subnet: "fd00:1::/64" }]] } };
    const conf = parseNetConf(JSON.stringify({ ...base, nonMasqueradeCidrs: ["10.244.0.0/16", "fd00:10:244::/56"] }), none);
    assert.deepEqual(conf.nonMasqueradeCidrs.map(formatPrefix), ["10.244.0.0/16", "fd00:10:244::/56"]);
    const refused = (config: object, message: string) =>
      assert.throws(() => parseNetConf(JSON.stringify(config), none), (error: unknown) => error instanceof CniError && error.code === 7 && error.message === message);
    refused({ ...base, mtu: 1279 }, "mtu 1279 is too small for the IPv6 range fd00:1::/64: a network with IPv6 needs an mtu of at least 1280");
    refused({ ...base, ipam: { ranges: [[{ subnet: "10.1.0.9/24" }]] } }, "ipam.ranges[0][0].subnet 10.1.0.9/24 has host bits set: did you mean 10.1.0.0/24?");
    assert.equal(parseNetConf(JSON.stringify({ ...base, mtu: 576, ipam: { ranges: [[{ subnet: "10.1.0.0/24" }]] } }), none).mtu, 576, "576 is fine without IPv6");
  });
});

describe("cni/result", () => {
  const result = {
    cniVersion: "1.1.0",
    interfaces: [{ name: "eth0", mac: "02:00:00:00:00:01", sandbox: "/var/run/netns/p" }],
    ips: [{ address: "10.244.1.2/24", gateway: "10.244.1.1", interface: 0 }, { address: "fd00::2/64", gateway: "fd00::1", interface: 0 }],
    routes: [{ dst: "0.0.0.0/0", gw: "10.244.1.1" }],
  };

  it("adds ips[].version for versions before 1.0.0 only", () => {
    const old = formatResult(result, "0.4.0") as { ips: Array<{ version: string }> };
    assert.deepEqual(old.ips.map((ip) => ip.version), ["4", "6"]);
    const current = formatResult(result, "1.1.0") as { ips: Array<Record<string, unknown>>; dns: unknown };
    assert.ok(current.ips.every((ip) => !("version" in ip)));
    assert.deepEqual(current.dns, {});
  });

  it("reads results of older versions and rejects broken ones", () => {
    const parsed = parseResult({ cniVersion: "0.3.1", ips: [{ version: "4", address: "10.1.0.2/24", gateway: "10.1.0.1" }] }, "prevResult");
    assert.deepEqual(parsed.ips, [{ address: "10.1.0.2/24", gateway: "10.1.0.1" }]);
    assert.throws(() => parseResult({ cniVersion: "1.0.0", ips: [{ address: "10.1.0.2" }] }, "prevResult"), /prevResult\.ips\[0\]\.address "10\.1\.0\.2" is not ADDRESS\/LENGTH/);
  });
});
