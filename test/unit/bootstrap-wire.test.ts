import { describe, expect, it } from 'vitest';
import {
  authorizationHeader,
  bootstrapPath,
  classifyTransportError,
  encodePathSegment,
  errorCodesOf,
  errorForStatus,
  parseBaseUrl,
  parseRetryAfter,
  serverMessageFromBody,
  type HttpFailure,
} from '../../agent/bootstrap/wire.js';
import { AgentError } from '../../agent/errors/agent-error.js';

const TARGET = 'GET http://127.0.0.1:9013/clients/bootstrap/dc:a6:32:01:02:03';

describe('request path', () => {
  it.each([
    ['dc:a6:32:01:02:03', 'dc:a6:32:01:02:03'],
    ['DC-A6-32-01-02-03', 'DC-A6-32-01-02-03'],
    ['rpi_01.warehouse~1', 'rpi_01.warehouse~1'],
    ["a!$&'()*+,;=@b", "a!$&'()*+,;=@b"],
    ['a b', 'a%20b'],
    ['a/b', 'a%2Fb'],
    ['a?b#c', 'a%3Fb%23c'],
    ['100%', '100%25'],
    ['dc%3Aa6', 'dc%253Aa6'],
    ['gerät-ü', 'ger%C3%A4t-%C3%BC'],
    ['"<>\\^`{|}', '%22%3C%3E%5C%5E%60%7B%7C%7D'],
    ['.', '%2E'],
    ['..', '%2E%2E'],
    ['...', '...'],
  ])('%s → %s', (id, encoded) => {
    expect(encodePathSegment(id)).toBe(encoded);
  });

  it('chooses the family prefix and the secure segment', () => {
    expect(bootstrapPath('clients', 'plain', 'dc:a6')).toBe('/clients/bootstrap/dc:a6');
    expect(bootstrapPath('clients', 'secure', 'dc:a6')).toBe('/clients/bootstrap/secure/dc:a6');
    expect(bootstrapPath('things', 'plain', 'dc:a6')).toBe('/things/bootstrap/dc:a6');
    expect(bootstrapPath('things', 'secure', 'dc:a6')).toBe('/things/bootstrap/secure/dc:a6');
  });
});

describe('base URL', () => {
  it.each([
    ['http://bs.example.com:9013', 'http://bs.example.com:9013', ''],
    ['http://bs.example.com:9013/', 'http://bs.example.com:9013', ''],
    ['https://gw.example.com/bootstrap', 'https://gw.example.com', '/bootstrap'],
    ['https://gw.example.com/api/bootstrap//', 'https://gw.example.com', '/api/bootstrap'],
    ['HTTP://BS.example.com:80/', 'http://bs.example.com', ''],
  ])('%s', (url, origin, prefix) => {
    expect(parseBaseUrl(url)).toEqual({ origin, prefix });
  });

  it.each(['bs.example.com:9013', 'ftp://bs.example.com', 'http://user:pw@bs.example.com', 'http://bs.example.com/?x=1', 'http://bs.example.com/#f'])(
    '%s is refused with CONFIG_INVALID',
    (url) => {
      let error: unknown;
      try {
        parseBaseUrl(url);
      } catch (err) {
        error = err;
      }
      expect(error).toBeInstanceOf(AgentError);
      expect((error as AgentError).code).toBe('CONFIG_INVALID');
      expect((error as AgentError).message).not.toContain('pw');
    },
  );
});

describe('Authorization header', () => {
  it('plain: the scheme word, one space, the key', () => {
    expect(authorizationHeader('clients', 'plain', 'rpi-temp-001-bootstrap-key')).toBe('Client rpi-temp-001-bootstrap-key');
    expect(authorizationHeader('things', 'plain', 'rpi-temp-001-bootstrap-key')).toBe('Thing rpi-temp-001-bootstrap-key');
  });

  it('plain: a non-ASCII key becomes one header char per UTF-8 byte', () => {
    const header = authorizationHeader('clients', 'plain', 'ключ-🔑');
    expect(Buffer.from(header, 'latin1').equals(Buffer.concat([Buffer.from('Client '), Buffer.from('ключ-🔑', 'utf8')]))).toBe(true);
  });

  it('plain: control characters are refused without quoting the key', () => {
    try {
      authorizationHeader('clients', 'plain', 'secret-key\n');
      expect.unreachable();
    } catch (err) {
      expect((err as AgentError).code).toBe('CONFIG_INVALID');
      expect((err as AgentError).message).not.toContain('secret-key');
    }
  });
});

describe('Retry-After', () => {
  const now = Date.parse('2025-03-01T12:00:00Z');
  it.each([
    ['120', 120_000],
    [' 0 ', 0],
    ['Sat, 01 Mar 2025 12:01:30 GMT', 90_000],
    ['Sat, 01 Mar 2025 11:00:00 GMT', 0],
    [['30', '60'], 30_000],
    ['-5', undefined],
    ['1.5', undefined],
    ['soon', undefined],
    ['2025-03-01T12:05:00Z', undefined],
    [undefined, undefined],
  ] as const)('%j → %j ms', (value, expected) => {
    expect(parseRetryAfter(value as string | string[] | undefined, now)).toBe(expected);
  });
});

describe('server message from an error body', () => {
  it('takes message, or the older error field', () => {
    expect(serverMessageFromBody(Buffer.from('{"message":"entity not found"}\n'), [])).toBe('entity not found');
    expect(serverMessageFromBody(Buffer.from('{"error":"failed to perform authentication"}'), [])).toBe('failed to perform authentication');
  });

  it('ignores bodies that are not JSON objects with a text', () => {
    expect(serverMessageFromBody(Buffer.from(''), [])).toBeUndefined();
    expect(serverMessageFromBody(Buffer.from('<html>502</html>'), [])).toBeUndefined();
    expect(serverMessageFromBody(Buffer.from('{"message":42}'), [])).toBeUndefined();
  });

  it('truncates, replaces unprintable characters and blanks out our credentials', () => {
    const long = serverMessageFromBody(Buffer.from(JSON.stringify({ message: 'x'.repeat(5000) })), []);
    expect(long?.length).toBe(203);
    expect(serverMessageFromBody(Buffer.from(JSON.stringify({ message: 'bad\u0000\u001b[31mkey é' })), [])).toBe('bad??[31mkey ?');
    const echoed = serverMessageFromBody(Buffer.from(JSON.stringify({ message: 'key my-external-key is wrong' })), ['my-external-key']);
    expect(echoed).toBe('key [redacted] is wrong');
  });
});

describe('status → error code', () => {
  const failure = (status: number, extra: Partial<HttpFailure> = {}): AgentError =>
    errorForStatus({ status, target: TARGET, mode: 'plain', family: 'clients', bodyBytes: 20, ...extra });

  it.each([
    [400, 'BOOTSTRAP_BAD_REQUEST'],
    [401, 'BOOTSTRAP_UNAUTHORIZED'],
    [403, 'BOOTSTRAP_FORBIDDEN'],
    [404, 'BOOTSTRAP_NOT_FOUND'],
    [429, 'BOOTSTRAP_RATE_LIMITED'],
    [500, 'BOOTSTRAP_SERVER_ERROR'],
    [502, 'BOOTSTRAP_SERVER_ERROR'],
    [503, 'BOOTSTRAP_SERVER_ERROR'],
    [201, 'BOOTSTRAP_UNEXPECTED_STATUS'],
    [302, 'BOOTSTRAP_UNEXPECTED_STATUS'],
    [418, 'BOOTSTRAP_UNEXPECTED_STATUS'],
  ])('%i → %s, naming the target', (status, code) => {
    const err = failure(status);
    expect(err.code).toBe(code);
    expect(err.message).toContain(TARGET);
    expect(err.message).toContain(String(status));
    expect(err.details['status']).toBe(status);
  });

  it('500 with an empty body is the v0.30 disabled configuration', () => {
    expect(failure(500, { bodyBytes: 0 }).code).toBe('BOOTSTRAP_CONFIG_DISABLED');
    expect(failure(502, { bodyBytes: 0 }).code).toBe('BOOTSTRAP_SERVER_ERROR');
  });

  it('carries Retry-After and the server message', () => {
    const err = failure(429, { retryAfterMs: 30_000, serverMessage: 'slow down' });
    expect(err.retryAfterMs).toBe(30_000);
    expect(err.details['serverMessage']).toBe('slow down');
    expect(err.message).toContain('retry in 30 s');
  });

  it('403 in secure mode also suspects the encryption key', () => {
    expect(failure(403, { mode: 'secure' }).message).toContain('encryption key');
    expect(failure(403).message).not.toContain('encryption key');
  });

  it('401 and 400 point at the scheme of the configured family', () => {
    expect(failure(401, { family: 'things' }).message).toContain('"Thing"');
    expect(failure(400).message).toContain('"Client"');
  });

  it('a redirect names where it pointed', () => {
    const err = failure(301, { location: 'https://bs.example.com/clients/bootstrap/x' });
    expect(err.message).toContain('https://bs.example.com/clients/bootstrap/x');
    expect(err.message).toContain('bootstrap.url');
  });
});

describe('transport failures', () => {
  const withCode = (code: string, message = `failed ${code}`): Error => Object.assign(new Error(message), { code });

  it.each([
    [withCode('ECONNREFUSED'), 'BOOTSTRAP_NETWORK', 'ECONNREFUSED'],
    [withCode('ECONNRESET'), 'BOOTSTRAP_NETWORK', 'ECONNRESET'],
    [withCode('ENOTFOUND'), 'BOOTSTRAP_NETWORK', 'ENOTFOUND'],
    [withCode('EAI_AGAIN'), 'BOOTSTRAP_NETWORK', 'EAI_AGAIN'],
    [withCode('UND_ERR_SOCKET'), 'BOOTSTRAP_NETWORK', 'UND_ERR_SOCKET'],
    [Object.assign(withCode('UND_ERR_SOCKET'), { cause: withCode('ECONNRESET') }), 'BOOTSTRAP_NETWORK', 'ECONNRESET'],
    [new AggregateError([withCode('ECONNREFUSED'), withCode('EHOSTUNREACH')]), 'BOOTSTRAP_NETWORK', 'ECONNREFUSED'],
    [withCode('UND_ERR_CONNECT_TIMEOUT'), 'BOOTSTRAP_TIMEOUT', 'UND_ERR_CONNECT_TIMEOUT'],
    [withCode('UNABLE_TO_VERIFY_LEAF_SIGNATURE'), 'BOOTSTRAP_TLS', 'UNABLE_TO_VERIFY_LEAF_SIGNATURE'],
    [withCode('DEPTH_ZERO_SELF_SIGNED_CERT'), 'BOOTSTRAP_TLS', 'DEPTH_ZERO_SELF_SIGNED_CERT'],
    [withCode('ERR_TLS_CERT_ALTNAME_INVALID'), 'BOOTSTRAP_TLS', 'ERR_TLS_CERT_ALTNAME_INVALID'],
    [withCode('ERR_SSL_WRONG_VERSION_NUMBER'), 'BOOTSTRAP_TLS', 'ERR_SSL_WRONG_VERSION_NUMBER'],
    [withCode('CERT_HAS_EXPIRED'), 'BOOTSTRAP_TLS_CLOCK', 'CERT_HAS_EXPIRED'],
    [Object.assign(new Error('wrapped'), { cause: withCode('CERT_NOT_YET_VALID') }), 'BOOTSTRAP_TLS_CLOCK', 'CERT_NOT_YET_VALID'],
    [new Error('no code at all'), 'BOOTSTRAP_NETWORK', undefined],
  ])('%s → %s', (error, code, osCode) => {
    const err = classifyTransportError(error, TARGET);
    expect(err.code).toBe(code);
    expect(err.details['osCode']).toBe(osCode);
    expect(err.message).toContain(TARGET);
  });

  it('a request the HTTP client refused to build is an internal error, not a network one', () => {
    expect(classifyTransportError(withCode('UND_ERR_INVALID_ARG'), TARGET).code).toBe('INTERNAL');
  });

  it('collects codes through causes and aggregate members without looping', () => {
    const loop: Error & { cause?: unknown } = withCode('A');
    loop.cause = Object.assign(new AggregateError([withCode('B'), loop]), { code: 'C' });
    expect(errorCodesOf(loop)).toEqual(['A', 'C', 'B']);
  });
});
