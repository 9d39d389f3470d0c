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
import { execCniPlugin, pluginConfig, type CniConfList } from "./support/cni-exec.js";
import { nativePluginDir, TRELLIS_STANDALONE } from "./support/node-agent.js";

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
      // Wider than any cluster should allow, so that what is refused for what it is (a ClusterIP, a node, the API server) shows.
      "--external-ip-cidrs", "10.0.0.0/8,198.18.0.0/15,fd00::/8",
      "--cni-conf-dir", join(dir, nodeName, "net.d"), "--cni-data-dir", join(dir, nodeName, "cni"), "--cni-socket", join(dir, nodeName, "cni.sock"),
    ];
    const fd = openSync(log, "a");
    const env: Record<string, string> = { PATH: process.env.PATH ?? "/usr/sbin:/usr/bin:/sbin:/bin" };
    const child = spawn("nsenter", argv, { stdio: ["ignore", fd, fd], env });
    closeSync(fd);
    agents.set(nodeName, { child, log, argv });
    return child;
  };
  const ruleset = (name: string) => inNode(name, ["nft", "list", "ruleset"]);
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

  before(async () => {
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

  // Bugs caught: Service CIDRs unknown on the API (traffic to an unallocated ClusterIP leaving by
  // the default route, the masquerade excluding none), or a ServiceCIDR added later needing an
  // agent restart to count.
  it("follows the ServiceCIDR objects: their CIDRs in the proxy's service-cidrs set and the masquerade's exclusions, one added later included", async () => {
    const serviceCidrs = (name: string) => inNode(name, ["nft", "list", "set", "ip", "trellis-proxy", "service-cidrs"]);
    // The API server's default ServiceCIDR ("kubernetes") is its --service-cluster-ip-range.
    const defaults = JSON.parse(await kubectl(["get", "servicecidr", "kubernetes", "-o", "json"])) as { spec: { cidrs: string[] } };
    const v4 = defaults.spec.cidrs.find((cidr) => !cidr.includes(":"))!;
    for (const member of NODES) await until(`${member.name} drops the default Service CIDR's unheld addresses`, () => serviceCidrs(member.name).includes(v4));
    await kubectl(["apply", "-f", "-"], JSON.stringify({ apiVersion: "networking.k8s.io/v1", kind: "ServiceCIDR", metadata: { name: "extra" }, spec: { cidrs: ["10.100.0.0/16"] } }));
    for (const member of NODES) {
      await until(`${member.name} takes the added ServiceCIDR`, () => serviceCidrs(member.name).includes("10.100.0.0/16"));
      await until(`${member.name}'s masquerade excludes it`, () => inNode(member.name, ["nft", "list", "table", "inet", "trellis-agent"]).includes("10.100.0.0/16"));
    }
    await kubectl(["delete", "servicecidr", "extra"]);
    for (const member of NODES) await until(`${member.name} lets the deleted ServiceCIDR go`, () => !serviceCidrs(member.name).includes("10.100.0.0/16"));
  });

  // Bug caught: a ServiceCIDR taken on trust. The proxy drops traffic to a Service CIDR's unheld
  // addresses, so one over the pod CIDR black-holes every pod, and one over the nodes' network
  // the nodes; the API server cannot know either range and accepts both.
  it("refuses a ServiceCIDR over the pod CIDR or a node's address, keeps its other CIDR, and says so in the log and an Event", async () => {
    const serviceCidrs = (name: string) => inNode(name, ["nft", "list", "set", "ip", "trellis-proxy", "service-cidrs"]);
    await kubectl(["apply", "-f", "-"], JSON.stringify({ apiVersion: "networking.k8s.io/v1", kind: "ServiceCIDR", metadata: { name: "over-pods" }, spec: { cidrs: ["10.244.0.0/20", "fd00:10:101::/112"] } }));
    await kubectl(["apply", "-f", "-"], JSON.stringify({ apiVersion: "networking.k8s.io/v1", kind: "ServiceCIDR", metadata: { name: "over-nodes" }, spec: { cidrs: ["198.18.0.0/24"] } }));
    try {
      for (const member of NODES) {
        await until(`${member.name} refuses both`, () => refusedBy(member.name, "over-pods", "service-cidr-overlap") && refusedBy(member.name, "over-nodes", "service-cidr-overlap"));
        await until(`${member.name} keeps the over-pods object's other CIDR`, () => inNode(member.name, ["nft", "list", "set", "ip6", "trellis-proxy", "service-cidrs"]).includes("fd00:10:101::/112"));
        const set = serviceCidrs(member.name);
        assert.ok(!set.includes("10.244.") && !set.includes("198.18.0.0/24"), `${member.name}'s service-cidrs holds a refused CIDR:\n${set}`);
      }
      await until("an Event on the ServiceCIDR", async () => (await eventsAbout("default", "over-pods")).some((event) => /^ServiceCIDROverlap: ServiceCIDR over-pods: "10\.244\.0\.0\/20" overlaps the pod CIDR 10\.244\.0\.0\/16/.test(event)));
    } finally {
      await kubectl(["delete", "servicecidr", "over-pods", "over-nodes", "--ignore-not-found"]);
    }
  });

  it("writes the NetworkPolicy of the API into the node of the pods it selects, follows it, and writes it again when deleted by hand", async () => {
    // Catches: policies not followed on the API (no table), a table on a node whose pods no policy
    // selects, peers taken from the wrong pods, a table left after its policy went, and one deleted
    // by hand left missing (the pods open to everyone until a restart).
    await kubectl(["apply", "-f", "-"], [
      { apiVersion: "v1", kind: "Namespace", metadata: { name: "pol", labels: { team: "a" } } },
      { apiVersion: "v1", kind: "Pod", metadata: { name: "web", namespace: "pol", labels: { app: "web" } }, spec: { nodeName: "node1", containers: [{ name: "c", image: "registry.k8s.io/pause:3.10", ports: [{ name: "http", containerPort: 8080 }] }] } },
      { apiVersion: "v1", kind: "Pod", metadata: { name: "client", namespace: "pol", labels: { app: "client" } }, spec: { nodeName: "node2", containers: [{ name: "c", image: "registry.k8s.io/pause:3.10" }] } },
    ].map((object) => JSON.stringify(object)).join("\n---\n"));
    // No kubelet runs these: their addresses are put in their status as a kubelet would, from
    // their nodes' pod CIDRs. "liar" (on node2, labelled as a client) claims one of node1's.
    const [cidrs1, cidrs2] = await Promise.all(["node1", "node2"].map(async (name) => (await node(name)).spec.podCIDRs ?? []));
    const inside = (cidrs: string[], last: number) => [cidrs.find((cidr) => !cidr.includes(":"))!.replace(/0\/\d+$/, String(last)), cidrs.find((cidr) => cidr.includes(":"))!.replace(/::\/\d+$/, `::${last}`)];
    const [web, client, liar] = [inside(cidrs1, 50), inside(cidrs2, 60), inside(cidrs1, 51)];
    await kubectl(["apply", "-f", "-"], JSON.stringify({ apiVersion: "v1", kind: "Pod", metadata: { name: "liar", namespace: "pol", labels: { app: "client" } }, spec: { nodeName: "node2", containers: [{ name: "c", image: "registry.k8s.io/pause:3.10" }] } }));
    for (const [pod, [v4, v6]] of [["web", web], ["client", client], ["liar", liar]] as const) {
      await kubectl(["-n", "pol", "patch", "pod", pod, "--subresource=status", "--type=merge", "-p", JSON.stringify({ status: { phase: "Running", podIP: v4, podIPs: [{ ip: v4 }, { ip: v6 }] } })]);
    }
    await kubectl(["apply", "-f", "-"], JSON.stringify({
      apiVersion: "networking.k8s.io/v1", kind: "NetworkPolicy", metadata: { name: "web-from-client", namespace: "pol" },
      spec: { podSelector: { matchLabels: { app: "web" } }, ingress: [{ from: [{ podSelector: { matchLabels: { app: "client" } } }], ports: [{ port: "http" }] }] },
    }));
    const table = (name: string) => inNode(name, ["nft", "list", "table", "inet", "trellis-policy"]);
    const escaped = (ip: string) => ip.replace(/[.]/g, "\\.");
    await until("node1 judges web's ingress: its addresses in the map, client's in a peer set, port 8080", () => {
      const listed = table("node1");
      return new RegExp(`${escaped(web[0])} : jump ingress-`).test(listed) && new RegExp(`${escaped(web[1])} : jump ingress-`).test(listed) && listed.includes(client[0]) && listed.includes(client[1]) && /tcp dport 8080 accept/.test(listed);
    });
    assert.equal(table("node2"), "", "node2 holds no pod a policy selects");
    const log1 = readFileSync(agents.get("node1")!.log, "utf8");
    assert.match(log1, /the API server serves no ClusterNetworkPolicy/);
    // A node's word about its pod's address is checked against that node's pod CIDRs.
    assert.ok(!table("node1").includes(liar[0]) && !table("node1").includes(liar[1]), "the liar's addresses are in no set");
    assert.match(log1, /"kind":"Pod","object":"pol\/liar","reason":"pod-ip-outside-node"/);
    inNode("node1", ["nft", "delete", "table", "inet", "trellis-policy"]);
    await until("the table written again at a resync", () => new RegExp(`${escaped(web[0])} : jump ingress-`).test(table("node1")));
    await kubectl(["-n", "pol", "delete", "networkpolicy", "web-from-client"]);
    await until("the table gone with its policy", () => table("node1") === "");
    await kubectl(["delete", "namespace", "pol", "--wait=false"]);
  });

  it("puts a pod into the policy rules before its ADD answers, takes it out with its DEL, and refuses the ADD of a pod it cannot judge", async () => {
    // Catches: a window after ADD in which a pod a deny policy selects sends and takes anything
    // (its rules written only once the kubelet reports its address), an address left judged as
    // the old pod's after DEL, and a pod started unjudged (or its network left behind) when the
    // agent does not know it.
    await kubectl(["apply", "-f", "-"], [
      { apiVersion: "v1", kind: "Namespace", metadata: { name: "nowin" } },
      { apiVersion: "networking.k8s.io/v1", kind: "NetworkPolicy", metadata: { name: "deny-all", namespace: "nowin" }, spec: { podSelector: {} } },
      { apiVersion: "v1", kind: "Pod", metadata: { name: "fresh", namespace: "nowin", labels: { app: "fresh" } }, spec: { nodeName: "node1", containers: [{ name: "c", image: "registry.k8s.io/pause:3.10" }] } },
    ].map((object) => JSON.stringify(object)).join("\n---\n"));
    const list = JSON.parse(readFileSync(join(dir, "node1", "net.d", "10-trellis.conflist"), "utf8")) as CniConfList;
    const podNetns = `${TAG}fresh`;
    spawnSync("ip", ["netns", "add", podNetns]);
    const cni = (command: "ADD" | "DEL", name: string) => execCniPlugin({
      command, plugin: join(nativePluginDir({ standalone: false }), "trellis"), cniPath: "/usr/lib/cni", config: pluginConfig(list, 0),
      containerId: `${name}-sandbox`, netns: namedNetnsPath(podNetns), ifname: "eth0", args: `IgnoreUnknown=1;K8S_POD_NAMESPACE=nowin;K8S_POD_NAME=${name}`, node: { name: `${TAG}node1`, path: namedNetnsPath(`${TAG}node1`) },
    });
    const table = () => inNode("node1", ["nft", "list", "table", "inet", "trellis-policy"]);
    try {
      const added = await cni("ADD", "fresh");
      assert.equal(added.code, 0, added.stdout + added.stderr);
      const address = (JSON.parse(added.stdout) as { ips: Array<{ address: string }> }).ips[0].address.split("/")[0];
      // Read at once, no waiting: the rules were in before the answer.
      assert.match(table(), new RegExp(`${address.replace(/[.]/g, "\\.")} : jump ingress-`));
      const deleted = await cni("DEL", "fresh");
      assert.equal(deleted.code, 0, deleted.stdout + deleted.stderr);
      assert.doesNotMatch(table(), new RegExp(`${address.replace(/[.]/g, "\\.")} : jump`));
      const unknown = await cni("ADD", "ghost");
      assert.equal(unknown.code, 1);
      assert.equal((JSON.parse(unknown.stdout) as { code: number }).code, 11, unknown.stdout);
      assert.match(unknown.stdout, /does not know pod nowin\/ghost/);
      assert.doesNotMatch(spawnSync("ip", ["-n", podNetns, "link", "show"], { encoding: "utf8" }).stdout, /eth0/, "the refused ADD's interface was removed");
    } finally {
      spawnSync("ip", ["netns", "del", podNetns]);
      await kubectl(["delete", "namespace", "nowin", "--wait=false"]);
    }
  });

  it("follows ClusterNetworkPolicy once its CRD is installed: an Admin Deny's pods in the node's table, gone with the policy", async () => {
    // Catches: an agent that, having found no CRD at start, never looks again; CNP objects read
    // in another shape than the CRD serves (v1beta1); a Deny rendered as nothing.
    await kubectl(["apply", "-f", "-"], readFileSync(resolve(import.meta.dirname, "../deploy/clusternetworkpolicies.yaml"), "utf8"));
    await kubectl(["wait", "--for=condition=Established", "crd/clusternetworkpolicies.policy.networking.k8s.io", "--timeout=60s"]);
    const cidrs = (await node("node1")).spec.podCIDRs ?? [];
    const [v4, v6] = [cidrs.find((cidr) => !cidr.includes(":"))!.replace(/0\/\d+$/, "70"), cidrs.find((cidr) => cidr.includes(":"))!.replace(/::\/\d+$/, "::70")];
    await kubectl(["apply", "-f", "-"], [
      { apiVersion: "v1", kind: "Namespace", metadata: { name: "guarded" } },
      { apiVersion: "v1", kind: "Pod", metadata: { name: "vault", namespace: "guarded", labels: { app: "vault" } }, spec: { nodeName: "node1", containers: [{ name: "c", image: "registry.k8s.io/pause:3.10" }] } },
    ].map((object) => JSON.stringify(object)).join("\n---\n"));
    await kubectl(["-n", "guarded", "patch", "pod", "vault", "--subresource=status", "--type=merge", "-p", JSON.stringify({ status: { phase: "Running", podIP: v4, podIPs: [{ ip: v4 }, { ip: v6 }] } })]);
    await kubectl(["apply", "-f", "-"], JSON.stringify({
      apiVersion: "policy.networking.k8s.io/v1beta1", kind: "ClusterNetworkPolicy", metadata: { name: "guard-vault" },
      spec: { tier: "Admin", priority: 5, subject: { pods: { namespaceSelector: { matchLabels: { "kubernetes.io/metadata.name": "guarded" } }, podSelector: { matchLabels: { app: "vault" } } } }, ingress: [{ name: "no-one-else", action: "Deny", from: [{ namespaces: { matchExpressions: [{ key: "kubernetes.io/metadata.name", operator: "NotIn", values: ["guarded"] }] } }] }] },
    }));
    const table = () => inNode("node1", ["nft", "list", "table", "inet", "trellis-policy"]);
    const vault = new RegExp(`${v4.replace(/[.]/g, "\\.")} : jump ingress-`);
    await until("node1 judges the vault by the ClusterNetworkPolicy (found within the informer's backoff)", () => vault.test(table()) && / drop$/m.test(table()), 45_000);
    assert.match(readFileSync(agents.get("node1")!.log, "utf8"), /"clusterNetworkPolicies":1/);
    await kubectl(["delete", "clusternetworkpolicy", "guard-vault"]);
    await until("the vault judged by nothing once the policy went", () => !vault.test(table()));
    await kubectl(["delete", "namespace", "guarded", "--wait=false"]);
  });

  it("keeps enforcing through kill -9 of the agent, and applies a policy change made while it was down when it is back", async () => {
    // Catches: a table torn down or flushed when the agent dies (pods open until it is back), and
    // a restart that keeps the rules of a policy deleted meanwhile (the first sync trusting the kernel).
    const cidrs = (await node("node1")).spec.podCIDRs ?? [];
    const v4 = cidrs.find((cidr) => !cidr.includes(":"))!.replace(/0\/\d+$/, "80");
    await kubectl(["apply", "-f", "-"], [
      { apiVersion: "v1", kind: "Namespace", metadata: { name: "durable" } },
      { apiVersion: "v1", kind: "Pod", metadata: { name: "db", namespace: "durable", labels: { app: "db" } }, spec: { nodeName: "node1", containers: [{ name: "c", image: "registry.k8s.io/pause:3.10" }] } },
      { apiVersion: "networking.k8s.io/v1", kind: "NetworkPolicy", metadata: { name: "db-closed", namespace: "durable" }, spec: { podSelector: { matchLabels: { app: "db" } } } },
    ].map((object) => JSON.stringify(object)).join("\n---\n"));
    await kubectl(["-n", "durable", "patch", "pod", "db", "--subresource=status", "--type=merge", "-p", JSON.stringify({ status: { phase: "Running", podIP: v4, podIPs: [{ ip: v4 }] } })]);
    const table = () => inNode("node1", ["nft", "list", "table", "inet", "trellis-policy"]);
    const db = new RegExp(`${v4.replace(/[.]/g, "\\.")} : jump ingress-`);
    await until("the db judged on node1", () => db.test(table()));
    const agent = agents.get("node1")!;
    agent.child.kill("SIGKILL");
    await new Promise<void>((resolveExit) => (agent.child.exitCode !== null || agent.child.signalCode !== null ? resolveExit() : agent.child.once("exit", () => resolveExit())));
    assert.match(table(), db, "the rules stay while the agent is down");
    await kubectl(["-n", "durable", "delete", "networkpolicy", "db-closed"]);
    startAgent("node1", "node1", NODES[0].addresses, kubeconfigs.get("node1")!);
    await until("the restarted agent drops the rules of the policy deleted while it was down", () => !db.test(table()), 60_000);
    await kubectl(["delete", "namespace", "durable", "--wait=false"]);
  });

  it("holds an agent to its own Node: node1's token cannot change node2's published addresses", async () => {
    await until("node2 published", async () => Boolean((await node("node2")).metadata.annotations?.["trellis.dev/node-addresses"]));
    const [answer] = await as(kubeconfigs.get("node1")!, [statusPatch("node2", { metadata: { annotations: { "trellis.dev/node-addresses": "198.18.0.66" } } })]);
    // Bug caught: any agent can rewrite any Node (the ClusterRole's nodes/status patch unchecked),
    // or the policy compares the Node with something other than the token's node.
    assert.equal(answer.status, 403, refusal(answer));
    assert.match(answer.message!, /ValidatingAdmissionPolicy 'trellis-agent-own-node' .*denied request: the trellis agent of node node1 may change only its own Node; this is node2/);
    assert.equal((await node("node2")).metadata.annotations!["trellis.dev/node-addresses"], "fd00:198:18::12,198.18.0.12");
  });

  it("lets an agent change its own trellis.dev/ annotations and NetworkUnavailable condition, and nothing else of its Node", async () => {
    const earlier = await node("node1");
    const now = new Date().toISOString().replace(/\.\d+Z$/, "Z");
    const allowed = await as(kubeconfigs.get("node1")!, [
      statusPatch("node1", { metadata: { annotations: { "trellis.dev/test-mark": "1" } } }),
      statusPatch("node1", { metadata: { annotations: { "trellis.dev/test-mark": null } } }),
      statusPatch("node1", { status: { conditions: [{ type: "NetworkUnavailable", status: "False", reason: "TrellisIsUp", message: "the Trellis agent routes to every peer's pods", lastHeartbeatTime: now }] } }, "application/strategic-merge-patch+json"),
    ]);
    // Bug caught: a policy so tight the agent cannot publish (adding, removing a trellis.dev/ key) or clear NetworkUnavailable.
    assert.deepEqual(allowed.map((answer) => answer.status), [200, 200, 200], allowed.map(refusal).join("\n"));
    const refused = await as(kubeconfigs.get("node1")!, [
      statusPatch("node1", { metadata: { annotations: { "example.com/owner": "node1's agent" } } }),
      statusPatch("node1", { metadata: { labels: { "node-role.kubernetes.io/control-plane": "" } } }),
      statusPatch("node1", { status: { addresses: [{ type: "InternalIP", address: "198.18.0.66" }] } }, "application/strategic-merge-patch+json"),
      statusPatch("node1", { status: { conditions: [{ type: "Ready", status: "False", reason: "AgentSaysSo" }] } }, "application/strategic-merge-patch+json"),
      statusPatch("node1", { metadata: { annotations: { "trellis.dev/node-addresses": "198.18.0.66" }, labels: { "example.com/pool": "a" } } }),
    ]);
    // Bug caught: the agent's token can change what is not the network's on its own Node: another
    // owner's annotation, a label (what schedules pods there), the addresses the kubelet reported,
    // another condition; or an allowed change carries a forbidden one through.
    assert.deepEqual(refused.map((answer) => answer.status), [403, 403, 403, 403, 403], refused.map(refusal).join("\n"));
    assert.match(refused[0].message!, /may change only trellis\.dev\/ annotations of Node node1; this request changes example\.com\/owner$/);
    assert.match(refused[1].message!, /may change only trellis\.dev\/ annotations and the NetworkUnavailable condition of Node node1; this request changes metadata\.labels$/);
    assert.match(refused[2].message!, /this request changes status\.addresses$/);
    assert.match(refused[3].message!, /may change only the NetworkUnavailable condition of Node node1; this request changes Ready$/);
    assert.match(refused[4].message!, /this request changes metadata\.labels$/);
    const later = await node("node1");
    assert.deepEqual(later.metadata.annotations, earlier.metadata.annotations, "node1's annotations are as they were");
    assert.deepEqual(later.metadata.labels, earlier.metadata.labels);
    assert.deepEqual(later.status?.addresses, earlier.status?.addresses);
    assert.equal(later.status?.conditions?.some((condition) => condition.type === "Ready"), false);
  });

  it("refuses the trellis ServiceAccount's token bound to no node on every Node", async () => {
    const unbound = await tokenKubeconfig("trellis-unbound", ["--duration=10m"]);
    const answers = await as(unbound, NODES.map((member) => statusPatch(member.name, { metadata: { annotations: { "trellis.dev/node-addresses": "198.18.0.66" } } })));
    // Bug caught: a token without authentication.kubernetes.io/node-name (an empty name) let through, e.g. by
    // comparing the Node's name with a missing extra that reads as "", or by checking the node only when present.
    for (const [index, answer] of answers.entries()) {
      assert.equal(answer.status, 403, refusal(answer));
      assert.match(answer.message!, new RegExp(`a trellis agent token bound to no node may change no Node \\(this is ${NODES[index].name}\\)`));
    }
  });

  /** Every route of a node's main table, both families. */
  const mainRoutes = (name: string) => inNode(name, ["ip", "-4", "route", "show", "table", "main"]) + inNode(name, ["ip", "-6", "route", "show", "table", "main"]);
  const refusedBy = (nodeName: string, object: string, reason: string) =>
    readFileSync(agents.get(nodeName)!.log, "utf8").split("\n").filter((line) => line.startsWith("{")).map((line) => JSON.parse(line) as Record<string, unknown>)
      .some((entry) => entry.msg === "refused" && entry.object === object && entry.reason === reason);
  /** Events (events.k8s.io) about `name` in `namespace`, as `REASON: NOTE`. */
  const eventsAbout = async (namespace: string, name: string) =>
    ((JSON.parse(await kubectl(["get", "events.events.k8s.io", "-n", namespace, "-o", "json"])) as { items: Array<{ reason: string; note: string; regarding: { name: string } }> }).items)
      .filter((event) => event.regarding.name === name).map((event) => `${event.reason}: ${event.note}`);
  const settle = () => new Promise((resolveWait) => setTimeout(resolveWait, 4_500));
  /** Makes Node `nodeName` and runs an agent for it (in node2's namespace) with `config` until it exits: its exit code and log. */
  const agentOnNewNode = async (nodeName: string, config: string) => {
    await kubectl(["apply", "-f", "-"], JSON.stringify({ apiVersion: "v1", kind: "Node", metadata: { name: nodeName } }));
    mkdirSync(join(dir, nodeName), { recursive: true });
    const child = startAgent("node2", nodeName, ["198.18.0.12"], config);
    const code = await new Promise<number | null>((resolveExit) => child.once("exit", resolveExit));
    return { code, log: readFileSync(agents.get(nodeName)!.log, "utf8") };
  };

  // Bugs caught: a Node's spec.podCIDRs installed unchecked (overlapping node1's, outside the
  // cluster, over the underlay: `route replace` overwrites the kernel's routes), its published
  // addresses taken although its kubelet reports others, and none of it said where an operator
  // looks (the agent's log, Events on the Node).
  it("refuses hostile Nodes (another's pod CIDR, outside the cluster, over the underlay, addresses not its own), changing no route, with Events", async () => {
    const before = new Map(NODES.map((member) => [member.name, mainRoutes(member.name)]));
    const victim = (await node("node1")).spec.podCIDRs!;
    const hostile = [
      { name: "thief", podCIDRs: victim, addresses: "198.18.0.21", reason: "pod-cidr-conflict", event: "PodCIDRConflict" },
      { name: "wide", podCIDRs: ["192.0.0.0/8"], addresses: "198.18.0.22", reason: "pod-cidr-outside-cluster", event: "PodCIDROutsideCluster" },
      { name: "under", podCIDRs: ["198.18.0.0/24"], addresses: "198.18.0.23", reason: "pod-cidr-outside-cluster", event: "PodCIDROutsideCluster" },
      { name: "liar", podCIDRs: ["10.244.200.0/24"], addresses: "198.18.0.200", status: "198.18.0.24", reason: "address-not-in-status", event: "AddressNotInStatus" },
    ];
    for (const entry of hostile) {
      await kubectl(["apply", "-f", "-"], JSON.stringify({ apiVersion: "v1", kind: "Node", metadata: { name: entry.name, annotations: { "trellis.dev/node-addresses": entry.addresses } }, spec: { podCIDR: entry.podCIDRs[0], podCIDRs: entry.podCIDRs } }));
      if (entry.status) await kubectl(["patch", "node", entry.name, "--subresource=status", "--type=merge", "-p", JSON.stringify({ status: { addresses: [{ type: "InternalIP", address: entry.status }] } })]);
    }
    for (const entry of hostile) {
      await until(`both agents refuse ${entry.name} (${entry.reason})`, () => NODES.every((member) => refusedBy(member.name, entry.name, entry.reason)));
      await until(`an Event on Node ${entry.name}`, async () => (await eventsAbout("default", entry.name)).some((event) => event.startsWith(`${entry.event}: node ${entry.name}: `)));
    }
    assert.match((await eventsAbout("default", "thief")).join("\n"), new RegExp(`PodCIDRConflict: node thief: pod CIDR ${victim[0].replace(/[.]/g, "\\.")} overlaps`));
    await settle();
    for (const member of NODES) assert.equal(mainRoutes(member.name), before.get(member.name), `${member.name}'s routes did not change`);
    for (const entry of hostile) await kubectl(["delete", "node", entry.name]);
    await settle();
    for (const member of NODES) assert.equal(mainRoutes(member.name), before.get(member.name), `${member.name}'s routes are as they were after the Nodes went`);
  });

  // Bugs caught: a tenant's externalIPs or load-balancer ingress set to another Service's
  // ClusterIP, the API server's address or a pod's taking that traffic on every node; two
  // Services on one external address and port, the one whose name sorts first winning.
  it("serves no external address that is a ClusterIP, the API server's or a pod's, and gives one claimed twice to the older Service", async () => {
    const web = JSON.parse(await kubectl(["get", "service", "web", "-o", "json"])) as { spec: { clusterIPs: string[] } };
    await kubectl(["create", "namespace", "tenant"]);
    await kubectl(["apply", "-f", "-"], JSON.stringify({
      apiVersion: "v1", kind: "Service", metadata: { name: "grab", namespace: "tenant" },
      spec: { type: "LoadBalancer", ports: [{ name: "http", port: 80 }, { name: "api", port: 6443 }], externalIPs: [web.spec.clusterIPs[0], "198.18.0.2", "10.244.0.77", "198.19.0.5"] },
    }));
    await kubectl(["patch", "service", "grab", "-n", "tenant", "--subresource=status", "--type=merge", "-p", JSON.stringify({ status: { loadBalancer: { ingress: [{ ip: "10.244.0.77" }] } } })]);
    await kubectl(["apply", "-f", "-"], JSON.stringify({ apiVersion: "v1", kind: "Service", metadata: { name: "zz-first", namespace: "tenant" }, spec: { ports: [{ port: 80 }], externalIPs: ["198.19.0.10"] } }));
    // creationTimestamp counts seconds.
    await new Promise((resolveWait) => setTimeout(resolveWait, 1_100));
    await kubectl(["apply", "-f", "-"], JSON.stringify({ apiVersion: "v1", kind: "Service", metadata: { name: "aa-second", namespace: "tenant" }, spec: { ports: [{ port: 80 }], externalIPs: ["198.19.0.10"] } }));
    // Endpoints, so that each served address leads to its Service's own chain (without, to a reject).
    await kubectl(["apply", "-f", "-"], ["grab", "zz-first", "aa-second"].map((service) => JSON.stringify({
      apiVersion: "discovery.k8s.io/v1", kind: "EndpointSlice", metadata: { name: `${service}-1`, namespace: "tenant", labels: { "kubernetes.io/service-name": service } },
      addressType: "IPv4", endpoints: [{ addresses: ["10.244.0.78"], conditions: { ready: true } }],
      ports: service === "grab" ? [{ name: "http", port: 8080, protocol: "TCP" }, { name: "api", port: 8443, protocol: "TCP" }] : [{ port: 8080, protocol: "TCP" }],
    })).join("\n"));
    for (const member of NODES) {
      await until(`${member.name} serves grab's one allowed external address and zz-first's`, () => {
        const rules = ruleset(member.name);
        return /198\.19\.0\.5 \. tcp \. 80 : goto ext-[0-9a-f]+-tenant\/grab\/tcp\/http/.test(rules) && /198\.19\.0\.10 \. tcp \. 80 : goto ext-[0-9a-f]+-tenant\/zz-first\//.test(rules);
      });
      const rules = ruleset(member.name);
      assert.match(rules, new RegExp(`${web.spec.clusterIPs[0].replace(/[.]/g, "\\.")} \\. tcp \\. 80 : goto svc-[0-9a-f]+-default/web/`), "web's ClusterIP still leads to web");
      assert.doesNotMatch(rules, /198\.18\.0\.2 \. tcp \. 6443/, "the API server's address is not taken");
      assert.doesNotMatch(rules, /10\.244\.0\.77 \. tcp/, "no pod address is taken");
      assert.doesNotMatch(rules, /198\.19\.0\.10 \. tcp \. 80 : goto ext-[0-9a-f]+-tenant\/aa-second\//, "the newer claim is not served");
      for (const reason of ["external-ip-reserved", "external-ip-taken"]) {
        assert.ok(refusedBy(member.name, reason === "external-ip-taken" ? "tenant/aa-second" : "tenant/grab", reason), `${member.name} logged ${reason}`);
      }
    }
    await until("Events on the tenant's Services", async () => (await eventsAbout("tenant", "grab")).length >= 1 && (await eventsAbout("tenant", "aa-second")).length >= 1);
    assert.match((await eventsAbout("tenant", "grab")).join("\n"), new RegExp(`ExternalIPReserved: Service tenant/grab: externalIPs ${web.spec.clusterIPs[0].replace(/[.]/g, "\\.")} is the ClusterIP of Service default/web`));
    assert.match((await eventsAbout("tenant", "aa-second")).join("\n"), /ExternalIPTaken: Service tenant\/aa-second: 198\.19\.0\.10 port 80\/TCP is taken by Service tenant\/zz-first/);
    await kubectl(["delete", "service", "zz-first", "-n", "tenant"]);
    for (const member of NODES) await until(`${member.name} gives 198.19.0.10 to aa-second once zz-first is gone`, () => /198\.19\.0\.10 \. tcp \. 80 : goto ext-[0-9a-f]+-tenant\/aa-second\//.test(ruleset(member.name)));
    await kubectl(["delete", "namespace", "tenant", "--wait=false"]);
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
    const { code, log } = await agentOnNewNode("lesser", config);
    assert.equal(code, 1);
    // Bug caught: a refusal swallowed (an agent that runs without publishing), or logged without what was refused.
    assert.match(log, /cannot patch resource "nodes\/status"/);
    assert.match(log, /deploy\/trellis\.yaml's ClusterRole lists what it needs/);
    await kubectl(["delete", "node", "lesser"]);
  });

  it("with a token bound to no node, stops with a log line naming the admission policy, not the ClusterRole", async () => {
    const unbound = await tokenKubeconfig("trellis-unbound-agent", ["--duration=10m"]);
    const { code, log } = await agentOnNewNode("unbound", unbound);
    assert.equal(code, 1);
    // Bug caught: a refusal by the admission policy blamed on the ClusterRole, sending the operator to the wrong fix.
    assert.match(log, /a trellis agent token bound to no node may change no Node/);
    assert.match(log, /deploy\/trellis\.yaml's admission policy trellis-agent-own-node refused it/);
    assert.doesNotMatch(log, /ClusterRole lists what it needs/);
    await kubectl(["delete", "node", "unbound"]);
  });
});
