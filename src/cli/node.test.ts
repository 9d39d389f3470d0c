// Runs the built dist/trellis, as `npm test` builds it first, against SQLite and a test etcd.
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { after, before, describe, test } from "node:test";
import { cliFixture, runTrellis, type CliBackend, type CliFixture } from "../../test/support/cli-cluster.js";
import { freeLoopbackPort } from "../../test/support/etcd.js";

const DUAL = ["podCidrs: [10.244.0.0/16, fd00:10:244::/56]", "serviceCidrs: [10.96.0.0/16, fd00:10:96::/112]"];

for (const backend of ["sqlite", "etcd"] as CliBackend[]) {
  describe(`trellis node (${backend})`, () => {
    let fixture: CliFixture;
    before(async () => {
      fixture = await cliFixture(backend);
    });
    after(async () => {
      await fixture?.cleanup();
    });

    test("add, list and rm nodes; the plan is needed at first use only", async () => {
      const spec = await fixture.freshSpec();
      const plan = fixture.plan("dual.yaml", DUAL);

      const noPlan = await runTrellis(["node", "add", "node-1", "--store", spec]);
      assert.equal(noPlan.code, 1);
      assert.match(noPlan.stderr, backend === "sqlite" ? /does not exist yet: give a cluster plan with --plan FILE/ : /holds no cluster plan yet: give one with --plan FILE/);
      if (backend === "sqlite") assert.equal(existsSync(spec.slice("sqlite:".length)), false, "a refused command creates no store file");

      const first = await runTrellis(["node", "add", "node-1", "--store", spec, "--plan", plan]);
      assert.deepEqual([first.code, first.stdout, first.stderr], [0, "node node-1: pod CIDRs 10.244.0.0/24, fd00:10:244::/64\n", ""]);
      const second = await runTrellis(["node", "add", "node-2"], { TRELLIS_STORE: spec });
      assert.equal(second.stdout, "node node-2: pod CIDRs 10.244.1.0/24, fd00:10:244:1::/64\n");
      const withSamePlan = await runTrellis(["node", "add", "node-3"], { TRELLIS_STORE: spec, TRELLIS_PLAN: plan });
      assert.equal(withSamePlan.code, 0, withSamePlan.stderr);

      const list = await runTrellis(["node", "list", "--store", spec]);
      assert.equal(
        list.stdout,
        [
          "NAME    POD CIDRS",
          "node-1  10.244.0.0/24,fd00:10:244::/64",
          "node-2  10.244.1.0/24,fd00:10:244:1::/64",
          "node-3  10.244.2.0/24,fd00:10:244:2::/64",
          "",
        ].join("\n"),
      );
      const removed = await runTrellis(["node", "rm", "node-1", "--store", spec]);
      assert.equal(removed.stdout, "node node-1 removed; freed 10.244.0.0/24, fd00:10:244::/64\n");
      const json = await runTrellis(["node", "list", "--json", "--store", spec]);
      assert.deepEqual(
        JSON.parse(json.stdout).map((node: { name: string }) => node.name),
        ["node-2", "node-3"],
      );
    });

    test("bad values exit 1 with a message naming them, and write nothing", async () => {
      const spec = await fixture.freshSpec();
      const plan = fixture.plan("small.yaml", ["podCidrs: [10.244.0.0/23]", "serviceCidrs: [10.96.0.0/16]"]);
      assert.equal((await runTrellis(["node", "add", "a", "--store", spec, "--plan", plan])).code, 0);
      assert.equal((await runTrellis(["node", "add", "b", "--store", spec])).code, 0);
      const store = await fixture.open(spec);
      const before = await store.list("/");

      const cases: [string[], RegExp][] = [
        [["node", "add", "Bad_Name"], /^trellis: invalid node name "Bad_Name": expected a DNS subdomain/],
        [["node", "add", "a"], /^trellis: node a already exists with pod CIDRs 10\.244\.0\.0\/24\n$/],
        [["node", "add", "c"], /^trellis: CIDR allocation failed for node c; there are no remaining CIDRs left to allocate in the accepted range 10\.244\.0\.0\/23: all 2 \/24 blocks are taken\n$/],
        [["node", "rm", "zz"], /^trellis: node zz does not exist\n$/],
        [
          ["node", "add", "c", "--plan", fixture.plan("other.yaml", ["podCidrs: [10.245.0.0/16]", "serviceCidrs: [10.96.0.0/16]"])],
          /^trellis: the store .* already holds a different cluster plan: podCidrs is 10\.244\.0\.0\/23 in the store but 10\.245\.0\.0\/16 in .*other\.yaml\. Changing ranges under existing allocations is unsafe/,
        ],
        [["node", "add", "c", "--plan", fixture.plan("broken.yaml", ["podCidrs: [10.244.0.0/33]"])], /^trellis: invalid cluster plan .*broken\.yaml:\n/],
      ];
      for (const [args, message] of cases) {
        const run = await runTrellis([...args, "--store", spec]);
        assert.equal(run.code, 1, `${args.join(" ")}: ${run.stderr}`);
        assert.match(run.stderr, message);
        assert.equal(run.stdout, "");
      }
      const afterwards = await store.list("/");
      assert.equal(afterwards.revision, before.revision, "no command above changed the store");
    });
  });
}

describe("trellis node: store specs", () => {
  test("a malformed --store names the value and the allowed forms", async () => {
    const run = await runTrellis(["node", "list", "--store", "mysql://db"]);
    assert.equal(run.code, 1);
    assert.match(run.stderr, /^trellis: invalid store "mysql:\/\/db": unknown kind of store; expected sqlite:PATH \(such as sqlite:\/var\/lib\/trellis\/cluster\.db\) or etcd:\/\/HOST:PORT/);
  });

  // A client that kept retrying instead of giving up would be killed by runTrellis's timeout
  // and fail the exit-code check.
  test("an unreachable etcd is reported, naming the endpoint", async () => {
    const port = await freeLoopbackPort();
    const run = await runTrellis(["node", "add", "n1", "--store", `etcd://127.0.0.1:${port}`]);
    assert.equal(run.code, 1);
    assert.match(run.stderr, new RegExp(`^trellis: etcd at 127\\.0\\.0\\.1:${port} is unreachable: `));
  });
});
