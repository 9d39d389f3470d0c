/**
 * The events the cluster's connections make, as a table of the agent's own: a connection with a
 * pod or Service address at either end makes only the events the flow records are kept from
 * (`ct event set`: `new`, and by default `destroy`; `reply`, its first answer, with
 * `--flow-events` update), not one per TCP state as well. The kernel builds a netlink message for
 * each event while anyone listens: at 30,000 new connections a second here, the five or more a
 * TCP connection makes cost a quarter of the node's rate (bench:flows). Set at postrouting and
 * input, after DNAT (a NodePort's connection has its endpoint by then) and before conntrack
 * confirms the connection, when its `new` event is made. The node's own connections keep every
 * event, for whatever else listens.
 *
 *   table inet trellis-flows
 *     chain postrouting { filter hook postrouting priority 200 }   ct state new ip saddr @cluster-4 ct event set new,destroy
 *     chain input { filter hook input priority 200 }               … ip daddr @cluster-4 …, the same for ip6
 *     set cluster-4 / cluster-6 (interval)                         the pod and Service CIDRs
 */
import { mergePrefixes, type Family, type IpPrefix } from "../net/ip.js";
import { addressField, addressType, newSet, rule, type BaseChain, type CtEvent, type Rule, type Table } from "../nft/model.js";

export const FLOW_EVENTS_TABLE = "trellis-flows";

const BASE_CHAINS: ReadonlyMap<string, BaseChain> = new Map<string, BaseChain>([
  ["postrouting", { type: "filter", hook: "postrouting", priority: 200 }],
  ["input", { type: "filter", hook: "input", priority: 200 }],
]);

/** conntrack's events a flow record may come from: new, update (first answered), destroy. */
export const FLOW_EVENT_KINDS = ["new", "update", "destroy"] as const;
export type FlowEventKind = (typeof FLOW_EVENT_KINDS)[number];

/** The ct events that make each. */
const CT_EVENT: Record<FlowEventKind, CtEvent> = { new: "new", update: "reply", destroy: "destroy" };

/** The table for the cluster's pod and Service CIDRs and the events kept; undefined when there are no CIDRs. */
export function flowEventsTable(clusterPrefixes: readonly IpPrefix[], kinds: readonly FlowEventKind[] = FLOW_EVENT_KINDS): Table | undefined {
  const events = FLOW_EVENT_KINDS.filter((kind) => kinds.includes(kind)).map((kind) => CT_EVENT[kind]);
  const families = ([4, 6] as const).filter((family) => clusterPrefixes.some((prefix) => prefix.family === family));
  if (!families.length) return undefined;
  const rules: Rule[] = families.flatMap((family: Family) =>
    (["saddr", "daddr"] as const).map((end) =>
      rule([{ match: "ct state", states: ["new"] }, { match: "in set", key: [addressField(family, end)], set: `cluster-${family}` }], { statement: "ct event", events }),
    ),
  );
  return {
    family: "inet",
    name: FLOW_EVENTS_TABLE,
    baseChains: BASE_CHAINS,
    chains: new Map([["postrouting", rules], ["input", rules]]),
    sets: new Map(families.map((family) => [
      `cluster-${family}`,
      newSet({ kind: "set", key: [addressType(family)], flags: ["interval"] }, mergePrefixes(clusterPrefixes.filter((prefix) => prefix.family === family)).map((prefix) => ({ key: [prefix] }))),
    ])),
  };
}
