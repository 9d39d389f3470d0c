// Builds dist/trellis: one self-contained executable (a Node.js single executable application).
// The bundle (dist/trellis.cjs) is injected into a copy of this Node binary with its V8 code
// cache, and the better-sqlite3 native addon travels inside as an asset (see src/store/sqlite.ts).
// A runtime starts the plugin once per pod, so start-up time matters: the code cache spares
// compiling the bundle at every call, and the binary needs no Node.js on the node.
import { build } from "esbuild";
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { chmodSync, copyFileSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { inject } from "postject";
import { etcd3ProtoPlugin } from "./esbuild-etcd3-proto.mjs";

const require = createRequire(import.meta.url);
const addonPath = join(dirname(require.resolve("better-sqlite3/package.json")), "build/Release/better_sqlite3.node");
// Known at build time so a CNI call finds the extracted addon without hashing 2 MB first.
const addonSha = createHash("sha256").update(readFileSync(addonPath)).digest("hex").slice(0, 16);

mkdirSync("dist", { recursive: true });
await build({
  entryPoints: ["src/main.ts"],
  outfile: "dist/trellis.cjs",
  bundle: true,
  platform: "node",
  format: "cjs",
  target: "node20",
  legalComments: "none",
  // Identifiers stay readable in stack traces.
  minifyWhitespace: true,
  minifySyntax: true,
  logLevel: "warning",
  plugins: [etcd3ProtoPlugin],
  define: { TRELLIS_ADDON_SHA: JSON.stringify(addonSha) },
});

const seaConfig = {
  main: "dist/trellis.cjs",
  output: "dist/trellis.blob",
  disableExperimentalSEAWarning: true,
  useCodeCache: true,
  assets: { "better_sqlite3.node": addonPath },
};
writeFileSync("dist/sea-config.json", JSON.stringify(seaConfig, null, 2));
execFileSync(process.execPath, ["--experimental-sea-config", "dist/sea-config.json"], { stdio: "pipe" });

// Built beside and renamed into place, so a running lab or test never execs half a binary.
const building = `dist/trellis.building-${process.pid}`;
rmSync(building, { force: true });
copyFileSync(process.execPath, building);
chmodSync(building, 0o755);
// postject warns once per ELF note section it does not rewrite; those notes are irrelevant here.
const warn = console.warn;
console.warn = (...args) => String(args[0]).includes("Can't find string offset for section name") || warn(...args);
try {
  await inject(building, "NODE_SEA_BLOB", readFileSync("dist/trellis.blob"), {
    sentinelFuse: "NODE_SEA_FUSE_fce680ab2cc467b6e072b8b5df1996b2",
  });
} finally {
  console.warn = warn;
}
rmSync("dist/trellis.blob");
renameSync(building, "dist/trellis");
console.log(`built dist/trellis (${process.version} single executable with the sqlite addon)`);

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
