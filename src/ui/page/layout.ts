/**
 * Where each box of the map goes: every node is a box with its pods in a square grid inside it,
 * the Services and the machines outside the nodes are boxes of their own, and the boxes sit in a
 * square grid, in name order. Computed in one pass (no force simulation), so 20 nodes × 20
 * pods lay out in well under a millisecond, a pod that comes or goes moves only its own box's
 * members, and flows changing never move anything.
 *
 * A box is drawn as a plain shape behind its members, not as a cytoscape compound node: with
 * compounds, every redraw walks each element's parents (for visibility and drawing order), which
 * took most of the page's time under a stream of flows at 20 × 20.
 */

export interface LayoutBox {
  readonly id: string;
  /** Its members, in the order they are placed. */
  readonly members: readonly string[];
}

export interface Point {
  readonly x: number;
  readonly y: number;
}

export interface Rect {
  readonly x: number;
  readonly y: number;
  readonly width: number;
  readonly height: number;
}

export const CELL_WIDTH = 130;
export const CELL_HEIGHT = 60;
/** Between boxes, beyond their cells: room for a box's label and padding. */
export const BOX_GAP = 90;
/** Around a box's cells. */
export const BOX_PADDING = 12;

/** Names in the order people count them: node2 before node10. */
export function naturalOrder(a: string, b: string): number {
  return a.localeCompare(b, "en", { numeric: true });
}

/** Positions of every member, and each box's rectangle (its centre and size), in the order given. */
export function layoutBoxes(boxes: readonly LayoutBox[]): { positions: Map<string, Point>; rects: Map<string, Rect> } {
  const positions = new Map<string, Point>();
  const rects = new Map<string, Rect>();
  const columnsOf = (count: number) => Math.max(1, Math.ceil(Math.sqrt(count)));
  const sized = boxes.map((box) => {
    const columns = columnsOf(box.members.length);
    const rows = Math.max(1, Math.ceil(box.members.length / columns));
    return { box, columns, width: columns * CELL_WIDTH, height: rows * CELL_HEIGHT };
  });
  const perRow = columnsOf(boxes.length);
  // Every column as wide as its widest box, so boxes line up.
  const columnWidths: number[] = new Array(perRow).fill(0);
  sized.forEach((entry, index) => (columnWidths[index % perRow] = Math.max(columnWidths[index % perRow], entry.width)));
  let top = 0;
  for (let start = 0; start < sized.length; start += perRow) {
    const row = sized.slice(start, start + perRow);
    let left = 0;
    row.forEach((entry, column) => {
      const { box, columns, width, height } = entry;
      rects.set(box.id, { x: left + width / 2, y: top + height / 2, width: width + 2 * BOX_PADDING, height: height + 2 * BOX_PADDING });
      box.members.forEach((member, index) => {
        positions.set(member, { x: left + (index % columns) * CELL_WIDTH + CELL_WIDTH / 2, y: top + Math.floor(index / columns) * CELL_HEIGHT + CELL_HEIGHT / 2 });
      });
      left += columnWidths[column] + BOX_GAP;
    });
    top += Math.max(...row.map((entry) => entry.height)) + BOX_GAP;
  }
  return { positions, rects };
}
