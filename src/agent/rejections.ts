/**
 * What the agent refused to act on, said loudly: every cluster object is untrusted input, and
 * when one (or part of one) is refused the operator learns of it in the log, in
 * `trellis_rejected_objects_total` and, on the Kubernetes API, as an Event on the object. Each
 * loop reports the whole set it refuses now; a refusal is said once when it appears, not at
 * every sync, and again only after it went away and came back.
 */
import type { Logger } from "./log.js";
import { renderGauge } from "./metrics.js";

export type RejectedKind = "Node" | "Service" | "ServiceCIDR" | "Pod";

/** A cluster object, or part of one, the agent refused to act on. */
export interface Rejection {
  readonly kind: RejectedKind;
  /** A Service's or a Pod's namespace; none for Nodes. */
  readonly namespace?: string;
  readonly name: string;
  /** A short fixed word, the metric's label: `pod-cidr-conflict`, `external-ip-not-allowed`, … */
  readonly reason: string;
  /** Names the object, the value and why. */
  readonly message: string;
}

/** Where a rejection is published beyond the log and metrics (Events on the Kubernetes API). */
export type RejectionPublisher = (rejection: Rejection) => void;

export class Rejections {
  /** By source, the rejections it reported last, by their key. */
  private readonly active = new Map<string, Map<string, Rejection>>();
  /** By `KIND REASON`: how many times one appeared. */
  private readonly counts = new Map<string, number>();
  private publisher: RejectionPublisher | undefined;

  constructor(private readonly log: Logger) {}

  /** Where to publish from now on (the Kubernetes feed's Events). */
  publishWith(publisher: RejectionPublisher): void {
    this.publisher = publisher;
  }

  /** The rejections `source` (one loop, or one object of it) makes now; it replaces what that source reported before. */
  report(source: string, rejections: readonly Rejection[]): void {
    const before = this.active.get(source);
    const now = new Map<string, Rejection>();
    for (const rejection of rejections) {
      const key = `${rejection.kind} ${rejection.namespace ?? ""}/${rejection.name} ${rejection.reason} ${rejection.message}`;
      now.set(key, rejection);
      if (before?.has(key)) continue;
      const counted = `${rejection.kind} ${rejection.reason}`;
      this.counts.set(counted, (this.counts.get(counted) ?? 0) + 1);
      this.log("warn", "refused", {
        kind: rejection.kind,
        object: rejection.namespace === undefined ? rejection.name : `${rejection.namespace}/${rejection.name}`,
        reason: rejection.reason,
        message: rejection.message,
      });
      this.publisher?.(rejection);
    }
    if (now.size) this.active.set(source, now);
    else this.active.delete(source);
  }

  /** How many refusals stand now, by kind. */
  standing(): Map<RejectedKind, number> {
    const standing = new Map<RejectedKind, number>();
    for (const rejections of this.active.values()) for (const rejection of rejections.values()) standing.set(rejection.kind, (standing.get(rejection.kind) ?? 0) + 1);
    return standing;
  }

  metrics(): string {
    const split = (key: string) => ({ kind: key.slice(0, key.indexOf(" ")), reason: key.slice(key.indexOf(" ") + 1) });
    return [
      renderGauge("trellis_rejected_objects_total", "Cluster objects (or parts of them) the agent refused to act on, by kind and reason; counted when a refusal appears.", [...this.counts].sort().map(([key, value]) => ({ labels: split(key), value })), "counter"),
      renderGauge("trellis_rejected_objects", "Refusals standing now, by kind.", [...this.standing()].sort().map(([kind, value]) => ({ labels: { kind }, value }))),
    ].join("");
  }
}
