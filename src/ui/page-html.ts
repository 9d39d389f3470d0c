/**
 * The page's HTML and CSS. The HTML is a frame: everything the cluster names (nodes, pods,
 * Services, policies, all of which tenants choose) is put in by the script as text nodes
 * (`textContent`), never as markup. The one value the server writes into the HTML, the title, goes
 * through `escapeHtml`.
 */
import { VERDICT_COLOURS } from "./page/style.js";

/**
 * cytoscape adds a <style> element of its own to the page unless an element with this id is
 * there; the content security policy would refuse it (inline style), so the page's stylesheet
 * takes the id and holds that rule itself.
 */
const CYTOSCAPE_STYLESHEET_ID = "__________cytoscape_stylesheet";

const HTML_ESCAPES: Record<string, string> = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

/** Text made safe for an HTML text node or a quoted attribute value. */
export function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (character) => HTML_ESCAPES[character]);
}

export function renderPage(title: string): string {
  const legend = Object.keys(VERDICT_COLOURS)
    .map((verdict) => `<span class="swatch swatch-${escapeHtml(verdict)}"></span>${escapeHtml(verdict)}`)
    .join(" ");
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>Trellis flow map · ${escapeHtml(title)}</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/app.css" id="${CYTOSCAPE_STYLESHEET_ID}">
</head>
<body>
<header>
  <h1>Trellis flow map · <span id="title">${escapeHtml(title)}</span></h1>
  <p id="legend">edges: the flows of the last minute, ${legend}; thicker, more bytes</p>
  <p id="status" role="status">connecting…</p>
</header>
<main>
  <div id="graph" role="img" aria-label="the cluster's nodes, pods and Services, and the flows between them"></div>
  <aside id="panel" aria-live="polite"><div id="details"></div></aside>
</main>
<script src="/app.js"></script>
</body>
</html>
`;
}

export const PAGE_CSS = `
* { box-sizing: border-box; }
html, body { height: 100%; margin: 0; }
body { display: flex; flex-direction: column; font: 14px/1.4 system-ui, sans-serif; color: #1d2330; background: #f6f7f9; }
header { display: flex; flex-wrap: wrap; align-items: baseline; gap: 0 1.5em; padding: 0.4em 1em; background: #fff; border-bottom: 1px solid #d8dce3; }
h1 { font-size: 1.1em; margin: 0; }
header p { margin: 0; color: #4a5263; }
#status.problem { color: #b3261e; }
.swatch { display: inline-block; width: 1.6em; height: 0.35em; margin: 0 0.3em 0.15em 0.6em; vertical-align: middle; }
.swatch-forwarded { background: ${VERDICT_COLOURS.forwarded}; }
.swatch-denied { background: ${VERDICT_COLOURS.denied}; }
.swatch-dropped { background: ${VERDICT_COLOURS.dropped}; }
main { flex: 1; display: flex; min-height: 0; }
#graph { flex: 1; min-width: 0; background: #fff; position: relative; }
#panel { width: 34em; max-width: 45%; overflow: auto; padding: 0.6em 1em; border-left: 1px solid #d8dce3; }
#panel h2 { font-size: 1.05em; margin: 0.2em 0 0.4em; word-break: break-all; }
#panel h3 { font-size: 0.95em; margin: 1em 0 0.3em; }
#panel dl { display: grid; grid-template-columns: max-content 1fr; gap: 0.1em 0.8em; margin: 0; }
#panel dt { color: #4a5263; }
#panel dd { margin: 0; word-break: break-all; }
#panel table { border-collapse: collapse; width: 100%; font-size: 0.9em; }
#panel th, #panel td { text-align: left; padding: 0.15em 0.4em 0.15em 0; vertical-align: top; overflow-wrap: anywhere; }
#panel td.nowrap { white-space: nowrap; }
#panel th { color: #4a5263; font-weight: normal; border-bottom: 1px solid #d8dce3; }
#panel ul { margin: 0; padding-left: 1.2em; }
#panel button.link { border: 0; padding: 0; background: none; color: #1a56c4; cursor: pointer; font: inherit; text-align: left; }
.verdict-forwarded { color: ${VERDICT_COLOURS.forwarded}; }
.verdict-denied { color: ${VERDICT_COLOURS.denied}; font-weight: 600; }
.verdict-dropped { color: ${VERDICT_COLOURS.dropped}; font-weight: 600; }
.muted { color: #6b7385; }
`;
