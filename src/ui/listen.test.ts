import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { listenUrl, parseListenAddress } from "./listen.js";

describe("--listen", () => {
  it("takes an IPv4 address and port, [IPv6]:PORT, and port 0", () => {
    assert.deepEqual(parseListenAddress("127.0.0.1:8090"), { host: "127.0.0.1", port: 8090, loopback: true });
    assert.deepEqual(parseListenAddress("[::1]:0"), { host: "::1", port: 0, loopback: true });
    assert.deepEqual(parseListenAddress("[0:0:0:0:0:0:0:1]:80"), { host: "::1", port: 80, loopback: true });
    assert.deepEqual(parseListenAddress("198.18.0.1:8090"), { host: "198.18.0.1", port: 8090, loopback: false });
    assert.deepEqual(parseListenAddress("0.0.0.0:8090"), { host: "0.0.0.0", port: 8090, loopback: false });
  });

  it("refuses anything else, naming the value and what is allowed", () => {
    // Catches: a typo served on an address nobody meant (a host name resolved to anything, an
    // IPv6 address without brackets read as host:port), or a message that does not say what to give.
    for (const bad of ["localhost:8090", "127.0.0.1", "127.0.0.1:65536", "127.0.0.1:-1", "::1:8090", "[127.0.0.1]:80", "[::1]", "8090", "", "127.0.0.1:80 ", "http://127.0.0.1:80", "999.0.0.1:80"]) {
      assert.throws(
        () => parseListenAddress(bad),
        (error: Error) => error.message === `--listen ${JSON.stringify(bad)} is not HOST:PORT: expected an IPv4 address and port (127.0.0.1:8090), [IPv6]:PORT ([::1]:8090), port 0 for any free one`,
        bad,
      );
    }
  });

  it("writes the URL a browser opens", () => {
    assert.equal(listenUrl("127.0.0.1", 8090), "http://127.0.0.1:8090/");
    assert.equal(listenUrl("::1", 8090), "http://[::1]:8090/");
  });
});
