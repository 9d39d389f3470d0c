/**
 * Keeps the hostPort table equal to the port mappings the recorded attachments hold, as
 * podnet/masquerade.ts does for masquerade: rewritten whole under the node lock, after the
 * caller's own change to the state committed, so whichever sync runs last leaves the kernel
 * matching the last state. Only ADD, DEL and GC of pods with mappings (and GC) call it.
 */
import { desiredHostPorts, hostPortConflict, hostPortOps, type HostPortContribution, type HostPortMapping, type HostPortProtocol } from "../dataplane/hostports.js";
import { CommandError } from "../linux/exec.js";
import { NftWriteError } from "../linux/nft-netlink.js";
import { formatIp, tryParseIp } from "../net/ip.js";
import { listAllAttachments, type Attachment, type AttachmentSpecRecord } from "../podipam/attachments.js";
import type { SqliteDatabase } from "../store/sqlite.js";
import { CniCode, CniError } from "./errors.js";
import { withNodeLock, writeNft, type PodNet } from "./handle.js";
import { recordedAddresses } from "./records.js";

/** The table of a state directory: beside its masquerade table (`trellis-cni` → `trellis-hostports`). */
export function hostPortTable(net: PodNet): string {
  return net.masqueradeTable.replace(/^trellis-cni/, "trellis-hostports");
}

export function recordPortMappings(mappings: readonly HostPortMapping[] | undefined): AttachmentSpecRecord["portMappings"] {
  if (!mappings?.length) return undefined;
  return mappings.map((mapping) => ({ ...mapping, hostIP: mapping.hostIP ? formatIp(mapping.hostIP) : undefined }));
}

/** Refuses mappings another recorded attachment holds (called inside the reservation's transaction). */
export function refuseHostPortConflict(db: SqliteDatabase, mappings: readonly HostPortMapping[] | undefined, except: (attachment: Attachment) => boolean): void {
  if (!mappings?.length) return;
  const others = listAllAttachments(db).filter((attachment) => !except(attachment)).flatMap(contribution);
  const conflict = hostPortConflict(others, mappings);
  if (conflict) throw new CniError(CniCode.invalidConfig, conflict);
}

export async function syncHostPorts(net: PodNet, context: string): Promise<void> {
  const table = hostPortTable(net);
  try {
    await withNodeLock(net, async () => {
      await writeNft(net, hostPortOps(table, listAllAttachments(net.db).flatMap(contribution)));
    });
  } catch (error) {
    if (error instanceof CommandError || error instanceof NftWriteError) throw new CniError(CniCode.dataplaneFailure, `${context}: updating nftables table inet ${table} failed: ${error.message}`);
    throw error;
  }
}

/** A resync's repair: the table written again when mappings need it and the namespace has none; whether it was. */
export async function repairHostPorts(net: PodNet, tables: ReadonlySet<string>): Promise<boolean> {
  const table = hostPortTable(net);
  return withNodeLock(net, async () => {
    const contributions = listAllAttachments(net.db).flatMap(contribution);
    if (!desiredHostPorts(table, contributions) || tables.has(`inet ${table}`)) return false;
    await writeNft(net, hostPortOps(table, contributions));
    return true;
  });
}

function contribution(attachment: Attachment): HostPortContribution[] {
  const mappings = (attachment.spec.portMappings ?? []).flatMap((mapping): HostPortMapping[] => {
    const hostIP = mapping.hostIP ? tryParseIp(mapping.hostIP) : undefined;
    if (mapping.hostIP && !hostIP) return [];
    return [{ hostPort: mapping.hostPort, containerPort: mapping.containerPort, protocol: mapping.protocol as HostPortProtocol, ...(hostIP ? { hostIP } : {}) }];
  });
  if (!mappings.length) return [];
  const addresses = recordedAddresses(attachment);
  return [{
    owner: `container ${attachment.containerId} interface ${attachment.ifname} in network ${attachment.network}`,
    mappings,
    addresses: addresses.map((address) => address.address),
    subnets: addresses.map((address) => address.subnet),
  }];
}
