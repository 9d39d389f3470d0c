import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { parseEnd, parsePort } from "./policy.js";

describe("policy explain's arguments", () => {
  it("takes NAMESPACE/POD or an address, and a port with its protocol", () => {
    assert.deepEqual(parseEnd("--from", "default/web-0"), { pod: { namespace: "default", name: "web-0" } });
    assert.equal("address" in parseEnd("--to", "fd00:10:244::5"), true);
    assert.deepEqual(parsePort("80"), { number: 80, protocol: "TCP" });
    assert.deepEqual(parsePort("53/udp"), { number: 53, protocol: "UDP" });
  });

  it("refuses what is neither, naming the value and what is allowed", () => {
    // Catches: a path, a format string or a newline taken as a pod name (and sent to the API), a port out of range taken whole.
    for (const bad of ["x y/web", "../etc/passwd", "default/%d", "default/web\nkube-system/x", "Default/Web", "", "10.0.0.256"]) {
      assert.throws(() => parseEnd("--from", bad), (error: Error) => error.message.startsWith(`--from ${JSON.stringify(bad)}: expected NAMESPACE/POD`), bad);
    }
    for (const bad of ["0", "65536", "80/ICMP", "http", "80/", "99999999999", "-1"]) {
      assert.throws(() => parsePort(bad), (error: Error) => error.message.startsWith(`--port ${JSON.stringify(bad)}: expected PORT or PORT/PROTOCOL`), bad);
    }
  });
});
