/**
 * The attach engine: puts a pod on the node bridge and takes it off again. The CNI verbs call
 * it in-process; the agent can serve the same functions over its socket.
 */
import { existsSync } from "node:fs";
import { formatIp, formatPrefix, type IpPrefix } from "../net/ip.js";
import { CommandError } from "../linux/exec.js";
import { ipBatch, ipJson, isAlreadyExists, isNoSuchDevice, localLinkNames } from "../linux/iproute.js";
import { nftApply, nftListTable } from "../linux/nftables.js";
import { ensureSysctl } from "../linux/sysctl.js";
import {
  MASQUERADE_TABLE, isHostVethName, randomMac, renderContainerCommands, renderHostCommands, renderMasquerade, type PodAttachmentSpec,
} from "./pod-attachment.js";

export class AttachError extends Error {}

/**
 * Creates the bridge if needed, the veth pair, the pod's addresses and routes. On failure
 * everything this call created for the pod is removed before the error is thrown.
 */
export async function attachPod(spec: PodAttachmentSpec, masqueradeSubnets: readonly IpPrefix[]): Promise<{ bridgeMac: string }> {
  if (!existsSync(spec.container.netns)) throw new AttachError(`network namespace ${spec.container.netns} does not exist`);
  enableForwarding(spec);
  const links = localLinkNames();
  if (!links.has(spec.bridge.name)) await createBridge(spec.bridge.name);
  if (links.has(spec.hostVeth.name)) await deleteLink(spec.hostVeth.name);
  try {
    const shown = await ipBatch([...renderHostCommands(spec), `link show dev ${spec.bridge.name}`], undefined, { json: true });
    await ipBatch(renderContainerCommands(spec), spec.container.netns);
    if (masqueradeSubnets.length) await nftApply(renderMasquerade(masqueradeSubnets));
    const [bridge] = JSON.parse(shown[shown.length - 1] ?? "[]") as Array<{ address?: string }>;
    return { bridgeMac: bridge?.address ?? "" };
  } catch (error) {
    await deleteLink(spec.hostVeth.name).catch(() => undefined);
    if (error instanceof CommandError && isAlreadyExists(error) && error.command.includes(`peer name ${spec.container.ifname} `)) {
      throw new AttachError(`interface ${spec.container.ifname} already exists in ${spec.container.netns}`);
    }
    throw error;
  }
}

/** Removes the pod's veth pair (deleting the host end removes both). Safe to repeat. */
export async function detachPod(hostVeth: string): Promise<void> {
  if (localLinkNames().has(hostVeth)) await deleteLink(hostVeth);
}

/** Deletes Trellis veths on the bridge that no live attachment owns; returns their names. */
export async function sweepHostVeths(bridge: string, keep: ReadonlySet<string>): Promise<string[]> {
  if (!localLinkNames().has(bridge)) return [];
  const links = await ipJson<Array<{ ifname: string }>>(["link", "show", "master", bridge]);
  const stale = links.map((link) => link.ifname).filter((name) => isHostVethName(name) && !keep.has(name));
  for (const name of stale) await deleteLink(name);
  return stale;
}

/** Lists what is wrong with an attachment; empty when interfaces, addresses and routes are all in place. */
export async function checkPod(spec: PodAttachmentSpec, expectedMac: string | undefined, masqueradeSubnets: readonly IpPrefix[]): Promise<string[]> {
  const problems: string[] = [];
  const { container, hostVeth, bridge } = spec;
  if (!localLinkNames().has(hostVeth.name)) {
    problems.push(`host interface ${hostVeth.name} is missing`);
  } else {
    const [link] = await ipJson<Array<{ master?: string; operstate?: string }>>(["link", "show", "dev", hostVeth.name]);
    if (link?.master !== bridge.name) problems.push(`host interface ${hostVeth.name} is not attached to bridge ${bridge.name}`);
  }
  if (!existsSync(container.netns)) return [...problems, `network namespace ${container.netns} does not exist`];
  type AddrInfo = { family: string; local: string; prefixlen: number };
  let links: Array<{ address?: string; flags?: string[]; addr_info?: AddrInfo[] }>;
  try {
    links = await ipJson(["address", "show", "dev", container.ifname], container.netns);
  } catch (error) {
    if (isNoSuchDevice(error)) return [...problems, `interface ${container.ifname} is missing in ${container.netns}`];
    throw error;
  }
  const link = links[0];
  if (expectedMac && link?.address !== expectedMac) problems.push(`interface ${container.ifname} has MAC ${link?.address}, expected ${expectedMac}`);
  if (!link?.flags?.includes("UP")) problems.push(`interface ${container.ifname} is down`);
  const present = new Set((link?.addr_info ?? []).map((info) => `${info.local}/${info.prefixlen}`));
  for (const address of container.addresses) {
    const text = `${formatIp(address.address)}/${address.subnet.length}`;
    if (!present.has(text)) problems.push(`address ${text} is missing from ${container.ifname}`);
  }
  for (const family of [...new Set(container.routes.map((route) => route.dst.family))]) {
    const routes = await ipJson<Array<{ dst: string; gateway?: string; dev?: string }>>([`-${family}`, "route", "show"], container.netns);
    for (const route of container.routes.filter((candidate) => candidate.dst.family === family)) {
      const dst = route.dst.length === 0 ? "default" : formatPrefix(route.dst);
      const found = routes.some(
        (candidate) => normalizeRouteDst(candidate.dst, family) === dst && candidate.dev === container.ifname && (!route.gateway || candidate.gateway === formatIp(route.gateway)),
      );
      if (!found) problems.push(`route ${dst}${route.gateway ? ` via ${formatIp(route.gateway)}` : ""} is missing from ${container.ifname}`);
    }
  }
  if (masqueradeSubnets.length) {
    const table = await nftListTable("inet", MASQUERADE_TABLE);
    if (!table) {
      problems.push(`nftables table inet ${MASQUERADE_TABLE} is missing`);
    } else {
      const text = JSON.stringify(table);
      for (const subnet of masqueradeSubnets) {
        const { network, length } = splitPrefix(formatPrefix(subnet));
        if (!text.includes(`"addr":"${network}","len":${length}`)) problems.push(`masquerade for ${formatPrefix(subnet)} is missing`);
      }
      if (!text.includes('"masquerade"')) problems.push(`masquerade rules in inet ${MASQUERADE_TABLE} are missing`);
    }
  }
  return problems;
}

/** Creates the bridge; another ADD creating it at the same moment is fine. */
async function createBridge(name: string): Promise<void> {
  try {
    await ipBatch([`link add ${name} address ${randomMac()} type bridge`]);
  } catch (error) {
    if (!isAlreadyExists(error)) throw error;
  }
}

async function deleteLink(name: string): Promise<void> {
  try {
    await ipBatch([`link delete dev ${name}`]);
  } catch (error) {
    if (!isNoSuchDevice(error)) throw error;
  }
}

function enableForwarding(spec: PodAttachmentSpec): void {
  const families = new Set(spec.container.addresses.map((address) => address.address.family));
  if (families.has(4)) ensureSysctl("net.ipv4.ip_forward", "1");
  if (families.has(6)) ensureSysctl("net.ipv6.conf.all.forwarding", "1");
}

function normalizeRouteDst(dst: string, family: number): string {
  if (dst === "default") return dst;
  return dst.includes("/") ? dst : `${dst}/${family === 4 ? 32 : 128}`;
}

function splitPrefix(text: string): { network: string; length: number } {
  const [network, length] = text.split("/");
  return { network, length: Number(length) };
}
