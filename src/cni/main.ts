/** Entry point when the executable runs as a CNI plugin: stdin config, CNI_* env, result or error JSON on stdout. */
import { readFileSync } from "node:fs";
import { AttachError } from "../dataplane/attach.js";
import { PodIpError } from "../podipam/pod-ips.js";
import { CommandError } from "../linux/exec.js";
import { parseNetConf } from "./config.js";
import { parseCniEnv } from "./env.js";
import { CniCode, CniError, formatCniError } from "./errors.js";
import { cmdAdd, cmdCheck, cmdDel, cmdGc, cmdStatus } from "./plugin.js";
import { formatResult, isObject } from "./result.js";
import { CURRENT_VERSION, versionInfo } from "./version.js";

/** Runs one CNI invocation and returns the exit code. */
export async function runCniPlugin(): Promise<number> {
  let stdin = "";
  try {
    const env = parseCniEnv(process.env);
    stdin = readStdin();
    if (env.command === "VERSION") {
      process.stdout.write(JSON.stringify(versionInfo()) + "\n");
      return 0;
    }
    const conf = parseNetConf(stdin, env.args);
    switch (env.command) {
      case "ADD":
        process.stdout.write(JSON.stringify(formatResult(await cmdAdd(env, conf), conf.cniVersion)) + "\n");
        break;
      case "DEL":
        await cmdDel(env, conf);
        break;
      case "CHECK":
        await cmdCheck(env, conf);
        break;
      case "GC":
        await cmdGc(env, conf);
        break;
      case "STATUS":
        await cmdStatus(env, conf);
        break;
    }
    return 0;
  } catch (error) {
    const cniError = toCniError(error);
    process.stdout.write(formatCniError(cniError, versionOf(stdin) ?? CURRENT_VERSION) + "\n");
    process.stderr.write(`trellis: ${process.env.CNI_COMMAND} ${process.env.CNI_CONTAINERID ?? ""} failed (code ${cniError.code}): ${cniError.message}\n`);
    if (cniError.code === CniCode.internal && error instanceof Error && error.stack) process.stderr.write(`${error.stack}\n`);
    return 1;
  }
}

function readStdin(): string {
  try {
    return readFileSync(0, "utf8");
  } catch (error) {
    throw new CniError(CniCode.ioFailure, `cannot read the network configuration from stdin: ${(error as Error).message}`);
  }
}

function versionOf(stdin: string): string | undefined {
  try {
    const parsed: unknown = JSON.parse(stdin);
    return isObject(parsed) && typeof parsed.cniVersion === "string" ? parsed.cniVersion : undefined;
  } catch {
    return undefined;
  }
}

function toCniError(error: unknown): CniError {
  if (error instanceof CniError) return error;
  if (error instanceof PodIpError) {
    const code = { exhausted: CniCode.rangeExhausted, unavailable: CniCode.addressUnavailable, duplicate: CniCode.duplicateAttachment }[error.kind];
    return new CniError(code, error.message);
  }
  if (error instanceof AttachError || error instanceof CommandError) return new CniError(CniCode.dataplaneFailure, error.message);
  if (error instanceof Error && "code" in error && typeof error.code === "string" && error.code.startsWith("SQLITE_")) {
    const busy = error.code === "SQLITE_BUSY" || error.code === "SQLITE_LOCKED";
    return new CniError(busy ? CniCode.tryAgainLater : CniCode.stateFailure, `node state database: ${error.message}`);
  }
  return new CniError(CniCode.internal, error instanceof Error ? error.message : String(error));
}
