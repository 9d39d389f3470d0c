/** `trellis demo`: attach pods in throw-away namespaces with the plugin and show their traffic. */
import type { Command } from "commander";
import { runDemo } from "../lab/demo.js";

export function registerDemoCommand(program: Command): void {
  program
    .command("demo")
    .description("create a node and pods in throw-away network namespaces, attach them with the CNI plugin, show their traffic on IPv4 and IPv6, clean up")
    .option("--pods <n>", "how many pods (2-20)", "3")
    .action(async (options: { pods: string }) => {
      const pods = Number(options.pods);
      if (!Number.isInteger(pods) || pods < 2 || pods > 20) throw new Error(`--pods ${JSON.stringify(options.pods)} is invalid: expected a whole number from 2 to 20`);
      const ok = await runDemo({ pods, out: (line) => process.stdout.write(line + "\n") });
      if (!ok) process.exitCode = 1;
    });
}
