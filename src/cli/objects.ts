/**
 * `trellis apply -f`, `trellis delete -f`, `trellis get`: Kubernetes Services, EndpointSlices,
 * Pods, Namespaces, NetworkPolicies and ClusterNetworkPolicies in the cluster store, in
 * Kubernetes' own YAML or JSON, reported as kubectl reports them.
 */
import { createReadStream } from "node:fs";
import type { Command } from "commander";
import { stringify } from "yaml";
import { applyObjects, deleteObjects, listObjects, type ObjectKind, type ObjectOutcome, type StoredObject } from "../cluster/apply.js";
import { endpointSlicesForService } from "../cluster/objects/endpoints-controller.js";
import { parseManifests } from "../cluster/objects/manifests.js";
import { zoneName } from "../cluster/objects/syntax.js";
import { NODES_PREFIX, parseNode } from "../cluster/node-cidrs.js";
import type { StoredClusterNetworkPolicy } from "../cluster/objects/cluster-network-policy.js";
import { CLUSTER_SCOPED } from "../cluster/objects/manifests.js";
import type { Namespace, StoredNetworkPolicy } from "../cluster/objects/network-policy.js";
import type { EndpointSlice, Pod, Service } from "../cluster/objects/types.js";
import { cluster, givenPlan, withClusterOptions, withStore, type ClusterOptions } from "./cluster-options.js";
import { renderTable } from "./table.js";

/**
 * The most manifest input one command reads, all its -f inputs together: far above any real
 * one, and a bound on memory (this much of Services peaks at 0.3 GB parsed from JSON, 0.4 GB
 * from YAML documents).
 */
const MAX_INPUT_BYTES = 64 * 1024 * 1024;

const RESOURCES: Record<string, ObjectKind> = {
  services: "Service", service: "Service", svc: "Service",
  endpointslices: "EndpointSlice", endpointslice: "EndpointSlice",
  pods: "Pod", pod: "Pod", po: "Pod",
  namespaces: "Namespace", namespace: "Namespace", ns: "Namespace",
  networkpolicies: "NetworkPolicy", networkpolicy: "NetworkPolicy", netpol: "NetworkPolicy",
  clusternetworkpolicies: "ClusterNetworkPolicy", clusternetworkpolicy: "ClusterNetworkPolicy", cnp: "ClusterNetworkPolicy",
};
const RESOURCE_LIST = "services, endpointslices, pods, namespaces, networkpolicies or clusternetworkpolicies";

/** How kubectl names a kind in its one-line reports. */
const REPORT_NAMES: Record<ObjectKind, string> = {
  Service: "service",
  EndpointSlice: "endpointslice.discovery.k8s.io",
  Pod: "pod",
  Namespace: "namespace",
  NetworkPolicy: "networkpolicy.networking.k8s.io",
  ClusterNetworkPolicy: "clusternetworkpolicy.policy.networking.k8s.io",
};

interface FileOptions extends ClusterOptions {
  readonly filename: string[];
}

interface GetOptions extends ClusterOptions {
  readonly output?: string;
  readonly namespace?: string;
  readonly allNamespaces?: boolean;
}

export function registerObjectCommands(program: Command): void {
  const files = (command: Command) =>
    withClusterOptions(command).requiredOption("-f, --filename <file>", "a YAML or JSON manifest, - for stdin; may be repeated", (value: string, previous: string[] = []) => [...previous, value]);
  files(program.command("apply"))
    .description("create or update Services, EndpointSlices, Pods, Namespaces, NetworkPolicies and ClusterNetworkPolicies from Kubernetes manifests (all of them, or none)")
    .action(async (options: FileOptions) => {
      const documents = await readManifests(options.filename, "apply");
      const plan = await givenPlan(options);
      const { result } = await withStore(options, plan, async (store) => applyObjects(await cluster(store, plan, options), documents));
      report(result);
    });
  files(program.command("delete"))
    .description("delete the objects the manifests name (all of them, or none), freeing their ClusterIPs and NodePorts")
    .action(async (options: FileOptions) => {
      const documents = await readManifests(options.filename, "delete");
      const plan = await givenPlan(options);
      const { result } = await withStore(options, plan, async (store) => deleteObjects(await cluster(store, plan, options), documents));
      report(result);
    });
  withClusterOptions(program.command("get"))
    .description("list Services (with their ClusterIPs and NodePorts), EndpointSlices (stored, and those of Services with a selector), Pods, Namespaces, NetworkPolicies or ClusterNetworkPolicies")
    .argument("<resource>", RESOURCE_LIST)
    .argument("[name]", "only this object")
    .option("-o, --output <format>", "json or yaml (a table when not given)")
    .option("-n, --namespace <namespace>", "only this namespace", "default")
    .option("-A, --all-namespaces", "every namespace")
    .action(async (resource: string, name: string | undefined, options: GetOptions) => {
      const kind = RESOURCES[resource];
      if (!kind) throw new Error(`the server doesn't have a resource type ${JSON.stringify(resource)}: expected ${RESOURCE_LIST}`);
      if (options.output !== undefined && options.output !== "json" && options.output !== "yaml") {
        throw new Error(`invalid --output ${JSON.stringify(options.output)}: expected json or yaml`);
      }
      const plan = await givenPlan(options);
      let objects = await withStore(options, plan, async (store) => {
        if (plan) await cluster(store, plan, options);
        return kind === "EndpointSlice" ? allEndpointSlices(store) : (await listObjects(store, kind)).objects;
      });
      const clusterScoped = CLUSTER_SCOPED.has(kind);
      if (!options.allNamespaces && !clusterScoped) objects = objects.filter((object) => namespaceOf(object) === options.namespace);
      if (name !== undefined) {
        objects = objects.filter((object) => object.metadata.name === name);
        if (objects.length === 0) throw new Error(`${resource} "${name}" not found${clusterScoped ? "" : ` in namespace ${options.namespace}`}`);
      }
      const printed = name !== undefined && objects.length === 1 ? objects[0] : { apiVersion: "v1", kind: "List", items: objects };
      if (options.output === "json") process.stdout.write(`${JSON.stringify(printed, null, 2)}\n`);
      else if (options.output === "yaml") process.stdout.write(stringify(printed));
      else if (objects.length === 0) {
        // As kubectl says it: on stderr, so that a script reading the table reads nothing.
        process.stderr.write(`No resources found${clusterScoped || options.allNamespaces ? "" : ` in ${options.namespace} namespace`}.\n`);
      } else process.stdout.write(renderTable(tableOf(kind, objects, (options.allNamespaces ?? false) && !clusterScoped)));
    });
}

/**
 * Every manifest's objects, in order; an input that cannot be read or parsed is named. All
 * inputs are read before any is parsed, so that one too large is refused at once.
 */
async function readManifests(files: readonly string[], command: "apply" | "delete"): Promise<unknown[]> {
  const texts: { source: string; text: string }[] = [];
  let total = 0;
  for (const file of files) {
    const source = file === "-" ? "stdin" : JSON.stringify(file);
    const bytes = await readAtMost(file, MAX_INPUT_BYTES - total).catch((error: Error) => {
      throw new Error(`cannot read ${source}: ${error.message}`);
    });
    if (bytes === undefined) {
      const limit = `${MAX_INPUT_BYTES / 2 ** 20} MiB, the most trellis ${command} reads`;
      throw new Error(
        total === 0
          ? `${source} is larger than ${limit}: split it and ${command} the parts one after another`
          : `${source} takes the input past ${limit} from all its -f files together: ${command} them in several runs`,
      );
    }
    total += bytes.length;
    texts.push({ source: file === "-" ? "stdin" : file, text: bytes.toString("utf8") });
  }
  const objects: unknown[] = [];
  // Each text is let go once parsed.
  for (let next = texts.shift(); next !== undefined; next = texts.shift()) {
    for (const object of parseManifests(next.text, next.source)) objects.push(object);
  }
  return objects;
}

/**
 * A file's bytes (stdin for -), or undefined as soon as there are more than `limit`: a device
 * such as /dev/zero, or a pipe that never ends, is not read to its end.
 */
async function readAtMost(file: string, limit: number): Promise<Buffer | undefined> {
  const chunks: Buffer[] = [];
  let length = 0;
  // Leaving the loop early destroys the stream: the file is closed, a writer into stdin gets EPIPE.
  for await (const chunk of file === "-" ? process.stdin : createReadStream(file)) {
    length += (chunk as Buffer).length;
    if (length > limit) return undefined;
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks, length);
}

function report(outcomes: readonly ObjectOutcome[]): void {
  for (const { kind, name, outcome } of outcomes) process.stdout.write(`${REPORT_NAMES[kind]}/${name} ${outcome}\n`);
}

/** Stored EndpointSlices, and those the Services with a selector get from the stored Pods. */
async function allEndpointSlices(store: Parameters<typeof listObjects>[0]): Promise<EndpointSlice[]> {
  const [services, pods, stored, nodes] = await Promise.all([
    listObjects<Service>(store, "Service"),
    listObjects<Pod>(store, "Pod"),
    listObjects<EndpointSlice>(store, "EndpointSlice"),
    store.list(NODES_PREFIX),
  ]);
  // The zones the nodes' agents publish: the controller's hints for a Service's trafficDistribution.
  const zones = new Map<string, string>();
  for (const entry of nodes.entries) {
    try {
      const zone = zoneName(parseNode(entry.value).network?.zone);
      if (zone !== undefined) zones.set(entry.key.slice(NODES_PREFIX.length), zone);
    } catch {
      // A record that does not parse names no zone.
    }
  }
  const computed = services.objects.filter((service) => service.spec.selector !== undefined).flatMap((service) => endpointSlicesForService(service, pods.objects, (node) => zones.get(node)));
  return [...stored.objects, ...computed].sort((a, b) => objectId(a).localeCompare(objectId(b)));
}

function objectId(object: { metadata: { namespace?: string; name: string } }): string {
  return `${object.metadata.namespace ?? "default"}/${object.metadata.name}`;
}

function namespaceOf(object: StoredObject): string {
  return ("namespace" in object.metadata && object.metadata.namespace) || "default";
}

function tableOf(kind: ObjectKind, objects: readonly StoredObject[], withNamespace: boolean): string[][] {
  const lead = (object: StoredObject) => (withNamespace ? [namespaceOf(object), object.metadata.name] : [object.metadata.name]);
  const head = withNamespace ? ["NAMESPACE", "NAME"] : ["NAME"];
  if (kind === "Namespace") {
    return [["NAME", "LABELS"], ...(objects as Namespace[]).map((namespace) => [namespace.metadata.name, Object.entries(namespace.metadata.labels ?? {}).map(([key, value]) => `${key}=${value}`).join(",")])];
  }
  if (kind === "NetworkPolicy") {
    return [
      [...head, "POD-SELECTOR", "POLICY-TYPES"],
      ...(objects as StoredNetworkPolicy[]).map((policy) => [...lead(policy), selectorText(policy.spec.podSelector), (policy.spec.policyTypes ?? []).join(",")]),
    ];
  }
  if (kind === "ClusterNetworkPolicy") {
    return [
      ["NAME", "TIER", "PRIORITY", "SUBJECT"],
      ...(objects as StoredClusterNetworkPolicy[]).map((policy) => [
        policy.metadata.name,
        policy.spec.tier,
        String(policy.spec.priority),
        policy.spec.subject.namespaces ? `namespaces ${selectorText(policy.spec.subject.namespaces)}` : `pods ${selectorText(policy.spec.subject.pods?.namespaceSelector ?? {})} / ${selectorText(policy.spec.subject.pods?.podSelector ?? {})}`,
      ]),
    ];
  }
  if (kind === "Service") {
    return [
      [...head, "TYPE", "CLUSTER-IPS", "EXTERNAL-IP", "PORT(S)"],
      ...(objects as Service[]).map((service) => [
        ...lead(service),
        service.spec.type ?? "ClusterIP",
        (service.spec.clusterIPs ?? []).join(",") || "<none>",
        [...(service.spec.externalIPs ?? []), ...(service.status?.loadBalancer?.ingress ?? []).map((ingress) => ingress.ip ?? ingress.hostname ?? "")].join(",") || "<none>",
        (service.spec.ports ?? []).map((port) => `${port.port}${port.nodePort === undefined ? "" : `:${port.nodePort}`}/${port.protocol ?? "TCP"}`).join(",") || "<none>",
      ]),
    ];
  }
  if (kind === "EndpointSlice") {
    return [
      [...head, "ADDRESSTYPE", "PORTS", "ENDPOINTS"],
      ...(objects as EndpointSlice[]).map((slice) => [
        ...lead(slice),
        slice.addressType,
        (slice.ports ?? []).map((port) => String(port.port ?? "")).join(",") || "<unset>",
        slice.endpoints.flatMap((endpoint) => endpoint.addresses).join(",") || "<unset>",
      ]),
    ];
  }
  return [
    [...head, "NODE", "IPS", "READY"],
    ...(objects as Pod[]).map((pod) => [
      ...lead(pod),
      pod.spec?.nodeName ?? "<none>",
      (pod.status?.podIPs ?? []).map((ip) => ip.ip).join(",") || "<none>",
      pod.status?.conditions?.find((condition) => condition.type === "Ready")?.status === "True" ? "true" : "false",
    ]),
  ];
}

/** A label selector as kubectl describes one: `k=v,k2 in (a,b)`, or <none> for everything. */
function selectorText(selector: { matchLabels?: Readonly<Record<string, string>>; matchExpressions?: ReadonlyArray<{ key: string; operator: string; values?: readonly string[] }> }): string {
  const parts = [
    ...Object.entries(selector.matchLabels ?? {}).map(([key, value]) => `${key}=${value}`),
    ...(selector.matchExpressions ?? []).map((requirement) =>
      requirement.operator === "Exists" ? requirement.key : requirement.operator === "DoesNotExist" ? `!${requirement.key}` : `${requirement.key} ${requirement.operator.toLowerCase()} (${(requirement.values ?? []).join(",")})`,
    ),
  ];
  return parts.join(",") || "<none>";
}
