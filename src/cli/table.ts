/** Plain-text tables for the CLI: columns padded to their widest cell, two spaces apart. */
export function renderTable(rows: readonly (readonly string[])[]): string {
  const widths = rows[0].map((_, column) => Math.max(...rows.map((row) => row[column].length)));
  return rows.map((row) => `${row.map((cell, column) => cell.padEnd(widths[column])).join("  ").trimEnd()}\n`).join("");
}
