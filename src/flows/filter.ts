/**
 * Which flows a reader wants: by pod, namespace, Service, verdict and age. One parser for the
 * CLI's flags and the agent's query string, so both refuse the same values with the same words
 * (the name of what was given, the value, and what is allowed).
 */
import { isDns1035Label, isDns1123Label, isDns1123Subdomain } from "../cluster/objects/syntax.js";
import { FLOW_VERDICTS, type FlowRecord, type FlowVerdict } from "./record.js";

export interface FlowFilter {
  /** `NAMESPACE/NAME`: flows from or to that pod (before or after translation). */
  readonly pod?: string;
  /** Flows from or to a pod of that namespace, or to a Service of it. */
  readonly namespace?: string;
  /** `NAMESPACE/NAME`: flows to that Service. */
  readonly service?: string;
  readonly verdict?: FlowVerdict;
  /** Flows seen at or after this time (ms since the epoch). */
  readonly since?: number;
}

/** The filter's inputs as given: flag or query values. */
export interface FlowFilterInput {
  readonly pod?: string;
  readonly namespace?: string;
  readonly service?: string;
  readonly verdict?: string;
  /** A duration back from `now` (`30s`, `5m`, `2h`) or an RFC 3339 time. */
  readonly since?: string;
}

/** The longest look back `since` takes: the ring holds far less. */
const MAX_SINCE_MS = 7 * 24 * 3600 * 1000;
const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/**
 * The filter of `input`; throws naming the input and what is allowed. `name(key)` is how the
 * caller spells an input (`--pod`, or `pod` in a query string).
 */
export function parseFlowFilter(input: FlowFilterInput, now: number, name: (key: keyof FlowFilterInput) => string = (key) => `--${key}`): FlowFilter {
  const refuse = (key: keyof FlowFilterInput, value: string, allowed: string): never => {
    throw new Error(`${name(key)} ${JSON.stringify(value)} is not ${allowed}`);
  };
  const namespaced = (key: "pod" | "service", value: string, nameErrors: (value: string) => string[]) => {
    const parts = value.split("/");
    const problem = parts.length !== 2 ? ["must be NAMESPACE/NAME"] : [...isDns1123Label(parts[0]).map((error) => `namespace: ${error}`), ...nameErrors(parts[1]).map((error) => `name: ${error}`)];
    if (problem.length) refuse(key, value, `a ${key} as NAMESPACE/NAME (${problem.join("; ")})`);
    return value;
  };
  const filter: { -readonly [K in keyof FlowFilter]: FlowFilter[K] } = {};
  if (input.pod !== undefined) filter.pod = namespaced("pod", input.pod, isDns1123Subdomain);
  if (input.service !== undefined) filter.service = namespaced("service", input.service, isDns1035Label);
  if (input.namespace !== undefined) {
    const errors = isDns1123Label(input.namespace);
    if (errors.length) refuse("namespace", input.namespace, `a namespace name (${errors.join("; ")})`);
    filter.namespace = input.namespace;
  }
  if (input.verdict !== undefined) {
    if (!(FLOW_VERDICTS as readonly string[]).includes(input.verdict)) refuse("verdict", input.verdict, `a verdict: expected one of ${FLOW_VERDICTS.join(", ")}`);
    filter.verdict = input.verdict as FlowVerdict;
  }
  if (input.since !== undefined) filter.since = parseSince(input.since, now, (allowed) => refuse("since", input.since!, allowed));
  return filter;
}

function parseSince(text: string, now: number, refuse: (allowed: string) => never): number {
  const allowed = "a duration back from now (such as 30s, 5m or 2h, at most 7 days) or an RFC 3339 time (such as 2026-12-08T10:00:00Z)";
  const duration = /^([0-9]{1,9})(ms|s|m|h)$/.exec(text);
  if (duration) {
    const ms = Number(duration[1]) * UNITS[duration[2]];
    if (ms > MAX_SINCE_MS) refuse(allowed);
    return now - ms;
  }
  if (/^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})$/.test(text)) {
    const time = Date.parse(text);
    if (Number.isFinite(time)) return time;
  }
  return refuse(allowed);
}

/** Whether `record` is one `filter` asks for. */
export function flowMatches(record: FlowRecord, filter: FlowFilter, time = Date.parse(record.time)): boolean {
  if (filter.verdict !== undefined && record.verdict !== filter.verdict) return false;
  if (filter.since !== undefined && time < filter.since) return false;
  if (filter.service !== undefined && record.service !== filter.service) return false;
  const pods = [record.source.pod, record.destination.pod, record.translated?.pod];
  if (filter.pod !== undefined && !pods.includes(filter.pod)) return false;
  if (filter.namespace !== undefined) {
    const prefix = `${filter.namespace}/`;
    if (![...pods, record.service].some((name) => name?.startsWith(prefix))) return false;
  }
  return true;
}

/** The filter as a query string (without `?`), for an agent's /flows. */
export function flowFilterQuery(filter: FlowFilter): URLSearchParams {
  const query = new URLSearchParams();
  if (filter.pod !== undefined) query.set("pod", filter.pod);
  if (filter.namespace !== undefined) query.set("namespace", filter.namespace);
  if (filter.service !== undefined) query.set("service", filter.service);
  if (filter.verdict !== undefined) query.set("verdict", filter.verdict);
  if (filter.since !== undefined) query.set("since", new Date(filter.since).toISOString());
  return query;
}
