import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { checkSpecRegex, E2E_LEFT_OUT, parseJunit, renderE2eSummary, targetFocus, targetSkip } from "./e2e.js";

const REPORT = `<?xml version="1.0" encoding="UTF-8"?>
  <testsuites tests="6" disabled="2" errors="0" failures="1" time="40.5">
    <testsuite name="Kubernetes e2e suite" tests="6" skipped="3" failures="1" time="40.5">
      <testcase name="[SynchronizedBeforeSuite]" classname="Kubernetes e2e suite" status="passed" time="1.5"></testcase>
      <testcase name="[It] [sig-network] Services should serve a basic endpoint from pods [Conformance]" classname="Kubernetes e2e suite" status="passed" time="12.25"></testcase>
      <testcase name="[It] [sig-network] Networking Granular Checks: Pods should function for intra-pod communication: sctp [LinuxOnly] [Feature:SCTPConnectivity]" classname="Kubernetes e2e suite" status="skipped" time="0">
        <skipped message="skipped"></skipped>
      </testcase>
      <testcase name="[It] [sig-network] HostPort validates that there is no conflict &amp; &#34;so on&#34;" classname="Kubernetes e2e suite" status="failed" time="20.75">
        <failure message="timed out waiting for &lt;pod&gt;" type="failed">long trace</failure>
      </testcase>
      <testcase name="[It] [sig-network] Proxy should proxy" classname="Kubernetes e2e suite" status="failed" time="3">
        <failure message="" type="failed">[FAILED] Failed to connect to exposed host ports&#xA;In [It] at: hostport.go:164</failure>
      </testcase>
      <testcase name="[It] [sig-network] DNS should work [LinuxOnly]" classname="Kubernetes e2e suite" status="skipped" time="0.5">
        <skipped message="skipped - Only supported for node OS distro [gci ubuntu] (not debian)"></skipped>
      </testcase>
    </testsuite>
  </testsuites>`;

describe("lab/e2e", () => {
  it("keeps the specs that ran or skipped themselves, with times and messages, and drops filtered specs and suite nodes", () => {
    // Bugs caught: 3,000 filtered specs counted as skipped; a failure's message lost; entities left escaped.
    assert.deepEqual(parseJunit(REPORT), [
      { name: "[sig-network] Services should serve a basic endpoint from pods [Conformance]", status: "passed", seconds: 12.25 },
      { name: '[sig-network] HostPort validates that there is no conflict & "so on"', status: "failed", seconds: 20.75, message: "timed out waiting for <pod>" },
      { name: "[sig-network] Proxy should proxy", status: "failed", seconds: 3, message: "[FAILED] Failed to connect to exposed host ports\nIn [It] at: hostport.go:164" },
      { name: "[sig-network] DNS should work [LinuxOnly]", status: "skipped", seconds: 0.5, message: "skipped - Only supported for node OS distro [gci ubuntu] (not debian)" },
    ]);
  });

  it("summarises failures first, each spec with its time", () => {
    const specs = parseJunit(REPORT);
    const text = renderE2eSummary({ lab: "l", focus: "f", skip: "s", passed: 1, failed: 1, skipped: 1, seconds: 40.5, reportDir: "/r", specs: specs.filter((spec) => spec.name !== "[sig-network] Proxy should proxy") });
    const lines = text.split("\n");
    assert.equal(lines[0], "e2e on lab l: 1 passed, 1 failed, 1 skipped themselves, in 41 s");
    assert.equal(lines[3], "FAILED (1)");
    assert.match(lines[4], /^\s+20\.8 s {2}\[sig-network\] HostPort/);
    assert.match(lines[5], /timed out waiting for <pod>/);
    // With the target set's own skip, every exclusion is named with its reason, SCTP first.
    const target = renderE2eSummary({ lab: "l", focus: "f", skip: targetSkip(), passed: 0, failed: 0, skipped: 0, seconds: 1, reportDir: "/r", specs: [] });
    assert.match(target, /LEFT OUT by the target set[^\n]*\n {2}SCTP: the kernel of this machine has no SCTP/);
  });

  it("the target set's focus and skip are valid expressions, and every left-out entry has a reason", () => {
    const focus = new RegExp(targetFocus());
    const skip = new RegExp(targetSkip());
    assert.ok(focus.test("[sig-network] Services should serve a basic endpoint from pods [Conformance]"));
    assert.ok(focus.test("[sig-network] EndpointSlice should create Endpoints and EndpointSlices for Pods matching a Service [Conformance]"));
    assert.ok(!focus.test("[sig-storage] Services should anything"));
    // Bug caught: SCTP or load-balancer specs in the target set, which can never pass here.
    assert.ok(skip.test("[sig-network] Networking Granular Checks: Services should function for pod-Service: sctp [Feature:SCTPConnectivity]"));
    assert.ok(skip.test("[sig-network] Services should serve endpoints on same port and different protocol for internal traffic on Type LoadBalancer"));
    assert.ok(!skip.test("[sig-network] Services should serve a basic endpoint from pods [Conformance]"));
    for (const entry of E2E_LEFT_OUT) assert.ok(entry.reason.length > 20, entry.pattern);
  });

  it("refuses a bad --focus or --skip, naming it", () => {
    assert.equal(checkSpecRegex("--focus", "HostPort|DNS"), "HostPort|DNS");
    assert.throws(() => checkSpecRegex("--focus", "(unclosed"), /^Error: --focus "\(unclosed" is not a regular expression/);
    assert.throws(() => checkSpecRegex("--skip", ""), /^Error: --skip "" is invalid: give a regular expression of 1 to 4096 characters on one line$/);
    assert.throws(() => checkSpecRegex("--skip", "a\nb"), /^Error: --skip "a\\nb" is invalid/);
  });
});
