/**
 * List, then watch, for ever: the reflector of client-go in a few lines. It tells its owner of
 * every object that came, changed or went, as if nothing had been missed: after any failure it
 * waits (backing off) and lists again, and an object that vanished meanwhile is reported gone.
 * A watch the API server ends is resumed from the last resource version; one whose version is
 * too old (410 Gone) is replaced by a new list. It keeps only each object's resource version,
 * not the object, so a large cluster costs its owner's memory alone.
 */
import { KubeApiError, WatchExpired, type KubeClient } from "./client.js";

export interface KubeObjectMeta {
  readonly name: string;
  readonly namespace?: string;
  readonly resourceVersion?: string;
  readonly uid?: string;
  readonly creationTimestamp?: string;
  readonly labels?: Readonly<Record<string, string>>;
  readonly annotations?: Readonly<Record<string, string>>;
}

export interface KubeObject {
  readonly metadata: KubeObjectMeta;
}

export interface InformerHandlers<T extends KubeObject> {
  /** An object came or changed (`object`), or went (undefined). `key` is `NAMESPACE/NAME` or `NAME`. */
  change(key: string, object: T | undefined): void;
  /** A list has been taken in whole (the first, and each after a failure). */
  synced?(): void;
  /** A list or watch failed; the informer lists again after `retryInMs`. */
  failed?(error: Error, retryInMs: number): void;
}

export interface InformerOptions {
  /** Objects per list page. */
  readonly pageSize?: number;
  readonly labelSelector?: string;
  readonly fieldSelector?: string;
  /** A watch's length, asked of the server; drawn from [t, 2t] so watches do not end together. */
  readonly watchSeconds?: number;
  /** With no byte for this long, a watch counts as dead. */
  readonly idleTimeoutMs?: number;
  readonly firstRetryMs?: number;
  readonly maxRetryMs?: number;
}

export interface Informer {
  /** Whether a list has been taken in whole. */
  synced(): boolean;
  /** Drops the watch and lists again at once. */
  relist(): void;
  stop(): void;
}

interface ListPage<T> {
  readonly metadata: { readonly resourceVersion?: string; readonly continue?: string };
  readonly items: readonly T[];
}

/** The key an object is known by: `NAMESPACE/NAME`, or `NAME` when cluster-scoped. */
export function objectKey(object: KubeObject): string {
  return object.metadata.namespace ? `${object.metadata.namespace}/${object.metadata.name}` : object.metadata.name;
}

/** Follows the collection at `path` (`/api/v1/services`, `/api/v1/nodes`, …). */
export function inform<T extends KubeObject>(client: KubeClient, path: string, handlers: InformerHandlers<T>, options: InformerOptions = {}): Informer {
  const pageSize = options.pageSize ?? 500;
  const watchSeconds = options.watchSeconds ?? 300;
  const firstRetryMs = options.firstRetryMs ?? 500;
  const maxRetryMs = options.maxRetryMs ?? 10_000;
  /** Each known object's resource version, by key. */
  const known = new Map<string, string>();
  let stopped = false;
  let synced = false;
  let current: AbortController | undefined;
  let wake: (() => void) | undefined;
  const selectors: Record<string, string> = {};
  if (options.labelSelector) selectors.labelSelector = options.labelSelector;
  if (options.fieldSelector) selectors.fieldSelector = options.fieldSelector;

  const list = async (): Promise<string> => {
    const seen = new Map<string, string>();
    const items: T[] = [];
    let resourceVersion = "";
    let next: string | undefined;
    do {
      const query = new URLSearchParams({ ...selectors, limit: String(pageSize), ...(next ? { continue: next } : {}) });
      const page = await client.request<ListPage<T>>("GET", `${path}?${query}`);
      if (!Array.isArray(page.items)) throw new Error(`GET ${path}: the answer is not a list`);
      for (const item of page.items) {
        if (typeof item?.metadata?.name !== "string") continue;
        seen.set(objectKey(item), item.metadata.resourceVersion ?? "");
        items.push(item);
      }
      resourceVersion = page.metadata?.resourceVersion ?? resourceVersion;
      next = page.metadata?.continue || undefined;
    } while (next && !stopped);
    if (stopped) return resourceVersion;
    for (const key of [...known.keys()]) {
      if (seen.has(key)) continue;
      known.delete(key);
      handlers.change(key, undefined);
    }
    for (const item of items) {
      const key = objectKey(item);
      const version = seen.get(key)!;
      if (known.get(key) === version && version !== "") continue;
      known.set(key, version);
      handlers.change(key, item);
    }
    synced = true;
    handlers.synced?.();
    return resourceVersion;
  };

  const run = async () => {
    let retryMs = firstRetryMs;
    while (!stopped) {
      try {
        let resourceVersion = await list();
        retryMs = firstRetryMs;
        while (!stopped) {
          current = new AbortController();
          const started = Date.now();
          const seconds = watchSeconds + Math.floor(Math.random() * watchSeconds);
          resourceVersion = await client.watch<T>(`${path}${Object.keys(selectors).length ? `?${new URLSearchParams(selectors)}` : ""}`, {
            resourceVersion,
            timeoutSeconds: seconds,
            idleTimeoutMs: options.idleTimeoutMs ?? (seconds + 30) * 1000,
            signal: current.signal,
            onEvent: (event) => {
              if (event.type === "BOOKMARK") return;
              const key = objectKey(event.object);
              if (event.type === "DELETED") {
                if (known.delete(key)) handlers.change(key, undefined);
                return;
              }
              known.set(key, event.object.metadata.resourceVersion ?? "");
              handlers.change(key, event.object);
            },
          });
          // An abort that was not a stop asks for a new list.
          if (current.signal.aborted) break;
          // A server that ends watches at once is not asked again in a tight loop.
          if (Date.now() - started < 1_000) await new Promise((resolve) => setTimeout(resolve, firstRetryMs));
        }
      } catch (error) {
        if (stopped) return;
        // An expired watch is normal: list again at once.
        if (error instanceof WatchExpired) continue;
        const failure = error instanceof Error ? error : new Error(String(error));
        handlers.failed?.(failure, retryMs);
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, retryMs);
          wake = () => {
            clearTimeout(timer);
            resolve();
          };
        });
        wake = undefined;
        // Forbidden and the like will not mend by themselves quickly: back off to the maximum.
        retryMs = Math.min(error instanceof KubeApiError && error.status < 500 && error.status !== 429 ? maxRetryMs : retryMs * 2, maxRetryMs);
      }
    }
  };

  void run();
  return {
    synced: () => synced,
    relist() {
      current?.abort();
      wake?.();
    },
    stop() {
      stopped = true;
      current?.abort();
      wake?.();
    },
  };
}
