import { gzipSync } from 'node:zlib';
import type { Rng } from './rng.js';

/**
 * Seeded mutations of valid inputs: byte-level damage (truncation, bit flips, inserted and deleted
 * runs), structural damage of JSON (wrong types, missing and unknown fields, huge values, hostile
 * channel IDs and URLs, swapped certificates) and wrong encodings. Every mutation has a name, so a
 * violation says exactly what was sent.
 */

export interface Mutated {
  name: string;
  body: Buffer;
}

export function mutateBytes(rng: Rng, input: Buffer): Mutated {
  const bytes = Buffer.from(input);
  const at = () => rng.int(Math.max(1, bytes.length));
  switch (rng.int(8)) {
    case 0: {
      const cut = at();
      return { name: `truncated to ${cut} of ${bytes.length} bytes`, body: bytes.subarray(0, cut) };
    }
    case 1: {
      const flips = rng.between(1, 8);
      for (let i = 0; i < flips && bytes.length > 0; i++) {
        const index = at();
        bytes[index] = (bytes[index] as number) ^ (1 << rng.int(8));
      }
      return { name: `${flips} bit(s) flipped`, body: bytes };
    }
    case 2: {
      const index = at();
      const junk = rng.bytes(rng.between(1, 32));
      return { name: `${junk.length} random bytes inserted at ${index}`, body: Buffer.concat([bytes.subarray(0, index), junk, bytes.subarray(index)]) };
    }
    case 3: {
      const index = at();
      const length = rng.between(1, 64);
      return { name: `${length} bytes deleted at ${index}`, body: Buffer.concat([bytes.subarray(0, index), bytes.subarray(index + length)]) };
    }
    case 4: {
      const index = at();
      const length = rng.between(1, 64);
      return { name: `${length} bytes duplicated at ${index}`, body: Buffer.concat([bytes.subarray(0, index + length), bytes.subarray(index)]) };
    }
    case 5: {
      const index = at();
      bytes.fill(0, index, Math.min(bytes.length, index + rng.between(1, 128)));
      return { name: `zeroed run at ${index}`, body: bytes };
    }
    case 6:
      return { name: 'empty body', body: Buffer.alloc(0) };
    default:
      return { name: `${input.length} random bytes`, body: rng.bytes(input.length) };
  }
}

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** Every path to a value in a JSON tree ([] is the root). */
function paths(value: Json, prefix: (string | number)[] = [], out: (string | number)[][] = []): (string | number)[][] {
  out.push(prefix);
  if (Array.isArray(value)) value.forEach((v, i) => paths(v, [...prefix, i], out));
  else if (value !== null && typeof value === 'object') for (const [k, v] of Object.entries(value)) paths(v, [...prefix, k], out);
  return out;
}

function setAt(root: Json, path: (string | number)[], value: Json | undefined): Json {
  if (path.length === 0) return value === undefined ? null : value;
  const parent = path.slice(0, -1).reduce<Json>((node, key) => (node as Record<string, Json>)[key as string] as Json, root);
  const last = path[path.length - 1] as string | number;
  if (Array.isArray(parent)) {
    if (value === undefined) parent.splice(last as number, 1);
    else parent[last as number] = value;
  } else if (parent !== null && typeof parent === 'object') {
    if (value === undefined) delete parent[last as string];
    else parent[last as string] = value;
  }
  return root;
}

function randomValue(rng: Rng): Json {
  switch (rng.int(10)) {
    case 0:
      return null;
    case 1:
      return rng.chance(0.5);
    case 2:
      return rng.pick([0, -1, 1.5, 1e308, -0, 2 ** 53 + 1]);
    case 3:
      return '';
    case 4:
      return rng.pick(['x', '#', '+', '/', '../..', 'm/+/c/#', '\u0000', '\u202e', 'ünïcødé', '😀', '<script>', '%2F']);
    case 5:
      return [];
    case 6:
      return {};
    case 7:
      return [randomValue(rng), randomValue(rng)];
    case 8:
      return { id: randomValue(rng) };
    default:
      return 'y'.repeat(rng.pick([1_000, 100_000, 600_000]));
  }
}

export interface JsonMutationContext {
  /** Certificates and keys that are valid but belong elsewhere, to swap in. */
  foreignCert?: string;
  foreignKey?: string;
}

/** A structural mutation of a bootstrap response object; the result is JSON text unless noted. */
export function mutateJson(rng: Rng, input: Json, context: JsonMutationContext): Mutated {
  const value = structuredClone(input) as Json;
  const all = paths(value).filter((p) => p.length > 0);
  const path = all.length > 0 ? rng.pick(all) : [];
  const where = path.join('.') || '(root)';
  const text = (v: Json) => Buffer.from(JSON.stringify(v), 'utf8');
  switch (rng.int(12)) {
    case 0:
      return { name: `${where} replaced by another type`, body: text(setAt(value, path, randomValue(rng))) };
    case 1:
      return { name: `${where} removed`, body: text(setAt(value, path, undefined)) };
    case 2: {
      const root = value !== null && typeof value === 'object' && !Array.isArray(value) ? value : {};
      root[rng.pick(['extra', '__proto__', 'constructor', 'client_id', 'channels'])] = randomValue(rng);
      return { name: 'unknown or overriding field added', body: text(root) };
    }
    case 3: {
      const size = rng.pick([64 * 1024, 900 * 1024, 2 * 1024 * 1024]);
      return { name: `${where} replaced by a ${size}-byte string`, body: text(setAt(value, path, 'z'.repeat(size))) };
    }
    case 4: {
      const count = rng.pick([1_000, 20_000]);
      const channels = Array.from({ length: count }, (_, i) => ({ id: `ch-${i}`, name: null, metadata: null }));
      return { name: `${count} channels`, body: text(setAt(value, ['channels'], channels)) };
    }
    case 5: {
      const depth = rng.pick([1_000, 100_000]);
      const raw = JSON.stringify(value).replace(/^\{/, `{"deep":${'['.repeat(depth)}${']'.repeat(depth)},`);
      return { name: `array nested ${depth} deep`, body: Buffer.from(raw, 'utf8') };
    }
    case 6: {
      const id = rng.pick(['', '#', '+', 'a/b', 'a/#', '\u0000', ' ', 'x'.repeat(70_000), '../../etc', 'ü']);
      const channels = [{ id, name: 'hostile', metadata: null }];
      return { name: `channel id ${JSON.stringify(id.slice(0, 12))}`, body: text(setAt(value, ['channels'], channels)) };
    }
    case 7: {
      const field = rng.pick(['client_cert', 'client_key', 'ca_cert']);
      const current = typeof (value as Record<string, Json>)?.[field] === 'string' ? ((value as Record<string, Json>)[field] as string) : '';
      const replacement = rng.pick([
        current.slice(0, Math.floor(current.length / 2)),
        current.replace(/[A-Za-z]/g, (c, i: number) => (i % 7 === 0 ? '*' : c)),
        context.foreignCert ?? 'not a certificate',
        context.foreignKey ?? 'not a key',
        Buffer.from('garbage der').toString('base64'),
        '-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n',
      ]);
      return { name: `${field} mangled`, body: text(setAt(value, [field], replacement)) };
    }
    case 8: {
      const url = rng.pick(['', 'http://x', 'mqtt://', 'javascript:alert(1)', 'mqtt://[::1', `mqtt://${'h'.repeat(5000)}:1883`, 'mqtt://user:pw@host:1', 42]);
      const content = JSON.stringify({ agent: { mqtt: { url } }, mqtt: { url, client_id: 1, secret: null }, domain_id: rng.pick(['', null, 7, 'd']) });
      return { name: `content with broker URL ${JSON.stringify(url).slice(0, 20)}`, body: text(setAt(value, ['content'], content)) };
    }
    case 9: {
      const raw = JSON.stringify(value);
      const duplicated = raw.replace(/^\{/, '{"client_id":1,"client_secret":{},"id":[],');
      return { name: 'duplicate keys (first occurrence of the wrong type)', body: Buffer.from(duplicated, 'utf8') };
    }
    case 10:
      return { name: 'JSON of another type at the root', body: text(rng.pick<Json>([[value], 'text', 42, null, true])) };
    default:
      return { name: 'content not JSON', body: text(setAt(value, ['content'], rng.pick(['{', 'null', '[]', '"x"', '{"mqtt":5}']))) };
  }
}

/** The same JSON text in a wrong encoding or wrapping. */
export function wrongEncoding(rng: Rng, jsonText: string): Mutated {
  switch (rng.int(6)) {
    case 0:
      return { name: 'UTF-16LE', body: Buffer.from(jsonText, 'utf16le') };
    case 1:
      return { name: 'UTF-8 byte order mark', body: Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from(jsonText, 'utf8')]) };
    case 2:
      return { name: 'invalid UTF-8 inside a string', body: Buffer.from(jsonText.replace(/"([a-z_]+)":"/, '"$1":"\udcff'), 'utf8') };
    case 3:
      return { name: 'base64 of the body', body: Buffer.from(Buffer.from(jsonText, 'utf8').toString('base64'), 'latin1') };
    case 4:
      return { name: 'gzip without Content-Encoding', body: gzipSync(Buffer.from(jsonText, 'utf8')) };
    default:
      return { name: 'latin1 re-encoding', body: Buffer.from(Buffer.from(jsonText, 'utf8').toString('latin1'), 'utf8') };
  }
}
