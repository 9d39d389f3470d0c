/**
 * The node bridge: created on first use and never reconfigured after (other networks' pods
 * may hang on it), checked to really be a bridge, and given back its ports and gateway
 * addresses when it was deleted and comes back.
 */
import { hostname } from "node:os";
import { readFileSync, writeFileSync } from "node:fs";
import { bridgeGateways, renderBridgeAddresses, renderBridgeCreate, renderBridgePort } from "../dataplane/pod-attachment.js";
import { parseIpLinks, type ObservedLink } from "../dataplane/pod-check.js";
import { CommandError } from "../linux/exec.js";
import { ipBatch, ipJson, isAlreadyExists, localLinkNames } from "../linux/iproute.js";
import { formatIp, type IpAddress } from "../net/ip.js";
import { attachmentsOnBridge } from "../podipam/attachments.js";
import { CniCode, CniError } from "./errors.js";
import type { PodNet } from "./handle.js";
import { recordedAddresses } from "./records.js";

/**
 * Makes sure the bridge exists, with IPv6 usable when `ipv6` is set (callers check an existing
 * link with `assertBridge` first). A bridge this call creates gets back the ports and gateways
 * the state records for it.
 */
export async function ensureBridge(net: PodNet, name: string, options: { mtu?: number; ipv6: boolean }): Promise<void> {
  if (localLinkNames().has(name)) {
    if (options.ipv6) enableIpv6(name);
    return;
  }
  try {
    // The node and its state directory: a bridge made again gets the MAC it had.
    await ipBatch(renderBridgeCreate(name, options.mtu, `${hostname()}\0${net.stateDir}`));
  } catch (error) {
    if (!isAlreadyExists(error)) throw kernelError(`creating bridge ${name}`, error);
    return ensureBridge(net, name, options);
  }
  if (options.ipv6) enableIpv6(name);
  await repairBridge(net, name);
}

/**
 * Whether the bridge exists. A link of that name of another kind is a configuration error
 * (code 7), and so is a pod MTU below the bridge's: the kernel would lower the bridge to the
 * smallest port's MTU under every other pod on it (and below 1280 strip its IPv6 gateways).
 */
export async function assertBridge(name: string, podMtu?: number): Promise<boolean> {
  if (!localLinkNames().has(name)) {
    checkedBridges.delete(name);
    return false;
  }
  // A long-lived process (the agent) knows the bridge from the last ADD's own output.
  let checked = checkedBridges.get(name);
  if (!checked) {
    const [link] = parseIpLinks(await ipJson(["-details", "address", "show", "dev", name]));
    if (!link) return false;
    checked = noteBridge(name, link);
  }
  if (podMtu !== undefined && checked.mtu !== undefined && podMtu < checked.mtu) {
    throw new CniError(
      CniCode.invalidConfig,
      `mtu ${podMtu} is below the MTU ${checked.mtu} of bridge ${name}, which other pods share: a smaller port would lower the bridge's MTU under them; use mtu ${checked.mtu} or another bridge`,
    );
  }
  return true;
}

/** What this process last saw of a bridge: its MTU, whether it was up, its addresses (`ADDRESS/LENGTH`). */
interface CheckedBridge {
  readonly mtu?: number;
  readonly up: boolean;
  readonly addresses: ReadonlySet<string>;
}

const checkedBridges = new Map<string, CheckedBridge>();

/** Records what a `-details address show` of the bridge said; a link of that name that is not a bridge is code 7. */
export function noteBridge(name: string, link: ObservedLink): CheckedBridge {
  if (link.kind !== "bridge") {
    checkedBridges.delete(name);
    throw new CniError(CniCode.invalidConfig, `bridge ${JSON.stringify(name)} names an existing ${link.kind ? `${link.kind} ` : ""}interface that is not a bridge; choose another bridge name`);
  }
  const checked = { mtu: link.mtu, up: link.up, addresses: new Set((link.addresses ?? []).map((entry) => `${formatIp(entry.address)}/${entry.length}`)) };
  checkedBridges.set(name, checked);
  return checked;
}

/** Whether the bridge was last seen up and holding every one of these gateways (then an ADD need not set them). */
export function bridgeReady(name: string, gateways: readonly { readonly address: IpAddress; readonly length: number }[]): boolean {
  const checked = checkedBridges.get(name);
  return checked !== undefined && checked.up && gateways.every((gateway) => checked.addresses.has(`${formatIp(gateway.address)}/${gateway.length}`));
}

/** Makes the next ADD check the bridge again (after a failure on it). */
export function forgetBridge(name: string): void {
  checkedBridges.delete(name);
}

/**
 * Puts every recorded pod of `bridge` whose host veth still exists back on it, with the
 * gateways their addresses route through. The agent's resync calls the same repair.
 */
export async function repairBridge(net: PodNet, bridge: string): Promise<void> {
  const links = localLinkNames();
  const pods = attachmentsOnBridge(net.db, bridge).filter((pod) => pod.state === "ready" && links.has(pod.hostIfname));
  if (!pods.length) return;
  if (!links.has(bridge)) {
    // Recreated with its pods' MTU, as the ADD that first made it did.
    const [veth] = parseIpLinks(await ipJson(["link", "show", "dev", pods[0].hostIfname]));
    await ensureBridge(net, bridge, { mtu: veth?.mtu, ipv6: false });
    return;
  }
  const gateways = bridgeGateways(pods.flatMap(recordedAddresses));
  if (gateways.some((gateway) => gateway.address.family === 6)) enableIpv6(bridge);
  try {
    await ipBatch([...renderBridgeAddresses({ name: bridge, gateways }), ...pods.flatMap((pod) => renderBridgePort(bridge, { name: pod.hostIfname, hairpin: pod.spec.hairpin }))]);
  } catch (error) {
    throw kernelError(`restoring the ports of bridge ${bridge}`, error);
  }
}

/**
 * Switches IPv6 on for the pod bridge (a node may disable it for new interfaces by default),
 * without duplicate address detection: the bridge's link-local address would otherwise stay
 * tentative for 1-2 s after its first pod gives it carrier, and meanwhile the node cannot
 * solicit its pods' addresses for traffic it forwards (a hostPort or Service connection from
 * outside to a new node's first pods waited for TCP's retransmission, or failed). Its own
 * addresses are unique on it by construction: the gateways are the ranges' and nodad, its MAC
 * random, the pods' derived from their addresses.
 */
export function enableIpv6(ifname: string): void {
  try {
    for (const [setting, value] of [["accept_dad", "0"], ["disable_ipv6", "0"]] as const) {
      const path = `/proc/sys/net/ipv6/conf/${ifname}/${setting}`;
      if (readFileSync(path, "utf8").trim() !== value) writeFileSync(path, value);
    }
  } catch (error) {
    throw new CniError(CniCode.dataplaneFailure, `cannot enable IPv6 on ${ifname}: ${(error as Error).message}`);
  }
}

export function kernelError(context: string, error: unknown): unknown {
  if (error instanceof CommandError) return new CniError(CniCode.dataplaneFailure, `${context}: ${error.message}`);
  return error;
}
