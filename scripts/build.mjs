// Builds dist/trellis: one self-contained executable (a Node.js single executable application)
// made by the Node.js release the project pins (package.json `engines`, installed by `npm ci`
// from the registry's node-linux-* package, first on `npm run`'s PATH). The bundle
// (dist/trellis.cjs) goes into a copy of that binary with its V8 code cache; SQLite is Node's own
// (node:sqlite), so no native addon travels with it.
// A runtime starts the plugin once per pod, so start-up time matters: the code cache spares
// compiling the bundle at every call, and the binary needs no Node.js on the node.
import { build } from "esbuild";
import { execFileSync } from "node:child_process";
import { chmodSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { etcd3ProtoPlugin } from "./esbuild-etcd3-proto.mjs";

const pinned = JSON.parse(readFileSync("package.json", "utf8")).engines.node;
if (process.version !== `v${pinned}`) {
  throw new Error(
    `dist/trellis is built by Node.js ${pinned} (package.json engines), but this is ${process.version} at ${process.execPath}: ` +
      `run the build through npm (npm run build), which puts node_modules/.bin/node first on PATH; npm ci installs it (node-linux-${process.arch})`,
  );
}

// The flow map's page script (src/ui/page/, with cytoscape) is bundled for the browser first, and
// dist/trellis carries its text in place of src/ui/page-script.ts: the executable serves it with
// nothing beside it and no network (Node's type stripping loads that file: it imports no Trellis code).
const { bundlePageScript } = await import("../src/ui/page-script.ts");
const pageScriptText = bundlePageScript();
const uiPageScriptPlugin = {
  name: "ui-page-script",
  setup(build) {
    build.onLoad({ filter: /src[\\/]ui[\\/]page-script\.ts$/ }, () => ({
      contents: `export function pageScript() { return ${JSON.stringify(pageScriptText)}; }`,
      loader: "js",
    }));
  },
};

mkdirSync("dist", { recursive: true });
await build({
  entryPoints: ["src/main.ts"],
  outfile: "dist/trellis.cjs",
  bundle: true,
  platform: "node",
  format: "cjs",
  target: `node${pinned.split(".")[0]}`,
  legalComments: "none",
  // Identifiers stay readable in stack traces.
  minifyWhitespace: true,
  minifySyntax: true,
  logLevel: "warning",
  plugins: [etcd3ProtoPlugin, uiPageScriptPlugin],
});

// Built beside and renamed into place, so a running lab or test never execs half a binary.
const building = `dist/trellis.building-${process.pid}`;
rmSync(building, { force: true });
// The official binary carries its debug information (a third of its size); the executable ships
// without it, as distributions ship Node.js. Exported symbols (.dynsym) stay.
const stripped = `dist/node.stripped-${process.pid}`;
try {
  execFileSync("strip", ["--strip-all", "-o", stripped, process.execPath], { stdio: ["ignore", "inherit", "inherit"] });
} catch (error) {
  throw new Error(`stripping ${process.execPath} needs strip (Debian: binutils, which gcc brings): ${error.message}`);
}
const seaConfig = {
  main: "dist/trellis.cjs",
  executable: stripped,
  output: building,
  disableExperimentalSEAWarning: true,
  useCodeCache: true,
  // Node.js 26's V8 lets its young generation grow far beyond Node.js 20's: the agent at 1,000
  // peers held 119 MiB of anonymous memory with its default, 52 MiB with 4 MiB semi-spaces
  // (Node.js 20: 74), and synced no slower (bench:net).
  execArgv: ["--max-semi-space-size=4"],
};
writeFileSync("dist/sea-config.json", JSON.stringify(seaConfig, null, 2));
try {
  execFileSync(process.execPath, ["--build-sea", "dist/sea-config.json"], { stdio: "pipe" });
} finally {
  rmSync(stripped, { force: true });
}
chmodSync(building, 0o755);
renameSync(building, "dist/trellis");
console.log(`built dist/trellis (${process.version} single executable)`);

// The native CNI plugin: a small static C program that forwards each call to the node's agent
// (native/cni-plugin.c). C rather than Go: it starts in a quarter of the time, on every CNI call.
try {
  execFileSync(process.env.CC ?? "cc", ["-O2", "-Wall", "-Wextra", "-Werror", "-static", "-o", "dist/trellis-cni.building", "native/cni-plugin.c"], {
    stdio: ["ignore", "inherit", "inherit"],
  });
} catch (error) {
  throw new Error(`building the native CNI plugin (native/cni-plugin.c) needs a C compiler with static libc (Debian: gcc, libc6-dev): ${error.message}`);
}
renameSync("dist/trellis-cni.building", "dist/trellis-cni");
console.log("built dist/trellis-cni (static native CNI plugin)");

// The agent's spawn helper (native/spawn-helper.c): forks for the agent, whose own forks stall it.
execFileSync(process.env.CC ?? "cc", ["-O2", "-Wall", "-Wextra", "-Werror", "-static", "-o", "dist/trellis-spawn.building", "native/spawn-helper.c"], {
  stdio: ["ignore", "inherit", "inherit"],
});
renameSync("dist/trellis-spawn.building", "dist/trellis-spawn");
console.log("built dist/trellis-spawn (the agent's static spawn helper)");

// The Service proxy's netlink writer (native/nft-batch.c): sends a batch the agent built, without
// nft's read-back of the whole ruleset before every change.
execFileSync(process.env.CC ?? "cc", ["-O2", "-Wall", "-Wextra", "-Werror", "-static", "-o", "dist/trellis-nft-batch.building", "native/nft-batch.c"], {
  stdio: ["ignore", "inherit", "inherit"],
});
renameSync("dist/trellis-nft-batch.building", "dist/trellis-nft-batch");
console.log("built dist/trellis-nft-batch (the Service proxy's static netlink writer)");
