/** CNI specification versions this plugin speaks. */
import { CniCode, CniError } from "../podnet/errors.js";

export const SUPPORTED_VERSIONS = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] as const;
export const CURRENT_VERSION = "1.1.0";

export function compareVersions(a: string, b: string): number {
  const pa = a.split(".").map(Number);
  const pb = b.split(".").map(Number);
  for (let i = 0; i < 3; i++) if ((pa[i] ?? 0) !== (pb[i] ?? 0)) return (pa[i] ?? 0) - (pb[i] ?? 0);
  return 0;
}

export function isSupportedVersion(version: string): boolean {
  return (SUPPORTED_VERSIONS as readonly string[]).includes(version);
}

export function requireSupportedVersion(version: unknown): string {
  if (typeof version !== "string" || !/^\d+\.\d+\.\d+$/.test(version)) {
    throw new CniError(CniCode.invalidConfig, `cniVersion ${JSON.stringify(version)} is not a version: expected one of ${SUPPORTED_VERSIONS.join(", ")}`);
  }
  if (!isSupportedVersion(version)) {
    throw new CniError(CniCode.incompatibleVersion, `cniVersion ${version} is not supported: trellis speaks ${SUPPORTED_VERSIONS.join(", ")}`);
  }
  return version;
}

/** The VERSION verb's answer. */
export function versionInfo(): { cniVersion: string; supportedVersions: string[] } {
  return { cniVersion: CURRENT_VERSION, supportedVersions: [...SUPPORTED_VERSIONS] };
}
