// Runs the built dist/trellis, as `npm test` builds it first, against SQLite and a test etcd.
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { after, before, describe, test } from "node:test";
import { cliFixture, runTrellis, type CliBackend, type CliFixture } from "../../test/support/cli-cluster.js";

const DUAL = ["podCidrs: [10.244.0.0/16, fd00:10:244::/56]", "serviceCidrs: [10.96.0.0/16, fd00:10:96::/112]"];
const SINGLE = ["podCidrs: [10.244.0.0/16]", "serviceCidrs: [10.96.0.0/24]", "nodePortRange: 30000-30099"];

for (const backend of ["sqlite", "etcd"] as CliBackend[]) {
  describe(`trellis service (${backend})`, () => {
    let fixture: CliFixture;
    before(async () => {
      fixture = await cliFixture(backend);
    });
    after(async () => {
      await fixture?.cleanup();
    });

    test("add, list and rm Services with ClusterIPs and NodePorts", async () => {
      const spec = await fixture.freshSpec();
      const env = { TRELLIS_STORE: spec, TRELLIS_PLAN: fixture.plan("dual.yaml", DUAL) };

      const dns = await runTrellis(["service", "add", "kube-system/dns", "--cluster-ip", "10.96.0.10"], env);
      assert.deepEqual([dns.code, dns.stdout, dns.stderr], [0, "service kube-system/dns: ClusterIPs 10.96.0.10 (SingleStack)\n", ""]);
      const web = await runTrellis(["service", "add", "web", "--ip-family-policy", "RequireDualStack", "--ip-families", "IPv6,IPv4", "--node-port", "30080"], env);
      assert.equal(web.code, 0, web.stderr);
      assert.match(web.stdout, /^service default\/web: ClusterIPs fd00:10:96::[0-9a-f]+, 10\.96\.[0-9]+\.[0-9]+ \(RequireDualStack\); NodePort 30080\n$/);
      const api = await runTrellis(["service", "add", "api", "--type", "NodePort", "--ip-family-policy", "PreferDualStack"], env);
      assert.match(api.stdout, /^service default\/api: ClusterIPs 10\.96\.[0-9.]+, fd00:10:96::[0-9a-f]+ \(PreferDualStack\); NodePort 3[0-9]{4}\n$/);
      const port = Number(/NodePort ([0-9]+)/.exec(api.stdout)![1]);
      assert.ok(port >= 30086 && port <= 32767, `a dynamic NodePort comes from the upper band first, got ${port}`);

      const list = await runTrellis(["service", "list"], env);
      const lines = list.stdout.trimEnd().split("\n");
      assert.match(lines[0], /^NAME +TYPE +IP FAMILY POLICY +CLUSTER-IPS +NODE-PORT$/);
      assert.deepEqual(
        lines.slice(1).map((line) => line.split(/ +/)[0]),
        ["default/api", "default/kubernetes", "default/web", "kube-system/dns"],
      );
      assert.match(list.stdout, /default\/kubernetes +ClusterIP +SingleStack +10\.96\.0\.1 +-/);

      const removed = await runTrellis(["service", "rm", "web"], env);
      assert.match(removed.stdout, /^service default\/web removed; freed fd00:10:96::[0-9a-f]+, 10\.96\.[0-9.]+ and NodePort 30080\n$/);
      const again = await runTrellis(["service", "add", "web2", "--node-port", "30080"], env);
      assert.equal(again.code, 0, "the freed NodePort can be requested again");
      const json = JSON.parse((await runTrellis(["service", "list", "--json"], env)).stdout) as { name: string; nodePort?: number }[];
      assert.deepEqual(
        json.map((s) => [s.name, s.nodePort]),
        [
          ["api", port],
          ["kubernetes", undefined],
          ["web2", 30080],
          ["dns", undefined],
        ],
      );
    });

    test("bad values exit 1 with a message naming them, and write nothing", async () => {
      const spec = await fixture.freshSpec();
      const env = { TRELLIS_STORE: spec, TRELLIS_PLAN: fixture.plan("single.yaml", SINGLE) };
      assert.equal((await runTrellis(["service", "add", "dns", "--cluster-ip", "10.96.0.10", "--node-port", "30001"], env)).code, 0);
      const store = await fixture.open(spec);
      const before = await store.list("/");

      const cases: [string[], RegExp][] = [
        [["service", "add", "Web"], /^trellis: invalid Service name "Web" in "Web": expected at most 63 lowercase letters/],
        [["service", "add", "web", "--node-port", "abc"], /^trellis: invalid --node-port "abc": expected a port number, such as 30080\n$/],
        [["service", "add", "web", "--node-port", "80"], /^trellis: NodePort 80 is outside the NodePort range 30000-30099: request a port from 30000 to 30099\n$/],
        [["service", "add", "web", "--node-port", "30001"], /^trellis: NodePort 30001 is already allocated to service default\/dns\n$/],
        [["service", "add", "web", "--type", "LoadBalancer"], /^trellis: invalid Service type "LoadBalancer": expected ClusterIP or NodePort\n$/],
        [["service", "add", "web", "--ip-family-policy", "Dual"], /^trellis: invalid ipFamilyPolicy "Dual": expected SingleStack, PreferDualStack, RequireDualStack\n$/],
        [["service", "add", "web", "--ip-family-policy", "RequireDualStack"], /^trellis: ipFamilyPolicy RequireDualStack: this cluster is not configured for dual-stack Services \(service CIDRs are 10\.96\.0\.0\/24\)\n$/],
        [["service", "add", "web", "--ip-families", "IPv6"], /^trellis: ipFamilies\[0\] IPv6 is not configured on this cluster/],
        [["service", "add", "web", "--ip-families", "IPv4,"], /^trellis: invalid --ip-families "IPv4,": expected one value or two joined by a comma\n$/],
        [["service", "add", "web", "--cluster-ip", "10.96.1.5"], /^trellis: ClusterIP 10\.96\.1\.5 is outside every service CIDR of this cluster \(10\.96\.0\.0\/24\)/],
        [["service", "add", "web", "--cluster-ip", "10.96.0.10"], /^trellis: ClusterIP 10\.96\.0\.10 is already allocated to service default\/dns\n$/],
        [["service", "add", "web", "--cluster-ip", "10.96.0.255"], /^trellis: ClusterIP 10\.96\.0\.255 is the broadcast address of service CIDR 10\.96\.0\.0\/24/],
        [["service", "add", "dns"], /^trellis: Service default\/dns already exists with ClusterIPs 10\.96\.0\.10 and NodePort 30001\n$/],
        [["service", "rm", "kubernetes"], /^trellis: Service default\/kubernetes is the API server's own Service and keeps 10\.96\.0\.1: it cannot be removed\n$/],
        [["service", "rm", "nope"], /^trellis: Service default\/nope does not exist\n$/],
      ];
      for (const [args, message] of cases) {
        const run = await runTrellis(args, env);
        assert.equal(run.code, 1, `${args.join(" ")}: ${run.stderr}`);
        assert.match(run.stderr, message);
        assert.equal(run.stdout, "");
      }
      const afterwards = await store.list("/");
      assert.equal(afterwards.revision, before.revision, "no command above changed the store");
    });

    test("a request that does not fit the plan leaves a new store without even the plan", async () => {
      const spec = await fixture.freshSpec();
      const env = { TRELLIS_STORE: spec, TRELLIS_PLAN: fixture.plan("single2.yaml", SINGLE) };
      const run = await runTrellis(["service", "add", "web", "--cluster-ip", "10.97.0.1"], env);
      assert.equal(run.code, 1);
      if (backend === "sqlite") assert.equal(existsSync(spec.slice("sqlite:".length)), false, "no store file was created");
      const store = await fixture.open(spec);
      assert.deepEqual((await store.list("/")).entries, [], "no plan, no Service");
    });
  });
}
