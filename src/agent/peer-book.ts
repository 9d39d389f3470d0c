/**
 * Every other node's claim, as the datastore holds it, and what this node admits of them
 * (dataplane/peer-admission.ts). Admission is decided over all claims at once (who claimed a
 * pod CIDR first depends on the others), so a change to one claim is settled against all of
 * them and gives the names whose admitted part changed: those, and only those, the route sync
 * works on. Refusals go to the agent's Rejections.
 */
import { admitPeers, type PeerClaim, type PeerPlan } from "../dataplane/peer-admission.js";
import type { NodeEndpoint } from "../dataplane/node-network.js";
import { formatIp, formatPrefix } from "../net/ip.js";
import type { Rejections } from "./rejections.js";

export class PeerBook {
  private readonly claims = new Map<string, PeerClaim>();
  /** Each claim as text, to tell a real change from a rewrite of the same object. */
  private readonly claimKeys = new Map<string, string>();
  private admitted = new Map<string, NodeEndpoint>();
  private admittedKeys = new Map<string, string>();

  constructor(
    private readonly plan: PeerPlan,
    private readonly rejections: Rejections,
  ) {}

  /** A node's claim came or changed (undefined: it went); true when it differs from the one held. */
  put(name: string, claim: PeerClaim | undefined): boolean {
    if (name === this.plan.self.name) return false;
    const key = claim && JSON.stringify(claim, (_, value: unknown) => (typeof value === "bigint" ? value.toString() : value));
    if (key === this.claimKeys.get(name)) return false;
    if (claim) {
      this.claims.set(name, claim);
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

  has(name: string): boolean {
    return this.claims.has(name);
  }

  /** The claim held for `name`. */
  claim(name: string): PeerClaim | undefined {
    return this.claims.get(name);
  }

  /** Admits every claim again; returns the names whose admitted part came, changed or went. */
  settle(): string[] {
    const { peers, refusals } = admitPeers(this.plan, this.claims.values());
    const keys = new Map([...peers].map(([name, endpoint]) => [name, endpointKey(endpoint)]));
    const changed = [...keys].filter(([name, key]) => this.admittedKeys.get(name) !== key).map(([name]) => name);
    for (const name of this.admittedKeys.keys()) if (!keys.has(name)) changed.push(name);
    this.admitted = new Map(peers);
    this.admittedKeys = keys;
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
}

function endpointKey(endpoint: NodeEndpoint): string {
  return [endpoint.addresses.map(formatIp).join(","), endpoint.podCidrs.map(formatPrefix).join(","), endpoint.vteps.map((vtep) => `${vtep.family}=${vtep.mac}`).join(",")].join(" ");
}
