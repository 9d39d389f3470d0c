import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { parseStoreSpec } from "./open.js";

describe("store specs", () => {
  test("sqlite:PATH and etcd://HOST:PORT are understood", () => {
    assert.deepEqual(parseStoreSpec("sqlite:/var/lib/trellis/cluster.db"), { kind: "sqlite", path: "/var/lib/trellis/cluster.db" });
    assert.deepEqual(parseStoreSpec("sqlite:state/cluster.db"), { kind: "sqlite", path: "state/cluster.db" });
    assert.deepEqual(parseStoreSpec("etcd://127.0.0.1:2379"), { kind: "etcd", endpoint: { host: "127.0.0.1", port: 2379 } });
    assert.deepEqual(parseStoreSpec("etcd://etcd-0.cluster.local:2379"), { kind: "etcd", endpoint: { host: "etcd-0.cluster.local", port: 2379 } });
    assert.deepEqual(parseStoreSpec("etcd://[fd00::1]:2379"), { kind: "etcd", endpoint: { host: "fd00::1", port: 2379 } });
  });

  test("anything else is refused, naming the value and the allowed forms", () => {
    const forms = "expected sqlite:PATH \\(such as sqlite:/var/lib/trellis/cluster\\.db\\) or etcd://HOST:PORT \\(such as etcd://127\\.0\\.0\\.1:2379\\)$";
    const cases: [string, string][] = [
      ["", "it is empty"],
      ["sqlite:", "the path is missing"],
      ["sqlite:///var/x.db", "write sqlite:PATH with the path right after the colon, not a URL"],
      ["sqlite:/var/lib/trellis/", "the path names a directory; give a file such as cluster.db inside it"],
      ["etcd://127.0.0.1", "etcd stores are written etcd://HOST:PORT with nothing after the port"],
      ["etcd://127.0.0.1:2379/prefix", "etcd stores are written etcd://HOST:PORT with nothing after the port"],
      ["etcd://127.0.0.1:0", "port 0 is not from 1 to 65535"],
      ["etcd://127.0.0.1:70000", "port 70000 is not from 1 to 65535"],
      ["etcd://[10.0.0.1]:2379", "[10.0.0.1] is not a bracketed IPv6 address"],
      ["etcd://bad_host:2379", "bad_host is not a host name or IP address"],
      ["http://127.0.0.1:2379", "unknown kind of store"],
      ["/var/lib/trellis/cluster.db", "unknown kind of store"],
    ];
    for (const [spec, why] of cases) {
      const escaped = why.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
      assert.throws(() => parseStoreSpec(spec), new RegExp(`^Error: invalid store ${JSON.stringify(spec).replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}: ${escaped}; ${forms}`), spec);
    }
  });
});
