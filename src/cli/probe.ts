/** `trellis probe`: the lab's traffic probes (see lab/probe.ts); run inside namespaces. */
import type { Command } from "commander";
import { hostname } from "node:os";
import { MAX_PROBE_REPEAT, probeTcp, probeUdp, runProbes, serveProbes, type ProbeRequest } from "../lab/probe.js";

export function registerProbeCommands(program: Command): void {
  const probe = program.command("probe").description("traffic probes the lab runs in its namespaces");
  probe
    .command("serve <ports>")
    .description("answer every TCP connection and UDP datagram on each of PORTS (PORT[,PORT…]) with the source address it came from and this server's name")
    .option("--name <name>", "the name the server answers with", hostname())
    .action((ports: string, options: { name: string }) => {
      const list = [...new Set(ports.split(",").map((port) => parseWholeNumber("port", port, 1, 65535)))];
      if (list.length > 64) throw new Error(`probe serve: ${list.length} ports given; at most 64`);
      return serveProbes(list, options.name);
    });
  probe
    .command("connect <address> <port>")
    .description("send to a probe server over TCP (or UDP) and print the source address it saw")
    .option("--udp", "one UDP datagram instead of a TCP connection")
    .option("--bytes <n>", "TCP: bytes to send; UDP: the datagram's size", "0")
    .option("--timeout <ms>", "give up after this many milliseconds", "3000")
    .option("--json", "print the answer as JSON: {source, server, bytes, ms}")
    .action(async (address: string, port: string, options: { udp?: boolean; bytes: string; timeout: string; json?: boolean }) => {
      const request = { bytes: parseWholeNumber("--bytes", options.bytes, 0, 1 << 30), timeoutMs: parseWholeNumber("--timeout", options.timeout, 1, 600_000) };
      const answer = await (options.udp ? probeUdp : probeTcp)(address, parseWholeNumber("port", port, 1, 65535), request);
      process.stdout.write(options.json ? `${JSON.stringify(answer)}\n` : `${answer.server} saw source ${answer.source} (received ${answer.bytes} bytes in ${answer.ms} ms)\n`);
    });
  probe
    .command("batch")
    .description("run the probes given on stdin as a JSON list of {kind: icmp|tcp|udp, address, port?, bytes?, timeoutMs?}; print their outcomes as a JSON list")
    .option("--concurrency <n>", "probes at a time", "32")
    .action(async (options: { concurrency: string }) => {
      const requests = parseRequests(await readStdin());
      const outcomes = await runProbes(requests, parseWholeNumber("--concurrency", options.concurrency, 1, 1000));
      process.stdout.write(`${JSON.stringify(outcomes)}\n`);
    });
}

function parseWholeNumber(what: string, text: string, min: number, max: number): number {
  const value = Number(text);
  if (!/^[0-9]+$/.test(text) || value < min || value > max) throw new Error(`${what} ${JSON.stringify(text)} is invalid: expected a whole number from ${min} to ${max}`);
  return value;
}

function parseRequests(text: string): ProbeRequest[] {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    throw new Error(`probe batch: stdin is not JSON: ${(error as Error).message}`);
  }
  if (!Array.isArray(parsed)) throw new Error("probe batch: stdin must be a JSON list of probes");
  return parsed.map((request: Partial<ProbeRequest>, index) => {
    if (!request || !["icmp", "tcp", "udp"].includes(request.kind ?? "") || typeof request.address !== "string") {
      throw new Error(`probe batch: probe ${index} needs "kind" (icmp, tcp or udp) and "address"`);
    }
    if (request.repeat !== undefined && (!Number.isInteger(request.repeat) || request.repeat < 1 || request.repeat > MAX_PROBE_REPEAT)) {
      throw new Error(`probe batch: probe ${index} has repeat ${JSON.stringify(request.repeat)}: expected a whole number from 1 to ${MAX_PROBE_REPEAT}`);
    }
    return request as ProbeRequest;
  });
}

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString("utf8");
}
