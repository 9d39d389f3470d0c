/**
 * The CNI protocol in front of the attach engine: one request (the CNI_* environment and the
 * config on stdin) in, one reply (result or error JSON, exit code) out. The plugin process
 * serves one request this way; a long-lived server can serve many over the same engine handles.
 */
import { CommandError } from "../linux/exec.js";
import { formatIp, formatPrefix } from "../net/ip.js";
import { addPod, checkPod, delPod, gcPods, podStatus } from "../podnet/attach.js";
import { CniCode, CniError, formatCniError } from "../podnet/errors.js";
import type { PodNet } from "../podnet/handle.js";
import type { PodNetwork } from "../podnet/network.js";
import { isSqliteBusy, sqliteResult } from "../store/sqlite.js";
import { versionHasCheck, type NetConf, parseNetConf } from "./config.js";
import { delegatedIpam, toPodAddress, toPodRoute } from "./delegate.js";
import { parseCniEnv, type CniEnv } from "./env.js";
import { formatResult, isObject, type CniInterface, type CniResult } from "./result.js";
import { CURRENT_VERSION, versionInfo } from "./version.js";

export interface CniRequest {
  readonly env: Readonly<Record<string, string | undefined>>;
  readonly stdin: string;
  /** Aborts an ADD in progress; what it did is rolled back. */
  readonly signal?: AbortSignal;
  /**
   * Set by the agent serving the request: why it cannot serve pods yet (not registered, routes
   * not programmed), or undefined when it can. Absent in the standalone plugin.
   */
  readonly agentNotReady?: () => string | undefined;
}

export interface CniReply {
  readonly exitCode: number;
  readonly stdout: string;
  /** One line for a log when the request failed. */
  readonly stderr: string;
}

/** Where engine handles come from: opened per request in the plugin, kept open by a server. */
export interface PodNetSource {
  acquire(stateDir: string, field: string): PodNet;
  release(net: PodNet): void;
}

export async function handleCniRequest(request: CniRequest, source: PodNetSource): Promise<CniReply> {
  try {
    const env = parseCniEnv(request.env);
    if (env.command === "VERSION") return ok(JSON.stringify(versionInfo()));
    const conf = parseNetConf(request.stdin, env.args);
    if (env.command === "STATUS") {
      await withPodNet(source, conf, (net) => cmdStatus(net, env, conf, request), CniCode.notAvailable);
      return ok("");
    }
    const stdout = await withPodNet(source, conf, async (net) => {
      switch (env.command) {
        case "ADD":
          return JSON.stringify(formatResult(await cmdAdd(net, env, conf, request), conf.cniVersion));
        case "DEL":
          await delPod(net, { ...attachment(env), network: podNetwork(env, conf, request) });
          return "";
        case "CHECK":
          await cmdCheck(net, env, conf, request);
          return "";
        case "GC":
          await cmdGc(net, env, conf, request);
          return "";
        default:
          throw new CniError(CniCode.internal, `no handler for ${env.command}`);
      }
    });
    return ok(stdout);
  } catch (error) {
    const cniError = toCniError(error);
    const stderr = `trellis: ${request.env.CNI_COMMAND} ${request.env.CNI_CONTAINERID ?? ""} failed (code ${cniError.code}): ${cniError.message}\n`;
    const trace = cniError.code === CniCode.internal && error instanceof Error && error.stack ? `${error.stack}\n` : "";
    return { exitCode: 1, stdout: formatCniError(cniError, versionOf(request.stdin) ?? CURRENT_VERSION) + "\n", stderr: stderr + trace };
  }
}

async function cmdAdd(net: PodNet, env: CniEnv, conf: NetConf, request: CniRequest): Promise<CniResult> {
  const network = podNetwork(env, conf, request);
  const result = await addPod(net, {
    ...attachment(env),
    network,
    netns: env.netns,
    requestedIps: conf.requestedIps,
    mac: conf.mac,
    portMappings: conf.portMappings,
    signal: request.signal,
  });
  const interfaces: CniInterface[] = [
    { name: result.bridge.name, mac: result.bridge.mac },
    { name: result.hostVeth.name, mac: result.hostVeth.mac },
    { name: result.container.ifname, mac: result.container.mac, sandbox: result.container.netns },
  ];
  if (result.container.mtu !== undefined) interfaces.forEach((iface) => (iface.mtu = result.container.mtu));
  return {
    cniVersion: conf.cniVersion,
    interfaces,
    ips: result.addresses.map((address) => ({ address: `${formatIp(address.address)}/${address.subnet.length}`, gateway: formatIp(address.gateway), interface: 2 })),
    routes: result.routes.map((route) => ({ dst: formatPrefix(route.dst), ...(route.gateway ? { gw: formatIp(route.gateway) } : {}) })),
    dns: conf.dns ?? {},
  };
}

async function cmdCheck(net: PodNet, env: CniEnv, conf: NetConf, request: CniRequest): Promise<void> {
  if (!versionHasCheck(conf.cniVersion)) {
    throw new CniError(CniCode.incompatibleVersion, `CHECK needs cniVersion 0.4.0 or later; the config says ${conf.cniVersion}`);
  }
  const prev = conf.prevResult;
  if (!prev) throw new CniError(CniCode.invalidConfig, "prevResult is required for CHECK");
  const containerIndex = (prev.interfaces ?? []).findIndex((iface) => iface.name === env.ifname && iface.sandbox);
  const ours = (prev.ips ?? []).filter((ip) => ip.interface === undefined || ip.interface === containerIndex);
  await checkPod(net, {
    ...attachment(env),
    network: podNetwork(env, conf, request),
    netns: env.netns,
    expected: {
      addresses: ours.map(toPodAddress),
      routes: (prev.routes ?? []).map(toPodRoute),
      mac: containerIndex >= 0 ? prev.interfaces![containerIndex].mac : undefined,
    },
  });
}

async function cmdGc(net: PodNet, env: CniEnv, conf: NetConf, request: CniRequest): Promise<void> {
  if (!conf.validAttachments) throw new CniError(CniCode.invalidConfig, "cni.dev/valid-attachments is required for GC");
  await gcPods(net, { network: podNetwork(env, conf, request), valid: conf.validAttachments });
}

/**
 * A network the agent configured is available only while its agent is ready: served by the
 * agent, STATUS asks it; run standalone (the native plugin found no agent), the agent is down.
 */
async function cmdStatus(net: PodNet, env: CniEnv, conf: NetConf, request: CniRequest): Promise<void> {
  if (conf.agentSocket !== undefined) {
    const reason = request.agentNotReady ? request.agentNotReady() : `the trellis agent at ${conf.agentSocket} is not running`;
    if (reason !== undefined) throw new CniError(CniCode.notAvailable, `network ${conf.name} is not ready: ${reason}`);
  }
  await podStatus(net, podNetwork(env, conf, request));
}

/** The engine's view of the config; a delegated IPAM plugin is bound to this request's environment. */
function podNetwork(env: CniEnv, conf: NetConf, request: CniRequest): PodNetwork {
  return {
    name: conf.name,
    bridge: conf.bridge,
    mtu: conf.mtu,
    hairpin: conf.hairpinMode,
    ipMasq: conf.ipMasq,
    nonMasqueradeCidrs: conf.nonMasqueradeCidrs,
    isDefaultGateway: conf.isDefaultGateway,
    ipam:
      conf.ipam.kind === "builtin"
        ? { kind: "builtin", ranges: conf.ipam.ranges, routes: conf.ipam.routes }
        : { kind: "delegated", plugin: delegatedIpam(conf.ipam.type, conf.raw, request.env, env.path) },
  };
}

/** Runs `task` on the state directory's handle; a directory that cannot be opened answers `openCode`. */
async function withPodNet<T>(source: PodNetSource, conf: NetConf, task: (net: PodNet) => Promise<T>, openCode: number = CniCode.stateFailure): Promise<T> {
  let net: PodNet;
  try {
    net = source.acquire(conf.stateDir, conf.stateField);
  } catch (error) {
    const cniError = toCniError(error);
    throw new CniError(openCode, cniError.message);
  }
  try {
    return await task(net);
  } finally {
    source.release(net);
  }
}

function attachment(env: CniEnv): { containerId: string; ifname: string } {
  return { containerId: env.containerId, ifname: env.ifname };
}

function ok(stdout: string): CniReply {
  return { exitCode: 0, stdout: stdout ? `${stdout}\n` : "", stderr: "" };
}

function versionOf(stdin: string): string | undefined {
  try {
    const parsed: unknown = JSON.parse(stdin);
    return isObject(parsed) && typeof parsed.cniVersion === "string" ? parsed.cniVersion : undefined;
  } catch {
    return undefined;
  }
}

/** Errors that escaped with no CNI code of their own. */
function toCniError(error: unknown): CniError {
  if (error instanceof CniError) return error;
  if (error instanceof CommandError) return new CniError(CniCode.dataplaneFailure, error.message);
  if (sqliteResult(error)) {
    return new CniError(isSqliteBusy(error) ? CniCode.tryAgainLater : CniCode.stateFailure, `node state database: ${(error as Error).message}`);
  }
  return new CniError(CniCode.internal, error instanceof Error ? error.message : String(error));
}
