import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { kubeFlowAgents, parseAgentPort, parseAgentUrl, storeFlowAgents } from "./flows.js";

describe("where trellis flows finds the agents", () => {
  // Catches an agent address that could carry a path, credentials or another scheme into the
  // request, and a refusal that does not say what is allowed.
  it("takes an agent as http://HOST:PORT only", () => {
    assert.equal(parseAgentUrl("http://127.0.0.1:9656"), "http://127.0.0.1:9656");
    assert.equal(parseAgentUrl("http://[fd00::1]:9656/"), "http://[fd00::1]:9656");
    for (const bad of ["127.0.0.1:9656", "https://127.0.0.1:9656", "http://127.0.0.1", "http://u:p@127.0.0.1:9656", "http://127.0.0.1:9656/flows", "http://127.0.0.1:9656?x=1", "http://127.0.0.1:9656\n", "file:///etc/passwd"]) {
      assert.throws(() => parseAgentUrl(bad), { message: /^--agent ".*" is not an agent's address: expected http:\/\/HOST:PORT, such as http:\/\/127\.0\.0\.1:9656$/ }, bad);
    }
    assert.throws(() => parseAgentPort("0"), { message: '--agent-port "0" is not a port from 1 to 65535' });
    assert.throws(() => parseAgentPort("65536"), { message: /--agent-port "65536"/ });
  });

  // Catches a node's agent asked at an address that is no IP (a name the node chose), an IPv6
  // address without brackets, and a Node's ExternalIP taken for where its agent listens.
  it("asks each node's agent at an address of its own: the store's published one, a Node's InternalIP", () => {
    const network = (addresses: string[]) => ({ addresses, vteps: [], mtu: 1500, agent: {} }) as never;
    const agents = storeFlowAgents([
      { name: "a", podCidrs: [], network: network(["fd00:198:18::11", "198.18.0.11"]) },
      { name: "b", podCidrs: [], network: network(["evil.example", "198.18.0.12"]) },
      { name: "c", podCidrs: [] },
    ], 9100);
    assert.deepEqual(agents, [{ node: "a", url: "http://[fd00:198:18::11]:9100" }, { node: "b", url: "http://198.18.0.12:9100" }]);
    const kube = kubeFlowAgents([
      { metadata: { name: "n1" }, status: { addresses: [{ type: "ExternalIP", address: "203.0.113.1" }, { type: "InternalIP", address: "10.0.0.1" }] } },
      { metadata: { name: "n2" }, status: { addresses: [{ type: "Hostname", address: "n2" }] } },
    ] as never, 9656);
    assert.deepEqual(kube, [{ node: "n1", url: "http://10.0.0.1:9656" }]);
  });
});
