/**
 * How the map looks: a colour per verdict, an edge's width by its bytes, and cytoscape's
 * stylesheet. Labels go unrendered when zoomed out (min-zoomed-font-size) and edges hide while
 * the view moves, which keeps 20 nodes × 20 pods smooth. Drawing order is set (z-index, manual):
 * boxes at the bottom, edges over them, the boxes' members on top.
 */
import type cytoscape from "cytoscape";
import type { FlowVerdict } from "../../flows/record.js";

export const VERDICT_COLOURS: Readonly<Record<FlowVerdict, string>> = { forwarded: "#2e7d32", denied: "#d32f2f", dropped: "#ef6c00" };

/** 1.5 px for a connection that carried nothing yet, growing with the log of its bytes, 12 px at most. */
export function edgeWidth(bytes: number): number {
  return Math.min(12, 1.5 + 1.5 * Math.log10(1 + Math.max(0, bytes) / 100));
}

export const GRAPH_STYLE: cytoscape.StylesheetJson = [
  {
    selector: "node",
    style: {
      label: "data(label)",
      "font-size": 11,
      "min-zoomed-font-size": 7,
      "text-wrap": "wrap",
      "text-max-width": "140px",
      color: "#1d2330",
      "z-index-compare": "manual",
      "z-index": 20,
    },
  },
  {
    selector: "node.pod",
    style: { shape: "round-rectangle", width: 16, height: 16, "background-color": "#5b7db8", "text-valign": "bottom", "text-margin-y": 3 },
  },
  {
    selector: "node.service",
    style: { shape: "hexagon", width: 20, height: 18, "background-color": "#8e5bb8", "text-valign": "bottom", "text-margin-y": 3 },
  },
  {
    selector: "node.host, node.address",
    style: { shape: "diamond", width: 16, height: 16, "background-color": "#7a8396", "text-valign": "bottom", "text-margin-y": 3 },
  },
  {
    // A box is a shape behind its members, sized by the layout (layout.ts says why not a compound node).
    selector: "node.cluster-node, node.group",
    style: {
      shape: "round-rectangle",
      width: "data(width)",
      height: "data(height)",
      "background-color": "#eef1f6",
      "border-color": "#aab3c2",
      "border-width": 1,
      "text-valign": "top",
      "text-halign": "center",
      "text-margin-y": -4,
      "font-weight": "bold",
      // Large enough to read when the whole cluster is in view (smaller labels are not drawn then).
      "font-size": 18,
      "z-index": 0,
    },
  },
  { selector: "node.group", style: { "background-color": "#f7f4fb", "border-style": "dashed" } },
  { selector: "node:selected", style: { "border-width": 3, "border-color": "#1a56c4" } },
  {
    selector: "edge",
    style: { "curve-style": "bezier", "target-arrow-shape": "triangle", "arrow-scale": 0.8, opacity: 0.85, "z-index-compare": "manual", "z-index": 10 },
  },
  { selector: "edge.flow", style: { width: "data(width)" } },
  ...Object.entries(VERDICT_COLOURS).map(([verdict, colour]) => ({
    selector: `edge.flow[verdict = "${verdict}"]`,
    style: { "line-color": colour, "target-arrow-color": colour },
  })),
  {
    selector: "edge.endpoint",
    style: { width: 1, "line-style": "dashed", "line-color": "#b9a6cf", "target-arrow-color": "#b9a6cf", "target-arrow-shape": "none", opacity: 0.6 },
  },
  { selector: ".faded", style: { opacity: 0.12 } },
  { selector: "edge:selected", style: { opacity: 1, "overlay-color": "#1a56c4", "overlay-opacity": 0.15, "overlay-padding": 4 } },
];
