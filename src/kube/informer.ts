/**
 * List, then watch, for ever: the reflector of client-go in a few lines, the one shape every
 * follower of a datastore in Trellis has (the Kubernetes API's collections here, the Trellis
 * store's prefixes in agent/). It tells its owner of every object that came, changed or went, as
 * if nothing had been missed: after any failure it waits (backing off) and lists again, and an
 * object that vanished meanwhile is reported gone. A watch that ends as it may is resumed from
 * where it stopped; one whose history is gone is replaced by a new list at once. It keeps only
 * each object's version, not the object, so a large cluster costs its owner's memory alone.
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

export interface InformerHandlers<T> {
  /** An object came or changed (`object`), or went (undefined). `key` is `NAMESPACE/NAME` or `NAME`. */
  change(key: string, object: T | undefined): void;
  /** A list has been taken in whole (the first, and each after a failure). */
  synced?(): void;
  /** A list or watch failed; the informer lists again after `retryInMs`. */
  failed?(error: Error, retryInMs: number): void;
}

/** One item of a list: its key, its version (unchanged versions are not reported again) and the item. */
export interface Listed<T> {
  readonly key: string;
  readonly version: string;
  readonly object: T;
}

/** A collection a reflector follows, `C` being where a watch starts (a resource version, a revision). */
export interface Collection<T, C> {
  /** Every item now, and where a watch of what follows starts; pages until `stopped()`. */
  list(stopped: () => boolean): Promise<{ readonly items: readonly Listed<T>[]; readonly from: C }>;
  /**
   * Hands each change from `from` on to `event` (an item, or undefined when gone, with its
   * version) until the stream ends as it may (resolves with where to go on), `signal` aborts
   * (resolves), or it fails (rejects).
   */
  watch(from: C, event: (key: string, object: T | undefined, version: string) => void, signal: AbortSignal): Promise<C>;
  /** Whether a failure means the watch's history is gone: list again at once, no backoff. */
  expired(error: unknown): boolean;
  /** Whether a failure will not mend by itself soon (forbidden, say): back off to the maximum. */
  lasting?(error: unknown): boolean;
}

export interface ReflectorOptions {
  readonly firstRetryMs?: number;
  readonly maxRetryMs?: number;
}

export interface InformerOptions extends ReflectorOptions {
  /** Objects per list page. */
  readonly pageSize?: number;
  readonly labelSelector?: string;
  readonly fieldSelector?: string;
  /** A watch's length, asked of the server; drawn from [t, 2t] so watches do not end together. */
  readonly watchSeconds?: number;
  /** With no byte for this long, a watch counts as dead. */
  readonly idleTimeoutMs?: number;
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

/** Follows `collection` until stopped, telling `handlers` of every change. */
export function reflect<T, C>(collection: Collection<T, C>, handlers: InformerHandlers<T>, options: ReflectorOptions = {}): Informer {
  const firstRetryMs = options.firstRetryMs ?? 500;
  const maxRetryMs = options.maxRetryMs ?? 10_000;
  /** Each known item's version, by key. */
  const known = new Map<string, string>();
  let stopped = false;
  let synced = false;
  let current: AbortController | undefined;
  let wake: (() => void) | undefined;

  const list = async (): Promise<C | undefined> => {
    const { items, from } = await collection.list(() => stopped);
    if (stopped) return undefined;
    const seen = new Set(items.map((item) => item.key));
    for (const key of [...known.keys()]) {
      if (seen.has(key)) continue;
      known.delete(key);
      handlers.change(key, undefined);
    }
    for (const { key, version, object } of items) {
      if (known.get(key) === version && version !== "") continue;
      known.set(key, version);
      handlers.change(key, object);
    }
    synced = true;
    handlers.synced?.();
    return from;
  };

  const event = (key: string, object: T | undefined, version: string) => {
    if (object === undefined) {
      if (known.delete(key)) handlers.change(key, undefined);
      return;
    }
    known.set(key, version);
    handlers.change(key, object);
  };

  const run = async () => {
    let retryMs = firstRetryMs;
    while (!stopped) {
      try {
        let from = await list();
        if (from === undefined) return;
        retryMs = firstRetryMs;
        while (!stopped) {
          current = new AbortController();
          const started = Date.now();
          from = await collection.watch(from, event, current.signal);
          // An abort that was not a stop asks for a new list.
          if (current.signal.aborted) break;
          // A source that ends watches at once is not asked again in a tight loop.
          if (Date.now() - started < 1_000) await new Promise((resolve) => setTimeout(resolve, firstRetryMs));
        }
      } catch (error) {
        if (stopped) return;
        if (collection.expired(error)) continue;
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
        retryMs = Math.min(collection.lasting?.(error) ? maxRetryMs : retryMs * 2, maxRetryMs);
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

/** Follows the collection at `path` (`/api/v1/services`, `/api/v1/nodes`, …) on the API server. */
export function inform<T extends KubeObject>(client: KubeClient, path: string, handlers: InformerHandlers<T>, options: InformerOptions = {}): Informer {
  return reflect(apiCollection<T>(client, path, options), handlers, options);
}

/** A collection of the API server, listed in pages and watched from the list's resource version. */
function apiCollection<T extends KubeObject>(client: KubeClient, path: string, options: InformerOptions): Collection<T, string> {
  const pageSize = options.pageSize ?? 500;
  const watchSeconds = options.watchSeconds ?? 300;
  const selectors: Record<string, string> = {};
  if (options.labelSelector) selectors.labelSelector = options.labelSelector;
  if (options.fieldSelector) selectors.fieldSelector = options.fieldSelector;
  const watchPath = `${path}${Object.keys(selectors).length ? `?${new URLSearchParams(selectors)}` : ""}`;
  return {
    async list(stopped) {
      const items: Listed<T>[] = [];
      let resourceVersion = "";
      let next: string | undefined;
      do {
        const query = new URLSearchParams({ ...selectors, limit: String(pageSize), ...(next ? { continue: next } : {}) });
        const page = await client.request<ListPage<T>>("GET", `${path}?${query}`);
        if (!Array.isArray(page.items)) throw new Error(`GET ${path}: the answer is not a list`);
        for (const item of page.items) {
          if (typeof item?.metadata?.name !== "string") continue;
          items.push({ key: objectKey(item), version: item.metadata.resourceVersion ?? "", object: item });
        }
        resourceVersion = page.metadata?.resourceVersion ?? resourceVersion;
        next = page.metadata?.continue || undefined;
      } while (next && !stopped());
      return { items, from: resourceVersion };
    },
    watch(resourceVersion, event, signal) {
      const seconds = watchSeconds + Math.floor(Math.random() * watchSeconds);
      return client.watch<T>(watchPath, {
        resourceVersion,
        timeoutSeconds: seconds,
        idleTimeoutMs: options.idleTimeoutMs ?? (seconds + 30) * 1000,
        signal,
        onEvent: ({ type, object }) => {
          if (type === "BOOKMARK") return;
          event(objectKey(object), type === "DELETED" ? undefined : object, object.metadata.resourceVersion ?? "");
        },
      });
    },
    expired: (error) => error instanceof WatchExpired,
    lasting: (error) => error instanceof KubeApiError && error.status < 500 && error.status !== 429,
  };
}
