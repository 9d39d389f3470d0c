/**
 * ObjectMeta as every kind here has it: read from a manifest (namespace defaulting to
 * "default", as kubectl fills it in) and checked as ValidateObjectMeta checks a namespaced
 * object; labels and selectors share its label checks.
 */
import { checkFields, object, omitUndefined, nonEmptyMap, string, stringMap } from "./decode.js";
import { invalid, required, tooLong, type FieldError } from "./field-errors.js";
import { isDns1123Label, isQualifiedName, isValidLabelValue } from "./syntax.js";
import type { ClusterObjectMeta, ObjectMeta, StringMap } from "./types.js";

const maxAnnotationBytes = 256 * 1024;

const metadataFields = [
  "name", "namespace", "labels", "annotations", "uid", "resourceVersion", "creationTimestamp", "deletionTimestamp",
  "generation", "selfLink", "deletionGracePeriodSeconds", "ownerReferences", "finalizers", "managedFields",
];

export function decodeMetadata(value: unknown, errors: FieldError[]): ObjectMeta {
  const fields = object(value, "metadata", errors) ?? {};
  // generateName is only refused where it would have to make the name up.
  const named = typeof fields.name === "string" && fields.name !== "";
  checkFields(fields, "metadata", [...metadataFields, "generateName"], errors, named ? {} : {
    generateName: "Trellis does not invent names; give metadata.name",
  });
  const text = (key: string) => string(fields[key], `metadata.${key}`, errors) || undefined;
  const labels = stringMap(fields.labels, "metadata.labels", errors);
  const annotations = stringMap(fields.annotations, "metadata.annotations", errors);
  return omitUndefined({
    name: text("name") ?? "",
    namespace: text("namespace") ?? "default",
    labels: nonEmptyMap(labels),
    annotations: nonEmptyMap(annotations),
    uid: text("uid"),
    resourceVersion: text("resourceVersion"),
    creationTimestamp: text("creationTimestamp"),
    deletionTimestamp: text("deletionTimestamp"),
  });
}

/** Metadata of a cluster-scoped object: a namespace given is dropped, as the apiserver clears it. */
export function decodeClusterMetadata(value: unknown, errors: FieldError[]): ClusterObjectMeta {
  const { namespace: _namespace, ...rest } = decodeMetadata(value, errors);
  return rest;
}

/**
 * ValidateObjectMeta for an object whose name `nameProblems` checks: namespaced, or of the
 * cluster (a Namespace, a ClusterNetworkPolicy), whose namespace the apiserver clears.
 */
export function metadataErrors(metadata: ClusterObjectMeta & { readonly namespace?: string }, nameProblems: (name: string) => string[], scope: "namespaced" | "cluster" = "namespaced"): FieldError[] {
  const errors: FieldError[] = [];
  if (!metadata.name) errors.push(required("metadata.name", "name or generateName is required"));
  else for (const message of nameProblems(metadata.name)) errors.push(invalid("metadata.name", metadata.name, message));
  if (scope === "cluster") {
    // Nothing to check: a cluster-scoped object has no namespace (decodeClusterMetadata dropped it).
  } else if (!metadata.namespace) errors.push(required("metadata.namespace"));
  else for (const message of isDns1123Label(metadata.namespace)) errors.push(invalid("metadata.namespace", metadata.namespace, message));
  if (metadata.labels) errors.push(...labelErrors(metadata.labels, "metadata.labels"));
  if (metadata.annotations) {
    let bytes = 0;
    for (const [key, value] of Object.entries(metadata.annotations)) {
      // Annotation keys are qualified names in any case.
      for (const message of isQualifiedName(key.toLowerCase())) errors.push(invalid("metadata.annotations", key, message));
      bytes += Buffer.byteLength(key) + Buffer.byteLength(value);
    }
    if (bytes > maxAnnotationBytes) errors.push(tooLong("metadata.annotations", maxAnnotationBytes));
  }
  return errors;
}

/** Labels and selectors: errors sit at the map's path, the key or value as the value. */
export function labelErrors(labels: StringMap, path: string): FieldError[] {
  const errors: FieldError[] = [];
  for (const [key, value] of Object.entries(labels)) {
    for (const message of isQualifiedName(key)) errors.push(invalid(path, key, message));
    for (const message of isValidLabelValue(value)) errors.push(invalid(path, value, message));
  }
  return errors;
}
