/**
 * The cluster address plan: which ranges pods, Services and nodes draw from, node mask sizes
 * and the NodePort range. Read from a YAML or JSON file, validated as a whole, and written back
 * as canonical JSON so that stored plans compare as text.
 */
import { readFile } from "node:fs/promises";
import { LineCounter, parseDocument } from "yaml";
import { familyName, formatPrefix, type Family, type IpPrefix } from "../net/ip.js";
import { validatePlan, type PlanValidation } from "./validate.js";

export { defaultNodeMaskSize, defaultNodePortRange, validatePlan, type PlanValidation } from "./validate.js";

export interface NodePortRange { readonly first: number; readonly last: number }

export interface ClusterPlan {
  /** Pod CIDRs in plan order; the first one's family is the primary family. */
  readonly podCidrs: readonly IpPrefix[];
  readonly serviceCidrs: readonly IpPrefix[];
  /** Underlay ranges, may be empty. */
  readonly nodeCidrs: readonly IpPrefix[];
  /** Node pod-CIDR mask size per family (defaults 24 and 64). */
  readonly nodeMaskSize: Readonly<Record<Family, number>>;
  readonly nodePortRange: NodePortRange;
}

/** The file format, as canonical JSON writes it. */
export interface PlanFile {
  readonly podCidrs: readonly string[];
  readonly serviceCidrs: readonly string[];
  readonly nodeCidrs: readonly string[];
  readonly nodeMaskSize: { readonly ipv4?: number; readonly ipv6?: number };
  readonly nodePortRange: string;
}

export function primaryFamily(plan: ClusterPlan): Family {
  return plan.podCidrs[0].family;
}

/**
 * Remarks on a valid plan that a reader may not expect. Kubernetes allows dual-stack pods with
 * single-stack Services; the plan accepts it and says what it means.
 */
export function planNotes(plan: ClusterPlan): string[] {
  const serviceFamilies = new Set(plan.serviceCidrs.map((cidr) => cidr.family));
  const podOnly = plan.podCidrs.filter((cidr) => !serviceFamilies.has(cidr.family));
  return podOnly.map((cidr) => {
    const name = familyName(cidr.family);
    return `pods are dual-stack but serviceCidrs has no ${name} range: every Service gets only an ${familyName(primaryFamily(plan))} ClusterIP, while pods still reach each other over ${name} (pod CIDR ${formatPrefix(cidr)})`;
  });
}

/** Parses plan text (YAML, or JSON as a subset of it) and validates it, collecting every problem. */
export function validatePlanText(text: string): PlanValidation {
  const lineCounter = new LineCounter();
  const document = parseDocument(text, { lineCounter, prettyErrors: false });
  if (document.errors.length > 0) {
    return {
      problems: document.errors.map((error) => {
        if (error.pos[0] < 0) return `YAML syntax error: ${error.message}`;
        const { line, col } = lineCounter.linePos(error.pos[0]);
        return `YAML syntax error at line ${line}, column ${col}: ${error.message}`;
      }),
    };
  }
  return validatePlan(document.toJS());
}

/** Parses and validates plan text; throws one error listing every problem, one per line. */
export function parsePlan(text: string, source: string): ClusterPlan {
  const { plan, problems } = validatePlanText(text);
  if (!plan) throw new Error(`invalid cluster plan ${source}:\n${problems.map((problem) => `  ${problem}`).join("\n")}`);
  return plan;
}

/** Reads a plan file's text, naming the path and the reason when it cannot. */
export async function readPlanText(path: string): Promise<string> {
  try {
    return await readFile(path, "utf8");
  } catch (error) {
    throw new Error(`cannot read cluster plan ${path}: ${describeReadError(error)}`);
  }
}

export async function loadPlan(path: string): Promise<ClusterPlan> {
  return parsePlan(await readPlanText(path), path);
}

/** The plan in file form with every default spelled out, so equal plans give equal files. */
export function planToFile(plan: ClusterPlan): PlanFile {
  const podFamilies = new Set(plan.podCidrs.map((cidr) => cidr.family));
  // Only families with pod CIDRs get a mask: a mask for any other family is invalid in a file.
  return {
    podCidrs: plan.podCidrs.map(formatPrefix),
    serviceCidrs: plan.serviceCidrs.map(formatPrefix),
    nodeCidrs: plan.nodeCidrs.map(formatPrefix),
    nodeMaskSize: {
      ...(podFamilies.has(4) ? { ipv4: plan.nodeMaskSize[4] } : {}),
      ...(podFamilies.has(6) ? { ipv6: plan.nodeMaskSize[6] } : {}),
    },
    nodePortRange: formatNodePortRange(plan.nodePortRange),
  };
}

/** Canonical JSON text of the plan: fixed key order, canonical CIDRs, defaults explicit. */
export function formatPlanFile(plan: ClusterPlan): string {
  return `${JSON.stringify(planToFile(plan), null, 2)}\n`;
}

export function samePlan(a: ClusterPlan, b: ClusterPlan): boolean {
  return formatPlanFile(a) === formatPlanFile(b);
}

export function formatNodePortRange(range: NodePortRange): string {
  return `${range.first}-${range.last}`;
}

function describeReadError(error: unknown): string {
  const code = (error as NodeJS.ErrnoException | undefined)?.code;
  if (code === "ENOENT") return "no such file";
  if (code === "EACCES" || code === "EPERM") return "permission denied";
  if (code === "EISDIR") return "it is a directory, not a file";
  return error instanceof Error ? error.message : String(error);
}
