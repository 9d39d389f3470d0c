/**
 * Server-sent events to the page, each client held to a bound. What waits for a client is
 * Node's own write buffer of its response; an event that would take it past the bound is dropped
 * (and counted) and the client marked stale. `poll` (at every tick of the server) gives a stale
 * client whose buffer has gone down to half the bound one fresh snapshot instead of what it
 * missed, so it is right again without the server keeping a queue for it, and closes one still
 * stale after `staleCloseMs` (the browser reconnects and starts from a snapshot). A client that
 * never reads costs at most the bound plus one event, however long it stays.
 *
 * Polled rather than woken by the response's `drain`: that comes only after a write that found
 * the buffer full, and a client can fall behind on a write that did not.
 */
import type { ServerResponse } from "node:http";

/** Event names the page listens for. */
export type UiEventName = "snapshot" | "edges" | "status";

/**
 * One event in the text/event-stream framing: `event:` and one `data:` line per line of the
 * JSON (JSON.stringify escapes newlines inside strings, so that is one; a raw line break would
 * otherwise end the field and let data forge a field or an event of its own).
 */
export function sseFrame(event: UiEventName, data: unknown): string {
  if (!/^[a-z]+$/.test(event)) throw new Error(`event name ${JSON.stringify(event)}: expected lower-case letters`);
  const lines = JSON.stringify(data).split(/\r\n|\r|\n/);
  return `event: ${event}\n${lines.map((line) => `data: ${line}\n`).join("")}\n`;
}

/** A comment line: keeps proxies and the browser from taking a quiet stream for a dead one. */
export const SSE_KEEPALIVE = ": keep-alive\n\n";

export interface EventClientStats {
  /** Bytes written and not yet taken by the socket. */
  readonly buffered: number;
  /** Events dropped because the client was behind. */
  readonly dropped: number;
  readonly stale: boolean;
}

export class EventClient {
  dropped = 0;
  private staleSince: number | undefined;
  private closed = false;

  constructor(
    private readonly response: ServerResponse,
    private readonly bound: number,
    /** The frame that makes a stale client right again (built when it is sent). */
    private readonly snapshot: () => string,
    private readonly now: () => number = Date.now,
  ) {
    response.on("close", () => (this.closed = true));
  }

  /** Writes the frame, or drops it when the client is behind; false once the client is gone. */
  send(frame: string): boolean {
    if (this.closed) return false;
    if (this.staleSince !== undefined) {
      this.dropped++;
      return true;
    }
    const buffered = this.response.writableLength;
    // An empty buffer takes any one frame (a snapshot may be larger than the bound), so a client
    // that keeps up is never starved of a large one.
    if (buffered > 0 && buffered + Buffer.byteLength(frame) > this.bound) {
      this.dropped++;
      this.staleSince = this.now();
      return true;
    }
    this.response.write(frame);
    return true;
  }

  /**
   * A stale client whose buffer went down to half the bound gets a snapshot; one stale for
   * `staleCloseMs` or longer is closed. True when it closed the client now.
   */
  poll(staleCloseMs: number): boolean {
    if (this.closed || this.staleSince === undefined) return false;
    if (this.response.writableLength <= this.bound / 2) {
      this.staleSince = undefined;
      this.response.write(this.snapshot());
      return false;
    }
    if (this.now() - this.staleSince < staleCloseMs) return false;
    this.close();
    return true;
  }

  close(): void {
    this.closed = true;
    this.response.destroy();
  }

  stats(): EventClientStats {
    return { buffered: this.response.writableLength, dropped: this.dropped, stale: this.staleSince !== undefined };
  }
}
