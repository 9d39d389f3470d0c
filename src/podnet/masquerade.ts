/**
 * Keeps the masquerade table equal to what the recorded attachments ask for: an ADD adds its
 * network's chain or widens it, the last DEL of a network removes it. Every sync reads the
 * state under the node lock, after its own change to the state committed, and writes the whole
 * table in one transaction (through the netlink writer when there is one), so whichever sync
 * runs last leaves the kernel matching the last state.
 *
 * Nothing is read back on ADD or DEL: `nft -j list table` reads every chain of the namespace
 * first (0.6 s beside 10,000 Services). Instead a handle skips the write when it would write
 * what it wrote last and no process has written the table since (the stamp file): a fresh
 * process writes once, a long-lived one (the agent's) only on change. CHECK reads the kernel;
 * a difference it finds makes the next sync of every process write.
 */
import { randomUUID } from "node:crypto";
import { readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { desiredMasquerade, masqueradeOps, masqueradeProblems, parseMasqueradeTable, type MasqueradeContribution } from "../dataplane/masquerade.js";
import { CommandError } from "../linux/exec.js";
import { NftWriteError } from "../linux/nft-netlink.js";
import { nftListTable } from "../linux/nftables.js";
import { renderOps } from "../nft/text.js";
import { formatPrefix, parsePrefix, type IpPrefix } from "../net/ip.js";
import { listAllAttachments, type AttachmentSpecRecord } from "../podipam/attachments.js";
import { CniCode, CniError } from "./errors.js";
import { withNodeLock, writeNft, type PodNet } from "./handle.js";
import type { PodNetwork } from "./network.js";
import type { PodAddress } from "../dataplane/pod-attachment.js";

/** The `nft -f` text of the table a handle last wrote, and the stamp it left then. */
const written = new WeakMap<PodNet, { readonly text: string; readonly stamp: string }>();

/**
 * Beside the state: the stamp of the last write of the table by any process. A handle's memory
 * says what it wrote, not whether another process (the standalone plugin beside the agent)
 * wrote since; removed before every write, and by a CHECK that finds the kernel differs.
 */
function stampPath(net: PodNet): string {
  return join(net.stateDir, "masquerade-written");
}

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
    await withNodeLock(net, () => ensureMasqueradeTable(net));
  } catch (error) {
    if (error instanceof CommandError || error instanceof NftWriteError) {
      throw new CniError(CniCode.dataplaneFailure, `${context}: updating nftables table inet ${net.masqueradeTable} failed: ${error.message}`);
    }
    throw error;
  }
}

/** CHECK: whether the network's chain is exactly what its attachments ask for. */
export async function checkMasquerade(net: PodNet, network: string): Promise<string[]> {
  const desired = desiredMasquerade(contributions(net));
  const observed = parseMasqueradeTable(await nftListTable("inet", net.masqueradeTable));
  const problems = masqueradeProblems(net.masqueradeTable, network, desired, observed);
  if (problems.length) forgetWrites(net);
  return problems;
}

/**
 * A resync's repair: when the table should exist and the namespace has none (deleted by hand),
 * it is written again; whether it was. `tables` is the namespace's tables (`inet NAME`).
 */
export async function repairMasquerade(net: PodNet, tables: ReadonlySet<string>): Promise<boolean> {
  return withNodeLock(net, async () => {
    const desired = desiredMasquerade(contributions(net));
    if (desired.chains.size === 0 || tables.has(`inet ${net.masqueradeTable}`)) return false;
    forgetWrites(net);
    await ensureMasqueradeTable(net);
    return true;
  });
}

async function ensureMasqueradeTable(net: PodNet): Promise<void> {
  const ops = masqueradeOps(net.masqueradeTable, desiredMasquerade(contributions(net)));
  const text = renderOps(ops);
  const last = written.get(net);
  if (last && last.text === text && readStamp(net) === last.stamp) return;
  // A write that fails, or is cut short, leaves no stamp: what the kernel holds is unknown.
  forgetWrites(net);
  await writeNft(net, ops);
  const stamp = randomUUID();
  writeFileSync(stampPath(net), stamp);
  written.set(net, { text, stamp });
}

function forgetWrites(net: PodNet): void {
  written.delete(net);
  rmSync(stampPath(net), { force: true });
}

function readStamp(net: PodNet): string | undefined {
  try {
    return readFileSync(stampPath(net), "utf8");
  } catch {
    return undefined;
  }
}

function contributions(net: PodNet): MasqueradeContribution[] {
  return listAllAttachments(net.db).flatMap((attachment) => {
    const masquerade = attachment.spec.masquerade;
    if (!masquerade) return [];
    return [{ network: attachment.network, sources: masquerade.sources.map(parsePrefix), exclusions: masquerade.exclusions.map(parsePrefix) }];
  });
}
