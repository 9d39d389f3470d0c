/**
 * Worker scripts in test/support, each run as its own Node process the way the tests run
 * (TypeScript through tsx): for tests that need more than one process on one store.
 */
import { execFile, spawn, type ChildProcessByStdio } from "node:child_process";
import { join } from "node:path";
import { createInterface } from "node:readline";
import type { Readable, Writable } from "node:stream";
import { promisify } from "node:util";

const execFileAsync = promisify(execFile);

interface WorkerExit {
  readonly code: number;
  readonly stderr: string;
}

function workerArgs(worker: string, args: readonly string[]): string[] {
  return ["--import", "tsx", join(import.meta.dirname, worker), ...args];
}

/** Runs `worker` (a file name in test/support) to its end; rejects, with its stderr, when it fails. */
export function runWorker(worker: string, args: readonly string[]): Promise<{ stdout: string; stderr: string }> {
  return execFileAsync(process.execPath, workerArgs(worker, args), { maxBuffer: 64 * 1024 * 1024 });
}

/**
 * Runs workers in lockstep: each says it is ready, then every round is released to all of them
 * at once and the next one only when each has answered, so that their work reaches the store at
 * the same moment in every round instead of a Node start-up apart. Resolves with each worker's
 * answers, answers[worker][round].
 */
export async function runWorkersInLockstep(worker: string, argLists: readonly (readonly string[])[], rounds: number): Promise<string[][]> {
  const held = argLists.map((args) => startLockstepWorker(worker, args));
  try {
    await Promise.all(held.map((each) => each.nextLine("ready")));
    const answers: string[][] = held.map(() => []);
    for (let round = 0; round < rounds; round++) {
      for (const { child } of held) child.stdin.write("go\n");
      const lines = await Promise.all(held.map((each) => each.nextLine(`round ${round}`)));
      lines.forEach((line, i) => answers[i].push(line));
    }
    for (const { child } of held) child.stdin.end();
    for (const exit of await Promise.all(held.map((each) => each.exit))) {
      if (exit.code !== 0) throw new Error(`worker ${worker} exited with code ${exit.code}: ${exit.stderr.trim() || "no output"}`);
    }
    return answers;
  } finally {
    for (const { child } of held) if (child.exitCode === null) child.kill();
  }
}

interface LockstepWorker {
  readonly child: ChildProcessByStdio<Writable, Readable, Readable>;
  /** The worker's next line; rejects, with its stderr, when it exits first. */
  nextLine(awaiting: string): Promise<string>;
  readonly exit: Promise<WorkerExit>;
}

function startLockstepWorker(worker: string, args: readonly string[]): LockstepWorker {
  const child = spawn(process.execPath, workerArgs(worker, args), { stdio: ["pipe", "pipe", "pipe"] });
  // A worker that already exited cannot be released; its exit says why.
  child.stdin.on("error", () => undefined);
  let stderr = "";
  child.stderr.setEncoding("utf8").on("data", (text: string) => (stderr += text));
  const exit = new Promise<WorkerExit>((resolve, reject) => {
    child.once("error", reject);
    child.once("close", (code) => resolve({ code: code ?? -1, stderr }));
  });
  const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
  const nextLine = async (awaiting: string): Promise<string> => {
    const next = await lines.next();
    if (!next.done) return next.value;
    const { code } = await exit;
    throw new Error(`worker ${worker} exited with code ${code} before ${awaiting}: ${stderr.trim() || "no output"}`);
  };
  return { child, nextLine, exit };
}

/**
 * In a worker run by `runWorkersInLockstep`: says it is ready, then yields each round as it is
 * released. Answer every round with one line on stdout.
 */
export async function* lockstepRounds(): AsyncGenerator<number> {
  process.stdout.write("ready\n");
  let round = 0;
  for await (const _ of createInterface({ input: process.stdin })) yield round++;
}
