/**
 * dist/trellis carries the Node.js release the project pins (package.json engines), and the build
 * refuses any other: the executable is what every node runs, so an end-of-life runtime inside it
 * must not be possible by accident.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { TRELLIS } from "./support/trellis-cni.js";

const ROOT = join(import.meta.dirname, "..");
const PINNED = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")).engines.node as string;

describe("the executable and its runtime", () => {
  it("dist/trellis runs on the pinned Node.js release, with its built-in SQLite", () => {
    // Bug caught: the executable built from whatever node came first on PATH (the machine's own,
    // end of life), or without node:sqlite.
    const run = spawnSync(TRELLIS, ["version", "-o", "json"], { encoding: "utf8" });
    assert.equal(run.status, 0, run.stderr);
    const info = JSON.parse(run.stdout) as { version: string; node: string; sqlite: string };
    assert.equal(info.node, `v${PINNED}`);
    assert.match(info.sqlite, /^3\.[0-9]+\.[0-9]+$/);
    assert.equal(info.version, JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")).version);
    const text = spawnSync(TRELLIS, ["--version"], { encoding: "utf8" });
    assert.equal(text.status, 0, text.stderr);
    assert.match(text.stdout, new RegExp(`^trellis ${info.version}\\nNode\\.js v${PINNED.replace(/\./g, "\\.")} \\(V8 `));
  });

  it("refuses an output format it does not know, naming it and the allowed ones", () => {
    const run = spawnSync(TRELLIS, ["version", "-o", "yaml\n%d"], { encoding: "utf8" });
    assert.equal(run.status, 1);
    assert.equal(run.stderr, 'trellis: --output "yaml\\n%d": expected text or json\n');
    assert.equal(run.stdout, "");
  });

  it("the build refuses another Node.js release and leaves dist/trellis as it was", (t) => {
    // Bug caught: `node scripts/build.mjs` run by the machine's own node silently making an
    // executable of that release.
    const other = ["/usr/bin/node", "/usr/local/bin/node"].find((path) => existsSync(path) && spawnSync(path, ["--version"], { encoding: "utf8" }).stdout.trim() !== `v${PINNED}`);
    if (!other) {
      t.skip("no Node.js other than the pinned release on this machine");
      return;
    }
    const before = statSync(TRELLIS).mtimeMs;
    const run = spawnSync(other, ["scripts/build.mjs"], { cwd: ROOT, encoding: "utf8", timeout: 60_000 });
    assert.notEqual(run.status, 0);
    assert.match(run.stderr, new RegExp(`dist/trellis is built by Node\\.js ${PINNED.replace(/\./g, "\\.")} \\(package\\.json engines\\), but this is v[0-9.]+ at ${other}: run the build through npm`));
    assert.equal(statSync(TRELLIS).mtimeMs, before, "dist/trellis was rebuilt");
  });
});
