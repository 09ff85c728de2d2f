import { join } from 'node:path';
import { pathExists, readSecretFile } from '../credentials/secret-file.js';

/** systemd credential name: `LoadCredential=control_secret:...` hands the secret to the service user. */
export const CONTROL_SECRET_CREDENTIAL = 'control_secret';

export interface ReadControlSecretOptions {
  /** control.secretFile. */
  file?: string | undefined;
  /** $CREDENTIALS_DIRECTORY; an empty string or undefined means none. */
  credentialsDirectory?: string | undefined;
}

/**
 * The command secret, as for the other secrets: $CREDENTIALS_DIRECTORY/control_secret wins over
 * control.secretFile; owner-only mode, one trailing newline ignored. undefined when neither exists
 * (no secret required). Throws CONTROL_SECRET_INVALID naming the path, never the value.
 */
export async function readControlSecret(options: ReadControlSecretOptions): Promise<Buffer | undefined> {
  const credential = options.credentialsDirectory ? join(options.credentialsDirectory, CONTROL_SECRET_CREDENTIAL) : undefined;
  const path = credential && (await pathExists(credential)) ? credential : options.file;
  if (path === undefined) return undefined;
  const codes = { missing: 'CONTROL_SECRET_INVALID', insecureMode: 'CONTROL_SECRET_INVALID', empty: 'CONTROL_SECRET_INVALID' } as const;
  return Buffer.from(await readSecretFile(path, { label: 'control secret', codes }), 'utf8');
}
