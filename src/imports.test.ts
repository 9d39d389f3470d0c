/*
 * The map in ARCHITECTURE.md, kept true: every import from one part of src/ to another follows
 * its arrows (directly or through parts in between, always downward), so no part reaches up to
 * one that depends on it. A new arrow the map does not have fails here, naming the file.
 */
import assert from "node:assert/strict";
import { readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, normalize, relative, sep } from "node:path";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";

const SRC = dirname(fileURLToPath(import.meta.url));

/** The map's arrows; every part may import net and plan. */
const ARROWS: Record<string, readonly string[]> = {
  cli: ["agent", "lab", "cni", "cluster", "flows", "ui"],
  agent: ["podnet", "dataplane", "linux", "kube", "cluster", "cni", "policy", "flows"],
  lab: ["linux", "kube", "cluster"],
  cni: ["podnet"],
  podnet: ["dataplane", "linux", "podipam"],
  podipam: ["store"],
  dataplane: ["nft"],
  policy: ["nft"],
  flows: ["cluster"],
  ui: ["flows"],
  linux: ["nft"],
  cluster: ["store", "policy"],
  kube: [],
  store: [],
  nft: [],
  net: [],
  plan: ["net"],
};
const EVERYONE = ["net", "plan"];

/** Imports the map names as to be closed (ARCHITECTURE.md, "Three imports break this map today"). */
const KNOWN: ReadonlySet<string> = new Set(["podipam/attachments.ts -> linux"]);

function reachable(part: string): Set<string> {
  const seen = new Set<string>(EVERYONE);
  const stack = [...(ARROWS[part] ?? [])];
  while (stack.length) {
    const next = stack.pop()!;
    if (seen.has(next)) continue;
    seen.add(next);
    stack.push(...(ARROWS[next] ?? []));
  }
  return seen;
}

function sources(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) return sources(path);
    return name.endsWith(".ts") && !name.endsWith(".test.ts") ? [path] : [];
  });
}

describe("the import map", () => {
  it("has every import between parts of src/ follow ARCHITECTURE.md's arrows downward", () => {
    // Catches: a part importing one above it (linux reaching into agent, dataplane into linux),
    // which makes the layers a tangle the map no longer describes.
    const wrong: string[] = [];
    const parts = new Set<string>();
    for (const file of sources(SRC)) {
      const from = relative(SRC, file).split(sep);
      if (from.length < 2) continue;
      const part = from[0];
      parts.add(part);
      const allowed = reachable(part);
      for (const match of readFileSync(file, "utf8").matchAll(/^(?:import|export)[^;]*? from "(\.{1,2}\/[^"]+)"/gm)) {
        const target = relative(SRC, normalize(join(dirname(file), match[1]))).split(sep);
        if (target.length < 2 || target[0] === ".." || target[0] === part || allowed.has(target[0])) continue;
        const edge = `${from.join("/")} -> ${target[0]}`;
        if (!KNOWN.has(edge)) wrong.push(edge);
      }
    }
    assert.deepEqual(wrong, []);
    assert.deepEqual([...parts].filter((part) => !(part in ARROWS)), [], "every part of src/ is on the map");
  });
});
