/**
 * podman as a real CNI client for tests. A throw-away network namespace plays the node; podman
 * runs inside it, in a private mount namespace held by one long-lived process, with its own
 * storage, run and CNI directories under the test's directory: the CNI backend (podman 4.3 in
 * Debian has no netavark), the plugin directory holding only `trellis`, and the network config
 * directory holding only the test's conflist. podman keeps its network namespaces under
 * /run/netns and its CNI cache under /var/lib/cni, with no flag to move them, so the holder
 * binds test directories over both. Every podman command joins the holder's mount and network
 * namespaces (`nsenter -t HOLDER -m -n`), so podman, conmon, runc and the plugin see the same
 * test directories and the machine sees none of it.
 *
 * The image is a busybox root file system imported with `podman import` (no registry needed).
 */
import { execFileSync, spawn, spawnSync, type ChildProcess } from "node:child_process";
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { TestNetns } from "./netns.js";

export const PODMAN_IMAGE = "localhost/trellis-test-busybox";

export interface PodmanNode {
  readonly dir: string;
  /** Runs `podman ARGS` in the node; stdout, or throws with stderr. */
  podman(args: readonly string[]): string;
  /** Runs `podman ARGS` in the node; its status and output, whatever it is. */
  tryPodman(args: readonly string[]): { status: number | null; stdout: string; stderr: string };
  /** Removes every container (CNI DEL for each), ends the holder and deletes the directory. */
  stop(): void;
}

/** Whether podman can be used here (it is installed). */
export function podmanUnavailable(): string | false {
  const probe = spawnSync("podman", ["--version"], { encoding: "utf8" });
  if (probe.error || probe.status !== 0) return "skipped: podman is not installed (Debian: apt-get install podman)";
  return false;
}

/**
 * A podman node in `netns`, with `conflist` (a CNI network list naming its own network) as its
 * only network and `plugin` (the trellis executable) as its only CNI plugin.
 */
export async function startPodmanNode(netns: TestNetns, conflist: { name: string }, plugin: string): Promise<PodmanNode> {
  const dir = mkdtempSync(join(tmpdir(), "trellis-podman-"));
  for (const sub of ["root", "run", "tmp", "net.d", "bin", "netns", "cni-cache", "rootfs/bin", "rootfs/www", "overlay/upper", "overlay/work"]) mkdirSync(join(dir, sub), { recursive: true });
  copyFileSync(plugin, join(dir, "bin", "trellis"));
  execFileSync("chmod", ["0755", join(dir, "bin", "trellis")]);
  writeFileSync(join(dir, "net.d", `${conflist.name}.conflist`), JSON.stringify(conflist));
  writeFileSync(
    join(dir, "containers.conf"),
    [
      "[network]",
      'network_backend = "cni"',
      `cni_plugin_dirs = [${JSON.stringify(join(dir, "bin"))}]`,
      `network_config_dir = ${JSON.stringify(join(dir, "net.d"))}`,
      "[engine]",
      'cgroup_manager = "cgroupfs"',
      'events_logger = "none"',
      'runtime = "runc"',
      "",
    ].join("\n"),
  );
  copyFileSync("/bin/busybox", join(dir, "rootfs", "bin", "busybox"));
  execFileSync("tar", ["-C", join(dir, "rootfs"), "-cf", join(dir, "rootfs.tar"), "."]);
  const holder = await startHolder(netns, dir);
  const env = { ...process.env, CONTAINERS_CONF: join(dir, "containers.conf") };
  const global = ["--root", join(dir, "root"), "--runroot", join(dir, "run"), "--tmpdir", join(dir, "tmp"), "--storage-driver", "vfs"];
  const tryPodman = (args: readonly string[]) => {
    const result = spawnSync("nsenter", ["-t", String(holder.pid), "-m", "-n", "podman", ...global, ...args], { encoding: "utf8", env, timeout: 120_000 });
    return { status: result.status, stdout: result.stdout ?? "", stderr: result.stderr ?? result.error?.message ?? "" };
  };
  const podman = (args: readonly string[]) => {
    const result = tryPodman(args);
    if (result.status !== 0) throw new Error(`podman ${args.join(" ")} failed (${result.status}): ${result.stderr.trim()}`);
    return result.stdout;
  };
  const node: PodmanNode = {
    dir,
    podman,
    tryPodman,
    stop() {
      try {
        tryPodman(["rm", "--all", "--force", "--time", "0"]);
      } finally {
        holder.stdin?.end();
        holder.kill("SIGKILL");
        spawnSync("umount", ["-l", join(dir, "netns")]);
        rmSync(dir, { recursive: true, force: true });
      }
    },
  };
  podman(["import", join(dir, "rootfs.tar"), PODMAN_IMAGE]);
  return node;
}

/** The process that holds the private mount namespace: it binds the test's directories, says "ready", and waits on stdin. */
async function startHolder(netns: TestNetns, dir: string): Promise<ChildProcess> {
  const script = [
    "set -eu",
    // The copies of the machine's /run/netns mounts would keep other namespaces alive.
    "if grep -q ' /run/netns ' /proc/self/mountinfo; then umount -n -R -l /run/netns; fi",
    // Where the machine has no /var/lib/cni, an overlay on /var/lib makes one in the test's
    // directory, so that nothing is created outside it. (/run/netns exists: the test's own
    // namespaces were made with `ip netns add`.)
    "if [ ! -d /var/lib/cni ]; then",
    `  mount -n -t overlay trellis-test -o lowerdir=/var/lib,upperdir=${join(dir, "overlay", "upper")},workdir=${join(dir, "overlay", "work")} /var/lib`,
    "  mkdir /var/lib/cni",
    "fi",
    `mount -n --bind ${join(dir, "netns")} /run/netns`,
    `mount -n --bind ${join(dir, "cni-cache")} /var/lib/cni`,
    // podman keeps its locks in /dev/shm/libpod_lock: a tmpfs of this namespace's own, gone
    // with it, rather than a file left in the machine's.
    "mount -n -t tmpfs -o mode=1777,size=16m trellis-test-shm /dev/shm",
    "echo ready",
    "read -r _ || true",
  ].join("\n");
  writeFileSync(join(dir, "holder.sh"), `${script}\n`);
  const holder = spawn("nsenter", [`--net=${netns.path}`, "unshare", "--mount", "--propagation", "private", "sh", join(dir, "holder.sh")], { stdio: ["pipe", "pipe", "pipe"] });
  let stderr = "";
  holder.stderr!.on("data", (chunk: Buffer) => (stderr += chunk.toString("utf8")));
  const ready = await new Promise<boolean>((resolve) => {
    const timer = setTimeout(() => resolve(false), 10_000);
    holder.stdout!.on("data", (chunk: Buffer) => {
      if (chunk.toString("utf8").includes("ready")) {
        clearTimeout(timer);
        resolve(true);
      }
    });
    holder.on("close", () => resolve(false));
  });
  if (!ready) {
    holder.kill("SIGKILL");
    throw new Error(`the mount namespace for podman in ${netns.name} did not come up: ${stderr.trim() || "timed out"}`);
  }
  return holder;
}
