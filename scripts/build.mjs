// Bundles src/main.ts into one executable file, dist/trellis, with the better-sqlite3
// native addon embedded as a base64 comment at its end (see src/store/sqlite.ts).
import { build } from "esbuild";
import { createHash } from "node:crypto";
import { brotliCompressSync, constants } from "node:zlib";
import { appendFileSync, chmodSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { etcd3ProtoPlugin } from "./esbuild-etcd3-proto.mjs";

const require = createRequire(import.meta.url);
const addonPath = join(dirname(require.resolve("better-sqlite3/package.json")), "build/Release/better_sqlite3.node");
const addon = readFileSync(addonPath);
const addonSha = createHash("sha256").update(addon).digest("hex").slice(0, 16);

mkdirSync("dist", { recursive: true });
// dist/ sits inside an ESM package; the bundle is CommonJS, as it is when installed alone.
writeFileSync("dist/package.json", "{\"type\": \"commonjs\"}\n");
await build({
  entryPoints: ["src/main.ts"],
  outfile: "dist/trellis",
  bundle: true,
  platform: "node",
  format: "cjs",
  target: "node20",
  banner: { js: "#!/usr/bin/env node" },
  define: { TRELLIS_EMBEDDED_ADDON_SHA: JSON.stringify(addonSha) },
  legalComments: "none",
  // Node reads and compiles the whole file at every CNI call; identifiers stay readable in stack traces.
  minifyWhitespace: true,
  minifySyntax: true,
  logLevel: "warning",
  plugins: [etcd3ProtoPlugin],
});
// Brotli keeps the comment small: Node reads and decodes the whole file at every start.
const packed = brotliCompressSync(addon, { params: { [constants.BROTLI_PARAM_QUALITY]: 11, [constants.BROTLI_PARAM_LGWIN]: 24 } });
appendFileSync("dist/trellis", `\n/*TRELLIS-ADDON:${packed.toString("base64")}*/\n`);
chmodSync("dist/trellis", 0o755);
console.log(`built dist/trellis (sqlite addon ${addonSha})`);
