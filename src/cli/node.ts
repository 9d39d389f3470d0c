/** `trellis node add|rm|list`: nodes and their pod CIDRs in the cluster store. */
import type { Command } from "commander";
import { addNode, checkNodeName, listNodes, removeNode } from "../cluster/node-cidrs.js";
import { cluster, givenPlan, withClusterOptions, withStore, type ClusterOptions } from "./cluster-options.js";
import { renderTable } from "./table.js";

export function registerNodeCommands(program: Command): void {
  const node = program.command("node").description("give nodes their pod CIDRs from the cluster plan, and take them back");
  withClusterOptions(node.command("add"))
    .description("add a node and allocate one pod CIDR block per family")
    .argument("<name>", "node name, a DNS subdomain such as node-1")
    .action(async (name: string, options: ClusterOptions) => {
      checkNodeName(name);
      const plan = await givenPlan(options);
      const { result } = await withStore(options, plan, async (store) => addNode(await cluster(store, plan, options), name));
      process.stdout.write(`node ${result.name}: pod CIDRs ${result.podCidrs.join(", ")}\n`);
    });
  withClusterOptions(node.command("rm"))
    .description("remove a node and free its pod CIDRs")
    .argument("<name>", "node name")
    .action(async (name: string, options: ClusterOptions) => {
      checkNodeName(name);
      const plan = await givenPlan(options);
      const { result } = await withStore(options, plan, async (store) => removeNode(await cluster(store, plan, options), name));
      process.stdout.write(`node ${result.name} removed; freed ${result.podCidrs.join(", ")}\n`);
    });
  withClusterOptions(node.command("list"))
    .description("list nodes and their pod CIDRs")
    .option("--json", "print JSON")
    .action(async (options: ClusterOptions & { json?: boolean }) => {
      const plan = await givenPlan(options);
      const nodes = await withStore(options, plan, async (store) => {
        if (plan) await cluster(store, plan, options);
        return listNodes(store);
      });
      if (options.json) {
        process.stdout.write(`${JSON.stringify(nodes, null, 2)}\n`);
        return;
      }
      process.stdout.write(renderTable([["NAME", "POD CIDRS"], ...nodes.map((n) => [n.name, n.podCidrs.join(",")])]));
    });
}
