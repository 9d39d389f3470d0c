/**
 * `trellis install-cni`: puts the CNI plugin where the node's container runtime looks for plugins,
 * as the DaemonSet's init step does: the native plugin as `trellis` (it forwards each call to the
 * node's agent) with this executable beside it as `trellis-standalone` (what the native plugin
 * runs when no agent answers). Each file is copied under a temporary name and renamed into place,
 * so a runtime calling the plugin meanwhile runs the old file or the new one, never half of one.
 * The conflist is the agent's to write, once the node's routes are in place.
 */
import { chmodSync, copyFileSync, existsSync, mkdirSync, renameSync, rmSync } from "node:fs";
import { dirname, isAbsolute, join } from "node:path";
import { Option, type Command } from "commander";
import { selfInvocation } from "../lab/probe.js";

export function registerInstallCniCommand(program: Command): void {
  program
    .command("install-cni")
    .description("install the CNI plugin (native trellis and trellis-standalone) into the runtime's plugin directory")
    .addOption(new Option("--cni-bin-dir <dir>", "the container runtime's CNI plugin directory").env("TRELLIS_CNI_BIN_DIR").default("/opt/cni/bin"))
    .action((options: { cniBinDir: string }) => {
      const dir = options.cniBinDir;
      if (!isAbsolute(dir) || /[\0\n]/.test(dir)) throw new Error(`--cni-bin-dir ${JSON.stringify(dir)} is not an absolute path`);
      const self = selfInvocation();
      if (self.length !== 1) throw new Error("install-cni runs from the built trellis executable (dist/trellis), not from sources");
      const native = join(dirname(self[0]), "trellis-cni");
      if (!existsSync(native)) throw new Error(`the native plugin ${native} is not beside this trellis: build it with npm run build`);
      mkdirSync(dir, { recursive: true });
      for (const [from, to] of [[self[0], "trellis-standalone"], [native, "trellis"]] as const) {
        const target = join(dir, to);
        const temporary = join(dir, `.${to}.${process.pid}.tmp`);
        try {
          copyFileSync(from, temporary);
          chmodSync(temporary, 0o755);
          renameSync(temporary, target);
        } finally {
          rmSync(temporary, { force: true });
        }
        process.stdout.write(`installed ${target}\n`);
      }
    });
}
