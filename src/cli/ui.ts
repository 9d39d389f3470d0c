/**
 * `trellis ui` and `trellis lab ui`: the flow map in a browser (src/ui/). A lab's topology is
 * what `lab status` says, with the Services and EndpointSlices of its store (or its API server);
 * its flows come from every node's agent (`followFlows`, as `trellis flows --lab` reads them).
 * On a cluster store, the nodes, pods and Services are the store's, and the flows those of the
 * agents at the nodes' published addresses.
 */
import { Option, type Command } from "commander";
import { listObjects } from "../cluster/apply.js";
import { endpointSlicesForService, MANAGED_BY_TRELLIS } from "../cluster/objects/endpoints-controller.js";
import { sliceOwner } from "../cluster/objects/service-endpoints.js";
import { LABEL_MANAGED_BY, type EndpointSlice, type Pod, type Service } from "../cluster/objects/types.js";
import { listNodes, type NodeRecord } from "../cluster/node-cidrs.js";
import { labKubectl } from "../lab/kube-lab.js";
import { labStatus, type LabStatus } from "../lab/status.js";
import { labStoreObjects } from "../lab/store-access.js";
import { requireLabState, type LabState } from "../lab/state.js";
import { checkLabName, DEFAULT_LAB_NAME } from "../lab/topology.js";
import { FLOW_WINDOW_MS } from "../ui/flow-window.js";
import { DEFAULT_UI_LISTEN, parseListenAddress, type ListenAddress } from "../ui/listen.js";
import { startUiServer } from "../ui/server.js";
import { canonicalAddress, type UiService, type UiSource, type UiTopology } from "../ui/topology.js";
import { withClusterOptions, withStore, type ClusterOptions } from "./cluster-options.js";
import { DEFAULT_AGENT_PORT, followFlows, labFlowAgents, parseAgentPort, storeFlowAgents } from "./flows.js";

const listenOption = () => new Option("--listen <host:port>", "where to serve the page: an address and port on this machine (port 0: any free one)").default(DEFAULT_UI_LISTEN);

/** `trellis ui`: a cluster store's map (a lab's is `trellis lab ui`). */
export function registerUiCommand(program: Command): void {
  withClusterOptions(
    program
      .command("ui")
      .description("serve the flow map of the cluster store: nodes, pods and Services drawn with the flows of the last minute, live, in a browser (a lab's: trellis lab ui)")
      .addOption(listenOption())
      .option("--agent-port <port>", "the port the agents serve /flows on", String(DEFAULT_AGENT_PORT)),
  ).action(async (options: ClusterOptions & { listen: string; agentPort: string }) => {
    const listen = parseListenAddress(options.listen);
    await serveUi(listen, storeUiSource(options, parseAgentPort(options.agentPort)));
  });
}

/** `trellis lab ui`; `currentLabState` is lab.ts's view of a lab as it is now (a Kubernetes lab's pods, real nodes' agents). */
export function registerLabUiCommand(lab: Command, currentLabState: (state: LabState) => Promise<LabState>): void {
  lab
    .command("ui")
    .description("serve the lab's flow map in a browser: its nodes, pods and Services with the flows of the last minute, live")
    .addOption(new Option("--name <name>", "the lab's name").default(DEFAULT_LAB_NAME))
    .addOption(listenOption())
    .action(async (options: { name: string; listen: string }) => {
      const listen = parseListenAddress(options.listen);
      await serveUi(listen, labUiSource(checkLabName(options.name), currentLabState));
    });
}

/** Serves until SIGINT or SIGTERM. */
async function serveUi(listen: ListenAddress, source: UiSource): Promise<void> {
  if (!listen.loopback) process.stderr.write(`note: ${listen.host} is not a loopback address: whoever reaches it sees every pod and flow of the cluster\n`);
  const server = await startUiServer({ listen, source, log: (line) => process.stderr.write(`${line}\n`) });
  process.stdout.write(`serving the flow map at ${server.url} (Ctrl-C stops it)\n`);
  await new Promise<void>((resolve) => {
    process.once("SIGINT", resolve);
    process.once("SIGTERM", resolve);
  });
  await server.close();
}

function labUiSource(name: string, current: (state: LabState) => Promise<LabState>): UiSource {
  return {
    async topology() {
      const state = await current(requireLabState(name));
      const [services, slices] = await labServiceObjects(state);
      return labTopology(labStatus(state), services, slices);
    },
    follow: (onRecord, onProblem) => followFlows(labFlowAgents(name), { sinceMs: FLOW_WINDOW_MS }, onRecord, onProblem),
  };
}

/** The lab's Services and every EndpointSlice (on the store, those worked out for selector Services too). */
async function labServiceObjects(state: LabState): Promise<[Service[], EndpointSlice[]]> {
  if (state.kubernetes) {
    const list = async <T>(resource: string) => (JSON.parse(await labKubectl(state.kubernetes!, ["get", resource, "-A", "-o", "json"])) as { items: T[] }).items;
    return Promise.all([list<Service>("services"), list<EndpointSlice>("endpointslices")]);
  }
  return Promise.all([labStoreObjects<Service>(state, "services"), labStoreObjects<EndpointSlice>(state, "endpointslices")]);
}

export function labTopology(status: LabStatus, services: readonly Service[], slices: readonly EndpointSlice[]): UiTopology {
  const pods = status.pods.map((pod) => {
    const slash = pod.name.indexOf("/");
    return { namespace: slash < 0 ? "default" : pod.name.slice(0, slash), name: slash < 0 ? pod.name : pod.name.slice(slash + 1), node: pod.node, addresses: pod.addresses };
  });
  return {
    title: `lab ${status.name}`,
    nodes: status.nodes.map((node) => ({ name: node.name, addresses: node.addresses, podCidrs: node.podCidrs, mode: status.mode })),
    pods,
    services: uiServices(services, slices, pods),
    hosts: [{ name: "external", addresses: status.external.addresses }, ...(status.kubernetes ? [{ name: "control", addresses: status.kubernetes.control.addresses }] : [])],
  };
}

/** Services with the endpoints their slices name, each matched to a pod by its targetRef or its address. */
export function uiServices(services: readonly Service[], slices: readonly EndpointSlice[], pods: UiTopology["pods"]): UiService[] {
  const podByAddress = new Map(pods.flatMap((pod) => pod.addresses.map((address) => [canonicalAddress(address), `${pod.namespace}/${pod.name}`] as const)));
  const slicesOf = new Map<string, EndpointSlice[]>();
  for (const slice of slices) {
    const owner = sliceOwner(slice);
    if (owner) slicesOf.set(owner, [...(slicesOf.get(owner) ?? []), slice]);
  }
  return services.map((service) => {
    const namespace = service.metadata.namespace ?? "default";
    const endpoints = (slicesOf.get(`${namespace}/${service.metadata.name}`) ?? []).flatMap((slice) =>
      slice.endpoints.flatMap((endpoint) => {
        const address = endpoint.addresses[0];
        if (address === undefined) return [];
        const ref = endpoint.targetRef?.kind === "Pod" && endpoint.targetRef.name ? `${endpoint.targetRef.namespace ?? namespace}/${endpoint.targetRef.name}` : undefined;
        const pod = ref ?? podByAddress.get(canonicalAddress(address));
        return [{ address, ready: endpoint.conditions.ready !== false, ...(pod ? { pod } : {}) }];
      }),
    );
    return {
      namespace,
      name: service.metadata.name,
      type: service.spec.type ?? "ClusterIP",
      clusterIPs: (service.spec.clusterIPs ?? []).filter((ip) => ip !== "None"),
      externalIPs: [...(service.spec.externalIPs ?? []), ...(service.status?.loadBalancer?.ingress ?? []).flatMap((ingress) => (ingress.ip ? [ingress.ip] : []))],
      ports: (service.spec.ports ?? []).map((port) => ({ port: port.port, protocol: port.protocol ?? "TCP", ...(port.nodePort === undefined ? {} : { nodePort: port.nodePort }) })),
      endpoints,
    };
  });
}

/** A cluster store's map: its node records, Pods, Services and EndpointSlices; flows from the agents at the nodes' addresses. */
function storeUiSource(options: ClusterOptions, agentPort: number): UiSource {
  return {
    topology: () =>
      withStore(options, undefined, async (store) => {
        const [nodes, pods, services, slices] = await Promise.all([
          listNodes(store),
          listObjects<Pod>(store, "Pod"),
          listObjects<Service>(store, "Service"),
          listObjects<EndpointSlice>(store, "EndpointSlice"),
        ]);
        return storeTopology(options.store, nodes, pods.objects, services.objects, slices.objects);
      }),
    follow: (onRecord, onProblem) => {
      let stopped = false;
      let following: { stop(): void } | undefined;
      // The agents are where the store says the nodes are, read once at the start.
      void withStore(options, undefined, (store) => listNodes(store)).then(
        (nodes) => {
          if (!stopped) following = followFlows(storeFlowAgents(nodes, agentPort), { sinceMs: FLOW_WINDOW_MS }, onRecord, onProblem);
        },
        (error: Error) => onProblem("store", `the nodes could not be read: ${error.message}`),
      );
      return {
        stop: () => {
          stopped = true;
          following?.stop();
        },
      };
    },
  };
}

export function storeTopology(store: string, nodes: readonly NodeRecord[], pods: readonly Pod[], services: readonly Service[], stored: readonly EndpointSlice[]): UiTopology {
  const uiPods = pods.flatMap((pod) =>
    pod.spec?.nodeName ? [{ namespace: pod.metadata.namespace ?? "default", name: pod.metadata.name, node: pod.spec.nodeName, addresses: (pod.status?.podIPs ?? []).map((ip) => ip.ip) }] : [],
  );
  // As `trellis get endpointslices` shows them: the applied ones, and those the Pods give a Service with a selector.
  const computed = services.filter((service) => service.spec.selector !== undefined).flatMap((service) => endpointSlicesForService(service, pods));
  const applied = stored.filter((slice) => slice.metadata.labels?.[LABEL_MANAGED_BY] !== MANAGED_BY_TRELLIS);
  return {
    title: `store ${store}`,
    nodes: nodes.map((node) => ({
      name: node.name,
      addresses: node.network?.addresses ?? [],
      podCidrs: node.podCidrs,
      mode: node.network ? (node.network.vteps.length ? `auto or vxlan (VTEPs on IPv${node.network.vteps.map((vtep) => vtep.family).join("/IPv")})` : "direct") : "no agent yet",
    })),
    pods: uiPods,
    services: uiServices(services, [...applied, ...computed], uiPods),
    hosts: [],
  };
}
