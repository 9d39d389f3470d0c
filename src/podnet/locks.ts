/** Per-key serialization inside one process: calls for the same key run one after another. */
export interface KeyedMutex {
  /** Runs `task` once every earlier task for `key` has settled. */
  run<T>(key: string, task: () => Promise<T>): Promise<T>;
}

export function keyedMutex(): KeyedMutex {
  const tails = new Map<string, Promise<unknown>>();
  return {
    async run<T>(key: string, task: () => Promise<T>): Promise<T> {
      const current = (tails.get(key) ?? Promise.resolve()).then(task, task);
      const tail = current.catch(() => undefined);
      tails.set(key, tail);
      try {
        return await current;
      } finally {
        if (tails.get(key) === tail) tails.delete(key);
      }
    },
  };
}
