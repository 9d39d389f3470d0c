/**
 * A thin client of the Kubernetes API: JSON requests and watch streams over node:https, nothing
 * else. Written for the agent rather than taken from @kubernetes/client-node: its 2.x needs
 * Node 22, and its 1.4.0 stops an informer on the first error and leaks a connection per
 * reconnect; what the agent needs is small enough to own and test against a real apiserver.
 * Every response is size-limited, every request and idle watch times out, and each watch has its
 * own connection, destroyed when the watch ends, so nothing outlives its use.
 */
import { Agent as HttpAgent, request as httpRequest, type IncomingMessage } from "node:http";
import { Agent as HttpsAgent, request as httpsRequest } from "node:https";
import type { KubeConnection } from "./config.js";

/** An error answer of the API server, with its status code and Kubernetes reason. */
export class KubeApiError extends Error {
  constructor(
    readonly status: number,
    readonly reason: string,
    message: string,
  ) {
    super(message);
  }
}

/** The watch's resource version is gone from the API server's history: list again. */
export class WatchExpired extends Error {}

export interface RequestOptions {
  readonly body?: unknown;
  /** For PATCH: `application/merge-patch+json` or `application/strategic-merge-patch+json`. */
  readonly contentType?: string;
  readonly timeoutMs?: number;
}

export interface WatchEvent<T> {
  readonly type: "ADDED" | "MODIFIED" | "DELETED" | "BOOKMARK";
  readonly object: T;
}

export interface WatchOptions<T> {
  readonly resourceVersion: string;
  /** The server ends the watch after this long (the client then watches again). */
  readonly timeoutSeconds: number;
  /** With no byte for this long, the connection counts as dead. */
  readonly idleTimeoutMs: number;
  readonly onEvent: (event: WatchEvent<T>) => void;
  readonly signal?: AbortSignal;
}

/** Largest answer read whole (a list page); larger ones fail. */
const MAX_RESPONSE_BYTES = 64 * 2 ** 20;
/** Largest single watch event. */
const MAX_EVENT_BYTES = 16 * 2 ** 20;
const DEFAULT_TIMEOUT_MS = 30_000;

export class KubeClient {
  private readonly agent: HttpAgent;
  private readonly watches = new Set<{ destroy(): void }>();

  constructor(readonly connection: KubeConnection) {
    const Agent = this.secure ? HttpsAgent : HttpAgent;
    this.agent = new Agent({ keepAlive: true, maxSockets: 4, ...this.tls() });
  }

  private get secure(): boolean {
    return this.connection.server.startsWith("https:");
  }

  private tls() {
    const { ca, cert, key, insecureSkipTlsVerify } = this.connection;
    return this.secure ? { ca, cert, key, rejectUnauthorized: !insecureSkipTlsVerify } : {};
  }

  private headers(extra: Record<string, string>): Record<string, string> {
    const headers: Record<string, string> = { accept: "application/json", "user-agent": "trellis", ...extra };
    const token = this.connection.token?.();
    if (token) headers.authorization = `Bearer ${token}`;
    return headers;
  }

  /** One request; resolves with the parsed JSON answer, rejects with KubeApiError on an error status. */
  async request<T>(method: string, path: string, options: RequestOptions = {}): Promise<T> {
    const body = options.body === undefined ? undefined : Buffer.from(JSON.stringify(options.body));
    const headers = this.headers(body ? { "content-type": options.contentType ?? "application/json", "content-length": String(body.length) } : {});
    const response = await this.send(method, path, headers, this.agent, options.timeoutMs ?? DEFAULT_TIMEOUT_MS, body);
    const text = await readAll(response, MAX_RESPONSE_BYTES, `${method} ${path}`);
    if (response.statusCode! >= 300) throw apiError(response.statusCode!, text, `${method} ${path}`);
    try {
      return JSON.parse(text) as T;
    } catch {
      throw new Error(`${method} ${path}: the API server's answer is not JSON: ${text.slice(0, 200)}`);
    }
  }

  /**
   * Watches `path` from `resourceVersion` until the server ends the stream (resolves with the
   * last resource version seen), the stream fails or goes idle (rejects), the version is too old
   * (rejects with WatchExpired), or `signal` aborts (resolves).
   */
  async watch<T extends { metadata?: { resourceVersion?: string } }>(path: string, options: WatchOptions<T>): Promise<string> {
    const query = new URLSearchParams({ watch: "1", resourceVersion: options.resourceVersion, allowWatchBookmarks: "true", timeoutSeconds: String(options.timeoutSeconds) });
    const target = `${path}${path.includes("?") ? "&" : "?"}${query}`;
    // Its own connection, ended with the watch: a watch never goes back to the pool.
    const agent = new (this.secure ? HttpsAgent : HttpAgent)({ keepAlive: false, ...this.tls() });
    const abort = new AbortController();
    const onAbort = () => abort.abort();
    options.signal?.addEventListener("abort", onAbort);
    const handle = { destroy: () => abort.abort() };
    this.watches.add(handle);
    let resourceVersion = options.resourceVersion;
    try {
      const response = await this.send("GET", target, this.headers({}), agent, (options.timeoutSeconds + 30) * 1000, undefined, abort.signal);
      if (response.statusCode! >= 300) {
        const text = await readAll(response, MAX_RESPONSE_BYTES, `watch ${path}`);
        const error = apiError(response.statusCode!, text, `watch ${path}`);
        if (error.status === 410) throw new WatchExpired(error.message);
        throw error;
      }
      await new Promise<void>((resolve, reject) => {
        let pending = "";
        let idle: NodeJS.Timeout | undefined;
        const arm = () => {
          clearTimeout(idle);
          idle = setTimeout(() => {
            // The path to the server may be dead for the pooled connections too: they go as well.
            this.agent.destroy();
            fail(new Error(`watch ${path}: nothing heard for ${options.idleTimeoutMs / 1000} s; the connection counts as dead`));
          }, options.idleTimeoutMs);
        };
        const fail = (error: Error) => {
          clearTimeout(idle);
          response.destroy();
          reject(error);
        };
        arm();
        abort.signal.addEventListener("abort", () => {
          clearTimeout(idle);
          response.destroy();
          resolve();
        });
        response.setEncoding("utf8");
        response.on("data", (chunk: string) => {
          arm();
          pending += chunk;
          let newline: number;
          while ((newline = pending.indexOf("\n")) >= 0) {
            const line = pending.slice(0, newline);
            pending = pending.slice(newline + 1);
            if (!line.trim()) continue;
            let event: { type?: string; object?: unknown };
            try {
              event = JSON.parse(line) as typeof event;
            } catch {
              return fail(new Error(`watch ${path}: an event is not JSON: ${line.slice(0, 200)}`));
            }
            if (event.type === "ERROR") {
              const status = event.object as { code?: number; reason?: string; message?: string } | undefined;
              const message = `watch ${path}: ${status?.message ?? "error"}`;
              return fail(status?.code === 410 ? new WatchExpired(message) : new KubeApiError(status?.code ?? 500, status?.reason ?? "", message));
            }
            if (!["ADDED", "MODIFIED", "DELETED", "BOOKMARK"].includes(event.type ?? "") || typeof event.object !== "object" || event.object === null) {
              return fail(new Error(`watch ${path}: an event is not one of Kubernetes': ${line.slice(0, 200)}`));
            }
            const object = event.object as T;
            resourceVersion = object.metadata?.resourceVersion ?? resourceVersion;
            try {
              options.onEvent({ type: event.type as WatchEvent<T>["type"], object });
            } catch (error) {
              return fail(error as Error);
            }
          }
          if (pending.length > MAX_EVENT_BYTES) fail(new Error(`watch ${path}: an event is larger than ${MAX_EVENT_BYTES} bytes`));
        });
        response.once("end", () => {
          clearTimeout(idle);
          resolve();
        });
        response.once("error", (error) => {
          clearTimeout(idle);
          if (abort.signal.aborted) resolve();
          else reject(new Error(`watch ${path}: ${error.message}`));
        });
        response.once("close", () => {
          clearTimeout(idle);
          if (abort.signal.aborted) resolve();
          else if (!response.complete) reject(new Error(`watch ${path}: the connection closed`));
        });
      });
      return resourceVersion;
    } catch (error) {
      if (abort.signal.aborted && !(error instanceof KubeApiError || error instanceof WatchExpired)) return resourceVersion;
      throw error;
    } finally {
      options.signal?.removeEventListener("abort", onAbort);
      this.watches.delete(handle);
      agent.destroy();
    }
  }

  /** Ends every watch and closes every pooled connection. */
  close(): void {
    for (const watch of [...this.watches]) watch.destroy();
    this.agent.destroy();
  }

  private send(method: string, path: string, headers: Record<string, string>, agent: HttpAgent, timeoutMs: number, body?: Buffer, signal?: AbortSignal): Promise<IncomingMessage> {
    const url = new URL(this.connection.server + path);
    return new Promise((resolve, reject) => {
      const request = (this.secure ? httpsRequest : httpRequest)(url, { method, headers, agent, signal, timeout: timeoutMs }, resolve);
      request.once("timeout", () => request.destroy(new Error(`${method} ${path}: no answer from ${this.connection.server} in ${timeoutMs / 1000} s`)));
      request.once("error", (error) => reject(new Error(`${method} ${path} to ${this.connection.server}: ${error.message}`)));
      request.end(body);
    });
  }
}

function readAll(response: IncomingMessage, limit: number, what: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    response.on("data", (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) {
        response.destroy();
        reject(new Error(`${what}: the answer is larger than ${limit} bytes`));
        return;
      }
      chunks.push(chunk);
    });
    response.once("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
    response.once("error", (error) => reject(new Error(`${what}: ${error.message}`)));
  });
}

function apiError(status: number, text: string, what: string): KubeApiError {
  let reason = "";
  let message = text.slice(0, 500);
  try {
    const parsed = JSON.parse(text) as { reason?: string; message?: string };
    reason = parsed.reason ?? "";
    message = parsed.message ?? message;
  } catch {
    // not a Status object: the text is the message
  }
  return new KubeApiError(status, reason, `${what}: ${status}${reason ? ` ${reason}` : ""}: ${message}`);
}
