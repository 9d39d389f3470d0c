import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { describe, it } from "node:test";
import { formatIp, parseIp, parsePrefix, type Family } from "../net/ip.js";
import type { BaseChain as ProxyBaseChain, NftSet as ProxySet, Rule } from "../nft/model.js";
import { goto, tableFamilyOf, verdictRule, verdictText } from "../nft/model.js";
import { ruleText } from "../nft/text.js";
import {
  PROXY_TABLE, PROXY_TABLE_NAMES, SHARDS,
  desiredProxyRuleset, ProxyState, proxyRulesetCounts, renderProxyOps, renderProxyChange, renderProxyFull, type ProxyEndpoint, type ProxyNode, type ProxyRuleset, type ProxyServicePort, type ProxyTable,
} from "./service-proxy.js";

/*
 * Every script these tests render is also given to `nft -c -f -` (check mode: the kernel
 * validates the whole transaction, references and busy objects included, then discards it)
 * inside a new network namespace; a change script is checked after the full script it
 * changes, in the same input, since it refers to what that script creates.
 */

const NODE: ProxyNode = {
  name: "node-a",
  addresses: [parseIp("198.18.0.1"), parseIp("127.0.0.1"), parseIp("fd00:198:18::1"), parseIp("::1")],
  podCidrs: [parsePrefix("10.244.0.0/16"), parsePrefix("fd00:10:244::/56")],
};

function endpoint(address: string, port = 8080, extra: Partial<ProxyEndpoint> = {}): ProxyEndpoint {
  return { address: parseIp(address), port, ready: true, serving: true, terminating: false, nodeName: "node-b", ...extra };
}

function servicePort(extra: Partial<ProxyServicePort> = {}): ProxyServicePort {
  return {
    namespace: "default", name: "web", portName: "http", protocol: "TCP", port: 80,
    clusterIPs: [parseIp("10.96.0.10")], externalIPs: [], loadBalancerIPs: [],
    externalTrafficPolicy: "Cluster", internalTrafficPolicy: "Cluster",
    endpoints: [endpoint("10.244.1.5"), endpoint("10.244.2.6")],
    ...extra,
  };
}

const ips = (...texts: string[]) => texts.map(parseIp);

/**
 * A family's tables (the front and its shards) seen as one: every chain and set, the shared
 * maps' elements together. Chains and sets of one name in several tables must be alike.
 */
function table(ruleset: ProxyRuleset, family: Family): ProxyTable {
  const tables = [...ruleset.tables.values()].filter((candidate) => candidate.family === tableFamilyOf(family));
  assert.ok(tables.some((candidate) => candidate.name === PROXY_TABLE), `no IPv${family} front table`);
  const chains = new Map<string, readonly Rule[]>();
  const sets = new Map<string, ProxySet>();
  const baseChains = new Map<string, ProxyBaseChain>();
  for (const one of tables) {
    for (const [name, base] of one.baseChains) baseChains.set(name, base);
    for (const [name, rules] of one.chains) {
      if (chains.has(name)) assert.deepEqual(rules.map(ruleText), chains.get(name)!.map(ruleText), `chain ${name} differs between tables`);
      chains.set(name, rules);
    }
    for (const [name, definition] of one.sets) {
      const known = sets.get(name);
      sets.set(name, { ...definition, elements: new Map([...(known?.elements ?? []), ...definition.elements]) });
    }
  }
  return { family: tableFamilyOf(family), name: "all", baseChains, chains, sets };
}

/** The shard tables (names) a port's chains are in. */
function shardsOf(port: ProxyServicePort): string[] {
  return [...desired([port]).tables.values()].filter((t) => t.name !== PROXY_TABLE).map((t) => t.name);
}

/** The first of `make(0)`, `make(1)`, ... that lands in the shard `port` is in. */
function sameShard(port: ProxyServicePort, make: (i: number) => ProxyServicePort): ProxyServicePort {
  const [shard] = shardsOf(port);
  for (let i = 0; i < 1000; i++) if (shardsOf(make(i))[0] === shard) return make(i);
  throw new Error("no port found in the same shard");
}

/** The one chain named KIND-HASH-ID (the hash is not pinned, its form is). */
function chainName(t: ProxyTable, kind: string, id: string): string {
  const pattern = new RegExp(`^${kind}-[0-9a-f]{8}-${id.replace(/[.]/g, "\\.")}$`);
  const names = [...t.chains.keys(), ...t.sets.keys()].filter((name) => pattern.test(name));
  assert.equal(names.length, 1, `expected one ${kind} for ${id}, found ${JSON.stringify(names)}`);
  return names[0];
}

function rules(t: ProxyTable, name: string): readonly string[] {
  const found = t.chains.get(name);
  assert.ok(found, `no chain ${name}`);
  return found.map(ruleText);
}

/** A set's or map's elements as text: key to verdict ("" in a set). */
function elements(t: ProxyTable, set: string): Record<string, string> {
  return Object.fromEntries([...t.sets.get(set)!.elements].map(([id, element]) => [
    id, element.value ? verdictText(element.value) : element.target ? `${formatIp(element.target[0])} . ${element.target[1]}` : "",
  ]));
}

function t4Definition(t: ProxyTable, set: string): unknown {
  return t.sets.get(set)!.targets;
}

function serviceChains(t: ProxyTable): string[] {
  return [...t.chains.keys()].filter((name) => name.includes("/")).sort();
}

// ---- nft check mode in a throw-away network namespace ----

const UNSHARE = process.getuid?.() === 0 ? ["-n"] : ["-r", "-n"];
const NFT_SKIP = nftUnavailable();

function nftUnavailable(): string | false {
  const probe = spawnSync("unshare", [...UNSHARE, "nft", "-c", "-f", "-"], { input: "add table ip trellis-probe\n", encoding: "utf8" });
  if (probe.error) return `skipped: cannot run "unshare ${UNSHARE.join(" ")} nft -c" (${probe.error.message}); install util-linux and nftables`;
  if (probe.status !== 0) return `skipped: "unshare ${UNSHARE.join(" ")} nft -c" failed: ${probe.stderr.trim()}`;
  return false;
}

function assertNftAccepts(script: string): void {
  const result = spawnSync("unshare", [...UNSHARE, "nft", "-c", "-f", "-"], { input: script, encoding: "utf8", maxBuffer: 1 << 30 });
  assert.equal(result.status, 0, `nft -c rejected the script: ${result.stderr}\n${script.length < 20000 ? script : script.slice(0, 20000)}`);
}

// ---- a model of what the kernel holds, to replay scripts on ----

interface ModelTable {
  readonly chains: Map<string, { hook: string; rules: string[] }>;
  readonly sets: Map<string, { kind: string; definition: string; elements: Map<string, string> }>;
}

/**
 * Applies a script in the dialect the renderers write, refusing what the kernel refuses: a
 * missing object, an element added twice, a reference to nothing, a busy chain or set deleted.
 */
function replay(script: string, model = new Map<string, ModelTable>()): Map<string, ModelTable> {
  for (const line of script.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const fail = (why: string): never => assert.fail(`${why}: ${line}`);
    const words = line.split(" ");
    const [verb, object, familyWord, tableWord, name] = words;
    const rest = words.slice(5).join(" ");
    const key = `${familyWord} ${tableWord}`;
    if (object === "table") {
      if (verb === "add" && !model.has(key)) model.set(key, { chains: new Map(), sets: new Map() });
      else if (verb === "delete" && !model.delete(key)) fail("no such table");
      continue;
    }
    const t = model.get(key) ?? fail("no such table");
    const chain = () => t.chains.get(name) ?? fail("no such chain");
    const setOf = () => t.sets.get(name) ?? fail("no such set");
    switch (`${verb} ${object}`) {
      case "add chain":
        if (!t.chains.has(name)) t.chains.set(name, { hook: rest, rules: [] });
        else if (t.chains.get(name)!.hook !== rest) fail("chain exists with another hook");
        break;
      case "flush chain":
        chain().rules = [];
        break;
      case "delete chain":
        chain();
        if (chainReferenced(t, name)) fail("chain busy");
        t.chains.delete(name);
        break;
      case "add rule":
        for (const target of jumpTargets(rest)) if (!t.chains.has(target)) fail(`rule refers to missing chain ${target}`);
        for (const set of setReferences(rest)) if (!t.sets.has(set)) fail(`rule refers to missing set ${set}`);
        chain().rules.push(rest);
        break;
      case "add set":
      case "add map": {
        const existing = t.sets.get(name);
        if (existing && (existing.kind !== object || existing.definition !== rest)) fail("set exists with another definition");
        if (!existing) t.sets.set(name, { kind: object, definition: rest, elements: new Map() });
        break;
      }
      case "delete set":
      case "delete map":
        if (setOf().kind !== object) fail("wrong kind");
        if ([...t.chains.values()].some((c) => c.rules.some((rule) => setReferences(rule).includes(name)))) fail("set busy");
        t.sets.delete(name);
        break;
      case "add element":
      case "delete element": {
        const set = setOf();
        const items = /^\{ (.*) \}$/.exec(rest)?.[1].split(", ") ?? fail("bad element list");
        for (const item of items) {
          const [elementKey, value = ""] = item.split(" : ");
          if (verb === "delete") {
            if (!set.elements.delete(elementKey)) fail(`no element ${elementKey}`);
            continue;
          }
          if (set.elements.has(elementKey)) fail(`element ${elementKey} exists`);
          for (const target of jumpTargets(value)) if (!t.chains.has(target)) fail(`element refers to missing chain ${target}`);
          set.elements.set(elementKey, value);
        }
        break;
      }
      default:
        fail("unknown command");
    }
  }
  return model;
}

function jumpTargets(text: string): string[] {
  const words = text.split(" ");
  return words.flatMap((word, i) => (word === "jump" || word === "goto" ? [words[i + 1].replace(/,$/, "")] : []));
}

function setReferences(rule: string): string[] {
  return rule.split(" ").filter((word) => word.startsWith("@")).map((word) => word.slice(1));
}

function chainReferenced(t: ModelTable, name: string): boolean {
  for (const chain of t.chains.values()) if (chain.rules.some((rule) => jumpTargets(rule).includes(name))) return true;
  for (const set of t.sets.values()) for (const value of set.elements.values()) if (jumpTargets(value).includes(name)) return true;
  return false;
}

/** Checks a change the two ways it can go wrong: the kernel refusing it, or it not arriving at `after`. */
function assertChangeArrives(before: ProxyRuleset, after: ProxyRuleset): string {
  const change = renderProxyChange(before, after);
  assert.deepEqual(replay(change, replay(renderProxyFull(before))), replay(renderProxyFull(after)));
  SCRIPTS.push({ name: `change (${change.split("\n").length - 1} lines)`, script: renderProxyFull(before) + change });
  return change;
}

/** Every script a test renders, for the nft -c tests at the end. */
const SCRIPTS: { name: string; script: string }[] = [];

function desired(ports: readonly ProxyServicePort[], node = NODE): ProxyRuleset {
  const ruleset = desiredProxyRuleset(node, ports);
  SCRIPTS.push({ name: ports.map((port) => `${port.namespace}/${port.name}:${port.portName}`).join(", ") || "no services", script: renderProxyFull(ruleset) });
  return ruleset;
}

const MASQ_V4 = "ip daddr 10.96.0.10 ip saddr != @pod-cidrs jump mark-for-masquerade";

describe("desiredProxyRuleset", () => {
  it("lays out a front table with the filter hooks and shard tables with the NAT hooks and the Service ports", () => {
    // Catches: a Service port's chains in the front table or in two shards (every change would
    // again touch one large table), hooks in the wrong table, tables for shards without ports.
    const ruleset = desired([servicePort()]);
    const front = ruleset.tables.get(`ip ${PROXY_TABLE}`)!;
    assert.deepEqual([...front.baseChains.keys()].sort(), ["filter-forward", "filter-input", "filter-output", "nat-postrouting"]);
    const shards = [...ruleset.tables.values()].filter((candidate) => candidate.family === "ip" && candidate.name !== PROXY_TABLE);
    assert.equal(shards.length, 1);
    assert.match(shards[0].name, /^trellis-proxy-[0-9a-f]{1,2}$/);
    assert.deepEqual([...shards[0].baseChains.keys()].sort(), ["nat-output", "nat-prerouting"]);
    assert.ok([...shards[0].chains.keys()].some((name) => name.startsWith("svc-")));
    assert.ok(![...front.chains.keys()].some((name) => /^(svc|ep|ext|local)-/.test(name)));
    assert.deepEqual([...desired([]).tables.keys()], [`ip ${PROXY_TABLE}`, `ip6 ${PROXY_TABLE}`], "no Service, no shard");
    const many = desired(Array.from({ length: 400 }, (_, i) => servicePort({ name: `svc-${i}`, clusterIPs: [parseIp(`10.96.${i >> 8}.${i & 255}`)] })));
    assert.equal([...many.tables.keys()].filter((ref) => ref.startsWith("ip ")).length, 1 + SHARDS, `400 ports fill all ${SHARDS} shards`);
  });

  it("lays out the fixed chains and maps of each family", () => {
    // Catches: a dispatch rule that is not one map lookup, NodePorts on loopback, or the filter chains missing a path.
    const t = table(desired([servicePort({ clusterIPs: ips("10.96.0.10", "fd00:10:96::a") })]), 4);
    assert.deepEqual(rules(t, "services"), [
      "ip daddr . meta l4proto . th dport vmap @service-ips",
      "ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports",
    ]);
    assert.deepEqual(rules(t, "nat-prerouting"), ["jump services"]);
    assert.deepEqual(rules(t, "nat-output"), ["jump services"]);
    assert.deepEqual(rules(t, "nat-postrouting"), ["jump masquerading"]);
    assert.deepEqual(rules(t, "masquerading"), [
      "ct status dnat ip saddr . ip daddr . meta l4proto . th dport @hairpin-connections masquerade fully-random",
      "meta mark & 0x00004000 == 0x00000000 return", "meta mark set meta mark ^ 0x00004000", "masquerade fully-random",
    ]);
    assert.deepEqual(rules(t, "filter-input"), ["ct state new jump nodeport-endpoints-check", "ct state new jump service-endpoints-check"]);
    assert.deepEqual(rules(t, "filter-forward"), ["ct state new jump service-endpoints-check", "ct state new jump cluster-ips-check"]);
    assert.deepEqual(rules(t, "filter-output"), ["ct state new jump service-endpoints-check", "ct state new jump cluster-ips-check"]);
    assert.deepEqual(rules(t, "cluster-ips-check"), ["ip daddr @cluster-ips goto reject-chain", "ip daddr @service-cidrs drop"]);
    assert.deepEqual(elements(t, "cluster-ips"), { "10.96.0.10": "" });
    assert.deepEqual(rules(t, "reject-chain"), ['limit rate 100/second burst 200 packets log prefix "no-endpoints" group 2710', "meta l4proto tcp reject with tcp reset", "reject"]);
    assert.deepEqual(elements(t, "nodeport-ips"), { "198.18.0.1": "" });
    assert.deepEqual(elements(t, "pod-cidrs"), { "10.244.0.0/16": "" });
    assert.deepEqual(t.baseChains.get("nat-output"), { type: "nat", hook: "output", priority: -100 });
    assert.deepEqual(t.baseChains.get("nat-postrouting"), { type: "nat", hook: "postrouting", priority: 100 });
    const t6 = table(desired([servicePort({ clusterIPs: ips("10.96.0.10", "fd00:10:96::a") })]), 6);
    assert.deepEqual(elements(t6, "nodeport-ips"), { "fd00:198:18::1": "" });
    assert.deepEqual(rules(t6, "services")[1], "ip6 daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports");
  });

  it("implements a dual-stack ClusterIP in each family with that family's endpoints only", () => {
    // Catches: an IPv6 endpoint in the IPv4 table (nft rejects it, or IPv4 clients DNAT to IPv6), or one family's ClusterIP missing.
    const ruleset = desired([servicePort({
      clusterIPs: ips("10.96.0.10", "fd00:10:96::a"),
      endpoints: [endpoint("10.244.1.5"), endpoint("fd00:10:244:1::5"), endpoint("10.244.2.6")],
    })]);
    const [v4, v6] = [table(ruleset, 4), table(ruleset, 6)];
    const svc4 = chainName(v4, "svc", "default/web/tcp/http");
    assert.deepEqual(elements(v4, "service-ips"), { "10.96.0.10 . tcp . 80": `goto ${svc4}` });
    assert.deepEqual(rules(v4, svc4), [MASQ_V4, `meta l4proto tcp dnat ip addr . port to numgen random mod 2 map @eps-${svc4}`]);
    assert.deepEqual(elements(v4, `eps-${svc4}`), { 0: "10.244.1.5 . 8080", 1: "10.244.2.6 . 8080" });
    assert.deepEqual(t4Definition(v4, `eps-${svc4}`), { family: 4, modulus: 2, protocol: "tcp" });
    assert.deepEqual(serviceChains(v4), [svc4], "no endpoint chains without affinity");

    const svc6 = chainName(v6, "svc", "default/web/tcp/http");
    assert.deepEqual(elements(v6, "service-ips"), { "fd00:10:96::a . tcp . 80": `goto ${svc6}` });
    assert.deepEqual(rules(v6, svc6), ["ip6 daddr fd00:10:96::a ip6 saddr != @pod-cidrs jump mark-for-masquerade", "meta l4proto tcp dnat ip6 to [fd00:10:244:1::5]:8080"]);
    assert.deepEqual(serviceChains(v6), [svc6]);
  });

  it("leaves a single-stack Service, its NodePort included, out of the other family's table", () => {
    // Catches: an IPv4-only NodePort answering on the node's IPv6 address with no endpoint to send it to.
    const t6 = table(desired([servicePort({ nodePort: 30080 })]), 6);
    assert.deepEqual(serviceChains(t6), []);
    for (const set of t6.sets.values()) assert.ok(![...set.elements.keys()].some((key) => key.includes("30080") || key.includes(" . ")), "no element of the IPv4 Service");
  });

  it("gives each port of a Service its own chains, DNATing to that port's target", () => {
    // Catches: two ports sharing a chain (the second port's traffic DNATed to the first's target port), or an unnamed port's name.
    const t = table(desired([
      servicePort({ portName: "http", port: 80, endpoints: [endpoint("10.244.1.5", 8080)] }),
      servicePort({ portName: "metrics", port: 9090, endpoints: [endpoint("10.244.1.5", 9100)] }),
      servicePort({ name: "solo", portName: "", port: 443, clusterIPs: ips("10.96.0.11"), endpoints: [endpoint("10.244.1.9", 8443)] }),
    ]), 4);
    const http = chainName(t, "svc", "default/web/tcp/http");
    const metrics = chainName(t, "svc", "default/web/tcp/metrics");
    const solo = chainName(t, "svc", "default/solo/tcp/");
    assert.deepEqual(elements(t, "service-ips"), {
      "10.96.0.10 . tcp . 80": `goto ${http}`, "10.96.0.10 . tcp . 9090": `goto ${metrics}`, "10.96.0.11 . tcp . 443": `goto ${solo}`,
    });
    assert.deepEqual(rules(t, http).at(-1), "meta l4proto tcp dnat ip to 10.244.1.5:8080");
    assert.deepEqual(rules(t, metrics).at(-1), "meta l4proto tcp dnat ip to 10.244.1.5:9100");
    assert.deepEqual(rules(t, solo).at(-1), "meta l4proto tcp dnat ip to 10.244.1.9:8443");
  });

  it("keys TCP, UDP and SCTP apart and DNATs each with its own protocol", () => {
    // Catches: UDP 53 and TCP 53 colliding in service-ips, or SCTP handled as TCP.
    const t = table(desired([
      servicePort({ name: "dns", portName: "dns", protocol: "UDP", port: 53, endpoints: [endpoint("10.244.1.7", 53)] }),
      servicePort({ name: "dns", portName: "dns-tcp", protocol: "TCP", port: 53, endpoints: [endpoint("10.244.1.7", 53)] }),
      servicePort({ name: "sig", portName: "sctp", protocol: "SCTP", port: 3868, endpoints: [endpoint("10.244.1.8", 3868)] }),
    ]), 4);
    assert.deepEqual(Object.keys(elements(t, "service-ips")).sort(), ["10.96.0.10 . sctp . 3868", "10.96.0.10 . tcp . 53", "10.96.0.10 . udp . 53"]);
    assert.equal(rules(t, chainName(t, "svc", "default/dns/udp/dns")).at(-1), "meta l4proto udp dnat ip to 10.244.1.7:53");
    assert.equal(rules(t, chainName(t, "svc", "default/dns/tcp/dns-tcp")).at(-1), "meta l4proto tcp dnat ip to 10.244.1.7:53");
    assert.equal(rules(t, chainName(t, "svc", "default/sig/sctp/sctp")).at(-1), "meta l4proto sctp dnat ip to 10.244.1.8:3868");
  });

  it("sends a NodePort to the external chain, which masquerades under eTP=Cluster every client but this node's pods", () => {
    // Catches: NodePort traffic DNATed to another node without masquerade (the reply bypasses this
    // node and the client drops it), a pod client included: one on node2 dialling node1's NodePort
    // whose endpoint is on node3 got its reply from node3's pod address and dropped it (the
    // upstream NodePort session affinity specs).
    const t = table(desired([servicePort({ nodePort: 30080 })]), 4);
    const ext = chainName(t, "ext", "default/web/tcp/http");
    const svc = chainName(t, "svc", "default/web/tcp/http");
    assert.deepEqual(elements(t, "service-nodeports"), { "tcp . 30080": `goto ${ext}` });
    assert.deepEqual(rules(t, ext), ["ip saddr != @own-pod-cidrs jump mark-for-masquerade", `goto ${svc}`]);
    const own = table(desiredProxyRuleset({ ...NODE, ownPodCidrs: [parsePrefix("10.244.1.0/24"), parsePrefix("fd00:10:244:1::/64")] }, [servicePort({ nodePort: 30080 })]), 4);
    assert.deepEqual([...own.sets.get("own-pod-cidrs")!.elements.keys()], ["10.244.1.0/24"]);
    assert.deepEqual(elements(t, "service-ips"), { "10.96.0.10 . tcp . 80": `goto ${svc}` });
  });

  it("sends externalIPs and load-balancer IPs to the external chain", () => {
    // Catches: external addresses dispatched straight to the service chain, skipping traffic policy and masquerade.
    const t = table(desired([servicePort({ externalIPs: ips("203.0.113.10", "2001:db8::10"), loadBalancerIPs: ips("198.51.100.7") })]), 4);
    const ext = chainName(t, "ext", "default/web/tcp/http");
    assert.deepEqual(elements(t, "service-ips"), {
      "10.96.0.10 . tcp . 80": `goto ${chainName(t, "svc", "default/web/tcp/http")}`,
      "198.51.100.7 . tcp . 80": `goto ${ext}`,
      "203.0.113.10 . tcp . 80": `goto ${ext}`,
    });
    assert.deepEqual(elements(t, "no-endpoint-services"), {});
  });

  it("keeps ClientIP affinity in a timed set per endpoint, checked before the random choice", () => {
    // Catches: affinity sets without timeout (clients stuck forever), the lookup after numgen (never sticky), or no update in the endpoint chain.
    const t = table(desired([servicePort({ sessionAffinityTimeoutSeconds: 600 })]), 4);
    const svc = chainName(t, "svc", "default/web/tcp/http");
    const [a, b] = ["10.244.1.5", "10.244.2.6"].map((address) => chainName(t, "ep", `default/web/tcp/http__${address}/8080`));
    const [affA, affB] = ["10.244.1.5", "10.244.2.6"].map((address) => chainName(t, "aff", `default/web/tcp/http__${address}/8080`));
    assert.deepEqual(t.sets.get(affA), { kind: "set", key: ["ipv4_addr"], flags: ["dynamic", "timeout"], timeoutSeconds: 600, elements: new Map() });
    assert.deepEqual(rules(t, svc), [MASQ_V4, `ip saddr @${affA} goto ${a}`, `ip saddr @${affB} goto ${b}`, `numgen random mod 2 == 0 goto ${a}`, `goto ${b}`]);
    assert.deepEqual(rules(t, a), [`update @${affA} { ip saddr }`, "meta l4proto tcp dnat ip to 10.244.1.5:8080"]);
    assert.ok(!renderProxyFull(desired([servicePort()])).includes("aff-"), "no affinity sets without ClientIP affinity");
  });

  it("under eTP=Local keeps outside sources on local endpoints and sends pods and the node to any", () => {
    // Catches: external clients DNATed to remote endpoints (source lost), or pods/the node dropped on a node without local endpoints.
    const port = servicePort({
      nodePort: 30080, externalIPs: ips("203.0.113.10"), externalTrafficPolicy: "Local",
      endpoints: [endpoint("10.244.1.5", 8080, { nodeName: "node-a" }), endpoint("10.244.2.6")],
    });
    const t = table(desired([port]), 4);
    const [svc, local, ext] = ["svc", "local", "ext"].map((kind) => chainName(t, kind, "default/web/tcp/http"));
    assert.deepEqual(rules(t, ext), [
      `ip saddr @pod-cidrs goto ${svc}`, "fib saddr type local jump mark-for-masquerade", `fib saddr type local goto ${svc}`, `goto ${local}`,
    ]);
    assert.deepEqual(rules(t, local), ["meta l4proto tcp dnat ip to 10.244.1.5:8080"]);
    assert.deepEqual(rules(t, svc), [MASQ_V4, `meta l4proto tcp dnat ip addr . port to numgen random mod 2 map @eps-${svc}`]);
    assert.deepEqual(elements(t, `eps-${svc}`), { 0: "10.244.1.5 . 8080", 1: "10.244.2.6 . 8080" });
    assert.deepEqual(elements(t, "service-nodeports"), { "tcp . 30080": `goto ${ext}` });
    assert.deepEqual(elements(t, "no-endpoint-nodeports"), {});

    const none = table(desired([{ ...port, endpoints: [endpoint("10.244.2.6")] }]), 4);
    const noneExt = chainName(none, "ext", "default/web/tcp/http");
    const noneSvc = chainName(none, "svc", "default/web/tcp/http");
    assert.deepEqual(rules(none, noneExt), [`ip saddr @pod-cidrs goto ${noneSvc}`, "fib saddr type local jump mark-for-masquerade", `fib saddr type local goto ${noneSvc}`]);
    assert.deepEqual(elements(none, "no-endpoint-nodeports"), { "tcp . 30080": "drop" });
    assert.deepEqual(elements(none, "no-endpoint-services"), { "203.0.113.10 . tcp . 80": "drop" });
    assert.deepEqual(elements(none, "service-ips")["10.96.0.10 . tcp . 80"], `goto ${noneSvc}`);
    assert.ok(![...none.chains.keys()].some((name) => name.startsWith("local-")));
  });

  it("under iTP=Local sends ClusterIP traffic to local endpoints only, rejecting it when there are none", () => {
    // Catches: ClusterIP traffic leaving the node despite iTP=Local, or black-holed instead of refused.
    const local = table(desired([servicePort({ internalTrafficPolicy: "Local", endpoints: [endpoint("10.244.1.5", 8080, { nodeName: "node-a" }), endpoint("10.244.2.6")] })]), 4);
    const chain = chainName(local, "local", "default/web/tcp/http");
    assert.deepEqual(elements(local, "service-ips"), { "10.96.0.10 . tcp . 80": `goto ${chain}` });
    assert.deepEqual(rules(local, chain), [MASQ_V4, "meta l4proto tcp dnat ip to 10.244.1.5:8080"]);
    assert.deepEqual(serviceChains(local), [chain], "no cluster chain");

    const remote = table(desired([servicePort({ internalTrafficPolicy: "Local" })]), 4);
    assert.deepEqual(elements(remote, "service-ips"), {});
    assert.deepEqual(elements(remote, "no-endpoint-services"), { "10.96.0.10 . tcp . 80": "goto reject-chain" });
    assert.deepEqual(serviceChains(remote), []);
  });

  it("rejects every address of a port without usable endpoints, and writes no chain for it", () => {
    // Catches: clients of an empty Service hanging until timeout instead of failing at once, or chains left pointing nowhere.
    const t = table(desired([servicePort({
      nodePort: 30080, externalIPs: ips("203.0.113.10"), loadBalancerIPs: ips("198.51.100.7"),
      endpoints: [endpoint("10.244.1.5", 8080, { ready: false, serving: false })],
    })]), 4);
    assert.deepEqual(elements(t, "no-endpoint-services"), {
      "10.96.0.10 . tcp . 80": "goto reject-chain", "198.51.100.7 . tcp . 80": "goto reject-chain", "203.0.113.10 . tcp . 80": "goto reject-chain",
    });
    assert.deepEqual(elements(t, "no-endpoint-nodeports"), { "tcp . 30080": "goto reject-chain" });
    assert.deepEqual(elements(t, "service-ips"), {});
    assert.deepEqual(elements(t, "service-nodeports"), {});
    assert.deepEqual(serviceChains(t), []);
  });

  it("rejects a ClusterIP's undefined ports and drops the Service CIDRs' unheld addresses, after DNAT", () => {
    // Catches: a connection to a ClusterIP on a port it lacks, or to an address of the Service
    // CIDR no Service holds, following the default route off the node (kube-proxy refuses both);
    // the Service CIDRs not followed when they change (a ServiceCIDR added on the API).
    const node = { ...NODE, serviceCidrs: [parsePrefix("10.96.0.0/16"), parsePrefix("fd00:10:96::/112")] };
    const t = table(desiredProxyRuleset(node, [servicePort(), servicePort({ name: "two", clusterIPs: ips("10.96.0.20") })]), 4);
    assert.deepEqual(elements(t, "cluster-ips"), { "10.96.0.10": "", "10.96.0.20": "" });
    assert.deepEqual(elements(t, "service-cidrs"), { "10.96.0.0/16": "" });
    const state = new ProxyState(node, [servicePort()]);
    const grown = state.withNode({ ...node, serviceCidrs: [...node.serviceCidrs, parsePrefix("10.100.0.0/16")] });
    assert.deepEqual(renderProxyOps(grown.ops).trimEnd().split("\n"), ["add element ip trellis-proxy service-cidrs { 10.100.0.0/16 }"]);
    assert.deepEqual(elements(table(grown.state.ruleset(), 4), "service-cidrs"), { "10.96.0.0/16": "", "10.100.0.0/16": "" });
  });

  it("keeps traffic to the endpoints hinted for this node's zone or this node, falling back as kube-proxy does", () => {
    // Catches: hints ignored (PreferSameZone traffic leaving the zone), a node of a zone no
    // endpoint serves left with none (kube-proxy falls back to every endpoint), hints obeyed when
    // one ready endpoint has none (the controller had not finished), or node hints not preferred.
    const zoned = (address: string, zone: string, node = "node-b", extra: Partial<ProxyEndpoint> = {}) => endpoint(address, 8080, { nodeName: node, zoneHints: [zone], ...extra });
    const port = servicePort({ endpoints: [zoned("10.244.1.5", "zone-a"), zoned("10.244.2.6", "zone-b"), zoned("10.244.2.7", "zone-b")] });
    const dnat = (node: ProxyNode, ports: ProxyServicePort[]) => {
      const t = table(desiredProxyRuleset(node, ports), 4);
      const svc = chainName(t, "svc", "default/web/tcp/http");
      const rule = rules(t, svc).at(-1)!;
      return rule.includes(" map @") ? Object.values(elements(t, `eps-${svc}`)).join(", ") : rule.replace(/^.* to /, "");
    };
    assert.equal(dnat({ ...NODE, zone: "zone-a" }, [port]), "10.244.1.5:8080", "its own zone's one endpoint");
    assert.equal(dnat({ ...NODE, zone: "zone-b" }, [port]), "10.244.2.6 . 8080, 10.244.2.7 . 8080");
    assert.equal(dnat({ ...NODE, zone: "zone-c" }, [port]), "10.244.1.5 . 8080, 10.244.2.6 . 8080, 10.244.2.7 . 8080", "no endpoint for zone-c: every endpoint");
    assert.equal(dnat(NODE, [port]), "10.244.1.5 . 8080, 10.244.2.6 . 8080, 10.244.2.7 . 8080", "a node without a zone: every endpoint");
    const unhinted = servicePort({ endpoints: [zoned("10.244.1.5", "zone-a"), endpoint("10.244.2.6")] });
    assert.equal(dnat({ ...NODE, zone: "zone-a" }, [unhinted]), "10.244.1.5 . 8080, 10.244.2.6 . 8080", "one ready endpoint without a hint: hints ignored");
    const notReady = servicePort({ endpoints: [zoned("10.244.1.5", "zone-a"), endpoint("10.244.2.6", 8080, { ready: false })] });
    assert.equal(dnat({ ...NODE, zone: "zone-a" }, [notReady]), "10.244.1.5:8080", "a not-ready endpoint's missing hint does not count");
    const byNode = servicePort({ endpoints: [zoned("10.244.0.5", "zone-a", "node-a", { nodeHints: ["node-a"] }), zoned("10.244.1.5", "zone-a", "node-c", { nodeHints: ["node-c"] }), zoned("10.244.2.6", "zone-b", "node-b", { nodeHints: ["node-b"] })] });
    assert.equal(dnat({ ...NODE, zone: "zone-a" }, [byNode]), "10.244.0.5:8080", "PreferSameNode: this node's endpoint");
    assert.equal(dnat({ ...NODE, name: "node-d", zone: "zone-a" }, [byNode]), "10.244.0.5 . 8080, 10.244.1.5 . 8080", "no endpoint for this node: its zone's");
  });

  it("falls back to serving terminating endpoints only when none is ready", () => {
    // Catches: connections refused during a rolling update's last pod, or new connections sent to terminating pods while ready ones exist.
    const draining = endpoint("10.244.1.5", 8080, { ready: false, serving: true, terminating: true });
    const gone = endpoint("10.244.1.6", 8080, { ready: false, serving: false, terminating: true });
    const t = table(desired([servicePort({ endpoints: [draining, gone] })]), 4);
    assert.deepEqual(rules(t, chainName(t, "svc", "default/web/tcp/http")).at(-1), "meta l4proto tcp dnat ip to 10.244.1.5:8080");

    const withReady = table(desired([servicePort({ endpoints: [draining, gone, endpoint("10.244.2.6")] })]), 4);
    assert.deepEqual(rules(withReady, chainName(withReady, "svc", "default/web/tcp/http")).at(-1), "meta l4proto tcp dnat ip to 10.244.2.6:8080");
  });

  it("picks each endpoint with probability 1/N and creates no map per Service", () => {
    // Catches: a cascade skewed toward the first endpoints, or a per-port anonymous map (quadratic kernel time at 10,000 Services).
    const addresses = ["10.244.1.1", "10.244.1.2", "10.244.1.3", "10.244.1.4", "10.244.1.5", "10.244.1.6", "10.244.1.7"];
    const t = table(desired([servicePort({ endpoints: addresses.map((address) => endpoint(address)) })]), 4);
    const svc = chainName(t, "svc", "default/web/tcp/http");
    const [dnat] = rules(t, svc).slice(1);
    assert.equal(dnat, `meta l4proto tcp dnat ip addr . port to numgen random mod 7 map @eps-${svc}`);
    assert.deepEqual(elements(t, `eps-${svc}`), Object.fromEntries(addresses.map((address, i) => [i, `${address} . 8080`])), "each numgen value 0-6 names one endpoint");
    // With affinity, a cascade of numgen tests: 1/N, then 1/(N-1) of the rest, ...: uniform.
    const sticky = table(desired([servicePort({ endpoints: addresses.map((address) => endpoint(address)), sessionAffinityTimeoutSeconds: 60 })]), 4);
    let rest = 1;
    const chance = new Map<string, number>();
    for (const rule of rules(sticky, chainName(sticky, "svc", "default/web/tcp/http")).slice(1 + addresses.length)) {
      const match = /^(?:numgen random mod (\d+) == 0 )?goto (\S+)$/.exec(rule);
      assert.ok(match, rule);
      const share = match[1] ? rest / Number(match[1]) : rest;
      chance.set(match[2], share);
      rest -= share;
    }
    assert.equal(chance.size, addresses.length);
    for (const share of chance.values()) assert.ok(Math.abs(share - 1 / addresses.length) < 1e-12, String(share));
    assert.ok(![...sticky.chains.values()].flat().some((rule) => ruleText(rule).includes("vmap {")), "no anonymous verdict map in a Service chain");
  });

  it("marks hairpin traffic and off-cluster ClusterIP clients for masquerade", () => {
    // Catches: a pod reaching itself through its Service getting a reply from its own address (dropped), or off-cluster clients' replies not coming back through the node.
    const t = table(desired([servicePort({ endpoints: [endpoint("10.244.1.5", 8080, { nodeName: "node-a" }), endpoint("10.244.2.6")] })]), 4);
    // Local endpoints only: a remote endpoint's hairpin connection never passes this node's postrouting.
    assert.deepEqual(elements(t, "hairpin-connections"), { "10.244.1.5 . 10.244.1.5 . tcp . 8080": "" });
    assert.equal(rules(t, "masquerading")[0], "ct status dnat ip saddr . ip daddr . meta l4proto . th dport @hairpin-connections masquerade fully-random");
    assert.equal(rules(t, chainName(t, "svc", "default/web/tcp/http"))[0], MASQ_V4);
    // Two ports to one endpoint claim one element; it stays while either does.
    const state = new ProxyState(NODE, [servicePort({ endpoints: [endpoint("10.244.1.5", 8080, { nodeName: "node-a" })] }), servicePort({ name: "other", endpoints: [endpoint("10.244.1.5", 8080, { nodeName: "node-a" })] })]);
    state.update([servicePort({ name: "other", endpoints: [endpoint("10.244.1.5", 8080, { nodeName: "node-a" })] })], []);
    assert.deepEqual(elements(table(state.ruleset(), 4), "hairpin-connections"), { "10.244.1.5 . 10.244.1.5 . tcp . 8080": "" });
    assert.deepEqual(rules(t, "mark-for-masquerade"), ["meta mark set meta mark | 0x00004000"]);
  });

  it("is the same whatever the order of ports, endpoints and addresses", () => {
    // Catches: a watch delivering objects in another order rewriting chains (the endpoint cascade reordered) on every sync.
    const ports = [
      servicePort({ externalIPs: ips("203.0.113.10", "203.0.113.9"), endpoints: [endpoint("10.244.1.5"), endpoint("10.244.2.6"), endpoint("10.244.0.7")] }),
      servicePort({ name: "api", nodePort: 30081 }),
    ];
    const shuffled = [{ ...ports[1] }, { ...ports[0], externalIPs: [...ports[0].externalIPs].reverse(), endpoints: [...ports[0].endpoints].reverse() }];
    const [a, b] = [desired(ports), desired(shuffled)];
    assert.deepEqual(a, b);
    assert.equal(renderProxyFull(a), renderProxyFull(b));
    assert.equal(renderProxyChange(a, b), "");
  });

  it("gives the first port in order an address, protocol and port two ports claim", () => {
    // Catches: two Services with one externalIP:port writing the same map key twice, which fails the whole transaction.
    const t = table(desired([
      servicePort({ name: "b", externalIPs: ips("203.0.113.10") }),
      servicePort({ name: "a", clusterIPs: ips("10.96.0.11"), externalIPs: ips("203.0.113.10") }),
    ]), 4);
    assert.equal(elements(t, "service-ips")["203.0.113.10 . tcp . 80"], `goto ${chainName(t, "ext", "default/a/tcp/http")}`);
  });

  it("gives a key two ports claim to a ClusterIP over an external address, then to the older Service", () => {
    // Catches: a tenant's Service (older, and in a namespace that sorts first) taking another
    // Service's ClusterIP traffic through its externalIPs; a newer Service taking an external
    // address and port that an older one serves.
    const ports = [
      servicePort({ name: "victim", clusterIPs: ips("10.96.0.11"), createdAt: "2026-12-02T00:00:00Z" }),
      servicePort({ namespace: "aaa", name: "tenant", clusterIPs: ips("10.96.0.12"), externalIPs: ips("10.96.0.11", "203.0.113.10"), createdAt: "2026-12-01T00:00:00Z" }),
      servicePort({ namespace: "a", name: "newer", clusterIPs: ips("10.96.0.13"), externalIPs: ips("203.0.113.10"), createdAt: "2026-12-03T00:00:00Z" }),
    ];
    const t = table(desired(ports), 4);
    assert.equal(elements(t, "service-ips")["10.96.0.11 . tcp . 80"], `goto ${chainName(t, "svc", "default/victim/tcp/http")}`);
    assert.equal(elements(t, "service-ips")["203.0.113.10 . tcp . 80"], `goto ${chainName(t, "ext", "aaa/tenant/tcp/http")}`);
    // Port by port, the same: the victim's ClusterIP comes after the tenant's claim, and takes it.
    const state = new ProxyState(NODE, ports.slice(1));
    assert.equal(elements(table(state.ruleset(), 4), "service-ips")["10.96.0.11 . tcp . 80"], `goto ${chainName(t, "ext", "aaa/tenant/tcp/http")}`);
    state.update([], [ports[0]]);
    assert.deepEqual(state.ruleset(), desired(ports));
  });

  it("names chains uniquely within nft's limit, for the longest names Kubernetes allows and IPv6 endpoints", () => {
    // Catches: a truncated or colliding chain name sending one Service's traffic to another's endpoints, or nft refusing a name.
    const long = "a".repeat(63);
    const ports = [
      // Service port names are DNS labels of up to 63 (the upstream e2e names one "mutable-named-port").
      servicePort({ namespace: long, name: long, portName: "p".repeat(63), protocol: "SCTP", clusterIPs: ips("fd00:10:96::a"), endpoints: [endpoint("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe", 65535)], sessionAffinityTimeoutSeconds: 10 }),
      servicePort({ namespace: "a-b", name: "c", clusterIPs: ips("fd00:10:96::b"), endpoints: [endpoint("::ffff:1.2.3.4"), endpoint("0:0:0:ffff:1:2:3:4")], sessionAffinityTimeoutSeconds: 60 }),
      servicePort({ namespace: "a", name: "b-c", clusterIPs: ips("fd00:10:96::c") }),
    ];
    const t = table(desired(ports), 6);
    const names = [...t.chains.keys(), ...t.sets.keys()];
    assert.equal(new Set(names).size, names.length);
    for (const name of names) {
      assert.ok(name.length <= 255, `${name.length} characters: ${name}`);
      assert.match(name, /^[A-Za-z_.][A-Za-z0-9_./-]*$/);
    }
    assert.equal(serviceChains(t).filter((name) => name.startsWith("ep-") && name.includes("-a-b/c/")).length, 2, "::ffff:1.2.3.4 and ::ffff:1:2:3:4 get two chains");
  });

  it("refuses values that could not go into a script, naming them", () => {
    // Catches: a bad port or name reaching nft and failing the whole sync with an nft parse error instead of naming the Service.
    const node = desiredProxyRuleset.bind(undefined, NODE);
    assert.throws(() => node([servicePort({ port: 0 })]), /service port default\/web:http: port 0 is outside 1-65535/);
    assert.throws(() => node([servicePort({ nodePort: 65536 })]), /nodePort 65536 is outside 1-65535/);
    assert.throws(() => node([servicePort({ endpoints: [endpoint("10.244.1.5", 1.5)] })]), /endpoint 10\.244\.1\.5 port 1\.5 is outside 1-65535/);
    assert.throws(() => node([servicePort({ namespace: "Default" })]), /namespace "Default" is not a DNS label/);
    assert.throws(() => node([servicePort({ name: "web/x" })]), /name "web\/x" is not a DNS label/);
    assert.throws(() => node([servicePort({ portName: "p".repeat(64) })]), /port name "p{64}" is not a DNS label/);
    assert.throws(() => node([servicePort({ portName: "Http" })]), /port name "Http" is not a DNS label/);
    assert.doesNotThrow(() => node([servicePort({ portName: "mutable-named-port" })]));
    assert.throws(() => node([servicePort({ protocol: "ICMP" as "TCP" })]), /protocol "ICMP" is not TCP, UDP or SCTP/);
    assert.throws(() => node([servicePort({ sessionAffinityTimeoutSeconds: 0 })]), /session affinity timeout 0 is outside 1-86400/);
    assert.throws(() => node([servicePort({ clusterIPs: [{ family: 4, value: 1n << 32n }] })]), /4294967296 is not an IPv4 address/);
    assert.throws(() => node([servicePort(), servicePort()]), /service port default\/web\/tcp\/http is listed twice/);

    const good = desiredProxyRuleset(NODE, [servicePort()]);
    const t = good.tables.get(`ip ${PROXY_TABLE}`)!;
    const injected: ProxyRuleset = { tables: new Map([...good.tables, [`ip ${PROXY_TABLE}`, { ...t, chains: new Map([...t.chains, ["services", [verdictRule([], goto("x\nflush ruleset"))]]]) }]]) };
    assert.throws(() => renderProxyFull(injected), /nftables chain name "x\\nflush ruleset" is not allowed/);
    const badName: ProxyRuleset = { tables: new Map([...good.tables, [`ip ${PROXY_TABLE}`, { ...t, chains: new Map([...t.chains, ["bad name", []]]) }]]) };
    assert.throws(() => renderProxyChange(good, badName), /nftables chain name "bad name" is not allowed/);
  });

  it("counts chains, rules and elements per family", () => {
    // Catches: the sync metrics reporting one family, or rules instead of elements.
    const ruleset = desired([servicePort({ clusterIPs: ips("10.96.0.10", "fd00:10:96::a"), endpoints: [endpoint("10.244.1.5"), endpoint("fd00:10:244:1::5")] })]);
    // 13 fixed chains with 23 rules (front 9, shard 4); svc (2 rules: masquerade off-cluster
    // clients, DNAT); nodeport-ips in the front and the shard, the ClusterIP in cluster-ips,
    // pod-cidrs and one service-ips element in the shard.
    assert.deepEqual(proxyRulesetCounts(ruleset), [
      { family: 4, chains: 14, rules: 25, elements: 5 },
      { family: 6, chains: 14, rules: 25, elements: 5 },
    ]);
  });
});

describe("ProxyState", () => {
  /** A small deterministic generator, so a failure can be replayed. */
  function random(seed: number): () => number {
    let state = seed;
    return () => {
      state = (state * 1103515245 + 12345) % 2147483648;
      return state / 2147483648;
    };
  }

  /** Ports that share addresses and NodePorts, use affinity and traffic policies, and bring a family of their own. */
  function variant(pick: () => number, name: string): ProxyServicePort {
    const n = 1 + Math.floor(pick() * 4);
    const endpoints = Array.from({ length: Math.floor(pick() * 4) }, (_, k) =>
      endpoint(pick() < 0.3 ? `fd00:10:244::${n}${k}` : `10.244.${n}.${k + 1}`, 8080, { nodeName: pick() < 0.5 ? "node-a" : "node-b", ready: pick() < 0.8, serving: true, terminating: pick() < 0.3 }),
    );
    return servicePort({
      name,
      clusterIPs: pick() < 0.2 ? ips(`fd00:10:96::${n}`) : pick() < 0.5 ? ips(`10.96.0.${n}`, `fd00:10:96::${n}`) : ips(`10.96.0.${n}`),
      // Now and then another port's ClusterIP, which must stay that port's whichever came first.
      externalIPs: pick() < 0.4 ? ips("203.0.113.10") : pick() < 0.2 ? ips(`10.96.0.${1 + Math.floor(pick() * 4)}`) : [],
      createdAt: `2026-12-0${1 + Math.floor(pick() * 3)}T00:00:00Z`,
      nodePort: pick() < 0.4 ? 30000 + n : undefined,
      protocol: pick() < 0.3 ? "UDP" : "TCP",
      sessionAffinityTimeoutSeconds: pick() < 0.3 ? 60 * n : undefined,
      externalTrafficPolicy: pick() < 0.3 ? "Local" : "Cluster",
      internalTrafficPolicy: pick() < 0.2 ? "Local" : "Cluster",
      endpoints,
    });
  }

  it("updated port by port, holds the ruleset worked out whole, and its steps get the kernel there", () => {
    // Catches: a claim on a shared map key passing to the wrong port when its holder goes, a
    // removed port's chains or affinity sets left behind, a family's table not made or removed,
    // and steps that differ from the whole comparison's.
    const node: ProxyNode = { ...NODE, addresses: ips("198.18.0.1"), podCidrs: [parsePrefix("10.244.0.0/16")] };
    for (const seed of [1, 2, 3, 4, 5]) {
      const pick = random(seed);
      let current = Array.from({ length: 6 }, (_, i) => variant(pick, `svc-${i}`));
      const state = new ProxyState(node, current);
      assert.deepEqual(state.ruleset(), desired(current, node));
      let model = replay(renderProxyFull(state.ruleset()));
      for (let step = 0; step < 25; step++) {
        const removed = current.filter(() => pick() < 0.3);
        const changed = removed.filter(() => pick() < 0.7).map((port) => variant(pick, port.name));
        const fresh = pick() < 0.3 ? [variant(pick, `new-${step}`)] : [];
        const ops = state.update(removed, [...changed, ...fresh]);
        current = [...current.filter((port) => !removed.includes(port)), ...changed, ...fresh];
        const whole = desired(current, node);
        assert.deepEqual(state.ruleset(), whole, `seed ${seed}, step ${step}`);
        const script = renderProxyOps(ops);
        model = replay(script, model);
        assert.deepEqual(model, replay(renderProxyFull(whole)), `seed ${seed}, step ${step}: the steps do not arrive\n${script}`);
      }
    }
  });

  it("refuses a port it already holds, and one it does not hold to remove, changing nothing", () => {
    // Catches: a second copy of a port claiming its keys twice, which a later removal half undoes.
    const ports = [servicePort(), servicePort({ name: "api", clusterIPs: ips("10.96.0.11") })];
    const state = new ProxyState(NODE, ports);
    assert.throws(() => state.update([], [servicePort()]), /listed twice/);
    assert.throws(() => state.update([servicePort({ name: "nothing" })], []), /not in the ruleset/);
    assert.deepEqual(state.ruleset(), desired(ports));
  });

  it("changes one of 10,000 Services in far less time than it takes to work out all", () => {
    // Catches: an update that touches every port (a sort, a copy, a scan of every chain).
    const ports = Array.from({ length: 10_000 }, (_, i) => servicePort({ name: `svc-${i}`, clusterIPs: [parseIp(`10.96.${i >> 8}.${i & 255}`)], endpoints: [endpoint(`10.244.${i >> 8}.${i & 255}`)] }));
    const t0 = performance.now();
    const state = new ProxyState(NODE, ports);
    const whole = performance.now() - t0;
    const t1 = performance.now();
    for (let i = 0; i < 100; i++) state.update([ports[i]], [(ports[i] = { ...ports[i], endpoints: [endpoint(`10.245.0.${i}`)] })]);
    const one = (performance.now() - t1) / 100;
    console.log(`# ProxyState, 10,000 ports: built in ${whole.toFixed(0)} ms, one changed in ${one.toFixed(2)} ms`);
    assert.ok(one < whole / 100, `one change ${one} ms against ${whole} ms for all`);
  });
});

describe("renderProxyFull", () => {
  it("replaces the tables in one transaction whether or not they exist, deleting an unused family's", () => {
    // Catches: a first sync failing because `delete table` found nothing, or a stale IPv6 table left behind on an IPv4-only node.
    const script = renderProxyFull(desired([servicePort()], { ...NODE, addresses: ips("198.18.0.1"), podCidrs: [parsePrefix("10.244.0.0/16")] }));
    const lines = script.split("\n");
    assert.match(lines[0], /^# .*affinity/);
    assert.deepEqual(lines.slice(1, 4), ["add table ip trellis-proxy", "delete table ip trellis-proxy", "add table ip trellis-proxy"]);
    const last = `trellis-proxy-${(SHARDS - 1).toString(16)}`;
    assert.deepEqual(lines.slice(-3), [`add table ip6 ${last}`, `delete table ip6 ${last}`, ""]);
    // Every table the proxy may use is written or deleted: a shard emptied while the agent was away goes too.
    const mentioned = new Set(lines.flatMap((line) => /^(?:add|delete) table (ip6? \S+)$/.exec(line)?.[1] ?? []));
    assert.equal(mentioned.size, 2 * (1 + SHARDS));
    assert.ok(lines.some((line) => /^add chain ip trellis-proxy-[0-9a-f]+ nat-prerouting \{ type nat hook prerouting priority -100; policy accept; \}$/.test(line)));
    assert.ok(lines.includes("add chain ip trellis-proxy filter-output { type filter hook output priority 0; policy accept; }"));
    assert.ok(lines.some((line) => /^add map ip trellis-proxy-[0-9a-f]+ service-ips \{ type ipv4_addr \. inet_proto \. inet_service : verdict; \}$/.test(line)));
    assert.ok(lines.some((line) => /^add element ip trellis-proxy-[0-9a-f]+ service-ips \{ 10\.96\.0\.10 \. tcp \. 80 : goto svc-[0-9a-f]{8}-default\/web\/tcp\/http \}$/.test(line)));
  });
});

describe("renderProxyChange", () => {
  const web = servicePort({ nodePort: 30080, externalIPs: ips("203.0.113.10") });
  const api = servicePort({ name: "api", clusterIPs: ips("10.96.0.20", "fd00:10:96::14"), sessionAffinityTimeoutSeconds: 300, endpoints: [endpoint("10.244.3.1"), endpoint("fd00:10:244:3::1")] });
  const dns = servicePort({ name: "dns", portName: "dns", protocol: "UDP", port: 53, clusterIPs: ips("10.96.0.53"), endpoints: [endpoint("10.244.1.7", 53)] });
  // A port in api's shard, so that the shard's table stays when api goes and the steps within it show.
  const pad = sameShard(api, (i) => servicePort({ name: `pad-${i}`, clusterIPs: ips("10.96.0.99", "fd00:10:96::99") }));
  const before = desired([web, api, dns, pad]);
  /** Shard tables named alike, so that expected lines need not know the hash. */
  const norm = (text: string) => text.replace(/trellis-proxy-[0-9a-f]+\b/g, "trellis-proxy-S");

  it("is empty when nothing changed", () => {
    // Catches: a sync that rewrites something every time (churn, and lost affinity) although nothing changed.
    assert.equal(renderProxyChange(before, desired([pad, dns, api, web])), "");
  });

  it("touches only the changed Service's chains and elements", () => {
    // Catches: a Service update rewriting other Services' chains, the O(n) resync kube-proxy's nftables mode avoids.
    const after = desired([{ ...web, endpoints: [...web.endpoints, endpoint("10.244.3.9")] }, api, dns, pad]);
    const change = assertChangeArrives(before, after);
    const lines = norm(change).trimEnd().split("\n");
    const t = table(after, 4);
    const svc = chainName(t, "svc", "default/web/tcp/http");
    // A third endpoint: the modulus changes, so the map is made again with the chain that uses it.
    assert.deepEqual(lines, [
      `flush chain ip trellis-proxy-S ${svc}`,
      `delete map ip trellis-proxy-S eps-${svc}`,
      `add map ip trellis-proxy-S eps-${svc} { typeof numgen random mod 3 : ip daddr . tcp dport; }`,
      `add rule ip trellis-proxy-S ${svc} ${MASQ_V4}`,
      `add rule ip trellis-proxy-S ${svc} meta l4proto tcp dnat ip addr . port to numgen random mod 3 map @eps-${svc}`,
      `add element ip trellis-proxy-S eps-${svc} { 0 : 10.244.1.5 . 8080, 1 : 10.244.2.6 . 8080, 2 : 10.244.3.9 . 8080 }`,
    ]);
    // An endpoint replaced by another: one element, the chain untouched.
    const replaced = desired([{ ...web, endpoints: [web.endpoints[0], endpoint("10.244.3.9")] }, api, dns, pad]);
    assert.deepEqual(norm(assertChangeArrives(before, replaced)).trimEnd().split("\n"), [
      `delete element ip trellis-proxy-S eps-${svc} { 1 }`,
      `add element ip trellis-proxy-S eps-${svc} { 1 : 10.244.3.9 . 8080 }`,
    ]);
  });

  it("removes a Service's elements before the chains they point to, and its affinity sets", () => {
    // Catches: `delete chain` of a chain a map element or rule still points to, which fails the transaction (EBUSY).
    const change = assertChangeArrives(before, desired([web, dns, pad]));
    const lines = norm(change).trimEnd().split("\n");
    const firstChainDelete = lines.findIndex((line) => line.startsWith("delete chain"));
    const elementDelete = lines.findIndex((line) => line.startsWith("delete element ip trellis-proxy-S service-ips { 10.96.0.20 . tcp . 80 }"));
    assert.ok(elementDelete >= 0 && elementDelete < firstChainDelete, change);
    assert.ok(lines.some((line) => /^delete set ip6 trellis-proxy-S aff-[0-9a-f]{8}-default\/api\/tcp\/http__fd00_10_244_3__1\/8080$/.test(line)), change);
    assert.ok(lines.every((line) => !line.includes("/web/") && !line.includes("/dns/")), change);
    // Without pad, api's shard has nothing left: its table goes whole.
    const alone = desired([web, dns]);
    assert.match(norm(renderProxyChange(desired([web, api, dns]), alone)), /^delete table ip trellis-proxy-S$/m);
  });

  it("recreates an affinity set whose timeout changed, with the chains that use it", () => {
    // Catches: `add set` with a new timeout being a silent no-op or an error on kernels that cannot change it in place.
    const change = norm(assertChangeArrives(before, desired([web, { ...api, sessionAffinityTimeoutSeconds: 60 }, dns, pad])));
    assert.match(change, /^delete set ip trellis-proxy-S aff-[0-9a-f]{8}-default\/api\/tcp\/http__10\.244\.3\.1\/8080$/m);
    assert.match(change, /^add set ip trellis-proxy-S aff-\S+ \{ type ipv4_addr; flags dynamic,timeout; timeout 60s; \}$/m);
    assert.ok(change.indexOf("flush chain ip trellis-proxy-S svc-") < change.indexOf("delete set ip trellis-proxy-S aff-"), change);
  });

  it("swaps map elements when a Service loses its endpoints, and gets them back", () => {
    // Catches: a key added to no-endpoint-services while still in service-ips' old value, or a value change written as a second add.
    const empty = desired([{ ...web, endpoints: [] }, api, dns, pad]);
    const change = assertChangeArrives(before, empty);
    assert.match(change, /^add element ip trellis-proxy no-endpoint-services \{ 10\.96\.0\.10 \. tcp \. 80 : goto reject-chain, 203\.0\.113\.10 \. tcp \. 80 : goto reject-chain \}$/m);
    assertChangeArrives(empty, before);
    const local = desired([{ ...web, externalTrafficPolicy: "Local" }, api, dns, pad]);
    assertChangeArrives(before, local);
    assertChangeArrives(local, before);
  });

  it("replaces an element whose value changed by deleting it first", () => {
    // Catches: `add element` of a key the map already holds (EEXIST, the whole sync fails) when iTP=Local moves a ClusterIP to the local chain.
    const local = desired([{ ...web, internalTrafficPolicy: "Local", endpoints: [...web.endpoints, endpoint("10.244.0.9", 8080, { nodeName: "node-a" })] }, api, dns, pad]);
    const change = assertChangeArrives(before, local);
    const lines = norm(change).split("\n");
    const deleted = lines.indexOf("delete element ip trellis-proxy-S service-ips { 10.96.0.10 . tcp . 80 }");
    const added = lines.findIndex((line) => /^add element ip trellis-proxy-S service-ips \{ 10\.96\.0\.10 \. tcp \. 80 : goto local-/.test(line));
    assert.ok(deleted >= 0 && added > deleted, change);
  });

  it("changes pod CIDRs and node addresses as set elements, not Service chains", () => {
    // Catches: a node address change rewriting every Service's chains.
    const moved = desired([web, api, dns, pad], { ...NODE, addresses: ips("198.18.0.2", "fd00:198:18::1"), podCidrs: [parsePrefix("10.244.0.0/16"), parsePrefix("10.250.0.0/16"), parsePrefix("fd00:10:244::/56")] });
    const change = assertChangeArrives(before, moved);
    const lines = change.trimEnd().split("\n");
    const shards = [...before.tables.values()].filter((t) => t.family === "ip" && t.name !== PROXY_TABLE).map((t) => t.name).sort((a, b) => PROXY_TABLE_NAMES.indexOf(a) - PROXY_TABLE_NAMES.indexOf(b));
    assert.deepEqual(lines, [
      "delete element ip trellis-proxy nodeport-ips { 198.18.0.1 }",
      "add element ip trellis-proxy nodeport-ips { 198.18.0.2 }",
      ...shards.flatMap((shard) => [
        `delete element ip ${shard} nodeport-ips { 198.18.0.1 }`,
        `add element ip ${shard} pod-cidrs { 10.250.0.0/16 }`,
        `add element ip ${shard} nodeport-ips { 198.18.0.2 }`,
      ]),
    ]);
  });

  it("creates and deletes a family's table as the node gains and loses it", () => {
    // Catches: a change script that flushes chains in a table that does not exist yet, or leaves an unused family's table behind.
    const v4only = desired([web, dns, { ...pad, clusterIPs: ips("10.96.0.99") }], { ...NODE, addresses: ips("198.18.0.1"), podCidrs: [parsePrefix("10.244.0.0/16")] });
    const grown = assertChangeArrives(v4only, before);
    assert.match(grown, /^add table ip6 trellis-proxy$/m);
    const shrunk = assertChangeArrives(before, v4only);
    assert.match(shrunk, /^delete table ip6 trellis-proxy$/m);
    assert.ok(!shrunk.includes("add table ip trellis-proxy"), "the IPv4 table is changed in place");
  });
});

describe("nft -c accepts every rendered script", () => {
  it("accepts each full and change script", { skip: NFT_SKIP }, () => {
    // Catches: syntax nft does not parse, types the kernel refuses, or a change that refers to objects in the wrong order.
    assert.ok(SCRIPTS.length > 20, `only ${SCRIPTS.length} scripts collected`);
    for (const { name, script } of SCRIPTS) {
      try {
        assertNftAccepts(script);
      } catch (error) {
        throw new Error(`script for ${name}: ${(error as Error).message}`);
      }
    }
    console.log(`# nft -c accepted ${SCRIPTS.length} scripts`);
  });
});

describe("scale", () => {
  const services = 10_000;
  const perService = 5;
  const ports: ProxyServicePort[] = [];
  for (let i = 0; i < services; i++) {
    const endpoints: ProxyEndpoint[] = [];
    for (let j = 0; j < perService; j++) {
      const n = i * perService + j;
      endpoints.push(endpoint(`10.${244 + (n >> 16)}.${(n >> 8) & 255}.${n & 255}`, 8080, { nodeName: j === 0 ? "node-a" : "node-b" }));
    }
    ports.push(servicePort({ namespace: `ns-${i % 100}`, name: `svc-${i}`, clusterIPs: [parseIp(`10.96.${i >> 8}.${i & 255}`)], endpoints }));
  }
  const node: ProxyNode = { ...NODE, podCidrs: [parsePrefix("10.244.0.0/14")] };
  let full = "";

  it("computes and renders 10,000 Services x 5 endpoints", () => {
    // Catches: a quadratic step in desired/render/diff that makes a large cluster's sync take seconds.
    const t0 = performance.now();
    const ruleset = desiredProxyRuleset(node, ports);
    const t1 = performance.now();
    full = renderProxyFull(ruleset);
    const t2 = performance.now();
    const changed = desiredProxyRuleset(node, ports.map((port, i) => (i === 4242 ? { ...port, endpoints: port.endpoints.slice(1) } : port)));
    const t3 = performance.now();
    const change = renderProxyChange(ruleset, changed);
    const t4 = performance.now();
    const state = new ProxyState(node, ports);
    const t5 = performance.now();
    const stateChange = renderProxyOps(state.update([ports[4242]], [{ ...ports[4242], endpoints: ports[4242].endpoints.slice(1) }]));
    const t6 = performance.now();
    assert.equal(stateChange, change);
    const [counts] = proxyRulesetCounts(ruleset);
    console.log(
      `# 10,000 Services x 5 endpoints: desired ${(t1 - t0).toFixed(0)} ms, full render ${(t2 - t1).toFixed(0)} ms ` +
        `(${(full.length / 1e6).toFixed(1)} MB, ${counts.chains} chains, ${counts.rules} rules, ${counts.elements} elements); ` +
        `one Service changed: desired ${(t3 - t2).toFixed(0)} ms, change render ${(t4 - t3).toFixed(0)} ms (${change.split("\n").length - 1} lines); ` +
        `port by port (ProxyState.update): ${(t6 - t5).toFixed(1)} ms`,
    );
    // The front's 9 fixed chains, each shard's 4, and a chain per Service (none per endpoint without affinity).
    assert.equal(counts.chains, 9 + 4 * SHARDS + services);
    assert.ok(change.split("\n").length < 10, change);
  });

  it("is accepted by nft -c at that size", { skip: NFT_SKIP }, () => {
    // Catches: a construct that parses in small scripts but hits a limit (line length, element count) at scale.
    assert.ok(full, "the scale test above rendered a script");
    const t0 = performance.now();
    assertNftAccepts(full);
    console.log(`# nft -c of the 10,000-Service script: ${(performance.now() - t0).toFixed(0)} ms`);
  });
});
