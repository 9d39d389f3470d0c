/**
 * Field errors the way the apiserver reports them (k8s.io/apimachinery's field.Error): a
 * path, a type, the offending value and a detail, printed as
 * `spec.ports[0].port: Invalid value: 70000: must be between 1 and 65535, inclusive`, and
 * joined as kubectl prints an Invalid status: `The Service "web" is invalid: [a, b]`.
 */

export type FieldErrorType =
  | "Invalid value"
  | "Required value"
  | "Unsupported value"
  | "Duplicate value"
  | "Forbidden"
  | "Too many"
  | "Too long";

export interface FieldError {
  readonly path: string;
  readonly type: FieldErrorType;
  /** Printed for every type but Required, Forbidden and Too long; absent prints as null. */
  readonly value?: unknown;
  readonly detail?: string;
}

export function invalid(path: string, value: unknown, detail: string): FieldError {
  return { path, type: "Invalid value", value, detail };
}

export function required(path: string, detail = ""): FieldError {
  return { path, type: "Required value", detail };
}

/** `supported` is listed sorted and quoted, as sets.List prints it. */
export function notSupported(path: string, value: unknown, supported: readonly string[]): FieldError {
  const detail = supported.length === 0 ? "" : `supported values: ${[...supported].sort().map((v) => JSON.stringify(v)).join(", ")}`;
  return { path, type: "Unsupported value", value, detail };
}

/** A value Kubernetes supports and Trellis does not: Unsupported, saying why and what is. */
export function refused(path: string, value: unknown, why: string, supported: readonly string[]): FieldError {
  return { path, type: "Unsupported value", value, detail: `not supported by Trellis: ${why}; ${notSupported(path, value, supported).detail}` };
}

export function duplicate(path: string, value: unknown): FieldError {
  return { path, type: "Duplicate value", value };
}

export function forbidden(path: string, detail: string): FieldError {
  return { path, type: "Forbidden", detail };
}

export function tooMany(path: string, actual: number, max: number): FieldError {
  return { path, type: "Too many", value: actual, detail: `must have at most ${max} item${max === 1 ? "" : "s"}` };
}

export function tooLong(path: string, maxBytes: number): FieldError {
  return { path, type: "Too long", detail: `may not be more than ${maxBytes} bytes` };
}

const valueless: ReadonlySet<FieldErrorType> = new Set(["Required value", "Forbidden", "Too long"]);

/** One error as field.Error.Error() prints it. */
export function formatFieldError(error: FieldError): string {
  let text = `${error.path}: ${error.type}`;
  if (!valueless.has(error.type)) text += `: ${formatValue(error.value)}`;
  if (error.detail) text += `: ${error.detail}`;
  return text;
}

/** Strings quoted, numbers plain, string lists as Go prints []string; anything else as JSON. */
function formatValue(value: unknown): string {
  if (value === undefined || value === null) return "null";
  if (typeof value === "string") return JSON.stringify(value);
  if (typeof value === "number" || typeof value === "boolean") return String(value);
  if (Array.isArray(value) && value.every((item) => typeof item === "string")) {
    return `[]string{${value.map((item) => JSON.stringify(item)).join(", ")}}`;
  }
  return JSON.stringify(value);
}

/**
 * An object the apiserver would refuse with 422 Invalid; `errors` holds every problem found.
 * The object's name is `objectName` because Error already has a `name`.
 */
export class ObjectInvalidError extends Error {
  constructor(
    readonly kind: string,
    readonly objectName: string,
    readonly errors: readonly FieldError[],
  ) {
    super(`The ${kind} ${JSON.stringify(objectName)} is invalid: ${aggregate(errors.map(formatFieldError))}`);
  }
}

export function throwIfInvalid(kind: string, name: string, errors: readonly FieldError[]): void {
  if (errors.length > 0) throw new ObjectInvalidError(kind, name, errors);
}

/** utilerrors' aggregate: repeated messages once, brackets only around several. */
function aggregate(messages: readonly string[]): string {
  const unique = [...new Set(messages)];
  return unique.length === 1 ? unique[0] : `[${unique.join(", ")}]`;
}
