/**
 * CNI requests served through one long-lived handle, as the agent's CNI server serves them, for
 * test/cni-masquerade.test.ts: `masquerade-handle.worker.ts WRITER`, run in a node's namespace
 * (through nsenter), with WRITER the netlink writer the handle uses. Each line of stdin is a
 * request (`{"env": {...}, "stdin": "..."}`); each answer is a line of stdout, the CniReply.
 */
import { createInterface } from "node:readline";
import { handleCniRequest } from "../../src/cni/plugin.js";
import { openPodNet, type PodNet } from "../../src/podnet/handle.js";

const [writer] = process.argv.slice(2);
let net: PodNet | undefined;
const source = {
  acquire: (stateDir: string, field: string) => (net ??= openPodNet(stateDir, { field, nftWriter: writer })),
  release: () => undefined,
};
for await (const line of createInterface({ input: process.stdin })) {
  const request = JSON.parse(line) as { env: Record<string, string>; stdin: string };
  process.stdout.write(JSON.stringify(await handleCniRequest(request, source)) + "\n");
}
net?.close();
