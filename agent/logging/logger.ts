import { pino, type Logger, type DestinationStream } from 'pino';

export type { Logger } from 'pino';

/**
 * Field names whose values are secrets wherever they appear. Code must not log secrets in the first
 * place; this list is the second line of defence.
 */
export const SECRET_FIELDS = [
  'password',
  'secret',
  'client_secret',
  'clientSecret',
  'externalKey',
  'external_key',
  'encryptKey',
  'encrypt_key',
  'client_key',
  'clientKey',
  'key',
  'token',
  'authorization',
];

export interface LoggerOptions {
  level: string;
  /** Defaults to stdout; tests pass a stream to read the lines back. */
  destination?: DestinationStream;
}

export function createLogger(options: LoggerOptions): Logger {
  const paths = SECRET_FIELDS.flatMap((f) => [f, `*.${f}`, `*.*.${f}`]);
  return pino(
    {
      level: options.level,
      base: { name: 'mg-device-agent' },
      timestamp: pino.stdTimeFunctions.isoTime,
      redact: { paths, censor: '[redacted]' },
      formatters: { level: (label) => ({ level: label }) },
    },
    options.destination ?? pino.destination({ dest: 1, sync: true }),
  );
}
