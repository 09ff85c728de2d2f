import { existsSync, readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { cipherName, decryptCfb, encryptCfb, openSecureToken, parseEncryptKey, secureToken } from '../../agent/bootstrap/crypto.js';
import { BootstrapClient } from '../../agent/bootstrap/client.js';
import { authorizationHeader } from '../../agent/bootstrap/wire.js';
import { aesKeyByName, keyByName, loadVectors, VECTORS_PATH } from '../helpers/vectors.js';
import { thrownAgentError } from '../helpers/agent-errors.js';

const vectors = loadVectors();
const aesKey = (name: string): Buffer => aesKeyByName(vectors, name);

describe('vector file', () => {
  const shared = new URL('../../../shared/vectors/bootstrap-vectors.json', import.meta.url).pathname;

  it.skipIf(!existsSync(shared))('is byte-identical to the shared upstream copy', () => {
    expect(readFileSync(VECTORS_PATH).equals(readFileSync(shared))).toBe(true);
  });

  it('uses the documented fixed IVs', () => {
    expect(vectors.fixed_ivs.request).toBe('000102030405060708090a0b0c0d0e0f');
    for (const v of vectors.request_vectors) expect(v.iv_hex).toBe(vectors.fixed_ivs.request);
    for (const v of vectors.response_vectors) expect(v.iv_hex).toBe(vectors.fixed_ivs.response);
  });
});

describe('encryption keys', () => {
  it.each(vectors.keys.filter((k) => k.name !== 'MF013'))('$name: the env value as raw UTF-8 is the AES key', (k) => {
    const key = parseEncryptKey(k.env_value);
    expect(key.toString('hex')).toBe(k.aes_key_hex);
    expect(key.length).toBe(k.aes_key_bytes);
    expect(cipherName(key)).toBe(`aes-${k.aes_key_bytes * 8}-cfb`);
  });

  it('MF013 (mainflux <= 0.13) hex-decodes its env value, so the raw-UTF-8 reading gives a different key', () => {
    const k = keyByName(vectors, 'MF013');
    expect(Buffer.from(k.env_value, 'hex').toString('hex')).toBe(k.aes_key_hex);
    expect(parseEncryptKey(k.env_value).toString('hex')).not.toBe(k.aes_key_hex);
    expect(cipherName(aesKey('MF013'))).toBe('aes-128-cfb');
  });

  it.each([0, 1, 15, 17, 31, 33, 50])('a %i-byte key is refused with ENCRYPT_KEY_INVALID', (length) => {
    const value = 'k'.repeat(length);
    const err = thrownAgentError(() => parseEncryptKey(value));
    expect(err.code).toBe('ENCRYPT_KEY_INVALID');
    expect(err.message).toContain(`${length} bytes`);
  });
});

describe('request tokens (every request vector)', () => {
  it.each(vectors.request_vectors)('$id', (v) => {
    const key = aesKey(v.key);
    const iv = Buffer.from(v.iv_hex, 'hex');
    expect(Buffer.from(v.external_key, 'utf8').toString('hex')).toBe((v as unknown as { external_key_utf8_hex: string }).external_key_utf8_hex);

    const token = secureToken(key, v.external_key, iv);
    expect(token).toBe(v.token_hex);
    expect(token).toBe(v.iv_hex + v.ciphertext_hex);
    expect(token).toMatch(/^[0-9a-f]+$/);
    expect(openSecureToken(key, token)).toBe(v.external_key);

    // The exact header the client sends, for the server family the vector was made for (an empty
    // key is refused before any header is built: see below).
    if (v.external_key !== '') {
      const family = v.path_example.startsWith('/things/') ? 'things' : 'clients';
      expect(authorizationHeader(family, 'secure', v.external_key, key, iv)).toBe(v.authorization);
      if (family === 'clients') expect(authorizationHeader('things', 'secure', v.external_key, key, iv)).toBe(v.authorization_pre_v0_16);
    }
  });

  it('a fresh random IV makes every token different, and each still opens to the key', () => {
    const key = aesKey('K32');
    const tokens = new Set<string>();
    for (let i = 0; i < 20; i++) {
      const token = secureToken(key, 'rpi-temp-001-bootstrap-key');
      tokens.add(token.slice(0, 32));
      expect(openSecureToken(key, token)).toBe('rpi-temp-001-bootstrap-key');
    }
    expect(tokens.size).toBe(20);
  });

  it('the client refuses to send an empty external key (the empty-key vectors can never authenticate)', () => {
    expect(thrownAgentError(() => authorizationHeader('clients', 'secure', '', aesKey('K32'))).code).toBe('EXTERNAL_KEY_EMPTY');
    expect(thrownAgentError(() => authorizationHeader('clients', 'plain', '')).code).toBe('EXTERNAL_KEY_EMPTY');
  });
});

describe('response bodies (every response vector)', () => {
  it.each(vectors.response_vectors)('$id', (v) => {
    const key = aesKey(v.key);
    const body = Buffer.from(v.secure_body_hex, 'hex');
    expect(body.length).toBe(v.secure_body_len);
    expect(body.toString('base64')).toBe(v.secure_body_base64);

    const plaintext = decryptCfb(key, body);
    expect(plaintext.equals(Buffer.from(v.secure_plaintext_json, 'utf8'))).toBe(true);
    expect(plaintext.toString('hex')).toBe((v as unknown as { secure_plaintext_hex: string }).secure_plaintext_hex);
    // CFB: no padding, ciphertext length equals plaintext length.
    expect(body.length).toBe(16 + plaintext.length);

    expect(encryptCfb(key, plaintext, Buffer.from(v.iv_hex, 'hex')).equals(body)).toBe(true);
    // The plain endpoint sends the same JSON plus the encoder's newline.
    expect(v.plain_endpoint_body).toBe(`${v.secure_plaintext_json}\n`);
  });
});

describe('negative vectors (every one)', () => {
  const K32 = aesKey('K32');
  const requestVector = (id: string) => {
    const found = vectors.request_vectors.find((r) => r.id === id);
    if (!found) throw new Error(`no request vector ${id}`);
    return found;
  };

  it.each(vectors.negative_vectors)('$id', (n) => {
    const token = n.authorization?.startsWith('Client ') ? n.authorization.slice('Client '.length) : undefined;
    const extra = n as unknown as { decrypted_hex?: string };
    switch (n.id) {
      case 'neg-req-truncated-lt-block':
      case 'neg-req-iv-only': {
        expect(token).toBe(n.input_hex);
        // Decrypts to "", which never equals a stored key (server answers 403).
        expect(openSecureToken(K32, n.input_hex as string)).toBe('');
        break;
      }
      case 'neg-req-wrong-key': {
        expect(n.input_hex).toBe(requestVector('req-K16-ascii').token_hex);
        const garbage = decryptCfb(K32, Buffer.from(n.input_hex as string, 'hex'));
        expect(garbage.toString('hex')).toBe(extra.decrypted_hex);
        expect(openSecureToken(K32, n.input_hex as string)).not.toBe(requestVector('req-K16-ascii').external_key);
        break;
      }
      case 'neg-req-non-hex':
      case 'neg-req-odd-length-hex': {
        expect(token).toBeDefined();
        expect(openSecureToken(K32, token as string)).toBeUndefined();
        break;
      }
      case 'neg-server-key-50-bytes': {
        const serverKey = n.server_key as string;
        const err = thrownAgentError(() => parseEncryptKey(serverKey));
        expect(err.code).toBe('ENCRYPT_KEY_INVALID');
        expect(err.message).toContain('50 bytes');
        expect(err.message).not.toContain(serverKey);
        expect(JSON.stringify(err.toLog())).not.toContain(serverKey);
        const clientErr = thrownAgentError(
          () =>
            new BootstrapClient({
              baseUrl: 'http://127.0.0.1:9013',
              mode: 'secure',
              family: 'clients',
              encryptKey: Buffer.from(serverKey, 'utf8'),
              timeoutMs: 1000,
              maxResponseBytes: 1024,
            }),
        );
        expect(clientErr.code).toBe('ENCRYPT_KEY_INVALID');
        expect(clientErr.message).not.toContain(serverKey);
        break;
      }
      case 'neg-req-wrong-scheme': {
        // Same token as req-K32-ascii; only the scheme word differs, and that alone is refused.
        const valid = requestVector('req-K32-ascii');
        expect(n.authorization).toBe(`Bearer ${valid.token_hex}`);
        const ours = authorizationHeader('clients', 'secure', valid.external_key, K32, Buffer.from(valid.iv_hex, 'hex'));
        expect(ours).toBe(valid.authorization);
        expect(ours.startsWith('Client ')).toBe(true);
        expect(ours.indexOf(' ')).toBe('Client'.length);
        break;
      }
      case 'neg-resp-truncated': {
        const err = thrownAgentError(() => decryptCfb(K32, Buffer.from(n.input_hex as string, 'hex')));
        expect(err.code).toBe('BOOTSTRAP_RESPONSE_UNDECRYPTABLE');
        expect(thrownAgentError(() => decryptCfb(K32, Buffer.alloc(16))).code).toBe('BOOTSTRAP_RESPONSE_UNDECRYPTABLE');
        break;
      }
      case 'neg-resp-wrong-key': {
        const full = vectors.response_vectors.find((r) => r.id === 'resp-K32-v030-full');
        expect(full).toBeDefined();
        const body = Buffer.from(full?.secure_body_hex ?? '', 'hex');
        expect(body.toString('hex').startsWith((n.input_hex as string).replace(/\.+$/, ''))).toBe(true);
        const wrongKey = Buffer.from('MG_BS_KEY_24byte'.slice(0, 16), 'utf8');
        const garbage = decryptCfb(wrongKey, body);
        expect(garbage.subarray(0, 32).toString('hex')).toBe(extra.decrypted_hex);
        expect(() => JSON.parse(garbage.toString('utf8'))).toThrow();
        break;
      }
      default:
        throw new Error(`negative vector ${n.id} has no test yet: add one`);
    }
  });
});
