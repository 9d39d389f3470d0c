/**
 * Traffic probes the lab runs inside namespaces, as subcommands of the trellis executable
 * itself: a TCP server that answers each connection with the source address it saw, and a
 * client that prints that answer. A receiver seeing the sender's own pod IP proves no NAT.
 */
import { createServer, connect } from "node:net";
import * as sea from "node:sea";

/** argv that runs this executable again, whether it is the built binary or `node dist/trellis.cjs`. */
export function selfInvocation(): string[] {
  return sea.isSea() ? [process.execPath] : [process.execPath, process.argv[1]];
}

/** Serves until killed; prints "ready" once listening on every address of both families. */
export function serveSourceEcho(port: number): Promise<never> {
  return new Promise((_, reject) => {
    const server = createServer((socket) => socket.end((socket.remoteAddress ?? "").replace(/^::ffff:/, "")));
    server.on("error", reject);
    server.listen(port, "::", () => process.stdout.write("ready\n"));
  });
}

/** Connects and resolves with the source address the server reported. */
export function probeSourceSeen(address: string, port: number, timeoutMs = 3000): Promise<string> {
  return new Promise((resolve, reject) => {
    let answer = "";
    const socket = connect({ host: address, port, timeout: timeoutMs });
    socket.on("data", (chunk) => (answer += chunk.toString()));
    socket.on("end", () => resolve(answer.trim()));
    socket.on("timeout", () => {
      socket.destroy();
      reject(new Error(`no answer from ${address} port ${port} within ${timeoutMs} ms`));
    });
    socket.on("error", (error) => reject(new Error(`cannot reach ${address} port ${port}: ${error.message}`)));
  });
}
