/**
 * The one executable. With CNI_COMMAND set it is the CNI plugin; otherwise the CLI.
 * Each path is imported lazily so a CNI call never initialises the CLI's modules.
 */
async function main(): Promise<void> {
  if (process.env.CNI_COMMAND !== undefined) {
    const { runCniPlugin } = await import("./cni/main.js");
    process.exitCode = await runCniPlugin();
  } else {
    const { runCli } = await import("./cli/main.js");
    process.exitCode = await runCli(process.argv.slice(2));
  }
}

void main();
