/**
 * The flow map in a real browser: Debian's Chromium, headless, driven with puppeteer-core.
 *
 * First against a server of made-up data at the size the map must stay usable at (20 nodes × 20
 * pods, a steady stream of flows), then against a live lab: `trellis lab ui` shows every node
 * and pod `lab status` lists, a connection made in the lab appears as an edge within 2 s, and a
 * connection a NetworkPolicy denies appears in the deny colour with the policy named when its
 * edge is clicked. Screenshots go to test-output/ui/ for a person to look at.
 */
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import puppeteer, { type Browser, type Page } from "puppeteer-core";
import type { FlowRecord } from "../src/flows/record.js";
import { VERDICT_COLOURS } from "../src/ui/page/style.js";
import { startUiServer, type UiServer } from "../src/ui/server.js";
import type { UiTopology } from "../src/ui/topology.js";
import { downAll, labName, labStatus, runTrellis, waitFor } from "./support/lab.js";
import { TRELLIS } from "./support/trellis-cni.js";

const CHROMIUM = "/usr/bin/chromium";
const OUTPUT = resolve(dirname(fileURLToPath(import.meta.url)), "../test-output/ui");

/** Chromium as root in a container: no sandbox (it needs user namespaces root may not have), no GPU. `headless: true` adds --headless=new. */
async function launchChromium(): Promise<{ browser: Browser; close(): Promise<void> }> {
  const userDataDir = mkdtempSync(join(tmpdir(), "trellis-chromium-"));
  const browser = await puppeteer.launch({ executablePath: CHROMIUM, headless: true, args: ["--no-sandbox", "--headless=new", "--disable-gpu"], userDataDir });
  return {
    browser,
    close: async () => {
      await browser.close().catch(() => undefined);
      rmSync(userDataDir, { recursive: true, force: true });
    },
  };
}

/** A page that records its console errors, failed requests and uncaught exceptions. */
async function openMap(browser: Browser, url: string): Promise<{ page: Page; errors: string[] }> {
  const page = await browser.newPage();
  await page.setViewport({ width: 1600, height: 1000 });
  const errors: string[] = [];
  page.on("console", (message) => {
    if (message.type() === "error") errors.push(`console: ${message.text()}`);
  });
  page.on("pageerror", (error) => errors.push(`page: ${(error as Error).message}`));
  page.on("requestfailed", (request) => errors.push(`request ${request.url()}: ${request.failure()?.errorText}`));
  // tsx compiles this file with esbuild's keepNames, which wraps the functions handed to
  // page.evaluate in __name(), a helper that exists only in Node.
  await page.evaluateOnNewDocument("globalThis.__name = (target) => target;");
  await page.goto(url, { waitUntil: "load" });
  return { page, errors };
}

interface DrawnEdge {
  id: string;
  source: string;
  target: string;
  verdict: string;
  colour: string;
}

/** The graph as the page holds it (cytoscape's own elements, `trellis.cy` in the console). */
declare const trellis: { cy: import("cytoscape").Core };

const drawnPods = (page: Page) => page.evaluate(() => trellis.cy.nodes(".pod").map((node) => ({ id: node.id(), box: node.data("box") as string })));
const drawnNodes = (page: Page) => page.evaluate(() => trellis.cy.nodes(".cluster-node").map((node) => node.id()));
const drawnEdges = (page: Page) =>
  page.evaluate(() => trellis.cy.edges(".flow").map((edge) => ({ id: edge.id(), source: edge.data("source") as string, target: edge.data("target") as string, verdict: edge.data("verdict") as string, colour: edge.style("line-color") as string })));

/** `#d32f2f` and `rgb(211,47,47)` alike, as [r, g, b]. */
function rgb(colour: string): number[] {
  const hex = /^#([0-9a-f]{2})([0-9a-f]{2})([0-9a-f]{2})$/i.exec(colour);
  if (hex) return hex.slice(1).map((part) => parseInt(part, 16));
  return (colour.match(/[0-9]+/g) ?? []).slice(0, 3).map(Number);
}

/** Clicks an element where the page draws it, as a person would. */
async function click(page: Page, id: string): Promise<void> {
  const point = await page.evaluate((target) => {
    const element = trellis.cy.getElementById(target);
    const position = element.isEdge() ? element.renderedMidpoint() : trellis.cy.getElementById(target).renderedPosition();
    const box = trellis.cy.container()!.getBoundingClientRect();
    return { x: box.left + position.x, y: box.top + position.y };
  }, id);
  await page.mouse.click(point.x, point.y);
}

async function screenshot(page: Page, name: string): Promise<void> {
  mkdirSync(OUTPUT, { recursive: true });
  await page.screenshot({ path: join(OUTPUT, `${name}.png`) as `${string}.png` });
}

describe("the flow map in Chromium at 20 nodes × 20 pods", { timeout: 120_000 }, () => {
  const nodes = Array.from({ length: 20 }, (_, i) => `node${i + 1}`);
  const topology: UiTopology = {
    title: "20 nodes × 20 pods, made-up flows",
    nodes: nodes.map((name, i) => ({ name, addresses: [`198.18.0.${11 + i}`], podCidrs: [`10.244.${i + 1}.0/24`], mode: "vxlan" })),
    pods: nodes.flatMap((node, i) => Array.from({ length: 20 }, (_, k) => ({ namespace: "default", name: `${node}-pod${k}`, node, addresses: [`10.244.${i + 1}.${k + 2}`] }))),
    services: [{ namespace: "default", name: "web", type: "ClusterIP", clusterIPs: ["10.96.0.10"], externalIPs: [], ports: [{ port: 80, protocol: "TCP" }], endpoints: [0, 1, 2].map((k) => ({ address: `10.244.1.${k + 2}`, pod: `default/node1-pod${k}`, ready: true })) }],
    hosts: [{ name: "external", addresses: ["198.18.0.200"] }],
  };
  let server: UiServer;
  let chromium: Awaited<ReturnType<typeof launchChromium>>;
  let flood: NodeJS.Timeout | undefined;
  let nextPort = 0;
  const records: { push?: (record: FlowRecord) => void } = {};
  /** About 2,000 records a second between random pods, one in ten denied. */
  const startFlood = () => {
    flood = setInterval(() => {
      for (let i = 0; i < 100; i++) {
        const from = Math.floor(Math.random() * 400);
        const to = Math.floor(Math.random() * 400);
        const denied = Math.random() < 0.1;
        const address = (pod: number) => `10.244.${Math.floor(pod / 20) + 1}.${(pod % 20) + 2}`;
        records.push?.({
          time: new Date().toISOString(),
          node: nodes[Math.floor(to / 20)],
          event: denied ? "denied" : "destroy",
          verdict: denied ? "denied" : "forwarded",
          ...(denied ? { policy: "NetworkPolicy default/made-up", reason: "ingress" } : { counters: { packetsSent: 10, bytesSent: 5000, packetsReceived: 8, bytesReceived: 3000 } }),
          protocol: "TCP",
          source: { address: address(from), port: 30000 + (nextPort++ % 30000) },
          destination: { address: address(to), port: 8080 },
        });
      }
    }, 50);
  };

  before(async () => {
    server = await startUiServer({
      listen: { host: "127.0.0.1", port: 0, loopback: true },
      source: { topology: async () => topology, follow: (onRecord) => ((records.push = onRecord), { stop: () => (records.push = undefined) }) },
    });
    chromium = await launchChromium();
  });
  after(async () => {
    clearInterval(flood);
    await chromium?.close();
    await server?.close();
  });

  it("draws every node and pod, stays responsive under 2,000 flows a second, and shows a pod's flows on a click", async () => {
    // Catches: a map that takes seconds to draw or freezes the tab at the largest lab (a force
    // layout or a redraw per record), edges that never arrive, and a click that shows nothing.
    const started = Date.now();
    const { page, errors } = await openMap(chromium.browser, server.url);
    await page.waitForFunction(() => typeof trellis !== "undefined" && trellis.cy.nodes(".pod").length === 400, { timeout: 10_000 });
    const drawnIn = Date.now() - started;
    assert.ok(drawnIn < 5_000, `drawn in ${drawnIn} ms`);
    assert.equal((await drawnNodes(page)).length, 20);
    startFlood();
    // The longest the page's main thread went without a frame, over 3 s of flows.
    const longestFrameGap = await page.evaluate(
      () =>
        new Promise<number>((resolve) => {
          let last = performance.now();
          let longest = 0;
          const end = last + 3000;
          const frame = (now: number) => {
            longest = Math.max(longest, now - last);
            last = now;
            if (now < end) requestAnimationFrame(frame);
            else resolve(longest);
          };
          requestAnimationFrame(frame);
        }),
    );
    assert.ok(longestFrameGap < 500, `the page went ${Math.round(longestFrameGap)} ms without a frame`);
    await page.waitForFunction(() => trellis.cy.edges(".flow").length > 500, { timeout: 5_000 });
    const edges = await drawnEdges(page);
    assert.ok(edges.some((edge) => edge.verdict === "denied"));
    for (const edge of edges) assert.deepEqual(rgb(edge.colour), rgb(VERDICT_COLOURS[edge.verdict as keyof typeof VERDICT_COLOURS]), `${edge.id} in its verdict's colour`);
    await click(page, "pod:default/node7-pod3");
    await page.waitForSelector("#flows tbody tr", { timeout: 5_000 });
    assert.equal(await page.$eval("#details h2", (heading) => heading.textContent), "Pod default/node7-pod3");
    assert.match(await page.$eval("#policies", (list) => list.textContent ?? ""), /NetworkPolicy default\/made-up: denied|let through/);
    await screenshot(page, "20x20");
    clearInterval(flood);
    assert.deepEqual(errors, []);
  });
});

describe("the flow map of a live lab", { timeout: 600_000 }, () => {
  const name = labName("ui");
  let ui: ChildProcess | undefined;
  let chromium: Awaited<ReturnType<typeof launchChromium>> | undefined;
  let page: Page;
  let errors: string[];
  let store = "";
  let probePort = 0;
  after(async () => {
    await chromium?.close();
    if (ui?.pid !== undefined && ui.exitCode === null) ui.kill("SIGTERM");
    downAll();
  });

  /** Connects from one lab pod to another's probe port; true when it was answered. */
  const connect = (from: string, toAddress: string) => runTrellis(["lab", "exec", "--name", name, from, "--", TRELLIS, "probe", "connect", toAddress, String(probePort), "--timeout", "1000"], 30_000).status === 0;

  it("lab up (2 nodes × 2 pods) and lab ui, in Chromium", async () => {
    const up = runTrellis(["lab", "up", "--name", name, "--nodes", "2", "--pods-per-node", "2", "--family", "ipv4"], 300_000);
    assert.equal(up.status, 0, up.stdout + up.stderr);
    const status = labStatus(name) as ReturnType<typeof labStatus> & { probePort: number };
    store = status.store;
    probePort = status.probePort;
    ui = spawn(TRELLIS, ["lab", "ui", "--name", name, "--listen", "127.0.0.1:0"], { stdio: ["ignore", "pipe", "pipe"] });
    let stderr = "";
    ui.stderr!.on("data", (chunk: Buffer) => (stderr += chunk.toString("utf8")));
    const url = await new Promise<string>((resolveUrl, reject) => {
      let stdout = "";
      ui!.stdout!.on("data", (chunk: Buffer) => {
        stdout += chunk.toString("utf8");
        const found = /serving the flow map at (\S+)/.exec(stdout);
        if (found) resolveUrl(found[1]);
      });
      ui!.once("exit", (code) => reject(new Error(`lab ui ended (${code}): ${stdout}${stderr}`)));
    });
    assert.match(url, /^http:\/\/127\.0\.0\.1:[0-9]+\/$/);
    chromium = await launchChromium();
    ({ page, errors } = await openMap(chromium.browser, url));
    await page.waitForFunction(() => typeof trellis !== "undefined" && trellis.cy.nodes(".pod").length > 0, { timeout: 15_000 });
  });

  it("shows every node and pod that lab status lists, each pod in its node", async () => {
    // Catches: nodes or pods missing from the map, or pods drawn in the wrong node's box.
    const status = labStatus(name);
    assert.deepEqual((await drawnNodes(page)).sort(), status.nodes.map((node) => `node:${node.name}`).sort());
    assert.deepEqual(
      (await drawnPods(page)).sort((a, b) => a.id.localeCompare(b.id)),
      status.pods.map((pod) => ({ id: `pod:default/${pod.name}`, box: `node:${pod.node}` })).sort((a, b) => a.id.localeCompare(b.id)),
    );
    // The side panel lists them too, as text.
    const listed = await page.$$eval("#node-list [data-pod]", (items) => items.map((item) => item.getAttribute("data-pod")));
    assert.deepEqual(listed.sort(), status.pods.map((pod) => `default/${pod.name}`).sort());
    await screenshot(page, "lab");
  });

  it("a connection from node1-pod0 to node2-pod0 appears as a forwarded edge within 2 s", async () => {
    // Catches: flows that never reach the page (agents not followed, records not placed on
    // their pods, the page not updated live), or that take longer than a person waits.
    const target = labStatus(name).pods.find((pod) => pod.name === "node2-pod0")!;
    assert.ok(connect("node1-pod0", target.addresses[0]), "the connection is answered");
    const connected = Date.now();
    const wanted = (edge: DrawnEdge) => edge.source === "pod:default/node1-pod0" && edge.target === "pod:default/node2-pod0" && edge.verdict === "forwarded";
    await page.waitForFunction(() => trellis.cy.edges(".flow").some((edge) => edge.data("source") === "pod:default/node1-pod0" && edge.data("target") === "pod:default/node2-pod0" && edge.data("verdict") === "forwarded"), { timeout: 2_000, polling: 50 }).catch(async () => {
      assert.fail(`no forwarded edge node1-pod0 -> node2-pod0 within 2 s; the page has ${JSON.stringify(await drawnEdges(page))}`);
    });
    const edge = (await drawnEdges(page)).find(wanted)!;
    assert.ok(Date.now() - connected <= 2_500);
    assert.deepEqual(rgb(edge.colour), rgb(VERDICT_COLOURS.forwarded));
    await screenshot(page, "lab-forwarded");
  });

  it("a connection a NetworkPolicy denies appears in the deny colour; a click on it names the policy", async () => {
    // Catches: denied flows drawn as forwarded or not at all, the deny colour not applied, and a
    // click that does not say which policy decided.
    const target = labStatus(name).pods.find((pod) => pod.name === "node2-pod1")!;
    const policy = {
      apiVersion: "networking.k8s.io/v1", kind: "NetworkPolicy", metadata: { name: "ui-deny-node2-pod1", namespace: "default" },
      spec: { podSelector: { matchLabels: { "trellis.dev/lab-pod": "node2-pod1" } }, policyTypes: ["Ingress"], ingress: [] },
    };
    const applied = runTrellis(["apply", "-f", "-", "--store", store], 60_000, JSON.stringify(policy));
    assert.equal(applied.status, 0, applied.stderr);
    // In force once node1-pod1's connections go unanswered.
    await waitFor("the policy denies node1-pod1's connections", () => !connect("node1-pod1", target.addresses[0]), 60_000);
    assert.equal(connect("node1-pod1", target.addresses[0]), false);
    const refused = Date.now();
    const id = `denied pod:default/node1-pod1 -> pod:default/node2-pod1`;
    await page.waitForFunction((wanted) => trellis.cy.getElementById(wanted).nonempty(), { timeout: 2_000, polling: 50 }, id).catch(async () => {
      assert.fail(`no denied edge node1-pod1 -> node2-pod1 within 2 s; the page has ${JSON.stringify(await drawnEdges(page))}`);
    });
    assert.ok(Date.now() - refused <= 2_500);
    const edge = (await drawnEdges(page)).find((each) => each.id === id)!;
    assert.deepEqual(rgb(edge.colour), rgb(VERDICT_COLOURS.denied));
    await click(page, id);
    await page.waitForSelector("#policies li", { timeout: 5_000 });
    assert.match(await page.$eval("#policies", (list) => list.textContent ?? ""), /NetworkPolicy default\/ui-deny-node2-pod1: denied/);
    assert.match(await page.$eval("#flows tbody", (rows) => rows.textContent ?? ""), /node1-pod1.*node2-pod1/);
    await screenshot(page, "lab-denied");
    assert.deepEqual(errors, []);
  });
});
