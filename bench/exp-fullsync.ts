import { execFileSync } from "node:child_process";
import { ProxyState, proxyFullOps, type ProxyServicePort } from "../src/dataplane/service-proxy.js";
import { encodeNftBatch, NftBatchWriter } from "../src/linux/nft-netlink.js";
import { parseIp, parsePrefix } from "../src/net/ip.js";

const n = Number(process.argv[2] ?? 200);
const ports: ProxyServicePort[] = Array.from({ length: n }, (_, i) => ({
  namespace: "default", name: `s${i}`, portName: "", protocol: "TCP", port: 80,
  clusterIPs: [parseIp(`10.96.${(i >> 8) & 255}.${i & 255}`)], externalIPs: [], loadBalancerIPs: [],
  externalTrafficPolicy: "Cluster", internalTrafficPolicy: "Cluster",
  endpoints: Array.from({ length: 5 }, (_, k) => ({ address: parseIp(`10.244.${128 + ((i * 5 + k) >> 8) % 64}.${(i * 5 + k) & 255}`), port: 8080, ready: true, serving: true, terminating: false })),
}) as unknown as ProxyServicePort);
const state = new ProxyState({ name: "n", addresses: [parseIp("198.18.0.11")], podCidrs: [parsePrefix("10.244.0.0/16")] }, ports);
const ops = proxyFullOps(state.ruleset());
const t0 = performance.now();
const batch = encodeNftBatch(ops);
const t1 = performance.now();
const writer = new NftBatchWriter(process.argv[3]!);
for (let r = 0; r < 3; r++) {
  const a = performance.now();
  await writer.apply(batch);
  console.log(`services ${n} ops ${ops.length}: encode ${(t1 - t0).toFixed(1)} ms, apply ${r} ${(performance.now() - a).toFixed(1)} ms`);
}
writer.close();
console.log(execFileSync("nft", ["list", "tables"], { encoding: "utf8" }).split("\n").length - 1, "tables");
