import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  mergePrefixes, intervalPrefixes, formatIp, formatPrefix, nthAddress, parseIp, parsePrefix, prefixContains, prefixesOverlap, prefixSize, specialRangeOf, specialRanges, subPrefix, tryParseIp,
  tryParseInterfaceAddress,
} from "./ip.js";

describe("net/ip", () => {
  it("formats IPv6 per RFC 5952", () => {
    const cases: Array<[string, string]> = [
      ["2001:db8:0:0:0:0:2:1", "2001:db8::2:1"],
      ["2001:db8:0:1:1:1:1:1", "2001:db8:0:1:1:1:1:1"],
      ["2001:0:0:1:0:0:0:1", "2001:0:0:1::1"],
      ["2001:DB8::1", "2001:db8::1"],
      ["::", "::"],
      ["::1", "::1"],
      ["fd00:10:244:0:0:0:0:0", "fd00:10:244::"],
      ["::ffff:1.2.3.4", "::ffff:1.2.3.4"],
    ];
    for (const [input, expected] of cases) assert.equal(formatIp(parseIp(input)), expected, input);
  });

  it("rejects loose forms", () => {
    for (const bad of ["10.1", "010.0.0.1", "1.2.3.256", "fe80::1%eth0", "", "abc", "1.2.3.4/24"]) {
      assert.equal(tryParseIp(bad), undefined, bad);
    }
    for (const bad of ["10.0.0.0/33", "fd00::/129", "10.0.0.0/", "10.0.0.0/08", "10.0.0.0"]) {
      assert.equal(tryParseInterfaceAddress(bad), undefined, bad);
    }
  });

  it("names the canonical form when host bits are set", () => {
    assert.throws(() => parsePrefix("10.244.1.0/16"), /has host bits set: did you mean 10\.244\.0\.0\/16\?/);
    assert.equal(formatPrefix(parsePrefix("fd00:10:244::/56")), "fd00:10:244::/56");
  });

  it("does range arithmetic", () => {
    const pods = parsePrefix("10.244.0.0/16");
    assert.equal(prefixSize(pods), 65536n);
    assert.equal(formatIp(nthAddress(pods, 1n)), "10.244.0.1");
    assert.equal(formatIp(nthAddress(pods, -1n)), "10.244.255.255");
    assert.equal(formatPrefix(subPrefix(pods, 24, 3n)), "10.244.3.0/24");
    assert.ok(prefixContains(pods, parseIp("10.244.9.9")));
    assert.ok(!prefixContains(pods, parseIp("fd00::1")));
    assert.ok(prefixesOverlap(pods, parsePrefix("10.0.0.0/8")));
    assert.ok(!prefixesOverlap(pods, parsePrefix("10.96.0.0/16")));
    const v6 = parsePrefix("fd00:10:244::/56");
    assert.equal(formatPrefix(subPrefix(v6, 64, 255n)), "fd00:10:244:ff::/64");
  });

  it("classifies special-use addresses", () => {
    const cases: Array<[string, string | undefined]> = [
      ["0.0.0.0", "this-network"],
      ["127.0.0.1", "loopback"],
      ["169.254.169.254", "link-local"],
      ["239.255.255.250", "multicast"],
      ["10.244.0.1", undefined],
      ["::", "unspecified"],
      ["::1", "loopback"],
      ["::ffff:10.0.0.1", "IPv4-mapped"],
      ["fe80::1", "link-local"],
      ["ff02::1", "multicast"],
      ["fd00:10:244::1", undefined],
    ];
    for (const [input, use] of cases) assert.equal(specialRangeOf(parseIp(input))?.use, use, input);
    assert.deepEqual(specialRanges(4).map((range) => formatPrefix(range.prefix)), ["0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4"]);
  });

  it("merges prefixes into the fewest that cover their union", () => {
    const merged = (texts: string[]) => mergePrefixes(texts.map(parsePrefix)).map(formatPrefix);
    assert.deepEqual(merged(["10.244.1.128/25", "10.244.1.0/25"]), ["10.244.1.0/24"]);
    assert.deepEqual(merged(["10.244.0.0/16", "10.244.1.0/24", "224.0.0.0/4"]), ["10.244.0.0/16", "224.0.0.0/4"]);
    assert.deepEqual(merged(["10.0.0.0/24", "10.0.2.0/24"]), ["10.0.0.0/24", "10.0.2.0/24"]);
    assert.deepEqual(merged(["fd00::/64", "10.0.0.0/8", "fd00:0:0:1::/64"]), ["10.0.0.0/8", "fd00::/63"]);
    assert.deepEqual(merged(["0.0.0.0/0", "10.0.0.0/8"]), ["0.0.0.0/0"]);
  });

  it("splits an interval into aligned prefixes", () => {
    const split = (family: 4 | 6, first: string, last: string) =>
      intervalPrefixes({ family, first: parseIp(first).value, last: parseIp(last).value }).map(formatPrefix);
    assert.deepEqual(split(4, "10.0.0.1", "10.0.0.6"), ["10.0.0.1/32", "10.0.0.2/31", "10.0.0.4/31", "10.0.0.6/32"]);
    assert.deepEqual(split(4, "0.0.0.0", "255.255.255.255"), ["0.0.0.0/0"]);
    assert.deepEqual(split(6, "::", "::ffff"), ["::/112"]);
  });
});
