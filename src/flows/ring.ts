/**
 * An agent's recent flows: a ring of a fixed number of slots (the oldest make room), and the
 * readers that follow it live. A slot holds a record, or raw data its owner turns into one only
 * when someone reads it (`materialize`): tens of thousands of conntrack events a second cost a
 * copy each, not a record each. A follower is handed records as they come; one that falls behind
 * by more than its bound loses the newest and is told how many, so a slow or stalled reader
 * costs the agent a bounded amount of memory, never more.
 */
import { flowMatches, type FlowFilter } from "./filter.js";
import type { FlowRecord } from "./record.js";

export interface FlowFollower {
  /** Records not yet taken by `take`. */
  readonly pending: number;
  /** Records dropped because the follower was behind by `bound`. */
  readonly dropped: number;
  /** The pending records, oldest first, and how many were dropped since the last take. */
  take(): { records: FlowRecord[]; dropped: number };
  stop(): void;
}

export class FlowRing {
  private readonly records: (FlowRecord | undefined)[];
  private readonly times: Float64Array;
  private next = 0;
  private size = 0;
  private readonly followers = new Set<Follower>();

  /** `materialize(slot)`: the record of a slot its owner filled with raw data (see `reserve`). */
  constructor(
    readonly capacity: number,
    private readonly materialize: (slot: number) => FlowRecord = () => {
      throw new Error("this ring holds records only");
    },
  ) {
    if (!Number.isInteger(capacity) || capacity < 1) throw new Error(`a flow ring holds at least one record, not ${capacity}`);
    this.records = new Array(capacity);
    this.times = new Float64Array(capacity);
  }

  get length(): number {
    return this.size;
  }

  get followerCount(): number {
    return this.followers.size;
  }

  /** The slot the next record goes in: its owner fills its raw data there, then calls `commit`. */
  reserve(): number {
    return this.next;
  }

  /** The reserved slot's raw data is in place, seen at `time` (ms since the epoch). */
  commit(time: number): void {
    this.records[this.next] = undefined;
    this.advance(time);
  }

  push(record: FlowRecord, time = Date.parse(record.time)): void {
    this.records[this.next] = record;
    this.advance(time);
  }

  private advance(time: number): void {
    const slot = this.next;
    this.times[slot] = time;
    this.next = (slot + 1) % this.capacity;
    if (this.size < this.capacity) this.size++;
    if (this.followers.size) {
      const record = this.recordAt(slot);
      for (const follower of this.followers) follower.offer(record, time);
    }
  }

  private recordAt(slot: number): FlowRecord {
    return this.records[slot] ?? this.materialize(slot);
  }

  /** The records `filter` asks for, oldest first; the newest `limit` of them when there are more. */
  recent(filter: FlowFilter, limit = this.capacity): FlowRecord[] {
    const out: FlowRecord[] = [];
    // Newest first, so that a limit keeps the newest; then turned around.
    for (let k = 0; k < this.size && out.length < limit; k++) {
      const slot = (this.next - 1 - k + this.capacity) % this.capacity;
      if (filter.since !== undefined && this.times[slot] < filter.since) break;
      const record = this.recordAt(slot);
      if (flowMatches(record, filter, this.times[slot])) out.push(record);
    }
    return out.reverse();
  }

  /**
   * Follows the records pushed from now on that `filter` asks for: at most `bound` wait for
   * `take`; `ready` is called (once) when the first of them comes after a take.
   */
  follow(filter: FlowFilter, bound: number, ready: () => void): FlowFollower {
    const follower = new Follower(filter, bound, ready, (self) => this.followers.delete(self));
    this.followers.add(follower);
    return follower;
  }
}

class Follower implements FlowFollower {
  private queue: FlowRecord[] = [];
  private droppedNow = 0;
  dropped = 0;
  private signalled = false;

  constructor(
    private readonly filter: FlowFilter,
    private readonly bound: number,
    private readonly ready: () => void,
    private readonly remove: (self: Follower) => void,
  ) {}

  get pending(): number {
    return this.queue.length;
  }

  offer(record: FlowRecord, time: number): void {
    if (!flowMatches(record, this.filter, time)) return;
    if (this.queue.length >= this.bound) {
      this.droppedNow++;
      this.dropped++;
      return;
    }
    this.queue.push(record);
    if (!this.signalled) {
      this.signalled = true;
      this.ready();
    }
  }

  take(): { records: FlowRecord[]; dropped: number } {
    const records = this.queue;
    const dropped = this.droppedNow;
    this.queue = [];
    this.droppedNow = 0;
    this.signalled = false;
    return { records, dropped };
  }

  stop(): void {
    this.queue = [];
    this.remove(this);
  }
}
