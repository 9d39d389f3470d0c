/**
 * A real CNI client (containerd 1.6, `ctr run --cni`) attaches busybox containers on a node
 * that is a throw-away netns. The reference bridge + host-local plugins are the baseline that
 * proves the harness; the same checks then run against dist/trellis.
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { parseInterfaceAddress, parsePrefix, prefixContains } from "../src/net/ip.js";
import type { CniConfList } from "./support/cni-exec.js";
import {
  containerAddresses,
  execInContainer,
  installCniPlugin,
  removeContainer,
  runContainer,
  startContainerdNode,
  stopContainerdNode,
  sweepStaleContainerdNodes,
  type Container,
  type ContainerdNode,
} from "./support/containerd.js";
import { NetnsPool, sweepStaleNamespaces } from "./support/netns.js";
import { agentFor, TRELLIS_NATIVE, TRELLIS_STANDALONE, VIA_AGENT, type NodeAgent } from "./support/node-agent.js";
import { cniSuite } from "./support/trellis-cni.js";

const TRELLIS = TRELLIS_STANDALONE;
const POD_V4 = "10.244.1.0/24";
const POD_V6 = "fd00:10:244:1::/64";
const TIMEOUT = { timeout: 180_000 };

// The baseline proves the harness; it has nothing to do with the agent, so it runs once.
describe("containerd with the reference bridge + host-local plugins", { skip: VIA_AGENT ? "runs without the agent" : false }, () => {
  const pool = new NetnsPool();
  let node: ContainerdNode | undefined;

  before(async () => {
    sweepStaleNamespaces();
    sweepStaleContainerdNodes();
    node = await startContainerdNode(pool, { role: "ref" });
    for (const plugin of ["bridge", "host-local", "loopback"]) installCniPlugin(node, plugin, `/usr/lib/cni/${plugin}`);
  });

  after(async () => {
    try {
      if (node) await stopContainerdNode(node, pool);
    } finally {
      pool.removeAll();
    }
  });

  it("attaches two containers that reach each other, and DEL releases host-local's leases", TIMEOUT, async () => {
    assert.ok(node);
    const dataDir = join(node.dir, "host-local");
    // Debian's reference plugins (1.1.1) speak CNI up to 1.0.0.
    const network: CniConfList = {
      cniVersion: "1.0.0",
      name: "ref-net",
      plugins: [
        {
          type: "bridge",
          bridge: "trtref0",
          isGateway: true,
          ipMasq: false,
          ipam: { type: "host-local", ranges: [[{ subnet: POD_V4 }], [{ subnet: POD_V6 }]], dataDir },
        },
      ],
    };
    const a = await runContainer(node, "ref-a", network);
    const b = await runContainer(node, "ref-b", network);
    const [a4, a6] = await familyAddresses(node, a);
    const [b4, b6] = await familyAddresses(node, b);

    const leaseDir = join(dataDir, network.name);
    assert.deepEqual(leases(leaseDir).sort(), [a4, a6, b4, b6].sort(), `host-local leases in ${leaseDir}`);
    assert.equal(readFileSync(join(leaseDir, a4), "utf8"), `${a.cniContainerId}\r\neth0`);

    await ping(node, a, b4);
    await ping(node, b, a4);
    await ping(node, a, b6);

    await removeContainer(node, a);
    await removeContainer(node, b);
    assert.deepEqual(leases(leaseDir), [], `host-local leases left in ${leaseDir} after DEL`);
    assert.deepEqual(readdirSync(join(node.cniCacheDir, "results")), [], "libcni result cache after DEL");
  });
});

describe(cniSuite("containerd with the trellis plugin"), () => {
  const pool = new NetnsPool();
  let node: ContainerdNode | undefined;
  let agent: NodeAgent | undefined;

  before(async () => {
    assert.ok(existsSync(TRELLIS), `${TRELLIS} is missing: run npm run build`);
    sweepStaleNamespaces();
    sweepStaleContainerdNodes();
    node = await startContainerdNode(pool, { role: "trellis" });
    if (VIA_AGENT) {
      // The native plugin without the standalone one beside it, so every call must reach the
      // agent. The agent shares containerd's mount namespace, where the pods' netns paths live.
      installCniPlugin(node, "trellis", TRELLIS_NATIVE);
      agent = await agentFor(node.netns, { mountOfPid: node.holder.pid! });
    } else {
      installCniPlugin(node, "trellis", TRELLIS);
    }
  });

  after(async () => {
    try {
      if (node) await stopContainerdNode(node, pool);
    } finally {
      pool.removeAll();
    }
  });

  it("attaches two containers with addresses from the config that reach each other over IPv4 and IPv6", TIMEOUT, async () => {
    assert.ok(node);
    const dataDir = join(node.dir, "trellis-data");
    const network = trellisNetwork("trellis-net", "trtbr0", [[{ subnet: POD_V4 }], [{ subnet: POD_V6 }]], dataDir, agent);
    const a = await runContainer(node, "trellis-a", network);
    const b = await runContainer(node, "trellis-b", network);
    const [a4, a6] = await familyAddresses(node, a);
    const [b4, b6] = await familyAddresses(node, b);
    assert.notEqual(a4, b4);
    assert.notEqual(a6, b6);

    const byContainer = (pods: TrellisPod[]): Record<string, string[]> =>
      Object.fromEntries(pods.map((pod) => [pod.containerId, [...pod.addresses].sort()]));
    assert.deepEqual(byContainer(trellisPods(network.name, dataDir)), {
      [a.cniContainerId]: [a4, a6].sort(),
      [b.cniContainerId]: [b4, b6].sort(),
    });

    await ping(node, a, b4);
    await ping(node, b, a4);
    await ping(node, a, b6);
    await ping(node, b, a6);

    await removeContainer(node, a);
    await removeContainer(node, b);
    assert.deepEqual(trellisPods(network.name, dataDir), [], "trellis pods after DEL");
    assert.deepEqual(readdirSync(join(node.cniCacheDir, "results")), [], "libcni result cache after DEL");
  });

  it("frees both addresses of a container on DEL, so a full range serves new containers", TIMEOUT, async () => {
    assert.ok(node);
    // Two addresses per family: after two containers the range is full, and only DEL can
    // make room for the next two.
    const ranges = [
      [{ subnet: POD_V4, rangeStart: "10.244.1.10", rangeEnd: "10.244.1.11" }],
      [{ subnet: POD_V6, rangeStart: "fd00:10:244:1::10", rangeEnd: "fd00:10:244:1::11" }],
    ];
    const dataDir = join(node.dir, "trellis-small-data");
    const network = trellisNetwork("trellis-small", "trtbr1", ranges, dataDir, agent);
    const first = [await runContainer(node, "full-a", network), await runContainer(node, "full-b", network)];
    const firstAddresses = (await Promise.all(first.map((c) => familyAddresses(node!, c)))).flat().sort();
    assert.deepEqual(firstAddresses, ["10.244.1.10", "10.244.1.11", "fd00:10:244:1::10", "fd00:10:244:1::11"]);

    await assert.rejects(
      runContainer(node, "full-c", network),
      /no IP addresses available in range set 10\.244\.1\.10-10\.244\.1\.11/,
      "a third container in a full range",
    );
    // ctr calls DEL after the failed ADD; the node state must hold only the two running pods.
    const held = trellisPods(network.name, dataDir).map((pod) => pod.containerId).sort();
    assert.deepEqual(held, first.map((c) => c.cniContainerId).sort());

    for (const container of first) await removeContainer(node, container);
    const second = [await runContainer(node, "again-a", network), await runContainer(node, "again-b", network)];
    const secondAddresses = (await Promise.all(second.map((c) => familyAddresses(node!, c)))).flat().sort();
    assert.deepEqual(secondAddresses, firstAddresses);
    for (const container of second) await removeContainer(node, container);
    assert.deepEqual(trellisPods(network.name, dataDir), [], "trellis pods after DEL");
  });
});

/**
 * containerd 1.6's libcni knows results up to 1.0.0 and fails an ADD whose result says 1.1.0
 * ("unsupported CNI result version"). `cniVersions` lets newer runtimes pick 1.1.0 while this
 * one reads `cniVersion`, as a conflist shipped to mixed nodes would.
 */
interface TrellisPod {
  containerId: string;
  ifname: string;
  addresses: string[];
}

/** What the plugin's node state holds, through `trellis pods` (reads the dataDir's database). */
function trellisPods(network: string, dataDir: string): TrellisPod[] {
  const out = execFileSync(TRELLIS, ["pods", "--network", network, "--data-dir", dataDir, "--json"], { encoding: "utf8" });
  return JSON.parse(out) as TrellisPod[];
}

function trellisNetwork(name: string, bridge: string, ranges: object[][], dataDir: string, agent?: NodeAgent): CniConfList {
  const plugin = { type: "trellis", bridge, ipam: { ranges, dataDir }, ...(agent ? { agentSocket: agent.socket } : {}) };
  return { cniVersion: "1.0.0", cniVersions: ["1.0.0", "1.1.0"], name, plugins: [plugin] };
}

/** The container's eth0 addresses as [IPv4, IPv6], each checked against the pod subnets. */
async function familyAddresses(node: ContainerdNode, container: Container): Promise<[string, string]> {
  const addresses = await containerAddresses(node, container);
  const v4 = addresses.map(parseInterfaceAddress).filter((a) => a.address.family === 4);
  const v6 = addresses.map(parseInterfaceAddress).filter((a) => a.address.family === 6);
  assert.equal(v4.length, 1, `one IPv4 address on eth0 of ${container.id}: ${addresses.join(", ")}`);
  assert.equal(v6.length, 1, `one IPv6 address on eth0 of ${container.id}: ${addresses.join(", ")}`);
  assert.ok(prefixContains(parsePrefix(POD_V4), v4[0]!.address), `${addresses.join(", ")} of ${container.id} in ${POD_V4}`);
  assert.ok(prefixContains(parsePrefix(POD_V6), v6[0]!.address), `${addresses.join(", ")} of ${container.id} in ${POD_V6}`);
  return [addresses.find((a) => !a.includes(":"))!.split("/")[0]!, addresses.find((a) => a.includes(":"))!.split("/")[0]!];
}

async function ping(node: ContainerdNode, from: Container, to: string): Promise<void> {
  const family = to.includes(":") ? "-6" : "-4";
  // The first IPv6 packet can wait for DAD on the new veth; a few tries absorb that.
  await execInContainer(node, from, ["/bin/ping", family, "-c", "1", "-w", "10", to]);
}

function leases(dir: string): string[] {
  return readdirSync(dir).filter((file) => file !== "lock" && !file.startsWith("last_reserved_ip"));
}
