/**
 * Where the Kubernetes API is and who Trellis is to it: read from a kubeconfig file (its current
 * context, or one named) or, inside a pod, from the ServiceAccount files Kubernetes mounts. Only
 * what a network plugin needs is read: the server, its CA, and a client certificate or a bearer
 * token. A token file is read again at each request, since Kubernetes rotates projected tokens.
 */
import { readFileSync } from "node:fs";
import { dirname, isAbsolute, resolve } from "node:path";
import { parse as parseYaml } from "yaml";

export interface KubeConnection {
  /** `https://HOST:PORT` (or http for a test server), without a trailing slash. */
  readonly server: string;
  readonly ca?: Buffer;
  readonly cert?: Buffer;
  readonly key?: Buffer;
  /** The bearer token for the next request. */
  readonly token?: () => string;
  readonly insecureSkipTlsVerify?: boolean;
  /** Where this came from, for messages: `kubeconfig /path (context NAME)` or `in-cluster`. */
  readonly source: string;
}

export class KubeConfigError extends Error {}

/** The default place of a pod's ServiceAccount files. */
export const SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount";

/** The connection a kubeconfig file describes; every problem is named with the file and field. */
export function loadKubeconfig(path: string, contextName?: string): KubeConnection {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (error) {
    throw new KubeConfigError(`cannot read kubeconfig ${path}: ${(error as Error).message}`);
  }
  let doc: unknown;
  try {
    doc = parseYaml(text);
  } catch (error) {
    throw new KubeConfigError(`kubeconfig ${path} is not YAML: ${(error as Error).message}`);
  }
  const where = (field: string) => `kubeconfig ${path}: ${field}`;
  if (!isObject(doc)) throw new KubeConfigError(`${where("the document")} is not a mapping`);
  const name = contextName ?? doc["current-context"];
  if (typeof name !== "string" || !name) throw new KubeConfigError(`${where("current-context")} is not set and no context was named`);
  const context = named(doc.contexts, name, "context", where("contexts"));
  const clusterName = context.cluster;
  if (typeof clusterName !== "string") throw new KubeConfigError(`${where(`context ${JSON.stringify(name)}`)} names no cluster`);
  const cluster = named(doc.clusters, clusterName, "cluster", where("clusters"));
  const userName = context.user;
  const user = typeof userName === "string" && userName ? named(doc.users, userName, "user", where("users")) : {};
  const base = dirname(resolve(path));
  const file = (field: string, value: unknown): Buffer | undefined => {
    if (value === undefined) return undefined;
    if (typeof value !== "string" || !value) throw new KubeConfigError(`${where(field)} is not a file name`);
    const full = isAbsolute(value) ? value : resolve(base, value);
    try {
      return readFileSync(full);
    } catch (error) {
      throw new KubeConfigError(`${where(field)}: cannot read ${full}: ${(error as Error).message}`);
    }
  };
  const data = (field: string, value: unknown): Buffer | undefined => {
    if (value === undefined) return undefined;
    if (typeof value !== "string" || !/^[A-Za-z0-9+/=\s]*$/.test(value)) throw new KubeConfigError(`${where(field)} is not base64`);
    return Buffer.from(value, "base64");
  };
  const server = cluster.server;
  if (typeof server !== "string") throw new KubeConfigError(`${where(`cluster ${JSON.stringify(clusterName)}.server`)} is not set`);
  const token = userToken(user, base, where);
  return {
    server: checkServer(server, where(`cluster ${JSON.stringify(clusterName)}.server`)),
    ca: data("certificate-authority-data", cluster["certificate-authority-data"]) ?? file("certificate-authority", cluster["certificate-authority"]),
    cert: data("client-certificate-data", user["client-certificate-data"]) ?? file("client-certificate", user["client-certificate"]),
    key: data("client-key-data", user["client-key-data"]) ?? file("client-key", user["client-key"]),
    ...(token ? { token } : {}),
    insecureSkipTlsVerify: cluster["insecure-skip-tls-verify"] === true,
    source: `kubeconfig ${path} (context ${name})`,
  };
}

/** The connection of a pod's ServiceAccount: KUBERNETES_SERVICE_HOST/PORT and the mounted token and CA. */
export function inClusterConnection(env: NodeJS.ProcessEnv = process.env, dir = SERVICE_ACCOUNT_DIR): KubeConnection {
  const host = env.KUBERNETES_SERVICE_HOST;
  const port = env.KUBERNETES_SERVICE_PORT;
  if (!host || !port) throw new KubeConfigError("not inside a pod: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set (give a kubeconfig)");
  const tokenPath = `${dir}/token`;
  let ca: Buffer;
  try {
    ca = readFileSync(`${dir}/ca.crt`);
    readFileSync(tokenPath);
  } catch (error) {
    throw new KubeConfigError(`cannot read the pod's ServiceAccount files in ${dir}: ${(error as Error).message}`);
  }
  const hostPart = host.includes(":") ? `[${host}]` : host;
  return {
    server: checkServer(`https://${hostPart}:${port}`, "KUBERNETES_SERVICE_HOST/PORT"),
    ca,
    token: () => readFileSync(tokenPath, "utf8").trim(),
    source: "in-cluster",
  };
}

function userToken(user: Record<string, unknown>, base: string, where: (field: string) => string): (() => string) | undefined {
  if (typeof user.token === "string" && user.token) {
    const token = user.token;
    return () => token;
  }
  if (user.tokenFile === undefined) return undefined;
  if (typeof user.tokenFile !== "string" || !user.tokenFile) throw new KubeConfigError(`${where("tokenFile")} is not a file name`);
  const full = isAbsolute(user.tokenFile) ? user.tokenFile : resolve(base, user.tokenFile);
  try {
    readFileSync(full);
  } catch (error) {
    throw new KubeConfigError(`${where("tokenFile")}: cannot read ${full}: ${(error as Error).message}`);
  }
  return () => readFileSync(full, "utf8").trim();
}

function checkServer(server: string, where: string): string {
  let url: URL;
  try {
    url = new URL(server);
  } catch {
    throw new KubeConfigError(`${where}: ${JSON.stringify(server)} is not a URL`);
  }
  if (url.protocol !== "https:" && url.protocol !== "http:") throw new KubeConfigError(`${where}: ${JSON.stringify(server)} is not an http(s) URL`);
  if (url.search || url.hash || url.username || url.password) throw new KubeConfigError(`${where}: ${JSON.stringify(server)} carries a query, fragment or credentials`);
  return `${url.protocol}//${url.host}${url.pathname.replace(/\/+$/, "")}`;
}

function named(list: unknown, name: string, what: string, where: string): Record<string, unknown> {
  const entries = Array.isArray(list) ? list : [];
  const entry = entries.find((item): item is Record<string, unknown> => isObject(item) && item.name === name);
  if (!entry) throw new KubeConfigError(`${where} has no ${what} named ${JSON.stringify(name)}`);
  const body = entry[what];
  if (!isObject(body)) throw new KubeConfigError(`${where}: ${what} ${JSON.stringify(name)} has no ${what} mapping`);
  return body;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}
