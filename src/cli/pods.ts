/** `trellis pods`: what the CNI plugin's node-local state holds (attachments and their addresses). */
import type { Command } from "commander";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { listAttachments } from "../podipam/attachments.js";
import { DEFAULT_STATE_DIR, openPodState } from "../podipam/state.js";
import { listLeases } from "../podipam/pod-ips.js";
import { renderTable } from "./table.js";

export interface PodRecord {
  containerId: string;
  ifname: string;
  /** `ready`, `adding` (an ADD running or killed half-way), or `orphan` (leases without a record). */
  state: string;
  hostIfname: string;
  netns: string;
  addresses: string[];
}

export function registerPodCommands(program: Command): void {
  program
    .command("pods")
    .description("list the pods the CNI plugin has attached on this node, with their addresses")
    .requiredOption("--network <name>", "the network name from the CNI config")
    .option("--data-dir <dir>", "the ipam dataDir of the network", DEFAULT_STATE_DIR)
    .option("--json", "print JSON")
    .action((options: { network: string; dataDir: string; json?: boolean }) => {
      const pods = readPods(options.dataDir, options.network);
      if (options.json) {
        process.stdout.write(JSON.stringify(pods, null, 2) + "\n");
        return;
      }
      process.stdout.write(
        renderTable([["CONTAINER", "IFNAME", "STATE", "HOST VETH", "ADDRESSES"], ...pods.map((pod) => [pod.containerId, pod.ifname, pod.state, pod.hostIfname, pod.addresses.join(",")])]),
      );
    });
}

/** Attachments with their leases; a lease without an attachment is listed with an empty host veth. */
export function readPods(dataDir: string, network: string): PodRecord[] {
  if (!existsSync(join(dataDir, "state.db"))) return [];
  const db = openPodState(dataDir, "--data-dir");
  try {
    const pods = new Map<string, PodRecord>();
    for (const attachment of listAttachments(db, network)) {
      pods.set(`${attachment.containerId}\0${attachment.ifname}`, {
        containerId: attachment.containerId,
        ifname: attachment.ifname,
        state: attachment.state,
        hostIfname: attachment.hostIfname,
        netns: attachment.netns,
        addresses: [],
      });
    }
    for (const lease of listLeases(db, network)) {
      const key = `${lease.containerId}\0${lease.ifname}`;
      if (!pods.has(key)) pods.set(key, { containerId: lease.containerId, ifname: lease.ifname, state: "orphan", hostIfname: "", netns: "", addresses: [] });
      pods.get(key)!.addresses.push(lease.address);
    }
    return [...pods.values()];
  } finally {
    db.close();
  }
}
