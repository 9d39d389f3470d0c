/** Runs a delegated plugin (an IPAM plugin such as host-local) the way the spec says: found on CNI_PATH, same environment, same config. */
import { spawn } from "node:child_process";
import { accessSync, constants } from "node:fs";
import { join } from "node:path";
import { CniCode, CniError } from "./errors.js";
import { isObject } from "./result.js";
import { compareVersions, isSupportedVersion } from "./version.js";

export interface DelegateOutput {
  /** Parsed stdout, or undefined when the plugin printed nothing. */
  readonly output: unknown;
}

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

/**
 * Execs the delegate with `command`. If it rejects the config's version (code 1), asks its
 * VERSION and retries once with the highest version both sides speak.
 */
export async function execDelegate(
  type: string,
  command: string,
  config: Record<string, unknown>,
  cniPath: readonly string[],
): Promise<DelegateOutput> {
  const plugin = findPlugin(type, cniPath);
  try {
    return await execPlugin(plugin, type, command, config);
  } catch (error) {
    if (!(error instanceof CniError) || error.code !== CniCode.incompatibleVersion) throw error;
    const versions = await delegateVersions(type, cniPath);
    const common = versions.filter(isSupportedVersion).sort(compareVersions).filter((version) => compareVersions(version, String(config.cniVersion)) < 0).pop();
    if (!common) throw error;
    return execPlugin(plugin, type, command, { ...config, cniVersion: common });
  }
}

/** The versions a delegate speaks, from its VERSION verb. */
export async function delegateVersions(type: string, cniPath: readonly string[]): Promise<string[]> {
  const plugin = findPlugin(type, cniPath);
  const { output } = await execPlugin(plugin, type, "VERSION", { cniVersion: "0.3.0" });
  if (!isObject(output) || !Array.isArray(output.supportedVersions)) return [];
  return output.supportedVersions.filter((version): version is string => typeof version === "string");
}

function execPlugin(plugin: string, type: string, command: string, config: Record<string, unknown>): Promise<DelegateOutput> {
  return new Promise((resolve, reject) => {
    const child = spawn(plugin, [], { env: { ...process.env, CNI_COMMAND: command }, stdio: ["pipe", "pipe", "pipe"], timeout: 60_000 });
    const stdout: Buffer[] = [];
    const stderr: Buffer[] = [];
    child.stdout.on("data", (chunk: Buffer) => stdout.push(chunk));
    child.stderr.on("data", (chunk: Buffer) => stderr.push(chunk));
    child.on("error", (error) => reject(new CniError(CniCode.delegateFailure, `ipam plugin ${type} could not be run: ${error.message}`)));
    child.on("close", (code) => {
      const text = Buffer.concat(stdout).toString("utf8").trim();
      let output: unknown;
      try {
        output = text ? JSON.parse(text) : undefined;
      } catch {
        reject(new CniError(CniCode.delegateFailure, `ipam plugin ${type} ${command} printed something that is not JSON: ${text.slice(0, 200)}`));
        return;
      }
      if (code === 0) {
        resolve({ output });
        return;
      }
      const errorCode = isObject(output) && typeof output.code === "number" ? output.code : CniCode.delegateFailure;
      const msg = isObject(output) && typeof output.msg === "string" ? output.msg : Buffer.concat(stderr).toString("utf8").trim() || `exit ${code}`;
      const details = isObject(output) && typeof output.details === "string" ? output.details : "";
      reject(new CniError(errorCode, `ipam plugin ${type} ${command} failed: ${msg}`, details));
    });
    child.stdin.on("error", () => undefined);
    child.stdin.end(JSON.stringify(config));
  });
}
