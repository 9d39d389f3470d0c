/**
 * The agent's metrics in Prometheus' text format (version 0.0.4), named after kube-proxy's where
 * they mean the same: histograms of how long a sync of the Service rules takes and of how long a
 * change takes from the store to the kernel, gauges of what the rules hold.
 */

/** kube-proxy's buckets for sync durations: 1 ms doubling to about 16 s. */
export const SYNC_BUCKETS = Array.from({ length: 15 }, (_, i) => 0.001 * 2 ** i);
/** Programming latency: 1 ms to a few minutes. */
export const PROGRAMMING_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300];

export class Histogram {
  private readonly counts: number[];
  private sum = 0;
  private count = 0;

  constructor(
    readonly name: string,
    readonly help: string,
    readonly buckets: readonly number[],
  ) {
    this.counts = buckets.map(() => 0);
  }

  observe(seconds: number): void {
    if (!Number.isFinite(seconds) || seconds < 0) return;
    this.sum += seconds;
    this.count++;
    for (const [i, bound] of this.buckets.entries()) if (seconds <= bound) this.counts[i]++;
  }

  render(): string {
    const lines = [`# HELP ${this.name} ${this.help}`, `# TYPE ${this.name} histogram`];
    for (const [i, bound] of this.buckets.entries()) lines.push(`${this.name}_bucket{le="${formatNumber(bound)}"} ${this.counts[i]}`);
    lines.push(`${this.name}_bucket{le="+Inf"} ${this.count}`, `${this.name}_sum ${formatNumber(this.sum)}`, `${this.name}_count ${this.count}`);
    return lines.join("\n") + "\n";
  }
}

export interface GaugeSample {
  readonly labels?: Readonly<Record<string, string>>;
  readonly value: number;
}

/** A gauge (or counter, with `type`) with its samples. */
export function renderGauge(name: string, help: string, samples: readonly GaugeSample[], type: "gauge" | "counter" = "gauge"): string {
  const lines = [`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`];
  for (const sample of samples) {
    const labels = Object.entries(sample.labels ?? {});
    const text = labels.length ? `{${labels.map(([key, value]) => `${key}="${escapeLabel(value)}"`).join(",")}}` : "";
    lines.push(`${name}${text} ${formatNumber(sample.value)}`);
  }
  return lines.join("\n") + "\n";
}

function escapeLabel(value: string): string {
  return value.replace(/\\/g, "\\\\").replace(/\n/g, "\\n").replace(/"/g, '\\"');
}

function formatNumber(value: number): string {
  return Number.isInteger(value) ? String(value) : String(Number(value.toPrecision(12)));
}
