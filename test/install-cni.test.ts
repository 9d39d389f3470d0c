/**
 * `trellis install-cni`, the DaemonSet's init step: the native plugin as `trellis` and this
 * executable as `trellis-standalone` in the runtime's plugin directory, replaced whole.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { TRELLIS_NATIVE, TRELLIS_STANDALONE } from "./support/node-agent.js";

describe("trellis install-cni", () => {
  const dir = mkdtempSync(join(tmpdir(), "trellis-install-cni-"));
  after(() => rmSync(dir, { recursive: true, force: true }));
  const install = (target: string) => spawnSync(TRELLIS_STANDALONE, ["install-cni", "--cni-bin-dir", target], { encoding: "utf8" });

  // Bugs caught: the plugins under the wrong names (the runtime runs `type: trellis`, the native
  // plugin falls back to `trellis-standalone` beside it), not executable, or an old file kept.
  it("installs the native plugin as trellis and itself as trellis-standalone, executable, replacing what was there", () => {
    const bin = join(dir, "opt", "cni", "bin");
    const first = install(bin);
    assert.equal(first.status, 0, first.stderr);
    writeFileSync(join(bin, "trellis"), "an older plugin");
    const again = install(bin);
    assert.equal(again.status, 0, again.stderr);
    assert.deepEqual(readdirSync(bin).sort(), ["trellis", "trellis-standalone"], "no temporary file left");
    assert.ok(readFileSync(join(bin, "trellis")).equals(readFileSync(TRELLIS_NATIVE)));
    assert.ok(readFileSync(join(bin, "trellis-standalone")).equals(readFileSync(TRELLIS_STANDALONE)));
    for (const name of ["trellis", "trellis-standalone"]) assert.equal(statSync(join(bin, name)).mode & 0o777, 0o755);
  });

  it("refuses a directory that is not an absolute path, naming it", () => {
    for (const bad of ["opt/cni/bin", "/opt/cni\nbin"]) {
      const run = install(bad);
      assert.equal(run.status, 1);
      assert.match(run.stderr, /--cni-bin-dir ".*" is not an absolute path/);
    }
  });
});
