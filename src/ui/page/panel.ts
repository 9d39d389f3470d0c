/**
 * The side panel: what is selected (a pod, node, Service, outside address or edge), its flows of
 * the last minute and the policies that decided them; with nothing selected, every node with
 * its pods and the busiest edges. Built from DOM nodes with text only: names come from tenants.
 */
import type { FlowRecord } from "../../flows/record.js";
import type { ConnectionView, EdgeSummary } from "../flow-window.js";
import type { FlowsAnswer } from "../protocol.js";
import type { UiTopology } from "../topology.js";
import { entityLabel, podLabel } from "./graph.js";
import { naturalOrder } from "./layout.js";

type Child = Node | string | undefined | false;

/** An element with text children (never markup) and plain attributes. */
export function el(tag: string, attributes: Record<string, string> = {}, ...children: Child[]): HTMLElement {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) element.setAttribute(name, value);
  for (const child of children) if (child !== undefined && child !== false) element.append(typeof child === "string" ? document.createTextNode(child) : child);
  return element;
}

export function formatBytes(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let value = bytes / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
}

function definitions(rows: ReadonlyArray<readonly [string, string]>): HTMLElement {
  return el("dl", {}, ...rows.flatMap(([term, value]) => [el("dt", {}, term), el("dd", {}, value || "—")]));
}

/** Who holds an address, by the topology: `NAMESPACE/NAME` of a pod, a node's or host's name. */
export type AddressNames = ReadonlyMap<string, string>;

export function addressNames(topology: UiTopology): AddressNames {
  const names = new Map<string, string>();
  for (const host of topology.hosts) for (const address of host.addresses) names.set(address, host.name);
  for (const node of topology.nodes) for (const address of node.addresses) names.set(address, node.name);
  for (const pod of topology.pods) for (const address of pod.addresses) names.set(address, podLabel(pod.namespace, pod.name));
  return names;
}

/** One end of a record as people say it: the pod, else the node, else whoever holds the address; with the port. */
function endText(end: FlowRecord["source"], names: AddressNames): string {
  const who = end.pod ? (end.pod.startsWith("default/") ? end.pod.slice("default/".length) : end.pod) : end.node ? `${end.node} (${end.address})` : (names.get(end.address) ?? end.address);
  return end.port === undefined ? who : `${who}:${end.port}`;
}

export interface PanelActions {
  /** Selects an element of the map (a pod from the node list, an edge from the list of busiest). */
  select(id: string): void;
}

/** Nothing selected: the nodes with their pods, the Services, and the busiest edges. */
export function renderOverview(topology: UiTopology, edges: readonly EdgeSummary[], actions: PanelActions): HTMLElement {
  const link = (id: string, text: string) => {
    const button = el("button", { class: "link", type: "button", "data-select": id }, text);
    button.addEventListener("click", () => actions.select(id));
    return button;
  };
  const nodes = [...topology.nodes].sort((a, b) => naturalOrder(a.name, b.name));
  const busiest = [...edges].sort((a, b) => b.bytes - a.bytes || b.connections - a.connections).slice(0, 15);
  return el(
    "section",
    { id: "overview" },
    el("h2", {}, topology.title),
    el("p", { class: "muted" }, "Select a pod, node, Service or edge for its flows and the policies that decided them."),
    topology.flowsUnavailable ? el("p", { class: "muted" }, topology.flowsUnavailable) : false,
    el("h3", {}, `Busiest flows of the last minute (${edges.length} edges)`),
    busiest.length
      ? el(
          "ul",
          { id: "busiest" },
          ...busiest.map((edge) => el("li", {}, link(edge.id, `${entityLabel(edge.source)} → ${entityLabel(edge.target)}`), " ", el("span", { class: `verdict-${edge.verdict}` }, edge.verdict), ` ${edge.connections} conn., ${formatBytes(edge.bytes)}`)),
        )
      : el("p", { class: "muted" }, "none yet"),
    el("h3", {}, `Nodes (${nodes.length}) and pods (${topology.pods.length})`),
    el(
      "ul",
      { id: "node-list" },
      ...nodes.map((node) => {
        const pods = topology.pods.filter((pod) => pod.node === node.name).sort((a, b) => naturalOrder(a.name, b.name));
        return el(
          "li",
          { "data-node": node.name },
          link(`node:${node.name}`, node.name),
          ` ${node.podCidrs.join(" ")}${node.mode ? ` · ${node.mode}` : ""}`,
          el("ul", {}, ...pods.map((pod) => el("li", { "data-pod": `${pod.namespace}/${pod.name}` }, link(`pod:${pod.namespace}/${pod.name}`, podLabel(pod.namespace, pod.name)), ` ${pod.addresses.join(" ")}`))),
        );
      }),
    ),
    topology.services.length
      ? el("h3", {}, `Services (${topology.services.length})`)
      : false,
    topology.services.length
      ? el("ul", { id: "service-list" }, ...topology.services.map((service) => el("li", {}, link(`svc:${service.namespace}/${service.name}`, podLabel(service.namespace, service.name)), ` ${service.clusterIPs.join(" ")}`)))
      : false,
  );
}

/** What an entity is, from the topology. */
export function renderEntity(topology: UiTopology, entity: string): HTMLElement {
  const [kind] = entity.split(":", 1);
  const name = entity.slice(kind.length + 1);
  if (kind === "pod") {
    const pod = topology.pods.find((candidate) => `${candidate.namespace}/${candidate.name}` === name);
    return el("section", {}, el("h2", {}, `Pod ${name}`), definitions(pod ? [["node", pod.node], ["addresses", pod.addresses.join(", ")]] : [["", "not in the topology (named by a flow)"]]));
  }
  if (kind === "node") {
    const node = topology.nodes.find((candidate) => candidate.name === name);
    const pods = topology.pods.filter((pod) => pod.node === name).length;
    return el(
      "section",
      {},
      el("h2", {}, `Node ${name}`),
      definitions(node ? [["addresses", node.addresses.join(", ")], ["pod CIDRs", node.podCidrs.join(", ")], ["routing", node.mode ?? ""], ["pods", String(pods)]] : []),
    );
  }
  if (kind === "svc") {
    const service = topology.services.find((candidate) => `${candidate.namespace}/${candidate.name}` === name);
    if (!service) return el("section", {}, el("h2", {}, `Service ${name}`), el("p", { class: "muted" }, "not in the topology (named by a flow)"));
    return el(
      "section",
      {},
      el("h2", {}, `Service ${name}`),
      definitions([
        ["type", service.type],
        ["cluster IPs", service.clusterIPs.join(", ")],
        ["external IPs", service.externalIPs.join(", ")],
        ["ports", service.ports.map((port) => `${port.port}/${port.protocol}${port.nodePort === undefined ? "" : ` (NodePort ${port.nodePort})`}`).join(", ")],
      ]),
      el("h3", {}, `Endpoints (${service.endpoints.length})`),
      el("ul", {}, ...service.endpoints.map((endpoint) => el("li", {}, `${endpoint.pod ? `${endpoint.pod} ` : ""}${endpoint.address}${endpoint.ready ? "" : " (not ready)"}`))),
    );
  }
  const host = kind === "host" ? topology.hosts.find((candidate) => candidate.name === name) : undefined;
  return el("section", {}, el("h2", {}, host ? `Host ${host.name}` : `Address ${entityLabel(entity)}`), host ? definitions([["addresses", host.addresses.join(", ")]]) : false);
}

export function renderEdge(edge: EdgeSummary): HTMLElement {
  return el(
    "section",
    {},
    el("h2", {}, `${entityLabel(edge.source)} → ${entityLabel(edge.target)}`),
    definitions([
      ["verdict", edge.verdict],
      ["connections", String(edge.connections)],
      ["bytes", formatBytes(edge.bytes)],
      ["Services", edge.services.join(", ")],
      ["policies", edge.policies.join(", ")],
    ]),
  );
}

/** The policies that decided the connections: each denying policy with its count, and how many were let through. */
export function policySummary(connections: readonly ConnectionView[]): Array<{ readonly text: string; readonly verdict: string }> {
  const plural = (count: number) => `${count} connection${count === 1 ? "" : "s"}`;
  const byPolicy = new Map<string, { verdict: string; count: number; reasons: Set<string> }>();
  const unjudged = new Map<string, { verdict: string; count: number; reasons: Set<string> }>();
  const tally = (map: typeof byPolicy, key: string, connection: ConnectionView, reasons: Iterable<string>) => {
    const entry = map.get(key) ?? { verdict: connection.verdict, count: 0, reasons: new Set<string>() };
    entry.count++;
    for (const reason of reasons) entry.reasons.add(reason);
    map.set(key, entry);
  };
  let forwarded = 0;
  for (const connection of connections) {
    const policies = new Set(connection.records.flatMap((record) => (record.policy ? [record.policy] : [])));
    for (const policy of policies) tally(byPolicy, policy, connection, connection.records.flatMap((record) => (record.policy === policy && record.reason ? [record.reason] : [])));
    if (policies.size) continue;
    if (connection.verdict === "forwarded") forwarded++;
    else tally(unjudged, connection.verdict, connection, connection.records.flatMap((record) => (record.reason ? [record.reason] : [])));
  }
  const reasons = (set: Set<string>) => (set.size ? ` (${[...set].join(", ")})` : "");
  return [
    ...[...byPolicy.entries()].map(([policy, entry]) => ({ text: `${policy}: ${entry.verdict} ${plural(entry.count)}${reasons(entry.reasons)}`, verdict: entry.verdict })),
    ...[...unjudged.entries()].map(([verdict, entry]) => ({ text: `${verdict} by no policy${reasons(entry.reasons)}: ${plural(entry.count)}`, verdict })),
    ...(forwarded ? [{ text: `let through: ${plural(forwarded)} (no policy refused them)`, verdict: "forwarded" }] : []),
  ];
}

/** The flows of the selection: the policies that decided them, then one row per connection, newest first. */
export function renderFlows(answer: FlowsAnswer, names: AddressNames): HTMLElement {
  const { connections } = answer;
  if (connections.length === 0) return el("section", { id: "flows" }, el("h3", {}, "Flows of the last minute"), el("p", { class: "muted" }, "none"));
  const time = (ms: number) => new Date(ms).toLocaleTimeString(undefined, { hour12: false });
  const rows = connections.map((connection) => {
    const record = connection.records[0];
    const to = record.translated ?? record.destination;
    const service = connection.records.find((each) => each.service)?.service;
    const policies = [...new Set(connection.records.flatMap((each) => (each.policy ? [each.policy] : [])))].join(", ");
    const reasons = [...new Set(connection.records.flatMap((each) => (each.reason ? [each.reason] : [])))].join(", ");
    return el(
      "tr",
      { "data-verdict": connection.verdict, title: `seen by ${connection.records.map((each) => each.node).join(" and ")}` },
      el("td", { class: "nowrap" }, time(connection.lastSeen)),
      el("td", {}, endText(record.source, names)),
      el("td", {}, `${endText(to, names)}/${record.protocol}`, service ? el("span", { class: "muted" }, ` via ${service}`) : false),
      el("td", { class: `verdict-${connection.verdict}` }, connection.verdict, reasons ? el("span", { class: "muted" }, ` ${reasons}`) : false),
      el("td", {}, policies),
      el("td", { class: "nowrap" }, connection.bytes ? formatBytes(connection.bytes) : ""),
    );
  });
  return el(
    "section",
    { id: "flows" },
    el("h3", {}, "Policies that decided them"),
    el("ul", { id: "policies" }, ...policySummary(connections).map((line) => el("li", { class: `verdict-${line.verdict}` }, line.text))),
    el("h3", {}, `Flows of the last minute (${connections.length}${answer.truncated ? ", the newest" : ""})`),
    el(
      "table",
      {},
      el("thead", {}, el("tr", {}, ...["time", "from", "to", "verdict", "policy", "bytes"].map((head) => el("th", {}, head)))),
      el("tbody", {}, ...rows),
    ),
  );
}
