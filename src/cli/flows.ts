/**
 * `trellis flows`: the flow records of every node's agent (its `/flows`), merged and ordered by
 * time, as a table like `hubble observe` or as JSON lines. The agents are found in a lab
 * (`--lab NAME`: each is asked inside its node's network namespace, where it listens on
 * loopback), in the cluster store (`--store`: each node's addresses, at `--agent-port`), on the
 * API (`--kubeconfig`: each Node's InternalIP), or given (`--agent URL`).
 */
import { spawn, type ChildProcess } from "node:child_process";
import { request as httpRequest, type ClientRequest } from "node:http";
import { Option, type Command } from "commander";
import { listNodes, type NodeRecord } from "../cluster/node-cidrs.js";
import { flowFilterQuery, parseFlowFilter, type FlowFilter } from "../flows/filter.js";
import type { FlowRecord } from "../flows/record.js";
import { flowRow, renderFlowTable } from "../flows/table.js";
import { KubeClient } from "../kube/client.js";
import { loadKubeconfig } from "../kube/config.js";
import type { KubeNode } from "../kube/nodes.js";
import { selfInvocation } from "../lab/probe.js";
import { formatIp, tryParseIp, type IpAddress } from "../net/ip.js";
import { labMemberNetns, requireLabState } from "../lab/state.js";
import { checkLabName } from "../lab/topology.js";
import { withClusterOptions, withStore, type ClusterOptions } from "./cluster-options.js";

/** Where agents serve /flows unless told otherwise (the agent's --metrics-bind-address port). */
export const DEFAULT_AGENT_PORT = 9656;
/** Most bytes of one line from an agent: a record is a few hundred. */
const MAX_LINE = 64 * 1024;

/** One node's agent: reached at `url`, or (in a lab) at loopback inside the network namespace `netns`. */
export interface FlowAgent {
  readonly node: string;
  readonly url?: string;
  readonly netns?: string;
}

/** The agents of a lab, each reached inside its node's network namespace. */
export function labFlowAgents(labName: string): FlowAgent[] {
  const state = requireLabState(checkLabName(labName));
  return state.nodes.map((node) => ({ node: node.name, netns: labMemberNetns(state, node.name) }));
}

/** `http://HOST:PORT` of an agent, checked: no path, query or credentials. */
export function parseAgentUrl(text: string): string {
  let url: URL | undefined;
  try {
    url = new URL(text);
  } catch {
    url = undefined;
  }
  // The URL parser drops tabs, newlines and spaces at the ends silently: refused here instead.
  if (!url || /[\s\x00-\x1f]/.test(text) || url.protocol !== "http:" || url.username || url.password || (url.pathname !== "/" && url.pathname !== "") || url.search || url.hash || !url.port) {
    throw new Error(`--agent ${JSON.stringify(text)} is not an agent's address: expected http://HOST:PORT, such as http://127.0.0.1:${DEFAULT_AGENT_PORT}`);
  }
  return `http://${url.host}`;
}

export interface FollowOptions {
  /** Records from this long ago on, before the live ones; none of the past when undefined. */
  readonly sinceMs?: number;
  readonly filter?: FlowFilter;
}

/**
 * Follows every agent's /flows: what each holds from `sinceMs` ago, then the new records as they
 * come, each handed to `onRecord`. An agent that cannot be reached, or goes, is said through
 * `onProblem` and asked again a few seconds later (from where it left off), until `stop`.
 */
export function followFlows(agents: readonly FlowAgent[], options: FollowOptions, onRecord: (record: FlowRecord) => void, onProblem: (node: string, message: string) => void): { stop(): void } {
  const stops = agents.map((agent) => {
    let stopped = false;
    let current: { stop(): void } | undefined;
    let timer: NodeJS.Timeout | undefined;
    let since = options.sinceMs === undefined ? Date.now() : Date.now() - options.sinceMs;
    const connect = () => {
      if (stopped) return;
      const filter: FlowFilter = { ...options.filter, since };
      current = readAgent(agent, filter, true, (record) => {
        since = Math.max(since, Date.parse(record.time) + 1);
        onRecord(record);
      }, (problem) => {
        current = undefined;
        if (stopped) return;
        onProblem(agent.node, problem);
        timer = setTimeout(connect, 2_000);
      });
    };
    connect();
    return () => {
      stopped = true;
      clearTimeout(timer);
      current?.stop();
    };
  });
  return { stop: () => stops.forEach((stop) => stop()) };
}

/** Every agent's records that `filter` asks for, merged by time: the latest `limit` of them when given. */
export async function collectFlows(agents: readonly FlowAgent[], filter: FlowFilter, limit: number | undefined, onProblem: (node: string, message: string) => void): Promise<FlowRecord[]> {
  const lists = await Promise.all(agents.map((agent) => new Promise<FlowRecord[]>((resolve) => {
    const records: FlowRecord[] = [];
    readAgent(agent, filter, false, (record) => records.push(record), (problem) => {
      if (problem) onProblem(agent.node, problem);
      resolve(records);
    }, limit);
  })));
  const merged = lists.flat().sort((a, b) => a.time.localeCompare(b.time));
  return limit === undefined ? merged : merged.slice(-limit);
}

/**
 * Reads one agent's /flows; `ended` gets "" when the answer ended as it should (not following),
 * else what went wrong. Records that do not parse as records are left out.
 */
function readAgent(agent: FlowAgent, filter: FlowFilter, follow: boolean, onRecord: (record: FlowRecord) => void, ended: (problem: string) => void, limit?: number): { stop(): void } {
  let done = false;
  const finish = (problem: string) => {
    if (done) return;
    done = true;
    ended(problem);
  };
  let partial = "";
  let errors = "";
  const take = (chunk: Buffer) => {
    const lines = (partial + chunk.toString("utf8")).split("\n");
    partial = lines.pop()!;
    if (partial.length > MAX_LINE) partial = "";
    for (const line of lines) {
      if (!line.trim()) continue;
      const record = parseRecord(line);
      if (record) onRecord(record);
    }
  };
  if (agent.url) {
    const query = flowFilterQuery(filter);
    if (follow) query.set("follow", "true");
    if (limit !== undefined) query.set("limit", String(limit));
    let request: ClientRequest | undefined = httpRequest(`${agent.url}/flows?${query}`, { method: "GET", timeout: follow ? 30_000 : 10_000 }, (response) => {
      if (response.statusCode !== 200) {
        response.on("data", (chunk: Buffer) => (errors = (errors + chunk.toString("utf8")).slice(0, 1000)));
        response.on("end", () => finish(`${agent.url} answered ${response.statusCode}: ${errors.trim()}`));
        return;
      }
      response.on("data", take);
      response.on("end", () => finish(follow ? `${agent.url} ended the stream` : ""));
      response.on("error", (error) => finish(`${agent.url}: ${error.message}`));
    });
    // A following connection hears at least a blank line every 10 s; 30 s of nothing is a dead one.
    request.on("timeout", () => request?.destroy(new Error("no answer within its time")));
    request.on("error", (error) => finish(`${agent.url}: ${error.message}`));
    request.end();
    return {
      stop: () => {
        done = true;
        request?.destroy();
        request = undefined;
      },
    };
  }
  // In a lab: this command again, inside the node's namespace, against the agent's loopback address.
  // It ends when its stdin does: when this process goes, even by kill -9.
  const argv = [...selfInvocation(), "flows", "--agent", `http://127.0.0.1:${DEFAULT_AGENT_PORT}`, "-o", "json", "--until-stdin-closes", ...filterFlags(filter), ...(follow ? ["--follow"] : []), ...(limit !== undefined ? ["--limit", String(limit)] : [])];
  let child: ChildProcess | undefined = spawn("nsenter", [`--net=${agent.netns!}`, "--", ...argv], { stdio: ["pipe", "pipe", "pipe"] });
  child.stdout!.on("data", take);
  child.stderr!.on("data", (chunk: Buffer) => (errors = (errors + chunk.toString("utf8")).slice(-1000)));
  child.on("error", (error) => finish(`cannot reach the agent of ${agent.node}: ${error.message}`));
  child.on("close", (code) => finish(code === 0 && !follow ? "" : `the agent of ${agent.node}: ${errors.trim() || `exit ${code}`}`));
  return {
    stop: () => {
      done = true;
      child?.kill();
      child = undefined;
    },
  };
}

function filterFlags(filter: FlowFilter): string[] {
  return [...flowFilterQuery(filter)].flatMap(([key, value]) => [`--${key}`, value]);
}

/** A line of /flows as a record; undefined for anything else (a `{"dropped":N}` notice among them). */
function parseRecord(line: string): FlowRecord | undefined {
  try {
    const value = JSON.parse(line) as Partial<FlowRecord>;
    if (typeof value !== "object" || value === null || typeof value.time !== "string" || typeof value.node !== "string" || typeof value.verdict !== "string" || typeof value.source !== "object" || typeof value.destination !== "object") return undefined;
    return value as FlowRecord;
  } catch {
    return undefined;
  }
}

interface FlowsFlags extends ClusterOptions {
  lab?: string;
  kubeconfig?: string;
  agent?: string;
  agentPort: string;
  follow?: boolean;
  pod?: string;
  namespace?: string;
  service?: string;
  verdict?: string;
  since?: string;
  limit?: string;
  output: string;
  untilStdinCloses?: boolean;
}

/** Fixed widths for lines printed as they come (a table's widths are not known ahead). */
const FOLLOW_WIDTHS = [12, 10, 44, 72, 8, 10];

export function registerFlowsCommand(program: Command): void {
  withClusterOptions(
    program
      .command("flows")
      .description("the flow records of every node's agent, merged by time: what each connection of the cluster's traffic did")
      .option("--lab <name>", "the agents of this lab")
      .option("--agent <url>", "one agent, at http://HOST:PORT")
      .option("--kubeconfig <file>", "the agents of the Nodes of this cluster's API (at their InternalIPs)")
      .option("--agent-port <port>", "with --store or --kubeconfig: the port the agents serve /flows on", String(DEFAULT_AGENT_PORT))
      .option("-f, --follow", "keep printing new records as they come")
      .option("--pod <namespace/name>", "flows from or to this pod")
      .option("--namespace <namespace>", "flows from or to a pod or Service of this namespace")
      .option("--service <namespace/name>", "flows to this Service")
      .addOption(new Option("--verdict <verdict>", "forwarded, denied or dropped"))
      .option("--since <duration|time>", "flows from this long ago (30s, 5m, 2h) or this time (RFC 3339) on")
      .option("--limit <n>", "at most this many records, the latest")
      .addOption(new Option("-o, --output <format>", "table or json (one record a line)").default("table"))
      .addOption(new Option("--until-stdin-closes", "stop when stdin closes (how a lab's agents are followed from inside their namespaces)").hideHelp()),
  ).action(async (flags: FlowsFlags) => {
    const filter = parseFlowFilter(flags, Date.now());
    if (flags.output !== "table" && flags.output !== "json") throw new Error(`--output ${JSON.stringify(flags.output)} is not a format: expected table or json`);
    if (flags.limit !== undefined && (!/^[0-9]{1,9}$/.test(flags.limit) || Number(flags.limit) < 1)) throw new Error(`--limit ${JSON.stringify(flags.limit)} is not a number of records from 1`);
    if ([flags.lab, flags.agent, flags.kubeconfig].filter((given) => given !== undefined).length > 1) throw new Error("flows: give one of --lab, --agent and --kubeconfig (or none, for the cluster store's nodes)");
    const agents = await findAgents(flags);
    if (!agents.length) throw new Error(`flows: no agents to ask: ${flags.kubeconfig !== undefined ? "no Node has an InternalIP" : "the store holds no node an agent has run on"}`);
    const problem = (node: string, message: string) => process.stderr.write(`${node}: ${message}\n`);
    const limit = flags.limit === undefined ? undefined : Number(flags.limit);
    const print = (records: readonly FlowRecord[]) => {
      if (flags.output === "json") process.stdout.write(records.map((record) => `${JSON.stringify(record)}\n`).join(""));
      else if (!flags.follow) process.stdout.write(records.length ? renderFlowTable(records) : "");
      else for (const record of records) process.stdout.write(`${flowRow(record).map((cell, i) => (i < FOLLOW_WIDTHS.length ? cell.padEnd(FOLLOW_WIDTHS[i]) : cell)).join("  ").trimEnd()}\n`);
    };
    if (!flags.follow) {
      const records = await collectFlows(agents, filter, limit, problem);
      if (!records.length) process.stderr.write("No flows found.\n");
      print(records);
      return;
    }
    // What each holds already when asked for (--since, --limit), in time order, then what comes.
    const past = flags.since !== undefined || limit !== undefined ? await collectFlows(agents, filter, limit, problem) : [];
    print(past);
    const since = past.length ? Date.parse(past[past.length - 1].time) + 1 : Date.now();
    await new Promise<void>((resolve) => {
      const following = followFlows(agents, { sinceMs: Date.now() - since, filter }, (record) => print([record]), problem);
      const end = () => {
        following.stop();
        resolve();
      };
      process.once("SIGINT", end);
      process.once("SIGTERM", end);
      process.stdout.on("error", end);
      if (flags.untilStdinCloses) {
        process.stdin.on("end", end).on("error", end).resume();
      }
    });
  });
}

async function findAgents(flags: FlowsFlags): Promise<FlowAgent[]> {
  if (flags.agent !== undefined) return [{ node: new URL(parseAgentUrl(flags.agent)).host, url: parseAgentUrl(flags.agent) }];
  if (flags.lab !== undefined) return labFlowAgents(flags.lab);
  const port = parseAgentPort(flags.agentPort);
  if (flags.kubeconfig !== undefined) {
    const client = new KubeClient(loadKubeconfig(flags.kubeconfig));
    try {
      return kubeFlowAgents((await client.request<{ items: KubeNode[] }>("GET", "/api/v1/nodes")).items, port);
    } finally {
      client.close();
    }
  }
  return storeFlowAgents(await withStore(flags, undefined, (store) => listNodes(store)), port);
}

/** Each Node's agent at its first InternalIP (hostNetwork: where the agent listens), on `port`. */
export function kubeFlowAgents(nodes: readonly KubeNode[], port: number): FlowAgent[] {
  return nodes.flatMap((node) => {
    const address = (node.status?.addresses ?? []).filter((entry) => entry.type === "InternalIP").map((entry) => tryParseIp(entry.address ?? "")).find((parsed) => parsed !== undefined);
    return address ? [{ node: node.metadata.name, url: agentUrl(address, port) }] : [];
  });
}

/** Each node's agent at the first address its agent published for its peers (an agent is asked where its node is), on `port`. */
export function storeFlowAgents(nodes: readonly NodeRecord[], port: number): FlowAgent[] {
  return nodes.flatMap((node) => {
    const address = node.network?.addresses.map((text) => tryParseIp(text)).find((parsed) => parsed !== undefined);
    return address ? [{ node: node.name, url: agentUrl(address, port) }] : [];
  });
}

function agentUrl(address: IpAddress, port: number): string {
  const host = formatIp(address);
  return `http://${address.family === 6 ? `[${host}]` : host}:${port}`;
}

/** `--agent-port`, checked. */
export function parseAgentPort(text: string): number {
  if (!/^[0-9]{1,5}$/.test(text) || Number(text) < 1 || Number(text) > 65535) throw new Error(`--agent-port ${JSON.stringify(text)} is not a port from 1 to 65535`);
  return Number(text);
}
