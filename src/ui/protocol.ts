/**
 * What the server sends the page: events on `/events` and answers of `/api/flows`. Types only,
 * shared by the server and the page's script.
 */
import type { ConnectionView, EdgeSummary } from "./flow-window.js";
import type { UiTopology } from "./topology.js";

export interface UiStatus {
  /** Connections and edges of the last minute. */
  readonly connections: number;
  readonly edges: number;
  /** Connections let go early to keep memory bounded, since the server started. */
  readonly evicted: number;
  /** Agents that could not be reached (cleared by their next record), and topology reads that failed. */
  readonly problems: ReadonlyArray<{ readonly node: string; readonly message: string; readonly time: string }>;
  readonly windowMs: number;
}

/** Everything the page draws: sent first, and again whenever the topology changed. */
export interface SnapshotEvent {
  readonly topology: UiTopology;
  readonly edges: readonly EdgeSummary[];
  readonly status: UiStatus;
}

/** Edges that changed since the last event (a few times a second at most). */
export interface EdgesEvent {
  readonly changed: readonly EdgeSummary[];
  readonly removed: readonly string[];
}

/** `/api/flows?edge=ID` or `?entity=ID`: the newest connections, with every record kept of each. */
export interface FlowsAnswer {
  readonly connections: readonly ConnectionView[];
  /** More matched than were sent. */
  readonly truncated: boolean;
}
