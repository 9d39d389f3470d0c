/**
 * A reader of the kernel kept running: `trellis-nft-batch` in one of its listening modes
 * (--conntrack, --nflog), its output handed on chunk by chunk, started again with a doubling
 * delay (1 s to 60 s; back to 1 s once it delivers) when it stops. Its stdin stays open: it exits
 * when stdin closes, so a kill -9 of the agent ends it too (and frees what it had bound).
 */
import { spawn, type ChildProcessWithoutNullStreams } from "node:child_process";

export interface KeptReader {
  stop(): void;
}

/**
 * Runs `path args` until `stop`. `started` is called for each run and returns what takes that
 * run's output (so a record or line split across chunks never joins one of the next run's);
 * `stopped` hears why a run ended and when the next starts.
 */
export function keepReading(path: string, args: readonly string[], started: () => (chunk: Buffer) => void, stopped: (why: string, retryInMs: number) => void): KeptReader {
  let child: ChildProcessWithoutNullStreams | undefined;
  let done = false;
  let retryMs = 1_000;
  let timer: NodeJS.Timeout | undefined;
  const start = () => {
    if (done) return;
    const reader = spawn(path, args, { stdio: ["pipe", "pipe", "pipe"] });
    child = reader;
    const take = started();
    let stderr = "";
    reader.stderr.on("data", (chunk: Buffer) => (stderr = (stderr + chunk.toString("utf8")).slice(-1000)));
    reader.stdout.on("data", (chunk: Buffer) => {
      retryMs = 1_000;
      take(chunk);
    });
    reader.on("error", (error) => (stderr += String(error)));
    reader.on("close", (code) => {
      if (child === reader) child = undefined;
      if (done) return;
      stopped(`exit ${code}: ${stderr.trim()}`, retryMs);
      timer = setTimeout(start, retryMs);
      retryMs = Math.min(retryMs * 2, 60_000);
    });
  };
  start();
  return {
    stop() {
      done = true;
      clearTimeout(timer);
      child?.kill();
      child = undefined;
    },
  };
}
