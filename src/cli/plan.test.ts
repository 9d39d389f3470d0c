// Runs the built dist/trellis, as `npm test` builds it first.
import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { runTrellis } from "../../test/support/cli-cluster.js";

describe("trellis plan", () => {
  let dir = "";
  const file = (name: string): string => join(dir, name);

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "trellis-plan-cli-"));
    await writeFile(
      file("dual.yaml"),
      [
        "podCidrs: [10.244.0.0/16, fd00:10:244::/56]",
        "serviceCidrs: [10.96.0.0/16, fd00:10:96::/112]",
        "nodeCidrs: [198.18.0.0/15, fd00:198:18::/64]",
      ].join("\n"),
    );
    await writeFile(file("v6.json"), JSON.stringify({ podCidrs: ["fd00:10:244::/56"], serviceCidrs: ["fd00:10:96::/112"] }));
    await writeFile(
      file("bad.yaml"),
      ["podCidrs: [10.96.0.0/12]", "serviceCidrs: [10.96.0.0/16, fd00:10:96::/112]", "nodePortRange: 32767-30000", "podCIDRs: []"].join("\n"),
    );
  });

  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("check: a valid plan exits 0 with a one-line summary", async () => {
    const run = await runTrellis(["plan", "check", file("dual.yaml")]);
    assert.deepEqual(run, {
      code: 0,
      stdout: `${file("dual.yaml")}: OK: dual-stack IPv4+IPv6 (primary IPv4); pods 10.244.0.0/16, fd00:10:244::/56; services 10.96.0.0/16, fd00:10:96::/112; nodes 198.18.0.0/15, fd00:198:18::/64; NodePorts 30000-32767\n`,
      stderr: "",
    });
  });

  it("check: reads JSON too", async () => {
    const run = await runTrellis(["plan", "check", file("v6.json")]);
    assert.equal(run.code, 0, run.stderr);
    assert.match(run.stdout, /: OK: single-stack IPv6 \(primary IPv6\); pods fd00:10:244::\/56; services fd00:10:96::\/112; nodes none; NodePorts 30000-32767\n$/);
  });

  it("check: an invalid plan exits 1 and prints every problem, one per line", async () => {
    const run = await runTrellis(["plan", "check", file("bad.yaml")]);
    const path = file("bad.yaml");
    assert.deepEqual(run, {
      code: 1,
      stdout: "",
      stderr: [
        `${path}: unknown key "podCIDRs" (did you mean podCidrs?): allowed keys are podCidrs, serviceCidrs, nodeCidrs, nodeMaskSize, nodePortRange`,
        `${path}: nodePortRange "32767-30000" is reversed: the first port must not exceed the last; did you mean "30000-32767"?`,
        `${path}: pod CIDR 10.96.0.0/12 overlaps service CIDR 10.96.0.0/16`,
        `${path}: service CIDR fd00:10:96::/112 is IPv6 but podCidrs has no IPv6 CIDR: an IPv6 ClusterIP can only forward to IPv6 pod IPs, so add an IPv6 pod CIDR or remove this service CIDR`,
        "",
      ].join("\n"),
    });
  });

  it("check: a missing file exits 1 naming the path", async () => {
    const run = await runTrellis(["plan", "check", file("missing.yaml")]);
    assert.deepEqual(run, { code: 1, stdout: "", stderr: `trellis: cannot read cluster plan ${file("missing.yaml")}: no such file\n` });
  });

  it("show: prints each range with its size and capacity", async () => {
    const run = await runTrellis(["plan", "show", file("dual.yaml")]);
    assert.equal(run.code, 0, run.stderr);
    assert.equal(
      run.stdout,
      [
        "KIND      RANGE             FAMILY          SIZE    CAPACITY",
        "pod       10.244.0.0/16     IPv4 (primary)  65536   256 node blocks of /24, 253 pods per node",
        "pod       fd00:10:244::/56  IPv6            2^72    256 node blocks of /64, 2^64-2 pods per node",
        "service   10.96.0.0/16      IPv4 (primary)  65536   65534 Service IPs",
        "service   fd00:10:96::/112  IPv6            65536   65535 Service IPs",
        "node      198.18.0.0/15     IPv4            131072  -",
        "node      fd00:198:18::/64  IPv6            2^64    -",
        "nodePort  30000-32767       -               2768    2768 NodePorts",
        "",
        "SIZE counts addresses (ports for the NodePort range).",
        "Pods per node: a node block's addresses minus network, gateway and, for IPv4, broadcast.",
        "Service IPs: the range's addresses minus network and, for IPv4, broadcast (Kubernetes' ServiceCIDR allocator).",
        "",
      ].join("\n"),
    );
  });

  it("show: an invalid plan exits 1 with its problems and no table", async () => {
    const run = await runTrellis(["plan", "show", file("bad.yaml")]);
    assert.equal(run.code, 1);
    assert.equal(run.stdout, "");
    assert.equal(run.stderr.trimEnd().split("\n").length, 4);
  });
});
