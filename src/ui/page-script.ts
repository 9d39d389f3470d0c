/**
 * The page's script: src/ui/page/main.ts with cytoscape, bundled for the browser by esbuild.
 * `npm run build` bundles it once (scripts/build.mjs imports this file) and builds dist/trellis
 * with this module replaced by the bundled text, so the executable serves it with nothing beside
 * it and no network. Run from the sources (the unit tests), it is bundled here at first use.
 *
 * scripts/build.mjs loads this file with Node's own type stripping: it imports nothing of
 * Trellis and uses only erasable TypeScript.
 */
import { buildSync } from "esbuild";
import { fileURLToPath } from "node:url";

/** The bundled script's text. */
export function bundlePageScript(): string {
  const result = buildSync({
    entryPoints: [fileURLToPath(new URL("./page/main.ts", import.meta.url))],
    bundle: true,
    write: false,
    format: "iife",
    platform: "browser",
    target: ["chrome120", "firefox120", "safari17"],
    minify: true,
    // cytoscape's licence travels with it.
    legalComments: "eof",
    logLevel: "silent",
  });
  return result.outputFiles[0].text;
}

let bundled: string | undefined;

export function pageScript(): string {
  return (bundled ??= bundlePageScript());
}
