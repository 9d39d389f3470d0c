/**
 * Records of the pods attached on this node, kept so DEL and GC can undo an ADD without its
 * netns, CHECK knows what should be there, and a recreated bridge gets its ports back.
 *
 * An attachment is `adding` from the moment its addresses are reserved until its ADD has
 * finished in the kernel, then `ready`. An `adding` record whose owner process is gone is the
 * trace of an ADD killed half-way: GC and the next ADD of the same attachment clean it up.
 */
import { ownProcess, processRunning } from "../linux/process.js";
import type { SqliteDatabase } from "../store/sqlite.js";

export interface AttachmentKey {
  readonly network: string;
  readonly containerId: string;
  readonly ifname: string;
}

export type AttachmentState = "adding" | "ready";

/** What the ADD put in place, as plain strings so the record outlives config changes. */
export interface AttachmentSpecRecord {
  /** `ADDRESS/LENGTH` with the gateway the pod routes through. */
  readonly addresses: ReadonlyArray<{ readonly address: string; readonly gateway: string }>;
  readonly hairpin: boolean;
  /** Source prefixes masqueraded for this pod, and destinations that keep the pod's address. */
  readonly masquerade?: { readonly sources: readonly string[]; readonly exclusions: readonly string[] };
  /** hostPorts DNAT'ed to the pod (hostIP absent: every address of the node). */
  readonly portMappings?: ReadonlyArray<{ readonly hostPort: number; readonly containerPort: number; readonly protocol: string; readonly hostIP?: string }>;
}

export interface Attachment extends AttachmentKey {
  /** Grows with every new record; tells a record apart from a later one with the same key. */
  readonly id: number;
  readonly state: AttachmentState;
  /** The process that runs (or ran) the ADD, see `processIdentity`. */
  readonly owner: string;
  readonly hostIfname: string;
  readonly netns: string;
  /** Empty for records written before the bridge was recorded. */
  readonly bridge: string;
  readonly spec: AttachmentSpecRecord;
  readonly createdAt: number;
}

export type NewAttachment = Omit<Attachment, "id">;

interface AttachmentRow {
  id: number;
  network: string;
  container_id: string;
  ifname: string;
  state: string;
  owner: string;
  host_ifname: string;
  netns: string;
  bridge: string;
  spec: string;
  created_at: number;
}

export function findAttachment(db: SqliteDatabase, key: AttachmentKey): Attachment | undefined {
  const row = db
    .prepare("SELECT * FROM attachments WHERE network = ? AND container_id = ? AND ifname = ?")
    .get(key.network, key.containerId, key.ifname) as AttachmentRow | undefined;
  return row && toAttachment(row);
}

export function listAttachments(db: SqliteDatabase, network: string): Attachment[] {
  const rows = db.prepare<[string], AttachmentRow>("SELECT * FROM attachments WHERE network = ? ORDER BY id").all(network);
  return rows.map(toAttachment);
}

export function listAllAttachments(db: SqliteDatabase): Attachment[] {
  return db.prepare<[], AttachmentRow>("SELECT * FROM attachments ORDER BY id").all().map(toAttachment);
}

export function attachmentsOnBridge(db: SqliteDatabase, bridge: string): Attachment[] {
  return db.prepare<[string], AttachmentRow>("SELECT * FROM attachments WHERE bridge = ? ORDER BY id").all(bridge).map(toAttachment);
}

/** Inserts the record and returns its id. */
export function insertAttachment(db: SqliteDatabase, attachment: NewAttachment): number {
  const result = db
    .prepare(
      "INSERT INTO attachments (network, container_id, ifname, state, owner, host_ifname, netns, bridge, spec, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .run(
      attachment.network,
      attachment.containerId,
      attachment.ifname,
      attachment.state,
      attachment.owner,
      attachment.hostIfname,
      attachment.netns,
      attachment.bridge,
      JSON.stringify(attachment.spec),
      attachment.createdAt,
    );
  return Number(result.lastInsertRowid);
}

/** Marks the record `ready` with its final spec; false when that record no longer exists. */
export function completeAttachment(db: SqliteDatabase, id: number, spec: AttachmentSpecRecord): boolean {
  return db.prepare("UPDATE attachments SET state = 'ready', spec = ? WHERE id = ?").run(JSON.stringify(spec), id).changes > 0;
}

export function updateAttachmentSpec(db: SqliteDatabase, id: number, spec: AttachmentSpecRecord): boolean {
  return db.prepare("UPDATE attachments SET spec = ? WHERE id = ?").run(JSON.stringify(spec), id).changes > 0;
}

export function deleteAttachment(db: SqliteDatabase, key: AttachmentKey): boolean {
  return db.prepare("DELETE FROM attachments WHERE network = ? AND container_id = ? AND ifname = ?").run(key.network, key.containerId, key.ifname).changes > 0;
}

/** Deletes that exact record (not a later one with the same key). */
export function deleteAttachmentById(db: SqliteDatabase, id: number): boolean {
  return db.prepare("DELETE FROM attachments WHERE id = ?").run(id).changes > 0;
}

/** An ADD still running: `adding`, and its owner process alive. */
export function isInFlight(attachment: Attachment): boolean {
  return attachment.state === "adding" && processAlive(attachment.owner);
}

let selfIdentity: string | undefined;

/** This process as `PID:STARTTIME`: the start time tells a reused pid apart. */
export function processIdentity(): string {
  if (selfIdentity === undefined) {
    const self = ownProcess();
    selfIdentity = `${self.pid}:${self.startTime}`;
  }
  return selfIdentity;
}

/** Whether the process named by a `processIdentity` string still runs. */
export function processAlive(identity: string): boolean {
  const match = /^(\d+):(\d+)$/.exec(identity);
  return match !== null && processRunning({ pid: Number(match[1]), startTime: match[2] });
}

function toAttachment(row: AttachmentRow): Attachment {
  return {
    id: row.id,
    network: row.network,
    containerId: row.container_id,
    ifname: row.ifname,
    state: row.state === "adding" ? "adding" : "ready",
    owner: row.owner,
    hostIfname: row.host_ifname,
    netns: row.netns,
    bridge: row.bridge,
    spec: parseSpec(row.spec),
    createdAt: row.created_at,
  };
}

function parseSpec(text: string): AttachmentSpecRecord {
  try {
    const spec = JSON.parse(text) as Partial<AttachmentSpecRecord>;
    return { addresses: spec.addresses ?? [], hairpin: spec.hairpin ?? false, masquerade: spec.masquerade, ...(spec.portMappings ? { portMappings: spec.portMappings } : {}) };
  } catch {
    return { addresses: [], hairpin: false };
  }
}
