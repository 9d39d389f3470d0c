/** The commit a benchmark ran on, for its report. */
import { execFileSync } from "node:child_process";

export function gitCommit(root: string): string {
  try {
    return execFileSync("git", ["-C", root, "rev-parse", "HEAD"], { encoding: "utf8" }).trim();
  } catch {
    return "unknown";
  }
}
