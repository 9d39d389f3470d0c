/**
 * Drives the attach engine as a library, the way a long-lived server would: one handle, many
 * calls at once, cancellation. Runs inside a test's node namespace (started through nsenter),
 * takes a scenario as JSON in argv[2] and prints its outcome as JSON.
 */
import { existsSync, writeFileSync } from "node:fs";
import { delegatedIpam } from "../../src/cni/delegate.js";
import { parseIp, parsePrefix } from "../../src/net/ip.js";
import { listAttachments } from "../../src/podipam/attachments.js";
import { listLeases } from "../../src/podipam/pod-ips.js";
import { addPod, delPod } from "../../src/podnet/attach.js";
import { CniError } from "../../src/podnet/errors.js";
import { openPodNet } from "../../src/podnet/handle.js";
import type { PodNetwork } from "../../src/podnet/network.js";

type Scenario =
  | { kind: "parallel"; stateDir: string; pods: Array<{ id: string; netns: string }> }
  | { kind: "add-then-del"; stateDir: string; id: string; netns: string }
  | { kind: "abort"; stateDir: string; id: string; netns: string; pluginDir: string; gate: string; leaseDir: string };

const builtin = (name: string, third: number): PodNetwork => ({
  name,
  bridge: `tb-${name}`,
  hairpin: false,
  ipMasq: true,
  nonMasqueradeCidrs: [parsePrefix("10.244.0.0/16")],
  isDefaultGateway: true,
  ipam: {
    kind: "builtin",
    ranges: [
      [{ subnet: parsePrefix(`10.244.${third}.0/24`), start: parseIp(`10.244.${third}.2`), end: parseIp(`10.244.${third}.254`), gateway: parseIp(`10.244.${third}.1`) }],
      [{ subnet: parsePrefix(`fd00:10:244:${third}::/64`), start: parseIp(`fd00:10:244:${third}::2`), end: parseIp(`fd00:10:244:${third}::ffff`), gateway: parseIp(`fd00:10:244:${third}::1`) }],
    ],
    routes: [],
  },
});

function outcome(error: unknown): { code: number; msg: string } {
  return error instanceof CniError ? { code: error.code, msg: error.message } : { code: -1, msg: String(error) };
}

async function main(): Promise<void> {
  const scenario = JSON.parse(process.argv[2]) as Scenario;
  const net = openPodNet(scenario.stateDir);
  try {
    if (scenario.kind === "parallel") {
      const network = builtin("engine", 80);
      const results = await Promise.allSettled(scenario.pods.map((pod) => addPod(net, { network, containerId: pod.id, ifname: "eth0", netns: pod.netns, requestedIps: [] })));
      const addresses = results.map((result) => (result.status === "fulfilled" ? result.value.addresses.map((address) => address.address.value.toString()) : outcome(result.reason)));
      console.log(JSON.stringify({ addresses, records: listAttachments(net.db, "engine").map((record) => record.state) }));
    } else if (scenario.kind === "add-then-del") {
      const network = builtin("sequence", 81);
      const request = { network, containerId: scenario.id, ifname: "eth0" };
      const [add, del] = await Promise.allSettled([addPod(net, { ...request, netns: scenario.netns, requestedIps: [] }), delPod(net, request)]);
      console.log(JSON.stringify({
        add: add.status === "fulfilled" ? "ok" : outcome(add.reason),
        del: del.status === "fulfilled" ? "ok" : outcome(del.reason),
        records: listAttachments(net.db, "sequence").length,
        leases: listLeases(net.db, "sequence").length,
      }));
    } else {
      const env = { CNI_COMMAND: "ADD", CNI_CONTAINERID: scenario.id, CNI_NETNS: scenario.netns, CNI_IFNAME: "eth0", CNI_PATH: `${scenario.pluginDir}:/usr/lib/cni` };
      const config = { cniVersion: "1.0.0", name: "aborted", ipam: { type: "gated-host-local", dataDir: scenario.leaseDir, ranges: [[{ subnet: "10.244.82.0/24" }]] } };
      const network: PodNetwork = {
        ...builtin("aborted", 82),
        ipMasq: false,
        ipam: { kind: "delegated", plugin: delegatedIpam("gated-host-local", config, env, [scenario.pluginDir, "/usr/lib/cni"]) },
      };
      const controller = new AbortController();
      const add = addPod(net, { network, containerId: scenario.id, ifname: "eth0", netns: scenario.netns, requestedIps: [], signal: controller.signal });
      while (!listAttachments(net.db, "aborted").length) await new Promise((resolve) => setTimeout(resolve, 10));
      const whileRunning = listAttachments(net.db, "aborted").map((record) => record.state);
      controller.abort();
      writeFileSync(scenario.gate, "");
      const result = await add.then(() => "ok", outcome);
      const leaseFile = `${scenario.leaseDir}/aborted/10.244.82.2`;
      console.log(JSON.stringify({ whileRunning, result, records: listAttachments(net.db, "aborted").length, delegateLeaseLeft: existsSync(leaseFile) }));
    }
  } finally {
    net.close();
  }
}

await main();
