/**
 * hostPort through podman: `podman run -p` hands its port mappings to the plugin (CNI's
 * portMappings capability) and `podman rm` takes them away (DEL). A test netns plays the node,
 * podman runs in it (support/podman.ts), another netns on a veth plays a client outside. The
 * containers are busybox httpd serving their own name.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { after, before, describe, it } from "node:test";
import { inNetns, NetnsPool, sweepStaleNamespaces, type TestNetns } from "./support/netns.js";
import { PODMAN_IMAGE, podmanUnavailable, startPodmanNode, type PodmanNode } from "./support/podman.js";
import { tempDir, TRELLIS } from "./support/trellis-cni.js";

const SKIP = podmanUnavailable();

describe("hostPort through podman", { skip: SKIP }, () => {
  const pool = new NetnsPool();
  const state = tempDir("podman");
  let node: TestNetns;
  let external: TestNetns;
  let podman: PodmanNode;
  const conflist = {
    cniVersion: "1.0.0",
    name: "trellis",
    plugins: [{
      type: "trellis", hairpinMode: true, capabilities: { portMappings: true },
      ipam: { ranges: [[{ subnet: "10.244.62.0/24" }], [{ subnet: "fd00:10:244:62::/64" }]], dataDir: state.path },
    }],
  };

  /** `podman run` of a busybox httpd that answers with `name`, publishing `publish` (-p values). */
  const run = (name: string, publish: string[]) =>
    podman.tryPodman([
      "run", "-d", "--name", name, "--network", "trellis", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
      ...publish.flatMap((value) => ["-p", value]),
      PODMAN_IMAGE, "/bin/busybox", "sh", "-c", `echo ${name} > /www/index.html && exec /bin/busybox httpd -f -p 80 -h /www`,
    ]);
  /** What `from` gets from http://ADDRESS:PORT/, or why not. */
  const get = (from: TestNetns, address: string, port: number) => {
    const script = `const r=require("http").get({host:process.argv[1],port:Number(process.argv[2]),path:"/",timeout:3000},(res)=>{let d="";res.on("data",(c)=>d+=c);res.on("end",()=>process.stdout.write(d))});r.on("timeout",()=>r.destroy(new Error("timed out")));r.on("error",(e)=>{console.error(e.message);process.exit(1)})`;
    const result = spawnSync("nsenter", [`--net=${from.path}`, process.execPath, "-e", script, address, String(port)], { encoding: "utf8", timeout: 10_000 });
    return result.status === 0 ? result.stdout.trim() : `failed: ${result.stderr.trim() || result.signal}`;
  };
  const hostportRules = () => inNetns(node, "nft", ["list", "ruleset"]).split("\n").filter((line) => / dnat (ip|ip6) to /.test(line)).join("\n");

  before(async () => {
    sweepStaleNamespaces();
    node = pool.create("node");
    external = pool.create("ext");
    inNetns(node, "ip", ["link", "add", "trpm0", "type", "veth", "peer", "name", "trpm1", "netns", external.path]);
    for (const address of ["198.18.253.1/24", "198.18.253.11/24"]) inNetns(node, "ip", ["address", "add", address, "dev", "trpm0"]);
    inNetns(node, "ip", ["address", "add", "fd00:198:253::1/64", "dev", "trpm0", "nodad"]);
    inNetns(node, "ip", ["link", "set", "trpm0", "up"]);
    inNetns(external, "ip", ["address", "add", "198.18.253.2/24", "dev", "trpm1"]);
    inNetns(external, "ip", ["address", "add", "fd00:198:253::2/64", "dev", "trpm1", "nodad"]);
    inNetns(external, "ip", ["link", "set", "trpm1", "up"]);
    podman = await startPodmanNode(node, conflist, TRELLIS);
  });

  after(() => {
    podman?.stop();
    pool.removeAll();
    state.remove();
  });

  const eventually = async (what: string, check: () => boolean, timeoutMs = 10_000) => {
    const deadline = Date.now() + timeoutMs;
    while (!check()) {
      if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms`);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  };

  // Bugs caught: the portMappings capability not declared or ignored (podman's mappings never
  // reach the plugin), one family only, or the node's own connections not mapped.
  it("publishes a container's port on every node address, both families, from outside and from the node", async () => {
    const started = run("web1", ["8080:80"]);
    assert.equal(started.status, 0, started.stderr);
    await eventually("web1 answers on 198.18.253.1:8080", () => get(external, "198.18.253.1", 8080) === "web1");
    assert.equal(get(external, "fd00:198:253::1", 8080), "web1");
    assert.equal(get(external, "198.18.253.11", 8080), "web1");
    assert.equal(get(node, "198.18.253.1", 8080), "web1");
  });

  // Bugs caught: hostIP ignored (the second mapping of a port taking the first one's traffic,
  // or refused as a conflict), the conformance case another plugin once failed.
  it("keeps two containers on one port apart by host address", async () => {
    for (const [name, hostIP] of [["web2", "198.18.253.11"], ["web3", "198.18.253.1"]]) {
      const started = run(name, [`${hostIP}:9090:80`]);
      assert.equal(started.status, 0, `${name}: ${started.stderr}`);
    }
    await eventually("web2 answers on .11:9090", () => get(external, "198.18.253.11", 9090) === "web2");
    assert.equal(get(external, "198.18.253.1", 9090), "web3");
  });

  // Bug caught: a second container given a host port another already holds (the first one's
  // traffic silently split or stolen) instead of a refusal naming the port.
  it("refuses a container whose host port is taken, naming it, and keeps the first one's mapping", () => {
    const rules = hostportRules();
    const refused = run("web4", ["8080:80"]);
    assert.notEqual(refused.status, 0, "podman run of a taken host port succeeded");
    assert.match(refused.stderr, /8080/);
    console.log(`# podman's refusal: ${refused.stderr.trim().split("\n").at(-1)}`);
    assert.equal(hostportRules(), rules, "nothing of the refused container's mappings is left");
    assert.equal(get(external, "198.18.253.1", 8080), "web1");
    podman.tryPodman(["rm", "--force", "--time", "0", "web4"]);
  });

  // Bug caught: DEL leaving the DNAT behind, so the port keeps leading to an address that the
  // next pod may be given.
  it("takes the mapping away when podman removes the container", () => {
    const before = hostportRules();
    assert.match(before, /:80\b/);
    podman.podman(["rm", "--force", "--time", "0", "web1"]);
    const answer = get(external, "198.18.253.1", 8080);
    assert.match(answer, /^failed/);
    assert.equal(get(external, "198.18.253.11", 9090), "web2", "the other containers keep theirs");
    assert.equal((hostportRules().match(/dnat/g) ?? []).length, (before.match(/dnat/g) ?? []).length - 2, "the IPv4 and IPv6 rules of web1 are gone");
  });
});
