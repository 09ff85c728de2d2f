import { AgentError } from '../errors/agent-error.js';
import { secureToken } from './crypto.js';

/*
 * The pure half of the Bootstrap client: request path and header, and how a status, a header or a
 * transport failure turns into an AgentError. No sockets, no clock (callers pass "now").
 */

export type BootstrapMode = 'plain' | 'secure';
export type BootstrapFamily = 'clients' | 'things';

/** RFC 3986 pchar minus pct-encoded: what may stand unencoded in a path segment. ':' must stay raw. */
const SEGMENT_SAFE = /^[A-Za-z0-9\-._~!$&'()*+,;=:@]$/;

/**
 * Percent-encodes only what a path segment must (the server looks the raw path up literally, so
 * `dc:a6:...` must not become `dc%3Aa6...`). Non-ASCII is encoded as UTF-8 bytes.
 */
export function encodePathSegment(value: string): string {
  let out = '';
  for (const byte of Buffer.from(value, 'utf8')) {
    const char = String.fromCharCode(byte);
    out += byte < 0x80 && SEGMENT_SAFE.test(char) ? char : `%${byte.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  // "." and ".." would be removed by URL normalisation on the way; encoded they stay a plain ID.
  if (out === '.' || out === '..') out = out.replaceAll('.', '%2E');
  return out;
}

/** `/clients/bootstrap/{id}`, `/clients/bootstrap/secure/{id}`, or the `/things/...` legacy forms. */
export function bootstrapPath(family: BootstrapFamily, mode: BootstrapMode, externalId: string): string {
  return `/${family}/bootstrap/${mode === 'secure' ? 'secure/' : ''}${encodePathSegment(externalId)}`;
}

export interface BootstrapBase {
  /** scheme://host[:port] */
  origin: string;
  /** Path prefix without a trailing slash ('' when the service is at the root). */
  prefix: string;
}

/** Validates bootstrap.url and splits it into origin and path prefix (trailing slash optional). */
export function parseBaseUrl(baseUrl: string): BootstrapBase {
  if (!URL.canParse(baseUrl)) {
    throw new AgentError('CONFIG_INVALID', 'bootstrap URL is not a valid URL such as http://bootstrap.example.com:9013', {
      details: { field: 'bootstrap.url' },
    });
  }
  const url = new URL(baseUrl);
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new AgentError('CONFIG_INVALID', `bootstrap URL must start with http:// or https://, not ${url.protocol}//`, {
      details: { field: 'bootstrap.url' },
    });
  }
  if (url.username !== '' || url.password !== '' || url.search !== '' || url.hash !== '') {
    // Credentials in the URL would end up in every log line that names the URL.
    throw new AgentError('CONFIG_INVALID', 'bootstrap URL must not contain credentials, a query or a fragment', {
      details: { field: 'bootstrap.url' },
    });
  }
  return { origin: url.origin, prefix: url.pathname.replace(/\/+$/, '') };
}

/** The scheme word is case-sensitive and followed by exactly one space. */
export function authorizationScheme(family: BootstrapFamily): 'Client' | 'Thing' {
  return family === 'things' ? 'Thing' : 'Client';
}

/**
 * The Authorization header value as a byte string: each char is one byte on the wire (the HTTP
 * client writes headers as latin1). A non-ASCII plain key thus travels as its raw UTF-8 bytes, which
 * is what the Go server compares against.
 */
export function authorizationHeader(
  family: BootstrapFamily,
  mode: BootstrapMode,
  externalKey: string,
  encryptKey?: Buffer,
  iv?: Buffer,
): string {
  if (externalKey === '') {
    throw new AgentError('EXTERNAL_KEY_EMPTY', 'the external key is empty; Bootstrap never accepts an empty key');
  }
  let credential: string;
  if (mode === 'secure') {
    if (!encryptKey) throw new AgentError('ENCRYPT_KEY_INVALID', 'secure bootstrap needs the encryption key (MG_BOOTSTRAP_ENCRYPT_KEY)');
    credential = secureToken(encryptKey, externalKey, iv);
  } else {
    if (/[\u0000-\u001f\u007f]/.test(externalKey)) {
      throw new AgentError(
        'CONFIG_INVALID',
        'the external key contains control characters (a stray newline?), which cannot travel in an HTTP header',
        { details: { field: 'externalKey' } },
      );
    }
    credential = Buffer.from(externalKey, 'utf8').toString('latin1');
  }
  return `${authorizationScheme(family)} ${credential}`;
}

/** Retry-After as delay-seconds or an HTTP date; undefined when absent or unreadable. */
export function parseRetryAfter(value: string | string[] | undefined, nowMs: number): number | undefined {
  const raw = Array.isArray(value) ? value[0] : value;
  if (raw === undefined) return undefined;
  const text = raw.trim();
  if (/^\d+$/.test(text)) return Number(text) * 1000;
  // An HTTP date always names a weekday and GMT; this keeps Date.parse from guessing at bare numbers.
  if (!/GMT$/i.test(text)) return undefined;
  const at = Date.parse(text);
  if (Number.isNaN(at)) return undefined;
  return Math.max(0, at - nowMs);
}

const SERVER_MESSAGE_MAX = 200;

/**
 * The `message` (or older `error`) text of a JSON error body, made safe for a log line: printable
 * ASCII only, truncated, and with anything we sent as a credential blanked out.
 */
export function serverMessageFromBody(body: Buffer, credentials: readonly string[]): string | undefined {
  let parsed: unknown;
  try {
    parsed = JSON.parse(body.toString('utf8'));
  } catch {
    return undefined;
  }
  if (typeof parsed !== 'object' || parsed === null) return undefined;
  const record = parsed as Record<string, unknown>;
  const text = typeof record['message'] === 'string' ? record['message'] : typeof record['error'] === 'string' ? record['error'] : undefined;
  if (text === undefined) return undefined;
  let safe = text;
  for (const credential of credentials) {
    if (credential.length >= 4) safe = safe.split(credential).join('[redacted]');
  }
  safe = safe.replace(/[^\x20-\x7e]/g, '?').trim();
  if (safe === '') return undefined;
  return safe.length > SERVER_MESSAGE_MAX ? `${safe.slice(0, SERVER_MESSAGE_MAX)}...` : safe;
}

export interface HttpFailure {
  status: number;
  /** What the message names: "GET <origin><path>". */
  target: string;
  mode: BootstrapMode;
  family: BootstrapFamily;
  /** Bytes of the error body that were read (capped). */
  bodyBytes: number;
  serverMessage?: string;
  retryAfterMs?: number;
  location?: string;
}

/** Status → stable code and one sentence saying what it means for this device. */
export function errorForStatus(failure: HttpFailure): AgentError {
  const { status, target } = failure;
  const details = {
    status,
    target,
    serverMessage: failure.serverMessage,
    retryAfterMs: failure.retryAfterMs,
  };
  const options = { details, retryAfterMs: failure.retryAfterMs };
  const retryNote = failure.retryAfterMs === undefined ? '' : `; the server asks to retry in ${Math.ceil(failure.retryAfterMs / 1000)} s`;
  const scheme = authorizationScheme(failure.family);

  switch (status) {
    case 400:
      return new AgentError(
        'BOOTSTRAP_BAD_REQUEST',
        `bootstrap request ${target} was refused with 400 Bad Request: the server found the request malformed (an empty external ID, or a v0.15/v0.16 server rejecting the "${scheme}" scheme: check bootstrap.family)`,
        options,
      );
    case 401:
      return new AgentError(
        'BOOTSTRAP_UNAUTHORIZED',
        `bootstrap request ${target} was refused with 401 Unauthorized: the server did not accept the "${scheme}" authorization scheme (check bootstrap.family: "clients" for v0.16 and later, "things" for v0.14/v0.15)`,
        options,
      );
    case 403:
      return new AgentError(
        'BOOTSTRAP_FORBIDDEN',
        failure.mode === 'secure'
          ? `bootstrap request ${target} was refused with 403 Forbidden: the external key does not match this configuration, or the encryption key differs from the server's MG_BOOTSTRAP_ENCRYPT_KEY`
          : `bootstrap request ${target} was refused with 403 Forbidden: the external key does not match the one stored for this external ID`,
        options,
      );
    case 404:
      return new AgentError(
        'BOOTSTRAP_NOT_FOUND',
        `bootstrap request ${target} was refused with 404 Not Found: no bootstrap configuration exists for this external ID (or bootstrap.url does not point at the Bootstrap service)`,
        options,
      );
    case 429:
      return new AgentError('BOOTSTRAP_RATE_LIMITED', `bootstrap request ${target} was refused with 429 Too Many Requests${retryNote}`, options);
  }
  if (status === 500 && failure.bodyBytes === 0) {
    return new AgentError(
      'BOOTSTRAP_CONFIG_DISABLED',
      `bootstrap request ${target} got 500 with an empty body, which is how Magistrala v0.30 reports a disabled bootstrap configuration: an operator must enable it`,
      options,
    );
  }
  if (status >= 500 && status <= 599) {
    return new AgentError('BOOTSTRAP_SERVER_ERROR', `bootstrap request ${target} failed with ${status}, a server-side error${retryNote}`, options);
  }
  if (status >= 300 && status <= 399) {
    return new AgentError(
      'BOOTSTRAP_UNEXPECTED_STATUS',
      `bootstrap request ${target} was redirected with ${status}${failure.location ? ` to ${failure.location}` : ''}; redirects are not followed, so set bootstrap.url to the final address`,
      { ...options, details: { ...details, location: failure.location } },
    );
  }
  return new AgentError('BOOTSTRAP_UNEXPECTED_STATUS', `bootstrap request ${target} got the unexpected status ${status}`, options);
}

/** Validity-period failures: the certificate is probably fine and the device clock wrong. */
const TLS_CLOCK_CODES = new Set(['CERT_NOT_YET_VALID', 'CERT_HAS_EXPIRED']);

/** OpenSSL X509 verification results as Node reports them in err.code. */
const TLS_VERIFY_CODES = new Set([
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_CRL',
  'UNABLE_TO_DECRYPT_CERT_SIGNATURE',
  'UNABLE_TO_DECRYPT_CRL_SIGNATURE',
  'UNABLE_TO_DECODE_ISSUER_PUBLIC_KEY',
  'CERT_SIGNATURE_FAILURE',
  'CRL_SIGNATURE_FAILURE',
  'CRL_NOT_YET_VALID',
  'CRL_HAS_EXPIRED',
  'ERROR_IN_CERT_NOT_BEFORE_FIELD',
  'ERROR_IN_CERT_NOT_AFTER_FIELD',
  'ERROR_IN_CRL_LAST_UPDATE_FIELD',
  'ERROR_IN_CRL_NEXT_UPDATE_FIELD',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'CERT_CHAIN_TOO_LONG',
  'CERT_REVOKED',
  'INVALID_CA',
  'PATH_LENGTH_EXCEEDED',
  'INVALID_PURPOSE',
  'CERT_UNTRUSTED',
  'CERT_REJECTED',
  'HOSTNAME_MISMATCH',
]);

const TIMEOUT_CODES = new Set(['UND_ERR_CONNECT_TIMEOUT', 'UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT', 'ETIMEDOUT']);

const NETWORK_PHRASES: Record<string, string> = {
  ECONNREFUSED: 'the connection was refused (is the Bootstrap service running, and is bootstrap.url right?)',
  ECONNRESET: 'the connection was reset',
  EPIPE: 'the connection was closed while sending',
  ENOTFOUND: 'the host name does not resolve (check bootstrap.url and DNS)',
  EAI_AGAIN: 'the DNS lookup failed for now (no network or DNS yet?)',
  EHOSTUNREACH: 'the host is unreachable',
  ENETUNREACH: 'the network is unreachable (no route yet?)',
  ENETDOWN: 'the network is down',
  UND_ERR_SOCKET: 'the server closed the connection before the response was complete',
  UND_ERR_CLOSED: 'the connection was closed',
  UND_ERR_RES_CONTENT_LENGTH_MISMATCH: 'the connection closed before the announced body had arrived',
};

/** Every err.code in an error, its causes and (for happy-eyeballs AggregateErrors) its members. */
export function errorCodesOf(error: unknown): string[] {
  const codes: string[] = [];
  const seen = new Set<unknown>();
  const visit = (value: unknown, depth: number): void => {
    if (depth > 8 || typeof value !== 'object' || value === null || seen.has(value)) return;
    seen.add(value);
    const record = value as { code?: unknown; cause?: unknown; errors?: unknown };
    if (typeof record.code === 'string') codes.push(record.code);
    visit(record.cause, depth + 1);
    if (Array.isArray(record.errors)) for (const member of record.errors) visit(member, depth + 1);
  };
  visit(error, 0);
  return codes;
}

function isTlsCode(code: string): boolean {
  return TLS_VERIFY_CODES.has(code) || code.startsWith('ERR_TLS_') || code.startsWith('ERR_SSL_') || code.startsWith('ERR_OSSL_');
}

/**
 * A failure below HTTP (connect, DNS, TLS, socket) → BOOTSTRAP_NETWORK / _TLS / _TLS_CLOCK /
 * _TIMEOUT, with the OS or TLS code in details.
 */
export function classifyTransportError(error: unknown, target: string): AgentError {
  const codes = errorCodesOf(error);
  const clockCode = codes.find((c) => TLS_CLOCK_CODES.has(c));
  if (clockCode) {
    return new AgentError(
      'BOOTSTRAP_TLS_CLOCK',
      `bootstrap request ${target} failed: the server certificate is not valid at the device's current time (${clockCode}); the system clock is probably wrong`,
      { cause: error, details: { target, osCode: clockCode } },
    );
  }
  const tlsCode = codes.find(isTlsCode);
  if (tlsCode) {
    return new AgentError(
      'BOOTSTRAP_TLS',
      `bootstrap request ${target} failed: the TLS connection could not be verified (${tlsCode}); trust the server's CA with bootstrap.caFile`,
      { cause: error, details: { target, osCode: tlsCode } },
    );
  }
  if (codes.includes('UND_ERR_INVALID_ARG')) {
    // Our own request was malformed: a bug, not a network condition worth retrying.
    return new AgentError('INTERNAL', `bootstrap request ${target} could not be sent: the HTTP client rejected the request`, {
      cause: error,
      details: { target, osCode: 'UND_ERR_INVALID_ARG' },
    });
  }
  const timeoutCode = codes.find((c) => TIMEOUT_CODES.has(c));
  if (timeoutCode) {
    return new AgentError('BOOTSTRAP_TIMEOUT', `bootstrap request ${target} timed out (${timeoutCode})`, {
      cause: error,
      details: { target, osCode: timeoutCode },
    });
  }
  // Prefer the OS code (ECONNRESET) over undici's wrapper code (UND_ERR_SOCKET).
  const osCode = codes.find((c) => !c.startsWith('UND_ERR_')) ?? codes[0];
  const phrase = osCode === undefined ? 'the network request failed' : (NETWORK_PHRASES[osCode] ?? `the network request failed (${osCode})`);
  return new AgentError('BOOTSTRAP_NETWORK', `bootstrap request ${target} failed: ${phrase}`, {
    cause: error,
    details: { target, osCode },
  });
}
