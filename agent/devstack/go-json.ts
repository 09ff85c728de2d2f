/**
 * JSON exactly as Go's encoding/json writes it, so the dev server's bodies match upstream byte for
 * byte. Two kinds of object exist in Go: structs, whose fields keep their declared order, and maps,
 * whose keys are sorted. Here a `Map` stands for a struct (insertion order kept, `undefined` values
 * dropped, which is how callers express `omitempty`) and a plain object stands for a Go map (keys
 * sorted by their UTF-8 bytes, as Go sorts them).
 *
 * Strings are escaped the way Go (1.22 and later) escapes them: `<`, `>`, `&`, U+2028 and U+2029 as
 * \uXXXX (HTML-safe), control characters as \n \r \t \b \f or \u00XX, lone surrogates (invalid UTF-8
 * in Go) as \ufffd.
 */
export type GoJsonValue =
  | null
  | boolean
  | number
  | string
  | undefined
  | readonly GoJsonValue[]
  | ReadonlyMap<string, GoJsonValue>
  | { readonly [key: string]: GoJsonValue };

const HEX = '0123456789abcdef';

export function goQuote(text: string): string {
  let out = '"';
  for (let i = 0; i < text.length; i++) {
    const code = text.charCodeAt(i);
    if (code >= 0xd800 && code <= 0xdbff) {
      const next = text.charCodeAt(i + 1);
      if (next >= 0xdc00 && next <= 0xdfff) {
        out += text[i]! + text[i + 1]!;
        i++;
      } else {
        out += '\\ufffd';
      }
      continue;
    }
    if (code >= 0xdc00 && code <= 0xdfff) {
      out += '\\ufffd';
      continue;
    }
    switch (code) {
      case 0x22:
        out += '\\"';
        continue;
      case 0x5c:
        out += '\\\\';
        continue;
      case 0x0a:
        out += '\\n';
        continue;
      case 0x0d:
        out += '\\r';
        continue;
      case 0x09:
        out += '\\t';
        continue;
      case 0x08:
        out += '\\b';
        continue;
      case 0x0c:
        out += '\\f';
        continue;
      case 0x3c:
      case 0x3e:
      case 0x26:
      case 0x2028:
      case 0x2029:
        out += '\\u' + code.toString(16).padStart(4, '0');
        continue;
      default:
        if (code < 0x20) {
          out += '\\u00' + HEX[code >> 4]! + HEX[code & 0xf]!;
        } else {
          out += text[i]!;
        }
    }
  }
  return out + '"';
}

function goNumber(value: number): string {
  // Go refuses NaN/Inf; a dev server should not crash on odd metadata, so they become null.
  if (!Number.isFinite(value)) return 'null';
  // For finite numbers JavaScript's shortest round-trip form equals Go's float64 output
  // ('f' format below 1e21, exponent form with at least one exponent digit above).
  return Object.is(value, -0) ? '-0' : String(value);
}

function compareUtf8(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'));
}

function entriesOf(value: ReadonlyMap<string, GoJsonValue> | { readonly [key: string]: GoJsonValue }): [string, GoJsonValue][] {
  if (value instanceof Map) {
    return [...(value as ReadonlyMap<string, GoJsonValue>).entries()].filter(([, v]) => v !== undefined);
  }
  return Object.entries(value)
    .filter(([, v]) => v !== undefined)
    .sort(([a], [b]) => compareUtf8(a, b));
}

function encode(value: GoJsonValue, indent: string | undefined, depth: number): string {
  if (value === null || value === undefined) return 'null';
  if (typeof value === 'boolean') return value ? 'true' : 'false';
  if (typeof value === 'number') return goNumber(value);
  if (typeof value === 'string') return goQuote(value);
  const newline = (level: number): string => (indent === undefined ? '' : '\n' + indent.repeat(level));
  const colon = indent === undefined ? ':' : ': ';
  if (Array.isArray(value)) {
    const items = value as readonly GoJsonValue[];
    if (items.length === 0) return '[]';
    const parts = items.map((item) => newline(depth + 1) + encode(item, indent, depth + 1));
    return '[' + parts.join(',') + newline(depth) + ']';
  }
  const entries = entriesOf(value as ReadonlyMap<string, GoJsonValue>);
  if (entries.length === 0) return '{}';
  const parts = entries.map(([k, v]) => newline(depth + 1) + goQuote(k) + colon + encode(v, indent, depth + 1));
  return '{' + parts.join(',') + newline(depth) + '}';
}

/** Go's json.Marshal(value). */
export function goMarshal(value: GoJsonValue): string {
  return encode(value, undefined, 0);
}

/** Go's json.NewEncoder(w).Encode(value): Marshal plus a trailing newline. */
export function goEncode(value: GoJsonValue): string {
  return goMarshal(value) + '\n';
}

/** Go's json.MarshalIndent(value, "", indent). */
export function goMarshalIndent(value: GoJsonValue, indent = '  '): string {
  return encode(value, indent, 0);
}

/**
 * Converts parsed JSON (from a request body or the registry) into a Go-map-shaped value: plain
 * objects stay plain objects, so they are written with sorted keys, as Go writes a
 * map[string]interface{} it decoded.
 */
export function fromParsedJson(value: unknown): GoJsonValue {
  if (value === null || typeof value === 'boolean' || typeof value === 'number' || typeof value === 'string') return value;
  if (Array.isArray(value)) return value.map(fromParsedJson);
  if (typeof value === 'object') {
    const out: Record<string, GoJsonValue> = {};
    for (const [k, v] of Object.entries(value as Record<string, unknown>)) out[k] = fromParsedJson(v);
    return out;
  }
  return null;
}
