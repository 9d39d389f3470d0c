/**
 * Chooses a backend from a store spec: `sqlite:PATH` (one host, the default) or
 * `etcd://HOST:PORT` (many hosts). The etcd client is imported only when asked for, so the
 * SQLite path never loads gRPC.
 */
import { existsSync } from "node:fs";
import { isIP } from "node:net";
import { resolve } from "node:path";
import type { EtcdEndpoint, EtcdStoreOptions } from "./etcd-kv.js";
import type { KvStore } from "./kv.js";
import { openSqliteStore, type SqliteStoreOptions } from "./sqlite-kv.js";

export const DEFAULT_STORE_SPEC = "sqlite:/var/lib/trellis/cluster.db";

export type StoreSpec =
  | { readonly kind: "sqlite"; readonly path: string }
  | { readonly kind: "etcd"; readonly endpoint: EtcdEndpoint };

const ALLOWED_FORMS = "expected sqlite:PATH (such as sqlite:/var/lib/trellis/cluster.db) or etcd://HOST:PORT (such as etcd://127.0.0.1:2379)";

export function parseStoreSpec(text: string): StoreSpec {
  const invalid = (why: string): Error => new Error(`invalid store ${JSON.stringify(text)}: ${why}; ${ALLOWED_FORMS}`);
  if (typeof text !== "string" || text.length === 0) throw invalid("it is empty");
  if (text.startsWith("sqlite:")) {
    const path = text.slice("sqlite:".length);
    if (path.length === 0) throw invalid("the path is missing");
    if (path.startsWith("//")) throw invalid("write sqlite:PATH with the path right after the colon, not a URL");
    if (path.endsWith("/")) throw invalid("the path names a directory; give a file such as cluster.db inside it");
    return { kind: "sqlite", path };
  }
  if (text.startsWith("etcd://")) {
    const match = /^etcd:\/\/(\[[^\]]+\]|[^:/[\]]+):([0-9]+)$/.exec(text);
    if (!match) throw invalid("etcd stores are written etcd://HOST:PORT with nothing after the port");
    const host = match[1].startsWith("[") ? match[1].slice(1, -1) : match[1];
    if (match[1].startsWith("[") && isIP(host) !== 6) throw invalid(`${match[1]} is not a bracketed IPv6 address`);
    if (!match[1].startsWith("[") && isIP(host) === 0 && !/^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$/.test(host)) {
      throw invalid(`${host} is not a host name or IP address`);
    }
    const port = Number(match[2]);
    if (!/^[1-9][0-9]*$/.test(match[2]) || port > 65535) throw invalid(`port ${match[2]} is not from 1 to 65535`);
    return { kind: "etcd", endpoint: { host, port } };
  }
  throw invalid("unknown kind of store");
}

/**
 * Refuses a SQLite store that does not exist yet when there is no plan to put in it, before
 * anything is opened, so a command refused for a missing plan leaves no empty file behind.
 */
export function requireExistingStore(spec: string, havePlan: boolean): void {
  const parsed = parseStoreSpec(spec);
  if (parsed.kind === "sqlite" && !havePlan && !existsSync(resolve(parsed.path))) {
    throw new Error(`the store ${spec} does not exist yet: give a cluster plan with --plan FILE or the TRELLIS_PLAN environment variable to create it`);
  }
}

export interface OpenStoreOptions {
  readonly sqlite?: SqliteStoreOptions;
  readonly etcd?: EtcdStoreOptions;
}

/** Opens the store a spec names; errors name the spec and why. */
export async function openStore(spec: string, options: OpenStoreOptions = {}): Promise<KvStore> {
  const parsed = parseStoreSpec(spec);
  if (parsed.kind === "sqlite") return openSqliteStore(parsed.path, options.sqlite);
  const { openEtcdStore } = await import("./etcd-kv.js");
  return openEtcdStore(parsed.endpoint, options.etcd);
}
