import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { AgentError } from '../errors/agent-error.js';

/**
 * Magistrala's secure bootstrap: AES in CFB mode with 128-bit segments (never cfb8), no padding,
 * no MAC. The key is the operator's MG_BOOTSTRAP_ENCRYPT_KEY used as raw UTF-8 bytes; its length
 * (16/24/32) chooses AES-128/192/256.
 */
export const IV_LENGTH = 16;

export function cipherName(key: Buffer): 'aes-128-cfb' | 'aes-192-cfb' | 'aes-256-cfb' {
  switch (key.length) {
    case 16:
      return 'aes-128-cfb';
    case 24:
      return 'aes-192-cfb';
    case 32:
      return 'aes-256-cfb';
    default:
      throw new AgentError(
        'ENCRYPT_KEY_INVALID',
        `encryption key is ${key.length} bytes; Magistrala needs exactly 16, 24 or 32 bytes (AES-128/192/256)`,
        { details: { keyBytes: key.length } },
      );
  }
}

/** Parses the operator's key string into the raw AES key bytes, validating its length. */
export function parseEncryptKey(value: string): Buffer {
  const key = Buffer.from(value, 'utf8');
  cipherName(key);
  return key;
}

/** IV || CFB-encrypt(plaintext). */
export function encryptCfb(key: Buffer, plaintext: Buffer, iv: Buffer = randomBytes(IV_LENGTH)): Buffer {
  if (iv.length !== IV_LENGTH) throw new AgentError('INTERNAL', `IV must be ${IV_LENGTH} bytes`);
  const cipher = createCipheriv(cipherName(key), key, iv);
  return Buffer.concat([iv, cipher.update(plaintext), cipher.final()]);
}

/** Inverse of encryptCfb. Bodies of 16 bytes or fewer carry no ciphertext and are refused. */
export function decryptCfb(key: Buffer, body: Buffer): Buffer {
  if (body.length <= IV_LENGTH) {
    throw new AgentError(
      'BOOTSTRAP_RESPONSE_UNDECRYPTABLE',
      `secure response is ${body.length} bytes; it must be longer than the ${IV_LENGTH}-byte IV`,
      { details: { bodyBytes: body.length } },
    );
  }
  const decipher = createDecipheriv(cipherName(key), key, body.subarray(0, IV_LENGTH));
  return Buffer.concat([decipher.update(body.subarray(IV_LENGTH)), decipher.final()]);
}

/** The credential sent after "Client " in secure mode: lowercase hex of IV || ciphertext. */
export function secureToken(key: Buffer, externalKey: string, iv?: Buffer): string {
  return encryptCfb(key, Buffer.from(externalKey, 'utf8'), iv).toString('hex');
}

/** Server side of secureToken (used by the dev stack): undefined when the token is not valid hex. */
export function openSecureToken(key: Buffer, tokenHex: string): string | undefined {
  if (!/^(?:[0-9a-fA-F]{2})*$/.test(tokenHex)) return undefined;
  const raw = Buffer.from(tokenHex, 'hex');
  // Upstream's dec() returns "" for tokens shorter than one block; "" never matches a stored key.
  if (raw.length <= IV_LENGTH) return '';
  const decipher = createDecipheriv(cipherName(key), key, raw.subarray(0, IV_LENGTH));
  return Buffer.concat([decipher.update(raw.subarray(IV_LENGTH)), decipher.final()]).toString('utf8');
}
