/**
 * The netlink writer: `trellis-nft-batch`, kept running, hands batches that nft/netlink.ts
 * encoded to the kernel, one transaction each. Only this file sends them.
 */
import { spawn, type ChildProcessWithoutNullStreams } from "node:child_process";
import { existsSync } from "node:fs";
import { setPriority } from "node:os";
import { encodeBatchSliced, nextTurn } from "../nft/netlink.js";
import type { Op } from "../nft/model.js";
import { checkName } from "../nft/names.js";
import { run } from "./exec.js";

/** The kernel refused a batch (it changed nothing), or the writer could not send it. */
export class NftWriteError extends Error {}

/**
 * `trellis-nft-batch --serve`, kept running: batch after batch on one netlink socket, in this
 * process's network namespace. (A process that has written to nf_tables waits about 10 ms in its
 * exit for the kernel to release its socket: a writer per batch would pay it every change.)
 * One batch at a time; a writer that ended is started again for the next batch.
 */
/**
 * A batch the kernel has not answered in this long means a stuck writer (a full write at 10,000
 * Services takes about 3 s): below the Service proxy's stuck-sync bound, as nft's 30 s is.
 */
export const NFT_APPLY_TIMEOUT_MS = 30_000;

export interface NftWriterOptions {
  /** What the encoder waits on between slices; a turn of the event loop unless given. */
  readonly pause?: () => Promise<void>;
  /**
   * The writer process's nice value: a background writer (the Service proxy's full writes, whose
   * kernel work runs in the writer's own context) gives the CPU up to a pod's ADD on a busy node.
   */
  readonly niceness?: number;
}

export class NftBatchWriter {
  private child: ChildProcessWithoutNullStreams | undefined;
  private readonly waiting: Array<{ resolve: () => void; reject: (error: Error) => void }> = [];
  private received = Buffer.alloc(0);

  private readonly pause: () => Promise<void>;

  constructor(
    readonly path: string,
    private readonly options: NftWriterOptions = {},
  ) {
    this.pause = options.pause ?? nextTurn;
  }

  /** The running writer's process id, if one runs. */
  get pid(): number | undefined {
    return this.child?.pid;
  }

  /** Whether the program is there. */
  available(): boolean {
    return existsSync(this.path);
  }

  /**
   * Encodes `ops` (nft/netlink.ts, in slices that let the event loop turn) and applies them as
   * one transaction; see `apply`.
   */
  async applyOps(ops: readonly Op[], timeoutMs = NFT_APPLY_TIMEOUT_MS): Promise<void> {
    return this.apply(await encodeBatchSliced(ops, undefined, this.pause), timeoutMs);
  }

  /**
   * Applies each list of steps as its own transaction, in order: the next is encoded while the
   * kernel applies the one before (the writer takes them one by one), so a full write of many
   * tables costs about the longer of the two, not their sum. Rejects with the first refusal;
   * the transactions before it stay applied.
   */
  async applyEach(groups: Iterable<readonly Op[]>, timeoutMs = NFT_APPLY_TIMEOUT_MS): Promise<void> {
    const applied: Array<Promise<void>> = [];
    for (const group of groups) {
      const batch = await encodeBatchSliced(group, undefined, this.pause);
      const done = this.apply(batch, timeoutMs);
      // Seen at once, so a refusal is never an unhandled rejection while later ones encode.
      done.catch(() => undefined);
      applied.push(done);
    }
    for (const done of applied) await done;
  }

  /**
   * Applies `batch` whole, or rejects with the kernel's reason (then nothing of it applied).
   * A writer that has not answered within `timeoutMs` is killed (every batch waiting on it is
   * refused, and the next starts a new one): the caller's loop never waits on it for ever.
   */
  apply(batch: Buffer, timeoutMs = NFT_APPLY_TIMEOUT_MS): Promise<void> {
    const child = this.child ?? this.start();
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        if (this.child === child) this.child = undefined;
        child.kill("SIGKILL");
      }, timeoutMs);
      const done = () => clearTimeout(timer);
      this.waiting.push({ resolve: () => (done(), resolve()), reject: (error) => (done(), reject(error)) });
      const header = Buffer.alloc(4);
      header.writeUInt32BE(batch.length);
      child.stdin.write(header);
      child.stdin.write(batch);
    });
  }

  /**
   * Applies `ops` as one transaction through a writer of its own that exits after it (the
   * program with the batch on stdin), not the one kept running: for a table written now and
   * then (at start, on a rare change, when repaired), which is not worth a process kept for it.
   */
  async applyOnce(ops: readonly Op[], timeoutMs = NFT_APPLY_TIMEOUT_MS): Promise<void> {
    const batch = await encodeBatchSliced(ops, undefined, this.pause);
    await new Promise<void>((resolve, reject) => {
      const child = spawn(this.path, [], { stdio: ["pipe", "ignore", "pipe"] });
      let stderr = "";
      const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
      child.stderr.on("data", (chunk: Buffer) => (stderr = (stderr + chunk.toString("utf8")).slice(-4000)));
      child.on("error", (error) => {
        clearTimeout(timer);
        reject(new NftWriteError(`${this.path}: ${error.message}`));
      });
      child.on("close", (code, signal) => {
        clearTimeout(timer);
        if (code === 0) resolve();
        else reject(new NftWriteError(`${this.path} refused the batch (${signal ? `killed by ${signal}` : `exit ${code}`}): ${stderr.trim()}`));
      });
      child.stdin.on("error", () => undefined);
      child.stdin.end(batch);
    });
  }

  /**
   * The namespace's tables as `FAMILY NAME` (`ip trellis-proxy-3`), from one netlink dump of the
   * tables alone (`--tables`): `nft list tables` reads every chain, rule and set first, more than
   * 30 s at 10,000 Services. Rejects with the program's message when it cannot list.
   */
  async listTables(): Promise<string[]> {
    try {
      const { stdout } = await run(this.path, ["--tables"], { timeoutMs: 10_000 });
      return stdout.split("\n").filter((line) => line !== "");
    } catch (error) {
      throw new NftWriteError(`${this.path} --tables could not list the tables: ${error instanceof Error ? error.message : String(error)}`);
    }
  }

  /**
   * A table's named counters (`counter name` statements count into them), from one netlink dump
   * of its counter objects (`--counters`): none when the table is not there.
   */
  async listCounters(family: "inet" | "ip" | "ip6", table: string): Promise<Map<string, { packets: number; bytes: number }>> {
    try {
      const { stdout } = await run(this.path, ["--counters", family, checkName("table", table)], { timeoutMs: 10_000 });
      const counters = new Map<string, { packets: number; bytes: number }>();
      for (const line of stdout.split("\n")) {
        const [name, packets, bytes] = line.split(" ");
        if (name && packets !== undefined && bytes !== undefined) counters.set(name, { packets: Number(packets), bytes: Number(bytes) });
      }
      return counters;
    } catch (error) {
      throw new NftWriteError(`${this.path} --counters could not list the counters of ${family} ${table}: ${error instanceof Error ? error.message : String(error)}`);
    }
  }

  /** Ends the writer (it exits when its input ends). */
  close(): void {
    this.child?.stdin.end();
    this.child = undefined;
  }

  private start(): ChildProcessWithoutNullStreams {
    const child = spawn(this.path, ["--serve"], { stdio: ["pipe", "pipe", "pipe"] });
    this.child = child;
    if (this.options.niceness !== undefined && child.pid !== undefined) {
      try {
        setPriority(child.pid, this.options.niceness);
      } catch {
        // Not allowed here: the writer runs at the agent's own priority.
      }
    }
    this.received = Buffer.alloc(0);
    let stderr = "";
    child.stderr.on("data", (chunk: Buffer) => (stderr = (stderr + chunk.toString("utf8")).slice(-2000)));
    child.stdin.on("error", () => undefined);
    child.stdout.on("data", (chunk: Buffer) => {
      this.received = Buffer.concat([this.received, chunk]);
      while (this.received.length >= 8) {
        const length = this.received.readUInt32BE(4);
        if (this.received.length < 8 + length) break;
        const status = this.received.readUInt32BE(0);
        const reason = this.received.subarray(8, 8 + length).toString("utf8");
        this.received = this.received.subarray(8 + length);
        const call = this.waiting.shift();
        if (status === 0) call?.resolve();
        else call?.reject(new NftWriteError(`the kernel did not take the nftables batch: ${reason}`));
      }
    });
    const ended = (why: string) => {
      if (this.child === child) this.child = undefined;
      for (const call of this.waiting.splice(0)) call.reject(new NftWriteError(`the netlink writer ${this.path} ${why}${stderr ? `: ${stderr.trim()}` : ""}`));
    };
    child.on("exit", (code, signal) => ended(`ended (${signal ?? `exit ${code}`})`));
    child.on("error", (error) => ended(`could not run: ${error.message}`));
    return child;
  }
}
