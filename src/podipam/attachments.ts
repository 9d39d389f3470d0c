/** Records of the pods attached on this node, kept so DEL and GC can undo an ADD without its netns. */
import type { SqliteDatabase } from "../store/sqlite.js";

export interface AttachmentKey {
  readonly network: string;
  readonly containerId: string;
  readonly ifname: string;
}

export interface Attachment extends AttachmentKey {
  readonly hostIfname: string;
  readonly netns: string;
  readonly createdAt: number;
}

interface AttachmentRow {
  network: string;
  container_id: string;
  ifname: string;
  host_ifname: string;
  netns: string;
  created_at: number;
}

export function findAttachment(db: SqliteDatabase, key: AttachmentKey): Attachment | undefined {
  const row = db
    .prepare("SELECT * FROM attachments WHERE network = ? AND container_id = ? AND ifname = ?")
    .get(key.network, key.containerId, key.ifname) as AttachmentRow | undefined;
  return row && toAttachment(row);
}

export function listAttachments(db: SqliteDatabase, network: string): Attachment[] {
  const rows = db.prepare("SELECT * FROM attachments WHERE network = ? ORDER BY created_at, container_id").all(network) as AttachmentRow[];
  return rows.map(toAttachment);
}

export function insertAttachment(db: SqliteDatabase, attachment: Attachment): void {
  db.prepare("INSERT INTO attachments (network, container_id, ifname, host_ifname, netns, created_at) VALUES (?, ?, ?, ?, ?, ?)").run(
    attachment.network,
    attachment.containerId,
    attachment.ifname,
    attachment.hostIfname,
    attachment.netns,
    attachment.createdAt,
  );
}

export function deleteAttachment(db: SqliteDatabase, key: AttachmentKey): boolean {
  return db.prepare("DELETE FROM attachments WHERE network = ? AND container_id = ? AND ifname = ?").run(key.network, key.containerId, key.ifname).changes > 0;
}

function toAttachment(row: AttachmentRow): Attachment {
  return {
    network: row.network,
    containerId: row.container_id,
    ifname: row.ifname,
    hostIfname: row.host_ifname,
    netns: row.netns,
    createdAt: row.created_at,
  };
}
