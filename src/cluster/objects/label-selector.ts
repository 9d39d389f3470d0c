/**
 * metav1.LabelSelector read from a manifest and checked as ValidateLabelSelector checks it:
 * `matchLabels` as labels, each of `matchExpressions` with a known operator, values only where
 * the operator takes them, and label-shaped keys and values.
 */
import type { LabelSelector, LabelRequirement, SelectorOperator } from "../../policy/selector.js";
import { checkFields, list, object, omitUndefined, string, stringList, stringMap } from "./decode.js";
import { forbidden, invalid, required, type FieldError } from "./field-errors.js";
import { labelErrors } from "./object-meta.js";
import { isQualifiedName, isValidLabelValue } from "./syntax.js";

const OPERATORS: readonly SelectorOperator[] = ["In", "NotIn", "Exists", "DoesNotExist"];

/** The selector at `path` (undefined when absent), with every problem added to `errors`. */
export function decodeLabelSelector(value: unknown, path: string, errors: FieldError[]): LabelSelector | undefined {
  const fields = object(value, path, errors);
  if (!fields) return undefined;
  checkFields(fields, path, ["matchLabels", "matchExpressions"], errors);
  const matchLabels = stringMap(fields.matchLabels, `${path}.matchLabels`, errors);
  const matchExpressions = list(fields.matchExpressions, `${path}.matchExpressions`, errors, (item, itemPath): LabelRequirement => {
    const entry = object(item, itemPath, errors) ?? {};
    checkFields(entry, itemPath, ["key", "operator", "values"], errors);
    const values = stringList(entry.values, `${itemPath}.values`, errors);
    return omitUndefined({
      key: string(entry.key, `${itemPath}.key`, errors) ?? "",
      operator: (string(entry.operator, `${itemPath}.operator`, errors) ?? "") as SelectorOperator,
      values: values && values.length ? values : undefined,
    });
  });
  const selector = omitUndefined({
    matchLabels: matchLabels && Object.keys(matchLabels).length ? matchLabels : undefined,
    matchExpressions: matchExpressions && matchExpressions.length ? matchExpressions : undefined,
  });
  errors.push(...labelSelectorErrors(selector, path));
  return selector;
}

/** ValidateLabelSelector's problems, at the apiserver's paths. */
export function labelSelectorErrors(selector: LabelSelector, path: string): FieldError[] {
  const errors: FieldError[] = [];
  if (selector.matchLabels) errors.push(...labelErrors(selector.matchLabels, `${path}.matchLabels`));
  selector.matchExpressions?.forEach((requirement, i) => {
    const at = `${path}.matchExpressions[${i}]`;
    const values = requirement.values ?? [];
    if (requirement.operator === "In" || requirement.operator === "NotIn") {
      if (values.length === 0) errors.push(required(`${at}.values`, "must be specified when `operator` is 'In' or 'NotIn'"));
    } else if (requirement.operator === "Exists" || requirement.operator === "DoesNotExist") {
      if (values.length > 0) errors.push(forbidden(`${at}.values`, "may not be specified when `operator` is 'Exists' or 'DoesNotExist'"));
    } else errors.push(invalid(`${at}.operator`, requirement.operator, `not a valid selector operator (${OPERATORS.join(", ")})`));
    for (const message of isQualifiedName(requirement.key)) errors.push(invalid(`${at}.key`, requirement.key, message));
    values.forEach((value, j) => {
      for (const message of isValidLabelValue(value)) errors.push(invalid(`${at}.values[${j}]`, value, message));
    });
  });
  return errors;
}
