/**
 * What this trellis is and what it runs on: its own version, and the Node.js release inside the
 * executable with the libraries that release carries (SQLite, OpenSSL, V8). An operator's scanner
 * and a person reading metrics see the same answer as `trellis version`.
 */
import packageJson from "../../package.json" with { type: "json" };
import { renderGauge } from "./metrics.js";

export interface BuildInfo {
  readonly version: string;
  /** The Node.js release this process runs on (the executable's own, for dist/trellis). */
  readonly node: string;
  readonly v8: string;
  readonly sqlite: string;
  readonly openssl: string;
  readonly platform: string;
}

export function buildInfo(): BuildInfo {
  return {
    version: packageJson.version,
    node: process.version,
    v8: process.versions.v8,
    sqlite: process.versions.sqlite ?? "none",
    openssl: process.versions.openssl,
    platform: `${process.platform}/${process.arch}`,
  };
}

/** `trellis_build_info{…} 1`, as Kubernetes components export `kubernetes_build_info`. */
export function buildInfoMetric(): string {
  const info = buildInfo();
  return renderGauge("trellis_build_info", "The trellis version and the Node.js release (with its SQLite and OpenSSL) it runs on; always 1.", [
    { labels: { version: info.version, nodejs: info.node, sqlite: info.sqlite, openssl: info.openssl }, value: 1 },
  ]);
}
