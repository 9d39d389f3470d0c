/**
 * The trellis CNI plugin's verbs, side by side. Each reads like the spec: what ADD, DEL,
 * CHECK, GC and STATUS must do, in order.
 */
import { existsSync } from "node:fs";
import { attachPod, checkPod, detachPod, sweepHostVeths } from "../dataplane/attach.js";
import { hostVethName, planPodAttachment, type PodAddress, type PodAttachmentSpec, type PodRoute } from "../dataplane/pod-attachment.js";
import { deleteAttachment, findAttachment, insertAttachment, listAttachments, type AttachmentKey } from "../podipam/attachments.js";
import { openNodeState } from "../podipam/node-state.js";
import { allocatePodIps, countLeases, describeRangeSet, leasesOf, listLeases, rangeSetCapacity, releasePodIps } from "../podipam/pod-ips.js";
import { formatIp, formatPrefix, nthAddress, parseInterfaceAddress, parseIp, tryParseIp, type IpPrefix } from "../net/ip.js";
import type { SqliteDatabase } from "../store/sqlite.js";
import { type NetConf, versionHasCheck } from "./config.js";
import { delegateVersions, execDelegate, findPlugin } from "./delegate.js";
import type { CniEnv } from "./env.js";
import { CniCode, CniError } from "./errors.js";
import { parseResult, type CniInterface, type CniIpConfig, type CniResult } from "./result.js";
import { compareVersions } from "./version.js";

export async function cmdAdd(env: CniEnv, conf: NetConf): Promise<CniResult> {
  if (!existsSync(env.netns)) throw new CniError(CniCode.invalidEnvironment, `CNI_NETNS ${env.netns} does not exist`);
  if (conf.ipam.kind === "delegated") findPlugin(conf.ipam.type, env.path);
  const db = openNodeState(conf.stateDir);
  try {
    const key = attachmentKey(env, conf);
    const hostIfname = hostVethName(key.network, key.containerId, key.ifname);
    const addresses = await reserveAddresses(db, env, conf, key, hostIfname);
    try {
      const spec = planPodAttachment({
        ...attachmentInput(env, conf, key),
        mac: conf.mac,
        addresses,
        routes: conf.ipam.kind === "builtin" ? conf.ipam.routes.map(toPodRoute) : [],
        defaultRoutes: conf.isDefaultGateway,
      });
      const { bridgeMac } = await attachPod(spec, masqueradeSubnets(conf, addresses));
      return buildResult(conf, spec, bridgeMac);
    } catch (error) {
      await releaseAddresses(db, env, conf, key).catch((cleanup) => log(`rollback of ${key.containerId}/${key.ifname} failed: ${String(cleanup)}`));
      throw error;
    }
  } finally {
    db.close();
  }
}

export async function cmdDel(env: CniEnv, conf: NetConf): Promise<void> {
  const db = openNodeState(conf.stateDir);
  try {
    const key = attachmentKey(env, conf);
    const attachment = findAttachment(db, key);
    await detachPod(attachment?.hostIfname ?? hostVethName(key.network, key.containerId, key.ifname));
    await releaseAddresses(db, env, conf, key);
  } finally {
    db.close();
  }
}

export async function cmdCheck(env: CniEnv, conf: NetConf): Promise<void> {
  if (!versionHasCheck(conf.cniVersion)) {
    throw new CniError(CniCode.incompatibleVersion, `CHECK needs cniVersion 0.4.0 or later; the config says ${conf.cniVersion}`);
  }
  if (!conf.prevResult) throw new CniError(CniCode.invalidConfig, "prevResult is required for CHECK");
  const prev = conf.prevResult;
  const db = openNodeState(conf.stateDir);
  try {
    const key = attachmentKey(env, conf);
    const problems: string[] = [];
    const attachment = findAttachment(db, key);
    if (!attachment) problems.push(`no attachment is recorded for container ${key.containerId} interface ${key.ifname} in network ${key.network}`);
    const containerIndex = (prev.interfaces ?? []).findIndex((iface) => iface.name === env.ifname && iface.sandbox);
    const ours = (prev.ips ?? []).filter((ip) => ip.interface === undefined || ip.interface === containerIndex);
    if (conf.ipam.kind === "builtin") {
      const leased = new Set(leasesOf(db, key));
      for (const ip of ours) {
        const address = formatIp(parseInterfaceAddress(ip.address).address);
        if (!leased.has(address)) problems.push(`address ${address} is not reserved for container ${key.containerId} interface ${key.ifname}`);
      }
    } else {
      await execDelegate(conf.ipam.type, "CHECK", conf.raw, env.path);
    }
    const addresses = ours.map(toPodAddress);
    const spec = planPodAttachment({
      ...attachmentInput(env, conf, key),
      addresses,
      routes: (prev.routes ?? []).map((route) => toPodRoute({ dst: route.dst, gw: route.gw })),
      defaultRoutes: false,
    });
    const expectedMac = containerIndex >= 0 ? prev.interfaces![containerIndex].mac : undefined;
    problems.push(...(await checkPod(spec, expectedMac, masqueradeSubnets(conf, addresses))));
    if (problems.length) throw new CniError(CniCode.checkFailed, `CHECK of container ${key.containerId} interface ${key.ifname} failed: ${problems.join("; ")}`);
  } finally {
    db.close();
  }
}

/** Releases everything held by attachments not in the valid list; continues past errors and reports them all. */
export async function cmdGc(env: CniEnv, conf: NetConf): Promise<void> {
  if (!conf.validAttachments) throw new CniError(CniCode.invalidConfig, "cni.dev/valid-attachments is required for GC");
  const valid = new Set(conf.validAttachments.map((ref) => `${ref.containerId}\0${ref.ifname}`));
  const db = openNodeState(conf.stateDir);
  const failures: string[] = [];
  try {
    for (const attachment of listAttachments(db, conf.name)) {
      if (valid.has(`${attachment.containerId}\0${attachment.ifname}`)) continue;
      try {
        await detachPod(attachment.hostIfname);
        db.transaction(() => {
          releasePodIps(db, attachment);
          deleteAttachment(db, attachment);
        }).immediate();
      } catch (error) {
        failures.push(`${attachment.containerId}/${attachment.ifname}: ${errorMessage(error)}`);
      }
    }
    if (conf.ipam.kind === "builtin") {
      for (const lease of listLeases(db, conf.name)) {
        if (valid.has(`${lease.containerId}\0${lease.ifname}`)) continue;
        releasePodIps(db, { network: conf.name, containerId: lease.containerId, ifname: lease.ifname });
      }
    }
    const keep = new Set(conf.validAttachments.map((ref) => hostVethName(conf.name, ref.containerId, ref.ifname)));
    try {
      await sweepHostVeths(conf.bridge, keep);
    } catch (error) {
      failures.push(`sweeping bridge ${conf.bridge}: ${errorMessage(error)}`);
    }
    if (conf.ipam.kind === "delegated" && (await delegateSpeaks(conf.ipam.type, env, "1.1.0"))) {
      await execDelegate(conf.ipam.type, "GC", conf.raw, env.path).catch((error) => failures.push(errorMessage(error)));
    }
  } finally {
    db.close();
  }
  if (failures.length) throw new CniError(CniCode.stateFailure, `GC of network ${conf.name} left ${failures.length} problem(s): ${failures.join("; ")}`);
}

/** Succeeds when an ADD could be served now: the state is writable and every range set has a free address. */
export async function cmdStatus(env: CniEnv, conf: NetConf): Promise<void> {
  let db: SqliteDatabase;
  try {
    db = openNodeState(conf.stateDir);
  } catch (error) {
    throw new CniError(CniCode.notAvailable, `node state in ${conf.stateDir} cannot be opened: ${errorMessage(error)}`);
  }
  try {
    try {
      db.transaction(() => undefined).immediate();
    } catch (error) {
      throw new CniError(CniCode.notAvailable, `node state in ${conf.stateDir} is not writable: ${errorMessage(error)}`);
    }
    if (conf.ipam.kind === "builtin") {
      conf.ipam.ranges.forEach((set, index) => {
        if (BigInt(countLeases(db, conf.name, index)) >= rangeSetCapacity(set)) {
          throw new CniError(CniCode.notAvailable, `no IP addresses available in range set ${describeRangeSet(set)} of network ${conf.name}`);
        }
      });
    } else if (await delegateSpeaks(conf.ipam.type, env, "1.1.0")) {
      await execDelegate(conf.ipam.type, "STATUS", conf.raw, env.path);
    }
  } finally {
    db.close();
  }
}

function attachmentKey(env: CniEnv, conf: NetConf): AttachmentKey {
  return { network: conf.name, containerId: env.containerId, ifname: env.ifname };
}

/** The parts of an attachment that come from the environment and the network config alone. */
function attachmentInput(env: CniEnv, conf: NetConf, key: AttachmentKey) {
  return { ...key, netns: env.netns, bridge: conf.bridge, mtu: conf.mtu, hairpin: conf.hairpinMode };
}

/** Records the attachment and reserves its addresses (in one transaction when IPAM is built in). */
async function reserveAddresses(db: SqliteDatabase, env: CniEnv, conf: NetConf, key: AttachmentKey, hostIfname: string): Promise<PodAddress[]> {
  const record = () => {
    if (findAttachment(db, key)) {
      throw new CniError(
        CniCode.duplicateAttachment,
        `container ${key.containerId} already has interface ${key.ifname} in network ${key.network}; DEL it before adding it again`,
      );
    }
    insertAttachment(db, { ...key, hostIfname, netns: env.netns, createdAt: Date.now() });
  };
  if (conf.ipam.kind === "builtin") {
    const ranges = conf.ipam.ranges;
    const leases = db.transaction(() => {
      record();
      return allocatePodIps(db, key, ranges, conf.requestedIps);
    }).immediate();
    return leases.map((lease) => ({ address: lease.address, subnet: lease.subnet, gateway: lease.gateway }));
  }
  db.transaction(record).immediate();
  try {
    const { output } = await execDelegate(conf.ipam.type, "ADD", conf.raw, env.path);
    const result = parseResult(output, `ipam plugin ${conf.ipam.type} result`);
    if (!result.ips?.length) throw new CniError(CniCode.delegateFailure, `ipam plugin ${conf.ipam.type} returned no IP addresses`);
    return result.ips.map(toPodAddress);
  } catch (error) {
    db.transaction(() => deleteAttachment(db, key)).immediate();
    await execDelegate(conf.ipam.type, "DEL", conf.raw, env.path).catch(() => undefined);
    throw error;
  }
}

async function releaseAddresses(db: SqliteDatabase, env: CniEnv, conf: NetConf, key: AttachmentKey): Promise<void> {
  if (conf.ipam.kind === "delegated") await execDelegate(conf.ipam.type, "DEL", conf.raw, env.path);
  db.transaction(() => {
    releasePodIps(db, key);
    deleteAttachment(db, key);
  }).immediate();
}

async function delegateSpeaks(type: string, env: CniEnv, version: string): Promise<boolean> {
  const versions = await delegateVersions(type, env.path);
  return versions.some((candidate) => compareVersions(candidate, version) >= 0);
}

function masqueradeSubnets(conf: NetConf, addresses: readonly PodAddress[]): IpPrefix[] {
  if (!conf.ipMasq) return [];
  if (conf.ipam.kind === "builtin") return conf.ipam.ranges.flat().map((range) => range.subnet);
  return addresses.map((address) => address.subnet);
}

/** A result's IP as the dataplane sees it; without a gateway, the subnet's first address is the gateway. */
function toPodAddress(ip: CniIpConfig): PodAddress {
  const parsed = parseInterfaceAddress(ip.address);
  return { address: parsed.address, subnet: parsed.prefix, gateway: (ip.gateway && tryParseIp(ip.gateway)) || nthAddress(parsed.prefix, 1n) };
}

function toPodRoute(route: { dst: string; gw?: string }): PodRoute {
  return { dst: parseInterfaceAddress(route.dst).prefix, gateway: route.gw ? parseIp(route.gw) : undefined };
}

function buildResult(conf: NetConf, spec: PodAttachmentSpec, bridgeMac: string): CniResult {
  const interfaces: CniInterface[] = [
    { name: spec.bridge.name, mac: bridgeMac },
    { name: spec.hostVeth.name, mac: spec.hostVeth.mac },
    { name: spec.container.ifname, mac: spec.container.mac, sandbox: spec.container.netns },
  ];
  if (spec.container.mtu !== undefined) interfaces.forEach((iface) => (iface.mtu = spec.container.mtu));
  const ips: CniIpConfig[] = spec.container.addresses.map((address) => ({
    address: `${formatIp(address.address)}/${address.subnet.length}`,
    gateway: formatIp(address.gateway),
    interface: 2,
  }));
  const routes = spec.container.routes.map((route) => ({ dst: formatPrefix(route.dst), ...(route.gateway ? { gw: formatIp(route.gateway) } : {}) }));
  return { cniVersion: conf.cniVersion, interfaces, ips, routes, dns: conf.dns ?? {} };
}

function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

function log(message: string): void {
  process.stderr.write(`trellis: ${message}\n`);
}
