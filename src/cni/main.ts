/** Entry point when the executable runs as a CNI plugin: stdin config, CNI_* env, result or error JSON on stdout. */
import { readFileSync } from "node:fs";
import { FAULT_POINTS, openPodNet, type FaultPoint } from "../podnet/handle.js";
import { CniCode, CniError, formatCniError } from "../podnet/errors.js";
import { handleCniRequest } from "./plugin.js";
import { CURRENT_VERSION } from "./version.js";

/**
 * Runs one CNI invocation and returns the exit code. `TRELLIS_FAULT_POINT` names a step at which
 * the process kills itself with SIGKILL; the crash tests use it to prove what each step leaves.
 */
export async function runCniPlugin(): Promise<number> {
  let stdin: string;
  try {
    stdin = readFileSync(0, "utf8");
  } catch (error) {
    const failure = new CniError(CniCode.ioFailure, `cannot read the network configuration from stdin: ${(error as Error).message}`);
    process.stdout.write(formatCniError(failure, CURRENT_VERSION) + "\n");
    return 1;
  }
  const requested = process.env.TRELLIS_FAULT_POINT;
  const faultPoint = FAULT_POINTS.find((point) => point === requested) as FaultPoint | undefined;
  const reply = await handleCniRequest(
    { env: process.env, stdin },
    { acquire: (stateDir, field) => openPodNet(stateDir, { field, faultPoint }), release: (net) => net.close() },
  );
  process.stdout.write(reply.stdout);
  process.stderr.write(reply.stderr);
  return reply.exitCode;
}
