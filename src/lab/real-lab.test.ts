import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { describe, it } from "node:test";
import { parseAllDocuments } from "yaml";
import { clusterDnsAddresses, coreDnsManifest, labTrellisManifest } from "./real-lab.js";
import { containerdConfig, kubeletConfig, NODE_VIEW_DIRS } from "./real-nodes.js";

const MANIFEST = readFileSync(resolve(import.meta.dirname, "../../deploy/trellis.yaml"), "utf8");

interface Container {
  name: string;
  env?: Array<{ name: string; value?: string }>;
  envFrom?: Array<{ configMapRef?: { name: string; optional?: boolean } }>;
  volumeMounts?: Array<{ name: string; mountPath: string }>;
}

function daemonSet(text: string) {
  const objects = text.split("\n---\n").map((part) => JSON.parse(part) as { kind: string; spec?: { template: { spec: { containers: Container[]; volumes: Array<{ name: string; hostPath?: { path: string } }> } } } });
  return objects.find((object) => object.kind === "DaemonSet")!.spec!.template.spec;
}

describe("lab/real-lab", () => {
  it("installs deploy/trellis.yaml with the lab's cluster CIDRs, external ranges and mode, changing nothing else", () => {
    // Bug caught: a dual-stack cluster CIDR given to an IPv6-only lab's agents (the manifest's default), or the RBAC and policy documents dropped.
    const text = labTrellisManifest({ families: [6], mode: "vxlan" }, MANIFEST);
    const agent = daemonSet(text).containers.find((container) => container.name === "agent")!;
    const env = Object.fromEntries((agent.env ?? []).map((entry) => [entry.name, entry.value]));
    assert.equal(env.TRELLIS_CLUSTER_CIDR, "fd00:10:244::/56");
    assert.equal(env.TRELLIS_EXTERNAL_IP_CIDRS, "fd00:198:19::/64");
    assert.equal(env.TRELLIS_MODE, "vxlan");
    assert.equal(env.TRELLIS_METRICS_BIND_ADDRESS, "127.0.0.1:9656", "the manifest's other values stay");
    const dual = daemonSet(labTrellisManifest({ families: [4, 6], mode: "auto" }, MANIFEST)).containers.find((container) => container.name === "agent")!;
    assert.equal(dual.env?.find((entry) => entry.name === "TRELLIS_EXTERNAL_IP_CIDRS")?.value, "198.19.0.0/24,fd00:198:19::/64,203.0.113.0/24", "the e2e suite's external range beside the lab's");
    const kinds = text.split("\n---\n").map((part) => (JSON.parse(part) as { kind: string }).kind);
    const original = parseAllDocuments(MANIFEST).map((document) => (document.toJS() as { kind: string }).kind);
    assert.deepEqual(kinds, original);
  });

  it("the manifest takes the API server's address from an optional ConfigMap, and mounts only host paths a node view backs", () => {
    const spec = daemonSet(labTrellisManifest({ families: [4, 6], mode: "auto" }, MANIFEST));
    const agent = spec.containers.find((container) => container.name === "agent")!;
    // Bug caught: an agent that serves the Services reaching the API server only through a Service address nothing serves yet.
    assert.deepEqual(agent.envFrom, [{ configMapRef: { name: "trellis-apiserver", optional: true } }]);
    // Bug caught: a hostPath a node lacks (the manifest once mounted /lib/modules, absent on this machine), which fails the pod's start.
    const backed = new Set([...NODE_VIEW_DIRS.map((entry) => entry.path)]);
    for (const volume of spec.volumes) assert.ok(volume.hostPath && backed.has(volume.hostPath.path), `${volume.name}: ${volume.hostPath?.path}`);
  });

  it("CoreDNS's Service takes the tenth address of each Service CIDR, primary family first", () => {
    assert.deepEqual(clusterDnsAddresses({ families: [4, 6] }), ["10.96.0.10", "fd00:10:96::a"]);
    assert.deepEqual(clusterDnsAddresses({ families: [6] }), ["fd00:10:96::a"]);
    const service = coreDnsManifest({ families: [6, 4] }, "coredns:x").split("\n---\n").map((part) => JSON.parse(part) as { kind: string; spec?: { clusterIPs?: string[]; ipFamilyPolicy?: string } }).find((object) => object.kind === "Service")!;
    assert.deepEqual(service.spec?.clusterIPs, ["fd00:10:96::a", "10.96.0.10"]);
    assert.equal(service.spec?.ipFamilyPolicy, "RequireDualStack");
  });

  it("each node's containerd and kubelet have paths of their own and the settings this machine needs", () => {
    const config = containerdConfig("/run/trellis/lab/l/node1/containerd", "registry.k8s.io/pause:3.10.2");
    // Bug caught: two nodes' runc sharing /run/containerd/runc/k8s.io, or OOM scores this machine refuses.
    for (const line of ['root = "/run/trellis/lab/l/node1/containerd/root"', 'Root = "/run/trellis/lab/l/node1/containerd/runc"', 'address = "/run/trellis/lab/l/node1/containerd/containerd.sock"', "restrict_oom_score_adj = true", "SystemdCgroup = false", 'sandbox_image = "registry.k8s.io/pause:3.10.2"']) {
      assert.ok(config.includes(line), line);
    }
    const kubelet = kubeletConfig({ cgroup: "/trellis-lab-l/node1", daemonCgroup: "/trellis-lab-l/node1-runtime", mountNs: "/m", dir: "/d", containerdSocket: "/d/containerd/containerd.sock" }, "/d/kubelet", "198.18.0.11", { kubeconfig: "/k", caCert: "/ca.crt", clusterDns: ["10.96.0.10"] });
    for (const line of ["cgroupRoot: /trellis-lab-l/node1", "cgroupDriver: cgroupfs", "failCgroupV1: false", "containerRuntimeEndpoint: unix:///d/containerd/containerd.sock", "  - 10.96.0.10", "enforceNodeAllocatable: []"]) {
      assert.ok(kubelet.includes(line), line);
    }
  });
});
