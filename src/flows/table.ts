/** Flow records as a table for people, one line each, in the shape of `hubble observe`. */
import type { FlowEnd, FlowRecord } from "./record.js";

const HEADER = ["TIME", "NODE", "SOURCE", "DESTINATION", "PROTOCOL", "VERDICT", "DETAIL"];

/** `NAMESPACE/POD ADDRESS:PORT`, the address bracketed when it is IPv6. */
export function flowEndText(end: FlowEnd): string {
  const address = end.address.includes(":") && end.port !== undefined ? `[${end.address}]` : end.address;
  const where = end.port !== undefined ? `${address}:${end.port}` : address;
  return end.pod ? `${end.pod} ${where}` : end.node ? `node/${end.node} ${where}` : where;
}

function bytes(count: number): string {
  if (count < 1024) return `${count} B`;
  if (count < 1024 ** 2) return `${(count / 1024).toFixed(1)} KiB`;
  if (count < 1024 ** 3) return `${(count / 1024 ** 2).toFixed(1)} MiB`;
  return `${(count / 1024 ** 3).toFixed(1)} GiB`;
}

export function flowRow(record: FlowRecord): string[] {
  const destination = [
    record.service ? `service/${record.service}` : "",
    flowEndText(record.destination),
    record.translated ? `-> ${flowEndText(record.translated)}` : "",
  ].filter(Boolean).join(" ");
  const detail = [
    record.event,
    record.reason ?? "",
    record.policy ? `by ${record.policy}` : "",
    record.counters ? `${record.counters.packetsSent}/${record.counters.packetsReceived} packets, ${bytes(record.counters.bytesSent)}/${bytes(record.counters.bytesReceived)}` : "",
  ].filter(Boolean).join(", ");
  return [record.time.slice(11, 23), record.node, flowEndText(record.source), destination, record.protocol, record.verdict.toUpperCase(), detail];
}

/** The records as aligned columns under a header (one line each, like `hubble observe`). */
export function renderFlowTable(records: readonly FlowRecord[]): string {
  const rows = [HEADER, ...records.map(flowRow)];
  const widths = HEADER.map((_, column) => Math.max(...rows.map((row) => row[column].length)));
  return rows.map((row) => `${row.map((cell, column) => cell.padEnd(widths[column])).join("  ").trimEnd()}\n`).join("");
}
