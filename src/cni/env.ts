/** The CNI_* environment a runtime passes, validated per verb. */
import { CniCode, CniError } from "../podnet/errors.js";

export type CniCommand = "ADD" | "DEL" | "CHECK" | "VERSION" | "GC" | "STATUS";

export interface CniEnv {
  readonly command: CniCommand;
  readonly containerId: string;
  readonly netns: string;
  readonly ifname: string;
  /** CNI_ARGS as key/value pairs, in order. */
  readonly args: ReadonlyMap<string, string>;
  readonly path: readonly string[];
}

const COMMANDS: readonly CniCommand[] = ["ADD", "DEL", "CHECK", "VERSION", "GC", "STATUS"];
const CONTAINER_ID = /^[A-Za-z0-9][A-Za-z0-9_.\-]*$/;
/** Runtimes use 64 hex digits; anything past this is not a container ID. */
const MAX_CONTAINER_ID = 256;

/** Reads and validates the environment; every problem is a code-4 error naming the variable. */
export function parseCniEnv(env: NodeJS.ProcessEnv): CniEnv {
  const command = env.CNI_COMMAND as CniCommand;
  if (!COMMANDS.includes(command)) {
    throw new CniError(CniCode.invalidEnvironment, `CNI_COMMAND ${JSON.stringify(env.CNI_COMMAND ?? "")} is not a CNI verb: expected one of ${COMMANDS.join(", ")}`);
  }
  const perAttachment = command === "ADD" || command === "DEL" || command === "CHECK";
  const containerId = env.CNI_CONTAINERID ?? "";
  const netns = env.CNI_NETNS ?? "";
  const ifname = env.CNI_IFNAME ?? "";
  if (perAttachment) {
    if (!containerId) throw missing("CNI_CONTAINERID", command);
    if (!CONTAINER_ID.test(containerId)) {
      throw new CniError(CniCode.invalidEnvironment, `CNI_CONTAINERID ${JSON.stringify(containerId)} is invalid: it must start with a letter or digit and hold only letters, digits, "_", "." and "-"`);
    }
    if (containerId.length > MAX_CONTAINER_ID) {
      throw new CniError(CniCode.invalidEnvironment, `CNI_CONTAINERID is ${containerId.length} characters long; at most ${MAX_CONTAINER_ID} are allowed`);
    }
    if (command !== "DEL" && !netns) throw missing("CNI_NETNS", command);
    if (!ifname) throw missing("CNI_IFNAME", command);
    const problem = interfaceNameProblem(ifname);
    if (problem) throw new CniError(CniCode.invalidEnvironment, `CNI_IFNAME ${JSON.stringify(ifname)} is invalid: ${problem}`);
  }
  return {
    command,
    containerId,
    netns,
    ifname,
    args: parseCniArgs(env.CNI_ARGS ?? ""),
    path: (env.CNI_PATH ?? "").split(":").filter(Boolean),
  };
}

/**
 * Why a name is unusable for an interface Trellis creates, or undefined if it is fine. Stricter
 * than Linux: `%` would make the kernel pick a numbered name of its own.
 */
export function interfaceNameProblem(name: string): string | undefined {
  if (name.length === 0) return "it is empty";
  if (name.length > 15) return `it is ${name.length} characters long; Linux allows at most 15`;
  if (name === "." || name === "..") return `"${name}" is not allowed`;
  if (name.includes("%")) return 'it must not contain "%": the kernel would replace %d with a number of its own';
  if (!/^[A-Za-z0-9_.\-]+$/.test(name)) return 'it may hold only letters, digits, "_", "." and "-"';
  return undefined;
}

function parseCniArgs(text: string): Map<string, string> {
  const args = new Map<string, string>();
  for (const pair of text.split(";")) {
    if (!pair) continue;
    const equals = pair.indexOf("=");
    if (equals <= 0) throw new CniError(CniCode.invalidEnvironment, `CNI_ARGS entry ${JSON.stringify(pair)} is not KEY=VALUE`);
    args.set(pair.slice(0, equals), pair.slice(equals + 1));
  }
  return args;
}

function missing(name: string, command: string): CniError {
  return new CniError(CniCode.invalidEnvironment, `${name} is required for ${command} but is not set`);
}
