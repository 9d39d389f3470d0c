/** The node's CNI network configuration, written where the container runtime reads it. */
import { closeSync, fsyncSync, mkdirSync, openSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { formatPrefix, type IpPrefix } from "../net/ip.js";

export const CONFLIST_NAME = "10-trellis.conflist";
export const NETWORK_NAME = "trellis";
export const BRIDGE_NAME = "trellis0";

export interface NodeConflist {
  readonly podCidrs: readonly IpPrefix[];
  readonly mtu: number;
  readonly dataDir: string;
  /** The agent's CNI socket, which the native plugin forwards calls to. */
  readonly agentSocket: string;
}

/** The conflist as text: type trellis, the node's pod CIDRs as one range set per family, the pod MTU. */
export function renderConflist(conf: NodeConflist): string {
  const list = {
    cniVersion: "1.0.0",
    cniVersions: ["1.0.0", "1.1.0"],
    name: NETWORK_NAME,
    plugins: [
      {
        type: "trellis",
        agentSocket: conf.agentSocket,
        bridge: BRIDGE_NAME,
        mtu: conf.mtu,
        // A pod reaching itself through a Service it backs comes back through its own port.
        hairpinMode: true,
        // The runtime then passes a pod's hostPorts as runtimeConfig.portMappings.
        capabilities: { portMappings: true },
        ipam: { ranges: conf.podCidrs.map((cidr) => [{ subnet: formatPrefix(cidr) }]), dataDir: conf.dataDir },
      },
    ],
  };
  return `${JSON.stringify(list, null, 2)}\n`;
}

/**
 * Writes the conflist atomically (a runtime never reads half a file); unchanged content is not
 * rewritten. Returns whether it wrote.
 */
export function writeConflist(dir: string, text: string): boolean {
  const path = join(dir, CONFLIST_NAME);
  try {
    if (readFileSync(path, "utf8") === text) return false;
  } catch {
    // not there yet
  }
  mkdirSync(dir, { recursive: true, mode: 0o755 });
  const temporary = join(dir, `.${CONFLIST_NAME}.${process.pid}.tmp`);
  const fd = openSync(temporary, "w", 0o644);
  try {
    writeFileSync(fd, text);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(temporary, path);
  return true;
}
