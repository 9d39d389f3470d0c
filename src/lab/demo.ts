/**
 * The demo: a throw-away node namespace and three pod namespaces, pods attached by running
 * this executable as their CNI plugin (as a runtime would), then ICMP and TCP between every
 * pair on both families, showing the source address each receiver sees. Everything is
 * removed at the end, also on failure or Ctrl-C.
 */
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { run } from "../linux/exec.js";
import { selfInvocation } from "./probe.js";

export interface DemoOptions {
  readonly pods: number;
  readonly out: (line: string) => void;
}

interface DemoPod {
  readonly name: string;
  readonly netns: string;
  addresses: string[];
}

const ECHO_PORT = 7777;

export async function runDemo(options: DemoOptions): Promise<boolean> {
  const { out } = options;
  const tag = `trdemo${process.pid}`;
  const node = { name: `${tag}-node`, netns: `/var/run/netns/${tag}-node` };
  const pods: DemoPod[] = Array.from({ length: options.pods }, (_, i) => ({ name: `${tag}-pod${i}`, netns: `/var/run/netns/${tag}-pod${i}`, addresses: [] }));
  const stateDir = mkdtempSync(join(tmpdir(), "trellis-demo-"));
  const config = {
    cniVersion: "1.1.0",
    name: "demo",
    type: "trellis",
    bridge: "trellis0",
    ipMasq: true,
    ipam: { ranges: [[{ subnet: "10.244.1.0/24" }], [{ subnet: "fd00:10:244:1::/64" }]], dataDir: stateDir },
  };
  const servers: Array<ReturnType<typeof spawn>> = [];
  const namespaces = [node, ...pods];
  const cleanup = async () => {
    for (const server of servers) server.kill("SIGKILL");
    for (const ns of namespaces) await run("ip", ["netns", "del", ns.name]).catch(() => undefined);
    rmSync(stateDir, { recursive: true, force: true });
  };
  const interrupted = () => void cleanup().then(() => process.exit(130));
  process.once("SIGINT", interrupted);
  process.once("SIGTERM", interrupted);
  try {
    for (const ns of namespaces) {
      await run("ip", ["netns", "add", ns.name]);
      await run("ip", ["-n", ns.name, "link", "set", "lo", "up"]);
    }
    out(`node namespace ${node.name}; pods attached with CNI ADD on bridge trellis0 (10.244.1.0/24, fd00:10:244:1::/64)`);
    for (const [i, pod] of pods.entries()) {
      const started = process.hrtime.bigint();
      const result = JSON.parse(await cni("ADD", node.netns, config, `demo-${i}`, pod.netns)) as { ips: Array<{ address: string }>; interfaces: Array<{ name: string }> };
      pod.addresses = result.ips.map((ip) => ip.address.split("/")[0]);
      const ms = Number(process.hrtime.bigint() - started) / 1e6;
      out(`  ${pod.name}: eth0 ${result.ips.map((ip) => ip.address).join("  ")}  (host veth ${result.interfaces[1].name}, ADD ${ms.toFixed(0)} ms)`);
    }
    for (const pod of pods) servers.push(await startEcho(pod.netns));
    out("traffic between pods (ICMP echo, then TCP; the receiver reports the source address it saw):");
    let failures = 0;
    for (const from of pods) {
      for (const to of pods) {
        if (from === to) continue;
        for (const [family, address] of to.addresses.entries()) {
          const icmp = await run("ping", ["-c", "1", "-W", "2", address], { netns: from.netns }).then(() => "ok", () => "FAILED");
          const seen = await tcpSourceSeen(from.netns, address).catch((error: Error) => `FAILED (${error.message})`);
          const own = from.addresses[family];
          const verdict = icmp === "ok" && seen === own ? "no NAT" : "UNEXPECTED";
          if (verdict !== "no NAT") failures++;
          out(`  ${from.name} -> ${address.padEnd(20)} ping ${icmp}, tcp source seen ${seen}  ${verdict}`);
        }
      }
    }
    const localhost = await tcpSourceSeen(pods[0].netns, "127.0.0.1").catch(() => "FAILED");
    out(`inside ${pods[0].name}, two processes over localhost: source seen ${localhost}`);
    if (localhost !== "127.0.0.1") failures++;
    for (const [i, pod] of pods.entries()) await cni("DEL", node.netns, config, `demo-${i}`, pod.netns);
    out(`pods detached with CNI DEL; ${failures === 0 ? "all checks passed" : `${failures} check(s) failed`}`);
    return failures === 0;
  } finally {
    process.off("SIGINT", interrupted);
    process.off("SIGTERM", interrupted);
    await cleanup();
    out("namespaces removed");
  }
}

/** Runs this executable as the CNI plugin inside the node namespace. */
async function cni(command: string, nodeNetns: string, config: object, containerId: string, netns: string): Promise<string> {
  const env = [`CNI_COMMAND=${command}`, `CNI_CONTAINERID=${containerId}`, `CNI_NETNS=${netns}`, "CNI_IFNAME=eth0", "CNI_PATH=/opt/cni/bin"];
  const { stdout } = await run("env", [...env, ...selfInvocation()], { netns: nodeNetns, input: JSON.stringify(config) });
  return stdout;
}

function startEcho(netns: string): Promise<ReturnType<typeof spawn>> {
  const child = spawn("nsenter", [`--net=${netns}`, ...selfInvocation(), "probe", "serve", String(ECHO_PORT)], { stdio: ["ignore", "pipe", "inherit"] });
  return new Promise((resolve, reject) => {
    child.once("error", reject);
    child.once("exit", (code) => reject(new Error(`probe server in ${netns} exited ${code}`)));
    child.stdout!.once("data", () => resolve(child));
  });
}

async function tcpSourceSeen(netns: string, address: string): Promise<string> {
  const [command, ...args] = selfInvocation();
  const { stdout } = await run(command, [...args, "probe", "connect", address, String(ECHO_PORT)], { netns });
  return stdout.trim();
}
