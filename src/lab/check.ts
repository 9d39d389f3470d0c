/**
 * `lab check`: the connectivity matrix of the Kubernetes network model. Every pod reaches every
 * other pod on every family over ICMP and TCP, and the receiver sees the sender's own pod IP;
 * every node reaches every pod; every pod reaches `external`, which sees the pod's node address
 * (masqueraded). The probes of one source run in one `trellis probe batch` inside its namespace.
 */
import { isIP } from "node:net";
import { run } from "../linux/exec.js";
import { isLabProcess } from "./processes.js";
import { mapConcurrently } from "./concurrently.js";
import { selfInvocation, type ProbeKind, type ProbeOutcome, type ProbeRequest } from "./probe.js";
import type { LabServicePort } from "./services.js";
import { labNodeZone, type LabState } from "./state.js";

export interface CheckProbe {
  /** The source's name: `node1-pod0`, `node1`. */
  readonly from: string;
  /** The destination's name: `node2-pod1`, `external`. */
  readonly to: string;
  /** The node the source is or runs on. */
  readonly fromNode: string;
  /** The node the destination pod runs on; absent for `external`. */
  readonly toNode?: string;
  readonly kind: ProbeKind;
  readonly family: "IPv4" | "IPv6";
  readonly address: string;
  /** The source address the receiver must see (TCP). */
  readonly expectedSource?: string;
  /** The name the receiver must answer with (TCP). */
  readonly expectedServer?: string;
  /** A Service's endpoints: one of them must answer. */
  readonly expectedServers?: readonly string[];
  /** A Service without endpoints: the connection must be refused at once. */
  readonly expectRefused?: boolean;
  /** ClientIP affinity: this many connections in a row, all answered by one endpoint. */
  readonly expectOneServerOf?: number;
  /** trafficDistribution: this many connections, each answered by one of `expectedServers` (the client's zone's). */
  readonly expectEachServerOf?: number;
  /** TCP and UDP to a Service port; the probe servers' own port otherwise. */
  readonly port?: number;
  readonly ok: boolean;
  readonly seenSource?: string;
  readonly answeredBy?: string;
  /** Why it failed, for a person. */
  readonly error?: string;
  readonly ms: number;
}

export interface CheckReport {
  readonly lab: string;
  readonly ok: boolean;
  readonly total: number;
  readonly failed: number;
  readonly seconds: number;
  readonly agents: ReadonlyArray<{ readonly node: string; readonly pid: number | null; readonly running: boolean }>;
  /** Sources and destinations in table order. */
  readonly sources: readonly string[];
  readonly destinations: readonly string[];
  readonly probes: readonly CheckProbe[];
}

type PlannedProbe = Omit<CheckProbe, "ok" | "seenSource" | "answeredBy" | "error" | "ms"> & { readonly note?: string };

const SOURCE_CONCURRENCY = 6;
const PROBES_PER_SOURCE = 32;
const PROBE_TIMEOUT_MS = 3000;

/** Connections in a row that ClientIP affinity must send to one endpoint (the "20 times in a row"). */
const AFFINITY_CONNECTS = 20;
/** Connections a trafficDistribution Service must answer from the client's zone: 20 random picks among 2 zones miss the other at odds of one in a million. */
const ZONE_CONNECTS = 20;

/** A Service refused without endpoints must be refused within this long (not time out). */
const REFUSED_WITHIN_MS = 1000;

export async function checkLab(state: LabState, services: readonly LabServicePort[] = []): Promise<CheckReport> {
  const started = Date.now();
  const plans = planProbes(state, services);
  const sources = [
    ...state.pods.map((pod) => ({ name: pod.name, netns: pod.netnsPath })),
    ...state.nodes.map((node) => ({ name: node.name, netns: node.netnsPath })),
    ...(plans.some((plan) => plan.from === "external") ? [{ name: "external", netns: state.external.netnsPath }] : []),
  ];
  const perSource = await mapConcurrently(sources, SOURCE_CONCURRENCY, async (source) => {
    const planned = plans.filter((plan) => plan.from === source.name);
    const outcomes = await runBatch(source.netns, planned.map((plan) => request(plan, state.probePort)));
    return planned.map((plan, i) => judge(plan, outcomes[i]));
  });
  const probes = perSource.flat();
  const failed = probes.filter((probe) => !probe.ok).length;
  return {
    lab: state.name,
    ok: failed === 0,
    total: probes.length,
    failed,
    seconds: (Date.now() - started) / 1000,
    // The baseline of real nodes (the reference plugins) has no agents.
    agents: state.realNodes?.network === "reference" ? [] : state.nodes.map((node) => ({ node: node.name, pid: node.agent?.pid ?? null, running: node.agent !== undefined && isLabProcess(node.agent, node.netnsPath) })),
    sources: sources.map((source) => source.name),
    destinations: [...state.pods.map((pod) => pod.name), ...new Set(services.map((port) => serviceColumn(port))), "external"],
    probes,
  };
}

function serviceColumn(port: LabServicePort): string {
  return `svc/${port.service.replace(/^default\//, "")}`;
}

/** Every probe of the matrix, as data. */
export function planProbes(state: LabState, services: readonly LabServicePort[] = []): PlannedProbe[] {
  const familyOf = (address: string): "IPv4" | "IPv6" => (isIP(address) === 6 ? "IPv6" : "IPv4");
  const sameFamily = (addresses: readonly string[], address: string) => addresses.find((candidate) => familyOf(candidate) === familyOf(address));
  const nodeOf = (name: string) => state.nodes.find((node) => node.name === name)!;
  // Direct routing reaches only peers on a connected subnet: say so instead of a bare timeout.
  const crossSubnetNote = (fromNode: string, toNode: string): string | undefined => {
    const [a, b] = [nodeOf(fromNode), nodeOf(toNode)];
    return state.mode === "direct" && a.subnet !== b.subnet ? `unreachable by direct routing: ${a.name} and ${b.name} are on different underlay subnets` : undefined;
  };
  const plans: PlannedProbe[] = [];
  for (const from of state.pods) {
    for (const to of state.pods) {
      if (to === from) continue;
      const note = crossSubnetNote(from.node, to.node);
      for (const address of to.addresses) {
        const family = familyOf(address);
        const ends = { from: from.name, to: to.name, fromNode: from.node, toNode: to.node };
        plans.push({ ...ends, kind: "icmp", family, address, note });
        plans.push({ ...ends, kind: "tcp", family, address, expectedSource: sameFamily(from.addresses, address), expectedServer: to.name, note });
        plans.push({ ...ends, kind: "udp", family, address, expectedSource: sameFamily(from.addresses, address), expectedServer: to.name, note });
      }
    }
    for (const address of state.external.addresses) {
      const masqueraded = sameFamily(nodeOf(from.node).addresses, address);
      if (!sameFamily(from.addresses, address)) continue;
      plans.push({ from: from.name, to: "external", fromNode: from.node, kind: "tcp", family: familyOf(address), address, expectedSource: masqueraded, expectedServer: "external" });
    }
  }
  // Every pod to every Service port on each of its ClusterIPs: answered by one of its endpoints,
  // which sees the pod's own address (a pod reaching itself is masqueraded: not checked), or
  // refused at once when it has none.
  for (const from of state.pods) {
    for (const port of services) {
      const servers = preferredServers(state, port, from.node);
      for (const address of port.clusterIPs) {
        if (!sameFamily(from.addresses, address)) continue;
        plans.push({
          from: from.name, to: serviceColumn(port), fromNode: from.node, kind: port.protocol === "UDP" ? "udp" : "tcp", family: familyOf(address), address, port: port.port,
          ...(servers.length ? { expectedServers: servers } : { expectRefused: true }),
          ...(servers.length && !servers.includes(from.name) ? { expectedSource: sameFamily(from.addresses, address) } : {}),
        });
      }
    }
  }
  // trafficDistribution in a lab with zones: from every pod, ZONE_CONNECTS connections to the
  // first ClusterIP of its family, each answered from its zone (its node, PreferSameNode) while
  // that has an endpoint.
  for (const from of state.pods) {
    for (const port of services) {
      if (!port.trafficDistribution || !state.zones || port.sessionAffinity || port.endpoints.length === 0) continue;
      const address = port.clusterIPs.find((ip) => sameFamily(from.addresses, ip));
      if (!address) continue;
      plans.push({
        from: from.name, to: serviceColumn(port), fromNode: from.node, kind: port.protocol === "UDP" ? "udp" : "tcp", family: familyOf(address), address, port: port.port,
        expectedServers: preferredServers(state, port, from.node), expectEachServerOf: ZONE_CONNECTS,
      });
    }
  }
  // ClientIP affinity: from every pod, AFFINITY_CONNECTS connections in a row to the first
  // ClusterIP of the pod's family, all answered by the same endpoint.
  for (const from of state.pods) {
    for (const port of services) {
      if (!port.sessionAffinity || port.endpoints.length === 0) continue;
      const address = port.clusterIPs.find((ip) => sameFamily(from.addresses, ip));
      if (!address) continue;
      plans.push({
        from: from.name, to: serviceColumn(port), fromNode: from.node, kind: port.protocol === "UDP" ? "udp" : "tcp", family: familyOf(address), address, port: port.port,
        expectedServers: port.endpoints.map((endpoint) => endpoint.pod), expectOneServerOf: AFFINITY_CONNECTS,
      });
    }
  }
  // external to every node's NodePort of each family the Service has: a Local Service only on
  // nodes with an endpoint, which sees external's own address; a Cluster one on every node.
  for (const port of services) {
    if (port.nodePort === undefined || port.endpoints.length === 0) continue;
    for (const node of state.nodes) {
      const local = port.endpoints.filter((endpoint) => endpoint.node === node.name).map((endpoint) => endpoint.pod);
      if (port.externalTrafficPolicy === "Local" && local.length === 0) continue;
      for (const address of node.addresses) {
        if (!port.clusterIPs.some((ip) => familyOf(ip) === familyOf(address))) continue;
        plans.push({
          from: "external", to: serviceColumn(port), fromNode: "external", toNode: node.name, kind: port.protocol === "UDP" ? "udp" : "tcp", family: familyOf(address), address, port: port.nodePort,
          expectedServers: port.externalTrafficPolicy === "Local" ? local : port.endpoints.map((endpoint) => endpoint.pod),
          ...(port.externalTrafficPolicy === "Local" ? { expectedSource: sameFamily(state.external.addresses, address) } : {}),
        });
        // ClientIP affinity through a NodePort: external's connections in a row, one endpoint for them all.
        if (port.sessionAffinity) {
          plans.push({
            from: "external", to: serviceColumn(port), fromNode: "external", toNode: node.name, kind: port.protocol === "UDP" ? "udp" : "tcp", family: familyOf(address), address, port: port.nodePort,
            expectedServers: port.externalTrafficPolicy === "Local" ? local : port.endpoints.map((endpoint) => endpoint.pod), expectOneServerOf: AFFINITY_CONNECTS,
          });
        }
      }
    }
  }
  // external to each external IP of a Service (the underlay routes them to one node): a Local
  // Service answers only if that node has an endpoint, which sees external's own address; a
  // Cluster one from any endpoint.
  const via = state.externalIps?.node;
  for (const port of services) {
    if (via === undefined || port.endpoints.length === 0) continue;
    const local = port.endpoints.filter((endpoint) => endpoint.node === via).map((endpoint) => endpoint.pod);
    if (port.externalTrafficPolicy === "Local" && local.length === 0) continue;
    for (const address of port.externalIPs) {
      if (!sameFamily(state.external.addresses, address)) continue;
      plans.push({
        from: "external", to: serviceColumn(port), fromNode: "external", toNode: via, kind: port.protocol === "UDP" ? "udp" : "tcp", family: familyOf(address), address, port: port.port,
        expectedServers: port.externalTrafficPolicy === "Local" ? local : port.endpoints.map((endpoint) => endpoint.pod),
        ...(port.externalTrafficPolicy === "Local" ? { expectedSource: sameFamily(state.external.addresses, address) } : {}),
      });
    }
  }
  for (const from of state.nodes) {
    for (const to of state.pods) {
      const note = crossSubnetNote(from.name, to.node);
      // The node's source address depends on the route (bridge, underlay or VXLAN): not checked.
      for (const address of to.addresses) {
        for (const kind of ["icmp", "tcp", "udp"] as const) {
          plans.push({ from: from.name, to: to.name, fromNode: from.name, toNode: to.node, kind, family: familyOf(address), address, ...(kind === "icmp" ? {} : { expectedServer: to.name }), note });
        }
      }
    }
  }
  return plans;
}

/**
 * The endpoints a client on `node` should be answered by, as kube-proxy picks them from the
 * hints the EndpointSlice controller writes for the Service's trafficDistribution (each ready
 * endpoint hinted for its own zone, and its node under PreferSameNode): this node's, then this
 * zone's, while there are any; otherwise all.
 */
export function preferredServers(state: Pick<LabState, "zones">, port: LabServicePort, node: string): string[] {
  const all = port.endpoints.map((endpoint) => endpoint.pod);
  if (!port.trafficDistribution || !state.zones) return all;
  const zone = labNodeZone(state, node);
  const sameNode = port.endpoints.filter((endpoint) => endpoint.node === node).map((endpoint) => endpoint.pod);
  if (port.trafficDistribution === "PreferSameNode" && sameNode.length) return sameNode;
  const sameZone = port.endpoints.filter((endpoint) => labNodeZone(state, endpoint.node) === zone).map((endpoint) => endpoint.pod);
  return sameZone.length ? sameZone : all;
}

function request(plan: PlannedProbe, port: number): ProbeRequest {
  if (plan.kind === "icmp") return { kind: "icmp", address: plan.address, timeoutMs: PROBE_TIMEOUT_MS };
  const repeat = plan.expectOneServerOf ?? plan.expectEachServerOf;
  return { kind: plan.kind, address: plan.address, port: plan.port ?? port, timeoutMs: PROBE_TIMEOUT_MS, ...(repeat ? { repeat } : {}) };
}

/** Runs one source's probes inside its namespace; a batch that cannot run fails each of its probes with the reason. */
async function runBatch(netnsPath: string, requests: readonly ProbeRequest[]): Promise<ProbeOutcome[]> {
  if (requests.length === 0) return [];
  const [command, ...args] = selfInvocation();
  try {
    const { stdout } = await run(command, [...args, "probe", "batch", "--concurrency", String(PROBES_PER_SOURCE)], {
      netns: netnsPath,
      input: JSON.stringify(requests),
      timeoutMs: 60_000,
    });
    return JSON.parse(stdout) as ProbeOutcome[];
  } catch (error) {
    const reason = `probe batch in ${netnsPath} failed: ${(error as Error).message.split("\n")[0]}`;
    return requests.map(() => ({ ok: false, error: reason, ms: 0 }));
  }
}

function judge(plan: PlannedProbe, outcome: ProbeOutcome): CheckProbe {
  const { note, ...probe } = plan;
  if (plan.expectRefused) {
    if (outcome.ok) return { ...probe, ok: false, seenSource: outcome.source, answeredBy: outcome.server, error: `answered by ${outcome.server}, but the Service has no endpoint`, ms: outcome.ms };
    const refused = /refused|unreachable|reset/i.test(outcome.error) && outcome.ms < REFUSED_WITHIN_MS;
    return { ...probe, ok: refused, ...(refused ? {} : { error: `not refused at once (no endpoint): ${outcome.error}` }), ms: outcome.ms };
  }
  if (!outcome.ok) return { ...probe, ok: false, error: note ? `${outcome.error} (${note})` : outcome.error, ms: outcome.ms };
  const seen = { seenSource: outcome.source, answeredBy: outcome.server, ms: outcome.ms };
  if (plan.expectedServers && !plan.expectedServers.includes(outcome.server ?? "")) {
    return { ...probe, ...seen, ok: false, error: `answered by ${outcome.server}, not an endpoint (${plan.expectedServers.join(", ")})` };
  }
  if (plan.expectEachServerOf) {
    const servers = outcome.servers ?? [];
    const stray = servers.filter((server) => !plan.expectedServers!.includes(server));
    if (servers.length !== plan.expectEachServerOf || stray.length) {
      return { ...probe, ...seen, ok: false, error: `${servers.length} connections, ${stray.length} answered from outside the client's zone (${[...new Set(stray)].join(", ")}; expected ${plan.expectedServers!.join(", ")})` };
    }
  }
  if (plan.expectOneServerOf) {
    const servers = new Set(outcome.servers ?? []);
    if ((outcome.servers?.length ?? 0) !== plan.expectOneServerOf || servers.size !== 1) {
      return { ...probe, ...seen, ok: false, error: `ClientIP affinity not kept: ${outcome.servers?.length ?? 0} connections answered by ${[...servers].join(", ")}` };
    }
  }
  if (plan.expectedServer && outcome.server !== plan.expectedServer) {
    return { ...probe, ...seen, ok: false, error: `answered by ${outcome.server}, not ${plan.expectedServer}` };
  }
  if (plan.expectedSource && outcome.source !== plan.expectedSource) {
    return { ...probe, ...seen, ok: false, error: `wrong source address ${outcome.source} (expected ${plan.expectedSource})` };
  }
  return { ...probe, ...seen, ok: true };
}
