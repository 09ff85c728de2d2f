import { createLogger, type Logger } from '../../agent/logging/logger.js';

/** One JSON log line as the agent's logger writes it (level as its name: "info", "warn"...). */
export type CapturedLine = { level: string; msg: string } & Record<string, unknown>;

export interface CapturedLogger {
  /** The agent's own logger (createLogger, redaction included), writing into the arrays below. */
  logger: Logger;
  /** Every line, parsed, in order. */
  lines: CapturedLine[];
  /** Every line exactly as written (with its newline), for checks on the raw text. */
  raw: string[];
  /** The parsed lines of one level. */
  at(level: string): CapturedLine[];
}

export function captureLogger(level = 'debug'): CapturedLogger {
  const lines: CapturedLine[] = [];
  const raw: string[] = [];
  const logger = createLogger({
    level,
    destination: {
      write(line: string) {
        raw.push(line);
        lines.push(JSON.parse(line) as CapturedLine);
      },
    },
  });
  return { logger, lines, raw, at: (wanted) => lines.filter((line) => line.level === wanted) };
}
