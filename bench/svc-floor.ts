/**
 * The kernel's own cost for the agent's Service rules, the floor the proxy's figures are
 * measured against: the same ruleset the agent works out from the same Services, encoded
 * beforehand, written straight to the kernel through `trellis-nft-batch` in a namespace of its
 * own (a few tables a transaction, as the agent writes a full sync), then one typical change (one endpoint
 * of one Service replaced) many times over. What is left of the agent's figures above these is
 * its own work: watching, working out, encoding, and waiting its turn.
 */
import { chmodSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ServiceIndex } from "../src/agent/service-index.js";
import type { EndpointSlice, Pod, Service } from "../src/cluster/objects/types.js";
import { coalesced, FULL_WRITE_STEPS } from "../src/agent/service-proxy.js";
import { proxyFullOpsByTable, ProxyState, type ProxyNode, type ProxyOp, type ProxyServicePort } from "../src/dataplane/service-proxy.js";
import { NftBatchWriter } from "../src/linux/nft-netlink.js";
import { parseIp } from "../src/net/ip.js";
import { encodeBatch } from "../src/nft/netlink.js";
import type { Made } from "./net-support.js";
import { latency, type LatencyStats } from "./svc-support.js";

export interface KernelFloor {
  /** The agent's full ruleset, prepared: written in the agent's transactions through one writer. */
  fullWriteMs: number;
  /** One endpoint replaced in one Service, prepared: each written as one transaction (µs: it is well under a millisecond). */
  changeUs: LatencyStats;
  /** The same changes' encoding alone (not in the figures above). */
  encodeFullMs: number;
}

/** The ports the agent works out of these objects, as its index does (endpoints from slices, or from Pods). */
export function portsOf(services: readonly Service[], slices: readonly EndpointSlice[], pods?: readonly Pod[]): ProxyServicePort[] {
  const index = new ServiceIndex(pods ? "pods" : "slices");
  for (const service of services) index.putService(`${service.metadata.namespace ?? "default"}/${service.metadata.name}`, service);
  slices.forEach((slice, i) => index.putSlice(`slice/${i}`, slice));
  (pods ?? []).forEach((pod, i) => index.putPod(`pod/${i}`, pod));
  return index.all();
}

export async function measureKernelFloor(node: ProxyNode, ports: readonly ProxyServicePort[], made: Made, writerPath: string, changes: number): Promise<KernelFloor> {
  const state = new ProxyState(node, ports);
  const started = performance.now();
  // Grouped into transactions as the agent groups them (agent/service-proxy.ts).
  const full = [...coalesced(proxyFullOpsByTable(state.ruleset()), FULL_WRITE_STEPS)].map(encodeBatch);
  const encodeFullMs = performance.now() - started;
  // Changes worked out and encoded before any is written: one Service with endpoints, its first
  // endpoint swapped for an address of its own family and back, so each is a real change.
  const subject = ports.find((port) => port.endpoints.length > 1);
  const batches: Buffer[] = [];
  if (subject) {
    const [first, ...rest] = subject.endpoints;
    const other = { ...first, address: parseIp(first.address.family === 4 ? "10.255.255.254" : "fd00:ffff::fffe") };
    let current = subject;
    for (let i = 0; i < changes; i++) {
      const next = { ...subject, endpoints: [i % 2 === 0 ? other : first, ...rest] };
      const ops: ProxyOp[] = state.update([current], [next]);
      batches.push(encodeBatch(ops));
      current = next;
    }
  }
  const netns = made.pool.create("bsvcfloor");
  const dir = mkdtempSync(join(tmpdir(), "trellis-floor-"));
  made.dirs.add(dir);
  // The writer acts in the namespace it runs in: the fresh one, never the bench's own.
  const script = join(dir, "writer.sh");
  writeFileSync(script, `#!/bin/sh\nexec nsenter --net=${netns.path} ${writerPath} "$@"\n`);
  chmodSync(script, 0o755);
  const writer = new NftBatchWriter(script);
  try {
    const t0 = performance.now();
    for (const batch of full) await writer.apply(batch);
    const fullWriteMs = performance.now() - t0;
    const changeUs: number[] = [];
    for (const batch of batches) {
      const t = performance.now();
      await writer.apply(batch);
      changeUs.push((performance.now() - t) * 1000);
    }
    return { fullWriteMs: Math.round(fullWriteMs * 10) / 10, changeUs: latency(changeUs), encodeFullMs: Math.round(encodeFullMs) };
  } finally {
    writer.close();
  }
}
