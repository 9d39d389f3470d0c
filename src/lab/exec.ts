/** `lab exec`: a command in one of the lab's namespaces, its stdio and exit code passed through. */
import { spawn } from "node:child_process";
import { constants } from "node:os";

/** Runs `argv` in the namespace at `netnsPath`; resolves with its exit code (128 + N when killed by signal N). */
export function execInNetns(netnsPath: string, argv: readonly string[]): Promise<number> {
  // The terminal's Ctrl-C reaches the command too; this process waits for it to end instead of dying first.
  const ignore = () => undefined;
  process.on("SIGINT", ignore);
  return new Promise<number>((resolve, reject) => {
    const child = spawn("nsenter", [`--net=${netnsPath}`, "--", ...argv], { stdio: "inherit" });
    child.on("error", (error) => reject(new Error(`cannot run ${argv[0]} in ${netnsPath}: ${error.message}`)));
    child.on("close", (code, signal) => resolve(code ?? 128 + (signal ? constants.signals[signal] : 0)));
  }).finally(() => process.off("SIGINT", ignore));
}
