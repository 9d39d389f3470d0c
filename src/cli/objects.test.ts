// Runs the built dist/trellis, as `npm test` builds it first, against SQLite and a test etcd.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, truncateSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { cliFixture, runTrellis, TRELLIS, type CliBackend, type CliFixture } from "../../test/support/cli-cluster.js";

const DUAL = ["podCidrs: [10.244.0.0/16, fd00:10:244::/56]", "serviceCidrs: [10.96.0.0/16, fd00:10:96::/112]"];

const APP = `
apiVersion: v1
kind: Service
metadata: {name: web, labels: {app: web}}
spec:
  type: NodePort
  ipFamilyPolicy: RequireDualStack
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: http}
  - {name: dns, port: 53, protocol: UDP, targetPort: 5353}
---
apiVersion: v1
kind: Pod
metadata: {name: web-0, labels: {app: web}}
spec:
  nodeName: node1
  containers: [{name: app, ports: [{name: http, containerPort: 8080}]}]
status:
  podIP: 10.244.1.5
  podIPs: [{ip: 10.244.1.5}, {ip: "fd00:10:244:1::5"}]
  conditions: [{type: Ready, status: "True"}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: external-db-1, labels: {kubernetes.io/service-name: external-db}}
addressType: IPv4
endpoints: [{addresses: [192.0.2.10]}]
ports: [{name: "", port: 5432, protocol: TCP}]
`;

/**
 * Bad manifests, each with the field path and error the apiserver would name. Bug caught: a bad
 * object accepted (then proxied wrongly or not at all), or refused without naming its field.
 */
const BAD: ReadonlyArray<readonly [string, string, RegExp]> = [
  ["port out of range", "kind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 70000, targetPort: 80}]}", /spec\.ports\[0\]\.port: Invalid value: 70000: must be between 1 and 65535, inclusive/],
  ["port zero", "kind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 0, targetPort: 80}]}", /spec\.ports\[0\]\.port: Invalid value: 0/],
  ["no ports", "kind: Service\nmetadata: {name: a}\nspec: {selector: {app: a}}", /spec\.ports: Required value/],
  ["unknown type", "kind: Service\nmetadata: {name: a}\nspec: {type: Foo, ports: [{port: 80}]}", /spec\.type: Unsupported value: "Foo"/],
  ["unknown protocol", "kind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80, protocol: ICMP}]}", /spec\.ports\[0\]\.protocol: Unsupported value: "ICMP"/],
  ["duplicate port name", "kind: Service\nmetadata: {name: a}\nspec: {ports: [{name: x, port: 80}, {name: x, port: 81}]}", /spec\.ports\[1\]\.name: Duplicate value: "x"/],
  ["unnamed ports", "kind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80}, {port: 81}]}", /spec\.ports\[0\]\.name: Required value/],
  ["nodePort on ClusterIP", "kind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80, nodePort: 30080}]}", /spec\.ports\[0\]\.nodePort: Forbidden/],
  ["nodePort outside the range", "kind: Service\nmetadata: {name: a}\nspec: {type: NodePort, ports: [{port: 80, nodePort: 40000}]}", /spec\.ports\[0\]\.nodePort: Invalid value: 40000: NodePort 40000 is outside the NodePort range 30000-32767/],
  ["bad service name", "kind: Service\nmetadata: {name: 1web}\nspec: {ports: [{port: 80}]}", /metadata\.name: Invalid value: "1web"/],
  ["bad clusterIP", "kind: Service\nmetadata: {name: a}\nspec: {clusterIP: 10.96.0.300, ports: [{port: 80}]}", /spec\.clusterIPs?(\[0\])?: Invalid value: "10\.96\.0\.300"/],
  ["clusterIP outside the service CIDRs", "kind: Service\nmetadata: {name: a}\nspec: {clusterIP: 10.97.0.1, ports: [{port: 80}]}", /spec\.clusterIPs\[0\]: Invalid value: "10\.97\.0\.1": ClusterIP 10\.97\.0\.1 is outside every service CIDR/],
  ["bad externalIP", "kind: Service\nmetadata: {name: a}\nspec: {externalIPs: [nope], ports: [{port: 80}]}", /spec\.externalIPs\[0\]: Invalid value: "nope"/],
  ["bad affinity", "kind: Service\nmetadata: {name: a}\nspec: {sessionAffinity: Sticky, ports: [{port: 80}]}", /spec\.sessionAffinity: Unsupported value: "Sticky"/],
  ["affinity timeout too long", "kind: Service\nmetadata: {name: a}\nspec: {sessionAffinity: ClientIP, sessionAffinityConfig: {clientIP: {timeoutSeconds: 86401}}, ports: [{port: 80}]}", /spec\.sessionAffinityConfig\.clientIP\.timeoutSeconds: Invalid value: 86401/],
  ["externalTrafficPolicy on ClusterIP", "kind: Service\nmetadata: {name: a}\nspec: {externalTrafficPolicy: Local, ports: [{port: 80}]}", /spec\.externalTrafficPolicy/],
  ["bad internalTrafficPolicy", "kind: Service\nmetadata: {name: a}\nspec: {internalTrafficPolicy: Nearby, ports: [{port: 80}]}", /spec\.internalTrafficPolicy: Unsupported value: "Nearby"/],
  ["bad selector key", "kind: Service\nmetadata: {name: a}\nspec: {selector: {'a b': x}, ports: [{port: 80}]}", /spec\.selector: Invalid value: "a b"/],
  ["ExternalName", "kind: Service\nmetadata: {name: a}\nspec: {type: ExternalName, externalName: db.example}", /spec\.type: Unsupported value: "ExternalName"/],
  ["two IPv4 ClusterIPs", "kind: Service\nmetadata: {name: a}\nspec: {ipFamilyPolicy: RequireDualStack, clusterIPs: [10.96.0.5, 10.96.0.6], ports: [{port: 80}]}", /spec\.clusterIPs/],
  ["slice address of the wrong family", "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s}\naddressType: IPv4\nendpoints: [{addresses: ['fd00::1']}]", /endpoints\[0\]\.addresses\[0\]: Invalid value: "fd00::1"/],
  ["slice FQDN", "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s}\naddressType: FQDN\nendpoints: []", /addressType: Unsupported value: "FQDN"/],
  ["slice port out of range", "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s}\naddressType: IPv4\nendpoints: []\nports: [{port: 65536}]", /ports\[0\]\.port: Invalid value: 65536/],
  ["pod with two IPv4 podIPs", "kind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c}]}\nstatus: {podIPs: [{ip: 10.244.1.5}, {ip: 10.244.1.6}]}", /status\.podIPs/],
  ["unknown kind", "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}", /no matches for kind "Deployment" in version "apps\/v1"/],
];

function applyStdin(args: string[], input: string, env: Record<string, string>) {
  const { TRELLIS_STORE: _store, TRELLIS_PLAN: _plan, ...inherited } = process.env;
  return spawnSync(TRELLIS, args, { input, env: { ...inherited, ...env }, encoding: "utf8", timeout: 60_000 });
}

for (const backend of ["sqlite", "etcd"] as CliBackend[]) {
  describe(`trellis apply, get and delete (${backend})`, () => {
    let fixture: CliFixture;
    let env: Record<string, string>;
    before(async () => {
      fixture = await cliFixture(backend);
      env = { TRELLIS_STORE: await fixture.freshSpec(), TRELLIS_PLAN: fixture.plan("dual.yaml", DUAL) };
    });
    after(async () => {
      await fixture?.cleanup();
    });

    // Bugs caught: objects not stored, allocations missing, a selector Service without its
    // EndpointSlices in `get`, a named targetPort not resolved from the Pod.
    test("applies a multi-document manifest and prints what it stored", async () => {
      const applied = applyStdin(["apply", "-f", "-"], APP, env);
      assert.equal(applied.status, 0, applied.stderr);
      assert.equal(applied.stdout, "service/web created\npod/web-0 created\nendpointslice.discovery.k8s.io/external-db-1 created\n");
      const again = applyStdin(["apply", "-f", "-"], APP, env);
      assert.equal(again.stdout, "service/web unchanged\npod/web-0 unchanged\nendpointslice.discovery.k8s.io/external-db-1 unchanged\n");
      const web = JSON.parse((await runTrellis(["get", "services", "web", "-o", "json"], env)).stdout);
      assert.equal(web.spec.clusterIPs.length, 2);
      assert.match(web.spec.clusterIPs[0], /^10\.96\./);
      assert.ok(web.spec.ports.every((port: { nodePort: number }) => port.nodePort >= 30000 && port.nodePort <= 32767));
      const slices = JSON.parse((await runTrellis(["get", "endpointslices", "-o", "json"], env)).stdout).items;
      const ipv4 = slices.find((slice: { metadata: { name: string } }) => slice.metadata.name === "web-ipv4");
      assert.deepEqual(ipv4.endpoints.map((endpoint: { addresses: string[] }) => endpoint.addresses), [["10.244.1.5"]]);
      assert.deepEqual(ipv4.ports.map((port: { name: string; port: number }) => [port.name, port.port]).sort(), [["dns", 5353], ["http", 8080]]);
      assert.ok(slices.some((slice: { metadata: { name: string } }) => slice.metadata.name === "external-db-1"));
      const table = await runTrellis(["get", "pods"], env);
      assert.match(table.stdout, /^NAME +NODE +IPS +READY\nweb-0 +node1 +10\.244\.1\.5,fd00:10:244:1::5 +true\n$/);
      const yaml = await runTrellis(["get", "svc", "-o", "yaml"], env);
      assert.match(yaml.stdout, /kind: List/);
    });

    test("refuses each bad manifest naming its field, and keeps nothing of that apply", async () => {
      const before = (await runTrellis(["get", "services", "-A", "-o", "json"], env)).stdout;
      for (const [what, manifest, message] of BAD) {
        // A good Service first in the same apply: it must not be kept either.
        const run = applyStdin(["apply", "-f", "-"], `apiVersion: v1\nkind: Service\nmetadata: {name: innocent}\nspec: {ports: [{port: 80}]}\n---\n${manifest.startsWith("apiVersion") ? "" : "apiVersion: v1\n"}${manifest}\n`, env);
        assert.equal(run.status, 1, `${what}: ${run.stdout}`);
        assert.match(run.stderr, message, what);
        assert.match(run.stderr, /^trellis: /, what);
      }
      assert.equal((await runTrellis(["get", "services", "-A", "-o", "json"], env)).stdout, before, "no Service was kept or changed");
      const unreadable = await runTrellis(["apply", "-f", "/nonexistent/x.yaml"], env);
      assert.match(unreadable.stderr, /^trellis: cannot read "\/nonexistent\/x\.yaml": /);
      const syntax = applyStdin(["apply", "-f", "-"], "kind: Service\nmetadata: {name: [\n", env);
      assert.match(syntax.stderr, /stdin/);
      const resource = await runTrellis(["get", "deployments"], env);
      assert.match(resource.stderr, /doesn't have a resource type "deployments": expected services, endpointslices, pods, namespaces, networkpolicies or clusternetworkpolicies/);
      // Bug caught: an empty list printed as a bare header (read by a script as one object's row).
      const none = await runTrellis(["get", "networkpolicies", "-n", "quiet"], env);
      assert.deepEqual([none.stdout, none.stderr], ["", "No resources found in quiet namespace.\n"]);
      assert.equal((await runTrellis(["get", "clusternetworkpolicies"], env)).stderr, "No resources found.\n");
    });

    // Bug caught: delete leaving ClusterIPs/NodePorts claimed, or deleting part of a list.
    test("deletes what the manifest names and frees its addresses and ports", async () => {
      const web = JSON.parse((await runTrellis(["get", "services", "web", "-o", "json"], env)).stdout);
      const missing = applyStdin(["delete", "-f", "-"], `${APP}---\napiVersion: v1\nkind: Pod\nmetadata: {name: nobody}\n`, env);
      assert.equal(missing.status, 1);
      assert.match(missing.stderr, /pods "nobody" not found in namespace default/);
      const deleted = applyStdin(["delete", "-f", "-"], APP, env);
      assert.equal(deleted.status, 0, deleted.stderr);
      assert.equal(deleted.stdout, "service/web deleted\npod/web-0 deleted\nendpointslice.discovery.k8s.io/external-db-1 deleted\n");
      const reuse = applyStdin(["apply", "-f", "-"], `apiVersion: v1\nkind: Service\nmetadata: {name: again}\nspec:\n  type: NodePort\n  clusterIP: ${web.spec.clusterIPs[0]}\n  ports: [{port: 80, nodePort: ${web.spec.ports[0].nodePort}}]\n`, env);
      assert.equal(reuse.status, 0, `the freed ClusterIP and NodePort can be had again: ${reuse.stderr}`);
    });
  });
}

// What apply and delete read is bounded before any store is opened, so one backend is enough.
describe("trellis apply -f and delete -f: a bound on what is read", () => {
  let fixture: CliFixture;
  let env: Record<string, string>;
  let storeFile: string;
  before(async () => {
    fixture = await cliFixture("sqlite");
    const spec = await fixture.freshSpec();
    storeFile = spec.slice("sqlite:".length);
    env = { TRELLIS_STORE: spec, TRELLIS_PLAN: fixture.plan("dual.yaml", DUAL) };
  });
  after(async () => {
    await fixture?.cleanup();
  });

  /** Runs a shell command line with TRELLIS set; one that reads without end is killed (SIGKILL) and fails the test instead of hanging it. */
  function shell(line: string) {
    const { TRELLIS_STORE: _store, TRELLIS_PLAN: _plan, ...inherited } = process.env;
    return spawnSync("sh", ["-c", line], { env: { ...inherited, ...env, TRELLIS }, encoding: "utf8", timeout: 30_000 });
  }

  // Bug caught: the whole input read before its size was checked: `-f /dev/zero` and
  // `yes | trellis apply -f -` grew until killed (10 GB in 30 s), or the message not naming the
  // input and the limit, or stdin left open so the process never exits.
  test("refuses -f /dev/zero and an endless stdin at the limit, naming them, and exits", () => {
    const zero = shell('timeout -s KILL 15 "$TRELLIS" apply -f /dev/zero');
    assert.equal(zero.status, 1, zero.stderr);
    assert.match(zero.stderr, /^trellis: "\/dev\/zero" is larger than 64 MiB, the most trellis apply reads: split it and apply the parts one after another\n$/);
    const endless = shell('yes | timeout -s KILL 15 "$TRELLIS" apply -f -');
    assert.equal(endless.status, 1, endless.stderr);
    assert.match(endless.stderr, /^trellis: stdin is larger than 64 MiB, the most trellis apply reads: /);
    const deleting = shell('yes | timeout -s KILL 15 "$TRELLIS" delete -f -');
    assert.equal(deleting.status, 1, deleting.stderr);
    assert.match(deleting.stderr, /^trellis: stdin is larger than 64 MiB, the most trellis delete reads: split it and delete the parts one after another\n$/);
    assert.equal(existsSync(storeFile), false, "no store was opened, so nothing was written");
  });

  // Bug caught: the limit applied to each file alone, so that many -f files add up without
  // bound; or a good manifest given before the refused one applied anyway.
  test("bounds all the -f inputs together, and keeps nothing of that apply", () => {
    const good = join(fixture.dir, "good.yaml");
    writeFileSync(good, "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {ports: [{port: 80}]}\n");
    const [first, second] = [join(fixture.dir, "first.yaml"), join(fixture.dir, "second.yaml")];
    for (const file of [first, second]) {
      writeFileSync(file, "");
      truncateSync(file, 40 * 2 ** 20);
    }
    const run = shell(`timeout -s KILL 15 "$TRELLIS" apply -f ${good} -f ${first} -f ${second}`);
    assert.equal(run.status, 1, run.stderr);
    assert.equal(run.stderr, `trellis: ${JSON.stringify(second)} takes the input past 64 MiB, the most trellis apply reads from all its -f files together: apply them in several runs\n`);
    assert.equal(existsSync(storeFile), false, "the good Service was not applied");
  });
});
