import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { objectKind, parseManifests } from "./manifests.js";

describe("manifests: parsing", () => {
  // Catches documents after the first dropped, or empty and comment-only documents returned as null objects.
  it("reads every document of a multi-document YAML file, skipping empty ones", () => {
    const text = [
      "# web and its pod",
      "---",
      "apiVersion: v1",
      "kind: Service",
      "metadata: {name: web}",
      "---",
      "---",
      "# nothing here",
      "---",
      "apiVersion: v1",
      "kind: Pod",
      "metadata:",
      "  name: web-1",
      "...",
      "",
    ].join("\n");
    assert.deepEqual(parseManifests(text, "web.yaml"), [
      { apiVersion: "v1", kind: "Service", metadata: { name: "web" } },
      { apiVersion: "v1", kind: "Pod", metadata: { name: "web-1" } },
    ]);
  });

  // Catches JSON refused, or tab-indented JSON (as editors write it) misread as YAML indentation.
  it("reads a JSON object", () => {
    const text = '{\n\t"apiVersion": "v1",\n\t"kind": "Service",\n\t"metadata": {"name": "web"},\n\t"spec": {"ports": [{"port": 80}]}\n}\n';
    assert.deepEqual(parseManifests(text, "web.json"), [{ apiVersion: "v1", kind: "Service", metadata: { name: "web" }, spec: { ports: [{ port: 80 }] } }]);
  });

  // Catches a List returned as one object instead of its items.
  it("expands a kind: List into its items, from JSON or YAML", () => {
    const json = JSON.stringify({ apiVersion: "v1", kind: "List", items: [{ apiVersion: "v1", kind: "Service", metadata: { name: "a" } }, { apiVersion: "v1", kind: "Pod", metadata: { name: "b" } }] });
    assert.deepEqual(parseManifests(json, "list.json").map((object) => (object as { kind: string }).kind), ["Service", "Pod"]);
    const yaml = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {name: a}\n---\napiVersion: v1\nkind: List\nitems: []\n";
    assert.equal(parseManifests(yaml, "list.yaml").length, 1);
  });

  // Catches items of `kubectl get services -o yaml` (a ServiceList, whose items carry no kind) refused later as kindless.
  it("gives a typed list's items the list's kind and apiVersion", () => {
    const text = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSliceList\nitems:\n- metadata: {name: web-abc}\n  addressType: IPv4\n";
    assert.deepEqual(parseManifests(text, "slices.yaml"), [{ apiVersion: "discovery.k8s.io/v1", kind: "EndpointSlice", metadata: { name: "web-abc" }, addressType: "IPv4" }]);
  });

  // Catches a syntax error reported without the file or the line, or only the first document checked.
  it("names the source and the line of a syntax error", () => {
    const text = "apiVersion: v1\nkind: Service\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: [web\n";
    assert.throws(() => parseManifests(text, "bad.yaml"), (error: Error) => {
      assert.match(error.message, /^cannot parse bad\.yaml:\n  YAML syntax error at line 7, column 1: /);
      return true;
    });
    assert.throws(() => parseManifests("a: 1\na: 2\n", "dup.yaml"), /cannot parse dup\.yaml:\n {2}YAML syntax error at line 2, column 1: Map keys must be unique/);
  });

  // Catches a scalar or sequence document passed on as if it were an object.
  it("refuses a document that is not a mapping, naming it", () => {
    assert.throws(() => parseManifests("apiVersion: v1\nkind: Pod\n---\n- a\n- b\n", "x.yaml"), /^Error: x\.yaml: document 2 \(line 4\) is a list, not a Kubernetes object/);
    assert.throws(() => parseManifests("just text\n", "y.yaml"), /y\.yaml: document 1 \(line 1\) is the string "just text", not a Kubernetes object/);
  });
});

describe("manifests: kinds", () => {
  // Catches a supported kind refused or mapped to the wrong kind.
  it("maps Trellis' three kinds", () => {
    assert.equal(objectKind({ apiVersion: "v1", kind: "Service" }), "Service");
    assert.equal(objectKind({ apiVersion: "v1", kind: "Pod" }), "Pod");
    assert.equal(objectKind({ apiVersion: "discovery.k8s.io/v1", kind: "EndpointSlice" }), "EndpointSlice");
  });

  // Catches an unsupported kind accepted, or refused without saying what is taken.
  it("refuses other kinds, naming what Trellis takes", () => {
    assert.throws(
      () => objectKind({ apiVersion: "apps/v1", kind: "Deployment", metadata: { name: "web" } }),
      /^Error: no matches for kind "Deployment" in version "apps\/v1" "web": Trellis takes Service \(v1\), EndpointSlice \(discovery\.k8s\.io\/v1\) and Pod \(v1\)$/,
    );
  });

  // Catches a known kind in another API version (beta EndpointSlice, whose fields differ) taken as v1.
  it("refuses a known kind in another apiVersion", () => {
    assert.throws(() => objectKind({ apiVersion: "discovery.k8s.io/v1beta1", kind: "EndpointSlice" }), /Trellis takes EndpointSlice in discovery\.k8s\.io\/v1$/);
    assert.throws(() => objectKind({ apiVersion: "discovery.k8s.io/v1", kind: "Service" }), /Trellis takes Service in v1$/);
  });

  // Catches a manifest without apiVersion or kind guessed at.
  it("refuses an object without apiVersion or kind", () => {
    assert.throws(() => objectKind({ metadata: { name: "web" } }), /^Error: object "web" has no apiVersion and kind: /);
    assert.throws(() => objectKind({ kind: "Service" }), /^Error: object has no apiVersion: /);
    assert.throws(() => objectKind(["a"]), /a list is not a Kubernetes object/);
  });
});
