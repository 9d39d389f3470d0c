/**
 * scripts/setup-debian.sh must never stop or disable a service: an earlier version ran
 * `systemctl disable --now etcd containerd`, which on a real node stops the container runtime.
 * The script runs against stub executables first on PATH, from a copy of the repository layout
 * (it cds to its own ../ and runs `npm ci`), so nothing is installed and no service is touched.
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, realpathSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";

const execFileAsync = promisify(execFile);

const SCRIPT = join(import.meta.dirname, "..", "scripts", "setup-debian.sh");
const PACKAGES = [
  "iproute2", "nftables", "conntrack", "util-linux", "containerd", "runc", "containernetworking-plugins",
  "busybox-static", "etcd-server", "iperf3", "iputils-ping", "procps", "gcc", "libc6-dev", "podman", "openssl",
  "dash", "netcat-openbsd", "curl", "wget", "bind9-dnsutils", "nginx-light", "chromium",
];
/** Whatever could stop, disable or (re)start a service. */
const SERVICE_TOOLS = ["systemctl", "service", "invoke-rc.d", "deb-systemd-invoke"];
const STUBS = ["dpkg-query", "apt-get", "npm", ...SERVICE_TOOLS];
const POLICY = "/usr/sbin/policy-rc.d";

/**
 * Each stub appends one line: its name, then its arguments, separated by US (0x1f), then PWD,
 * DEBIAN_FRONTEND, and for npm the node it would run on (the first node on PATH) and nodedir.
 */
const STUB = `#!/bin/bash
{
  printf '%s' "$(basename "$0")"
  printf '\\x1f%s' "$@"
  printf '\\x1e%s\\x1e%s' "$PWD" "\${DEBIAN_FRONTEND-}"
  if [[ $(basename "$0") == npm ]]; then printf '\\x1e%s\\x1e%s' "$(type -P node)" "\${npm_config_nodedir-}"; fi
  printf '\\n'
} >>"$STUB_LOG"
if [[ $(basename "$0") == apt-get && -n \${STUB_PROBE_POLICY-} ]]; then
  # What invoke-rc.d would be told during this apt-get run: 101 forbids starting a service.
  if [[ -x ${POLICY} ]]; then status=0; ${POLICY} containerd start || status=$?; else status=absent; fi
  printf 'policy-rc.d\\x1f%s\\x1e%s\\x1e\\n' "$status" "$PWD" >>"$STUB_LOG"
fi
if [[ $(basename "$0") == npm && $1 == install && $2 == --prefix ]]; then
  # Stands in for the registry's node-linux-<arch> package: a node that reports that version.
  package="\${!#}"
  mkdir -p "$3/node_modules/\${package%@*}/bin"
  printf '#!/bin/sh\\necho v%s\\n' "\${package##*@}" >"$3/node_modules/\${package%@*}/bin/node"
  chmod 0755 "$3/node_modules/\${package%@*}/bin/node"
fi
if [[ $(basename "$0") == dpkg-query ]]; then
  package="\${!#}"
  for missing in $STUB_MISSING; do
    if [[ $missing == "$package" ]]; then
      printf 'unknown ok not-installed'
      exit 1
    fi
  done
  printf 'install ok installed'
fi
exit 0
`;

interface Call {
  readonly command: string;
  readonly args: string[];
  readonly cwd: string;
  readonly debianFrontend: string;
  /** npm only: the node it runs on, and the headers a native addon would build against. */
  readonly node?: string;
  readonly nodedir?: string;
}

interface Layout {
  readonly root: string;
  readonly bin: string;
  readonly log: string;
}

/** A temp copy of the repository layout the script needs, and a directory of stubs. */
function makeLayout(): Layout {
  const root = realpathSync(mkdtempSync(join(tmpdir(), "trellis-setup-")));
  mkdirSync(join(root, "scripts"));
  copyFileSync(SCRIPT, join(root, "scripts", "setup-debian.sh"));
  // The script reads the pinned Node.js release from it.
  copyFileSync(join(import.meta.dirname, "..", "package.json"), join(root, "package.json"));
  // The control-plane build is its own script: here a stub that records being run, and where.
  writeFileSync(join(root, "scripts", "build-kube.sh"), `printf 'build-kube\\x1e%s\\x1e\\n' "$PWD" >>"$STUB_LOG"\n`);
  const bin = join(root, "stub-bin");
  mkdirSync(bin);
  for (const name of STUBS) {
    writeFileSync(join(bin, name), STUB);
    chmodSync(join(bin, name), 0o755);
  }
  return { root, bin, log: join(root, "calls.log") };
}

/**
 * Runs the script from the layout's copy; with `privateSbin`, inside a private mount namespace
 * whose /usr/sbin is an empty tmpfs (the machine's /usr/sbin is never written), and records
 * afterwards whether a policy-rc.d was left there.
 */
async function runSetup(layout: Layout, missing: readonly string[], options: { privateSbin?: boolean } = {}): Promise<Call[]> {
  writeFileSync(layout.log, "");
  const script = join(layout.root, "scripts", "setup-debian.sh");
  const env = { PATH: `${layout.bin}:${process.env.PATH}`, STUB_LOG: layout.log, STUB_MISSING: missing.join(" "), HOME: layout.root };
  if (options.privateSbin) {
    const wrapper = `mount -t tmpfs trellis-setup-test /usr/sbin && bash "$1"; status=$?
if [[ -e ${POLICY} ]]; then left=present; else left=absent; fi
printf 'after\\x1f%s\\x1e%s\\x1e\\n' "$left" "$PWD" >>"$STUB_LOG"
exit $status`;
    await execFileAsync("unshare", ["--mount", "--propagation", "private", "bash", "-c", wrapper, "bash", script], {
      cwd: tmpdir(),
      env: { ...env, STUB_PROBE_POLICY: "1" },
    });
  } else {
    await execFileAsync("bash", [script], { cwd: tmpdir(), env });
  }
  return readFileSync(layout.log, "utf8")
    .split("\n")
    .filter(Boolean)
    .map((line) => {
      const [call, cwd, debianFrontend, node, nodedir] = line.split("\x1e");
      const [command, ...args] = call.split("\x1f");
      return node === undefined ? { command, args, cwd, debianFrontend } : { command, args, cwd, debianFrontend, node, nodedir };
    });
}

const PINNED = JSON.parse(readFileSync(join(import.meta.dirname, "..", "package.json"), "utf8")).engines.node as string;
const PLATFORM = `linux-${process.arch}`;

/** The npm calls of a run: fetching the pinned Node.js release (unless already there), then npm ci on it. */
function npmCalls(root: string, fetch: boolean): Call[] {
  const prefix = join(root, ".cache", `node-v${PINNED}-${PLATFORM}`);
  const runtime = join(prefix, "node_modules", `node-${PLATFORM}`);
  const node = join(runtime, "bin", "node");
  const install = ["install", "--prefix", prefix, "--no-save", "--no-package-lock", "--ignore-scripts", "--no-audit", "--no-fund", `node-${PLATFORM}@${PINNED}`];
  return [
    ...(fetch ? [{ command: "npm", args: install, cwd: root, debianFrontend: "", node: realNode(), nodedir: "" }] : []),
    // Catches: npm ci run on the machine's own (older) node, or a native addon built against
    // other headers than the pinned release's (the user's npmrc may name the system's).
    { command: "npm", args: ["ci", "--no-audit", "--no-fund"], cwd: root, debianFrontend: "", node, nodedir: runtime },
  ];
}

/** The node first on the test's PATH, which the script's first npm call runs on. */
function realNode(): string {
  for (const dir of (process.env.PATH ?? "").split(":")) {
    if (dir && existsSync(join(dir, "node"))) return join(dir, "node");
  }
  return "";
}

const serviceCalls = (calls: readonly Call[]) => calls.filter((call) => SERVICE_TOOLS.includes(call.command));

describe("scripts/setup-debian.sh", () => {
  let layout: Layout;
  before(() => {
    layout = makeLayout();
  });
  after(() => {
    rmSync(layout.root, { recursive: true, force: true });
  });

  it("with every package installed, runs only npm (on the pinned Node.js) in the repository and touches no service", async () => {
    // Catches: a service stopped or disabled even when nothing is installed, apt-get run needlessly,
    // npm ci run outside the repository (the script must cd to its own ../).
    rmSync(join(layout.root, ".cache"), { recursive: true, force: true });
    const calls = await runSetup(layout, []);
    assert.deepEqual(serviceCalls(calls), []);
    assert.deepEqual(
      calls.filter((call) => call.command === "dpkg-query").map((call) => call.args),
      PACKAGES.map((name) => ["-W", "-f=${Status}", name]),
    );
    assert.deepEqual(
      calls.filter((call) => call.command !== "dpkg-query"),
      [
        ...npmCalls(layout.root, true),
        // Catches: the control plane the tests need not built by the setup.
        { command: "build-kube", args: [], cwd: layout.root, debianFrontend: "" },
      ],
    );
    // Catches: the release fetched again at every run.
    const again = await runSetup(layout, []);
    assert.deepEqual(
      again.filter((call) => call.command === "npm"),
      npmCalls(layout.root, false),
    );
  });

  it("with packages missing, installs exactly those and still touches no service", async (t) => {
    // The branch that writes /usr/sbin/policy-rc.d when it is absent would write to the real
    // /usr/sbin. On the machines these tests run on (Debian containers) the file already exists,
    // so the branch is not taken; the test asserts the file is left exactly as it was, and is
    // skipped where the file is absent rather than let the script create it.
    if (!existsSync(POLICY)) {
      t.skip(`${POLICY} is absent: the script would write it on this machine`);
      return;
    }
    const before = { content: readFileSync(POLICY), mode: statSync(POLICY).mode, mtimeMs: statSync(POLICY).mtimeMs };
    const missing = ["containerd", "etcd-server", "iperf3"];
    const fetched = existsSync(join(layout.root, ".cache"));
    const calls = await runSetup(layout, missing);
    // Catches: `systemctl disable --now etcd containerd` (or any stop/restart) coming back.
    assert.deepEqual(serviceCalls(calls), []);
    assert.deepEqual(
      calls.filter((call) => call.command !== "dpkg-query"),
      [
        { command: "apt-get", args: ["update", "-qq"], cwd: layout.root, debianFrontend: "" },
        // Catches: installing the whole list (reinstalls and upgrades a node's own containerd) or
        // prompting (no noninteractive frontend).
        { command: "apt-get", args: ["install", "-y", "-qq", "--no-install-recommends", ...missing], cwd: layout.root, debianFrontend: "noninteractive" },
        ...npmCalls(layout.root, !fetched),
        { command: "build-kube", args: [], cwd: layout.root, debianFrontend: "" },
      ],
    );
    // Catches: the script's EXIT trap removing a policy-rc.d it did not write.
    assert.ok(existsSync(POLICY), `${POLICY} was removed`);
    assert.deepEqual({ content: readFileSync(POLICY), mode: statSync(POLICY).mode, mtimeMs: statSync(POLICY).mtimeMs }, before);
  });

  it("where policy-rc.d is absent, forbids service starts during the install only, then removes the file it wrote", async (t) => {
    // Runs in a private mount namespace with an empty tmpfs on /usr/sbin, so the branch that
    // writes policy-rc.d is taken without touching the machine's /usr/sbin.
    // Catches: packages the script installs starting their services (a second containerd or etcd
    // beside the node's), and a policy-rc.d left behind that would keep the node's own later
    // upgrades from restarting their services.
    if (process.getuid?.() !== 0) {
      t.skip("needs root for a private mount namespace");
      return;
    }
    rmSync(join(layout.root, ".cache"), { recursive: true, force: true });
    const calls = await runSetup(layout, ["etcd-server"], { privateSbin: true });
    assert.deepEqual(serviceCalls(calls), []);
    assert.deepEqual(
      calls.filter((call) => call.command !== "dpkg-query").map((call) => [call.command, ...call.args]),
      [
        ["apt-get", "update", "-qq"],
        ["policy-rc.d", "101"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "etcd-server"],
        ["policy-rc.d", "101"],
        ...npmCalls(layout.root, true).map((call) => [call.command, ...call.args]),
        ["build-kube"],
        ["after", "absent"],
      ],
    );
  });
});
