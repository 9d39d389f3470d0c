import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { formatIp, parseIp } from "../net/ip.js";
import { staleUdpFlows, type StaleFlow } from "./service-conntrack.js";
import type { ProxyEndpoint, ProxyServicePort } from "./service-proxy.js";

const endpoint = (address: string, extra: Partial<ProxyEndpoint> = {}): ProxyEndpoint => ({ address: parseIp(address), port: 5353, ready: true, serving: true, terminating: false, ...extra });

const dns = (endpoints: ProxyEndpoint[], extra: Partial<ProxyServicePort> = {}): ProxyServicePort => ({
  namespace: "kube-system", name: "dns", portName: "dns", protocol: "UDP", port: 53, nodePort: 30053,
  clusterIPs: [parseIp("10.96.0.10"), parseIp("fd00:10:96::a")], externalIPs: [], loadBalancerIPs: [],
  externalTrafficPolicy: "Cluster", internalTrafficPolicy: "Cluster", endpoints, ...extra,
});

const show = (flows: StaleFlow[]) =>
  flows.map((flow) => `${flow.family} ${flow.origDst ? formatIp(flow.origDst) : "*"}:${flow.origPortDst} <- ${flow.replySrc ? formatIp(flow.replySrc) : "*"}`).sort();

describe("dataplane/service-conntrack", () => {
  // Bug caught: a UDP client pinned to an endpoint that is gone (kubernetes#48370), or flows of
  // the endpoints that stay deleted too (their clients would be moved for nothing).
  test("an endpoint leaving a UDP port: its flows to the ClusterIP of its family and to the NodePort", () => {
    const before = dns([endpoint("10.244.1.5"), endpoint("10.244.2.7"), endpoint("fd00:10:244:1::5")]);
    const after = dns([endpoint("10.244.2.7"), endpoint("fd00:10:244:1::5")]);
    assert.deepEqual(show(staleUdpFlows([before], [after])), ["4 *:30053 <- 10.244.1.5", "4 10.96.0.10:53 <- 10.244.1.5"]);
  });

  // Bug caught: a Service going from no endpoint to some keeps its clients' old flows, which
  // DNAT to nothing (kubernetes#19029), so the Service stays dark for them.
  test("a UDP port going from no usable endpoint to one: every flow to its addresses and NodePort", () => {
    const before = dns([endpoint("10.244.1.5", { ready: false, serving: false })]);
    const after = dns([endpoint("10.244.1.5")]);
    assert.deepEqual(show(staleUdpFlows([before], [after])), ["4 *:30053 <- *", "4 10.96.0.10:53 <- *", "6 *:30053 <- *", "6 fd00:10:96::a:53 <- *"]);
  });

  // Bug caught: a client that sent to a UDP Service before its rules existed keeps a flow that
  // leads nowhere (seen: the Kubernetes lab's UDP client never heard its first server pod).
  test("a UDP port new to the proxy, with endpoints: every flow to its addresses and NodePort", () => {
    assert.deepEqual(show(staleUdpFlows([], [dns([endpoint("10.244.1.5")])])), ["4 *:30053 <- *", "4 10.96.0.10:53 <- *", "6 *:30053 <- *", "6 fd00:10:96::a:53 <- *"]);
    assert.deepEqual(staleUdpFlows([], [dns([])]), [], "none while it has no endpoint");
  });

  // Bug caught: flows deleted for TCP (its connections end themselves; deleting breaks live ones),
  // or for an unchanged port.
  test("nothing for TCP, nor for an unchanged UDP port; a removed UDP port's endpoints go", () => {
    const tcp = dns([endpoint("10.244.1.5")], { protocol: "TCP", portName: "tcp" });
    assert.deepEqual(staleUdpFlows([tcp], [{ ...tcp, endpoints: [] }]), []);
    const same = dns([endpoint("10.244.1.5")]);
    assert.deepEqual(staleUdpFlows([same], [dns([endpoint("10.244.1.5")])]), []);
    assert.deepEqual(show(staleUdpFlows([same], [])), ["4 *:30053 <- 10.244.1.5", "4 10.96.0.10:53 <- 10.244.1.5"]);
  });

  // Bug caught: terminating endpoints still in use (no ready one left) treated as gone.
  test("a serving terminating endpoint in use when no ready one is left keeps its flows", () => {
    const before = dns([endpoint("10.244.1.5")]);
    const after = dns([endpoint("10.244.1.5", { ready: false, serving: true, terminating: true })]);
    assert.deepEqual(staleUdpFlows([before], [after]), []);
  });

  // Bug caught (upstream e2e "Conntrack should be able to preserve UDP traffic when server pod
  // cycles for a ClusterIP service with InternalTrafficPolicy set to Local"): while node2 had no
  // endpoint of its own, its client's datagrams to the ClusterIP left undnatted and made a flow;
  // the port had endpoints elsewhere all along, so the new local endpoint cleared nothing.
  test("internalTrafficPolicy Local: this node's own endpoint coming back clears the flows to the ClusterIPs", () => {
    const policy = { internalTrafficPolicy: "Local" as const };
    const away = dns([endpoint("10.244.1.5", { nodeName: "node1" }), endpoint("10.244.2.7", { nodeName: "node2", ready: false, serving: false })], policy);
    const back = dns([endpoint("10.244.1.5", { nodeName: "node1" }), endpoint("10.244.2.9", { nodeName: "node2" })], policy);
    assert.deepEqual(show(staleUdpFlows([away], [back], "node2")), ["4 10.96.0.10:53 <- *", "6 fd00:10:96::a:53 <- *"]);
    // node1 had its endpoint all along: nothing of its clients' moves.
    assert.deepEqual(staleUdpFlows([away], [back], "node1"), []);
  });

  test("externalTrafficPolicy Local: this node's own endpoint coming back clears the flows to the NodePort, not the ClusterIPs", () => {
    const policy = { externalTrafficPolicy: "Local" as const };
    const away = dns([endpoint("10.244.1.5", { nodeName: "node1" })], policy);
    const back = dns([endpoint("10.244.1.5", { nodeName: "node1" }), endpoint("10.244.2.9", { nodeName: "node2" })], policy);
    assert.deepEqual(show(staleUdpFlows([away], [back], "node2")), ["4 *:30053 <- *", "6 *:30053 <- *"]);
  });
});
