/**
 * Every other node's claim, as the datastore holds it, and what this node admits of them
 * (dataplane/peer-admission.ts). Admission is decided over all claims at once (who claimed a
 * pod CIDR first depends on the others), so a change to one claim is settled against all of
 * them and gives the names whose admitted part changed: those, and only those, the route sync
 * works on. Each claim is checked against the plan once, when it changes; a settle only weighs
 * the claims against each other. Refusals go to the agent's Rejections.
 */
import { admitPrepared, prepareClaim, type PeerClaim, type PeerPlan, type PreparedClaim } from "../dataplane/peer-admission.js";
import type { NodeEndpoint } from "../dataplane/node-network.js";
import { formatIp, formatPrefix } from "../net/ip.js";
import type { Rejections } from "./rejections.js";

export class PeerBook {
  private readonly claims = new Map<string, PreparedClaim>();
  /** Each claim as text, to tell a real change from a rewrite of the same object. */
  private readonly claimKeys = new Map<string, string>();
  private admitted = new Map<string, NodeEndpoint>();
  private admittedKeys = new Map<string, string>();
  /** The reserved addresses (see `reservedAddresses`), built when first asked for after a settle changed something. */
  private reserved: ReadonlyMap<string, string> | undefined;

  /** `datastore`: the datastore's own addresses (`formatIp` → what each is), which no Service may take either. */
  constructor(
    private readonly plan: PeerPlan,
    private readonly rejections: Rejections,
    private readonly datastore: ReadonlyMap<string, string> = new Map(),
  ) {}

  /** A node's claim came or changed (undefined: it went); true when it differs from the one held. */
  put(name: string, claim: PeerClaim | undefined): boolean {
    if (name === this.plan.self.name) return false;
    const key = claim && JSON.stringify(claim, (_, value: unknown) => (typeof value === "bigint" ? value.toString() : value));
    if (key === this.claimKeys.get(name)) return false;
    if (claim) {
      this.claims.set(name, prepareClaim(this.plan, claim));
      this.claimKeys.set(name, key!);
    } else {
      this.claims.delete(name);
      this.claimKeys.delete(name);
    }
    return true;
  }

  /** Forgets every claim (before a new list puts them back). */
  clear(): void {
    this.claims.clear();
    this.claimKeys.clear();
  }

  /** When the claim held for `name` was made. */
  since(name: string): number | undefined {
    return this.claims.get(name)?.since;
  }

  /** Admits every claim again; returns the names whose admitted part came, changed or went. */
  settle(): string[] {
    const { peers, refusals } = admitPrepared(this.plan, this.claims.values());
    const changed: string[] = [];
    const keys = new Map<string, string>();
    for (const [name, endpoint] of peers) {
      // A peer nothing was taken from is its prepared endpoint, the same object as long as its claim is.
      const key = this.admitted.get(name) === endpoint ? this.admittedKeys.get(name)! : endpointKey(endpoint);
      keys.set(name, key);
      if (this.admittedKeys.get(name) !== key) changed.push(name);
    }
    for (const name of this.admittedKeys.keys()) if (!keys.has(name)) changed.push(name);
    this.admitted = new Map(peers);
    this.admittedKeys = keys;
    if (changed.length) this.reserved = undefined;
    this.rejections.report("peers", refusals.map((refusal) => ({ kind: "Node", name: refusal.peer, reason: refusal.reason, message: refusal.message })));
    return changed;
  }

  /** A published peer as admitted, if it is one. */
  get(name: string): NodeEndpoint | undefined {
    return this.admitted.get(name);
  }

  all(): NodeEndpoint[] {
    return [...this.admitted.values()];
  }

  /**
   * What no Service may take as an external address, by `formatIp`, with what each is: every node
   * address this node knows of (its own, every admitted peer's, live or not) and the datastore's.
   * The same map until a settle changes a peer.
   */
  reservedAddresses(): ReadonlyMap<string, string> {
    if (!this.reserved) {
      const reserved = new Map(this.datastore);
      for (const node of [this.plan.self, ...this.admitted.values()]) for (const address of node.addresses) reserved.set(formatIp(address), `node ${node.name}'s address`);
      this.reserved = reserved;
    }
    return this.reserved;
  }
}

function endpointKey(endpoint: NodeEndpoint): string {
  return [endpoint.addresses.map(formatIp).join(","), endpoint.podCidrs.map(formatPrefix).join(","), endpoint.vteps.map((vtep) => `${vtep.family}=${vtep.mac}`).join(",")].join(" ");
}
