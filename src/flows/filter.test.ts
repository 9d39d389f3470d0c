import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { flowFilterQuery, flowMatches, parseFlowFilter } from "./filter.js";
import type { FlowRecord } from "./record.js";

const NOW = Date.parse("2026-12-08T10:00:00.000Z");

function record(overrides: Partial<FlowRecord> = {}): FlowRecord {
  return {
    time: "2026-12-08T09:59:00.000Z", node: "node1", event: "new", verdict: "forwarded", protocol: "TCP",
    source: { address: "10.244.0.2", port: 40000, pod: "default/client" },
    destination: { address: "10.96.0.10", port: 80 },
    translated: { address: "10.244.1.5", port: 8080, pod: "web/server-0" },
    service: "web/front",
    ...overrides,
  };
}

describe("flow filters", () => {
  // Catches a filter that lets a bad value through to the agent (or to a shell), or refuses
  // without naming what was given and what is allowed.
  it("refuses bad values, naming the flag, the value and what is allowed", () => {
    const refused: Array<[Record<string, string>, RegExp]> = [
      [{ pod: "client" }, /^--pod "client" is not a pod as NAMESPACE\/NAME \(must be NAMESPACE\/NAME\)$/],
      [{ pod: "default/a/b" }, /^--pod "default\/a\/b" is not a pod as NAMESPACE\/NAME/],
      [{ pod: "default/Client" }, /^--pod "default\/Client" is not a pod as NAMESPACE\/NAME \(name: a lowercase RFC 1123 subdomain/],
      [{ pod: "../etc/passwd" }, /^--pod "\.\.\/etc\/passwd" is not a pod/],
      [{ pod: "default/x\ny" }, /^--pod "default\/x\\ny" is not a pod/],
      [{ service: "default/9web" }, /^--service "default\/9web" is not a service as NAMESPACE\/NAME \(name: a DNS-1035 label/],
      [{ namespace: "a.b" }, /^--namespace "a\.b" is not a namespace name \(must not contain dots\)$/],
      [{ namespace: "x".repeat(64) }, /^--namespace "x{64}" is not a namespace name \(must be no more than 63 characters\)$/],
      [{ verdict: "FORWARDED" }, /^--verdict "FORWARDED" is not a verdict: expected one of forwarded, denied, dropped$/],
      [{ since: "5d" }, /^--since "5d" is not a duration back from now \(such as 30s, 5m or 2h, at most 7 days\) or an RFC 3339 time/],
      [{ since: "200h" }, /^--since "200h" is not a duration/],
      [{ since: "%d" }, /^--since "%d" is not a duration/],
      [{ since: "2026-13-45T99:00:00Z" }, /^--since "2026-13-45T99:00:00Z" is not a duration/],
    ];
    for (const [input, message] of refused) assert.throws(() => parseFlowFilter(input, NOW), { message }, JSON.stringify(input));
    // The agent's query parameters are named without the dashes.
    assert.throws(() => parseFlowFilter({ verdict: "x" }, NOW, (key) => key), { message: /^verdict "x" is not a verdict/ });
  });

  it("takes durations and times for --since", () => {
    assert.equal(parseFlowFilter({ since: "90s" }, NOW).since, NOW - 90_000);
    assert.equal(parseFlowFilter({ since: "5m" }, NOW).since, NOW - 300_000);
    assert.equal(parseFlowFilter({ since: "2h" }, NOW).since, NOW - 7_200_000);
    assert.equal(parseFlowFilter({ since: "2026-12-08T09:00:00+01:00" }, NOW).since, Date.parse("2026-12-08T08:00:00Z"));
  });

  // Catches a pod filter that looks only at the source, or only before translation (a flow to
  // a Service's endpoint would be missed for that pod), and a namespace filter that misses the Service's.
  it("matches a pod at either end, before or after translation, and a namespace by its pods or Service", () => {
    const flow = record();
    const matches = (input: Record<string, string>) => flowMatches(flow, parseFlowFilter(input, NOW));
    assert.ok(matches({ pod: "default/client" }));
    assert.ok(matches({ pod: "web/server-0" }));
    assert.ok(!matches({ pod: "web/server-1" }));
    assert.ok(matches({ namespace: "web" }));
    assert.ok(matches({ namespace: "default" }));
    assert.ok(!matches({ namespace: "we" }), "a namespace is not a prefix of another's name");
    assert.ok(matches({ service: "web/front" }));
    assert.ok(!matches({ service: "web/back" }));
    assert.ok(matches({ verdict: "forwarded" }) && !matches({ verdict: "denied" }));
    assert.ok(matches({ since: "2m" }) && !matches({ since: "30s" }));
    assert.ok(matches({ pod: "default/client", service: "web/front", verdict: "forwarded", since: "5m" }), "all together");
    assert.ok(flowMatches(record({ service: undefined, translated: undefined, destination: { address: "10.244.3.3", port: 1, pod: "other/p" } }), parseFlowFilter({ namespace: "other" }, NOW)));
  });

  it("round-trips through the agent's query string", () => {
    const filter = parseFlowFilter({ pod: "default/client", namespace: "web", service: "web/front", verdict: "denied", since: "5m" }, NOW);
    const query = flowFilterQuery(filter);
    const again = parseFlowFilter(Object.fromEntries(query), NOW, (key) => key);
    assert.deepEqual(again, filter);
  });
});
