/** Bounded concurrency for the lab's many small jobs: namespaces, CNI calls, probes. */
/**
 * `work` over `items`, at most `limit` at a time; results in item order. After a failure no new
 * item starts, and the first error is thrown once the running ones have settled, so nothing is
 * still working when the caller cleans up.
 */
export async function mapConcurrently<T, R>(items: readonly T[], limit: number, work: (item: T, index: number) => Promise<R>): Promise<R[]> {
  const results = new Array<R>(items.length);
  let next = 0;
  let failure: { error: unknown } | undefined;
  const worker = async () => {
    while (next < items.length && !failure) {
      const index = next++;
      try {
        results[index] = await work(items[index], index);
      } catch (error) {
        failure ??= { error };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  if (failure) throw failure.error;
  return results;
}
