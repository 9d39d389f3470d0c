import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { validatePlanText } from "../plan/plan.js";
import { labNodeZone } from "./state.js";
import { isLabNetnsName, kubePodMemberName, labLayout, parseLabOptions, podNameConflict } from "./topology.js";

describe("lab/topology", () => {
  it("defaults to 3 dual-stack nodes with 2 pods each, mode auto, one subnet, named lab", () => {
    assert.deepEqual(parseLabOptions({}), { name: "lab", nodes: 3, podsPerNode: 2, family: "dual", mode: "auto", subnets: 1, store: undefined, podLabels: { app: "probe" }, namespaceLabels: {}, zones: 0, kubernetes: false, kubelet: false, kubeProxy: false, referenceCni: false });
  });

  it("--kubelet makes a Kubernetes lab (real nodes need the control plane) and refuses a Trellis store by its own name", () => {
    // Bug caught: --kubelet alone building no control plane (no control host) and failing later on an undefined one.
    const options = parseLabOptions({ kubelet: true, name: "r" });
    assert.equal(options.kubernetes, true);
    assert.ok(labLayout(options).control);
    assert.throws(() => parseLabOptions({ kubelet: true, store: "etcd" }), (error: Error) => /^--store etcd and --kubelet: a Kubernetes lab keeps its cluster in its own API server/.test(error.message));
    // The baseline needs real nodes and a Service proxy: each flag brings what it stands on.
    assert.deepEqual(((options) => [options.kubernetes, options.kubelet, options.kubeProxy])(parseLabOptions({ referenceCni: true })), [true, true, true]);
    assert.deepEqual(((options) => [options.kubelet, options.referenceCni])(parseLabOptions({ kubeProxy: true })), [true, false]);
  });

  it("refuses a Trellis store for a Kubernetes lab, and names the control host and Kubernetes pods' namespaces as the lab's", () => {
    assert.throws(() => parseLabOptions({ kubernetes: true, store: "etcd" }), (error: Error) => /^--store etcd and --kubernetes: a Kubernetes lab keeps its cluster in its own API server, not in a Trellis store$/.test(error.message));
    const layout = labLayout(parseLabOptions({ kubernetes: true, name: "k" }));
    assert.deepEqual(layout.control?.addresses, ["198.18.0.2", "fd00:198:18::2"]);
    assert.equal(labLayout(parseLabOptions({ name: "k" })).control, undefined);
    assert.ok(isLabNetnsName("k", "k-control") && isLabNetnsName("k", "k-kp-0123abcd"));
    assert.ok(!isLabNetnsName("k", "k-kp-0123") && !isLabNetnsName("k", "k-kp-0123abcd-x"));
  });

  it("names every bad value and what is allowed, all at once", () => {
    assert.throws(
      () => parseLabOptions({ name: "a/b", nodes: "0", podsPerNode: "21", family: "ipv5", mode: "bgp", subnets: "3", podLabels: "app=web,tier" }),
      (error: Error) => {
        const lines = error.message.split("\n");
        assert.equal(lines.length, 7, error.message);
        assert.match(lines[0], /^--name "a\/b" is invalid: a lab name starts with a lowercase letter, holds only lowercase letters, digits and "-"/);
        assert.equal(lines[1], '--nodes "0" is invalid: expected a whole number from 1 to 20');
        assert.equal(lines[2], '--pods-per-node "21" is invalid: expected a whole number from 1 to 20');
        assert.equal(lines[3], '--family "ipv5" is invalid: expected one of ipv4, ipv6, dual');
        assert.equal(lines[4], '--mode "bgp" is invalid: expected one of direct, vxlan, auto');
        assert.equal(lines[5], '--subnets "3" is invalid: expected one of 1, 2');
        assert.equal(lines[6], '--pod-labels "tier" is not a label: expected KEY=VALUE (e.g. app=web,tier=front)');
        return true;
      },
    );
  });

  // Bug caught: more zones than nodes (a zone no node is in), or zones assigned so that one zone
  // holds every node (nothing to prefer).
  it("takes --zones from 1 to the node count and spreads the nodes over them round robin", () => {
    assert.equal(parseLabOptions({}).zones, 0, "no zones unless asked");
    assert.equal(parseLabOptions({ nodes: "3", zones: "2" }).zones, 2);
    assert.throws(() => parseLabOptions({ nodes: "3", zones: "4" }), /--zones "4" is invalid: expected a whole number from 1 to 3/);
    assert.throws(() => parseLabOptions({ nodes: "3", zones: "0" }), /--zones "0" is invalid/);
    assert.throws(() => parseLabOptions({ zones: "two" }), /--zones "two" is invalid/);
    assert.deepEqual(["node1", "node2", "node3", "node4"].map((node) => labNodeZone({ zones: 2 }, node)), ["zone-1", "zone-2", "zone-1", "zone-2"]);
    assert.equal(labNodeZone({}, "node1"), undefined);
    assert.equal(labNodeZone({ zones: 2 }, "external"), undefined);
  });

  // Bug caught: a label Kubernetes refuses written to the Pod objects (their apply then fails mid-way through lab up).
  it("parses --pod-labels as Kubernetes labels", () => {
    assert.deepEqual(parseLabOptions({ podLabels: "app=web,example.com/tier=front,empty=" }).podLabels, { app: "web", "example.com/tier": "front", empty: "" });
    assert.deepEqual(parseLabOptions({ podLabels: "" }).podLabels, {});
    assert.throws(() => parseLabOptions({ podLabels: "a b=c" }), /^Error: --pod-labels "a b=c" is not a label: /);
    assert.throws(() => parseLabOptions({ podLabels: `app=${"x".repeat(64)}` }), /is not a label: must be no more than 63 characters/);
    assert.throws(() => parseLabOptions({ podLabels: "app=a,app=b" }), /--pod-labels gives app twice/);
  });

  // Bug caught: a namespace label Kubernetes refuses written to the lab's store or API server, or
  // a bad one named as a --pod-labels problem (the user looks at the wrong flag).
  it("parses --namespace-labels as Kubernetes labels, naming that flag", () => {
    assert.deepEqual(parseLabOptions({ namespaceLabels: "team=blue,example.com/tier=1" }).namespaceLabels, { team: "blue", "example.com/tier": "1" });
    assert.throws(() => parseLabOptions({ namespaceLabels: "team=a\nb" }), /^Error: --namespace-labels "team=a\\nb" is not a label: /);
    assert.throws(() => parseLabOptions({ namespaceLabels: "team=x,team=y" }), /--namespace-labels gives team twice/);
  });

  it("refuses names that are too long, upper case, or end with a dash, and numbers that are not whole", () => {
    assert.throws(() => parseLabOptions({ name: "a".repeat(33) }), /--name "a{33}" is 33 characters long; at most 32 are allowed/);
    assert.throws(() => parseLabOptions({ name: "Lab" }), /--name "Lab" is invalid/);
    assert.throws(() => parseLabOptions({ name: "lab-" }), /--name "lab-" is invalid/);
    assert.throws(() => parseLabOptions({ nodes: "2.5" }), /--nodes "2.5" is invalid/);
    assert.throws(() => parseLabOptions({ nodes: "1e1" }), /--nodes "1e1" is invalid/);
  });

  it("takes etcd stores the nodes can reach, and refuses loopback ones with the way out", () => {
    assert.equal(parseLabOptions({ store: "etcd" }).store, "etcd");
    assert.equal(parseLabOptions({ store: "etcd://198.18.0.200:2379" }).store, "etcd://198.18.0.200:2379");
    assert.throws(() => parseLabOptions({ store: "etcd://127.0.0.1:2379" }), /127\.0\.0\.1 is each node's own loopback.*--store etcd/);
    assert.throws(() => parseLabOptions({ store: "mysql://x" }), /--store: invalid store "mysql:\/\/x": unknown kind of store; .*or --store etcd for an etcd the lab runs itself/);
  });

  it("lays out a dual-stack lab: one bridge, nodes .11 .12 .13 and ::11 ::12 ::13, external .200, pods per node", () => {
    const layout = labLayout(parseLabOptions({ name: "t", mode: "direct" }));
    assert.deepEqual(layout.families, [4, 6]);
    assert.equal(layout.underlayNetns, "t-underlay");
    assert.deepEqual(layout.subnets, [{ index: 0, bridge: "br0", prefixes: ["198.18.0.0/24", "fd00:198:18::/64"], router: ["198.18.0.1", "fd00:198:18::1"] }]);
    assert.deepEqual(layout.nodes.map((node) => [node.name, node.netnsName, node.subnet, node.bridgePort, ...node.interfaceAddresses]), [
      ["node1", "t-node1", 0, "node1", "198.18.0.11/24", "fd00:198:18::11/64"],
      ["node2", "t-node2", 0, "node2", "198.18.0.12/24", "fd00:198:18::12/64"],
      ["node3", "t-node3", 0, "node3", "198.18.0.13/24", "fd00:198:18::13/64"],
    ]);
    assert.deepEqual(layout.external.addresses, ["198.18.0.200", "fd00:198:18::200"]);
    assert.deepEqual(layout.pods.map((pod) => [pod.name, pod.node, pod.netnsName, pod.containerId]).slice(0, 3), [
      ["node1-pod0", "node1", "t-node1-pod0", "t-node1-pod0"],
      ["node1-pod1", "node1", "t-node1-pod1", "t-node1-pod1"],
      ["node2-pod0", "node2", "t-node2-pod0", "t-node2-pod0"],
    ]);
    assert.equal(layout.pods.length, 6);
  });

  it("alternates nodes over two subnets, each with its own bridge and router address", () => {
    const layout = labLayout(parseLabOptions({ subnets: "2", nodes: "4" }));
    assert.deepEqual(layout.subnets.map((subnet) => [subnet.bridge, ...subnet.prefixes, ...subnet.router]), [
      ["br0", "198.18.0.0/24", "fd00:198:18::/64", "198.18.0.1", "fd00:198:18::1"],
      ["br1", "198.18.1.0/24", "fd00:198:18:1::/64", "198.18.1.1", "fd00:198:18:1::1"],
    ]);
    assert.deepEqual(layout.nodes.map((node) => node.addresses), [
      ["198.18.0.11", "fd00:198:18::11"],
      ["198.18.1.12", "fd00:198:18:1::12"],
      ["198.18.0.13", "fd00:198:18::13"],
      ["198.18.1.14", "fd00:198:18:1::14"],
    ]);
    assert.equal(layout.external.subnet, 0);
  });

  it("gives a single-stack lab only that family's addresses and plan ranges", () => {
    const v6 = labLayout(parseLabOptions({ family: "ipv6" }));
    assert.deepEqual(v6.nodes[0].interfaceAddresses, ["fd00:198:18::11/64"]);
    assert.deepEqual(v6.subnets[0].router, ["fd00:198:18::1"]);
    assert.deepEqual(JSON.parse(v6.planText).podCidrs, ["fd00:10:244::/56"]);
    const v4 = labLayout(parseLabOptions({ family: "ipv4" }));
    assert.deepEqual(v4.external.interfaceAddresses, ["198.18.0.200/24"]);
    assert.deepEqual(JSON.parse(v4.planText).serviceCidrs, ["10.96.0.0/16"]);
  });

  it("writes a plan that `trellis plan check` accepts: pods /24 and /64 per node, Services, IPv4 first, the underlay as node CIDRs", () => {
    const { planText } = labLayout(parseLabOptions({}));
    const { plan, problems } = validatePlanText(planText);
    assert.deepEqual(problems, []);
    assert.ok(plan);
    assert.deepEqual(JSON.parse(planText), {
      podCidrs: ["10.244.0.0/16", "fd00:10:244::/56"],
      serviceCidrs: ["10.96.0.0/16", "fd00:10:96::/112"],
      nodeCidrs: ["198.18.0.0/16", "fd00:198:18::/48"],
      nodeMaskSize: { ipv4: 24, ipv6: 64 },
      nodePortRange: "30000-32767",
    });
  });

  // Bug caught: `lab pod add external --node node1` accepted, after which `lab exec external` ran in the pod.
  it("keeps every host's name from pods: the nodes, external, underlay and control", () => {
    const nodes = ["node1", "node2", "node3"];
    assert.equal(podNameConflict("external", nodes, false), 'pod name "external" is taken by the lab\'s external host; lab members are named uniquely: nodes node1…node3, external, underlay, and its pods');
    assert.equal(podNameConflict("node2", nodes, false), 'pod name "node2" is taken by the lab\'s node node2; lab members are named uniquely: nodes node1…node3, external, underlay, and its pods');
    assert.match(podNameConflict("underlay", nodes, false)!, /^pod name "underlay" is taken by the lab's underlay, the namespace joining its nodes; /);
    assert.match(podNameConflict("control", nodes, false)!, /^pod name "control" is kept for the control-plane host of Kubernetes labs; /);
    assert.equal(podNameConflict("control", ["node1"], true), 'pod name "control" is taken by the lab\'s control-plane host; lab members are named uniquely: node node1, external, underlay, control, and its pods');
    assert.match(podNameConflict("node1", ["node1", "node2"], false)!, /: nodes node1, node2, external, underlay, and its pods$/);
    for (const free of ["node4", "node1-pod0", "web", "externals", "constructor", "__proto__"]) assert.equal(podNameConflict(free, nodes, true), undefined, free);
  });

  // Bug caught: a Pod made with kubectl and called node1 listed as "node1", so `lab exec node1` could mean either.
  it("names a Kubernetes Pod by its name, or with its namespace where the name is another's or not in default", () => {
    const nodes = ["node1", "node2"];
    assert.equal(kubePodMemberName("default", "web-1", nodes), "web-1");
    assert.equal(kubePodMemberName("kube-system", "coredns", nodes), "kube-system/coredns");
    for (const host of ["node1", "node2", "external", "underlay", "control"]) assert.equal(kubePodMemberName("default", host, nodes), `default/${host}`);
    assert.equal(kubePodMemberName("default", "node3", nodes), "node3");
  });

  it("recognizes its own namespaces and never another lab's", () => {
    for (const name of ["lab-underlay", "lab-external", "lab-node1", "lab-node12-pod3"]) assert.ok(isLabNetnsName("lab", name), name);
    for (const name of ["lab-x-node1", "lab-node1-underlay", "labnode1", "lab-node1-pod", "other-node1", "lab-"]) assert.ok(!isLabNetnsName("lab", name), name);
    assert.ok(isLabNetnsName("lab-node1", "lab-node1-node2"));
    assert.ok(!isLabNetnsName("lab-node1", "lab-node1-pod0"));
  });
});
