/** The README's main job: `trellis demo` attaches pods, shows their traffic and cleans up. */
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { it } from "node:test";
import { TRELLIS } from "./support/trellis-cni.js";

it("trellis demo passes its checks on both families and leaves no namespace behind", () => {
  const run = spawnSync(TRELLIS, ["demo", "--pods", "3"], { encoding: "utf8", timeout: 120_000 });
  assert.equal(run.status, 0, run.stdout + run.stderr);
  assert.match(run.stdout, /all checks passed/);
  assert.equal((run.stdout.match(/no NAT/g) ?? []).length, 12, "3 pods x 2 peers x 2 families");
  assert.match(run.stdout, /fd00:10:244:1::\d+ +ping ok/);
  const left = execFileSync("ip", ["netns", "list"], { encoding: "utf8" });
  assert.doesNotMatch(left, new RegExp(`trdemo${run.pid}-`));
});
