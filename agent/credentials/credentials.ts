import { join } from 'node:path';
import { AgentError, isAgentError } from '../errors/agent-error.js';
import { parseEncryptKey } from '../bootstrap/crypto.js';
import { pathExists, readSecretFile, stripOneTrailingNewline } from './secret-file.js';

/**
 * Where the two bootstrap secrets come from. systemd's LoadCredential= (files in
 * $CREDENTIALS_DIRECTORY, mode 0400, owned by the service user) wins over a configured file, so a
 * packaged unit can hand secrets over without touching /etc. The mode check stays on for those files
 * too: systemd's own 0400 passes it.
 */
export const EXTERNAL_KEY_CREDENTIAL = 'external_key';
export const ENCRYPT_KEY_CREDENTIAL = 'encrypt_key';
export const ENCRYPT_KEY_ENV = 'MG_AGENT_BOOTSTRAP_ENCRYPT_KEY';

export interface ReadExternalKeyOptions {
  /** identity.externalKeyFile. */
  file: string;
  /** Default: $CREDENTIALS_DIRECTORY. An empty string means none. */
  credentialsDirectory?: string | undefined;
}

export interface ReadEncryptKeyOptions {
  /** bootstrap.encryptKeyFile. */
  file?: string | undefined;
  /** Read, then stripped of MG_AGENT_BOOTSTRAP_ENCRYPT_KEY so child processes never inherit it. */
  env?: NodeJS.ProcessEnv;
  /** Default: env.CREDENTIALS_DIRECTORY. An empty string means none. */
  credentialsDirectory?: string | undefined;
}

async function credentialPath(directory: string | undefined, name: string): Promise<string | undefined> {
  if (directory === undefined || directory === '') return undefined;
  const path = join(directory, name);
  return (await pathExists(path)) ? path : undefined;
}

/** The external key as text, from $CREDENTIALS_DIRECTORY/external_key or else the configured file. */
export async function readExternalKey(options: ReadExternalKeyOptions): Promise<string> {
  const directory = options.credentialsDirectory ?? process.env.CREDENTIALS_DIRECTORY;
  const path = (await credentialPath(directory, EXTERNAL_KEY_CREDENTIAL)) ?? options.file;
  const key = await readSecretFile(path, {
    label: 'external key',
    codes: { missing: 'EXTERNAL_KEY_MISSING', insecureMode: 'EXTERNAL_KEY_INSECURE_MODE', empty: 'EXTERNAL_KEY_EMPTY' },
  });
  // Caught here, at start-up (exit 78), not at the first bootstrap: a second trailing newline or a
  // CR from a Windows editor is a file mistake, and no control character survives an HTTP header.
  // eslint-disable-next-line no-control-regex
  const bad = /[\u0000-\u001f\u007f]/.exec(key);
  if (bad) {
    throw new AgentError(
      'EXTERNAL_KEY_MALFORMED',
      `the external key in ${path} contains a control character (code ${bad[0].charCodeAt(0)}) at position ${bad.index + 1}: a stray newline or CR? Write the key on one line`,
      { details: { path, position: bad.index + 1 } },
    );
  }
  return key;
}

/**
 * The raw AES key for secure bootstrap, from $CREDENTIALS_DIRECTORY/encrypt_key, else the configured
 * file, else MG_AGENT_BOOTSTRAP_ENCRYPT_KEY; undefined when none is set (an empty variable counts as
 * unset, as compose files often leave it so). Every problem is ENCRYPT_KEY_INVALID: all of them are
 * configuration errors fixed the same way, and `details.source` says where to look.
 */
export async function readEncryptKey(options: ReadEncryptKeyOptions = {}): Promise<Buffer | undefined> {
  const env = options.env ?? process.env;
  const directory = options.credentialsDirectory ?? env.CREDENTIALS_DIRECTORY;
  const fromEnv = env[ENCRYPT_KEY_ENV];
  // Removed before anything else can fail, whichever source wins.
  delete env[ENCRYPT_KEY_ENV];

  const codes = { missing: 'ENCRYPT_KEY_INVALID', insecureMode: 'ENCRYPT_KEY_INVALID', empty: 'ENCRYPT_KEY_INVALID' } as const;
  const path = (await credentialPath(directory, ENCRYPT_KEY_CREDENTIAL)) ?? options.file;
  if (path !== undefined) {
    return parseFrom(path, await readSecretFile(path, { label: 'encryption key', codes }));
  }
  if (fromEnv === undefined || fromEnv === '') return undefined;
  return parseFrom(ENCRYPT_KEY_ENV, stripOneTrailingNewline(fromEnv));
}

function parseFrom(source: string, value: string): Buffer {
  try {
    return parseEncryptKey(value);
  } catch (error) {
    if (!isAgentError(error)) throw error;
    // parseEncryptKey's message names the length only; add where the key came from.
    throw new AgentError(error.code, `${source}: ${error.message}`, { cause: error, details: { ...error.details, source } });
  }
}
