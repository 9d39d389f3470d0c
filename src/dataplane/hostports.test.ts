import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { describe, test } from "node:test";
import { parseIp, parsePrefix } from "../net/ip.js";
import { hostPortConflict, renderHostPorts, type HostPortContribution } from "./hostports.js";

const pod = (owner: string, v4: string, v6: string, mappings: HostPortContribution["mappings"]): HostPortContribution => ({
  owner, mappings, addresses: [parseIp(v4), parseIp(v6)], subnets: [parsePrefix("10.244.1.0/24"), parsePrefix("fd00:10:244:1::/64")],
});

const web = pod("pod web", "10.244.1.5", "fd00:10:244:1::5", [{ hostPort: 8080, containerPort: 80, protocol: "tcp" }]);
const dns = pod("pod dns", "10.244.1.6", "fd00:10:244:1::6", [{ hostPort: 8080, containerPort: 53, protocol: "udp" }]);
const pinned = pod("pod pinned", "10.244.1.7", "fd00:10:244:1::7", [{ hostPort: 9090, containerPort: 90, protocol: "tcp", hostIP: parseIp("198.18.0.11") }]);

/** nft's own parser on the script, in a throwaway namespace; undefined when nft or unshare is missing. */
function nftCheck(script: string): string | undefined {
  const run = spawnSync("unshare", ["-n", "nft", "-c", "-f", "-"], { input: script, encoding: "utf8" });
  if (run.error) return undefined;
  return run.status === 0 ? "" : run.stderr;
}

describe("dataplane/hostports", () => {
  // Bugs caught: a mapping answering in only one family, hostIP ignored (the port open on every
  // address), wildcard rules before specific ones (a pinned mapping shadowed), pod clients not
  // masqueraded (a pod reaching its own hostPort gets no answer).
  test("renders DNAT per family, hostIP-specific first, and masquerade of pod clients only", () => {
    const script = renderHostPorts("trellis-hostports", [web, dns, pinned]);
    const lines = script.split("\n").map((line) => line.trim());
    const rules = lines.filter((line) => line.includes(" dnat ")).map((line) => line.replace(/^add rule inet trellis-hostports hostports /, ""));
    assert.deepEqual(rules, [
      "ip daddr 198.18.0.11 meta l4proto tcp th dport 9090 meta mark set meta mark | 0x00002000 dnat ip to 10.244.1.7:90",
      "ip daddr != 127.0.0.0/8 meta l4proto tcp th dport 8080 meta mark set meta mark | 0x00002000 dnat ip to 10.244.1.5:80",
      "ip6 daddr != ::1 meta l4proto tcp th dport 8080 meta mark set meta mark | 0x00002000 dnat ip6 to [fd00:10:244:1::5]:80",
      "ip daddr != 127.0.0.0/8 meta l4proto udp th dport 8080 meta mark set meta mark | 0x00002000 dnat ip to 10.244.1.6:53",
      "ip6 daddr != ::1 meta l4proto udp th dport 8080 meta mark set meta mark | 0x00002000 dnat ip6 to [fd00:10:244:1::6]:53",
    ]);
    assert.ok(lines.includes("add rule inet trellis-hostports postrouting meta mark & 0x00002000 == 0x00002000 ip saddr @pod-subnets-ip masquerade"));
    assert.ok(lines.includes("add element inet trellis-hostports pod-subnets-ip { 10.244.1.0/24 }"));
    assert.ok(lines.includes("add rule inet trellis-hostports prerouting fib daddr type local jump hostports"));
    assert.equal(lines[0], "add table inet trellis-hostports", "written whole whether or not the table exists");
    const checked = nftCheck(script);
    if (checked !== undefined) assert.equal(checked, "", "nft accepts the script");
  });

  // Bug caught: the table left behind (ports kept open) when the last mapping goes.
  test("no mapping left: the table goes", () => {
    assert.equal(renderHostPorts("trellis-hostports", []), "add table inet trellis-hostports\ndelete table inet trellis-hostports\n");
    assert.throws(() => renderHostPorts("bad name;", []), /not a plain word/);
  });

  // Bug caught: two pods given one hostPort (one of them silently unreachable), or pods that may
  // coexist refused (the Conformance case: same port, another hostIP or protocol).
  test("conflicts as Kubernetes sees them", () => {
    assert.match(hostPortConflict([web], [{ hostPort: 8080, containerPort: 81, protocol: "tcp" }])!, /^hostPort 8080\/tcp is taken by pod web \(8080\/tcp\)$/);
    assert.equal(hostPortConflict([web], [{ hostPort: 8080, containerPort: 81, protocol: "udp" }]), undefined, "another protocol");
    assert.equal(hostPortConflict([pinned], [{ hostPort: 9090, containerPort: 1, protocol: "tcp", hostIP: parseIp("198.18.0.12") }]), undefined, "another hostIP");
    assert.match(hostPortConflict([pinned], [{ hostPort: 9090, containerPort: 1, protocol: "tcp" }])!, /taken by pod pinned \(198\.18\.0\.11:9090\/tcp\)/, "a wildcard clashes with a pinned one");
  });
});
