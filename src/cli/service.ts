/** `trellis service add|rm|list`: Services, their ClusterIPs and NodePorts in the cluster store. */
import type { Command } from "commander";
import { addService, checkServiceRequest, listServices, parseServiceName, removeService, type ServiceRequest } from "../cluster/services.js";
import { IP_FAMILY_POLICIES } from "../cluster/service-ips-families.js";
import { cluster, givenPlan, withClusterOptions, withStore, type ClusterOptions } from "./cluster-options.js";
import { renderTable } from "./table.js";

interface AddOptions extends ClusterOptions {
  readonly type?: string;
  readonly ipFamilyPolicy?: string;
  readonly ipFamilies?: string;
  readonly clusterIp?: string;
  readonly nodePort?: string;
}

export function registerServiceCommands(program: Command): void {
  const service = program.command("service").description("give Services their ClusterIPs and NodePorts, and take them back");
  withClusterOptions(service.command("add"))
    .description("add a Service and allocate its ClusterIPs (and NodePort)")
    .argument("<name>", "NAME or NAMESPACE/NAME (namespace default)")
    .option("--type <type>", "ClusterIP or NodePort (NodePort when --node-port is given)")
    .option("--ip-family-policy <policy>", IP_FAMILY_POLICIES.join(", "))
    .option("--ip-families <families>", "IPv4, IPv6, or both in order: IPv6,IPv4")
    .option("--cluster-ip <ips>", "requested ClusterIP, or two joined by a comma (one per family)")
    .option("--node-port <port>", "requested NodePort")
    .action(async (name: string, options: AddOptions) => {
      const request = serviceRequest(name, options);
      const plan = await givenPlan(options);
      // Checked before the store is opened, so that a bad request leaves a new store uncreated;
      // a given plan that differs from the stored one fails on opening anyway.
      if (plan) checkServiceRequest(plan, request);
      const { result } = await withStore(options, plan, async (store) => addService(await cluster(store, plan, options), request));
      const port = result.nodePort === undefined ? "" : `; NodePort ${result.nodePort}`;
      process.stdout.write(`service ${result.namespace}/${result.name}: ClusterIPs ${result.clusterIPs.join(", ")} (${result.ipFamilyPolicy})${port}\n`);
    });
  withClusterOptions(service.command("rm"))
    .description("remove a Service and free its ClusterIPs and NodePort")
    .argument("<name>", "NAME or NAMESPACE/NAME")
    .action(async (name: string, options: ClusterOptions) => {
      parseServiceName(name);
      const plan = await givenPlan(options);
      const { result } = await withStore(options, plan, async (store) => removeService(await cluster(store, plan, options), name));
      const port = result.nodePort === undefined ? "" : ` and NodePort ${result.nodePort}`;
      process.stdout.write(`service ${result.namespace}/${result.name} removed; freed ${result.clusterIPs.join(", ")}${port}\n`);
    });
  withClusterOptions(service.command("list"))
    .description("list Services with their ClusterIPs and NodePorts")
    .option("--json", "print JSON")
    .action(async (options: ClusterOptions & { json?: boolean }) => {
      const plan = await givenPlan(options);
      const services = await withStore(options, plan, async (store) => {
        if (plan) await cluster(store, plan, options);
        return listServices(store);
      });
      if (options.json) {
        process.stdout.write(`${JSON.stringify(services, null, 2)}\n`);
        return;
      }
      const rows = services.map((s) => [
        `${s.namespace}/${s.name}`,
        s.type,
        s.ipFamilyPolicy,
        s.clusterIPs.join(","),
        s.nodePort === undefined ? "-" : String(s.nodePort),
      ]);
      process.stdout.write(renderTable([["NAME", "TYPE", "IP FAMILY POLICY", "CLUSTER-IPS", "NODE-PORT"], ...rows]));
    });
}

/** The request as the allocators take it; syntax errors name the option and the value. */
function serviceRequest(name: string, options: AddOptions): ServiceRequest {
  parseServiceName(name);
  let nodePort: number | undefined;
  if (options.nodePort !== undefined) {
    if (!/^[0-9]{1,5}$/.test(options.nodePort)) {
      throw new Error(`invalid --node-port ${JSON.stringify(options.nodePort)}: expected a port number, such as 30080`);
    }
    nodePort = Number(options.nodePort);
  }
  const list = (flag: string, text: string | undefined): string[] | undefined => {
    if (text === undefined) return undefined;
    const items = text.split(",").map((item) => item.trim());
    if (items.some((item) => item.length === 0)) throw new Error(`invalid ${flag} ${JSON.stringify(text)}: expected one value or two joined by a comma`);
    return items;
  };
  return {
    name,
    type: options.type,
    ipFamilyPolicy: options.ipFamilyPolicy,
    ipFamilies: list("--ip-families", options.ipFamilies),
    clusterIPs: list("--cluster-ip", options.clusterIp),
    nodePort,
  };
}
