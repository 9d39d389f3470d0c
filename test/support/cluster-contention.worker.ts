/**
 * One contender of the contention test, run as its own process:
 *   cluster-contention.worker.ts SPEC NAMESPACE WORKER CYCLES
 * Each cycle creates a NodePort Service and a node, then removes both. Every holding is printed
 * as a JSON line with the store revisions it began and ended at; revisions are one global
 * order, so the parent can check that no two holdings of one address, port or block overlap.
 */
import { addService, removeService } from "../../src/cluster/services.js";
import { openCluster } from "../../src/cluster/state.js";
import { addNode, removeNode } from "../../src/cluster/node-cidrs.js";
import { openStore } from "../../src/store/open.js";

export interface Holding {
  readonly kind: "clusterIP" | "nodePort" | "podCidr";
  readonly value: string;
  readonly owner: string;
  readonly acquired: number;
  readonly released: number;
}

const [spec, namespace, worker, cycles] = process.argv.slice(2);
const store = await openStore(spec, namespace === "-" ? {} : { etcd: { namespace } });
try {
  const cluster = await openCluster(store);
  const lines: string[] = [];
  for (let cycle = 0; cycle < Number(cycles); cycle++) {
    const service = `w${worker}-${cycle}`;
    const node = `node-w${worker}-${cycle}`;
    const created = await addService(cluster, { name: service, type: "NodePort" });
    const added = await addNode(cluster, node);
    const removed = await removeService(cluster, service);
    const gone = await removeNode(cluster, node);
    const owner = `default/${service}`;
    const holdings: Holding[] = [
      ...created.result.clusterIPs.map((ip) => ({ kind: "clusterIP" as const, value: ip, owner, acquired: created.revision, released: removed.revision })),
      { kind: "nodePort", value: String(created.result.nodePort), owner, acquired: created.revision, released: removed.revision },
      ...added.result.podCidrs.map((cidr) => ({ kind: "podCidr" as const, value: cidr, owner: node, acquired: added.revision, released: gone.revision })),
    ];
    for (const holding of holdings) lines.push(JSON.stringify(holding));
  }
  process.stdout.write(`${lines.join("\n")}\n`);
} finally {
  await store.close();
}
