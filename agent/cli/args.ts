import { readFileSync } from 'node:fs';

/*
 * What every command shares: exit codes, argument parsing with usage errors, error lines. Kept free
 * of heavy imports (zod, pino, mqtt) so that `--help` and `--version` start fast.
 */

/** Exit codes (documented in the README and in --help): sysexits.h where one fits. */
export const EXIT = { ok: 0, failure: 1, usage: 64, config: 78 } as const;

export const EXIT_CODES_HELP = 'Exit codes: 0 ok, 1 failure, 64 usage error, 78 configuration error (EX_CONFIG).';

export function version(): string {
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

/** Writes "mg-device-agent: <message>" to stderr and returns the exit code. */
export function fail(message: string, code: number): number {
  process.stderr.write(`mg-device-agent: ${message}\n`);
  return code;
}

export function print(text: string): void {
  process.stdout.write(text.endsWith('\n') ? text : `${text}\n`);
}

/**
 * Runs a command's parseArgs call (strict, options including `help: { type: 'boolean', short: 'h' }`)
 * and turns its complaint into a usage error (64) that points at the command's --help.
 */
export function parseOrUsage<R>(command: string, parse: () => R): R | number {
  try {
    return parse();
  } catch (err) {
    return fail(`${(err as Error).message}; see mg-device-agent ${command} --help`, EXIT.usage);
  }
}

/**
 * parseOrUsage, plus the --help every command has: prints the command's help and returns 0 when it
 * was asked for. Returns the parsed result, or the exit code to end with.
 */
export function parseCommand<R extends { values: { help?: boolean | undefined } }>(command: string, help: string, parse: () => R): R | number {
  const parsed = parseOrUsage(command, parse);
  if (typeof parsed === 'number') return parsed;
  if (parsed.values.help) {
    print(help);
    return EXIT.ok;
  }
  return parsed;
}

/** The option every command has. */
export const HELP_OPTION = { help: { type: 'boolean', short: 'h' } } as const;
export const CONFIG_OPTION = { config: { type: 'string' } } as const;
