/**
 * The map's elements from the topology and the edges: nodes as boxes holding their pods,
 * a box of Services (dashed edges to their endpoints) and a box of what lies outside the nodes
 * (named hosts, and addresses that flows named). `GraphView` keeps a cytoscape instance equal
 * to them, changing only what differs, in one batch.
 */
import type cytoscape from "cytoscape";
import type { EdgeSummary } from "../flow-window.js";
import type { UiTopology } from "../topology.js";
import { layoutBoxes, naturalOrder, type LayoutBox } from "./layout.js";
import { edgeWidth } from "./style.js";

export const SERVICES_GROUP = "group:services";
export const OUTSIDE_GROUP = "group:outside";

export interface BoxElement {
  readonly id: string;
  readonly label: string;
  readonly classes: string;
  /** The box it is drawn in. */
  readonly box?: string;
}

/** A pod's name as the map shows it: bare in `default`, else with its namespace. */
export function podLabel(namespace: string, name: string): string {
  return namespace === "default" ? name : `${namespace}/${name}`;
}

/** What a box for an entity that only flows named says: its address, or its name. */
export function entityLabel(entity: string): string {
  if (entity === "addr:other") return "other addresses";
  const colon = entity.indexOf(":");
  const rest = entity.slice(colon + 1);
  return entity.startsWith("pod:default/") ? rest.slice("default/".length) : rest;
}

/** The boxes and members the topology has, and those the edges name beyond it. */
export function boxElements(topology: UiTopology, edges: Iterable<EdgeSummary>): { elements: BoxElement[]; layout: LayoutBox[] } {
  const elements: BoxElement[] = [];
  const layout: LayoutBox[] = [];
  const known = new Set<string>();
  const add = (element: BoxElement) => {
    elements.push(element);
    known.add(element.id);
  };
  const nodes = [...topology.nodes].sort((a, b) => naturalOrder(a.name, b.name));
  const podsOf = new Map<string, string[]>(nodes.map((node) => [node.name, []]));
  const outside: string[] = [];
  for (const node of nodes) {
    const detail = [node.podCidrs.join(" "), node.mode].filter((part) => part).join(" · ");
    add({ id: `node:${node.name}`, label: detail ? `${node.name}\n${detail}` : node.name, classes: "cluster-node" });
  }
  // The outside box is added last, once its members are known; pods of an unknown node go there.
  const pods = [...topology.pods].sort((a, b) => naturalOrder(podLabel(a.namespace, a.name), podLabel(b.namespace, b.name)));
  for (const pod of pods) {
    const id = `pod:${pod.namespace}/${pod.name}`;
    const members = podsOf.get(pod.node);
    add({ id, label: podLabel(pod.namespace, pod.name), classes: "pod", box: members ? `node:${pod.node}` : OUTSIDE_GROUP });
    (members ?? outside).push(id);
  }
  for (const node of nodes) layout.push({ id: `node:${node.name}`, members: podsOf.get(node.name)! });
  const services = [...topology.services].sort((a, b) => naturalOrder(`${a.namespace}/${a.name}`, `${b.namespace}/${b.name}`));
  if (services.length) {
    add({ id: SERVICES_GROUP, label: "Services", classes: "group" });
    const members: string[] = [];
    for (const service of services) {
      const id = `svc:${service.namespace}/${service.name}`;
      add({ id, label: [podLabel(service.namespace, service.name), service.clusterIPs[0]].filter((part) => part).join("\n"), classes: "service", box: SERVICES_GROUP });
      members.push(id);
    }
    layout.push({ id: SERVICES_GROUP, members });
  }
  for (const host of [...topology.hosts].sort((a, b) => naturalOrder(a.name, b.name))) {
    add({ id: `host:${host.name}`, label: host.name, classes: "host", box: OUTSIDE_GROUP });
    outside.push(`host:${host.name}`);
  }
  const named = new Set<string>();
  for (const edge of edges) for (const end of [edge.source, edge.target]) if (!known.has(end)) named.add(end);
  for (const entity of [...named].sort(naturalOrder)) {
    add({ id: entity, label: entityLabel(entity), classes: entity.startsWith("pod:") ? "pod" : entity.startsWith("svc:") ? "service" : "address", box: OUTSIDE_GROUP });
    outside.push(entity);
  }
  if (outside.length) {
    elements.push({ id: OUTSIDE_GROUP, label: "outside the nodes", classes: "group" });
    layout.push({ id: OUTSIDE_GROUP, members: outside });
  }
  return { elements, layout };
}

export interface EndpointEdge {
  readonly id: string;
  readonly source: string;
  readonly target: string;
}

/** A dashed edge from each Service to each pod the topology names as its endpoint. */
export function endpointEdges(topology: UiTopology): EndpointEdge[] {
  const pods = new Set(topology.pods.map((pod) => `pod:${pod.namespace}/${pod.name}`));
  const edges = new Map<string, EndpointEdge>();
  for (const service of topology.services) {
    const source = `svc:${service.namespace}/${service.name}`;
    for (const endpoint of service.endpoints) {
      const target = endpoint.pod ? `pod:${endpoint.pod}` : undefined;
      if (!target || !pods.has(target)) continue;
      const id = `endpoint ${source} -> ${target}`;
      edges.set(id, { id, source, target });
    }
  }
  return [...edges.values()];
}

/**
 * The most flow edges drawn at once. Past a few thousand the canvas takes longer than a frame
 * to draw and the picture is a tangle anyway; the denied and dropped ones come first, then the
 * busiest (the panel's list and the status line say how many there are in all).
 */
export const MAX_DRAWN_EDGES = 1000;

const SEVERITY: Record<string, number> = { denied: 2, dropped: 1, forwarded: 0 };

/**
 * The edges to draw: all of them up to `max`, else the denied and dropped first, then by bytes
 * and connections. One drawn already counts double, so that edges of about the same weight do
 * not take turns at every update (each turn a restyle of the canvas, and a picture that flickers).
 */
export function edgesToDraw(edges: Iterable<EdgeSummary>, max = MAX_DRAWN_EDGES, drawn: ReadonlySet<string> | ReadonlyMap<string, unknown> = new Set(), focus?: string): EdgeSummary[] {
  const all = [...edges];
  if (all.length <= max) return all;
  const weight = (edge: EdgeSummary) => (drawn.has(edge.id) ? 2 : 1);
  // The selection's own edges before any other.
  const focused = (edge: EdgeSummary) => Number(focus !== undefined && (edge.id === focus || edge.source === focus || edge.target === focus));
  return all
    .sort((a, b) => focused(b) - focused(a) || SEVERITY[b.verdict] - SEVERITY[a.verdict] || b.bytes * weight(b) - a.bytes * weight(a) || b.connections * weight(b) - a.connections * weight(a))
    .slice(0, max);
}

/** What of an edge the canvas shows: a change elsewhere (its bytes by a few) costs no restyle. */
function drawnLook(edge: EdgeSummary): string {
  return `${edge.verdict} ${Math.round(edgeWidth(edge.bytes) * 2) / 2}`;
}

/**
 * A cytoscape instance kept equal to a topology and a set of edges. Each change is one batch,
 * and an edge is touched only when what it looks like changed, so a steady stream of flows
 * costs the canvas little.
 */
export class GraphView {
  private topology: UiTopology | undefined;
  private readonly edges = new Map<string, EdgeSummary>();
  /** The flow edges in the graph, with the look they were drawn with. */
  private readonly drawn = new Map<string, string>();
  /** The box elements as last laid out, to know when they changed. */
  private boxesKey = "";
  private focused: string | undefined;

  constructor(private readonly cy: cytoscape.Core) {}

  /** Everything anew: the snapshot's topology and edges. */
  reset(topology: UiTopology, edges: readonly EdgeSummary[]): void {
    this.topology = topology;
    this.edges.clear();
    for (const edge of edges) this.edges.set(edge.id, edge);
    this.cy.batch(() => this.sync());
  }

  /** The edges that changed and went since the last call. */
  update(changed: readonly EdgeSummary[], removed: readonly string[]): void {
    if (!this.topology) return;
    for (const id of removed) this.edges.delete(id);
    for (const edge of changed) this.edges.set(edge.id, edge);
    this.cy.batch(() => this.sync());
  }

  edge(id: string): EdgeSummary | undefined {
    return this.edges.get(id);
  }

  allEdges(): EdgeSummary[] {
    return [...this.edges.values()];
  }

  /** Flow edges drawn, of how many. */
  get drawnCount(): number {
    return this.drawn.size;
  }

  /**
   * Fades every pod, Service, host and flow edge but the selection and what it touches (its
   * edges and their other ends), so a pod's flows stand out of 1,000; undefined shows all.
   */
  focus(id: string | undefined): void {
    this.focused = id;
    this.cy.batch(() => {
      if (this.topology) this.sync();
      this.cy.elements(".faded").removeClass("faded");
      if (id === undefined) return;
      const selected = this.cy.getElementById(id);
      if (selected.empty() || selected.hasClass("cluster-node") || selected.hasClass("group")) return;
      const edges = selected.isEdge() ? selected : this.cy.getElementById(id).connectedEdges(".flow");
      const kept = selected.union(edges).union(edges.connectedNodes());
      this.cy.elements(".flow, .pod, .service, .host, .address").difference(kept).addClass("faded");
    });
  }

  private sync(): void {
    const wanted = edgesToDraw(this.edges.values(), MAX_DRAWN_EDGES, this.drawn, this.focused);
    const wantedIds = new Set(wanted.map((edge) => edge.id));
    for (const id of this.drawn.keys()) {
      if (wantedIds.has(id)) continue;
      this.cy.getElementById(id).remove();
      this.drawn.delete(id);
    }
    // A flow to an address nobody names adds a box for it; one that went may take one away.
    this.syncBoxes(wanted);
    for (const edge of wanted) {
      const look = drawnLook(edge);
      const drawnAs = this.drawn.get(edge.id);
      if (drawnAs === look) continue;
      if (drawnAs !== undefined) {
        this.cy.getElementById(edge.id).data({ verdict: edge.verdict, width: edgeWidth(edge.bytes) });
      } else {
        const touches = this.focused === undefined || this.focused === edge.source || this.focused === edge.target;
        const added = this.cy.add({ group: "edges", data: { id: edge.id, source: edge.source, target: edge.target, verdict: edge.verdict, width: edgeWidth(edge.bytes) }, classes: touches ? "flow" : "flow faded" });
        if (touches) added.connectedNodes().removeClass("faded");
      }
      this.drawn.set(edge.id, look);
    }
  }

  /** The boxes the topology and the drawn edges need, laid out again when they changed. */
  private syncBoxes(edges: readonly EdgeSummary[]): void {
    const { elements, layout } = boxElements(this.topology!, edges);
    const key = JSON.stringify(elements);
    if (key === this.boxesKey) return;
    this.boxesKey = key;
    const wanted = new Map(elements.map((element) => [element.id, element]));
    const gone = this.cy.nodes().filter((node) => !wanted.has(node.id()));
    gone.connectedEdges(".flow").forEach((edge) => void this.drawn.delete(edge.id()));
    gone.remove();
    const { positions, rects } = layoutBoxes(layout);
    for (const element of elements) {
      const rect = rects.get(element.id);
      const data = { id: element.id, label: element.label, ...(element.box ? { box: element.box } : {}), ...(rect ? { width: rect.width, height: rect.height } : {}) };
      const existing = this.cy.getElementById(element.id);
      if (existing.nonempty()) {
        existing.data(data);
        if (!existing.hasClass(element.classes)) existing.classes(element.classes);
      } else {
        this.cy.add({ group: "nodes", data, classes: element.classes });
      }
      const position = rect ?? positions.get(element.id);
      if (position) this.cy.getElementById(element.id).position({ x: position.x, y: position.y });
    }
    this.syncEndpointEdges();
  }

  private syncEndpointEdges(): void {
    const wanted = new Map(endpointEdges(this.topology!).map((edge) => [edge.id, edge]));
    this.cy.edges(".endpoint").filter((edge) => !wanted.has(edge.id())).remove();
    for (const edge of wanted.values()) {
      if (this.cy.getElementById(edge.id).empty()) this.cy.add({ group: "edges", data: { ...edge }, classes: "endpoint" });
    }
  }
}
