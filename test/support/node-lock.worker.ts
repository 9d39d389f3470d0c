/**
 * A separate process taking a state directory's node-wide lock, in lockstep with others:
 * `node-lock.worker.ts DIR`. Round N opens DIR/N (fresh for every round, so all of them open its
 * lock file together) and answers `ok` or the error.
 */
import { join } from "node:path";
import { openPodNet, withNodeLock } from "../../src/podnet/handle.js";
import { lockstepRounds } from "./workers.js";

const [dir] = process.argv.slice(2);
for await (const round of lockstepRounds()) {
  try {
    const net = openPodNet(join(dir, String(round)));
    try {
      await withNodeLock(net, async () => undefined);
    } finally {
      net.close();
    }
    process.stdout.write("ok\n");
  } catch (error) {
    process.stdout.write(`${(error as { code?: string }).code ?? ""} ${String(error).replace(/\n/g, " ")}\n`);
  }
}
