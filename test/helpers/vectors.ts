import { readFileSync } from 'node:fs';

/** The upstream-generated vectors, copied unchanged from ../shared/vectors (a test checks they still match). */
export const VECTORS_PATH = new URL('../fixtures/bootstrap-vectors.json', import.meta.url).pathname;

export interface KeyVector { name: string; env_value: string; aes_key_hex: string; aes_key_bytes: number }
export interface RequestVector {
  id: string; key: string; external_key: string; iv_hex: string; ciphertext_hex: string; token_hex: string;
  authorization: string; authorization_pre_v0_16: string; path_example: string;
}
export interface ResponseVector {
  id: string; key: string; shape: string; plain_endpoint_body: string; secure_plaintext_json: string;
  iv_hex: string; secure_body_hex: string; secure_body_base64: string; secure_body_len: number;
}
export interface NegativeVector {
  id: string; side: string; server_key?: string; authorization?: string; input_hex?: string; expected_outcome: string;
}
export interface Vectors {
  keys: KeyVector[]; request_vectors: RequestVector[]; response_vectors: ResponseVector[]; negative_vectors: NegativeVector[];
  fixed_ivs: { request: string; response: string };
}

export function loadVectors(): Vectors {
  return JSON.parse(readFileSync(VECTORS_PATH, 'utf8')) as Vectors;
}

export function keyByName(v: Vectors, name: string): KeyVector {
  const k = v.keys.find((x) => x.name === name);
  if (!k) throw new Error(`no key ${name} in vectors`);
  return k;
}

/** The AES key bytes the server uses for a named key (the vector's aes_key_hex). */
export function aesKeyByName(v: Vectors, name: string): Buffer {
  return Buffer.from(keyByName(v, name).aes_key_hex, 'hex');
}

export function responseVectorById(v: Vectors, id: string): ResponseVector {
  const found = v.response_vectors.find((r) => r.id === id);
  if (!found) throw new Error(`no response vector ${id}`);
  return found;
}
