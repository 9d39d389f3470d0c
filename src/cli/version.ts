/** `trellis version` (and `--version`): this trellis and the Node.js release it runs on. */
import type { Command } from "commander";
import { buildInfo } from "../agent/build-info.js";

export function registerVersionCommand(program: Command): void {
  const text = () => {
    const info = buildInfo();
    return `trellis ${info.version}\nNode.js ${info.node} (V8 ${info.v8}, SQLite ${info.sqlite}, OpenSSL ${info.openssl}) ${info.platform}\n`;
  };
  program.version(text().trimEnd(), "--version", "print the trellis version and the Node.js release it runs on");
  program
    .command("version")
    .description("print the trellis version and the Node.js release it runs on (with its SQLite and OpenSSL)")
    .option("-o, --output <format>", "text or json", "text")
    .action((options: { output: string }) => {
      if (options.output !== "text" && options.output !== "json") throw new Error(`--output ${JSON.stringify(options.output)}: expected text or json`);
      process.stdout.write(options.output === "json" ? `${JSON.stringify(buildInfo())}\n` : text());
    });
}
