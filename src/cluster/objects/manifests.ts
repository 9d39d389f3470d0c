/**
 * Manifests as `kubectl apply -f` reads them: YAML with several `---` documents, or JSON (a
 * subset of YAML), where a `kind: List` (or a typed list such as ServiceList) stands for its
 * items and empty documents are skipped. Which kinds Trellis takes is decided by objectKind.
 *
 * The yaml package's tree of a document costs some 65 times its text (the CST 45 times, the
 * composed nodes 20), and parseAllDocuments keeps every document's: 130,000 Services peaked at
 * 1.6 GB as 45 MB of YAML documents, 3.7 GB as a 43 MB JSON List. So JSON goes through
 * JSON.parse (0.2 GB), a YAML stream is composed one document at a time (0.3 GB), and one YAML
 * document is read up to MAX_YAML_DOCUMENT_CHARS.
 */
import { Composer, LineCounter, Parser } from "yaml";

export type ObjectKind = "Service" | "EndpointSlice" | "Pod" | "Namespace" | "NetworkPolicy" | "ClusterNetworkPolicy";

/** The apiVersions each kind is taken in (the first is the one it is stored in). */
const kinds: Readonly<Record<ObjectKind, readonly string[]>> = {
  Service: ["v1"],
  EndpointSlice: ["discovery.k8s.io/v1"],
  Pod: ["v1"],
  Namespace: ["v1"],
  NetworkPolicy: ["networking.k8s.io/v1"],
  ClusterNetworkPolicy: ["policy.networking.k8s.io/v1beta1", "policy.networking.k8s.io/v1alpha2"],
};
const supportedText =
  "Trellis takes Service (v1), EndpointSlice (discovery.k8s.io/v1), Pod (v1), Namespace (v1), NetworkPolicy (networking.k8s.io/v1) and ClusterNetworkPolicy (policy.networking.k8s.io/v1beta1 or v1alpha2)";

/** Kinds of the cluster, not of a namespace. */
export const CLUSTER_SCOPED: ReadonlySet<ObjectKind> = new Set(["Namespace", "ClusterNetworkPolicy"]);

/**
 * The largest YAML document read, in characters. Its tree is built whole: a YAML List of this
 * size peaks at 0.7 GB, one of 61 MB ran out of the 4 GB heap after 80 s. A larger List is read
 * as JSON, or as separate documents, at a few times its size.
 */
export const MAX_YAML_DOCUMENT_CHARS = 8 * 2 ** 20;

/** The objects in `text`, in order; `source` (a file name, or stdin) names where a problem is. */
export function parseManifests(text: string, source: string): unknown[] {
  const start = text.search(/\S/);
  let notJson: string | undefined;
  if (text[start] === "{" || text[start] === "[") {
    try {
      return jsonObjects(JSON.parse(text), text, start, source);
    } catch (error) {
      if (!(error instanceof SyntaxError)) throw error;
      // A YAML flow mapping, or broken JSON: the YAML parser reads it or reports its line and column.
      // V8 says "at position N" (Node.js 26 adds "(line L column C)"): one form, ours.
      notJson = error.message.replace(/at position (\d+)(?: \(line \d+ column \d+\))?$/, (_, offset: string) => {
        const [{ line, col }] = linePositions(text, [Number(offset)]);
        return `at line ${line}, column ${col}`;
      });
    }
  }
  refuseLargeYamlDocument(text, source, notJson);
  return parseYamlStream(text, source);
}

/** The objects of a JSON text, one document. A key given twice in one object, which JSON.parse keeps silently, is refused as YAML refuses it. */
function jsonObjects(value: unknown, text: string, start: number, source: string): unknown[] {
  const repeated = repeatedKeys(text);
  if (repeated.length > 0) throw syntaxErrors(source, linePositions(text, repeated).map((position) => ({ ...position, message: "Map keys must be unique" })));
  const objects: unknown[] = [];
  addObjects(objects, value, `${source}: document 1 (line ${linePositions(text, [start])[0].line})`);
  return objects;
}

/** Refuses a YAML document over MAX_YAML_DOCUMENT_CHARS before the parser builds its tree. */
function refuseLargeYamlDocument(text: string, source: string, notJson: string | undefined): void {
  if (text.length <= MAX_YAML_DOCUMENT_CHARS) return;
  // A line starting with --- or ... is a document marker wherever it stands: YAML has no other boundary.
  let start = 0;
  const check = (end: number) => {
    if (end - start <= MAX_YAML_DOCUMENT_CHARS) return;
    const mib = (chars: number) => `${Math.ceil((chars / 2 ** 20) * 10) / 10} MiB`;
    throw new Error(
      `${source}: the YAML document at line ${linePositions(text, [start])[0].line} is ${mib(end - start)}, more than the ${mib(MAX_YAML_DOCUMENT_CHARS)} Trellis reads as one YAML document ` +
        `(its syntax tree takes some 65 times its size): give a List as JSON, or its items as separate documents between --- lines` +
        (notJson === undefined ? "" : `; it is not JSON either: ${notJson}`),
    );
  };
  for (const marker of text.matchAll(/^(?:---|\.\.\.)(?=[ \t\r\n]|$)/gm)) {
    check(marker.index ?? 0);
    start = marker.index ?? 0;
  }
  check(text.length);
}

/**
 * The documents of a YAML stream, composed and converted one at a time, so that only one
 * document's syntax tree lives at once. Every syntax error of the stream is reported before
 * anything else, as when all documents were composed first.
 */
function parseYamlStream(text: string, source: string): unknown[] {
  const lineCounter = new LineCounter();
  const composer = new Composer();
  const problems: { line: number; col: number; message: string }[] = [];
  // The first document that is no Kubernetes object: reported only when no document has a syntax error.
  let misfit: unknown;
  const objects: unknown[] = [];
  let number = 0;
  for (const document of composer.compose(new Parser(lineCounter.addNewLine).parse(text))) {
    number++;
    for (const error of document.errors) problems.push({ ...lineCounter.linePos(error.pos[0]), message: error.message });
    if (problems.length > 0 || misfit !== undefined) continue;
    try {
      const { line } = lineCounter.linePos(document.contents?.range[0] ?? 0);
      addObjects(objects, document.toJS(), `${source}: document ${number} (line ${line})`);
    } catch (error) {
      misfit = error;
    }
  }
  if (problems.length > 0) throw syntaxErrors(source, problems);
  if (misfit !== undefined) throw misfit;
  return objects;
}

function syntaxErrors(source: string, problems: readonly { line: number; col: number; message: string }[]): Error {
  return new Error(`cannot parse ${source}:\n${problems.map(({ line, col, message }) => `  YAML syntax error at line ${line}, column ${col}: ${message}`).join("\n")}`);
}

/** Adds a document's objects to `objects`: none for an empty document, a List's items, or the object itself. */
function addObjects(objects: unknown[], value: unknown, where: string): void {
  if (value === null || value === undefined) return;
  if (!isMapping(value)) throw new Error(`${where} is ${describe(value)}, not a Kubernetes object: expected a mapping with apiVersion and kind`);
  // One at a time: spreading a List of 130,000 items into push() overflows the stack.
  for (const object of listItems(value, where)) objects.push(object);
}

/** A List's items, each given the list's kind when a typed list leaves it out; any other object as itself. */
function listItems(value: Readonly<Record<string, unknown>>, where: string): unknown[] {
  const kind = value.kind;
  if (typeof kind !== "string" || !kind.endsWith("List")) return [value];
  const items = value.items ?? [];
  if (!Array.isArray(items)) throw new Error(`${where}: ${kind} items is ${describe(items)}: expected a list of objects`);
  const itemKind = kind === "List" ? undefined : kind.slice(0, -"List".length);
  return items.map((item, i) => {
    if (!isMapping(item)) throw new Error(`${where}: ${kind} items[${i}] is ${describe(item)}, not a Kubernetes object`);
    // The apiserver's lists leave apiVersion and kind off their items.
    return itemKind === undefined ? item : { apiVersion: value.apiVersion, kind: itemKind, ...item };
  });
}

/** Where each key repeated within one object starts, in text JSON.parse took (so well formed). */
function repeatedKeys(text: string): number[] {
  const repeated: number[] = [];
  // The keys of each enclosing object so far; undefined for an enclosing array.
  const open: (Set<string> | undefined)[] = [];
  let atKey = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === "{") {
      open.push(new Set());
      atKey = true;
    } else if (c === "[") {
      open.push(undefined);
    } else if (c === "}" || c === "]") {
      open.pop();
      atKey = false;
    } else if (c === ",") {
      atKey = open.at(-1) !== undefined;
    } else if (c === '"') {
      const start = i;
      let escaped = false;
      for (i++; text[i] !== '"'; i++) {
        if (text[i] === "\\") {
          escaped = true;
          i++;
        }
      }
      if (!atKey) continue;
      atKey = false;
      const keys = open.at(-1) as Set<string>;
      const key = escaped ? (JSON.parse(text.slice(start, i + 1)) as string) : text.slice(start + 1, i);
      if (keys.has(key)) repeated.push(start);
      else keys.add(key);
    }
  }
  return repeated;
}

/** The 1-based line and column of each offset (in ascending order), as yaml's LineCounter gives them, in one pass over the text. */
function linePositions(text: string, offsets: readonly number[]): { line: number; col: number }[] {
  let line = 1;
  let lineStart = 0;
  let newline = text.indexOf("\n");
  return offsets.map((offset) => {
    for (; newline !== -1 && newline < offset; newline = text.indexOf("\n", newline + 1)) {
      line++;
      lineStart = newline + 1;
    }
    return { line, col: offset - lineStart + 1 };
  });
}

/** Which of Trellis' kinds an object is; anything else is refused naming what is taken. */
export function objectKind(object: unknown): ObjectKind {
  if (!isMapping(object)) throw new Error(`${describe(object)} is not a Kubernetes object: expected a mapping with apiVersion and kind`);
  const { apiVersion, kind } = object;
  const named = typeof object.metadata === "object" && object.metadata !== null && typeof (object.metadata as { name?: unknown }).name === "string"
    ? ` ${JSON.stringify((object.metadata as { name: string }).name)}`
    : "";
  if (typeof kind !== "string" || kind === "" || typeof apiVersion !== "string" || apiVersion === "") {
    const missing = [typeof apiVersion === "string" && apiVersion !== "" ? [] : ["apiVersion"], typeof kind === "string" && kind !== "" ? [] : ["kind"]].flat();
    throw new Error(`object${named} has no ${missing.join(" and ")}: ${supportedText}`);
  }
  if (!Object.hasOwn(kinds, kind)) throw new Error(`no matches for kind ${JSON.stringify(kind)} in version ${JSON.stringify(apiVersion)}${named}: ${supportedText}`);
  const wanted = kinds[kind as ObjectKind];
  if (!wanted.includes(apiVersion)) throw new Error(`no matches for kind ${JSON.stringify(kind)} in version ${JSON.stringify(apiVersion)}${named}: Trellis takes ${kind} in ${wanted.join(" or ")}`);
  return kind as ObjectKind;
}

function isMapping(value: unknown): value is Readonly<Record<string, unknown>> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function describe(value: unknown): string {
  if (Array.isArray(value)) return "a list";
  if (value === null || value === undefined) return "empty";
  if (typeof value === "object") return "an object";
  return `${typeof value === "string" ? "the string" : `the ${typeof value}`} ${JSON.stringify(value)}`;
}
