import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { stringify } from "yaml";
import { inClusterConnection, KubeConfigError, loadKubeconfig } from "./config.js";

describe("kubeconfig and in-cluster connection", () => {
  const dir = mkdtempSync(join(tmpdir(), "trellis-kubeconfig-"));
  after(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, "ca.crt"), "CA");
  writeFileSync(join(dir, "token"), "secret-token\n");
  const write = (name: string, doc: unknown) => {
    const path = join(dir, name);
    writeFileSync(path, typeof doc === "string" ? doc : stringify(doc));
    return path;
  };
  const config = (cluster: Record<string, unknown>, user: Record<string, unknown>, extra: Record<string, unknown> = {}) => ({
    apiVersion: "v1",
    clusters: [{ name: "c", cluster }],
    users: [{ name: "u", user }],
    contexts: [{ name: "ctx", context: { cluster: "c", user: "u" } }, { name: "other", context: { cluster: "missing", user: "u" } }],
    "current-context": "ctx",
    ...extra,
  });

  it("reads the current context: server, CA file relative to the kubeconfig, inline client data", () => {
    const path = write("a.yaml", config({ server: "https://10.0.0.1:6443/", "certificate-authority": "ca.crt" }, { "client-certificate-data": Buffer.from("CERT").toString("base64"), "client-key-data": Buffer.from("KEY").toString("base64") }));
    const connection = loadKubeconfig(path);
    assert.equal(connection.server, "https://10.0.0.1:6443");
    assert.equal(connection.ca?.toString(), "CA");
    assert.equal(connection.cert?.toString(), "CERT");
    assert.equal(connection.key?.toString(), "KEY");
    assert.equal(connection.token, undefined);
  });

  it("reads a token file again at each use (rotated tokens)", () => {
    const path = write("b.yaml", config({ server: "https://[fd00::1]:6443" }, { tokenFile: "token" }));
    const connection = loadKubeconfig(path);
    assert.equal(connection.token?.(), "secret-token");
    writeFileSync(join(dir, "token"), "rotated\n");
    assert.equal(connection.token?.(), "rotated");
    writeFileSync(join(dir, "token"), "secret-token\n");
  });

  it("names each problem with its file and field", () => {
    const cases: [string, unknown, RegExp, string?][] = [
      ["no current context", { ...config({ server: "https://a" }, {}), "current-context": "" }, /current-context is not set/],
      ["a missing context", config({ server: "https://a" }, {}), /has no context named "nope"/, "nope"],
      ["a context naming a missing cluster", config({ server: "https://a" }, {}), /has no cluster named "missing"/, "other"],
      ["no server", config({}, {}), /cluster "c"\.server is not set/],
      ["a server that is no URL", config({ server: "not a url" }, {}), /"not a url" is not a URL/],
      ["a server with a query", config({ server: "https://a/?x=1" }, {}), /carries a query/],
      ["a non-http server", config({ server: "ftp://a" }, {}), /is not an http\(s\) URL/],
      ["a CA file that is not there", config({ server: "https://a", "certificate-authority": "../nope/ca.crt" }, {}), /certificate-authority: cannot read .*nope\/ca\.crt/],
      ["data that is not base64", config({ server: "https://a", "certificate-authority-data": "%d\n!" }, {}), /certificate-authority-data is not base64/],
      ["not YAML", "key: [unclosed", /is not YAML/],
      ["not a mapping", "- a\n- b\n", /is not a mapping/],
    ];
    for (const [what, doc, message, context] of cases) {
      const path = write("bad.yaml", doc);
      assert.throws(() => loadKubeconfig(path, context), (error: unknown) => error instanceof KubeConfigError && message.test(error.message) && error.message.includes(path), what);
    }
    assert.throws(() => loadKubeconfig(join(dir, "absent.yaml")), /cannot read kubeconfig .*absent\.yaml/);
  });

  it("in a pod: the service host and port, the mounted CA and token", () => {
    writeFileSync(join(dir, "ca.crt"), "CA");
    const connection = inClusterConnection({ KUBERNETES_SERVICE_HOST: "fd00:10:96::1", KUBERNETES_SERVICE_PORT: "443" }, dir);
    assert.equal(connection.server, "https://[fd00:10:96::1]");
    assert.equal(connection.token?.(), "secret-token");
    assert.throws(() => inClusterConnection({}, dir), /not inside a pod/);
    assert.throws(() => inClusterConnection({ KUBERNETES_SERVICE_HOST: "10.96.0.1", KUBERNETES_SERVICE_PORT: "443" }, join(dir, "nope")), /ServiceAccount files/);
  });
});
