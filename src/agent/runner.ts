/**
 * The agent's loops' way of running a sync: one at a time; a request while one runs makes one
 * more run after it (however many requests came), at least `minIntervalMs` after the last one
 * started; a run that fails is run again after a delay that doubles up to a bound, and the
 * delay starts over after one succeeds. The route loop and the Service proxy run through it.
 */

export interface SyncRunnerOptions {
  /** The least time between two runs' starts; 0: each run as soon as the last ended. */
  readonly minIntervalMs: number;
  /** A failed run is run again after this much, doubling up to `maxRetryMs`; undefined: not retried (the next request runs it). */
  readonly firstRetryMs?: number;
  readonly maxRetryMs?: number;
  /** One run; a rejection is a failure (its error is handed to `failed`). */
  readonly run: () => Promise<void>;
  /** Told of a failed run and when it is tried again (undefined: not by itself). */
  readonly failed?: (error: unknown, retryInMs: number | undefined) => void;
}

export class SyncRunner {
  private stopped = false;
  private pending = false;
  private scheduled: (() => void) | undefined;
  private current: Promise<void> | undefined;
  /** When the running run started (performance.now()). */
  private since: number | undefined;
  private lastStartedAt = 0;
  private retryTimer: NodeJS.Timeout | undefined;
  private retryMs: number | undefined;

  constructor(private readonly options: SyncRunnerOptions) {
    this.retryMs = options.firstRetryMs;
  }

  /** Asks for a run: now if none runs and the last started long enough ago, else as soon as it may. */
  request(): void {
    if (this.stopped) return;
    this.pending = true;
    if (this.current || this.scheduled) return;
    const wait = Math.max(0, this.lastStartedAt + this.options.minIntervalMs - Date.now());
    const start = () => {
      this.scheduled = undefined;
      this.pending = false;
      this.lastStartedAt = Date.now();
      this.since = performance.now();
      this.current = this.runOnce().finally(() => {
        this.current = undefined;
        this.since = undefined;
        if (this.pending) this.request();
      });
    };
    // A run due now starts on the next turn of the event loop: setTimeout(start, 0) would wait
    // a whole millisecond (Node's shortest timeout), a tenth of a change at 10,000 Services.
    if (wait > 0) {
      const timer = setTimeout(start, wait);
      this.scheduled = () => clearTimeout(timer);
    } else {
      const immediate = setImmediate(start);
      this.scheduled = () => clearImmediate(immediate);
    }
  }

  /** Whether a run is under way. */
  get running(): boolean {
    return this.current !== undefined;
  }

  /** Whether a run is asked for and has not started. */
  get waiting(): boolean {
    return this.pending || this.scheduled !== undefined;
  }

  /** How long the run under way has run, in seconds; 0 when none runs. */
  runningSeconds(): number {
    return this.since === undefined ? 0 : (performance.now() - this.since) / 1000;
  }

  /** When the last run started (epoch ms); 0 before the first. */
  get lastStarted(): number {
    return this.lastStartedAt;
  }

  /** No run after this one; resolves once the one under way (if any) ended. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.scheduled?.();
    this.scheduled = undefined;
    clearTimeout(this.retryTimer);
    await this.current;
  }

  private async runOnce(): Promise<void> {
    try {
      await this.options.run();
      this.retryMs = this.options.firstRetryMs;
    } catch (error) {
      const delay = this.retryMs;
      this.options.failed?.(error, delay);
      if (delay === undefined) return;
      clearTimeout(this.retryTimer);
      this.retryTimer = setTimeout(() => {
        this.retryTimer = undefined;
        this.request();
      }, delay);
      this.retryMs = Math.min(delay * 2, this.options.maxRetryMs ?? delay * 2);
    }
  }
}
