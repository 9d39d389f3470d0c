/**
 * Manifests as `kubectl apply -f` reads them: YAML with several `---` documents, or JSON (a
 * subset of YAML), where a `kind: List` (or a typed list such as ServiceList) stands for its
 * items and empty documents are skipped. Which kinds Trellis takes is decided by objectKind.
 */
import { LineCounter, parseAllDocuments } from "yaml";

export type ObjectKind = "Service" | "EndpointSlice" | "Pod";

const kinds: Readonly<Record<ObjectKind, string>> = { Service: "v1", EndpointSlice: "discovery.k8s.io/v1", Pod: "v1" };
const supportedText = "Trellis takes Service (v1), EndpointSlice (discovery.k8s.io/v1) and Pod (v1)";

/** The objects in `text`, in order; `source` (a file name, or stdin) names where a problem is. */
export function parseManifests(text: string, source: string): unknown[] {
  const lineCounter = new LineCounter();
  const documents = parseAllDocuments(text, { lineCounter, prettyErrors: false });
  const problems = documents.flatMap((document) =>
    document.errors.map((error) => {
      const { line, col } = lineCounter.linePos(error.pos[0]);
      return `YAML syntax error at line ${line}, column ${col}: ${error.message}`;
    }),
  );
  if (problems.length > 0) throw new Error(`cannot parse ${source}:\n${problems.map((problem) => `  ${problem}`).join("\n")}`);

  const objects: unknown[] = [];
  documents.forEach((document, i) => {
    const value: unknown = document.toJS();
    if (value === null || value === undefined) return;
    const { line } = lineCounter.linePos(document.contents?.range[0] ?? 0);
    const where = `${source}: document ${i + 1} (line ${line})`;
    if (!isMapping(value)) throw new Error(`${where} is ${describe(value)}, not a Kubernetes object: expected a mapping with apiVersion and kind`);
    objects.push(...listItems(value, where));
  });
  return objects;
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
  if (!(kind in kinds)) throw new Error(`no matches for kind ${JSON.stringify(kind)} in version ${JSON.stringify(apiVersion)}${named}: ${supportedText}`);
  const wanted = kinds[kind as ObjectKind];
  if (apiVersion !== wanted) throw new Error(`no matches for kind ${JSON.stringify(kind)} in version ${JSON.stringify(apiVersion)}${named}: Trellis takes ${kind} in ${wanted}`);
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
