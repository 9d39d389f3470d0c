/**
 * Runs the built dist/trellis (as `npm test` builds it first) for the command tests; for the
 * cluster commands, with plan files in a temp dir and a store on either backend.
 */
import { execFile } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import type { KvStore } from "../../src/store/kv.js";
import { openStore } from "../../src/store/open.js";
import { startTestEtcd, type TestEtcd } from "./etcd.js";

export const TRELLIS = resolve(dirname(fileURLToPath(import.meta.url)), "../../dist/trellis");

export interface Run {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs trellis with only the environment given (no TRELLIS_STORE/TRELLIS_PLAN from the caller's shell). */
export function runTrellis(args: readonly string[], env: Record<string, string> = {}): Promise<Run> {
  if (!existsSync(TRELLIS)) throw new Error(`${TRELLIS} is missing: build it first with node scripts/build.mjs`);
  const { TRELLIS_STORE: _store, TRELLIS_PLAN: _plan, CNI_COMMAND: _cni, ...inherited } = process.env;
  return new Promise((done) => {
    execFile(TRELLIS, args, { env: { ...inherited, ...env }, timeout: 60_000 }, (error, stdout, stderr) => {
      const code = error ? (typeof error.code === "number" ? error.code : -1) : 0;
      done({ code, stdout, stderr });
    });
  });
}

export type CliBackend = "sqlite" | "etcd";

/** A temp dir with plan files, and fresh stores on one backend; `cleanup` removes all of it. */
export interface CliFixture {
  readonly dir: string;
  /** Writes a plan file and returns its path. */
  plan(name: string, lines: readonly string[]): string;
  /** A store spec no command has used yet: a new SQLite file, or a new etcd. */
  freshSpec(): Promise<string>;
  /** Opens a spec the way the binary does (for checking what was written). */
  open(spec: string): Promise<KvStore>;
  cleanup(): Promise<void>;
}

export async function cliFixture(backend: CliBackend): Promise<CliFixture> {
  const dir = mkdtempSync(join(tmpdir(), "trellis-cluster-cli-"));
  const etcds: TestEtcd[] = [];
  const opened: KvStore[] = [];
  let counter = 0;
  return {
    dir,
    plan: (name, lines) => {
      const path = join(dir, name);
      writeFileSync(path, `${lines.join("\n")}\n`);
      return path;
    },
    // The binary keeps every etcd key under /trellis, so a fresh etcd store is a fresh etcd.
    freshSpec: async () => {
      if (backend === "sqlite") return `sqlite:${join(dir, `cluster-${counter++}.db`)}`;
      const etcd = await startTestEtcd();
      etcds.push(etcd);
      return etcd.spec;
    },
    open: async (spec) => {
      const store = await openStore(spec);
      opened.push(store);
      return store;
    },
    cleanup: async () => {
      for (const store of opened.splice(0)) await store.close().catch(() => undefined);
      for (const etcd of etcds.splice(0)) await etcd.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
