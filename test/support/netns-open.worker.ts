/**
 * `netns-open.worker.ts PATH…`: opens each PATH with openNetns and prints one JSON line per
 * path, `{ "path": …, "error"?: … }`, so a test can ask from inside a private mount namespace.
 */
import { openNetns } from "../../src/linux/netns.js";

for (const path of process.argv.slice(2)) {
  try {
    openNetns(path).close();
    process.stdout.write(`${JSON.stringify({ path })}\n`);
  } catch (error) {
    process.stdout.write(`${JSON.stringify({ path, error: (error as Error).message })}\n`);
  }
}
