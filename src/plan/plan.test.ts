import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { formatPrefix } from "../net/ip.js";
import {
  formatPlanFile, loadPlan, parsePlan, planNotes, primaryFamily, samePlan, validatePlan, validatePlanText, type ClusterPlan,
} from "./plan.js";

const v4 = { podCidrs: ["10.244.0.0/16"], serviceCidrs: ["10.96.0.0/16"] };
const v6 = { podCidrs: ["fd00:10:244::/56"], serviceCidrs: ["fd00:10:96::/112"] };
const dual = { podCidrs: ["10.244.0.0/16", "fd00:10:244::/56"], serviceCidrs: ["10.96.0.0/16", "fd00:10:96::/112"] };
const allowedKeys = "podCidrs, serviceCidrs, nodeCidrs, nodeMaskSize, nodePortRange";

function valid(raw: unknown): ClusterPlan {
  const { plan, problems } = validatePlan(raw);
  assert.deepEqual(problems, []);
  assert.ok(plan);
  return plan;
}

function summary(plan: ClusterPlan): unknown {
  return {
    pods: plan.podCidrs.map(formatPrefix),
    services: plan.serviceCidrs.map(formatPrefix),
    nodes: plan.nodeCidrs.map(formatPrefix),
    masks: plan.nodeMaskSize,
    ports: plan.nodePortRange,
  };
}

describe("plan: valid plans", () => {
  it("reads an IPv4-only plan and applies every default", () => {
    const plan = valid(v4);
    assert.equal(primaryFamily(plan), 4);
    assert.deepEqual(summary(plan), {
      pods: ["10.244.0.0/16"], services: ["10.96.0.0/16"], nodes: [], masks: { 4: 24, 6: 64 }, ports: { first: 30000, last: 32767 },
    });
  });

  it("reads an IPv6-only plan", () => {
    const plan = valid({ ...v6, nodeCidrs: ["fd00:198:18::/64"], nodeMaskSize: { ipv6: 72 } });
    assert.equal(primaryFamily(plan), 6);
    assert.deepEqual(summary(plan), {
      pods: ["fd00:10:244::/56"], services: ["fd00:10:96::/112"], nodes: ["fd00:198:18::/64"], masks: { 4: 24, 6: 72 }, ports: { first: 30000, last: 32767 },
    });
  });

  it("reads a dual-stack plan with IPv4 first, from YAML", () => {
    const plan = parsePlan(
      [
        "podCidrs: [10.244.0.0/16, fd00:10:244::/56]",
        "serviceCidrs:",
        "  - 10.96.0.0/16",
        "  - fd00:10:96::/112",
        "nodeCidrs: [198.18.0.0/15, fd00:198:18::/64]",
        "nodeMaskSize: {ipv4: 26, ipv6: 64}",
        "nodePortRange: 31000-31999",
      ].join("\n"),
      "plan.yaml",
    );
    assert.equal(primaryFamily(plan), 4);
    assert.deepEqual(summary(plan), {
      pods: ["10.244.0.0/16", "fd00:10:244::/56"],
      services: ["10.96.0.0/16", "fd00:10:96::/112"],
      nodes: ["198.18.0.0/15", "fd00:198:18::/64"],
      masks: { 4: 26, 6: 64 },
      ports: { first: 31000, last: 31999 },
    });
    assert.deepEqual(planNotes(plan), []);
  });

  it("reads a dual-stack plan with IPv6 first, from JSON", () => {
    const plan = parsePlan(
      JSON.stringify({ podCidrs: ["fd00:10:244::/56", "10.244.0.0/16"], serviceCidrs: ["fd00:10:96::/112", "10.96.0.0/16"] }),
      "plan.json",
    );
    assert.equal(primaryFamily(plan), 6);
    assert.deepEqual(plan.podCidrs.map(formatPrefix), ["fd00:10:244::/56", "10.244.0.0/16"]);
    assert.deepEqual(plan.serviceCidrs.map(formatPrefix), ["fd00:10:96::/112", "10.96.0.0/16"]);
  });

  it("accepts dual-stack pods with single-stack Services and notes what that means", () => {
    const plan = valid({ podCidrs: dual.podCidrs, serviceCidrs: ["10.96.0.0/16"] });
    assert.deepEqual(planNotes(plan), [
      "pods are dual-stack but serviceCidrs has no IPv6 range: every Service gets only an IPv4 ClusterIP, while pods still reach each other over IPv6 (pod CIDR fd00:10:244::/56)",
    ]);
  });

  it("accepts the edges of each size rule", () => {
    valid({ podCidrs: ["10.244.0.0/30"], serviceCidrs: ["10.96.0.0/29"], nodeMaskSize: { ipv4: 30 } });
    valid({ podCidrs: ["fd00:10:244::/48"], serviceCidrs: ["fd00:10:96::/108"], nodeMaskSize: { ipv6: 64 } });
    valid({ podCidrs: ["10.0.0.0/8"], serviceCidrs: ["172.16.0.0/12"], nodeMaskSize: { ipv4: 8 }, nodePortRange: "1-65535" });
    valid({ ...v4, nodeCidrs: [], nodePortRange: "30000-30000" });
  });

  it("writes canonical JSON that reads back to the same plan", () => {
    const plan = valid({ podCidrs: ["FD00:10:244:0::/56", "10.244.0.0/16"], serviceCidrs: ["fd00:10:96:0:0:0:0:0/112"] });
    const text = formatPlanFile(plan);
    assert.equal(
      text,
      `${JSON.stringify(
        {
          podCidrs: ["fd00:10:244::/56", "10.244.0.0/16"],
          serviceCidrs: ["fd00:10:96::/112"],
          nodeCidrs: [],
          nodeMaskSize: { ipv4: 24, ipv6: 64 },
          nodePortRange: "30000-32767",
        },
        null,
        2,
      )}\n`,
    );
    const again = parsePlan(text, "canonical");
    assert.equal(formatPlanFile(again), text);
    assert.ok(samePlan(plan, again));
    assert.ok(!samePlan(plan, valid({ podCidrs: ["fd00:10:244::/56", "10.244.0.0/16"], serviceCidrs: ["fd00:10:96::/112"], nodePortRange: "30000-32000" })));
  });

  it("writes masks only for pod families, so an IPv4-only plan stays valid when read back", () => {
    const text = formatPlanFile(valid(v4));
    assert.match(text, /"nodeMaskSize": \{\n {4}"ipv4": 24\n {2}\}/);
    valid(JSON.parse(text));
  });
});

interface InvalidCase {
  readonly name: string;
  readonly raw?: unknown;
  readonly text?: string;
  readonly problems: readonly string[];
}

const invalidCases: readonly InvalidCase[] = [
  { name: "empty file", text: "", problems: ["the cluster plan is empty: it needs at least podCidrs and serviceCidrs"] },
  {
    name: "not a mapping",
    raw: ["10.244.0.0/16"],
    problems: [`a cluster plan must be a mapping with the keys ${allowedKeys}, got a list of 1 entry`],
  },
  {
    name: "YAML syntax error",
    text: "podCidrs: [10.244.0.0/16\nserviceCidrs: [10.96.0.0/16]\n",
    problems: ["YAML syntax error at line 2, column 1: Flow sequence in block collection must be sufficiently indented and end with a ]"],
  },
  {
    name: "duplicate key",
    text: "podCidrs: [10.244.0.0/16]\npodCidrs: [10.245.0.0/16]\nserviceCidrs: [10.96.0.0/16]\n",
    problems: ["YAML syntax error at line 2, column 1: Map keys must be unique"],
  },
  {
    name: "missing podCidrs",
    raw: { serviceCidrs: ["10.96.0.0/16"] },
    problems: [
      'podCidrs is missing: give 1 CIDR for a single-stack cluster or 2 (one IPv4, one IPv6) for dual-stack, such as ["10.244.0.0/16", "fd00:10:244::/56"]',
    ],
  },
  {
    name: "podCidrs as a string",
    raw: { ...v4, podCidrs: "10.244.0.0/16" },
    problems: ['podCidrs must be a list of CIDRs such as ["10.244.0.0/16", "fd00:10:244::/56"], got the string "10.244.0.0/16"'],
  },
  {
    name: "empty serviceCidrs",
    raw: { ...v4, serviceCidrs: [] },
    problems: ["serviceCidrs is empty: give 1 CIDR for a single-stack cluster or 2 (one IPv4, one IPv6) for dual-stack"],
  },
  {
    name: "nodeCidrs left blank in YAML",
    text: "podCidrs: [10.244.0.0/16]\nserviceCidrs: [10.96.0.0/16]\nnodeCidrs:\n",
    problems: ['nodeCidrs must be a list of CIDRs such as ["198.18.0.0/15", "fd00:198:18::/64"], got no value'],
  },
  {
    name: "a CIDR that is a number",
    raw: { ...v4, podCidrs: [10] },
    problems: ['podCidrs[0] must be a CIDR string such as "10.244.0.0/16", got the number 10'],
  },
  {
    name: "a CIDR without a length",
    raw: { ...v4, podCidrs: ["10.244.0.0"] },
    problems: ['podCidrs[0]: invalid CIDR "10.244.0.0": expected ADDRESS/LENGTH such as 10.244.0.0/24 or fd00::/64'],
  },
  {
    name: "IPv4 host bits",
    raw: { ...v4, serviceCidrs: ["10.96.0.1/16"] },
    problems: ["serviceCidrs[0]: CIDR 10.96.0.1/16 has host bits set: did you mean 10.96.0.0/16?"],
  },
  {
    name: "IPv6 host bits",
    raw: { ...v6, podCidrs: ["fd00:10:244::1/56"] },
    problems: ["podCidrs[0]: CIDR fd00:10:244::1/56 has host bits set: did you mean fd00:10:244::/56?"],
  },
  {
    name: "a Kubernetes flag name as key",
    raw: { ...v4, clusterCidr: ["10.244.0.0/16"] },
    problems: [`unknown key "clusterCidr" (did you mean podCidrs?): allowed keys are ${allowedKeys}`],
  },
  {
    name: "a misspelt key",
    raw: { ...v4, nodePortRnage: "30000-32767" },
    problems: [`unknown key "nodePortRnage" (did you mean nodePortRange?): allowed keys are ${allowedKeys}`],
  },
  {
    name: "an unrelated key",
    raw: { ...v4, mtu: 1450 },
    problems: [`unknown key "mtu": allowed keys are ${allowedKeys}`],
  },
  {
    name: "three pod CIDRs",
    raw: { ...dual, podCidrs: ["10.244.0.0/16", "fd00:10:244::/56", "10.245.0.0/16"] },
    problems: ["podCidrs has 3 CIDRs (10.244.0.0/16, fd00:10:244::/56, 10.245.0.0/16): at most 2 are allowed, one IPv4 and one IPv6"],
  },
  {
    name: "two IPv4 pod CIDRs",
    raw: { ...v4, podCidrs: ["10.244.0.0/16", "10.245.0.0/16"] },
    problems: ["podCidrs has two IPv4 CIDRs (10.244.0.0/16, 10.245.0.0/16): a list takes at most one CIDR per family"],
  },
  {
    name: "two IPv6 node CIDRs",
    raw: { ...v4, nodeCidrs: ["fd00:198:18::/64", "fd00:198:19::/64"] },
    problems: ["nodeCidrs has two IPv6 CIDRs (fd00:198:18::/64, fd00:198:19::/64): a list takes at most one CIDR per family"],
  },
  {
    name: "pod range holds the service range",
    raw: { podCidrs: ["10.96.0.0/12"], serviceCidrs: ["10.96.0.0/16"] },
    problems: ["pod CIDR 10.96.0.0/12 overlaps service CIDR 10.96.0.0/16"],
  },
  {
    name: "service range inside the node range",
    raw: { ...v4, serviceCidrs: ["198.18.0.0/16"], nodeCidrs: ["198.18.0.0/15"] },
    problems: ["service CIDR 198.18.0.0/16 overlaps node CIDR 198.18.0.0/15"],
  },
  {
    name: "IPv6 pod range over the IPv6 node range",
    raw: { podCidrs: ["10.244.0.0/16", "fd00:198:18::/56"], serviceCidrs: ["10.96.0.0/16"], nodeCidrs: ["fd00:198:18::/64"] },
    problems: ["pod CIDR fd00:198:18::/56 overlaps node CIDR fd00:198:18::/64"],
  },
  {
    name: "primary families differ",
    raw: { podCidrs: dual.podCidrs, serviceCidrs: ["fd00:10:96::/112", "10.96.0.0/16"] },
    problems: [
      "primary families differ: podCidrs starts with IPv4 10.244.0.0/16 but serviceCidrs starts with IPv6 fd00:10:96::/112; the first CIDR of each list sets the cluster's primary family, so both lists must start with the same family",
    ],
  },
  {
    name: "dual-stack Services over single-stack pods",
    raw: { podCidrs: ["10.244.0.0/16"], serviceCidrs: dual.serviceCidrs },
    problems: [
      "service CIDR fd00:10:96::/112 is IPv6 but podCidrs has no IPv6 CIDR: an IPv6 ClusterIP can only forward to IPv6 pod IPs, so add an IPv6 pod CIDR or remove this service CIDR",
    ],
  },
  {
    name: "IPv4 service range too small",
    raw: { ...v4, serviceCidrs: ["10.96.0.0/30"] },
    problems: ["service CIDR 10.96.0.0/30 is too small: it has 4 addresses and a service range needs at least 8 (/29 or shorter)"],
  },
  {
    name: "IPv6 service range too small",
    raw: { ...v6, serviceCidrs: ["fd00:10:96::/126"] },
    problems: ["service CIDR fd00:10:96::/126 is too small: it has 4 addresses and a service range needs at least 8 (/125 or shorter)"],
  },
  {
    name: "IPv4 service range too large",
    raw: { ...v4, serviceCidrs: ["100.64.0.0/10"] },
    problems: [
      "service CIDR 100.64.0.0/10 is too large: for IPv4 the mask must be /12 or longer (at most 2^20 addresses), as kube-apiserver requires",
    ],
  },
  {
    name: "IPv6 service range too large",
    raw: { ...v6, serviceCidrs: ["fd00:10:96::/64"] },
    problems: [
      "service CIDR fd00:10:96::/64 is too large: for IPv6 the mask must be /108 or longer (at most 2^20 addresses), as kube-apiserver requires",
    ],
  },
  {
    name: "loopback pods",
    raw: { ...v4, podCidrs: ["127.0.0.0/16"] },
    problems: ["pod CIDR 127.0.0.0/16 overlaps the loopback range 127.0.0.0/8: loopback addresses never leave their host"],
  },
  {
    name: "link-local Services",
    raw: { ...v4, serviceCidrs: ["169.254.0.0/24"] },
    problems: [
      "service CIDR 169.254.0.0/24 overlaps the link-local range 169.254.0.0/16: link-local addresses are valid on one link only and are never routed between nodes",
    ],
  },
  {
    name: "multicast pods",
    raw: { ...v4, podCidrs: ["224.0.0.0/16"] },
    problems: ["pod CIDR 224.0.0.0/16 overlaps the multicast range 224.0.0.0/4: multicast addresses name groups of receivers, never one pod, Service or node"],
  },
  {
    name: "a pod range that swallows multicast",
    raw: { ...v4, podCidrs: ["192.0.0.0/2"], nodeMaskSize: { ipv4: 18 } },
    problems: ["pod CIDR 192.0.0.0/2 overlaps the multicast range 224.0.0.0/4: multicast addresses name groups of receivers, never one pod, Service or node"],
  },
  {
    name: "IPv6 multicast nodes",
    raw: { ...v4, nodeCidrs: ["ff02::/64"] },
    problems: ["node CIDR ff02::/64 overlaps the multicast range ff00::/8: multicast addresses name groups of receivers, never one pod, Service or node"],
  },
  {
    name: "IPv4-mapped Services",
    raw: { ...v6, serviceCidrs: ["::ffff:0:0/112"] },
    problems: [
      "service CIDR ::ffff:0.0.0.0/112 overlaps the IPv4-mapped range ::ffff:0.0.0.0/96: IPv4-mapped addresses stand for IPv4 peers on IPv6 sockets and never travel as IPv6 packets",
    ],
  },
  {
    name: "IPv6 link-local pods",
    raw: { ...v6, podCidrs: ["fe80::/56"] },
    problems: [
      "pod CIDR fe80::/56 overlaps the link-local range fe80::/10: link-local addresses are valid on one link only and are never routed between nodes",
    ],
  },
  {
    name: "IPv6 loopback node",
    raw: { ...v4, nodeCidrs: ["::1/128"] },
    problems: ["node CIDR ::1/128 overlaps the loopback range ::1/128: loopback addresses never leave their host"],
  },
  {
    name: "IPv6 range holding the unspecified address",
    raw: { ...v4, nodeCidrs: ["::/120"] },
    problems: [
      'node CIDR ::/120 overlaps the unspecified address ::/128: it means "no address" and is never a destination',
      "node CIDR ::/120 overlaps the loopback range ::1/128: loopback addresses never leave their host",
    ],
  },
  {
    name: "IPv4 this-network range",
    raw: { ...v4, nodeCidrs: ["0.0.0.0/16"] },
    problems: [
      'node CIDR 0.0.0.0/16 overlaps the "this network" range 0.0.0.0/8: its addresses stand for the sender\'s own network (RFC 1122) and are never a destination',
    ],
  },
  {
    name: "the whole IPv6 space",
    raw: { ...v4, nodeCidrs: ["::/0"] },
    problems: ["node CIDR ::/0 is the whole IPv6 address space: a cluster range must leave every other network reachable"],
  },
  {
    name: "node mask shorter than the pod CIDR",
    raw: { ...v4, nodeMaskSize: { ipv4: 8 } },
    problems: [
      "nodeMaskSize.ipv4 is 8, shorter than pod CIDR 10.244.0.0/16: each node's block must fit inside the cluster CIDR, so set nodeMaskSize.ipv4 from 16 to 30",
    ],
  },
  {
    name: "default node mask shorter than a small pod CIDR",
    raw: { ...v4, podCidrs: ["10.244.0.0/25"] },
    problems: [
      "nodeMaskSize.ipv4 is 24 (the default), shorter than pod CIDR 10.244.0.0/25: each node's block must fit inside the cluster CIDR, so set nodeMaskSize.ipv4 from 25 to 30",
    ],
  },
  {
    name: "IPv6 node mask splitting into more than 2^16 blocks",
    raw: { ...v6, nodeMaskSize: { ipv6: 80 } },
    problems: [
      "nodeMaskSize.ipv6 is 80, 24 bits longer than pod CIDR fd00:10:244::/56: an IPv6 cluster CIDR splits into at most 2^16 node blocks, so set nodeMaskSize.ipv6 from 56 to 72",
    ],
  },
  {
    name: "default IPv6 node mask under a /40",
    raw: { ...v6, podCidrs: ["fd00:11::/40"] },
    problems: [
      "nodeMaskSize.ipv6 is 64 (the default), 24 bits longer than pod CIDR fd00:11::/40: an IPv6 cluster CIDR splits into at most 2^16 node blocks, so set nodeMaskSize.ipv6 from 40 to 56",
    ],
  },
  {
    name: "IPv4 node mask with no room for a pod",
    raw: { ...v4, nodeMaskSize: { ipv4: 31 } },
    problems: [
      "nodeMaskSize.ipv4 is 31: a /31 node block has no address left for a pod after the network, broadcast and gateway addresses; use 30 or less",
    ],
  },
  {
    name: "IPv6 node mask with no room for a pod",
    raw: { ...v6, nodeMaskSize: { ipv6: 127 } },
    problems: ["nodeMaskSize.ipv6 is 127: a /127 node block has no address left for a pod after the network and gateway addresses; use 126 or less"],
  },
  {
    name: "node mask as a string",
    raw: { ...v4, nodeMaskSize: { ipv4: "24" } },
    problems: ['nodeMaskSize.ipv4 must be a prefix length from 0 to 32, got the string "24"'],
  },
  {
    name: "node mask beyond the address length",
    raw: { ...dual, nodeMaskSize: { ipv6: 129 } },
    problems: ["nodeMaskSize.ipv6 must be a prefix length from 0 to 128, got the number 129"],
  },
  {
    name: "node mask for a family without pods",
    raw: { ...v4, nodeMaskSize: { ipv4: 24, ipv6: 64 } },
    problems: ["nodeMaskSize.ipv6 is set but podCidrs has no IPv6 CIDR: remove nodeMaskSize.ipv6 or add an IPv6 pod CIDR"],
  },
  {
    name: "node mask as a number",
    raw: { ...v4, nodeMaskSize: 24 },
    problems: ["nodeMaskSize must be a mapping such as {ipv4: 24, ipv6: 64}, got the number 24"],
  },
  {
    name: "node mask key misspelt",
    raw: { ...v4, nodeMaskSize: { v4: 24 } },
    problems: ['unknown nodeMaskSize key "v4" (did you mean ipv4?): allowed keys are ipv4, ipv6'],
  },
  {
    name: "pod CIDR too small for any node block",
    raw: { ...v4, podCidrs: ["10.244.0.0/31"] },
    problems: ["pod CIDR 10.244.0.0/31 is too small: it has 2 addresses and a node block needs /30 or shorter to hold a pod"],
  },
  {
    name: "NodePort range as a number",
    raw: { ...v4, nodePortRange: 30000 },
    problems: ['nodePortRange must be a string "FIRST-LAST" such as "30000-32767", got the number 30000'],
  },
  {
    name: "NodePort range with a colon",
    raw: { ...v4, nodePortRange: "30000:32767" },
    problems: ['nodePortRange "30000:32767" is not FIRST-LAST: expected two port numbers joined by "-", such as "30000-32767"'],
  },
  {
    name: "NodePort range from port 0",
    raw: { ...v4, nodePortRange: "0-32767" },
    problems: ['nodePortRange "0-32767" has port 0: ports go from 1 to 65535'],
  },
  {
    name: "NodePort range past 65535",
    raw: { ...v4, nodePortRange: "0-70000" },
    problems: ['nodePortRange "0-70000" has ports 0 and 70000: ports go from 1 to 65535'],
  },
  {
    name: "NodePort range reversed",
    raw: { ...v4, nodePortRange: "32767-30000" },
    problems: ['nodePortRange "32767-30000" is reversed: the first port must not exceed the last; did you mean "30000-32767"?'],
  },
];

describe("plan: invalid plans", () => {
  for (const testCase of invalidCases) {
    it(`rejects ${testCase.name}`, () => {
      const result = testCase.text === undefined ? validatePlan(testCase.raw) : validatePlanText(testCase.text);
      assert.deepEqual(result.problems, testCase.problems);
      assert.equal(result.plan, undefined);
    });
  }

  it("reports every problem of a plan at once", () => {
    const result = validatePlanText(
      [
        "podCidrs: [10.96.0.0/12, 10.245.0.1/16, fd00:10:244::/56]",
        "serviceCidrs: [fd00:10:96::/112, 10.96.0.0/16]",
        "nodeCidrs: [198.18.0.0/15, 127.0.0.0/8]",
        "nodeMaskSize: {ipv4: 8, ipv6: 90}",
        "nodePortRange: 32767-30000",
        "dns: 10.96.0.10",
      ].join("\n"),
    );
    assert.deepEqual(result.problems, [
      `unknown key "dns": allowed keys are ${allowedKeys}`,
      "podCidrs has 3 CIDRs (10.96.0.0/12, 10.245.0.1/16, fd00:10:244::/56): at most 2 are allowed, one IPv4 and one IPv6",
      "podCidrs[1]: CIDR 10.245.0.1/16 has host bits set: did you mean 10.245.0.0/16?",
      "nodeCidrs has two IPv4 CIDRs (198.18.0.0/15, 127.0.0.0/8): a list takes at most one CIDR per family",
      'nodePortRange "32767-30000" is reversed: the first port must not exceed the last; did you mean "30000-32767"?',
      "node CIDR 127.0.0.0/8 overlaps the loopback range 127.0.0.0/8: loopback addresses never leave their host",
      "pod CIDR 10.96.0.0/12 overlaps service CIDR 10.96.0.0/16",
      "nodeMaskSize.ipv4 is 8, shorter than pod CIDR 10.96.0.0/12: each node's block must fit inside the cluster CIDR, so set nodeMaskSize.ipv4 from 12 to 30",
      "nodeMaskSize.ipv6 is 90, 34 bits longer than pod CIDR fd00:10:244::/56: an IPv6 cluster CIDR splits into at most 2^16 node blocks, so set nodeMaskSize.ipv6 from 56 to 72",
    ]);
  });

  it("throws one error listing every problem, one per line", () => {
    assert.throws(
      () => parsePlan("podCidrs: [10.244.0.0/16]\nserviceCidrs: [10.96.0.0/30]\nnodePortRange: 31000-30000\n", "bad.yaml"),
      {
        message: [
          "invalid cluster plan bad.yaml:",
          '  nodePortRange "31000-30000" is reversed: the first port must not exceed the last; did you mean "30000-31000"?',
          "  service CIDR 10.96.0.0/30 is too small: it has 4 addresses and a service range needs at least 8 (/29 or shorter)",
        ].join("\n"),
      },
    );
  });
});

describe("plan: files", () => {
  it("loads a plan file and names the path when it cannot", async () => {
    const dir = await mkdtemp(join(tmpdir(), "trellis-plan-"));
    try {
      const path = join(dir, "plan.yaml");
      await writeFile(path, "podCidrs: [10.244.0.0/16]\nserviceCidrs: [10.96.0.0/16]\n");
      assert.deepEqual((await loadPlan(path)).podCidrs.map(formatPrefix), ["10.244.0.0/16"]);
      await assert.rejects(loadPlan(join(dir, "missing.yaml")), { message: `cannot read cluster plan ${join(dir, "missing.yaml")}: no such file` });
      await assert.rejects(loadPlan(dir), { message: `cannot read cluster plan ${dir}: it is a directory, not a file` });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
