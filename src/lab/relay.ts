/**
 * A byte relay between two socket addresses (`tcp:HOST:PORT` or `unix:PATH`), for `lab up
 * --kubernetes`: the API server listens inside the lab's control namespace, where the machine's
 * kubectl cannot reach, so one relay in the control namespace listens on a unix socket in the
 * lab's directory and one in the machine's namespace listens on 127.0.0.1 and dials that socket.
 * Nothing is parsed: TLS runs end to end between kubectl and the API server.
 */
import { chmodSync, rmSync } from "node:fs";
import { connect, createServer, type AddressInfo, type Server } from "node:net";
import { formatHostPort } from "../net/ip.js";

export type RelayAddress = { readonly kind: "tcp"; readonly host: string; readonly port: number } | { readonly kind: "unix"; readonly path: string };

/**
 * `tcp:127.0.0.1:6443`, `tcp:[fd00::2]:6443` or `unix:/run/x.sock`; port 0 (any free port) only
 * to listen on. Throws naming the text and what is allowed.
 */
export function parseRelayAddress(text: string, role: "listen" | "target"): RelayAddress {
  if (text.startsWith("unix:/") && !/[\0\n]/.test(text)) return { kind: "unix", path: text.slice(5) };
  const match = /^tcp:(?:\[([0-9a-fA-F:.]+)\]|([0-9.]+)):([0-9]{1,5})$/.exec(text);
  const port = Number(match?.[3]);
  if (!match || port < (role === "listen" ? 0 : 1) || port > 65535) throw new Error(`relay address ${JSON.stringify(text)} is not tcp:HOST:PORT (an IP, IPv6 in brackets${role === "listen" ? ", port 0 for any" : ""}) or unix:/PATH`);
  return { kind: "tcp", host: match[1] ?? match[2], port };
}

/** Listens on `listen` and joins every connection to a new one to `target`; resolves once listening, with the address it listens on. */
export async function startRelay(listen: RelayAddress, target: RelayAddress): Promise<{ server: Server; address: string }> {
  const server = createServer((client) => {
    const upstream = target.kind === "tcp" ? connect(target.port, target.host) : connect(target.path);
    client.pipe(upstream);
    upstream.pipe(client);
    const end = () => {
      client.destroy();
      upstream.destroy();
    };
    client.on("error", end).on("close", end);
    upstream.on("error", end).on("close", end);
  });
  if (listen.kind === "unix") rmSync(listen.path, { force: true });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    if (listen.kind === "unix") server.listen(listen.path, resolve);
    else server.listen(listen.port, listen.host, resolve);
  });
  // The socket leads to the API server: only root may use it (TLS still decides who is who).
  if (listen.kind === "unix") {
    chmodSync(listen.path, 0o600);
    return { server, address: `unix:${listen.path}` };
  }
  const bound = server.address() as AddressInfo;
  return { server, address: formatHostPort(bound.address, bound.port) };
}
