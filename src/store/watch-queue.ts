/**
 * Turns a backend's pushed events into the KvWatch async iterable: events queue until the
 * consumer pulls them, an error ends the iteration by throwing once, and stop() ends it.
 */
import type { KvEvent, KvWatch } from "./kv.js";

export interface WatchQueue {
  readonly watch: KvWatch;
  push(event: KvEvent): void;
  fail(error: Error): void;
  readonly stopped: boolean;
}

/** `onStop` runs once, when the consumer stops or the watch fails. */
export function createWatchQueue(onStop: () => void): WatchQueue {
  const buffered: KvEvent[] = [];
  let failure: Error | undefined;
  let stopped = false;
  let waiter: { resolve: (result: IteratorResult<KvEvent>) => void; reject: (error: Error) => void } | undefined;

  const finish = (): void => {
    if (stopped) return;
    stopped = true;
    onStop();
  };

  const settle = (): void => {
    if (!waiter) return;
    const pending = waiter;
    if (buffered.length > 0) {
      waiter = undefined;
      pending.resolve({ value: buffered.shift()!, done: false });
    } else if (failure) {
      waiter = undefined;
      const error = failure;
      failure = undefined;
      pending.reject(error);
    } else if (stopped) {
      waiter = undefined;
      pending.resolve({ value: undefined, done: true });
    }
  };

  const iterator: AsyncIterator<KvEvent> = {
    next: () => {
      if (buffered.length > 0) return Promise.resolve({ value: buffered.shift()!, done: false });
      if (failure) {
        const error = failure;
        failure = undefined;
        return Promise.reject(error);
      }
      if (stopped) return Promise.resolve({ value: undefined, done: true });
      return new Promise((resolve, reject) => {
        waiter = { resolve, reject };
      });
    },
    return: () => {
      buffered.length = 0;
      finish();
      settle();
      return Promise.resolve({ value: undefined, done: true });
    },
  };

  const watch: KvWatch = {
    [Symbol.asyncIterator]: () => iterator,
    stop: () => {
      buffered.length = 0;
      finish();
      settle();
    },
  };

  return {
    watch,
    get stopped() {
      return stopped;
    },
    push: (event) => {
      if (stopped) return;
      buffered.push(event);
      settle();
    },
    fail: (error) => {
      if (stopped) return;
      failure = error;
      finish();
      settle();
    },
  };
}
