/** The `trellis` command line. Each command family registers itself here. */
import { Command, CommanderError } from "commander";
import { registerAgentCommand } from "./agent.js";
import { registerFlowsCommand } from "./flows.js";
import { registerInstallCniCommand } from "./install-cni.js";
import { registerLabCommands } from "./lab.js";
import { registerNodeCommands } from "./node.js";
import { registerPolicyCommands } from "./policy.js";
import { registerObjectCommands } from "./objects.js";
import { registerPlanCommands } from "./plan.js";
import { registerPodCommands } from "./pods.js";
import { registerProbeCommands } from "./probe.js";
import { registerServiceCommands } from "./service.js";
import { registerUiCommand } from "./ui.js";
import { registerVersionCommand } from "./version.js";

export async function runCli(argv: string[]): Promise<number> {
  const program = new Command("trellis")
    .description("Trellis: a Kubernetes network plugin")
    .exitOverride()
    .enablePositionalOptions()
    .configureOutput({ writeErr: (text) => process.stderr.write(text) });
  // command registrations go here, one line per family
  registerAgentCommand(program);
  registerFlowsCommand(program);
  registerInstallCniCommand(program);
  registerLabCommands(program);
  registerPlanCommands(program);
  registerPodCommands(program);
  registerProbeCommands(program);
  registerNodeCommands(program);
  registerPolicyCommands(program);
  registerObjectCommands(program);
  registerServiceCommands(program);
  registerUiCommand(program);
  registerVersionCommand(program);
  try {
    await program.parseAsync(argv, { from: "user" });
    return typeof process.exitCode === "number" ? process.exitCode : 0;
  } catch (error) {
    if (error instanceof CommanderError) return error.exitCode === 0 ? 0 : 2;
    process.stderr.write(`trellis: ${error instanceof Error ? error.message : String(error)}\n`);
    return 1;
  }
}
