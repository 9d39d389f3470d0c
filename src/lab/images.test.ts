import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { buildImage, sharedLibraries } from "./images.js";

const work = mkdtempSync(join(tmpdir(), "trellis-images-test-"));
after(() => rmSync(work, { recursive: true, force: true }));

function entries(archive: string): string[] {
  return execFileSync("tar", ["-tf", archive], { encoding: "utf8" }).split("\n").filter(Boolean);
}

describe("lab/images", () => {
  it("finds a program's shared libraries with the loader, and none for a static one", async () => {
    const libraries = await sharedLibraries("/usr/bin/true");
    assert.ok(libraries.some((library) => /\/libc\.so\.6$/.test(library)), libraries.join(" "));
    assert.ok(libraries.some((library) => /ld-linux/.test(library)), libraries.join(" "));
    assert.deepEqual(await sharedLibraries("/usr/bin/busybox"), []);
  });

  it("writes a docker-archive: the ref as its tag, one layer with the program and its libraries, a config naming the layer's digest", async () => {
    const image = await buildImage({ ref: "example.test/true:1", programs: [{ from: "/usr/bin/true", to: "/bin/true" }], links: [{ path: "/bin/false", target: "true" }], entrypoint: ["/bin/true"] }, work);
    assert.deepEqual(entries(image.file).sort(), ["layer/layer.tar", "manifest.json", entries(image.file).find((entry) => entry.endsWith(".json") && entry !== "manifest.json")!].sort());
    const out = join(work, "out");
    execFileSync("mkdir", ["-p", out]);
    execFileSync("tar", ["-xf", image.file, "-C", out]);
    const manifest = JSON.parse(readFileSync(join(out, "manifest.json"), "utf8")) as Array<{ Config: string; RepoTags: string[]; Layers: string[] }>;
    assert.deepEqual(manifest[0].RepoTags, ["example.test/true:1"]);
    const config = JSON.parse(readFileSync(join(out, manifest[0].Config), "utf8")) as { config: { Entrypoint: string[] }; rootfs: { diff_ids: string[] } };
    assert.deepEqual(config.config.Entrypoint, ["/bin/true"]);
    // Bug caught: a config whose layer digest is not the layer's, which ctr refuses on import.
    assert.equal(config.rootfs.diff_ids[0], `sha256:${createHash("sha256").update(readFileSync(join(out, "layer", "layer.tar"))).digest("hex")}`);
    const layer = entries(join(out, "layer", "layer.tar"));
    // Bug caught: the program without the libraries it loads, which fails with "not found" in the container.
    for (const path of ["./usr/bin/true", "./bin", "./lib64", "./usr/bin/false"]) assert.ok(layer.includes(path), `${path} in ${layer.join(" ")}`);
    assert.ok(layer.some((path) => /libc\.so\.6$/.test(path)));
  });

  it("reuses an archive while its inputs are unchanged, and makes another when the spec changes", async () => {
    const spec = { ref: "example.test/cache:1", files: [{ from: "/usr/bin/busybox", to: "/bin/busybox" }] };
    const first = await buildImage(spec, work);
    const mtime = statSync(first.file).mtimeMs;
    const again = await buildImage(spec, work);
    assert.equal(again.file, first.file);
    assert.equal(statSync(again.file).mtimeMs, mtime);
    const unrelated = await buildImage({ ...spec, ref: "example.test/cache-other:1" }, work);
    const other = await buildImage({ ...spec, cmd: ["sh"] }, work);
    assert.notEqual(other.file, first.file);
    // Bug caught: every build of a reference kept (the cache grew by an image per change).
    assert.equal(existsSync(first.file), false, "the archive it replaces is gone");
    assert.equal(existsSync(unrelated.file), true, "another reference's archive stays");
  });

  it("refuses an image path that is relative or leaves the image", async () => {
    await assert.rejects(buildImage({ ref: "example.test/bad:1", files: [{ from: "/usr/bin/busybox", to: "/../etc/passwd" }] }, work), /image path "\/..\/etc\/passwd" is not absolute or leaves the image/);
    await assert.rejects(buildImage({ ref: "example.test/bad:2", links: [{ path: "bin/x", target: "/" }] }, work), /image path "bin\/x" is not absolute/);
  });
});

describe("lab/images: a userland of real programs and busybox applets", () => {
  it("runs in the image's root: the shell is dash, grep and the other applets are busybox, nc is the real one", async () => {
    const { busyboxLinks } = await import("./lab-images.js");
    const programs = new Map([["sh", "/usr/bin/dash"], ["nc", "/usr/bin/nc.openbsd"]]);
    const image = await buildImage({
      ref: "example.test/userland:1",
      files: [{ from: "/usr/bin/busybox", to: "/bin/busybox" }],
      programs: [...programs].map(([name, from]) => ({ from, to: `/usr/bin/${name}` })),
      links: await busyboxLinks(new Set(programs.keys())),
    }, work);
    const root = join(work, "userland");
    execFileSync("mkdir", ["-p", join(root, "fs")]);
    execFileSync("tar", ["-xf", image.file, "-C", root]);
    execFileSync("tar", ["-xf", join(root, "layer", "layer.tar"), "-C", join(root, "fs")]);
    // Bug caught: busybox's own name in its applet list, which made /bin/busybox a link to itself
    // ("Too many levels of symbolic links" for every applet), and the e2e suite's `grep` fail.
    const out = execFileSync("chroot", [join(root, "fs"), "/bin/sh", "-c", "echo hello | grep -c hello; readlink /bin/sh || echo real-sh; nc -h 2>&1 | grep -c -- -u"], { encoding: "utf8" });
    assert.deepEqual(out.trim().split("\n"), ["1", "real-sh", "1"]);
  });
});
