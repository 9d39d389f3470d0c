/**
 * Where the Service proxy takes its objects from. On the Trellis store: Services, EndpointSlices
 * and Pods under their prefixes, endpoints worked out from the Pods as the EndpointSlice
 * controller would. On the Kubernetes API: Services and EndpointSlices, the controller's own.
 * Either way the proxy hears of each object that came, changed or went, and when a list is whole.
 */
import { APPLIED_AT, ENDPOINTSLICES_PREFIX, PODS_PREFIX, storedService } from "../cluster/apply.js";
import type { EndpointSlice, Pod, Service } from "../cluster/objects/types.js";
import { SERVICES_PREFIX } from "../cluster/services.js";
import type { KubeClient } from "../kube/client.js";
import { inform, reflect, type Informer } from "../kube/informer.js";
import type { KvStore } from "../store/kv.js";
import { STORE_MAX_RETRY_MS, storeCollection } from "./store-collection.js";

export interface ProxySink {
  service(key: string, service: Service | undefined, changedAt?: number): void;
  slice(key: string, slice: EndpointSlice | undefined, changedAt?: number): void;
  pod(key: string, pod: Pod | undefined, changedAt?: number): void;
  /** Every kind has been listed whole. */
  listed(): void;
  /** Following failed; the source lists again by itself after `retryInMs`. */
  failed(error: Error, retryInMs: number): void;
}

/**
 * Where a Service with a selector gets its endpoints: `pods`, worked out from the Pods as the
 * EndpointSlice controller would (the Trellis store has no such controller); `slices`, from the
 * EndpointSlices alone (the Kubernetes API's controller writes them).
 */
export type EndpointSource = "pods" | "slices";

export interface ProxySource {
  readonly endpoints: EndpointSource;
  follow(sink: ProxySink): ProxyFollow;
}

export interface ProxyFollow {
  /** Lists and watches anew at once. */
  relist(): void;
  stop(): void;
}

export const PROXY_PREFIXES = [SERVICES_PREFIX, ENDPOINTSLICES_PREFIX, PODS_PREFIX] as const;
type StorePrefix = (typeof PROXY_PREFIXES)[number];

/**
 * Hands one stored value (undefined: deleted) to `sink` as the object it holds, or as no object
 * when it holds none; returns the time the change was applied, when the object carries it.
 */
export function putStored(sink: Pick<ProxySink, "service" | "slice" | "pod">, prefix: StorePrefix, storeKey: string, value: string | undefined): number | undefined {
  if (prefix === SERVICES_PREFIX) {
    const service = value === undefined ? undefined : storedService(value);
    const at = appliedAt(service);
    sink.service(storeKey.slice(prefix.length), slim(service), at);
    return at;
  }
  if (prefix === ENDPOINTSLICES_PREFIX) {
    const slice = value === undefined ? undefined : parseStored<EndpointSlice>(value, (object) => Array.isArray(object.endpoints));
    const at = appliedAt(slice);
    sink.slice(storeKey, slim(slice), at);
    return at;
  }
  const pod = value === undefined ? undefined : parseStored<Pod>(value, (object) => isObject(object.spec) && isObject(object.status));
  const at = appliedAt(pod);
  sink.pod(storeKey, slim(pod), at);
  return at;
}

/** Services, EndpointSlices and Pods from the Trellis store, a reflector per prefix. */
export function storeProxySource(store: KvStore): ProxySource {
  return {
    endpoints: "pods",
    follow(sink) {
      const synced = new Set<string>();
      const informers = PROXY_PREFIXES.map((prefix) =>
        reflect(
          storeCollection(store, prefix),
          {
            change: (key, entry) => void putStored(sink, prefix, key, entry?.value),
            synced: () => {
              synced.add(prefix);
              if (synced.size === PROXY_PREFIXES.length) sink.listed();
            },
            failed: (error, retryInMs) => sink.failed(error, retryInMs),
          },
          { maxRetryMs: STORE_MAX_RETRY_MS },
        ),
      );
      return {
        relist: () => informers.forEach((informer) => informer.relist()),
        stop: () => informers.forEach((informer) => informer.stop()),
      };
    },
  };
}

/** kube-proxy's source of a change's time: when the EndpointSlice controller saw what triggered it. */
const TRIGGER_TIME = "endpoints.kubernetes.io/last-change-trigger-time";

/** Services and EndpointSlices from the Kubernetes API. */
export function kubeProxySource(client: KubeClient): ProxySource {
  return {
    endpoints: "slices",
    follow(sink) {
      const synced = new Set<string>();
      const informers: Informer[] = [];
      const whole = (kind: string) => () => {
        synced.add(kind);
        if (synced.size === 2) sink.listed();
      };
      const failed = (error: Error, retryInMs: number) => sink.failed(error, retryInMs);
      informers.push(
        inform<Service>(client, "/api/v1/services", { change: (key, service) => sink.service(key, slim(service)), synced: whole("services"), failed }),
        inform<EndpointSlice>(client, "/apis/discovery.k8s.io/v1/endpointslices", {
          change: (key, slice) => {
            const time = slice?.metadata.annotations?.[TRIGGER_TIME];
            const at = time === undefined ? Number.NaN : Date.parse(time);
            sink.slice(key, slim(slice), Number.isFinite(at) ? at : undefined);
          },
          synced: whole("endpointslices"),
          failed,
        }),
      );
      return {
        relist: () => informers.forEach((informer) => informer.relist()),
        stop: () => informers.forEach((informer) => informer.stop()),
      };
    },
  };
}

/**
 * The object without what the proxy never reads and the proxy would otherwise keep for every
 * object: the API server's managedFields and the annotations (a client's last applied
 * configuration among them, often larger than the rest). The times read from annotations are
 * read before this.
 */
function slim<T extends { metadata: { annotations?: unknown; managedFields?: unknown } }>(object: T | undefined): T | undefined {
  if (object === undefined || (object.metadata.annotations === undefined && object.metadata.managedFields === undefined)) return object;
  const { annotations: _annotations, managedFields: _managedFields, ...metadata } = object.metadata;
  return { ...object, metadata };
}

/** A stored object, or undefined when the value is not one (such a value counts as no object). */
function parseStored<T>(value: string, shape: (object: Record<string, unknown>) => boolean): T | undefined {
  try {
    const parsed = JSON.parse(value) as unknown;
    if (!isObject(parsed) || !isObject(parsed.metadata) || typeof parsed.metadata.name !== "string" || !shape(parsed)) return undefined;
    return parsed as T;
  } catch {
    return undefined;
  }
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** The apply time an object carries (see cluster/apply.ts), if it parses. */
function appliedAt(object: { metadata?: { annotations?: Readonly<Record<string, string>> } } | undefined): number | undefined {
  const text = object?.metadata?.annotations?.[APPLIED_AT];
  const time = text === undefined ? Number.NaN : Date.parse(text);
  return Number.isFinite(time) ? time : undefined;
}
