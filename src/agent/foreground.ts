/**
 * What the agent puts first: CNI requests, which a runtime waits on to start a pod. The Service
 * proxy's full writes work in slices (ProxyState.build, the netlink encoder); between slices they
 * call `pause`, which is a turn of the event loop while no request is in progress and, while one
 * is, a wait until it is answered. Without it a pod's ADD, a dozen round trips to the kernel,
 * waited behind a slice at each: 34 ms at p50 during a 10,000-Service write against 9 ms idle.
 * A slice waits at most `maxWaitMs` at a time, so a stream of requests slows a write but never
 * stops it.
 */
export class Foreground {
  private active = 0;
  private waiting: Array<() => void> = [];
  /** Waits cut short because requests went on for `maxWaitMs`, since the start. */
  cutShort = 0;

  constructor(private readonly maxWaitMs = 20) {}

  /** A request starts; the function returned ends it (once, however often it is called). */
  begin(): () => void {
    this.active++;
    let ended = false;
    return () => {
      if (ended) return;
      ended = true;
      if (--this.active > 0) return;
      const waiting = this.waiting;
      this.waiting = [];
      for (const resume of waiting) resume();
    };
  }

  /** Whether a request is in progress. */
  get busy(): boolean {
    return this.active > 0;
  }

  /** Between two slices of background work: see the class. */
  readonly pause = (): Promise<void> => {
    if (this.active === 0) return new Promise<void>((resolve) => setImmediate(resolve));
    return new Promise<void>((resolve) => {
      const resume = () => {
        clearTimeout(timer);
        // The request's answer goes out before the next slice starts.
        setImmediate(resolve);
      };
      const timer = setTimeout(() => {
        this.waiting = this.waiting.filter((waiting) => waiting !== resume);
        this.cutShort++;
        resolve();
      }, this.maxWaitMs);
      this.waiting.push(resume);
    });
  };
}
