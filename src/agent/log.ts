/** The agent's log: one JSON object a line on stderr, with a time, a level and a message. */
export type LogLevel = "debug" | "info" | "warn" | "error";

export const LOG_LEVELS: readonly LogLevel[] = ["debug", "info", "warn", "error"];

export type Logger = (level: LogLevel, msg: string, fields?: Record<string, unknown>) => void;

/** Writes entries at `threshold` and above. */
export function jsonLogger(threshold: LogLevel = "info", write: (line: string) => void = (line) => process.stderr.write(line)): Logger {
  const minimum = LOG_LEVELS.indexOf(threshold);
  return (level, msg, fields = {}) => {
    if (LOG_LEVELS.indexOf(level) >= minimum) write(`${JSON.stringify({ time: new Date().toISOString(), level, msg, ...fields })}\n`);
  };
}
