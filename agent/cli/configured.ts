import type { DestinationStream } from 'pino';
import { loadConfig, ConfigError, type LoadedConfig } from '../config/load.js';
import { createLogger, type Logger } from '../logging/logger.js';
import { toAgentError } from '../errors/agent-error.js';
import { classifyFailure } from '../lifecycle/failure-policy.js';
import { EXIT, fail } from './args.js';

/*
 * The part of every device command that needs the configuration (and so zod): loading it and
 * turning a failure into the documented exit code. Imported by the commands, never by main.ts.
 */

/** Prints every configuration problem (or the error's code and message) and returns 78 or 1. */
export function configFailure(err: unknown): number {
  if (err instanceof ConfigError) {
    const lines = err.problems.map((p) => `  - ${p.path}: ${p.message}`).join('\n');
    process.stderr.write(`mg-device-agent: invalid configuration:\n${lines}\n`);
    return EXIT.config;
  }
  const error = toAgentError(err);
  return fail(`${error.code}: ${error.message}`, classifyFailure(error.code) === 'fatal' ? EXIT.config : EXIT.failure);
}

/** The configuration, or the exit code after printing why it cannot be loaded. */
export function loadConfigOrExit(configPath: string | undefined): LoadedConfig | number {
  try {
    return loadConfig(configPath ? { configPath } : {});
  } catch (err) {
    return configFailure(err);
  }
}

/** A logger for one-shot commands: warnings and errors as plain "mg-device-agent: warn: ..." lines on stderr. */
export function cliLogger(level = 'warn'): Logger {
  const destination: DestinationStream = {
    write(line: string) {
      try {
        const entry = JSON.parse(line) as { level?: string; msg?: string };
        process.stderr.write(`mg-device-agent: ${entry.level ?? 'log'}: ${entry.msg ?? ''}\n`);
      } catch {
        process.stderr.write(line);
      }
    },
  };
  return createLogger({ level, destination });
}
