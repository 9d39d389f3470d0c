/**
 * The flow map's script (bundled with cytoscape into /app.js): follows `/events`, keeps the
 * graph equal to what the server says, and shows the selection's flows in the side panel.
 * Edge changes are applied at most every 400 ms, in one batch, however fast they come.
 * The graph is `trellis.cy` in the browser's console.
 */
import cytoscape from "cytoscape";
import type { EdgeSummary } from "../flow-window.js";
import type { EdgesEvent, FlowsAnswer, SnapshotEvent, UiStatus } from "../protocol.js";
import type { UiTopology } from "../topology.js";
import { GraphView } from "./graph.js";
import { addressNames, el, renderEdge, renderEntity, renderFlows, renderOverview, type AddressNames } from "./panel.js";
import { GRAPH_STYLE } from "./style.js";

const FLUSH_MS = 400;
/** The selection's flows are asked for again at most this often while its edges change. */
const FLOWS_REFRESH_MS = 1000;
/** The overview (nothing selected) is drawn again at most this often, so it can be read and scrolled. */
const OVERVIEW_REFRESH_MS = 2000;

const byId = (id: string) => document.getElementById(id)!;

const cy = cytoscape({
  container: byId("graph"),
  style: GRAPH_STYLE,
  layout: { name: "preset" },
  minZoom: 0.05,
  maxZoom: 4,
  boxSelectionEnabled: false,
  // A box is a shape behind its pods: dragging it would leave them behind.
  autoungrabify: true,
  textureOnViewport: true,
  hideEdgesOnViewport: true,
});
(window as unknown as { trellis: { cy: cytoscape.Core } }).trellis = { cy };
const view = new GraphView(cy);

let topology: UiTopology | undefined;
let names: AddressNames = new Map();
let selected: string | undefined;
let fitted = false;
let pending: { changed: Map<string, EdgeSummary>; removed: Set<string> } = { changed: new Map(), removed: new Set() };
let flushTimer: ReturnType<typeof setTimeout> | undefined;
let flowsTimer: ReturnType<typeof setTimeout> | undefined;
let lastFlowsAt = 0;
let lastOverviewAt = 0;
let overviewTimer: ReturnType<typeof setTimeout> | undefined;
let flowsRequest = 0;

function showStatus(status: UiStatus | string): void {
  const line = byId("status");
  if (typeof status === "string") {
    line.textContent = status;
    line.className = "problem";
    return;
  }
  const problems = status.problems.map((problem) => `${problem.node}: ${problem.message}`);
  const drawn = view.drawnCount < status.edges ? ` (drawn: the ${view.drawnCount} denied, dropped and busiest)` : "";
  line.textContent = [`live · ${status.edges} edges${drawn}, ${status.connections} connections in the last ${status.windowMs / 1000} s`, ...problems].join(" · ");
  line.className = problems.length ? "problem" : "";
}

function select(id: string | undefined): void {
  selected = id && cy.getElementById(id).nonempty() ? id : undefined;
  cy.elements(":selected").unselect();
  if (selected) cy.getElementById(selected).select();
  view.focus(selected);
  renderPanel();
}

function renderPanel(): void {
  if (!topology) return;
  const details = byId("details");
  if (!selected || selected.startsWith("group:")) {
    lastOverviewAt = Date.now();
    details.replaceChildren(renderOverview(topology, view.allEdges(), { select }));
    return;
  }
  const edge = view.edge(selected);
  if (!edge && cy.getElementById(selected).isEdge()) {
    // A Service's endpoint edge: its Service says more.
    select(cy.getElementById(selected).data("source") as string);
    return;
  }
  details.replaceChildren(edge ? renderEdge(edge) : renderEntity(topology, selected), el("p", { class: "muted", id: "flows" }, "loading flows…"));
  void loadFlows();
}

async function loadFlows(): Promise<void> {
  const asked = selected;
  if (!asked) return;
  const request = ++flowsRequest;
  lastFlowsAt = Date.now();
  const query = view.edge(asked) ? `edge=${encodeURIComponent(asked)}` : `entity=${encodeURIComponent(asked)}`;
  let replacement: HTMLElement;
  try {
    const response = await fetch(`/api/flows?${query}`);
    if (!response.ok) throw new Error(`${response.status} ${await response.text()}`);
    replacement = renderFlows((await response.json()) as FlowsAnswer, names);
  } catch (error) {
    replacement = el("p", { class: "problem", id: "flows" }, `the flows could not be read: ${(error as Error).message}`);
  }
  // An answer to an older question, or for what is no longer selected, is let go.
  if (request !== flowsRequest || asked !== selected) return;
  document.getElementById("flows")?.replaceWith(replacement);
}

/** The selection's flows again, soon, when an edge it has changed. */
function refreshFlowsSoon(): void {
  if (flowsTimer !== undefined || !selected) return;
  flowsTimer = setTimeout(() => {
    flowsTimer = undefined;
    if (view.edge(selected!)) {
      const edge = view.edge(selected!)!;
      document.querySelector("#details > section")?.replaceWith(renderEdge(edge));
    }
    void loadFlows();
  }, Math.max(0, lastFlowsAt + FLOWS_REFRESH_MS - Date.now()));
}

/** The overview again, once its interval is over: the last change is always shown. */
function overviewSoon(): void {
  if (overviewTimer !== undefined) return;
  overviewTimer = setTimeout(() => {
    overviewTimer = undefined;
    if (!selected) renderPanel();
  }, Math.max(0, lastOverviewAt + OVERVIEW_REFRESH_MS - Date.now()));
}

function flush(): void {
  flushTimer = undefined;
  const { changed, removed } = pending;
  pending = { changed: new Map(), removed: new Set() };
  view.update([...changed.values()], [...removed]);
  if (!selected) {
    overviewSoon();
    return;
  }
  if (removed.has(selected) && cy.getElementById(selected).empty()) return select(undefined);
  const touches = (edge: EdgeSummary) => edge.id === selected || edge.source === selected || edge.target === selected;
  if ([...changed.values()].some(touches) || removed.has(selected)) refreshFlowsSoon();
}

const events = new EventSource("/events");
events.addEventListener("snapshot", (event) => {
  const snapshot = JSON.parse((event as MessageEvent<string>).data) as SnapshotEvent;
  topology = snapshot.topology;
  names = addressNames(topology);
  byId("title").textContent = topology.title;
  document.title = `Trellis flow map · ${topology.title}`;
  pending = { changed: new Map(), removed: new Set() };
  view.reset(topology, snapshot.edges);
  if (!fitted) {
    // The whole cluster in view, but a small one not blown up past its natural size.
    cy.fit(undefined, 30);
    if (cy.zoom() > 1) {
      cy.zoom(1);
      cy.center();
    }
    fitted = true;
  }
  showStatus(snapshot.status);
  if (selected && cy.getElementById(selected).empty()) selected = undefined;
  view.focus(selected);
  renderPanel();
});
events.addEventListener("edges", (event) => {
  const update = JSON.parse((event as MessageEvent<string>).data) as EdgesEvent;
  for (const id of update.removed) {
    pending.changed.delete(id);
    pending.removed.add(id);
  }
  for (const edge of update.changed) {
    pending.removed.delete(edge.id);
    pending.changed.set(edge.id, edge);
  }
  flushTimer ??= setTimeout(flush, FLUSH_MS);
});
events.addEventListener("status", (event) => showStatus(JSON.parse((event as MessageEvent<string>).data) as UiStatus));
events.addEventListener("error", () => showStatus("the server is not answering; trying again…"));

cy.on("tap", "node, edge", (event) => select(event.target.id() as string));
cy.on("tap", (event) => {
  if (event.target === cy) select(undefined);
});
