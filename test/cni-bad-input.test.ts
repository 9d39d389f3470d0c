/**
 * Malformed configs and environments: each gets the spec's error JSON on stdout with the
 * right code and a message naming the field, a non-zero exit, and leaves nothing behind.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { after, before, describe, it } from "node:test";
import { pluginBaseEnv } from "./support/cni-exec.js";
import { NetnsPool, inNetns, sweepStaleNamespaces, type TestNetns } from "./support/netns.js";
import { AGENT_UNDERLAY, agentFor, pluginPath, withAgentSocket } from "./support/node-agent.js";
import { cniSuite, recordedPods, tempDir } from "./support/trellis-cni.js";

interface BadCase {
  name: string;
  env?: Record<string, string | undefined>;
  /** The stdin, or a function of a valid config. */
  stdin: string | ((valid: Record<string, unknown>) => unknown);
  code: number;
  msg: RegExp;
}

const ipam = (ranges: unknown) => ({ ipam: { ranges } });

const cases: BadCase[] = [
  { name: "unknown verb", env: { CNI_COMMAND: "START" }, stdin: (v) => v, code: 4, msg: /^CNI_COMMAND "START" is not a CNI verb: expected one of ADD, DEL, CHECK, VERSION, GC, STATUS$/ },
  { name: "missing container id", env: { CNI_CONTAINERID: undefined }, stdin: (v) => v, code: 4, msg: /^CNI_CONTAINERID is required for ADD but is not set$/ },
  { name: "container id with a slash", env: { CNI_CONTAINERID: "../etc" }, stdin: (v) => v, code: 4, msg: /^CNI_CONTAINERID "\.\.\/etc" is invalid/ },
  { name: "missing netns on ADD", env: { CNI_NETNS: undefined }, stdin: (v) => v, code: 4, msg: /^CNI_NETNS is required for ADD but is not set$/ },
  { name: "netns that does not exist", env: { CNI_NETNS: "/var/run/netns/trellis-no-such-ns" }, stdin: (v) => v, code: 4, msg: /^CNI_NETNS \/var\/run\/netns\/trellis-no-such-ns does not exist$/ },
  { name: "missing ifname", env: { CNI_IFNAME: undefined }, stdin: (v) => v, code: 4, msg: /^CNI_IFNAME is required for ADD but is not set$/ },
  { name: "ifname too long", env: { CNI_IFNAME: "eth0123456789abc" }, stdin: (v) => v, code: 4, msg: /^CNI_IFNAME "eth0123456789abc" is invalid: it is 16 characters long; Linux allows at most 15$/ },
  { name: "ifname with a colon", env: { CNI_IFNAME: "eth0:1" }, stdin: (v) => v, code: 4, msg: /^CNI_IFNAME "eth0:1" is invalid: it may hold only letters, digits, "_", "\." and "-"$/ },
  { name: "ifname with %d (the kernel would number it)", env: { CNI_IFNAME: "e%d" }, stdin: (v) => v, code: 4, msg: /^CNI_IFNAME "e%d" is invalid: it must not contain "%"/ },
  { name: "ifname with a newline", env: { CNI_IFNAME: "eth0\nlink" }, stdin: (v) => v, code: 4, msg: /^CNI_IFNAME "eth0\\nlink" is invalid: it may hold only/ },
  { name: "container id far too long", env: { CNI_CONTAINERID: "c".repeat(100_000) }, stdin: (v) => v, code: 4, msg: /^CNI_CONTAINERID is 100000 characters long; at most 256 are allowed$/ },
  { name: "netns that is a regular file", env: { CNI_NETNS: "/etc/hostname" }, stdin: (v) => v, code: 4, msg: /^CNI_NETNS \/etc\/hostname is not a network namespace$/ },
  { name: "netns that is a directory", env: { CNI_NETNS: "/var/run/netns" }, stdin: (v) => v, code: 4, msg: /^CNI_NETNS \/var\/run\/netns is not a network namespace$/ },
  // Bug caught: any file on nsfs passed as a network namespace, so these failed late with 103.
  // Through the agent, /proc/self is the agent process: its namespaces, the same refusal.
  { name: "netns that is a mount namespace", env: { CNI_NETNS: "/proc/self/ns/mnt" }, stdin: (v) => v, code: 4, msg: /^CNI_NETNS \/proc\/self\/ns\/mnt is a mnt namespace, not a network namespace$/ },
  { name: "netns that is a pid namespace", env: { CNI_NETNS: "/proc/self/ns/pid" }, stdin: (v) => v, code: 4, msg: /^CNI_NETNS \/proc\/self\/ns\/pid is a pid namespace, not a network namespace$/ },
  { name: "netns that is a user namespace", env: { CNI_NETNS: "/proc/self/ns/user" }, stdin: (v) => v, code: 4, msg: /^CNI_NETNS \/proc\/self\/ns\/user is a user namespace, not a network namespace$/ },
  // Bug caught: CHECK entering any nsfs file and failing with 103 (setns: Invalid argument), or
  // reporting a namespace it could not open as "the pod's network namespace does not exist".
  { name: "CHECK with a mount namespace", env: { CNI_COMMAND: "CHECK", CNI_NETNS: "/proc/self/ns/mnt" }, stdin: (v) => ({ ...v, prevResult: { cniVersion: "1.1.0", ips: [] } }), code: 4, msg: /^CNI_NETNS \/proc\/self\/ns\/mnt is a mnt namespace, not a network namespace$/ },
  { name: "ifname dot-dot", env: { CNI_IFNAME: ".." }, stdin: (v) => v, code: 4, msg: /^CNI_IFNAME "\.\." is invalid: "\.\." is not allowed$/ },
  { name: "CNI_ARGS without =", env: { CNI_ARGS: "IP" }, stdin: (v) => v, code: 4, msg: /^CNI_ARGS entry "IP" is not KEY=VALUE$/ },
  { name: "not JSON", stdin: "{cniVersion: 1", code: 6, msg: /^network configuration on stdin is not valid JSON/ },
  { name: "JSON but not an object", stdin: "[1,2]", code: 6, msg: /^network configuration on stdin is not a JSON object$/ },
  { name: "unsupported version", stdin: (v) => ({ ...v, cniVersion: "0.2.0" }), code: 1, msg: /^cniVersion 0\.2\.0 is not supported: trellis speaks 0\.3\.0, 0\.3\.1, 0\.4\.0, 1\.0\.0, 1\.1\.0$/ },
  { name: "version not a version", stdin: (v) => ({ ...v, cniVersion: "latest" }), code: 7, msg: /^cniVersion "latest" is not a version/ },
  { name: "bad network name", stdin: (v) => ({ ...v, name: "pods/x" }), code: 7, msg: /^name "pods\/x" is invalid/ },
  { name: "bridge with %d (a new bridge on every ADD)", stdin: (v) => ({ ...v, bridge: "advb%d" }), code: 7, msg: /^bridge "advb%d" is not a usable interface name: it must not contain "%"/ },
  { name: "bridge that is the loopback", stdin: (v) => ({ ...v, bridge: "lo" }), code: 7, msg: /^bridge "lo" names an existing interface that is not a bridge; choose another bridge name$/ },
  { name: "bridge named like a pod's veth", stdin: (v) => ({ ...v, bridge: "trv0123456789ab" }), code: 7, msg: /^bridge "trv0123456789ab" has the form of a pod's host veth name/ },
  { name: "network name far too long", stdin: (v) => ({ ...v, name: "n".repeat(5000) }), code: 7, msg: /^name is 5000 characters long; at most 200 are allowed$/ },
  { name: "mtu below IPv6's minimum on a network with IPv6", stdin: (v) => ({ ...v, mtu: 576, ...ipam([[{ subnet: "10.244.1.0/24" }], [{ subnet: "fd00:10:244:1::/64" }]]) }), code: 7, msg: /^mtu 576 is too small for the IPv6 range fd00:10:244:1::\/64: a network with IPv6 needs an mtu of at least 1280$/ },
  { name: "nonMasqueradeCidrs entry not a CIDR", stdin: (v) => ({ ...v, nonMasqueradeCidrs: ["10.244.0.0/16", "cluster"] }), code: 7, msg: /^nonMasqueradeCidrs\[1\] "cluster" is not a CIDR/ },
  { name: "nonMasqueradeCidrs entry with host bits", stdin: (v) => ({ ...v, nonMasqueradeCidrs: ["10.244.1.1/16"] }), code: 7, msg: /^nonMasqueradeCidrs\[0\] 10\.244\.1\.1\/16 has host bits set: did you mean 10\.244\.0\.0\/16\?$/ },
  { name: "subnet with host bits (host-local refuses it too)", stdin: (v) => ({ ...v, ...ipam([[{ subnet: "10.77.0.5/24" }]]) }), code: 7, msg: /^ipam\.ranges\[0\]\[0\]\.subnet 10\.77\.0\.5\/24 has host bits set: did you mean 10\.77\.0\.0\/24\?$/ },
  { name: "dataDir under /proc (used to spin forever)", stdin: (v) => ({ ...v, ipam: { ...(v.ipam as object), dataDir: "/proc/trellis/state" } }), code: 104, msg: /^ipam\.dataDir \/proc\/trellis\/state is under \/proc, a kernel filesystem that cannot hold the node state$/ },
  { name: "dataDir relative", stdin: (v) => ({ ...v, ipam: { ...(v.ipam as object), dataDir: "state/../x" } }), code: 104, msg: /^ipam\.dataDir "state\/\.\.\/x" is not an absolute path$/ },
  { name: "requested IP is the gateway", stdin: (v) => ({ ...v, runtimeConfig: { ips: ["10.244.1.1"] } }), code: 101, msg: /^requested IP 10\.244\.1\.1 is the gateway of 10\.244\.1\.0\/24$/ },
  { name: "bridge name too long", stdin: (v) => ({ ...v, bridge: "averyveryverylongbridge" }), code: 7, msg: /^bridge "averyveryverylongbridge" is not a usable interface name: it is 23 characters long/ },
  { name: "mtu out of range", stdin: (v) => ({ ...v, mtu: 20 }), code: 7, msg: /^mtu 20 is invalid: expected an integer from 68 to 65535$/ },
  { name: "ipMasq not a boolean", stdin: (v) => ({ ...v, ipMasq: "yes" }), code: 7, msg: /^ipMasq "yes" is not a boolean$/ },
  { name: "no ipam", stdin: (v) => ({ ...v, ipam: undefined }), code: 7, msg: /^ipam is missing/ },
  { name: "empty ranges", stdin: (v) => ({ ...v, ...ipam([]) }), code: 7, msg: /^ipam\.ranges is empty/ },
  { name: "subnet not a CIDR", stdin: (v) => ({ ...v, ...ipam([[{ subnet: "10.244.1.0" }]]) }), code: 7, msg: /^ipam\.ranges\[0\]\[0\]\.subnet "10\.244\.1\.0" is not a CIDR/ },
  { name: "subnet too small", stdin: (v) => ({ ...v, ...ipam([[{ subnet: "10.244.1.0/31" }]]) }), code: 7, msg: /^ipam\.ranges\[0\]\[0\]\.subnet 10\.244\.1\.0\/31 is too small: the prefix length must be at most \/30/ },
  { name: "rangeStart outside subnet", stdin: (v) => ({ ...v, ...ipam([[{ subnet: "10.244.1.0/24", rangeStart: "10.244.2.10" }]]) }), code: 7, msg: /^ipam\.ranges\[0\]\[0\]\.rangeStart 10\.244\.2\.10 is outside subnet 10\.244\.1\.0\/24$/ },
  { name: "rangeEnd is the broadcast address", stdin: (v) => ({ ...v, ...ipam([[{ subnet: "10.244.1.0/24", rangeEnd: "10.244.1.255" }]]) }), code: 7, msg: /^ipam\.ranges\[0\]\[0\]\.rangeEnd 10\.244\.1\.255 is not a usable address of 10\.244\.1\.0\/24: allowed 10\.244\.1\.1-10\.244\.1\.254$/ },
  { name: "rangeStart after rangeEnd", stdin: (v) => ({ ...v, ...ipam([[{ subnet: "10.244.1.0/24", rangeStart: "10.244.1.200", rangeEnd: "10.244.1.100" }]]) }), code: 7, msg: /^ipam\.ranges\[0\]\[0\]\.rangeStart 10\.244\.1\.200 is after rangeEnd 10\.244\.1\.100$/ },
  { name: "gateway not an address", stdin: (v) => ({ ...v, ...ipam([[{ subnet: "10.244.1.0/24", gateway: "gw" }]]) }), code: 7, msg: /^ipam\.ranges\[0\]\[0\]\.gateway "gw" is not an IP address$/ },
  { name: "set mixing families", stdin: (v) => ({ ...v, ...ipam([[{ subnet: "10.244.1.0/24" }, { subnet: "fd00::/64" }]]) }), code: 7, msg: /^ipam\.ranges\[0\] mixes IPv4 and IPv6 \(10\.244\.1\.0\/24 and fd00::\/64\)/ },
  { name: "overlapping ranges", stdin: (v) => ({ ...v, ...ipam([[{ subnet: "10.244.1.0/24" }], [{ subnet: "10.244.0.0/16" }]]) }), code: 7, msg: /^ipam range 10\.244\.1\.1-10\.244\.1\.254 overlaps 10\.244\.0\.1-10\.244\.255\.254$/ },
  { name: "route dst not a CIDR", stdin: (v) => ({ ...v, ipam: { ...(v.ipam as object), routes: [{ dst: "default" }] } }), code: 7, msg: /^ipam\.routes\[0\]\.dst "default" is not a CIDR$/ },
  { name: "requested IP malformed", stdin: (v) => ({ ...v, runtimeConfig: { ips: ["10.244.1.300"] } }), code: 7, msg: /^runtimeConfig\.ips entry "10\.244\.1\.300" is not an IP address$/ },
  { name: "requested IP outside every range", stdin: (v) => ({ ...v, args: { cni: { ips: ["10.9.0.5"] } } }), code: 101, msg: /^requested IP 10\.9\.0\.5 is outside every range \(10\.244\.1\.1-10\.244\.1\.254\)$/ },
  { name: "MAC malformed", stdin: (v) => ({ ...v, runtimeConfig: { mac: "02:00:00:00:00" } }), code: 7, msg: /^runtimeConfig\.mac "02:00:00:00:00" is not a MAC address/ },
  { name: "multicast MAC", env: { CNI_ARGS: "MAC=01:00:5e:00:00:01" }, stdin: (v) => v, code: 7, msg: /^CNI_ARGS MAC 01:00:5e:00:00:01 is a multicast MAC address/ },
  { name: "delegated IPAM plugin missing", stdin: (v) => ({ ...v, dataDir: (v.ipam as { dataDir: string }).dataDir, ipam: { type: "no-such-ipam" } }), code: 7, msg: /^ipam plugin "no-such-ipam" was not found in CNI_PATH "\/usr\/lib\/cni"$/ },
  { name: "GC without the attachment list", env: { CNI_COMMAND: "GC" }, stdin: (v) => v, code: 7, msg: /^cni\.dev\/valid-attachments is required for GC$/ },
  { name: "CHECK without prevResult", env: { CNI_COMMAND: "CHECK" }, stdin: (v) => v, code: 7, msg: /^prevResult is required for CHECK$/ },
  { name: "CHECK on a 0.3.1 network", env: { CNI_COMMAND: "CHECK" }, stdin: (v) => ({ ...v, cniVersion: "0.3.1" }), code: 1, msg: /^CHECK needs cniVersion 0\.4\.0 or later; the config says 0\.3\.1$/ },
];

describe(cniSuite("trellis rejects bad input with the right code and a message naming the field"), () => {
  const pool = new NetnsPool();
  const state = tempDir("badinput");
  let node: TestNetns;
  let pod: TestNetns;
  let valid: Record<string, unknown>;

  before(async () => {
    sweepStaleNamespaces();
    node = pool.create("node");
    pod = pool.create("pod");
    valid = withAgentSocket({ cniVersion: "1.1.0", name: "pods", type: "trellis", ipam: { ranges: [[{ subnet: "10.244.1.0/24" }]], dataDir: state.path } }, await agentFor(node));
  });
  after(() => {
    pool.removeAll();
    state.remove();
  });

  for (const bad of cases) {
    it(bad.name, () => {
      const env: Record<string, string> = {
        ...pluginBaseEnv(),
        CNI_COMMAND: "ADD",
        CNI_CONTAINERID: "bad-input",
        CNI_NETNS: pod.path,
        CNI_IFNAME: "eth0",
        CNI_PATH: "/usr/lib/cni",
      };
      for (const [key, value] of Object.entries(bad.env ?? {})) {
        if (value === undefined) delete env[key];
        else env[key] = value;
      }
      const stdin = typeof bad.stdin === "string" ? bad.stdin : JSON.stringify(bad.stdin(structuredClone(valid)));
      // Text that is not a config names no agent: the native plugin falls back to the standalone one.
      const plugin = pluginPath({ fallback: typeof bad.stdin === "string" });
      const run = spawnSync("nsenter", [`--net=${node.path}`, plugin], { env, input: stdin, encoding: "utf8", timeout: 20_000 });
      assert.equal(run.signal, null, "answers promptly");
      assert.notEqual(run.status, 0, "exits non-zero");
      const error = JSON.parse(run.stdout) as { cniVersion: string; code: number; msg: string };
      assert.equal(error.code, bad.code, `code for: ${error.msg}`);
      assert.match(error.msg, bad.msg);
      assert.ok(error.cniVersion, "the error names a cniVersion");
      assert.match(run.stderr, /failed \(code \d+\)/, "the detail also goes to stderr");
    });
  }

  it("left nothing behind: no interface in the pod, no veth or bridge on the node, no address on lo, no lease", () => {
    assert.doesNotMatch(inNetns(pod, "ip", ["-o", "link"]), /eth0/);
    const nodeLinks = (JSON.parse(inNetns(node, "ip", ["-json", "link"])) as Array<{ ifname: string }>).map((link) => link.ifname).filter((name) => !AGENT_UNDERLAY.includes(name));
    assert.deepEqual(nodeLinks, ["lo"], "no veth and no bridge (not even one named by %d)");
    const lo = JSON.parse(inNetns(node, "ip", ["-json", "address", "show", "dev", "lo"])) as Array<{ addr_info: Array<{ local: string }> }>;
    assert.deepEqual(lo[0].addr_info.map((info) => info.local).sort(), ["127.0.0.1", "::1"], "the refused bridge \"lo\" got no gateway address");
    assert.deepEqual(recordedPods(state.path, "pods"), []);
  });
});
