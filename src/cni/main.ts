export async function runCniPlugin(): Promise<number> {
  return 0;
}
