/**
 * The agent with `--datastore kubernetes` against a real control plane. A test underlay holds
 * three hosts: `control` (etcd, kube-apiserver, kube-controller-manager with node IPAM and the
 * EndpointSlice controller, kube-scheduler) and two nodes, each running `trellis agent` in its
 * namespace with a token of deploy/trellis.yaml's ServiceAccount bound to its Node (as a DaemonSet
 * pod's is bound to its pod on its node), so the manifest's RBAC is what is proved sufficient, and
 * its admission policy what holds each agent to its own Node. Nothing runs in the machine's own
 * namespace but kubectl's parent.
 */
import assert from "node:assert/strict";
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { closeSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { after, before, describe, it } from "node:test";
import { tokenKubeconfigText } from "../src/lab/control-plane.js";
import { attachUnderlayHost, buildUnderlay } from "../src/lab/underlay.js";
import { deleteNamedNetns, namedNetnsPath } from "../src/linux/named-netns.js";
import { startTestControlPlane, type TestControlPlane } from "./support/kube.js";
import { requestsAs, type KubeAnswer, type KubeRequest } from "./support/kube-as.js";
import { TRELLIS_STANDALONE } from "./support/node-agent.js";

const TAG = `trk${process.pid % 100000}`;
const SUBNET = { index: 0, bridge: "br0", prefixes: ["198.18.0.0/24", "fd00:198:18::/64"], router: ["198.18.0.1", "fd00:198:18::1"] };
const host = (name: string, last: number) => ({
  name,
  netnsName: `${TAG}${name}`,
  subnet: 0,
  bridgePort: `${TAG}${name}`.slice(0, 15),
  addresses: [`198.18.0.${last}`, `fd00:198:18::${last}`],
  interfaceAddresses: [`198.18.0.${last}/24`, `fd00:198:18::${last}/64`],
});
const UNDERLAY = `${TAG}u`;
const CONTROL = host("ctl", 2);
const NODES = [host("node1", 11), host("node2", 12)];
const CLUSTER_CIDR = "10.244.0.0/16,fd00:10:244::/56";
const MANIFEST = resolve(import.meta.dirname, "../deploy/trellis.yaml");

interface KubeNodeJson {
  metadata: { name: string; annotations?: Record<string, string>; labels?: Record<string, string> };
  spec: { podCIDRs?: string[] };
  status?: { addresses?: Array<{ type: string; address: string }>; conditions?: Array<{ type: string; status: string; reason?: string }> };
}

describe("the agent on a real Kubernetes API (--datastore kubernetes)", { timeout: 900_000 }, () => {
  let plane: TestControlPlane | undefined;
  const dir = mkdtempSync(join(tmpdir(), "trellis-kube-agent-"));
  const agents = new Map<string, { child: ChildProcess; log: string; argv: string[] }>();
  /** Each agent's kubeconfig, by node. */
  const kubeconfigs = new Map<string, string>();

  const kubectl = (args: readonly string[], input?: string) => plane!.kubectl(args, input);
  const node = async (name: string) => JSON.parse(await kubectl(["get", "node", name, "-o", "json"])) as KubeNodeJson;
  const inNode = (name: string, args: string[]) => spawnSync("ip", ["netns", "exec", `${TAG}${name}`, ...args], { encoding: "utf8" }).stdout;
  const until = async (what: string, test: () => Promise<boolean> | boolean, timeoutMs = 30_000) => {
    const deadline = Date.now() + timeoutMs;
    while (!(await test())) {
      if (Date.now() > deadline) {
        const logs = [...agents].map(([name, agent]) => `--- ${name}\n${readFileSync(agent.log, "utf8").slice(-1500)}`).join("\n");
        assert.fail(`${what}: not within ${timeoutMs / 1000} s\n${logs}`);
      }
      await new Promise((resolveWait) => setTimeout(resolveWait, 250));
    }
  };
  const startAgent = (name: string, nodeName: string, address: string[], config: string) => {
    const log = join(dir, `${nodeName}.log`);
    const argv = [
      `--net=${namedNetnsPath(`${TAG}${name}`)}`, "--", TRELLIS_STANDALONE, "agent", "--datastore", "kubernetes", "--kubeconfig", config, "--cluster-cidr", CLUSTER_CIDR,
      "--node-name", nodeName, ...(address.length ? ["--node-ip", address.join(",")] : []), "--mode", "direct", "--proxy-sync-interval", "0", "--metrics-bind-address", "off", "--resync-interval", "2",
      "--cni-conf-dir", join(dir, nodeName, "net.d"), "--cni-data-dir", join(dir, nodeName, "cni"), "--cni-socket", join(dir, nodeName, "cni.sock"),
    ];
    const fd = openSync(log, "a");
    const env: Record<string, string> = { PATH: process.env.PATH ?? "/usr/sbin:/usr/bin:/sbin:/bin" };
    if (process.env.TRELLIS_NATIVE_DIR) env.TRELLIS_NATIVE_DIR = process.env.TRELLIS_NATIVE_DIR;
    const child = spawn("nsenter", argv, { stdio: ["ignore", fd, fd], env });
    closeSync(fd);
    agents.set(nodeName, { child, log, argv });
    return child;
  };
  const ruleset = (name: string) => inNode(name, ["nft", "list", "ruleset"]);

  before(async () => {
  /** A kubeconfig of the trellis ServiceAccount with a token made by `kubectl create token ...args`. */
  const tokenKubeconfig = async (name: string, args: readonly string[]) => {
    writeFileSync(join(dir, `${name}.token`), (await kubectl(["create", "token", "trellis", "-n", "trellis-system", ...args])).trim(), { mode: 0o600 });
    const config = join(dir, `${name}.kubeconfig`);
    writeFileSync(config, tokenKubeconfigText(plane!.files.server, plane!.files.caCert, "trellis", join(dir, `${name}.token`)));
    return config;
  };
  const statusPatch = (nodeName: string, body: object, contentType: KubeRequest["contentType"] = "application/merge-patch+json"): KubeRequest =>
    ({ method: "PATCH", path: `/api/v1/nodes/${nodeName}/status`, body, contentType });
  const as = (config: string, requests: readonly KubeRequest[]) => requestsAs(namedNetnsPath(CONTROL.netnsName), config, requests);
  const refusal = (answer: KubeAnswer) => `${answer.status} ${answer.message ?? ""}`;
    await buildUnderlay(UNDERLAY, [SUBNET]);
    for (const member of [CONTROL, ...NODES]) await attachUnderlayHost(UNDERLAY, [SUBNET], member);
    plane = await startTestControlPlane({ controllers: true, netns: { path: namedNetnsPath(CONTROL.netnsName), address: CONTROL.addresses[0] } });
    await kubectl(["apply", "-f", "-"], readFileSync(MANIFEST, "utf8"));
    for (const member of NODES) {
      await kubectl(["apply", "-f", "-"], JSON.stringify({ apiVersion: "v1", kind: "Node", metadata: { name: member.name } }));
      kubeconfigs.set(member.name, await tokenKubeconfig(`trellis-${member.name}`, ["--bound-object-kind", "Node", "--bound-object-name", member.name, "--duration=2h"]));
    }
    // node2's agent gets no --node-ip: it takes the InternalIPs its Node's status lists (as a
    // kubelet would have set them), in their order, IPv6 first here.
    await kubectl(["patch", "node", "node2", "--subresource=status", "--type=merge", "-p", JSON.stringify({ status: { addresses: [{ type: "InternalIP", address: "fd00:198:18::12" }, { type: "InternalIP", address: "198.18.0.12" }, { type: "Hostname", address: "node2" }] } })]);
    for (const member of NODES) {
      mkdirSync(join(dir, member.name), { recursive: true });
      startAgent(member.name, member.name, member.name === "node2" ? [] : member.addresses, kubeconfigs.get(member.name)!);
    }
  });

  after(async () => {
    for (const { child } of agents.values()) if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    await plane?.stop();
    for (const member of [...NODES, CONTROL]) await deleteNamedNetns(member.netnsName).catch(() => undefined);
    await deleteNamedNetns(UNDERLAY).catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
  });

  it("takes its pod CIDRs from node IPAM, publishes its network on its Node, routes to the peer's pods, and marks its network available", async () => {
    await until("both Nodes published and marked available", async () => {
      const nodes = await Promise.all(NODES.map((member) => node(member.name)));
      return nodes.every((each) => each.metadata.annotations?.["trellis.dev/node-addresses"] && each.status?.conditions?.some((condition) => condition.type === "NetworkUnavailable" && condition.status === "False"));
    }, 60_000);
    const [one, two] = await Promise.all(NODES.map((member) => node(member.name)));
    assert.equal(one.metadata.annotations!["trellis.dev/node-addresses"], "198.18.0.11,fd00:198:18::11");
    // Bug caught: the Node's status.addresses ignored for the default route's (which lists IPv4 first).
    assert.equal(two.metadata.annotations!["trellis.dev/node-addresses"], "fd00:198:18::12,198.18.0.12");
    assert.equal(two.spec.podCIDRs?.length, 2, "node IPAM gave a pod CIDR per family");
    assert.equal(two.status?.conditions?.find((condition) => condition.type === "NetworkUnavailable")?.reason, "TrellisIsUp");
    // Bug caught: peers read from the wrong field (status, not spec.podCIDRs), or routed via an address of the wrong family.
    await until("node1 routes to node2's pods on both families", () => {
      const routes = inNode("node1", ["ip", "route", "show"]) + inNode("node1", ["ip", "-6", "route", "show"]);
      return two.spec.podCIDRs!.every((cidr) => new RegExp(`${cidr.replace(/[.]/g, "\\.")} via (198\\.18\\.0\\.12|fd00:198:18::12)`).test(routes));
    });
    const conflist = readFileSync(join(dir, "node1", "net.d", "10-trellis.conflist"), "utf8");
    for (const cidr of one.spec.podCIDRs!) assert.ok(conflist.includes(cidr), `node1's conflist holds its pod CIDR ${cidr}`);
  });

  it("programs a Service the API server allocated, with the endpoints of its EndpointSlice", async () => {
    await kubectl(["apply", "-f", "-"], [
      JSON.stringify({ apiVersion: "v1", kind: "Service", metadata: { name: "web", namespace: "default" }, spec: { ipFamilyPolicy: "PreferDualStack", ports: [{ name: "http", port: 80, protocol: "TCP" }] } }),
      JSON.stringify({
        apiVersion: "discovery.k8s.io/v1", kind: "EndpointSlice", metadata: { name: "web-1", namespace: "default", labels: { "kubernetes.io/service-name": "web" } },
        addressType: "IPv4", endpoints: [{ addresses: ["10.244.0.77"], conditions: { ready: true } }], ports: [{ name: "http", port: 8080, protocol: "TCP" }],
      }),
    ].join("\n"));
    const service = JSON.parse(await kubectl(["get", "service", "web", "-o", "json"])) as { spec: { clusterIPs: string[] } };
    assert.equal(service.spec.clusterIPs.length, 2, "the API server gave both families a ClusterIP");
    // Bug caught: the proxy fed only by the Trellis store, or Services with no endpoints from an API slice.
    for (const member of NODES) {
      await until(`${member.name} has the Service's ClusterIPs and endpoint`, () => {
        const rules = ruleset(member.name);
        return service.spec.clusterIPs.every((ip) => rules.includes(ip)) && rules.includes("10.244.0.77");
      });
    }
  });

  it("follows the API through an API server killed and restarted, without restarting", async () => {
    const pids = NODES.map((member) => agents.get(member.name)!.child.pid);
    await plane!.restartApiserver(2_000);
    await kubectl(["apply", "-f", "-"], JSON.stringify({ apiVersion: "v1", kind: "Service", metadata: { name: "after-restart", namespace: "default" }, spec: { clusterIP: "10.96.7.7", ports: [{ port: 81 }] } }));
    // Bug caught: an informer that stops on the first error (client-node 1.4.0's), or never relists after 410.
    for (const member of NODES) await until(`${member.name} has the Service made after the restart`, () => ruleset(member.name).includes("10.96.7.7"), 60_000);
    assert.deepEqual(NODES.map((member) => agents.get(member.name)!.child.pid), pids);
    assert.ok(NODES.every((member) => agents.get(member.name)!.child.exitCode === null), "the agents still run");
  });

  it("routes to a Node whose agent published, and withdraws the routes when the Node is deleted", async () => {
    await kubectl(["apply", "-f", "-"], JSON.stringify({ apiVersion: "v1", kind: "Node", metadata: { name: "node3" } }));
    await until("node3's pod CIDRs", async () => ((await node("node3")).spec.podCIDRs?.length ?? 0) === 2);
    await kubectl(["annotate", "node", "node3", "trellis.dev/node-addresses=198.18.0.13,fd00:198:18::13"]);
    const cidrs = (await node("node3")).spec.podCIDRs!;
    const routed = () => {
      const routes = inNode("node1", ["ip", "route", "show"]) + inNode("node1", ["ip", "-6", "route", "show"]);
      return cidrs.filter((cidr) => routes.includes(`${cidr} via`)).length;
    };
    await until("node1 routes to node3's pods", () => routed() === 2);
    await kubectl(["delete", "node", "node3"]);
    // Bug caught: a deleted peer's routes left behind (a DELETED event not handled).
    await until("node1 withdrew node3's routes", () => routed() === 0);
  });

  it("with one permission less than the manifest's ClusterRole, stops with a log line naming the right it lacks", async () => {
    const manifest = readFileSync(MANIFEST, "utf8");
    const lesser = manifest
      .split("\n---\n")
      .filter((doc) => /kind: (ServiceAccount|ClusterRole|ClusterRoleBinding)\n/.test(doc))
      .map((doc) => doc.replace(/name: trellis\b/g, "name: trellis-lesser").replace(/  - apiGroups: \[""\]\n    resources: \[nodes\/status\]\n    verbs: \[patch\]\n/, ""))
      .join("\n---\n");
    assert.ok(!lesser.includes("resources: [nodes/status]"), "the right is taken out");
    await kubectl(["apply", "-f", "-"], lesser);
    writeFileSync(join(dir, "lesser-token"), (await kubectl(["create", "token", "trellis-lesser", "-n", "trellis-system"])).trim(), { mode: 0o600 });
    const config = join(dir, "lesser.kubeconfig");
    writeFileSync(config, tokenKubeconfigText(plane!.files.server, plane!.files.caCert, "trellis-lesser", join(dir, "lesser-token")));
    await kubectl(["apply", "-f", "-"], JSON.stringify({ apiVersion: "v1", kind: "Node", metadata: { name: "lesser" } }));
    mkdirSync(join(dir, "lesser"), { recursive: true });
    const child = startAgent("node2", "lesser", ["198.18.0.12"], config);
    const code = await new Promise<number | null>((resolveExit) => child.once("exit", resolveExit));
    assert.equal(code, 1);
    const log = readFileSync(agents.get("lesser")!.log, "utf8");
    // Bug caught: a refusal swallowed (an agent that runs without publishing), or logged without what was refused.
    assert.match(log, /cannot patch resource "nodes\/status"/);
    assert.match(log, /deploy\/trellis\.yaml's ClusterRole lists what it needs/);
    await kubectl(["delete", "node", "lesser"]);
  });
});
