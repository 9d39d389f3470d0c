/**
 * Keeps the masquerade table equal to what the recorded attachments ask for: an ADD adds its
 * network's chain or widens it, the last DEL of a network removes it. Every sync reads the
 * state and the kernel under the node lock, after its own change to the state committed, so
 * whichever sync runs last leaves the kernel matching the last state; the kernel is written
 * only where it differs.
 */
import {
  desiredMasquerade, masqueradeProblems, parseMasqueradeTable, renderMasqueradeChange, type MasqueradeContribution, type MasqueradeTable,
} from "../dataplane/masquerade.js";
import { CommandError } from "../linux/exec.js";
import { nftApply, nftListTable } from "../linux/nftables.js";
import { formatPrefix, parsePrefix, type IpPrefix } from "../net/ip.js";
import { listAllAttachments, type AttachmentSpecRecord } from "../podipam/attachments.js";
import { CniCode, CniError } from "./errors.js";
import { withNodeLock, type PodNet } from "./handle.js";
import type { PodNetwork } from "./network.js";
import type { PodAddress } from "../dataplane/pod-attachment.js";

/** What an attachment of `network` with these addresses contributes; undefined without ipMasq. */
export function masqueradeOf(network: PodNetwork, addresses: readonly PodAddress[]): AttachmentSpecRecord["masquerade"] {
  if (!network.ipMasq) return undefined;
  const own = addresses.map((address) => address.subnet);
  const ranges = network.ipam.kind === "builtin" ? network.ipam.ranges.flat().map((range) => range.subnet) : [];
  const unique = (prefixes: IpPrefix[]) => [...new Set(prefixes.map(formatPrefix))];
  return { sources: unique(own), exclusions: unique([...own, ...ranges, ...network.nonMasqueradeCidrs]) };
}

/** Brings the table in line with the state; `context` names the operation in errors. */
export async function syncMasquerade(net: PodNet, context: string): Promise<void> {
  try {
    await withNodeLock(net, async () => {
      const script = await pendingChange(net);
      if (script) await nftApply(script);
    });
  } catch (error) {
    if (error instanceof CommandError) throw new CniError(CniCode.dataplaneFailure, `${context}: updating nftables table inet ${net.masqueradeTable} failed: ${error.message}`);
    throw error;
  }
}

/** CHECK: whether the network's chain is exactly what its attachments ask for. */
export async function checkMasquerade(net: PodNet, network: string): Promise<string[]> {
  const { desired, observed } = await compare(net);
  return masqueradeProblems(net.masqueradeTable, network, desired, observed);
}

async function pendingChange(net: PodNet): Promise<string | undefined> {
  const { desired, observed } = await compare(net);
  return renderMasqueradeChange(net.masqueradeTable, desired, observed);
}

async function compare(net: PodNet): Promise<{ desired: MasqueradeTable; observed: MasqueradeTable | undefined }> {
  const desired = desiredMasquerade(contributions(net));
  const observed = parseMasqueradeTable(await nftListTable("inet", net.masqueradeTable));
  return { desired, observed };
}

function contributions(net: PodNet): MasqueradeContribution[] {
  return listAllAttachments(net.db).flatMap((attachment) => {
    const masquerade = attachment.spec.masquerade;
    if (!masquerade) return [];
    return [{ network: attachment.network, sources: masquerade.sources.map(parsePrefix), exclusions: masquerade.exclusions.map(parsePrefix) }];
  });
}
