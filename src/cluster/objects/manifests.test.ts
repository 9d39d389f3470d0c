import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { parse } from "yaml";
import { MAX_YAML_DOCUMENT_CHARS, objectKind, parseManifests } from "./manifests.js";

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

describe("manifests: large inputs and the JSON path", () => {
  // Bug caught: `objects.push(...items)` on a List of 130,000 items ("Maximum call stack size
  // exceeded"), or a JSON List read through the YAML parser's tree (3.7 GB for 43 MB).
  it("reads a JSON List of 130,000 items", () => {
    const items = Array.from({ length: 130_000 }, (_, i) => ({ metadata: { name: `s${i}` } }));
    const objects = parseManifests(JSON.stringify({ apiVersion: "v1", kind: "ServiceList", items }), "big.json");
    assert.equal(objects.length, 130_000);
    assert.deepEqual(objects[129_999], { apiVersion: "v1", kind: "Service", metadata: { name: "s129999" } });
  });

  // Bug caught: the stream, composed one document at a time, dropping or renumbering documents.
  it("reads a YAML stream of many documents", () => {
    const documents = Array.from({ length: 2_000 }, (_, i) => `apiVersion: v1\nkind: Pod\nmetadata: {name: p${i}}\n`);
    const stream = parseManifests(`---\n${documents.join("---\n")}`, "pods.yaml");
    assert.equal(stream.length, 2_000);
    assert.deepEqual(stream[1_999], { apiVersion: "v1", kind: "Pod", metadata: { name: "p1999" } });
    assert.throws(() => parseManifests(`---\n${documents.join("---\n")}---\n---\n- not an object\n`, "pods.yaml"), /^Error: pods\.yaml: document 2002 \(line 8003\) is a list, not a Kubernetes object/);
  });

  // Bug caught: JSON.parse reading a value otherwise than the YAML parser did (escapes, numbers,
  // nesting), or a YAML flow mapping, which starts with { too, refused as broken JSON.
  it("reads JSON as the YAML parser reads it, and a YAML flow mapping as YAML", () => {
    const json = '\n  {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a\\u00e9\\n\\"}", "labels": {"": "x"}},\n "x": [1.5, -1E-5, 1e3, 12345678901234567890, true, null, "\\ud83d\\ude00", [[{}]]]}\n';
    assert.deepEqual(parseManifests(json, "a.json"), [parse(json)]);
    assert.deepEqual(parseManifests("{apiVersion: v1, kind: Pod, metadata: {name: a}}\n", "a.yaml"), [{ apiVersion: "v1", kind: "Pod", metadata: { name: "a" } }]);
    assert.throws(() => parseManifests('\n\n[{"kind": "Pod"}]', "l.json"), /^Error: l\.json: document 1 \(line 3\) is a list, not a Kubernetes object/);
  });

  // Bug caught: JSON.parse keeping the last of a repeated key silently, where the YAML parser
  // refused it with the key's line and column; or a JSON syntax error reported without them.
  it("refuses a key repeated in a JSON object, and broken JSON, with line and column", () => {
    const repeated = '{\n  "a": 1,\n  "b": {"x": 1, "y": [{"q": 1, "\\u0071": 2}]},\n  "a": 2\n}\n';
    assert.throws(() => parseManifests(repeated, "r.json"), {
      message: "cannot parse r.json:\n  YAML syntax error at line 3, column 32: Map keys must be unique\n  YAML syntax error at line 4, column 3: Map keys must be unique",
    });
    assert.throws(() => parseManifests('{\n  "kind": "Pod",\n  "metadata": {"name": "a"\n}\n', "b.json"), /^Error: cannot parse b\.json:\n {2}YAML syntax error at line \d+, column \d+: /);
  });

  // Bug caught: every syntax error no longer reported first when documents are read one at a
  // time (a later document's syntax error hidden behind an earlier document's shape).
  it("reports the syntax errors of every document before anything else", () => {
    assert.throws(() => parseManifests("- a\n---\nb: [\n---\nc: {\n", "s.yaml"), (error: Error) => {
      assert.match(error.message, /^cannot parse s\.yaml:\n {2}YAML syntax error at line 4, column 1: .*\n {2}YAML syntax error at line 6, column 1: /);
      return true;
    });
  });

  // Bug caught: one YAML document too large for the yaml package's tree running the process out
  // of heap (a 61 MB YAML List aborted at 4.3 GB), or the bound applied to the whole stream.
  it("refuses one YAML document larger than it reads, naming it and the way out, but not many small ones", () => {
    const item = "- {metadata: {name: a-name-of-some-length}}\n";
    const items = item.repeat(Math.ceil(MAX_YAML_DOCUMENT_CHARS / item.length) + 1);
    assert.throws(
      () => parseManifests(`apiVersion: v1\nkind: Pod\n---\napiVersion: v1\nkind: PodList\nitems:\n${items}`, "huge.yaml"),
      new RegExp(`^Error: huge\\.yaml: the YAML document at line 3 is [\\d.]+ MiB, more than the ${MAX_YAML_DOCUMENT_CHARS / 2 ** 20} MiB Trellis reads as one YAML document .*: give a List as JSON, or its items as separate documents between --- lines$`),
    );
    assert.throws(() => parseManifests(`{"items": [\n${items}`, "huge.json"), /Trellis reads as one YAML document .*; it is not JSON either: .* at line 2, column 2$/);
    const many = "---\n# padding\n".repeat(Math.ceil(MAX_YAML_DOCUMENT_CHARS / 14) + 1);
    assert.deepEqual(parseManifests(many, "many.yaml"), []);
  });
});

describe("manifests: kinds", () => {
  // Catches a supported kind refused or mapped to the wrong kind.
  it("maps Trellis' kinds", () => {
    assert.equal(objectKind({ apiVersion: "v1", kind: "Service" }), "Service");
    assert.equal(objectKind({ apiVersion: "v1", kind: "Pod" }), "Pod");
    assert.equal(objectKind({ apiVersion: "discovery.k8s.io/v1", kind: "EndpointSlice" }), "EndpointSlice");
    assert.equal(objectKind({ apiVersion: "v1", kind: "Namespace" }), "Namespace");
    assert.equal(objectKind({ apiVersion: "networking.k8s.io/v1", kind: "NetworkPolicy" }), "NetworkPolicy");
    assert.equal(objectKind({ apiVersion: "policy.networking.k8s.io/v1beta1", kind: "ClusterNetworkPolicy" }), "ClusterNetworkPolicy");
    assert.equal(objectKind({ apiVersion: "policy.networking.k8s.io/v1alpha2", kind: "ClusterNetworkPolicy" }), "ClusterNetworkPolicy");
  });

  // Catches an unsupported kind accepted, or refused without saying what is taken.
  it("refuses other kinds, naming what Trellis takes", () => {
    assert.throws(
      () => objectKind({ apiVersion: "apps/v1", kind: "Deployment", metadata: { name: "web" } }),
      /^Error: no matches for kind "Deployment" in version "apps\/v1" "web": Trellis takes Service \(v1\), EndpointSlice \(discovery\.k8s\.io\/v1\), Pod \(v1\), Namespace \(v1\), NetworkPolicy \(networking\.k8s\.io\/v1\) and ClusterNetworkPolicy/,
    );
    // Catches a kind looked up as any property of the table (an object's own "constructor").
    assert.throws(() => objectKind({ apiVersion: "v1", kind: "constructor" }), /no matches for kind "constructor"/);
    assert.throws(() => objectKind({ apiVersion: "v1", kind: "__proto__" }), /no matches for kind "__proto__"/);
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
