import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { parseIp, parsePrefix } from "../net/ip.js";
import { hostVethName, isHostVethName, planPodAttachment, renderContainerCommands, renderHostCommands, renderMasquerade } from "./pod-attachment.js";

describe("dataplane/pod-attachment", () => {
  const spec = planPodAttachment({
    network: "pods", containerId: "abc", ifname: "eth0", netns: "/var/run/netns/p", bridge: "trellis0", mtu: 1400, hairpin: true,
    mac: "0a:58:0a:f4:01:02",
    addresses: [
      { address: parseIp("10.244.1.2"), subnet: parsePrefix("10.244.1.0/24"), gateway: parseIp("10.244.1.1") },
      { address: parseIp("fd00:10:244:1::2"), subnet: parsePrefix("fd00:10:244:1::/64"), gateway: parseIp("fd00:10:244:1::1") },
    ],
    routes: [{ dst: parsePrefix("10.96.0.0/16") }],
    defaultRoutes: true,
  });

  it("names the host veth from the attachment, so DEL finds it without the netns", () => {
    assert.equal(spec.hostVeth.name, hostVethName("pods", "abc", "eth0"));
    assert.ok(isHostVethName(spec.hostVeth.name));
    assert.notEqual(hostVethName("pods", "abc", "eth1"), spec.hostVeth.name);
  });

  it("renders the host side: bridge, gateway addresses, veth pair with hairpin", () => {
    const veth = spec.hostVeth;
    assert.deepEqual(renderHostCommands(spec), [
      "link set dev trellis0 mtu 1400 up",
      "address replace 10.244.1.1/24 dev trellis0",
      "address replace fd00:10:244:1::1/64 dev trellis0 nodad",
      `link add ${veth.name} mtu 1400 address ${veth.mac} type veth peer name eth0 mtu 1400 address 0a:58:0a:f4:01:02 netns /var/run/netns/p`,
      `link set dev ${veth.name} master trellis0`,
      `link set dev ${veth.name} type bridge_slave hairpin on`,
      `link set dev ${veth.name} up`,
    ]);
  });

  it("renders the pod side: lo, addresses, routes with the family's gateway", () => {
    assert.deepEqual(renderContainerCommands(spec), [
      "link set dev lo up",
      "address add 10.244.1.2/24 dev eth0",
      "address add fd00:10:244:1::2/64 dev eth0 nodad",
      "link set dev eth0 up",
      "route add 10.96.0.0/16 via 10.244.1.1 dev eth0",
      "route add 0.0.0.0/0 via 10.244.1.1 dev eth0",
      "route add ::/0 via fd00:10:244:1::1 dev eth0",
    ]);
  });

  it("masquerades only traffic that leaves the pod subnets", () => {
    const script = renderMasquerade([parsePrefix("10.244.1.0/24"), parsePrefix("fd00:10:244:1::/64")]);
    assert.match(script, /ip saddr @pod-subnets-v4 ip daddr != @pod-subnets-v4 ip daddr != 224\.0\.0\.0\/4 masquerade/);
    assert.match(script, /add element inet trellis-cni pod-subnets-v4 \{ 10\.244\.1\.0\/24 \}/);
    assert.match(script, /add element inet trellis-cni pod-subnets-v6 \{ fd00:10:244:1::\/64 \}/);
    assert.match(script, /flush chain inet trellis-cni postrouting/);
  });
});
