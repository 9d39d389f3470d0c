import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { parseIp, parsePrefix, prefixInterval, type Family, type IpInterval } from "../net/ip.js";
import { NAME_MAX } from "../nft/names.js";
import { encodeBatch } from "../nft/netlink.js";
import { renderOps } from "../nft/text.js";
import {
  desiredMasquerade, masqueradeMatches, masqueradeOps, masqueradeProblems, parseMasqueradeTable,
  type MasqueradeContribution, type MasqueradeRule, type MasqueradeTable,
} from "./masquerade.js";

/*
 * Fixtures are the `nftables` array of `nft -j list table inet t` (nftables 1.0.6), taken in a
 * throw-away network namespace after `nft -f` of the script noted above each (the NAMED ones,
 * the CNI's table: after the netlink writer's batch).
 */

/**
 * The table Trellis once wrote for BLUE and RED, with sets in its rules (the form the parser still reads):
 *   add table inet t
 *   add chain inet t postrouting { type nat hook postrouting priority srcnat; policy accept; }
 *   add chain inet t masq-blue
 *   add rule inet t masq-blue ip saddr { 10.244.1.0/24 } ip daddr != { 10.244.0.0/16, 224.0.0.0/4 } masquerade
 *   add rule inet t masq-blue ip6 saddr { fd00:10:244:1::/64 } ip6 daddr != { fd00:10:244::/56, ff00::/8 } masquerade
 *   add chain inet t masq-red
 *   add rule inet t masq-red ip saddr { 10.245.0.0/24 } ip daddr != { 10.96.0.10/32, 10.245.0.0/23, 10.245.2.0/25, 224.0.0.0/4 } masquerade
 *   add rule inet t postrouting jump masq-blue
 *   add rule inet t postrouting jump masq-red
 * nft prints each one-element set as a bare prefix, the /32 as a bare address, and
 * 10.245.0.0/23 + 10.245.2.0/25 as one range, 10.245.0.0-10.245.2.127.
 */
const TWO_NETWORKS: readonly unknown[] = [
  {"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
  {"table": {"family": "inet", "name": "t", "handle": 1}},
  {"chain": {"family": "inet", "table": "t", "name": "postrouting", "handle": 1, "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}},
  {"chain": {"family": "inet", "table": "t", "name": "masq-blue", "handle": 2}},
  {"chain": {"family": "inet", "table": "t", "name": "masq-red", "handle": 7}},
  {"rule": {"family": "inet", "table": "t", "chain": "postrouting", "handle": 10, "expr": [{"jump": {"target": "masq-blue"}}]}},
  {"rule": {"family": "inet", "table": "t", "chain": "postrouting", "handle": 11, "expr": [{"jump": {"target": "masq-red"}}]}},
  {"rule": {"family": "inet", "table": "t", "chain": "masq-blue", "handle": 4, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "10.244.1.0", "len": 24}}}}, {"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": {"set": [{"prefix": {"addr": "10.244.0.0", "len": 16}}, {"prefix": {"addr": "224.0.0.0", "len": 4}}]}}}, {"masquerade": null}]}},
  {"rule": {"family": "inet", "table": "t", "chain": "masq-blue", "handle": 6, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "saddr"}}, "right": {"prefix": {"addr": "fd00:10:244:1::", "len": 64}}}}, {"match": {"op": "!=", "left": {"payload": {"protocol": "ip6", "field": "daddr"}}, "right": {"set": [{"prefix": {"addr": "fd00:10:244::", "len": 56}}, {"prefix": {"addr": "ff00::", "len": 8}}]}}}, {"masquerade": null}]}},
  {"rule": {"family": "inet", "table": "t", "chain": "masq-red", "handle": 9, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "10.245.0.0", "len": 24}}}}, {"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": {"set": ["10.96.0.10", {"range": ["10.245.0.0", "10.245.2.127"]}, {"prefix": {"addr": "224.0.0.0", "len": 4}}]}}}, {"masquerade": null}]}},
];

/**
 * Adjacent halves written as two elements, as another writer (or an older Trellis) might:
 *   add rule inet t masq-blue ip saddr { 10.244.1.0/25, 10.244.1.128/25 } ip daddr != { 10.244.1.0/25, 10.244.1.128/25, 224.0.0.0/4 } masquerade
 *   add rule inet t postrouting jump masq-blue
 * nft merges them: one set element 10.244.1.0/24 (a set still, `{ 10.244.1.0/24 }`).
 */
const MERGED_HALVES: readonly unknown[] = [
  {"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
  {"table": {"family": "inet", "name": "t", "handle": 1}},
  {"chain": {"family": "inet", "table": "t", "name": "postrouting", "handle": 1, "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}},
  {"chain": {"family": "inet", "table": "t", "name": "masq-blue", "handle": 2}},
  {"rule": {"family": "inet", "table": "t", "chain": "postrouting", "handle": 6, "expr": [{"jump": {"target": "masq-blue"}}]}},
  {"rule": {"family": "inet", "table": "t", "chain": "masq-blue", "handle": 5, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"set": [{"prefix": {"addr": "10.244.1.0", "len": 24}}]}}}, {"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": {"set": [{"prefix": {"addr": "10.244.1.0", "len": 24}}, {"prefix": {"addr": "224.0.0.0", "len": 4}}]}}}, {"masquerade": null}]}},
];

/**
 * masq-blue as Trellis writes it for BLUE_V4, plus a rule someone else added to the chain:
 *   add rule inet t masq-blue ip saddr 10.244.1.0/24 tcp dport 22 accept
 */
const FOREIGN_RULE: readonly unknown[] = [
  {"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
  {"table": {"family": "inet", "name": "t", "handle": 1}},
  {"chain": {"family": "inet", "table": "t", "name": "postrouting", "handle": 1, "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}},
  {"chain": {"family": "inet", "table": "t", "name": "masq-blue", "handle": 2}},
  {"rule": {"family": "inet", "table": "t", "chain": "postrouting", "handle": 6, "expr": [{"jump": {"target": "masq-blue"}}]}},
  {"rule": {"family": "inet", "table": "t", "chain": "masq-blue", "handle": 4, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "10.244.1.0", "len": 24}}}}, {"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": {"set": [{"prefix": {"addr": "10.244.0.0", "len": 16}}, {"prefix": {"addr": "224.0.0.0", "len": 4}}]}}}, {"masquerade": null}]}},
  {"rule": {"family": "inet", "table": "t", "chain": "masq-blue", "handle": 5, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "10.244.1.0", "len": 24}}}}, {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 22}}, {"accept": null}]}},
];

/**
 * masq-blue with Trellis's one rule replaced by a near copy that also counts:
 *   add rule inet t masq-blue ip saddr { 10.244.1.0/24 } ip daddr != { 10.244.0.0/16, 224.0.0.0/4 } counter masquerade
 */
const COUNTING_RULE: readonly unknown[] = [
  {"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
  {"table": {"family": "inet", "name": "t", "handle": 1}},
  {"chain": {"family": "inet", "table": "t", "name": "postrouting", "handle": 1, "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}},
  {"chain": {"family": "inet", "table": "t", "name": "masq-blue", "handle": 2}},
  {"rule": {"family": "inet", "table": "t", "chain": "postrouting", "handle": 5, "expr": [{"jump": {"target": "masq-blue"}}]}},
  {"rule": {"family": "inet", "table": "t", "chain": "masq-blue", "handle": 4, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "10.244.1.0", "len": 24}}}}, {"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": {"set": [{"prefix": {"addr": "10.244.0.0", "len": 16}}, {"prefix": {"addr": "224.0.0.0", "len": 4}}]}}}, {"counter": {"packets": 0, "bytes": 0}}, {"masquerade": null}]}},
];

/** The base chain at another priority: `type nat hook postrouting priority srcnat + 10`. */
const WRONG_PRIORITY: readonly unknown[] = [
  {"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
  {"table": {"family": "inet", "name": "t", "handle": 1}},
  {"chain": {"family": "inet", "table": "t", "name": "postrouting", "handle": 1, "type": "nat", "hook": "postrouting", "prio": 110, "policy": "accept"}},
  {"chain": {"family": "inet", "table": "t", "name": "masq-blue", "handle": 2}},
  {"rule": {"family": "inet", "table": "t", "chain": "postrouting", "handle": 5, "expr": [{"jump": {"target": "masq-blue"}}]}},
  {"rule": {"family": "inet", "table": "t", "chain": "masq-blue", "handle": 4, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "10.244.1.0", "len": 24}}}}, {"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": {"set": [{"prefix": {"addr": "10.244.0.0", "len": 16}}, {"prefix": {"addr": "224.0.0.0", "len": 4}}]}}}, {"masquerade": null}]}},
];

/** The table of BLUE_V4 with its postrouting chain deleted by hand. */
const NO_BASE_CHAIN: readonly unknown[] = [
  {"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
  {"table": {"family": "inet", "name": "t", "handle": 1}},
  {"chain": {"family": "inet", "table": "t", "name": "masq-blue", "handle": 1}},
  {"rule": {"family": "inet", "table": "t", "chain": "masq-blue", "handle": 3, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "10.244.1.0", "len": 24}}}}, {"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": {"set": [{"prefix": {"addr": "10.244.0.0", "len": 16}}, {"prefix": {"addr": "224.0.0.0", "len": 4}}]}}}, {"masquerade": null}]}},
];

/** TWO_NETWORKS without `add rule inet t postrouting jump masq-red`. */
const RED_NOT_JUMPED: readonly unknown[] = [
  {"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
  {"table": {"family": "inet", "name": "t", "handle": 1}},
  {"chain": {"family": "inet", "table": "t", "name": "postrouting", "handle": 1, "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}},
  {"chain": {"family": "inet", "table": "t", "name": "masq-blue", "handle": 2}},
  {"chain": {"family": "inet", "table": "t", "name": "masq-red", "handle": 7}},
  {"rule": {"family": "inet", "table": "t", "chain": "postrouting", "handle": 10, "expr": [{"jump": {"target": "masq-blue"}}]}},
  {"rule": {"family": "inet", "table": "t", "chain": "masq-blue", "handle": 4, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "10.244.1.0", "len": 24}}}}, {"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": {"set": [{"prefix": {"addr": "10.244.0.0", "len": 16}}, {"prefix": {"addr": "224.0.0.0", "len": 4}}]}}}, {"masquerade": null}]}},
  {"rule": {"family": "inet", "table": "t", "chain": "masq-blue", "handle": 6, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "saddr"}}, "right": {"prefix": {"addr": "fd00:10:244:1::", "len": 64}}}}, {"match": {"op": "!=", "left": {"payload": {"protocol": "ip6", "field": "daddr"}}, "right": {"set": [{"prefix": {"addr": "fd00:10:244::", "len": 56}}, {"prefix": {"addr": "ff00::", "len": 8}}]}}}, {"masquerade": null}]}},
  {"rule": {"family": "inet", "table": "t", "chain": "masq-red", "handle": 9, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "10.245.0.0", "len": 24}}}}, {"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": {"set": ["10.96.0.10", {"range": ["10.245.0.0", "10.245.2.127"]}, {"prefix": {"addr": "224.0.0.0", "len": 4}}]}}}, {"masquerade": null}]}},
];

/**
 * The CNI's table for BLUE and RED: NAMED_SCRIPT (masqueradeOps from nothing) written by the
 * netlink writer, `trellis-nft-batch`; nft -f of the same script lists the same. nft keeps the
 * adjacent 10.245.0.0/23 and 10.245.2.0/25 apart in a named set.
 */
const NAMED_TWO_NETWORKS: readonly unknown[] = [
  {"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
  {"table": {"family": "inet", "name": "t", "handle": 2}},
  {"set": {"family": "inet", "name": "masq-blue-src-ip", "table": "t", "type": "ipv4_addr", "handle": 4, "flags": ["interval"], "elem": [{"prefix": {"addr": "10.244.1.0", "len": 24}}]}},
  {"set": {"family": "inet", "name": "masq-blue-dst-ip", "table": "t", "type": "ipv4_addr", "handle": 5, "flags": ["interval"], "elem": [{"prefix": {"addr": "10.244.0.0", "len": 16}}]}},
  {"set": {"family": "inet", "name": "masq-blue-src-ip6", "table": "t", "type": "ipv6_addr", "handle": 6, "flags": ["interval"], "elem": [{"prefix": {"addr": "fd00:10:244:1::", "len": 64}}]}},
  {"set": {"family": "inet", "name": "masq-blue-dst-ip6", "table": "t", "type": "ipv6_addr", "handle": 7, "flags": ["interval"], "elem": [{"prefix": {"addr": "fd00:10:244::", "len": 56}}]}},
  {"set": {"family": "inet", "name": "masq-red-src-ip", "table": "t", "type": "ipv4_addr", "handle": 8, "flags": ["interval"], "elem": [{"prefix": {"addr": "10.245.0.0", "len": 24}}]}},
  {"set": {"family": "inet", "name": "masq-red-dst-ip", "table": "t", "type": "ipv4_addr", "handle": 9, "flags": ["interval"], "elem": ["10.96.0.10", {"prefix": {"addr": "10.245.0.0", "len": 23}}, {"prefix": {"addr": "10.245.2.0", "len": 25}}]}},
  {"chain": {"family": "inet", "table": "t", "name": "postrouting", "handle": 1, "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}},
  {"chain": {"family": "inet", "table": "t", "name": "masq-blue", "handle": 2}},
  {"chain": {"family": "inet", "table": "t", "name": "masq-red", "handle": 3}},
  {"rule": {"family": "inet", "table": "t", "chain": "postrouting", "handle": 10, "expr": [{"jump": {"target": "masq-blue"}}]}},
  {"rule": {"family": "inet", "table": "t", "chain": "postrouting", "handle": 11, "expr": [{"jump": {"target": "masq-red"}}]}},
  {"rule": {"family": "inet", "table": "t", "chain": "masq-blue", "handle": 12, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "@masq-blue-src-ip"}}, {"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "@masq-blue-dst-ip"}}, {"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": {"prefix": {"addr": "224.0.0.0", "len": 4}}}}, {"masquerade": null}]}},
  {"rule": {"family": "inet", "table": "t", "chain": "masq-blue", "handle": 13, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "saddr"}}, "right": "@masq-blue-src-ip6"}}, {"match": {"op": "!=", "left": {"payload": {"protocol": "ip6", "field": "daddr"}}, "right": "@masq-blue-dst-ip6"}}, {"match": {"op": "!=", "left": {"payload": {"protocol": "ip6", "field": "daddr"}}, "right": {"prefix": {"addr": "ff00::", "len": 8}}}}, {"masquerade": null}]}},
  {"rule": {"family": "inet", "table": "t", "chain": "masq-red", "handle": 14, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "@masq-red-src-ip"}}, {"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "@masq-red-dst-ip"}}, {"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": {"prefix": {"addr": "224.0.0.0", "len": 4}}}}, {"masquerade": null}]}},
];

/** NAMED_TWO_NETWORKS after `delete element inet t masq-red-dst-ip { 10.96.0.10 }`. */
const NAMED_ELEMENT_DELETED: readonly unknown[] = NAMED_TWO_NETWORKS.map((item) => (
  (item as { set?: { name: string } }).set?.name === "masq-red-dst-ip"
    ? {"set": {"family": "inet", "name": "masq-red-dst-ip", "table": "t", "type": "ipv4_addr", "handle": 9, "flags": ["interval"], "elem": [{"prefix": {"addr": "10.245.0.0", "len": 23}}, {"prefix": {"addr": "10.245.2.0", "len": 25}}]}}
    : item
));

/** NAMED_TWO_NETWORKS after `add rule inet t masq-blue ip saddr 10.244.1.0/24 tcp dport 22 accept`. */
const NAMED_FOREIGN_RULE: readonly unknown[] = [
  ...NAMED_TWO_NETWORKS.slice(0, 15),
  {"rule": {"family": "inet", "table": "t", "chain": "masq-blue", "handle": 15, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "10.244.1.0", "len": 24}}}}, {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 22}}, {"accept": null}]}},
  ...NAMED_TWO_NETWORKS.slice(15),
];

const contribution = (network: string, sources: string[], exclusions: string[]): MasqueradeContribution => ({
  network,
  sources: sources.map(parsePrefix),
  exclusions: exclusions.map(parsePrefix),
});

/** Two pods of network blue, each in one half of 10.244.1.0/24; the second is dual-stack. */
const BLUE = [
  contribution("blue", ["10.244.1.0/25"], ["10.244.1.0/25", "10.244.0.0/16"]),
  contribution("blue", ["10.244.1.128/25", "fd00:10:244:1::/64"], ["10.244.1.128/25", "fd00:10:244:1::/64", "10.244.0.0/16", "fd00:10:244::/56"]),
];
const BLUE_V4 = [contribution("blue", ["10.244.1.0/24"], ["10.244.0.0/16"])];
const RED = [contribution("red", ["10.245.0.0/24"], ["10.245.0.0/24", "10.245.1.0/24", "10.245.2.0/25", "10.96.0.10/32"])];

const net = (cidr: string): IpInterval => prefixInterval(parsePrefix(cidr));
const span = (first: string, last: string): IpInterval => ({ family: parseIp(first).family, first: parseIp(first).value, last: parseIp(last).value });
const rule = (family: Family, sources: IpInterval[], exclusions: IpInterval[]): MasqueradeRule => ({ family, sources, exclusions });

const BLUE_RULES = [
  rule(4, [net("10.244.1.0/24")], [net("10.244.0.0/16"), net("224.0.0.0/4")]),
  rule(6, [net("fd00:10:244:1::/64")], [net("fd00:10:244::/56"), net("ff00::/8")]),
];
const RED_RULES = [rule(4, [net("10.245.0.0/24")], [net("10.96.0.10/32"), span("10.245.0.0", "10.245.2.127"), net("224.0.0.0/4")])];

const parse = (nftables: readonly unknown[]): MasqueradeTable => {
  const table = parseMasqueradeTable(nftables);
  assert.ok(table, "the fixture holds a table");
  return table;
};

const script = (...lines: string[]) => lines.join("\n") + "\n";

/** The CNI's table for BLUE and RED, written whole. */
const NAMED_SCRIPT = script(
  "add table inet t",
  "delete table inet t",
  "add table inet t",
  "add chain inet t postrouting { type nat hook postrouting priority 100; policy accept; }",
  "add chain inet t masq-blue",
  "add chain inet t masq-red",
  "add set inet t masq-blue-src-ip { type ipv4_addr; flags interval; }",
  "add set inet t masq-blue-dst-ip { type ipv4_addr; flags interval; }",
  "add set inet t masq-blue-src-ip6 { type ipv6_addr; flags interval; }",
  "add set inet t masq-blue-dst-ip6 { type ipv6_addr; flags interval; }",
  "add set inet t masq-red-src-ip { type ipv4_addr; flags interval; }",
  "add set inet t masq-red-dst-ip { type ipv4_addr; flags interval; }",
  "add rule inet t postrouting jump masq-blue",
  "add rule inet t postrouting jump masq-red",
  "add rule inet t masq-blue ip saddr @masq-blue-src-ip ip daddr != @masq-blue-dst-ip ip daddr != 224.0.0.0/4 masquerade",
  "add rule inet t masq-blue ip6 saddr @masq-blue-src-ip6 ip6 daddr != @masq-blue-dst-ip6 ip6 daddr != ff00::/8 masquerade",
  "add rule inet t masq-red ip saddr @masq-red-src-ip ip daddr != @masq-red-dst-ip ip daddr != 224.0.0.0/4 masquerade",
  "add element inet t masq-blue-src-ip { 10.244.1.0/24 }",
  "add element inet t masq-blue-dst-ip { 10.244.0.0/16 }",
  "add element inet t masq-blue-src-ip6 { fd00:10:244:1::/64 }",
  "add element inet t masq-blue-dst-ip6 { fd00:10:244::/56 }",
  "add element inet t masq-red-src-ip { 10.245.0.0/24 }",
  "add element inet t masq-red-dst-ip { 10.96.0.10/32, 10.245.0.0/23, 10.245.2.0/25 }",
);

describe("dataplane/masquerade", () => {
  describe("desiredMasquerade", () => {
    it("unions a network's attachments into one rule per family, multicast excluded, chains and jumps sorted by network", () => {
      // Catches: a chain per attachment instead of per network, a family rule with no sources,
      // multicast (224.0.0.0/4, ff00::/8) masqueraded, jumps out of step with the chains.
      const desired = desiredMasquerade([...RED, ...BLUE]);
      assert.deepEqual(desired, { chains: new Map([["masq-blue", BLUE_RULES], ["masq-red", RED_RULES]]), jumps: ["masq-blue", "masq-red"], hooked: true });
    });

    it("wants no chains at all when no attachment asks for masquerade", () => {
      // Catches: an empty table (or a lone base chain) left behind after the last pod.
      assert.deepEqual(desiredMasquerade([]), { chains: new Map(), jumps: [], hooked: true });
    });

    it("leaves 255.255.255.255 out of every interval", () => {
      // Catches: an exclusion reaching the end of IPv4's space (class E pods, 240.0.0.0/4) that
      // the netlink writer cannot write, failing every ADD of the network.
      const desired = desiredMasquerade([contribution("e", ["240.0.1.0/24"], ["240.0.0.0/4"])]);
      assert.deepEqual(desired.chains.get("masq-e"), [rule(4, [net("240.0.1.0/24")], [span("224.0.0.0", "255.255.255.254")])]);
    });
  });

  describe("masqueradeOps", () => {
    it("writes the whole table: a set per network, family and direction, multicast a test of its own", () => {
      // Catches: a table that another shape of rule or set would give (CHECK and the kernel tests
      // read this one), or multicast left in the set, where IPv6's reaches the end of the space.
      assert.equal(renderOps(masqueradeOps("t", desiredMasquerade([...RED, ...BLUE]))), NAMED_SCRIPT);
    });

    it("removes the table, whether or not it exists, when no network is left", () => {
      // Catches: an empty table left behind, or `delete table` of a missing table (an error that
      // would fail every DEL after the table was deleted by hand).
      assert.equal(renderOps(masqueradeOps("t", desiredMasquerade([]))), script("add table inet t", "delete table inet t"));
    });

    it("is a batch the netlink writer can encode, IPv6 multicast and a class E exclusion included", () => {
      // Catches: an interval reaching the end of the address space (ff00::/8, 240.0.0.0/4), which
      // nft/netlink.ts refuses: every dual-stack table written by nft -f alone.
      const classE = contribution("e", ["240.0.1.0/24", "fd00:10:244:9::/64"], ["240.0.0.0/4", "ff00::/8"]);
      assert.ok(encodeBatch(masqueradeOps("t", desiredMasquerade([...BLUE, ...RED, classE]))).length > 0);
    });

    it("names sets within nft's limit for the longest network name the config allows", () => {
      // Catches: a set name over 255 characters for a network name of 200 (cni/config.ts), which
      // nft refuses, so such a network could never masquerade.
      const ops = masqueradeOps("t", desiredMasquerade([contribution("n".repeat(200), ["10.244.1.0/24", "fd00:10:244:1::/64"], [])]));
      const longest = Math.max(...ops.flatMap((op) => (op.op === "add set" ? [op.name.length] : [])));
      assert.equal(longest, "masq-".length + 200 + "-dst-ip6".length);
      assert.ok(longest <= NAME_MAX);
      assert.ok(encodeBatch(ops).length > 0 && renderOps(ops).length > 0);
    });
  });

  describe("parseMasqueradeTable", () => {
    it("reads bare prefixes, bare addresses and ranges as the intervals Trellis wrote", () => {
      // Catches: a parser that only knows `{"set": [...]}` (nft drops the set of one element),
      // or that drops `"10.96.0.10"` strings or `{"range": [...]}` elements.
      assert.deepEqual(parse(TWO_NETWORKS), {
        chains: new Map([["masq-blue", BLUE_RULES], ["masq-red", RED_RULES]]),
        jumps: ["masq-blue", "masq-red"],
        hooked: true,
      });
    });

    it("reads named sets, and the multicast test, as the intervals Trellis wrote", () => {
      // Catches: `"@masq-blue-src-ip"` not looked up in the table's sets (every rule foreign, so
      // CHECK fails every healthy pod), or multicast, tested apart, missing from the exclusions.
      assert.deepEqual(parse(NAMED_TWO_NETWORKS), {
        chains: new Map([["masq-blue", BLUE_RULES], ["masq-red", RED_RULES]]),
        jumps: ["masq-blue", "masq-red"],
        hooked: true,
      });
    });

    it("is undefined when the table does not exist", () => {
      // Catches: a missing table read as an empty one, so the full table is never created.
      assert.equal(parseMasqueradeTable(undefined), undefined);
    });

    it("marks a rule Trellis did not write as foreign", () => {
      // Catches: a foreign rule skipped, so a chain with an extra `accept` looks right, or a rule
      // with an extra statement read as Trellis's because its matches are.
      assert.deepEqual(parse(FOREIGN_RULE).chains.get("masq-blue"), [BLUE_RULES[0], { family: "unknown" }]);
      assert.deepEqual(parse(COUNTING_RULE).chains.get("masq-blue"), [{ family: "unknown" }]);
    });

    it("marks the table unhooked when the base chain has another priority or is gone", () => {
      // Catches: only the chain's name checked, so masquerade silently runs at the wrong priority.
      assert.equal(parse(WRONG_PRIORITY).hooked, false);
      assert.equal(parse(NO_BASE_CHAIN).hooked, false);
      assert.equal(parse(TWO_NETWORKS).hooked, true);
    });
  });

  describe("masqueradeMatches (the agent's check of its own table)", () => {
    it("holds when the kernel already holds the desired table", () => {
      // Catches: a rewrite on every resync (each one a transaction and a window of churn).
      assert.equal(masqueradeMatches(desiredMasquerade([...BLUE, ...RED]), parse(TWO_NETWORKS)), true);
    });

    it("holds when nft merged adjacent prefixes into one", () => {
      // Catches: comparing prefixes as written, which would rewrite 10.244.1.0/25 + 10.244.1.128/25
      // forever because nft always shows them as 10.244.1.0/24.
      const desired = desiredMasquerade([
        contribution("blue", ["10.244.1.0/25"], ["10.244.1.0/25"]),
        contribution("blue", ["10.244.1.128/25"], ["10.244.1.128/25"]),
      ]);
      assert.deepEqual(parse(MERGED_HALVES).chains.get("masq-blue"), [rule(4, [net("10.244.1.0/24")], [net("10.244.1.0/24"), net("224.0.0.0/4")])]);
      assert.equal(masqueradeMatches(desired, parse(MERGED_HALVES)), true);
    });

    it("fails without a table, with a chain's addresses changed, a network added or removed, or a jump missing", () => {
      // Catches: a table deleted by hand, a grown network or a new one, a chain left jumped to
      // after its network went, or a chain never reached, all counted as in place.
      assert.equal(masqueradeMatches(desiredMasquerade([...BLUE, ...RED]), undefined), false);
      assert.equal(masqueradeMatches(desiredMasquerade([...BLUE, ...RED, contribution("red", ["10.245.3.0/24"], ["10.245.3.0/24"])]), parse(TWO_NETWORKS)), false);
      assert.equal(masqueradeMatches(desiredMasquerade([...BLUE, ...RED, contribution("green", ["10.246.0.0/24"], ["10.246.0.0/24"])]), parse(TWO_NETWORKS)), false);
      assert.equal(masqueradeMatches(desiredMasquerade(BLUE), parse(TWO_NETWORKS)), false);
      assert.equal(masqueradeMatches(desiredMasquerade([...BLUE, ...RED]), parse(RED_NOT_JUMPED)), false);
    });

    it("with no network left, holds only without a table", () => {
      // Catches: an empty table left behind.
      assert.equal(masqueradeMatches(desiredMasquerade([]), parse(TWO_NETWORKS)), false);
      assert.equal(masqueradeMatches(desiredMasquerade([]), undefined), true);
    });

    it("fails on a rule Trellis did not write, and on a base chain of another priority or none", () => {
      // Catches: an `accept` placed before masquerade kept forever, a foreign rule counted as
      // equal to any rule, or rules under a base chain that runs at the wrong priority.
      for (const fixture of [FOREIGN_RULE, COUNTING_RULE, WRONG_PRIORITY, NO_BASE_CHAIN]) {
        assert.equal(masqueradeMatches(desiredMasquerade(BLUE_V4), parse(fixture)), false);
      }
    });
  });

  describe("masqueradeProblems", () => {
    const desired = desiredMasquerade([...BLUE, ...RED]);

    it("finds nothing when the network's chain and jump are in place", () => {
      // Catches: CHECK failing a healthy pod (e.g. over nft's merged or bare-prefix forms).
      assert.deepEqual(masqueradeProblems("t", "blue", desired, parse(TWO_NETWORKS)), []);
      assert.deepEqual(masqueradeProblems("t", "red", desired, parse(TWO_NETWORKS)), []);
    });

    it("asks nothing of a network without masquerade", () => {
      // Catches: CHECK of a network without ipMasq failing on a chain it never wanted.
      assert.deepEqual(masqueradeProblems("t", "green", desired, undefined), []);
    });

    it("names the missing table", () => {
      assert.deepEqual(masqueradeProblems("t", "blue", desired, undefined), ["nftables table inet t is missing"]);
    });

    it("names a missing chain", () => {
      // Catches: a missing chain reported as matching (no rules compared to no rules).
      assert.deepEqual(masqueradeProblems("t", "red", desired, parse(MERGED_HALVES)), ["masquerade chain masq-red of inet t is missing"]);
    });

    it("names a missing jump", () => {
      // Catches: a chain that exists but is never jumped to passing CHECK.
      assert.deepEqual(masqueradeProblems("t", "red", desired, parse(RED_NOT_JUMPED)), ["chain postrouting of inet t does not jump to masq-red"]);
      assert.deepEqual(masqueradeProblems("t", "blue", desired, parse(RED_NOT_JUMPED)), []);
    });

    it("names a rule in postrouting that Trellis did not write", () => {
      // Catches: an `accept` placed before the jumps bypassing masquerade while CHECK says healthy.
      const foreign = { chain: { family: "inet", table: "t", name: "postrouting", handle: 1, type: "nat", hook: "postrouting", prio: 100, policy: "accept" } };
      const accept = { rule: { family: "inet", table: "t", chain: "postrouting", handle: 20, expr: [{ accept: null }] } };
      const withoutBase = TWO_NETWORKS.filter((item) => (item as { chain?: { name: string } }).chain?.name !== "postrouting");
      const table = parse([...withoutBase, foreign, accept]);
      assert.deepEqual(masqueradeProblems("t", "blue", desired, table), ["chain postrouting of inet t holds a rule Trellis did not write"]);
    });

    it("names differing rules with what the chain holds and what was expected", () => {
      // Catches: a difference reported without either side, or a foreign rule not reported.
      const wider = desiredMasquerade([...BLUE, ...RED, contribution("red", ["10.245.3.0/24"], ["10.245.3.0/24"])]);
      assert.deepEqual(masqueradeProblems("t", "red", wider, parse(TWO_NETWORKS)), [
        "masquerade chain masq-red of inet t holds ip saddr { 10.245.0.0/24 } ip daddr != { 10.96.0.10/32, 10.245.0.0/23, 10.245.2.0/25, 224.0.0.0/4 } masquerade; " +
          "expected ip saddr { 10.245.0.0/24, 10.245.3.0/24 } ip daddr != { 10.96.0.10/32, 10.245.0.0/23, 10.245.2.0/25, 10.245.3.0/24, 224.0.0.0/4 } masquerade",
      ]);
      assert.deepEqual(masqueradeProblems("t", "blue", desiredMasquerade(BLUE_V4), parse(FOREIGN_RULE)), [
        "masquerade chain masq-blue of inet t holds ip saddr { 10.244.1.0/24 } ip daddr != { 10.244.0.0/16, 224.0.0.0/4 } masquerade; a rule Trellis did not write; " +
          "expected ip saddr { 10.244.1.0/24 } ip daddr != { 10.244.0.0/16, 224.0.0.0/4 } masquerade",
      ]);
    });

    it("finds nothing in the CNI's table as written", () => {
      // Catches: CHECK failing a healthy pod over the named sets or the multicast test.
      assert.deepEqual(masqueradeProblems("t", "blue", desired, parse(NAMED_TWO_NETWORKS)), []);
      assert.deepEqual(masqueradeProblems("t", "red", desired, parse(NAMED_TWO_NETWORKS)), []);
    });

    it("names, in the CNI's table, a missing chain, a foreign rule and a set whose addresses differ", () => {
      // Catches: CHECK passing when a set's element was deleted by hand (only the rules compared,
      // not the sets they name), or when a rule was added to the chain.
      const green = desiredMasquerade([...BLUE, ...RED, contribution("green", ["10.246.0.0/24"], ["10.246.0.0/24"])]);
      assert.deepEqual(masqueradeProblems("t", "green", green, parse(NAMED_TWO_NETWORKS)), ["masquerade chain masq-green of inet t is missing"]);
      assert.deepEqual(masqueradeProblems("t", "blue", desired, parse(NAMED_FOREIGN_RULE)), [
        "masquerade chain masq-blue of inet t holds ip saddr { 10.244.1.0/24 } ip daddr != { 10.244.0.0/16, 224.0.0.0/4 } masquerade; " +
          "ip6 saddr { fd00:10:244:1::/64 } ip6 daddr != { fd00:10:244::/56, ff00::/8 } masquerade; a rule Trellis did not write; " +
          "expected ip saddr { 10.244.1.0/24 } ip daddr != { 10.244.0.0/16, 224.0.0.0/4 } masquerade; ip6 saddr { fd00:10:244:1::/64 } ip6 daddr != { fd00:10:244::/56, ff00::/8 } masquerade",
      ]);
      assert.deepEqual(masqueradeProblems("t", "red", desired, parse(NAMED_ELEMENT_DELETED)), [
        "masquerade chain masq-red of inet t holds ip saddr { 10.245.0.0/24 } ip daddr != { 10.245.0.0/23, 10.245.2.0/25, 224.0.0.0/4 } masquerade; " +
          "expected ip saddr { 10.245.0.0/24 } ip daddr != { 10.96.0.10/32, 10.245.0.0/23, 10.245.2.0/25, 224.0.0.0/4 } masquerade",
      ]);
      assert.deepEqual(masqueradeProblems("t", "blue", desired, parse(NAMED_ELEMENT_DELETED)), []);
    });

    it("names a base chain that is not the nat postrouting hook", () => {
      // Catches: CHECK passing while masquerade runs at the wrong priority, or not at all.
      assert.deepEqual(masqueradeProblems("t", "blue", desiredMasquerade(BLUE_V4), parse(WRONG_PRIORITY)), [
        "chain postrouting of inet t is missing or not a nat postrouting hook",
      ]);
      assert.deepEqual(masqueradeProblems("t", "blue", desiredMasquerade(BLUE_V4), parse(NO_BASE_CHAIN)), [
        "chain postrouting of inet t is missing or not a nat postrouting hook",
        "chain postrouting of inet t does not jump to masq-blue",
      ]);
    });
  });
});
