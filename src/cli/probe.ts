/** `trellis probe`: the lab's traffic probes (see lab/probe.ts); run inside namespaces. */
import type { Command } from "commander";
import { probeSourceSeen, serveSourceEcho } from "../lab/probe.js";

export function registerProbeCommands(program: Command): void {
  const probe = program.command("probe").description("traffic probes used by the demo and the lab");
  probe
    .command("serve <port>")
    .description("answer every TCP connection with the source address it came from")
    .action((port: string) => serveSourceEcho(parsePort(port)));
  probe
    .command("connect <address> <port>")
    .description("connect over TCP and print the source address the server saw")
    .action(async (address: string, port: string) => {
      process.stdout.write((await probeSourceSeen(address, parsePort(port))) + "\n");
    });
}

function parsePort(text: string): number {
  const port = Number(text);
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw new Error(`port ${JSON.stringify(text)} is invalid: expected a whole number from 1 to 65535`);
  return port;
}
