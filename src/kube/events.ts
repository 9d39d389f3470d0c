/**
 * Events (events.k8s.io/v1) the agent writes about objects it refuses, so that `kubectl describe`
 * and `kubectl get events` show why a Node is not routed to or a Service's external address is
 * not served. Events are a courtesy, never worth the agent's work: they are rate-limited (a
 * cluster full of bad objects must not make every agent flood the API server), sent one at a
 * time in the background, and a failure is logged once and forgotten.
 */
import { randomBytes } from "node:crypto";
import type { KubeClient } from "./client.js";

export interface EventSubject {
  readonly kind: "Node" | "Service" | "ServiceCIDR" | "Pod";
  /** Services' namespace; Nodes' events go to `default`, as the kubelet's do. */
  readonly namespace?: string;
  readonly name: string;
}

export interface EventReport {
  readonly regarding: EventSubject;
  /** UpperCamelCase, as Kubernetes' reasons are: `PodCIDRConflict`. */
  readonly reason: string;
  /** At most 1 kB; longer is cut. */
  readonly note: string;
}

/** At most this many Events are sent at once, then one more each REFILL_MS: 10 a minute at length. */
const BURST = 20;
const REFILL_MS = 6_000;
/** Events waiting to be sent beyond this are dropped (and counted). */
const MAX_QUEUED = 100;
const MAX_NOTE = 1024;

export class EventRecorder {
  private tokens = BURST;
  private refilledAt = Date.now();
  private readonly queue: EventReport[] = [];
  private sending = false;
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;
  /** Events sent, and dropped (over the rate, or refused by the API server). */
  readonly counts = { sent: 0, dropped: 0 };

  constructor(
    private readonly client: KubeClient,
    /** The node the agent serves: the Event's reportingInstance. */
    private readonly instance: string,
    private readonly failed: (error: Error) => void,
  ) {}

  /** Queues a Warning event; it goes out when the rate allows, or is dropped. */
  record(report: EventReport): void {
    if (this.stopped) return;
    if (this.queue.length >= MAX_QUEUED) {
      this.counts.dropped++;
      return;
    }
    this.queue.push(report);
    void this.drain();
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
    this.queue.length = 0;
  }

  private refill(): void {
    const now = Date.now();
    const earned = Math.floor((now - this.refilledAt) / REFILL_MS);
    if (earned > 0) {
      this.tokens = Math.min(BURST, this.tokens + earned);
      this.refilledAt += earned * REFILL_MS;
    }
  }

  private async drain(): Promise<void> {
    if (this.sending) return;
    this.sending = true;
    try {
      while (this.queue.length && !this.stopped) {
        this.refill();
        if (this.tokens < 1) {
          clearTimeout(this.timer);
          this.timer = setTimeout(() => void this.drain(), REFILL_MS);
          return;
        }
        this.tokens--;
        const report = this.queue.shift()!;
        try {
          await this.send(report);
          this.counts.sent++;
        } catch (error) {
          this.counts.dropped++;
          this.failed(error as Error);
        }
      }
    } finally {
      this.sending = false;
    }
  }

  private async send(report: EventReport): Promise<void> {
    const namespace = report.regarding.namespace ?? "default";
    // A MicroTime: exactly six digits of fraction.
    const now = new Date().toISOString().replace(/\.(\d{3})Z$/, ".$1000Z");
    const name = `${report.regarding.name}.${randomBytes(8).toString("hex")}`;
    await this.client.request("POST", `/apis/events.k8s.io/v1/namespaces/${encodeURIComponent(namespace)}/events`, {
      body: {
        apiVersion: "events.k8s.io/v1",
        kind: "Event",
        metadata: { name, namespace },
        eventTime: now,
        type: "Warning",
        reason: report.reason,
        action: "Refused",
        note: report.note.length > MAX_NOTE ? `${report.note.slice(0, MAX_NOTE - 3)}...` : report.note,
        reportingController: "trellis.dev/agent",
        reportingInstance: `trellis-agent-${this.instance}`.slice(0, 128),
        regarding: { apiVersion: report.regarding.kind === "ServiceCIDR" ? "networking.k8s.io/v1" : "v1", kind: report.regarding.kind, name: report.regarding.name, ...(report.regarding.namespace ? { namespace: report.regarding.namespace } : {}) },
      },
      timeoutMs: 10_000,
    });
  }
}
