/** `trellis plan check|show FILE`: validate a cluster address plan and show what its ranges hold. */
import type { Command } from "commander";
import { familyName, formatPrefix } from "../net/ip.js";
import { planRanges, type PlanRange } from "../plan/capacity.js";
import { formatNodePortRange, planNotes, primaryFamily, readPlanText, validatePlanText, type ClusterPlan } from "../plan/plan.js";
import { renderTable } from "./table.js";

export function registerPlanCommands(program: Command): void {
  const plan = program.command("plan").description("check and show the cluster address plan");
  plan
    .command("check")
    .description("validate a plan file and list every problem in it")
    .argument("<file>", "plan file, YAML or JSON")
    .action(async (file: string) => {
      const valid = await readValidPlan(file);
      if (!valid) return;
      process.stdout.write(`${file}: OK: ${summarizePlan(valid)}\n`);
      for (const note of planNotes(valid)) process.stderr.write(`${file}: note: ${note}\n`);
    });
  plan
    .command("show")
    .description("show each range of a plan file with its size and capacity")
    .argument("<file>", "plan file, YAML or JSON")
    .action(async (file: string) => {
      const valid = await readValidPlan(file);
      if (valid) process.stdout.write(renderPlanTable(valid));
    });
}

/** One line: stack, then every range, in plan order. */
export function summarizePlan(plan: ClusterPlan): string {
  const families = [...new Set(plan.podCidrs.map((cidr) => familyName(cidr.family)))];
  const stack = families.length > 1 ? `dual-stack ${families.join("+")}` : `single-stack ${families[0]}`;
  const list = (cidrs: ClusterPlan["podCidrs"]): string => (cidrs.length > 0 ? cidrs.map(formatPrefix).join(", ") : "none");
  return [
    `${stack} (primary ${familyName(primaryFamily(plan))})`,
    `pods ${list(plan.podCidrs)}`,
    `services ${list(plan.serviceCidrs)}`,
    `nodes ${list(plan.nodeCidrs)}`,
    `NodePorts ${formatNodePortRange(plan.nodePortRange)}`,
  ].join("; ");
}

/** The capacity table `plan show` prints, with the counting rules under it. */
export function renderPlanTable(plan: ClusterPlan): string {
  const rows = planRanges(plan).map((range) => [
    range.kind,
    range.range,
    range.family === undefined ? "-" : `${familyName(range.family)}${range.primary ? " (primary)" : ""}`,
    formatCount(range.size),
    describeCapacity(range),
  ]);
  const lines = renderTable([["KIND", "RANGE", "FAMILY", "SIZE", "CAPACITY"], ...rows]).trimEnd().split("\n");
  return [
    ...lines,
    "",
    "SIZE counts addresses (ports for the NodePort range).",
    "Pods per node: a node block's addresses minus network, gateway and, for IPv4, broadcast.",
    "Service IPs: the range's addresses minus network and, for IPv4, broadcast (Kubernetes' ServiceCIDR allocator).",
    ...planNotes(plan).map((note) => `Note: ${note}.`),
    "",
  ].join("\n");
}

/** Exact up to 2^32; beyond that a power of two, which is how address counts are read. */
export function formatCount(count: bigint): string {
  if (count <= 1n << 32n) return count.toString();
  const exponent = count.toString(2).length;
  if (count === 1n << BigInt(exponent - 1)) return `2^${exponent - 1}`;
  const below = (1n << BigInt(exponent)) - count;
  return below < 1n << 16n ? `2^${exponent}-${below}` : `~2^${exponent}`;
}

async function readValidPlan(file: string): Promise<ClusterPlan | undefined> {
  const { plan, problems } = validatePlanText(await readPlanText(file));
  for (const problem of problems) process.stderr.write(`${file}: ${problem}\n`);
  if (!plan) process.exitCode = 1;
  return plan;
}

function describeCapacity(range: PlanRange): string {
  switch (range.kind) {
    case "pod":
      return `${formatCount(range.nodeBlocks ?? 0n)} node blocks of /${range.nodeMaskSize}, ${formatCount(range.podsPerNode ?? 0n)} pods per node`;
    case "service":
      return `${formatCount(range.serviceIps ?? 0n)} Service IPs`;
    case "nodePort":
      return `${formatCount(range.nodePorts ?? 0n)} NodePorts`;
    case "node":
      return "-";
  }
}
