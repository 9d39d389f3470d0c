/**
 * Reading a parsed manifest (unknown JSON) into typed fields, as the apiserver's strict
 * decoder does: a value of the wrong type or an unknown field is an error at its path. Null
 * reads as absent, as Go's decoder reads it, so `creationTimestamp: null` from
 * `kubectl create --dry-run -o yaml` is fine. Every reader records problems and goes on, so
 * one pass reports them all.
 */
import { forbidden, invalid, notSupported, type FieldError } from "./field-errors.js";

export type Fields = Readonly<Record<string, unknown>>;

export function child(path: string, key: string): string {
  return path === "" ? key : `${path}.${key}`;
}

export function object(value: unknown, path: string, errors: FieldError[]): Fields | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value === "object" && !Array.isArray(value)) return value as Fields;
  errors.push(invalid(path, value, "must be an object"));
  return undefined;
}

export function string(value: unknown, path: string, errors: FieldError[]): string | undefined {
  if (value === undefined || value === null || typeof value === "string") return value ?? undefined;
  errors.push(invalid(path, value, "must be a string"));
  return undefined;
}

export function integer(value: unknown, path: string, errors: FieldError[]): number | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value === "number" && Number.isSafeInteger(value)) return value;
  errors.push(invalid(path, value, "must be an integer"));
  return undefined;
}

export function boolean(value: unknown, path: string, errors: FieldError[]): boolean | undefined {
  if (value === undefined || value === null || typeof value === "boolean") return value ?? undefined;
  errors.push(invalid(path, value, "must be a boolean (true or false)"));
  return undefined;
}

/** A port number or a port name (Kubernetes' IntOrString). */
export function intOrString(value: unknown, path: string, errors: FieldError[]): number | string | undefined {
  if (typeof value === "string") return value;
  if (typeof value === "number" && !Number.isSafeInteger(value)) {
    errors.push(invalid(path, value, "must be an integer or a string"));
    return undefined;
  }
  if (typeof value === "number" || value === undefined || value === null) return value ?? undefined;
  errors.push(invalid(path, value, "must be an integer or a string"));
  return undefined;
}

/** Each item is read even when null, so later errors keep the index the user wrote. */
export function list<T>(value: unknown, path: string, errors: FieldError[], item: (value: unknown, path: string) => T): T[] | undefined {
  if (value === undefined || value === null) return undefined;
  if (!Array.isArray(value)) {
    errors.push(invalid(path, value, "must be a list"));
    return undefined;
  }
  return value.map((entry, i) => item(entry, `${path}[${i}]`));
}

export function stringList(value: unknown, path: string, errors: FieldError[]): string[] | undefined {
  return list(value, path, errors, (entry, entryPath) => string(entry, entryPath, errors) ?? "");
}

/** Labels, annotations, selectors: string to string. */
export function stringMap(value: unknown, path: string, errors: FieldError[]): Record<string, string> | undefined {
  const fields = object(value, path, errors);
  if (!fields) return undefined;
  const map: Record<string, string> = {};
  for (const [key, entry] of Object.entries(fields)) {
    const text = string(entry, `${path}[${key}]`, errors);
    if (text !== undefined) map[key] = text;
  }
  return map;
}

/**
 * Refuses what a strict decoder refuses: fields the kind does not have. `unsupported` names
 * fields Kubernetes has and Trellis does not implement, with why; they are refused when set,
 * because ignoring them would change what the object means (a firewall silently dropped).
 */
export function checkFields(
  fields: Fields,
  path: string,
  known: readonly string[],
  errors: FieldError[],
  unsupported: Readonly<Record<string, string>> = {},
): void {
  for (const [key, value] of Object.entries(fields)) {
    if (key in unsupported) {
      if (!isEmpty(value)) errors.push(forbidden(child(path, key), `not supported by Trellis: ${unsupported[key]}`));
    } else if (!known.includes(key)) errors.push(forbidden(child(path, key), "unknown field"));
  }
}

/** apiVersion and kind may be left out when the caller knows the kind; if given they must match. */
export function checkKind(fields: Fields, apiVersion: string, kind: string, errors: FieldError[]): void {
  if (fields.apiVersion !== undefined && fields.apiVersion !== apiVersion) errors.push(notSupported("apiVersion", fields.apiVersion, [apiVersion]));
  if (fields.kind !== undefined && fields.kind !== kind) errors.push(notSupported("kind", fields.kind, [kind]));
}

function isEmpty(value: unknown): boolean {
  if (value === undefined || value === null || value === "" || value === false) return true;
  if (Array.isArray(value)) return value.length === 0;
  return typeof value === "object" && Object.keys(value).length === 0;
}

/** Whether a value read as some string is one of a field's allowed values. */
export function isOneOf(values: readonly string[], value: string): boolean {
  return values.includes(value);
}

/** A manifest's top level must be an object; anything else is no Kubernetes object at all. */
export function topLevel(input: unknown, kind: string): Fields {
  if (typeof input === "object" && input !== null && !Array.isArray(input)) return input as Fields;
  throw new Error(`a ${kind} must be an object with apiVersion, kind and metadata, not ${JSON.stringify(input) ?? String(input)}`);
}

export function nonEmptyMap(map: Record<string, string> | undefined): Record<string, string> | undefined {
  return map && Object.keys(map).length > 0 ? map : undefined;
}

export function nonEmptyList<T>(items: T[] | undefined): T[] | undefined {
  return items && items.length > 0 ? items : undefined;
}

/** Absent rather than undefined-valued keys, so objects compare and serialize as the apiserver writes them. */
export function omitUndefined<T extends object>(value: T): T {
  return Object.fromEntries(Object.entries(value).filter(([, entry]) => entry !== undefined)) as T;
}
