/**
 * Kubernetes label selectors (metav1.LabelSelector) as NetworkPolicy and ClusterNetworkPolicy
 * use them: `matchLabels` and `matchExpressions` together, every requirement must hold, and an
 * empty selector selects everything. Validation (keys, values, operators) is the API's and
 * happens before a selector gets here; an operator this code does not know selects nothing.
 */

export type SelectorOperator = "In" | "NotIn" | "Exists" | "DoesNotExist";

export interface LabelRequirement {
  readonly key: string;
  readonly operator: SelectorOperator;
  readonly values?: readonly string[];
}

export interface LabelSelector {
  readonly matchLabels?: Readonly<Record<string, string>>;
  readonly matchExpressions?: readonly LabelRequirement[];
}

export type Labels = Readonly<Record<string, string>>;

/** Whether `selector` selects an object with `labels`. */
export function selects(selector: LabelSelector, labels: Labels): boolean {
  for (const [key, value] of Object.entries(selector.matchLabels ?? {})) {
    if (!Object.hasOwn(labels, key) || labels[key] !== value) return false;
  }
  for (const requirement of selector.matchExpressions ?? []) {
    if (!meets(requirement, labels)) return false;
  }
  return true;
}

/** Whether the selector is empty (selects everything). */
export function selectsAll(selector: LabelSelector): boolean {
  return Object.keys(selector.matchLabels ?? {}).length === 0 && (selector.matchExpressions ?? []).length === 0;
}

function meets(requirement: LabelRequirement, labels: Labels): boolean {
  const present = Object.hasOwn(labels, requirement.key);
  const values = requirement.values ?? [];
  switch (requirement.operator) {
    case "In":
      return present && values.includes(labels[requirement.key]);
    // As apimachinery has it: an object without the label meets NotIn.
    case "NotIn":
      return !present || !values.includes(labels[requirement.key]);
    case "Exists":
      return present;
    case "DoesNotExist":
      return !present;
    default:
      return false;
  }
}
