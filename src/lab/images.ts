/**
 * Container images made on this machine, without a registry or a base image: each is one layer
 * whose root filesystem holds the programs it needs and the shared libraries they link (found
 * with ldd, so the files are the machine's Debian packages'), written as a docker-archive that
 * `ctr images import` takes. An archive is rebuilt only when an input file or the spec changes.
 */
import { createHash } from "node:crypto";
import {
  chmodSync, copyFileSync, createReadStream, existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, realpathSync, renameSync, rmSync, statSync, symlinkSync, writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, posix } from "node:path";
import { run } from "../linux/exec.js";

export interface ImageSpec {
  /** The image's reference, `registry/repository:tag`. */
  readonly ref: string;
  /** Further references to the same image (other tags its users ask for). */
  readonly moreRefs?: readonly string[];
  /** Programs copied with every shared library they load: `from` on this machine, `to` in the image. */
  readonly programs?: ReadonlyArray<{ readonly from: string; readonly to: string }>;
  /** Files copied as they are (data, static programs). */
  readonly files?: ReadonlyArray<{ readonly from: string; readonly to: string }>;
  /** Symbolic links: `path` in the image points to `target`. */
  readonly links?: ReadonlyArray<{ readonly path: string; readonly target: string }>;
  /** Small text files written into the image (replacing one the image would have otherwise). */
  readonly texts?: ReadonlyArray<{ readonly path: string; readonly text: string }>;
  readonly entrypoint?: readonly string[];
  readonly cmd?: readonly string[];
  readonly env?: readonly string[];
}

/** A built image: its reference and its archive. */
export interface ImageArchive {
  readonly ref: string;
  readonly file: string;
}

const PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/** Debian 12 merges /bin, /sbin and /lib into /usr: an image that does too finds libraries where ldd names them. */
const MERGED_USR = ["bin", "sbin", "lib", "lib64"];

/** The archive of `spec` in `cacheDir`, built if missing or stale. */
export async function buildImage(spec: ImageSpec, cacheDir: string): Promise<ImageArchive> {
  const programs = await Promise.all((spec.programs ?? []).map(async (program) => ({ ...program, libraries: await sharedLibraries(program.from) })));
  const inputs = [...programs.flatMap((program) => [program.from, ...program.libraries]), ...(spec.files ?? []).map((file) => file.from)];
  const key = createHash("sha256").update(JSON.stringify(spec));
  for (const input of inputs) {
    const stat = statSync(input);
    key.update(`\0${input}\0${stat.size}\0${stat.mtimeMs}\0${stat.ino}`);
  }
  const digest = key.digest("hex").slice(0, 16);
  const stem = `${spec.ref.replace(/[^A-Za-z0-9.-]+/g, "_")}-`;
  const file = join(cacheDir, `${stem}${digest}.tar`);
  if (existsSync(file)) return { ref: spec.ref, file };
  mkdirSync(cacheDir, { recursive: true });
  const work = mkdtempSync(join(tmpdir(), "trellis-image-"));
  try {
    const root = join(work, "rootfs");
    mkdirSync(root);
    for (const dir of MERGED_USR) {
      mkdirSync(join(root, "usr", dir), { recursive: true });
      symlinkSync(`usr/${dir}`, join(root, dir));
    }
    for (const dir of ["etc", "tmp", "proc", "sys", "dev", "run", "var", "root"]) mkdirSync(join(root, dir), { recursive: true });
    chmodSync(join(root, "tmp"), 0o1777);
    symlinkSync("../run", join(root, "var", "run"));
    writeFileSync(join(root, "etc", "passwd"), "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n");
    writeFileSync(join(root, "etc", "group"), "root:x:0:\nnogroup:x:65534:\n");
    writeFileSync(join(root, "etc", "nsswitch.conf"), "passwd: files\ngroup: files\nhosts: files dns\n");
    for (const program of programs) {
      place(root, program.from, program.to);
      for (const library of program.libraries) place(root, library, library);
    }
    for (const entry of spec.files ?? []) place(root, entry.from, entry.to);
    for (const link of spec.links ?? []) {
      const path = inImage(root, link.path);
      mkdirSync(dirname(path), { recursive: true });
      rmSync(path, { force: true });
      symlinkSync(link.target, path);
    }
    for (const text of spec.texts ?? []) {
      const path = inImage(root, text.path);
      mkdirSync(dirname(path), { recursive: true });
      writeFileSync(path, text.text);
    }
    await writeDockerArchive(spec, root, work, `${file}.tmp`);
    renameSync(`${file}.tmp`, file);
    // The archives this one replaces (the same reference from older inputs) go: a cache that
    // kept every build grew by an image per change of the executable. One being read stays
    // readable until its reader closes it.
    for (const name of readdirSync(cacheDir)) {
      if (name.startsWith(stem) && /^[0-9a-f]{16}\.tar$/.test(name.slice(stem.length)) && join(cacheDir, name) !== file) rmSync(join(cacheDir, name), { force: true });
    }
    return { ref: spec.ref, file };
  } finally {
    rmSync(work, { recursive: true, force: true });
    rmSync(`${file}.tmp`, { force: true });
  }
}

/** Every shared library `program` loads (the loader included), as absolute paths; none for a static program. */
export async function sharedLibraries(program: string): Promise<string[]> {
  let stdout: string;
  try {
    ({ stdout } = await run("ldd", [program]));
  } catch (error) {
    if (/not a dynamic executable|statically linked/.test((error as Error).message)) return [];
    throw error;
  }
  if (/statically linked/.test(stdout)) return [];
  const libraries: string[] = [];
  for (const line of stdout.split("\n")) {
    const match = /=>\s+(\/\S+)\s+\(/.exec(line) ?? /^\s*(\/\S+)\s+\(/.exec(line);
    if (match) libraries.push(match[1]);
    else if (/=>\s+not found/.test(line)) throw new Error(`${program} needs ${line.trim()}`);
  }
  return libraries;
}

function inImage(root: string, path: string): string {
  if (!path.startsWith("/") || path.split("/").includes("..")) throw new Error(`image path ${JSON.stringify(path)} is not absolute or leaves the image`);
  return join(root, posix.normalize(path));
}

/** Copies `from` (its target, if a link) to `to` in the image, keeping its mode. */
function place(root: string, from: string, to: string): void {
  const path = inImage(root, to);
  mkdirSync(dirname(path), { recursive: true });
  if (existsSync(path) && !lstatSync(path).isSymbolicLink()) return;
  rmSync(path, { force: true });
  const source = realpathSync(from);
  copyFileSync(source, path);
  chmodSync(path, statSync(source).mode & 0o7777);
}

/**
 * A docker-archive (docker save's format): the layer as a tar, the image config, and
 * manifest.json naming the ref. The layer's owners and times are fixed, so the same files make
 * the same image id.
 */
async function writeDockerArchive(spec: ImageSpec, root: string, work: string, file: string): Promise<void> {
  const out = join(work, "archive");
  mkdirSync(join(out, "layer"), { recursive: true });
  const layer = join(out, "layer", "layer.tar");
  await run("tar", ["--sort=name", "--owner=0", "--group=0", "--numeric-owner", "--mtime=@0", "-C", root, "-cf", layer, "."]);
  const diffId = `sha256:${await sha256File(layer)}`;
  const arch = process.arch === "x64" ? "amd64" : process.arch;
  const config = JSON.stringify({
    architecture: arch,
    os: "linux",
    config: {
      Env: spec.env ?? [PATH_ENV],
      ...(spec.entrypoint ? { Entrypoint: spec.entrypoint } : {}),
      ...(spec.cmd ? { Cmd: spec.cmd } : {}),
      WorkingDir: "/",
    },
    rootfs: { type: "layers", diff_ids: [diffId] },
    history: [{ created_by: "trellis lab images", created: "1970-01-01T00:00:00Z" }],
    created: "1970-01-01T00:00:00Z",
  });
  const configName = `${createHash("sha256").update(config).digest("hex")}.json`;
  writeFileSync(join(out, configName), config);
  writeFileSync(join(out, "manifest.json"), JSON.stringify([{ Config: configName, RepoTags: [spec.ref, ...(spec.moreRefs ?? [])], Layers: ["layer/layer.tar"] }]));
  await run("tar", ["--owner=0", "--group=0", "--numeric-owner", "-C", out, "-cf", file, "manifest.json", configName, "layer/layer.tar"]);
}

async function sha256File(path: string): Promise<string> {
  const hash = createHash("sha256");
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest("hex");
}
