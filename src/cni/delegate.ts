/**
 * Runs a delegated IPAM plugin (such as host-local) the way the spec says: found on CNI_PATH,
 * given the same CNI_* environment as the request (not this process's) and the same config.
 * Whatever the delegate fails with, Trellis answers 106 and quotes the delegate's own code.
 */
import { spawn } from "node:child_process";
import { accessSync, constants } from "node:fs";
import { join } from "node:path";
import type { PodAddress, PodRoute } from "../dataplane/pod-attachment.js";
import { nthAddress, parseInterfaceAddress, tryParseIp } from "../net/ip.js";
import { CniCode, CniError } from "../podnet/errors.js";
import type { DelegatedIpam } from "../podnet/network.js";
import { isObject, parseResult, type CniIpConfig, type CniRoute } from "./result.js";
import { compareVersions, isSupportedVersion } from "./version.js";

/** The request's environment as a delegate sees it. */
export type DelegateEnv = Readonly<Record<string, string | undefined>>;

export function findPlugin(type: string, cniPath: readonly string[]): string {
  for (const dir of cniPath) {
    const candidate = join(dir, type);
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not in this directory
    }
  }
  throw new CniError(CniCode.invalidConfig, `ipam plugin ${JSON.stringify(type)} was not found in CNI_PATH ${JSON.stringify(cniPath.join(":"))}`);
}

/** The delegate bound to one request: its type, the config to pass, and the request's environment. */
export function delegatedIpam(type: string, config: Record<string, unknown>, env: DelegateEnv, cniPath: readonly string[]): DelegatedIpam {
  const plugin = findPlugin(type, cniPath);
  const call = (command: string) => execDelegate(plugin, type, command, config, env);
  const speaks11 = async () => (await delegateVersions(plugin, type, env)).some((version) => compareVersions(version, "1.1.0") >= 0);
  return {
    type,
    async add() {
      const result = parseResult(await call("ADD"), `ipam plugin ${type} result`);
      return { addresses: (result.ips ?? []).map(toPodAddress), routes: (result.routes ?? []).map(toPodRoute) };
    },
    del: async () => void (await call("DEL")),
    // The attachment's own identity, not the request's: GC has none, and an IPAM plugin keys its leases by it.
    release: async (ref) =>
      void (await execDelegate(plugin, type, "DEL", withoutValidList(config), { ...env, CNI_CONTAINERID: ref.containerId, CNI_IFNAME: ref.ifname, CNI_NETNS: undefined })),
    check: async () => void (await call("CHECK")),
    gc: async () => void ((await speaks11()) && (await call("GC"))),
    status: async () => void ((await speaks11()) && (await call("STATUS"))),
  };
}

function withoutValidList(config: Record<string, unknown>): Record<string, unknown> {
  const { "cni.dev/valid-attachments": _valid, ...rest } = config;
  return rest;
}

/** A result's IP as the dataplane sees it; without a gateway, the subnet's first address is the gateway. */
export function toPodAddress(ip: CniIpConfig): PodAddress {
  const parsed = parseInterfaceAddress(ip.address);
  return { address: parsed.address, subnet: parsed.prefix, gateway: (ip.gateway && tryParseIp(ip.gateway)) || nthAddress(parsed.prefix, 1n) };
}

export function toPodRoute(route: CniRoute): PodRoute {
  return { dst: parseInterfaceAddress(route.dst).prefix, gateway: route.gw ? tryParseIp(route.gw) : undefined };
}

/** A delegate's own failure, before it becomes Trellis's 106. */
interface DelegateFailure {
  /** Undefined when the delegate printed no error JSON. */
  readonly code?: number;
  readonly msg: string;
  readonly details: string;
}

/**
 * Execs the delegate with `command`. If it rejects the config's version (code 1), asks its
 * VERSION and retries once with the highest version both sides speak.
 */
async function execDelegate(plugin: string, type: string, command: string, config: Record<string, unknown>, env: DelegateEnv): Promise<unknown> {
  let outcome = await execPlugin(plugin, command, config, env);
  if ("failure" in outcome && outcome.failure.code === CniCode.incompatibleVersion) {
    const versions = await delegateVersions(plugin, type, env);
    const common = versions.filter(isSupportedVersion).sort(compareVersions).filter((version) => compareVersions(version, String(config.cniVersion)) < 0).pop();
    if (common) outcome = await execPlugin(plugin, command, { ...config, cniVersion: common }, env);
  }
  if ("failure" in outcome) {
    throw new CniError(CniCode.delegateFailure, `ipam plugin ${type} ${command} ${describeFailure(outcome.failure)}`, outcome.failure.details);
  }
  return outcome.output;
}

/** The versions a delegate speaks, from its VERSION verb. */
async function delegateVersions(plugin: string, type: string, env: DelegateEnv): Promise<string[]> {
  const outcome = await execPlugin(plugin, "VERSION", { cniVersion: "0.3.0" }, env);
  if ("failure" in outcome) throw new CniError(CniCode.delegateFailure, `ipam plugin ${type} VERSION ${describeFailure(outcome.failure)}`);
  const output = outcome.output;
  if (!isObject(output) || !Array.isArray(output.supportedVersions)) return [];
  return output.supportedVersions.filter((version): version is string => typeof version === "string");
}

function describeFailure(failure: DelegateFailure): string {
  return `failed${failure.code === undefined ? "" : ` with code ${failure.code}`}: ${failure.msg}`;
}

function execPlugin(plugin: string, command: string, config: Record<string, unknown>, env: DelegateEnv): Promise<{ output: unknown } | { failure: DelegateFailure }> {
  const childEnv: Record<string, string> = { PATH: env.PATH ?? process.env.PATH ?? "/usr/sbin:/usr/bin:/sbin:/bin" };
  for (const [name, value] of Object.entries(env)) if (name.startsWith("CNI_") && value !== undefined) childEnv[name] = value;
  childEnv.CNI_COMMAND = command;
  return new Promise((resolve, reject) => {
    const child = spawn(plugin, [], { env: childEnv, stdio: ["pipe", "pipe", "pipe"], timeout: 60_000 });
    const stdout: Buffer[] = [];
    const stderr: Buffer[] = [];
    child.stdout.on("data", (chunk: Buffer) => stdout.push(chunk));
    child.stderr.on("data", (chunk: Buffer) => stderr.push(chunk));
    child.on("error", (error) => reject(new CniError(CniCode.delegateFailure, `ipam plugin ${plugin} could not be run: ${error.message}`)));
    child.on("close", (code) => {
      const text = Buffer.concat(stdout).toString("utf8").trim();
      let output: unknown;
      try {
        output = text ? JSON.parse(text) : undefined;
      } catch {
        reject(new CniError(CniCode.delegateFailure, `ipam plugin ${plugin} ${command} printed something that is not JSON: ${text.slice(0, 200)}`));
        return;
      }
      if (code === 0) {
        resolve({ output });
        return;
      }
      resolve({
        failure: {
          code: isObject(output) && typeof output.code === "number" ? output.code : undefined,
          msg: isObject(output) && typeof output.msg === "string" ? output.msg : Buffer.concat(stderr).toString("utf8").trim() || `exit ${code}`,
          details: isObject(output) && typeof output.details === "string" ? output.details : "",
        },
      });
    });
    child.stdin.on("error", () => undefined);
    child.stdin.end(JSON.stringify(config));
  });
}
