import { execFileSync } from 'node:child_process';
import { chmodSync, mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { readEncryptKey, readExternalKey } from '../../agent/credentials/credentials.js';
import { stripOneTrailingNewline } from '../../agent/credentials/secret-file.js';
import type { AgentError } from '../../agent/errors/agent-error.js';
import { keyByName, loadVectors } from '../helpers/vectors.js';
import { tempWorkDir, useTeardown } from '../helpers/agent-harness.js';
import { rejectedAgentError } from '../helpers/agent-errors.js';

const EXTERNAL_KEY = 'ek-3f1c2b9a-secret-value';
const vectors = loadVectors();
const K16 = keyByName(vectors, 'K16');
const K32 = keyByName(vectors, 'K32');

const t = useTeardown();
afterEach(() => {
  vi.unstubAllEnvs();
});

/** Writes a file and sets its mode explicitly (the umask must not decide what is being tested). */
function secretFile(dir: string, name: string, content: string, mode = 0o600): string {
  const path = join(dir, name);
  writeFileSync(path, content);
  chmodSync(path, mode);
  return path;
}

/** Neither the message nor the details of an error may carry the secret. */
function expectNoSecret(error: AgentError, secret: string): void {
  expect(error.message).not.toContain(secret);
  expect(JSON.stringify(error.details)).not.toContain(secret);
  expect(JSON.stringify(error.toLog())).not.toContain(secret);
}

describe('readExternalKey', () => {
  it.each(['0600', '0400'])('reads a file with mode %s', async (modeText) => {
    const dir = tempWorkDir(t, 'mgda-cred-');
    const file = secretFile(dir, 'external_key', `${EXTERNAL_KEY}\n`, Number.parseInt(modeText, 8));
    await expect(readExternalKey({ file, credentialsDirectory: '' })).resolves.toBe(EXTERNAL_KEY);
  });

  it.each(['0640', '0644', '0604', '0620', '0602', '0660'])('refuses mode %s and gives the chmod fix', async (modeText) => {
    const dir = tempWorkDir(t, 'mgda-cred-');
    const file = secretFile(dir, 'external_key', `${EXTERNAL_KEY}\n`, Number.parseInt(modeText, 8));
    const error = await rejectedAgentError(readExternalKey({ file, credentialsDirectory: '' }));
    expect(error.code).toBe('EXTERNAL_KEY_INSECURE_MODE');
    expect(error.message).toContain(`mode ${modeText}`);
    expect(error.message).toContain(`chmod 600 ${file}`);
    expectNoSecret(error, EXTERNAL_KEY);
  });

  it('a missing file is EXTERNAL_KEY_MISSING naming the path', async () => {
    const file = join(tempWorkDir(t, 'mgda-cred-'), 'external_key');
    const error = await rejectedAgentError(readExternalKey({ file, credentialsDirectory: '' }));
    expect(error.code).toBe('EXTERNAL_KEY_MISSING');
    expect(error.message).toContain(file);
    expect(error.details.path).toBe(file);
  });

  it('a directory is not a key file', async () => {
    const file = join(tempWorkDir(t, 'mgda-cred-'), 'external_key');
    mkdirSync(file, { mode: 0o700 });
    const error = await rejectedAgentError(readExternalKey({ file, credentialsDirectory: '' }));
    expect(error.code).toBe('EXTERNAL_KEY_MISSING');
    expect(error.message).toContain('not a regular file');
  });

  it('a FIFO is refused without blocking on it', async () => {
    const file = join(tempWorkDir(t, 'mgda-cred-'), 'external_key');
    execFileSync('mkfifo', ['-m', '600', file]);
    const error = await rejectedAgentError(readExternalKey({ file, credentialsDirectory: '' }));
    expect(error.code).toBe('EXTERNAL_KEY_MISSING');
    expect(error.message).toContain('not a regular file');
  });

  it('follows a symlink and checks the mode of the file it points to', async () => {
    const dir = tempWorkDir(t, 'mgda-cred-');
    const target = secretFile(dir, 'real_key', `${EXTERNAL_KEY}\n`, 0o644);
    const link = join(dir, 'external_key');
    symlinkSync(target, link);
    await expect(rejectedAgentError(readExternalKey({ file: link, credentialsDirectory: '' }))).resolves.toMatchObject({
      code: 'EXTERNAL_KEY_INSECURE_MODE',
    });
    chmodSync(target, 0o600);
    await expect(readExternalKey({ file: link, credentialsDirectory: '' })).resolves.toBe(EXTERNAL_KEY);
  });

  it.each([
    ['an empty file', ''],
    ['a file holding only a newline', '\n'],
    ['a file holding only CRLF', '\r\n'],
    ['a file of whitespace', '  \n'],
  ])('%s is EXTERNAL_KEY_EMPTY', async (_title, content) => {
    const file = secretFile(tempWorkDir(t, 'mgda-cred-'), 'external_key', content);
    const error = await rejectedAgentError(readExternalKey({ file, credentialsDirectory: '' }));
    expect(error.code).toBe('EXTERNAL_KEY_EMPTY');
    expect(error.message).toContain(file);
  });

  it.each([
    ['no newline', EXTERNAL_KEY, EXTERNAL_KEY],
    ['one newline stripped', `${EXTERNAL_KEY}\n`, EXTERNAL_KEY],
    ['one CRLF stripped', `${EXTERNAL_KEY}\r\n`, EXTERNAL_KEY],
    ['trailing spaces are content', `${EXTERNAL_KEY} \n`, `${EXTERNAL_KEY} `],
    ['non-ASCII kept as UTF-8 text', 'clé-ключ\n', 'clé-ключ'],
  ])('%s', async (_title, content, expected) => {
    const file = secretFile(tempWorkDir(t, 'mgda-cred-'), 'external_key', content);
    await expect(readExternalKey({ file, credentialsDirectory: '' })).resolves.toBe(expected);
  });

  it.each([
    ['two trailing newlines (only one is stripped)', `${EXTERNAL_KEY}\n\n`, 27],
    ['a CR left by an editor', `${EXTERNAL_KEY}\r\r\n`, 27],
    ['a tab inside', `ab\tcd`, 3],
  ])('%s is EXTERNAL_KEY_MALFORMED at start-up, with the position and not the key', async (_title, content, position) => {
    const file = secretFile(tempWorkDir(t, 'mgda-cred-'), 'external_key', content.replace(EXTERNAL_KEY, 'x'.repeat(26)));
    const error = await rejectedAgentError(readExternalKey({ file, credentialsDirectory: '' }));
    expect(error.code).toBe('EXTERNAL_KEY_MALFORMED');
    expect(error.message).toContain(`position ${position}`);
    expect(error.message).not.toContain('xxxx');
  });

  it('$CREDENTIALS_DIRECTORY/external_key wins over the configured file', async () => {
    const credentialsDirectory = tempWorkDir(t, 'mgda-cred-');
    secretFile(credentialsDirectory, 'external_key', 'from-systemd\n', 0o400);
    const file = secretFile(tempWorkDir(t, 'mgda-cred-'), 'external_key', 'from-etc\n');
    await expect(readExternalKey({ file, credentialsDirectory })).resolves.toBe('from-systemd');
  });

  it('takes CREDENTIALS_DIRECTORY from the environment by default', async () => {
    const credentialsDirectory = tempWorkDir(t, 'mgda-cred-');
    secretFile(credentialsDirectory, 'external_key', 'from-systemd\n', 0o400);
    const file = secretFile(tempWorkDir(t, 'mgda-cred-'), 'external_key', 'from-etc\n');
    vi.stubEnv('CREDENTIALS_DIRECTORY', credentialsDirectory);
    await expect(readExternalKey({ file })).resolves.toBe('from-systemd');
  });

  it('falls back to the configured file when the credentials directory has no external_key', async () => {
    const credentialsDirectory = tempWorkDir(t, 'mgda-cred-');
    secretFile(credentialsDirectory, 'encrypt_key', `${K16.env_value}\n`, 0o400);
    const file = secretFile(tempWorkDir(t, 'mgda-cred-'), 'external_key', 'from-etc\n');
    await expect(readExternalKey({ file, credentialsDirectory })).resolves.toBe('from-etc');
  });

  it('checks the mode of a credential file too', async () => {
    const credentialsDirectory = tempWorkDir(t, 'mgda-cred-');
    const credential = secretFile(credentialsDirectory, 'external_key', `${EXTERNAL_KEY}\n`, 0o444);
    const file = secretFile(tempWorkDir(t, 'mgda-cred-'), 'external_key', 'from-etc\n');
    const error = await rejectedAgentError(readExternalKey({ file, credentialsDirectory }));
    expect(error.code).toBe('EXTERNAL_KEY_INSECURE_MODE');
    expect(error.message).toContain(credential);
    expectNoSecret(error, EXTERNAL_KEY);
  });
});

describe('readEncryptKey', () => {
  it('reads the raw UTF-8 key bytes from a file, one newline stripped', async () => {
    const file = secretFile(tempWorkDir(t, 'mgda-cred-'), 'encrypt_key', `${K32.env_value}\n`);
    const key = await readEncryptKey({ file, env: {}, credentialsDirectory: '' });
    expect(key?.toString('hex')).toBe(K32.aes_key_hex);
  });

  it('$CREDENTIALS_DIRECTORY/encrypt_key wins over file and environment, and the variable is still removed', async () => {
    const credentialsDirectory = tempWorkDir(t, 'mgda-cred-');
    secretFile(credentialsDirectory, 'encrypt_key', `${K16.env_value}\n`, 0o400);
    const file = secretFile(tempWorkDir(t, 'mgda-cred-'), 'encrypt_key', `${K32.env_value}\n`);
    const env: NodeJS.ProcessEnv = { CREDENTIALS_DIRECTORY: credentialsDirectory, MG_AGENT_BOOTSTRAP_ENCRYPT_KEY: K32.env_value };
    const key = await readEncryptKey({ file, env });
    expect(key?.toString('hex')).toBe(K16.aes_key_hex);
    expect(env).toEqual({ CREDENTIALS_DIRECTORY: credentialsDirectory });
  });

  it('the file wins over the environment', async () => {
    const file = secretFile(tempWorkDir(t, 'mgda-cred-'), 'encrypt_key', `${K16.env_value}\n`);
    const env: NodeJS.ProcessEnv = { MG_AGENT_BOOTSTRAP_ENCRYPT_KEY: K32.env_value };
    const key = await readEncryptKey({ file, env, credentialsDirectory: '' });
    expect(key?.toString('hex')).toBe(K16.aes_key_hex);
    expect('MG_AGENT_BOOTSTRAP_ENCRYPT_KEY' in env).toBe(false);
  });

  it('reads MG_AGENT_BOOTSTRAP_ENCRYPT_KEY and deletes it so child processes never inherit it', async () => {
    const env: NodeJS.ProcessEnv = { MG_AGENT_BOOTSTRAP_ENCRYPT_KEY: K32.env_value, PATH: '/usr/bin' };
    const key = await readEncryptKey({ env, credentialsDirectory: '' });
    expect(key?.toString('hex')).toBe(K32.aes_key_hex);
    expect(env).toEqual({ PATH: '/usr/bin' });
  });

  it('a child process started afterwards does not see the variable', async () => {
    const env: NodeJS.ProcessEnv = { ...process.env, MG_AGENT_BOOTSTRAP_ENCRYPT_KEY: K16.env_value };
    await readEncryptKey({ env, credentialsDirectory: '' });
    const childEnv = execFileSync('env', [], { env, encoding: 'utf8' });
    expect(childEnv).not.toContain('MG_AGENT_BOOTSTRAP_ENCRYPT_KEY');
    expect(childEnv).not.toContain(K16.env_value);
  });

  it('counts the key length in UTF-8 bytes', async () => {
    const env: NodeJS.ProcessEnv = { MG_AGENT_BOOTSTRAP_ENCRYPT_KEY: 'é'.repeat(8) };
    const key = await readEncryptKey({ env, credentialsDirectory: '' });
    expect(key?.length).toBe(16);
    expect(key?.toString('utf8')).toBe('é'.repeat(8));
  });

  it('returns undefined when there is no source (an empty variable counts as none)', async () => {
    await expect(readEncryptKey({ env: {}, credentialsDirectory: '' })).resolves.toBeUndefined();
    const env: NodeJS.ProcessEnv = { MG_AGENT_BOOTSTRAP_ENCRYPT_KEY: '' };
    await expect(readEncryptKey({ env, credentialsDirectory: '' })).resolves.toBeUndefined();
    expect('MG_AGENT_BOOTSTRAP_ENCRYPT_KEY' in env).toBe(false);
  });

  describe('wrong lengths are ENCRYPT_KEY_INVALID with the length, never the value', () => {
    const badKeys = [
      ['15 bytes', 'MG_BS_KEY_15byt'],
      ['17 bytes', 'MG_BS_KEY_17bytes'],
      ['31 bytes', K32.env_value.slice(0, 31)],
      ['33 bytes', `${K32.env_value}x`],
      ['hex-encoded 32-byte key (64 bytes of text)', Buffer.from(K32.env_value).toString('hex')],
    ] as const;

    for (const [title, value] of badKeys) {
      it(`${title} from the environment`, async () => {
        const env: NodeJS.ProcessEnv = { MG_AGENT_BOOTSTRAP_ENCRYPT_KEY: value };
        const error = await rejectedAgentError(readEncryptKey({ env, credentialsDirectory: '' }));
        expect(error.code).toBe('ENCRYPT_KEY_INVALID');
        expect(error.message).toContain(`${Buffer.byteLength(value)} bytes`);
        expect(error.message).toContain('MG_AGENT_BOOTSTRAP_ENCRYPT_KEY');
        expectNoSecret(error, value);
        expect('MG_AGENT_BOOTSTRAP_ENCRYPT_KEY' in env).toBe(false);
      });

      it(`${title} from a file`, async () => {
        const file = secretFile(tempWorkDir(t, 'mgda-cred-'), 'encrypt_key', `${value}\n`);
        const error = await rejectedAgentError(readEncryptKey({ file, env: {}, credentialsDirectory: '' }));
        expect(error.code).toBe('ENCRYPT_KEY_INVALID');
        expect(error.message).toContain(`${Buffer.byteLength(value)} bytes`);
        expect(error.message).toContain(file);
        expectNoSecret(error, value);
      });
    }
  });

  it('only one trailing newline is stripped: a second one makes the key 17 bytes', async () => {
    const file = secretFile(tempWorkDir(t, 'mgda-cred-'), 'encrypt_key', `${K16.env_value}\n\n`);
    const error = await rejectedAgentError(readEncryptKey({ file, env: {}, credentialsDirectory: '' }));
    expect(error.code).toBe('ENCRYPT_KEY_INVALID');
    expect(error.message).toContain('17 bytes');
  });

  it('refuses a key file readable by others, with the chmod fix', async () => {
    const file = secretFile(tempWorkDir(t, 'mgda-cred-'), 'encrypt_key', `${K32.env_value}\n`, 0o644);
    const error = await rejectedAgentError(readEncryptKey({ file, env: {}, credentialsDirectory: '' }));
    expect(error.code).toBe('ENCRYPT_KEY_INVALID');
    expect(error.message).toContain('mode 0644');
    expect(error.message).toContain(`chmod 600 ${file}`);
    expectNoSecret(error, K32.env_value);
  });

  it('a configured file that is missing is an error, not a silent fall-back to the environment', async () => {
    const file = join(tempWorkDir(t, 'mgda-cred-'), 'encrypt_key');
    const env: NodeJS.ProcessEnv = { MG_AGENT_BOOTSTRAP_ENCRYPT_KEY: K32.env_value };
    const error = await rejectedAgentError(readEncryptKey({ file, env, credentialsDirectory: '' }));
    expect(error.code).toBe('ENCRYPT_KEY_INVALID');
    expect(error.message).toContain(file);
    expect('MG_AGENT_BOOTSTRAP_ENCRYPT_KEY' in env).toBe(false);
  });

  it('an empty key file is refused', async () => {
    const file = secretFile(tempWorkDir(t, 'mgda-cred-'), 'encrypt_key', '\n');
    const error = await rejectedAgentError(readEncryptKey({ file, env: {}, credentialsDirectory: '' }));
    expect(error.code).toBe('ENCRYPT_KEY_INVALID');
    expect(error.message).toContain('empty');
  });
});

describe('stripOneTrailingNewline', () => {
  it.each([
    ['abc', 'abc'],
    ['abc\n', 'abc'],
    ['abc\r\n', 'abc'],
    ['abc\n\n', 'abc\n'],
    ['abc\r\n\r\n', 'abc\r\n'],
    ['abc\r', 'abc\r'],
    ['\n', ''],
  ])('%j -> %j', (input, expected) => {
    expect(stripOneTrailingNewline(input)).toBe(expected);
  });
});
