/**
 * The attach engine's verbs, side by side: ADD, DEL, CHECK, GC and STATUS as plain functions
 * over a long-lived handle. They know nothing of stdin, environment variables or sockets; every
 * error they raise carries its CNI code.
 */
import {
  addressMac, hostVethAlias, hostVethName, needsIpv6, randomMac, planPodAttachment, renderBridgeAddresses, renderContainerCommands, renderHostCommands, type PodAddress, type PodAttachmentSpec, type PodRoute,
} from "../dataplane/pod-attachment.js";
import { diffPodAttachment, parseIpLinks, parseIpRoutes, type ObservedPod } from "../dataplane/pod-check.js";
import { CommandError, ownFdPath } from "../linux/exec.js";
import { ipBatch, ipJson, isAlreadyExists, isNoSuchDevice, localLinkNames, prepareIpBatch, unlinkLink, type PreparedIpBatch } from "../linux/iproute.js";
import { NetnsError, openNetns, type NetnsHandle } from "../linux/netns.js";
import { ensureSysctl } from "../linux/sysctl.js";
import { formatIp } from "../net/ip.js";
import {
  attachmentsOnBridge, completeAttachment, deleteAttachmentById, findAttachment, insertAttachment, isInFlight, listAllAttachments, listAttachments, processIdentity,
  updateAttachmentSpec, type Attachment, type AttachmentKey, type AttachmentSpecRecord,
} from "../podipam/attachments.js";
import { allocatePodIps, leasesOf, PodIpError, releaseOrphanLeases, releasePodIps } from "../podipam/pod-ips.js";
import { assertBridge, bridgeReady, ensureBridge, forgetBridge, kernelError, noteBridge } from "./bridge.js";
import { CniCode, CniError } from "./errors.js";
import { reachFaultPoint, type PodNet } from "./handle.js";
import { recordPortMappings, refuseHostPortConflict, syncHostPorts } from "./hostports.js";
import { checkMasquerade, masqueradeOf, syncMasquerade } from "./masquerade.js";
import type { AddRequest, AttachmentRequest, AttachResult, CheckRequest, GcRequest, PodNetwork } from "./network.js";
import { recordAddresses, recordedAddresses } from "./records.js";

/**
 * ADD: reserve the addresses and record the attachment (one transaction), build the host and
 * pod sides, masquerade, then mark it ready. Any failure, or an abort, undoes all of it.
 */
export async function addPod(net: PodNet, request: AddRequest): Promise<AttachResult> {
  const key = attachmentKey(request);
  return net.attachments.run(lockKey(key), async () => {
    const netns = openPodNetns(request.netns);
    // The pod side's ip starts now and enters the namespace while the host side is built.
    const podIp = prepareIpBatch({ netns });
    try {
      const { network } = request;
      await assertBridge(network.bridge, network.mtu);
      // reserve() marks the record as this process's running ADD as it writes it.
      const reservation = await reserve(net, request, key);
      reachFaultPoint(net, "add-reserved");
      try {
        throwIfAborted(request, key);
        const spec = planPodAttachment({
          ...key,
          bridge: network.bridge,
          mtu: network.mtu,
          hairpin: network.hairpin,
          mac: request.mac ?? uniqueAddressMac(net, network.bridge, reservation),
          addresses: reservation.addresses,
          routes: reservation.routes,
          defaultRoutes: network.isDefaultGateway,
        });
        requireMtuForFamilies(network, reservation.addresses);
        const bridgeMac = await attachHostSide(net, network, spec, netns);
        reachFaultPoint(net, "add-host-side");
        throwIfAborted(request, key);
        await attachPodSide(spec, netns, podIp);
        reachFaultPoint(net, "add-pod-side");
        if (reservation.record.masquerade) await syncMasquerade(net, `ADD of ${describe(key)}`);
        if (reservation.record.portMappings) await syncHostPorts(net, `ADD of ${describe(key)}`);
        throwIfAborted(request, key);
        const completed = net.db.immediate(() => completeAttachment(net.db, reservation.id, reservation.record));
        if (!completed) {
          throw new CniError(CniCode.tryAgainLater, `the record of ${describe(key)} was removed (by GC or DEL) while its ADD ran; nothing of this ADD was kept, try again`);
        }
        reachFaultPoint(net, "add-committed");
        return {
          bridge: { name: spec.bridge.name, mac: bridgeMac },
          hostVeth: { name: spec.hostVeth.name, mac: spec.hostVeth.mac },
          container: { ifname: spec.container.ifname, mac: spec.container.mac, netns: request.netns, mtu: spec.container.mtu },
          addresses: spec.container.addresses,
          routes: spec.container.routes,
        };
      } catch (error) {
        await rollback(net, request, key, reservation).catch((cleanup: unknown) => {
          throw new CniError(
            CniCode.stateFailure,
            `${errorMessage(error)}; undoing the ADD of ${describe(key)} also failed (${errorMessage(cleanup)}); its record stays for DEL or GC`,
          );
        });
        throw error;
      } finally {
        net.adding.delete(reservation.id);
      }
    } finally {
      podIp.discard();
      netns.close();
    }
  });
}

/** DEL: remove the pod's veth pair, release its addresses, drop its record. Safe to repeat; needs no netns. */
export async function delPod(net: PodNet, request: AttachmentRequest): Promise<void> {
  const key = attachmentKey(request);
  await net.attachments.run(lockKey(key), async () => {
    const record = findAttachment(net.db, key);
    if (record && addRunning(net, record)) {
      throw new CniError(CniCode.tryAgainLater, `an ADD of ${describe(key)} is still running (process ${record.owner.split(":")[0]}); try DEL again once it has finished`);
    }
    await removeHostVeth(record?.hostIfname ?? hostVethName(key.network, key.containerId, key.ifname), `DEL of ${describe(key)}`);
    reachFaultPoint(net, "del-unlinked");
    if (request.network.ipam.kind === "delegated") await request.network.ipam.plugin.del();
    net.db.immediate(() => {
      releasePodIps(net.db, key);
      if (record) deleteAttachmentById(net.db, record.id);
    });
    if (record?.spec.masquerade) await syncMasquerade(net, `DEL of ${describe(key)}`);
    if (record?.spec.portMappings) await syncHostPorts(net, `DEL of ${describe(key)}`);
  });
}

/** CHECK: the recorded attachment, its reservation and the kernel state match what ADD returned. */
export async function checkPod(net: PodNet, request: CheckRequest): Promise<void> {
  const key = attachmentKey(request);
  await net.attachments.run(lockKey(key), async () => {
    const problems: string[] = [];
    const record = findAttachment(net.db, key);
    if (!record) problems.push(`no attachment is recorded for container ${key.containerId} interface ${key.ifname} in network ${key.network}`);
    else if (record.state !== "ready") problems.push(`the ADD of ${describe(key)} has not finished`);
    const { network, expected } = request;
    if (network.ipam.kind === "builtin") {
      const leased = new Set(leasesOf(net.db, key));
      for (const address of expected.addresses) {
        if (!leased.has(formatIp(address.address))) problems.push(`address ${formatIp(address.address)} is not reserved for container ${key.containerId} interface ${key.ifname}`);
      }
    } else {
      await network.ipam.plugin.check();
    }
    const spec = planPodAttachment({
      ...key,
      bridge: network.bridge,
      hairpin: network.hairpin,
      mac: expected.mac,
      addresses: expected.addresses,
      routes: expected.routes,
      defaultRoutes: false,
    });
    problems.push(...diffPodAttachment(spec, await observePod(spec, request.netns), { checkMac: expected.mac !== undefined }));
    if (record?.spec.masquerade) problems.push(...(await checkMasquerade(net, key.network)));
    if (problems.length) throw new CniError(CniCode.checkFailed, `CHECK of container ${key.containerId} interface ${key.ifname} failed: ${problems.join("; ")}`);
  });
}

/**
 * GC: release every attachment of the network that is not in the valid list and whose ADD is
 * not still running. The decision and the release are one transaction, so an attachment
 * recorded after it is never touched. Then the released pods' veths go, and veths this
 * network created but no record owns (the state deleted by hand).
 */
export async function gcPods(net: PodNet, request: GcRequest): Promise<void> {
  const { network } = request;
  const valid = new Set(request.valid.map((ref) => hostVethName(network.name, ref.containerId, ref.ifname)));
  const failures: string[] = [];
  // Listed before the state is read: a veth seen here had its record written before it was created.
  const links = parseIpLinks(await ipJson(["link", "show"]));
  const { released, owned } = net.db.immediate(() => {
    const stale = listAttachments(net.db, network.name).filter((attachment) => !valid.has(attachment.hostIfname) && !addRunning(net, attachment));
    for (const attachment of stale) {
      releasePodIps(net.db, attachment);
      deleteAttachmentById(net.db, attachment.id);
    }
    releaseOrphanLeases(net.db, network.name);
    return { released: stale, owned: new Set(listAllAttachments(net.db).map((attachment) => attachment.hostIfname)) };
  });
  reachFaultPoint(net, "gc-released");
  const alias = hostVethAlias(network.name);
  const strays = links.filter((link) => link.alias === alias && !owned.has(link.name) && !valid.has(link.name)).map((link) => link.name);
  for (const name of new Set([...released.map((attachment) => attachment.hostIfname), ...strays])) {
    await removeHostVeth(name, `GC of network ${network.name}`).catch((error: unknown) => failures.push(errorMessage(error)));
  }
  if (network.ipam.kind === "delegated") {
    // A plugin older than CNI 1.1 has no GC: each released pod's lease is freed by a DEL of its own.
    for (const attachment of released) {
      await network.ipam.plugin.release(attachment).catch((error: unknown) => failures.push(errorMessage(error)));
    }
    await network.ipam.plugin.gc().catch((error: unknown) => failures.push(errorMessage(error)));
  }
  await syncMasquerade(net, `GC of network ${network.name}`).catch((error: unknown) => failures.push(errorMessage(error)));
  if (released.some((attachment) => attachment.spec.portMappings)) {
    await syncHostPorts(net, `GC of network ${network.name}`).catch((error: unknown) => failures.push(errorMessage(error)));
  }
  if (failures.length) throw new CniError(CniCode.stateFailure, `GC of network ${network.name} left ${failures.length} problem(s): ${failures.join("; ")}`);
}

/**
 * STATUS: whether an ADD can be served at all. The state must be writable; a full range is not
 * a STATUS failure (it fails that pod's ADD with 100), since a runtime marks the whole node not
 * ready on a failing STATUS.
 */
export async function podStatus(net: PodNet, network: PodNetwork): Promise<void> {
  try {
    net.db.immediate(() => undefined);
  } catch (error) {
    throw new CniError(CniCode.notAvailable, `node state in ${net.stateDir} is not writable: ${errorMessage(error)}`);
  }
  if (network.ipam.kind === "delegated") await network.ipam.plugin.status();
}

interface Reservation {
  readonly id: number;
  readonly addresses: PodAddress[];
  readonly routes: PodRoute[];
  readonly record: AttachmentSpecRecord;
}

/**
 * Records the attachment as `adding` and reserves its addresses. A record left by an ADD that
 * died half-way is taken over; a live one is refused.
 */
async function reserve(net: PodNet, request: AddRequest, key: AttachmentKey): Promise<Reservation> {
  const { network } = request;
  const hostIfname = hostVethName(key.network, key.containerId, key.ifname);
  const fresh = {
    ...key,
    state: "adding" as const,
    owner: processIdentity(),
    hostIfname,
    netns: request.netns,
    bridge: network.bridge,
    spec: { addresses: [], hairpin: network.hairpin },
    createdAt: Date.now(),
  };
  const takeOver = (existing: Attachment | undefined) => {
    if (!existing) return;
    if (existing.state === "ready") {
      throw new CniError(CniCode.duplicateAttachment, `container ${key.containerId} already has interface ${key.ifname} in network ${key.network}; DEL it before adding it again`);
    }
    if (addRunning(net, existing)) {
      throw new CniError(CniCode.tryAgainLater, `an ADD of ${describe(key)} is already running (process ${existing.owner.split(":")[0]})`);
    }
    releasePodIps(net.db, key);
    deleteAttachmentById(net.db, existing.id);
  };
  if (network.ipam.kind === "builtin") {
    const ipam = network.ipam;
    const reserve = () => net.db.immediate(() => {
      takeOver(findAttachment(net.db, key));
      refuseHostPortConflict(net.db, request.portMappings, () => false);
      const id = insertAttachment(net.db, fresh);
      const addresses = allocatePodIps(net.db, key, ipam.ranges, request.requestedIps).map((lease) => ({ address: lease.address, subnet: lease.subnet, gateway: lease.gateway }));
      const record = { addresses: recordAddresses(addresses), hairpin: network.hairpin, masquerade: masqueradeOf(network, addresses), portMappings: recordPortMappings(request.portMappings) };
      updateAttachmentSpec(net.db, id, record);
      return { id, addresses, routes: [...ipam.routes], record };
    });
    try {
      const reserved = reserve();
      net.adding.add(reserved.id);
      return reserved;
    } catch (error) {
      throw asCniError(error);
    }
  }
  const plugin = network.ipam.plugin;
  const id = net.db.immediate(() => {
    takeOver(findAttachment(net.db, key));
    refuseHostPortConflict(net.db, request.portMappings, () => false);
    return insertAttachment(net.db, fresh);
  });
  // Marked before the delegate runs: a GC served by this same process meanwhile must leave it alone.
  net.adding.add(id);
  try {
    const { addresses, routes } = await plugin.add();
    if (!addresses.length) throw new CniError(CniCode.delegateFailure, `ipam plugin ${plugin.type} returned no IP addresses`);
    const record = { addresses: recordAddresses(addresses), hairpin: network.hairpin, masquerade: masqueradeOf(network, addresses), portMappings: recordPortMappings(request.portMappings) };
    net.db.immediate(() => updateAttachmentSpec(net.db, id, record));
    return { id, addresses, routes, record };
  } catch (error) {
    net.adding.delete(id);
    net.db.immediate(() => deleteAttachmentById(net.db, id));
    await plugin.del().catch(() => undefined);
    throw error;
  }
}

/** Undoes an ADD: the veth pair, then the record and leases (only if the record is still this ADD's). */
async function rollback(net: PodNet, request: AddRequest, key: AttachmentKey, reservation: Reservation): Promise<void> {
  await removeHostVeth(hostVethName(key.network, key.containerId, key.ifname), `undoing the ADD of ${describe(key)}`);
  const removed = net.db.immediate(() => {
    if (!deleteAttachmentById(net.db, reservation.id)) return false;
    releasePodIps(net.db, key);
    return true;
  });
  if (request.network.ipam.kind === "delegated" && removed) await request.network.ipam.plugin.del();
  if (reservation.record.masquerade) await syncMasquerade(net, `undoing the ADD of ${describe(key)}`);
  if (reservation.record.portMappings) await syncHostPorts(net, `undoing the ADD of ${describe(key)}`);
}

/** The bridge's addresses, the veth pair (pod end moved into the namespace through its descriptor), the port. */
async function attachHostSide(net: PodNet, network: PodNetwork, spec: PodAttachmentSpec, netns: NetnsHandle): Promise<string> {
  enableForwarding(spec);
  await ensureBridge(net, network.bridge, { mtu: network.mtu, ipv6: needsIpv6(spec) });
  if (localLinkNames().has(spec.hostVeth.name)) await removeHostVeth(spec.hostVeth.name, `ADD of ${spec.hostVeth.name}`);
  try {
    // The namespace by this process's descriptor, so an ip started in advance can reach it.
    const ready = bridgeReady(spec.bridge.name, spec.bridge.gateways);
    const shown = await ipBatch(renderHostCommands(spec, ownFdPath(netns.fd), { bridgeReady: ready }), { json: true, details: true });
    const [bridge] = parseIpLinks(JSON.parse(shown[shown.length - 1] ?? "[]"));
    if (bridge) noteBridge(spec.bridge.name, bridge);
    // Seen ready, but a gateway or the bridge's up state went since (by hand): put them back now.
    if (ready && !bridgeReady(spec.bridge.name, spec.bridge.gateways)) {
      const fixed = await ipBatch([...renderBridgeAddresses(spec.bridge), ["address", "show", "dev", spec.bridge.name]], { json: true, details: true });
      const [again] = parseIpLinks(JSON.parse(fixed[fixed.length - 1] ?? "[]"));
      if (again) noteBridge(spec.bridge.name, again);
    }
    return bridge?.mac ?? "";
  } catch (error) {
    forgetBridge(spec.bridge.name);
    if (error instanceof CniError) throw error;
    if (error instanceof CommandError && isAlreadyExists(error) && error.command.includes(` peer name ${spec.container.ifname} `)) {
      throw new CniError(CniCode.dataplaneFailure, `interface ${spec.container.ifname} already exists in ${netns.path}`);
    }
    throw kernelError(`attaching ${spec.hostVeth.name} to bridge ${spec.bridge.name}`, error);
  }
}

/** Pods reach beyond the node only if it routes; as the reference bridge plugin does, for each family in use. */
function enableForwarding(spec: PodAttachmentSpec): void {
  const families = new Set(spec.container.addresses.map((address) => address.address.family));
  try {
    if (families.has(4)) ensureSysctl("net.ipv4.ip_forward", "1");
    if (families.has(6)) ensureSysctl("net.ipv6.conf.all.forwarding", "1");
  } catch (error) {
    throw new CniError(CniCode.dataplaneFailure, `cannot enable forwarding: ${errorMessage(error)}`);
  }
}

/**
 * The pod side in one `ip` run in the pod's namespace. Its IPv6 addresses come first, so a
 * namespace that disables IPv6 on new interfaces fails that first command with nothing applied;
 * only then is it run again behind a shell that switches IPv6 on there (two more execs).
 */
async function attachPodSide(spec: PodAttachmentSpec, netns: NetnsHandle, prepared: PreparedIpBatch): Promise<void> {
  const commands = renderContainerCommands(spec);
  try {
    try {
      await prepared.run(commands);
    } catch (error) {
      if (!(needsIpv6(spec) && error instanceof CommandError && /IPv6 is disabled/.test(error.stderr))) throw error;
      await ipBatch(commands, { netns, enableIpv6On: [spec.container.ifname] });
    }
  } catch (error) {
    throw kernelError(`configuring ${spec.container.ifname} in ${netns.path}`, error);
  }
}

/** Returns once the veth pair is unlisted (see `unlinkLink`), not when the kernel has freed it. */
async function removeHostVeth(name: string, context: string): Promise<void> {
  try {
    await unlinkLink(name);
  } catch (error) {
    throw kernelError(`${context}: deleting ${name}`, error);
  }
}

/** What the kernel holds for the attachment, read with one `ip` per side. */
async function observePod(spec: PodAttachmentSpec, netnsPath: string): Promise<ObservedPod> {
  const links = localLinkNames();
  const host = [
    ...(links.has(spec.hostVeth.name) ? [["address", "show", "dev", spec.hostVeth.name]] : []),
    ...(links.has(spec.bridge.name) ? [["address", "show", "dev", spec.bridge.name]] : []),
  ];
  const shown = (await ipBatch(host, { json: true })).map((line) => parseIpLinks(JSON.parse(line))[0]);
  const hostVeth = links.has(spec.hostVeth.name) ? shown.shift() : undefined;
  const bridge = links.has(spec.bridge.name) ? shown.shift() : undefined;
  let netns: NetnsHandle;
  try {
    netns = openNetns(netnsPath);
  } catch (error) {
    // A pod whose namespace is gone fails CHECK; a path that is no network namespace is the runtime's mistake.
    if (error instanceof NetnsError && error.problem === "missing") return { hostVeth, bridge };
    throw asCniNetnsError(error);
  }
  try {
    const routes = await ipBatch([["route", "show", "table", "all", "root", "0.0.0.0/0"], ["route", "show", "table", "all", "root", "::/0"]], { netns, json: true });
    const parsedRoutes = [...parseIpRoutes(JSON.parse(routes[0] ?? "[]"), 4), ...parseIpRoutes(JSON.parse(routes[1] ?? "[]"), 6)];
    try {
      const [link] = parseIpLinks(await ipJson(["address", "show", "dev", spec.container.ifname], netns));
      return { hostVeth, bridge, container: { link, routes: parsedRoutes } };
    } catch (error) {
      if (isNoSuchDevice(error)) return { hostVeth, bridge, container: { routes: parsedRoutes } };
      throw error;
    }
  } finally {
    netns.close();
  }
}

/**
 * `addressMac`, unless another pod on the bridge has it already: only possible for IPv6-only
 * pods whose addresses share their low 32 bits (two ranges of one family); such a pod gets a
 * random MAC instead.
 */
function uniqueAddressMac(net: PodNet, bridge: string, reservation: Reservation): string | undefined {
  const mac = addressMac(reservation.addresses);
  if (!mac || reservation.addresses.some((address) => address.address.family === 4)) return mac;
  const taken = attachmentsOnBridge(net.db, bridge).some((other) => other.id !== reservation.id && addressMac(recordedAddresses(other)) === mac);
  return taken ? randomMac() : mac;
}

/** Whether the record's ADD is still running: in this process, or in its owner process if that is another. */
function addRunning(net: PodNet, attachment: Attachment): boolean {
  if (attachment.state !== "adding") return false;
  if (attachment.owner === processIdentity()) return net.adding.has(attachment.id);
  return isInFlight(attachment);
}

function openPodNetns(path: string): NetnsHandle {
  try {
    return openNetns(path);
  } catch (error) {
    throw asCniNetnsError(error);
  }
}

function asCniNetnsError(error: unknown): unknown {
  return error instanceof NetnsError ? new CniError(CniCode.invalidEnvironment, `CNI_NETNS ${error.message}`) : error;
}

/** Pods with IPv6 need links of at least 1280 bytes (RFC 8200); a smaller MTU would strip their addresses. */
function requireMtuForFamilies(network: PodNetwork, addresses: readonly PodAddress[]): void {
  if (network.mtu !== undefined && network.mtu < 1280 && addresses.some((address) => address.address.family === 6)) {
    throw new CniError(CniCode.invalidConfig, `mtu ${network.mtu} is too small for IPv6 addresses: a network with IPv6 needs an mtu of at least 1280`);
  }
}

function throwIfAborted(request: AddRequest, key: AttachmentKey): void {
  if (request.signal?.aborted) throw new CniError(CniCode.tryAgainLater, `the ADD of ${describe(key)} was cancelled; nothing of it was kept`);
}

function asCniError(error: unknown): unknown {
  if (!(error instanceof PodIpError)) return error;
  const code = { exhausted: CniCode.rangeExhausted, unavailable: CniCode.addressUnavailable, duplicate: CniCode.duplicateAttachment }[error.kind];
  return new CniError(code, error.message);
}

function attachmentKey(request: AttachmentRequest): AttachmentKey {
  return { network: request.network.name, containerId: request.containerId, ifname: request.ifname };
}

function lockKey(key: AttachmentKey): string {
  return `${key.network}\0${key.containerId}\0${key.ifname}`;
}

function describe(key: AttachmentKey): string {
  return `container ${key.containerId} interface ${key.ifname} in network ${key.network}`;
}

function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
