/**
 * Node pod CIDRs, as kube-controller-manager's RangeAllocator hands them out: one block per
 * cluster pod CIDR (so one per family, in plan order), found by a linear scan from the next
 * candidate with wrap-around; blocks overlapping a service range are never handed out; a node
 * gets all its families or none; removing a node frees its blocks.
 */
import { familyBits, formatPrefix, parsePrefix, prefixContainsPrefix, prefixesOverlap, subPrefix, type IpPrefix } from "../net/ip.js";
import type { ClusterPlan } from "../plan/plan.js";
import { nodeBlockCount } from "../plan/capacity.js";
import type { KvOperation, KvStore } from "../store/kv.js";
import {
  claimSlot,
  findFreeFrom,
  heldBy,
  initialRunOperations,
  releaseIndex,
  type IndexBand,
  type IndexInterval,
  type TxnFragment,
} from "./free-runs.js";
import type { Cluster } from "./state.js";
import { commitWithRetry, joinFragments, type Committed } from "./txn.js";

export interface NodeRecord {
  readonly name: string;
  /** One per family, in plan order (`spec.podCIDRs`). */
  readonly podCidrs: readonly string[];
  /** What the node's agent publishes for its peers (see node-agents.ts); absent until an agent ran. */
  readonly network?: NodeNetworkRecord;
}

export interface NodeNetworkRecord {
  /** Underlay (node) addresses, at most one per family. */
  readonly addresses: readonly string[];
  /** VTEP MACs per underlay family the node runs VXLAN on. */
  readonly vteps: ReadonlyArray<{ readonly family: 4 | 6; readonly mac: string }>;
  /** The underlay MTU. */
  readonly mtu: number;
  readonly agent: AgentClaim;
  /** The node's zone (topology.kubernetes.io/zone), when its agent was given one. */
  readonly zone?: string;
}

/** Which agent process serves the node, so a second one can be told apart and refused. */
export interface AgentClaim {
  /** Random, new for every agent start. */
  readonly id: string;
  readonly host: string;
  /** /proc/sys/kernel/random/boot_id: equal only on the same machine since the same boot. */
  readonly bootId: string;
  readonly pid: number;
  /** Field 22 of /proc/PID/stat, which tells a reused pid apart. */
  readonly startTime: string;
}

/** One cluster pod CIDR split into node blocks. */
export interface NodeCidrRange {
  readonly cidr: IpPrefix;
  readonly maskSize: number;
  readonly blockCount: bigint;
  readonly band: IndexBand;
  /** Where the next candidate block is kept. */
  readonly cursorKey: string;
  /** Blocks never handed out because they overlap a service range. */
  readonly reserved: readonly ReservedBlocks[];
}

export interface ReservedBlocks extends IndexInterval {
  readonly serviceCidr: IpPrefix;
}

export const NODES_PREFIX = "/nodes/";
const ITEM_PREFIX = "/ranges/nodecidrs/";

export function nodeKey(name: string): string {
  return NODES_PREFIX + name;
}

/** Where the node's agent beats its heartbeat (node-agents.ts); removed with the node. */
export const HEARTBEATS_PREFIX = "/heartbeats/";

export function heartbeatKey(name: string): string {
  return HEARTBEATS_PREFIX + name;
}

export function nodeCidrRanges(plan: ClusterPlan): NodeCidrRange[] {
  return plan.podCidrs.map((cidr) => {
    const maskSize = plan.nodeMaskSize[cidr.family];
    const blockCount = nodeBlockCount(cidr, maskSize);
    const name = formatPrefix(cidr);
    return {
      cidr,
      maskSize,
      blockCount,
      band: {
        runPrefix: `/ranges/nodecidrs-free/${name}/`,
        first: 0n,
        last: blockCount - 1n,
        itemKey: (index: bigint) => ITEM_PREFIX + formatPrefix(subPrefix(cidr, maskSize, index)),
      },
      cursorKey: `/ranges/nodecidrs-next/${name}`,
      reserved: serviceOverlaps(cidr, maskSize, plan.serviceCidrs),
    };
  });
}

/** The block indices of `cidr` split into /maskSize that overlap each service range. */
export function serviceOverlaps(cidr: IpPrefix, maskSize: number, serviceCidrs: readonly IpPrefix[]): ReservedBlocks[] {
  const hostBits = BigInt(familyBits(cidr.family) - maskSize);
  const count = nodeBlockCount(cidr, maskSize);
  return serviceCidrs
    .filter((service) => prefixesOverlap(cidr, service))
    .map((service) => {
      if (prefixContainsPrefix(service, cidr)) return { first: 0n, last: count - 1n, serviceCidr: service };
      const first = (service.network - cidr.network) >> hostBits;
      const blocks = service.length >= maskSize ? 1n : 1n << BigInt(maskSize - service.length);
      return { first, last: first + blocks - 1n, serviceCidr: service };
    });
}

export function nodeCidrInitOperations(plan: ClusterPlan): KvOperation[] {
  return nodeCidrRanges(plan).flatMap((range) => initialRunOperations(range.band, range.reserved));
}

/** Gives a new node one pod CIDR block per cluster pod CIDR, all or none. */
export async function addNode(cluster: Cluster, name: string): Promise<Committed<NodeRecord>> {
  checkNodeName(name);
  const { store, plan } = cluster;
  const ranges = nodeCidrRanges(plan);
  return commitWithRetry(store, `allocating pod CIDRs for node ${name}`, async () => {
    const [existing, ...cursors] = await Promise.all([store.get(nodeKey(name)), ...ranges.map((range) => store.get(range.cursorKey))]);
    if (existing) throw new Error(`node ${name} already exists with pod CIDRs ${parseNode(existing.value).podCidrs.join(",")}`);
    const slots = await Promise.all(ranges.map((range, i) => findFreeFrom(store, range.band, cursors[i] ? BigInt(cursors[i]!.value) : 0n)));
    const fragments: TxnFragment[] = [];
    const podCidrs: string[] = [];
    for (const [i, range] of ranges.entries()) {
      const slot = slots[i];
      // Nothing is written before every family has a block, so a full second family takes nothing from the first.
      if (!slot) throw new Error(exhaustionMessage(range, name));
      fragments.push(claimSlot(range.band, slot, JSON.stringify({ owner: name })));
      // The cursor is a hint: racing writers may set it a little behind, which costs a probe, never a duplicate.
      fragments.push({ compares: [], operations: [{ type: "put", key: range.cursorKey, value: String(slot.index + 1n) }] });
      podCidrs.push(formatPrefix(subPrefix(range.cidr, range.maskSize, slot.index)));
    }
    const record: NodeRecord = { name, podCidrs };
    fragments.push({ compares: [{ key: nodeKey(name), modRevision: 0 }], operations: [{ type: "put", key: nodeKey(name), value: JSON.stringify(record) }] });
    return { ...joinFragments(fragments), result: record };
  });
}

/** Removes a node and frees its blocks. */
export async function removeNode(cluster: Cluster, name: string): Promise<Committed<NodeRecord>> {
  checkNodeName(name);
  const { store, plan } = cluster;
  const ranges = nodeCidrRanges(plan);
  return commitWithRetry(store, `removing node ${name}`, async () => {
    const entry = await store.get(nodeKey(name));
    if (!entry) throw new Error(`node ${name} does not exist`);
    const record = parseNode(entry.value);
    const releases = await Promise.all(
      record.podCidrs.map((text) => {
        const block = parsePrefix(text);
        const range = ranges.find((candidate) => prefixContainsPrefix(candidate.cidr, block) && candidate.maskSize === block.length);
        if (!range) return undefined;
        const index = (block.network - range.cidr.network) >> BigInt(familyBits(block.family) - range.maskSize);
        return releaseIndex(store, range.band, index, heldBy(name));
      }),
    );
    const fragments: TxnFragment[] = [
      {
        compares: [{ key: entry.key, modRevision: entry.modRevision }],
        operations: [
          { type: "delete", key: entry.key },
          { type: "delete", key: heartbeatKey(name) },
        ],
      },
      ...releases.filter((fragment) => fragment !== undefined),
    ];
    return { ...joinFragments(fragments), result: record };
  });
}

export async function listNodes(store: KvStore): Promise<NodeRecord[]> {
  const { entries } = await store.list(NODES_PREFIX);
  return entries.map((entry) => parseNode(entry.value));
}

/** Node names are DNS subdomains, as Kubernetes requires. */
export function checkNodeName(name: string): void {
  const label = "[a-z0-9]([-a-z0-9]*[a-z0-9])?";
  if (typeof name !== "string" || name.length > 253 || !new RegExp(`^${label}(\\.${label})*$`).test(name)) {
    throw new Error(
      `invalid node name ${JSON.stringify(name)}: expected a DNS subdomain of at most 253 characters: lowercase letters, digits, '-' and '.', starting and ending with a letter or digit (such as node-1)`,
    );
  }
}

function exhaustionMessage(range: NodeCidrRange, node: string): string {
  const reserved = range.reserved.map((blocks) => `${blocks.last - blocks.first + 1n} of them overlap service CIDR ${formatPrefix(blocks.serviceCidr)} and are never handed out`);
  const detail = reserved.length > 0 ? `; ${reserved.join("; ")}` : "";
  return (
    `CIDR allocation failed for node ${node}; there are no remaining CIDRs left to allocate in the accepted range ${formatPrefix(range.cidr)}: ` +
    `all ${range.blockCount} /${range.maskSize} blocks are taken${detail}`
  );
}

export function parseNode(value: string): NodeRecord {
  return JSON.parse(value) as NodeRecord;
}
