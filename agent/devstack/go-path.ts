/**
 * How a Go net/http + chi server sees a request path. Go decodes the path, then keeps the raw form
 * (URL.RawPath) whenever the client's encoding differs from Go's own canonical encoding; chi routes
 * on RawPath when it is set. So `/clients/bootstrap/a%20b` reaches the handler as `a b`, while
 * `/clients/bootstrap/dc%3Aa6` (`:` needs no escaping, so the encoding is not canonical) reaches it
 * as the literal `dc%3Aa6` and finds no config.
 */

/** Go's shouldEscape(c, encodePath) for one byte. */
function goPathMustEscape(byte: number): boolean {
  if ((byte >= 0x61 && byte <= 0x7a) || (byte >= 0x41 && byte <= 0x5a) || (byte >= 0x30 && byte <= 0x39)) return false;
  switch (byte) {
    case 0x2d: // -
    case 0x5f: // _
    case 0x2e: // .
    case 0x7e: // ~
    case 0x24: // $
    case 0x26: // &
    case 0x2b: // +
    case 0x2c: // ,
    case 0x2f: // /
    case 0x3a: // :
    case 0x3b: // ;
    case 0x3d: // =
    case 0x40: // @
      return false;
    default:
      return true;
  }
}

/** Go's url.escape(path, encodePath), on the path's bytes. */
export function goEscapePath(pathBytes: Buffer): string {
  let out = '';
  for (const byte of pathBytes) {
    out += goPathMustEscape(byte) ? '%' + byte.toString(16).toUpperCase().padStart(2, '0') : String.fromCharCode(byte);
  }
  return out;
}

/** Go's url.unescape(s, encodePath): undefined for a malformed escape (Go answers 400 then). */
export function goUnescapePath(raw: string): Buffer | undefined {
  const bytes: number[] = [];
  const input = Buffer.from(raw, 'latin1');
  for (let i = 0; i < input.length; i++) {
    const byte = input[i]!;
    if (byte !== 0x25) {
      bytes.push(byte);
      continue;
    }
    const hex = raw.slice(i + 1, i + 3);
    if (!/^[0-9a-fA-F]{2}$/.test(hex)) return undefined;
    bytes.push(parseInt(hex, 16));
    i += 2;
  }
  return Buffer.from(bytes);
}

/**
 * The path chi would route on, from the raw request target (query already removed). Returns
 * undefined when Go would reject the URL as malformed.
 */
export function goRoutingPath(rawPath: string): string | undefined {
  const decoded = goUnescapePath(rawPath);
  if (decoded === undefined) return undefined;
  return goEscapePath(decoded) === rawPath ? decoded.toString('utf8') : rawPath;
}
