import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { Agent } from 'undici';
import { beforeAll, describe, expect, it } from 'vitest';
import { BootstrapClient, type BootstrapClientOptions } from '../../agent/bootstrap/client.js';
import { encryptCfb, openSecureToken } from '../../agent/bootstrap/crypto.js';
import { AgentError, type ErrorCode } from '../../agent/errors/agent-error.js';
import { tempWorkDir, useTeardown } from '../helpers/agent-harness.js';
import { aesKeyByName, loadVectors, responseVectorById, type ResponseVector } from '../helpers/vectors.js';

const vectors = loadVectors();
const aesKey = (name: string): Buffer => aesKeyByName(vectors, name);
const K32 = aesKey('K32');
const K16 = aesKey('K16');

const EXTERNAL_ID = 'dc:a6:32:01:02:03';
const EXTERNAL_KEY = 'rpi-temp-001-bootstrap-key';
const CLIENT_SECRET = '30c775d7-3504-42c6-976c-52c02474bf2f';

const vector = (id: string): ResponseVector => responseVectorById(vectors, id);

// ---------------------------------------------------------------------------------------------
// Harness: real servers on 127.0.0.1:0, every one closed after its test.

const t = useTeardown();

interface Seen {
  /** The request line as the server parsed it (req.url is the raw request-target). */
  requestLine: string;
  /** Authorization exactly as the bytes on the wire (Node hands header values over as latin1). */
  authorization?: Buffer;
}

interface TestServer {
  baseUrl: string;
  port: number;
  seen: Seen[];
  /** Closes it now (the teardown closes it anyway). */
  close(): Promise<void>;
}

type Handler = (req: IncomingMessage, res: ServerResponse) => void;

async function serve(handler: Handler, tls?: { key: Buffer; cert: Buffer }): Promise<TestServer> {
  const seen: Seen[] = [];
  const onRequest: Handler = (req, res) => {
    const index = req.rawHeaders.findIndex((name, i) => i % 2 === 0 && name.toLowerCase() === 'authorization');
    const raw = index >= 0 ? req.rawHeaders[index + 1] : undefined;
    seen.push({
      requestLine: `${req.method} ${req.url} HTTP/${req.httpVersion}`,
      ...(raw === undefined ? {} : { authorization: Buffer.from(raw, 'latin1') }),
    });
    handler(req, res);
  };
  const server = tls ? https.createServer(tls, onRequest) : http.createServer(onRequest);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const close = (): Promise<void> =>
    new Promise<void>((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    });
  t.add(close);
  const { port } = server.address() as AddressInfo;
  return { baseUrl: `${tls ? 'https' : 'http'}://127.0.0.1:${port}`, port, seen, close };
}

function newAgent(options: ConstructorParameters<typeof Agent>[0] = {}): Agent {
  const agent = new Agent(options);
  t.add(() => agent.destroy());
  return agent;
}

function client(baseUrl: string, overrides: Partial<BootstrapClientOptions> = {}): BootstrapClient {
  return new BootstrapClient({
    baseUrl,
    mode: 'plain',
    family: 'clients',
    timeoutMs: 5000,
    maxResponseBytes: 64 * 1024,
    dispatcher: newAgent(),
    ...overrides,
  });
}

function sendJson(res: ServerResponse, status: number, body: string, headers: Record<string, string> = {}): void {
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), ...headers });
  res.end(body);
}

function sendBinary(res: ServerResponse, body: Buffer): void {
  res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': body.length });
  res.end(body);
}

/** Everything that must never appear in an error: keys, secrets and whatever credential was sent. */
function secretsFor(server?: TestServer): string[] {
  const fixed = [EXTERNAL_KEY, CLIENT_SECRET, ...vectors.keys.flatMap((k) => [k.env_value, k.aes_key_hex])];
  const sent = (server?.seen ?? []).flatMap((s) => {
    const header = s.authorization?.toString('utf8');
    return header ? [header, header.slice(header.indexOf(' ') + 1)] : [];
  });
  return [...fixed, ...sent];
}

async function failure(promise: Promise<unknown>, code: ErrorCode, server?: TestServer): Promise<AgentError> {
  const outcome = await promise.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(outcome, 'the request should have failed').toBeInstanceOf(AgentError);
  const err = outcome as AgentError;
  expect(err.code, err.message).toBe(code);
  expect(err.message).toMatch(/\/(clients|things)\/bootstrap\//); // names the request path
  const logged = `${err.message}\n${JSON.stringify(err.toLog())}`;
  for (const secret of secretsFor(server)) expect(logged).not.toContain(secret);
  return err;
}

// ---------------------------------------------------------------------------------------------

describe('plain bootstrap', () => {
  it('sends the raw external ID and the exact Authorization header, and maps the v0.20 body', async () => {
    const body = vector('resp-K32-v020-channels').plain_endpoint_body;
    const server = await serve((_req, res) => sendJson(res, 200, body));
    const bootstrap = client(server.baseUrl);

    const config = await bootstrap.fetchConfig(EXTERNAL_ID, EXTERNAL_KEY, { requireDomain: false });

    expect(server.seen).toHaveLength(1);
    expect(server.seen[0]?.requestLine).toBe('GET /clients/bootstrap/dc:a6:32:01:02:03 HTTP/1.1');
    expect(server.seen[0]?.authorization?.toString('latin1')).toBe('Client rpi-temp-001-bootstrap-key');
    const json = JSON.parse(body) as { client_id: string; client_secret: string; channels: unknown[]; content: string };
    expect(config.mqtt).toEqual({ url: 'tcp://localhost:1883', username: json.client_id, password: json.client_secret });
    expect(config.channels).toEqual(json.channels);
    expect(config.content).toBe(json.content);
  });

  it('returns the parsed JSON of every response vector from fetchRaw', async () => {
    for (const v of vectors.response_vectors) {
      const server = await serve((_req, res) => sendJson(res, 200, v.plain_endpoint_body));
      expect(await client(server.baseUrl).fetchRaw(EXTERNAL_ID, EXTERNAL_KEY)).toEqual(JSON.parse(v.plain_endpoint_body));
    }
  });

  it('accepts the base URL with or without a trailing slash and with a path prefix', async () => {
    const body = vector('resp-K32-v020-channels').plain_endpoint_body;
    const server = await serve((_req, res) => sendJson(res, 200, body));
    for (const suffix of ['', '/', '/bs', '/bs/', '/api/v1/bootstrap//']) {
      await client(`${server.baseUrl}${suffix}`).fetchRaw(EXTERNAL_ID, EXTERNAL_KEY);
    }
    expect(server.seen.map((s) => s.requestLine)).toEqual([
      'GET /clients/bootstrap/dc:a6:32:01:02:03 HTTP/1.1',
      'GET /clients/bootstrap/dc:a6:32:01:02:03 HTTP/1.1',
      'GET /bs/clients/bootstrap/dc:a6:32:01:02:03 HTTP/1.1',
      'GET /bs/clients/bootstrap/dc:a6:32:01:02:03 HTTP/1.1',
      'GET /api/v1/bootstrap/clients/bootstrap/dc:a6:32:01:02:03 HTTP/1.1',
    ]);
  });

  it('percent-encodes only what a path segment must', async () => {
    const server = await serve((_req, res) => sendJson(res, 200, vector('resp-K32-v020-channels').plain_endpoint_body));
    await client(server.baseUrl).fetchRaw('rpi 01/α?#%:x@y', EXTERNAL_KEY);
    await client(server.baseUrl).fetchRaw('..', EXTERNAL_KEY);
    expect(server.seen.map((s) => s.requestLine)).toEqual([
      'GET /clients/bootstrap/rpi%2001%2F%CE%B1%3F%23%25:x@y HTTP/1.1',
      'GET /clients/bootstrap/%2E%2E HTTP/1.1',
    ]);
  });

  it('uses /things/bootstrap and the "Thing " scheme for the legacy family', async () => {
    const server = await serve((_req, res) => sendJson(res, 200, vector('resp-K32-v014').plain_endpoint_body));
    const config = await client(server.baseUrl, { family: 'things' }).fetchConfig(EXTERNAL_ID, EXTERNAL_KEY, {
      mqttUrl: 'mqtt://broker.example.com',
      requireDomain: false,
    });
    expect(server.seen[0]?.requestLine).toBe('GET /things/bootstrap/dc:a6:32:01:02:03 HTTP/1.1');
    expect(server.seen[0]?.authorization?.toString('latin1')).toBe(`Thing ${EXTERNAL_KEY}`);
    expect(config.family).toBe('things');
  });

  it('sends a non-ASCII external key as its raw UTF-8 bytes', async () => {
    const unicode = vectors.request_vectors.find((r) => r.id === 'req-K32-unicode')?.external_key as string;
    const server = await serve((_req, res) => sendJson(res, 200, vector('resp-K32-v020-channels').plain_endpoint_body));
    await client(server.baseUrl).fetchRaw(EXTERNAL_ID, unicode);
    expect(server.seen[0]?.authorization?.equals(Buffer.concat([Buffer.from('Client '), Buffer.from(unicode, 'utf8')]))).toBe(true);
  });

  it('refuses an empty external ID or key before sending anything', async () => {
    const server = await serve((_req, res) => sendJson(res, 200, '{}'));
    const bootstrap = client(server.baseUrl);
    await expect(bootstrap.fetchRaw('', EXTERNAL_KEY)).rejects.toMatchObject({ code: 'CONFIG_INVALID' });
    await expect(bootstrap.fetchRaw(EXTERNAL_ID, '')).rejects.toMatchObject({ code: 'EXTERNAL_KEY_EMPTY' });
    expect(server.seen).toHaveLength(0);
  });
});

describe('secure bootstrap', () => {
  /** A server that behaves like upstream: opens the token with its key, answers with the vector body. */
  async function secureServer(serverKey: Buffer, body: Buffer): Promise<TestServer & { opened: (string | undefined)[] }> {
    const opened: (string | undefined)[] = [];
    const server = await serve((req, res) => {
      const header = req.headers.authorization ?? '';
      const token = header.replace(/^(Client|Thing) /, '');
      const key = openSecureToken(serverKey, token);
      opened.push(key);
      if (key !== EXTERNAL_KEY) return sendJson(res, 403, '{"message":"failed to perform authentication over the entity"}\n');
      sendBinary(res, body);
    });
    return Object.assign(server, { opened });
  }

  it.each(vectors.response_vectors)('$id: token opens to the key on the server, binary body decrypts', async (v) => {
    const key = aesKey(v.key);
    const family = v.key === 'MF013' ? 'things' : 'clients';
    const server = await secureServer(key, Buffer.from(v.secure_body_hex, 'hex'));

    const json = await client(server.baseUrl, { mode: 'secure', family, encryptKey: key }).fetchRaw(EXTERNAL_ID, EXTERNAL_KEY);

    expect(json).toEqual(JSON.parse(v.secure_plaintext_json));
    expect(server.opened).toEqual([EXTERNAL_KEY]);
    expect(server.seen[0]?.requestLine).toBe(`GET /${family}/bootstrap/secure/dc:a6:32:01:02:03 HTTP/1.1`);
    expect(server.seen[0]?.authorization?.toString('latin1')).toMatch(
      new RegExp(`^${family === 'things' ? 'Thing' : 'Client'} [0-9a-f]{${2 * (16 + EXTERNAL_KEY.length)}}$`),
    );
  });

  it('maps a decrypted v0.30 response end to end', async () => {
    const v = vector('resp-K16-v030-full');
    const server = await secureServer(K16, Buffer.from(v.secure_body_hex, 'hex'));
    const config = await client(server.baseUrl, { mode: 'secure', encryptKey: K16 }).fetchConfig(EXTERNAL_ID, EXTERNAL_KEY, { requireDomain: true });
    expect(config.family).toBe('profiles');
    expect(config.mqtt.url).toBe('ssl://messaging.example.com:8883');
    expect(config.mqtt.password).toBe(CLIENT_SECRET);
    expect(config.domainId).toBe('e9692c28-b730-4797-8a15-2e25c08f9641');
  });

  it('uses a fresh random IV for every request', async () => {
    const server = await secureServer(K32, Buffer.from(vector('resp-K32-v020-channels').secure_body_hex, 'hex'));
    const bootstrap = client(server.baseUrl, { mode: 'secure', encryptKey: K32 });
    await bootstrap.fetchRaw(EXTERNAL_ID, EXTERNAL_KEY);
    await bootstrap.fetchRaw(EXTERNAL_ID, EXTERNAL_KEY);
    const tokens = server.seen.map((s) => s.authorization?.toString('latin1').slice('Client '.length) ?? '');
    expect(tokens[0]?.slice(0, 32)).not.toBe(tokens[1]?.slice(0, 32));
    expect(tokens[0]?.slice(0, 32)).not.toBe(vectors.fixed_ivs.request);
    expect(server.opened).toEqual([EXTERNAL_KEY, EXTERNAL_KEY]);
  });

  it('a server with another key answers 403 in plaintext JSON, which is read, not decrypted', async () => {
    const server = await secureServer(K16, Buffer.from(vector('resp-K32-v020-channels').secure_body_hex, 'hex'));
    const err = await failure(
      client(server.baseUrl, { mode: 'secure', encryptKey: K32 }).fetchRaw(EXTERNAL_ID, EXTERNAL_KEY),
      'BOOTSTRAP_FORBIDDEN',
      server,
    );
    expect(err.details['serverMessage']).toBe('failed to perform authentication over the entity');
    expect(err.message).toContain('encryption key');
  });

  it('a 200 body encrypted with another key fails as undecryptable with a key hint', async () => {
    const body = Buffer.from(vector('resp-K32-v030-full').secure_body_hex, 'hex');
    const server = await serve((_req, res) => sendBinary(res, body));
    const wrongKey = Buffer.from('MG_BS_KEY_24byte', 'utf8'); // the negative vector neg-resp-wrong-key
    const err = await failure(
      client(server.baseUrl, { mode: 'secure', encryptKey: wrongKey }).fetchRaw(EXTERNAL_ID, EXTERNAL_KEY),
      'BOOTSTRAP_RESPONSE_UNDECRYPTABLE',
      server,
    );
    expect(err.message).toContain("encryption key probably differs from the server's");
  });

  it.each([
    ['10 bytes (neg-resp-truncated)', Buffer.from(vectors.negative_vectors.find((n) => n.id === 'neg-resp-truncated')?.input_hex ?? '', 'hex')],
    ['16 bytes, IV only', Buffer.alloc(16, 7)],
    ['empty', Buffer.alloc(0)],
  ])('a secure body of %s is refused', async (_label, body) => {
    const server = await serve((_req, res) => sendBinary(res, body));
    const err = await failure(
      client(server.baseUrl, { mode: 'secure', encryptKey: K32 }).fetchRaw(EXTERNAL_ID, EXTERNAL_KEY),
      'BOOTSTRAP_RESPONSE_UNDECRYPTABLE',
      server,
    );
    expect(err.details['bodyBytes']).toBe(body.length);
  });

  it('decrypts a body labelled application/json too (v0.14 labelled binary that way)', async () => {
    const v = vector('resp-K32-v014');
    const server = await serve((_req, res) => {
      const body = Buffer.from(v.secure_body_hex, 'hex');
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': body.length });
      res.end(body);
    });
    const json = await client(server.baseUrl, { mode: 'secure', family: 'things', encryptKey: K32 }).fetchRaw(EXTERNAL_ID, EXTERNAL_KEY);
    expect(json).toEqual(JSON.parse(v.secure_plaintext_json));
  });

  it('an encrypted body that decrypts to JSON of the wrong shape is invalid, not accepted', async () => {
    const body = encryptCfb(K32, Buffer.from('{"client_id":"x","client_secret":7,"channels":null}'));
    const server = await serve((_req, res) => sendBinary(res, body));
    await failure(
      client(server.baseUrl, { mode: 'secure', encryptKey: K32 }).fetchConfig(EXTERNAL_ID, EXTERNAL_KEY, { mqttUrl: 'mqtt://b.example.com', requireDomain: false }),
      'BOOTSTRAP_RESPONSE_INVALID',
      server,
    );
  });

  it('500 with an empty body from the secure endpoint is a disabled configuration', async () => {
    const server = await serve((_req, res) => {
      res.writeHead(500, { 'content-length': 0 });
      res.end();
    });
    await failure(
      client(server.baseUrl, { mode: 'secure', encryptKey: K32 }).fetchRaw(EXTERNAL_ID, EXTERNAL_KEY),
      'BOOTSTRAP_CONFIG_DISABLED',
      server,
    );
  });
});

describe('HTTP status codes', () => {
  it.each([
    [400, '{"message":"malformed entity specification"}', 'BOOTSTRAP_BAD_REQUEST'],
    [401, '{"message":"missing or invalid bearer user authorization"}', 'BOOTSTRAP_UNAUTHORIZED'],
    [403, '{"message":"failed to perform authentication over the entity"}', 'BOOTSTRAP_FORBIDDEN'],
    [404, '{"message":"entity not found"}', 'BOOTSTRAP_NOT_FOUND'],
    [429, '{"message":"too many requests"}', 'BOOTSTRAP_RATE_LIMITED'],
    [500, '', 'BOOTSTRAP_CONFIG_DISABLED'],
    [500, '{"error":"internal server error"}', 'BOOTSTRAP_SERVER_ERROR'],
    [502, '<html><body>Bad Gateway</body></html>', 'BOOTSTRAP_SERVER_ERROR'],
    [503, '{"message":"unavailable"}', 'BOOTSTRAP_SERVER_ERROR'],
    [418, '{}', 'BOOTSTRAP_UNEXPECTED_STATUS'],
    [204, '', 'BOOTSTRAP_UNEXPECTED_STATUS'],
    [301, '', 'BOOTSTRAP_UNEXPECTED_STATUS'],
  ] as const)('%i %s → %s', async (status, body, code) => {
    const server = await serve((_req, res) => {
      if (status === 204) {
        res.writeHead(204);
        res.end();
        return;
      }
      sendJson(res, status, body, status === 301 ? { location: 'https://elsewhere.example.com/clients/bootstrap/x' } : {});
    });
    const err = await failure(client(server.baseUrl).fetchRaw(EXTERNAL_ID, EXTERNAL_KEY), code, server);
    expect(err.details['status']).toBe(status);
    expect(err.message).toContain(`${server.baseUrl}/clients/bootstrap/dc:a6:32:01:02:03`);
    const parsed = body.startsWith('{') ? (JSON.parse(body) as { message?: string; error?: string }) : {};
    expect(err.details['serverMessage']).toBe(parsed.message ?? parsed.error);
    if (status === 301) expect(err.message).toContain('https://elsewhere.example.com/clients/bootstrap/x');
  });

  it('429 with Retry-After in seconds', async () => {
    const server = await serve((_req, res) => sendJson(res, 429, '{}', { 'retry-after': '17' }));
    const err = await failure(client(server.baseUrl).fetchRaw(EXTERNAL_ID, EXTERNAL_KEY), 'BOOTSTRAP_RATE_LIMITED', server);
    expect(err.retryAfterMs).toBe(17_000);
  });

  it('503 with Retry-After as an HTTP date', async () => {
    const at = new Date(Math.ceil(Date.now() / 1000) * 1000 + 120_000);
    const server = await serve((_req, res) => sendJson(res, 503, '{}', { 'retry-after': at.toUTCString() }));
    const before = Date.now();
    const err = await failure(client(server.baseUrl).fetchRaw(EXTERNAL_ID, EXTERNAL_KEY), 'BOOTSTRAP_SERVER_ERROR', server);
    const after = Date.now();
    expect(err.retryAfterMs).toBeGreaterThanOrEqual(at.getTime() - after);
    expect(err.retryAfterMs).toBeLessThanOrEqual(at.getTime() - before);
  });

  it('Retry-After on other statuses is not treated as a server request to wait', async () => {
    const server = await serve((_req, res) => sendJson(res, 403, '{}', { 'retry-after': '17' }));
    const err = await failure(client(server.baseUrl).fetchRaw(EXTERNAL_ID, EXTERNAL_KEY), 'BOOTSTRAP_FORBIDDEN', server);
    expect(err.retryAfterMs).toBeUndefined();
  });

  it('a server message echoing the external key is redacted, a long one truncated', async () => {
    const server = await serve((_req, res) =>
      sendJson(res, 403, JSON.stringify({ message: `key ${EXTERNAL_KEY} rejected ${'x'.repeat(1000)}` })),
    );
    const err = await failure(client(server.baseUrl).fetchRaw(EXTERNAL_ID, EXTERNAL_KEY), 'BOOTSTRAP_FORBIDDEN', server);
    expect(String(err.details['serverMessage']).startsWith('key [redacted] rejected xxx')).toBe(true);
    expect(String(err.details['serverMessage']).length).toBeLessThanOrEqual(203);
  });

  it('an endless error body is not drained: the client reads a little and hangs up', async () => {
    let closed = false;
    const server = await serve((_req, res) => {
      res.writeHead(404, { 'content-type': 'application/json' });
      const chunk = Buffer.alloc(16 * 1024, 0x20);
      const pump = (): void => {
        while (!res.destroyed && res.write(chunk));
        if (!res.destroyed) res.once('drain', pump);
      };
      res.on('close', () => {
        closed = true;
        res.removeAllListeners('drain');
      });
      pump();
    });
    const err = await failure(client(server.baseUrl).fetchRaw(EXTERNAL_ID, EXTERNAL_KEY), 'BOOTSTRAP_NOT_FOUND', server);
    expect(err.details['serverMessage']).toBeUndefined();
    await expect.poll(() => closed).toBe(true);
  });
});

describe('deadline', () => {
  it('a server that never sends headers times out', async () => {
    const server = await serve(() => undefined);
    const err = await failure(client(server.baseUrl, { timeoutMs: 300 }).fetchRaw(EXTERNAL_ID, EXTERNAL_KEY), 'BOOTSTRAP_TIMEOUT', server);
    expect(err.details['stage']).toBe('connect');
    expect(err.details['timeoutMs']).toBe(300);
  });

  it('a server that sends headers and then trickles the body still times out', async () => {
    let bytesSent = 0;
    const server = await serve((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.write('{"client_id":');
      const trickle = setInterval(() => {
        if (res.destroyed) return clearInterval(trickle);
        res.write(' ');
        bytesSent += 1;
      }, 20);
      res.on('close', () => clearInterval(trickle));
    });
    // Each byte arrives well within undici's per-chunk body timeout: only the overall deadline ends this.
    const err = await failure(client(server.baseUrl, { timeoutMs: 400 }).fetchRaw(EXTERNAL_ID, EXTERNAL_KEY), 'BOOTSTRAP_TIMEOUT', server);
    expect(err.details['stage']).toBe('body');
    expect(bytesSent).toBeGreaterThan(0);
  });

  it("the caller's abort rejects with the caller's reason, not a timeout", async () => {
    const controller = new AbortController();
    const server = await serve(() => controller.abort(new Error('agent stopping')));
    const outcome = await client(server.baseUrl)
      .fetchRaw(EXTERNAL_ID, EXTERNAL_KEY, { signal: controller.signal })
      .then(
        () => 'resolved',
        (err: unknown) => err,
      );
    expect(outcome).toBeInstanceOf(Error);
    expect(outcome).not.toBeInstanceOf(AgentError);
    expect((outcome as Error).message).toBe('agent stopping');
  });

  it('an already aborted signal sends nothing', async () => {
    const server = await serve((_req, res) => sendJson(res, 200, '{}'));
    const controller = new AbortController();
    controller.abort(new Error('stopped before start'));
    await expect(client(server.baseUrl).fetchRaw(EXTERNAL_ID, EXTERNAL_KEY, { signal: controller.signal })).rejects.toThrow('stopped before start');
    expect(server.seen).toHaveLength(0);
  });
});

describe('size cap', () => {
  it('refuses a body whose Content-Length announces more than the cap', async () => {
    const server = await serve((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': 10_000_000 });
      res.write('{"client_id":"');
    });
    const err = await failure(
      client(server.baseUrl, { maxResponseBytes: 4096 }).fetchRaw(EXTERNAL_ID, EXTERNAL_KEY),
      'BOOTSTRAP_RESPONSE_TOO_LARGE',
      server,
    );
    expect(err.details['contentLength']).toBe(10_000_000);
    expect(err.details['maxResponseBytes']).toBe(4096);
  });

  it('stops reading an endless chunked body once it passes the cap', async () => {
    let sent = 0;
    let closed = false;
    const server = await serve((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      const chunk = Buffer.alloc(8 * 1024, 0x20);
      const pump = (): void => {
        while (!res.destroyed && res.write(chunk)) sent += chunk.length;
        if (!res.destroyed) res.once('drain', pump);
      };
      res.on('close', () => {
        closed = true;
        res.removeAllListeners('drain');
      });
      pump();
    });
    const err = await failure(
      client(server.baseUrl, { maxResponseBytes: 64 * 1024 }).fetchRaw(EXTERNAL_ID, EXTERNAL_KEY),
      'BOOTSTRAP_RESPONSE_TOO_LARGE',
      server,
    );
    expect(err.details['contentLength']).toBeUndefined();
    await expect.poll(() => closed).toBe(true); // the client hung up instead of draining the stream
    expect(sent).toBeGreaterThan(64 * 1024);
  });

  it('accepts a body of exactly the cap', async () => {
    const json = vector('resp-K32-v020-channels').plain_endpoint_body;
    const cap = 2048;
    const body = json + ' '.repeat(cap - Buffer.byteLength(json));
    const server = await serve((_req, res) => sendJson(res, 200, body));
    expect(await client(server.baseUrl, { maxResponseBytes: cap }).fetchRaw(EXTERNAL_ID, EXTERNAL_KEY)).toEqual(JSON.parse(json));
    const over = await serve((_req, res) => sendJson(res, 200, `${body} `));
    await failure(client(over.baseUrl, { maxResponseBytes: cap }).fetchRaw(EXTERNAL_ID, EXTERNAL_KEY), 'BOOTSTRAP_RESPONSE_TOO_LARGE', over);
  });
});

describe('bodies that are not a bootstrap response', () => {
  const full = vector('resp-K32-v020-channels').plain_endpoint_body;

  it.each([
    ['HTML', '<!DOCTYPE html><html><body>Welcome to nginx!</body></html>', 'HTML'],
    ['truncated JSON holding the secret', full.slice(0, full.indexOf(CLIENT_SECRET) + CLIENT_SECRET.length + 3), 'not valid JSON'],
    ['garbage', '\u0000\u0001garbage\u00ff', 'not valid JSON'],
    ['empty', '', 'empty'],
    ['a JSON array', '[1,2,3]', 'not an object'],
    ['JSON null', 'null', 'not an object'],
  ])('%s → BOOTSTRAP_RESPONSE_INVALID', async (_label, body, phrase) => {
    const server = await serve((_req, res) => sendJson(res, 200, body, { 'content-type': body.startsWith('<') ? 'text/html' : 'application/json' }));
    const err = await failure(client(server.baseUrl).fetchRaw(EXTERNAL_ID, EXTERNAL_KEY), 'BOOTSTRAP_RESPONSE_INVALID', server);
    expect(err.message).toContain(phrase);
  });

  it('invalid UTF-8 in a plain body is refused', async () => {
    const server = await serve((_req, res) => {
      const body = Buffer.concat([Buffer.from('{"client_id":"'), Buffer.from([0xc3, 0x28]), Buffer.from('"}')]);
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': body.length });
      res.end(body);
    });
    await failure(client(server.baseUrl).fetchRaw(EXTERNAL_ID, EXTERNAL_KEY), 'BOOTSTRAP_RESPONSE_INVALID', server);
  });

  it('fetchConfig: a schema violation names the field and the request', async () => {
    const server = await serve((_req, res) => sendJson(res, 200, JSON.stringify({ client_id: 'c', client_secret: CLIENT_SECRET, channels: [{ name: 'x' }] })));
    const err = await failure(
      client(server.baseUrl).fetchConfig(EXTERNAL_ID, EXTERNAL_KEY, { mqttUrl: 'mqtt://b.example.com', requireDomain: false }),
      'BOOTSTRAP_RESPONSE_INVALID',
      server,
    );
    expect(err.message).toContain('channels[0].id: is missing');
    expect(err.details['target']).toBe(`GET ${server.baseUrl}/clients/bootstrap/dc:a6:32:01:02:03`);
  });

  it('fetchConfig: missing values name what is missing and the request', async () => {
    const server = await serve((_req, res) => sendJson(res, 200, vector('resp-K32-v020-nochannels').plain_endpoint_body));
    const err = await failure(client(server.baseUrl).fetchConfig(EXTERNAL_ID, EXTERNAL_KEY, { requireDomain: true }), 'BOOTSTRAP_CONFIG_INCOMPLETE', server);
    expect(err.message).toContain('mqtt.url is not set in the agent configuration');
    expect(err.message).toContain('mqtt.domainId is not set in the agent configuration');
  });
});

describe('network failures', () => {
  it('connection refused', async () => {
    const server = await serve(() => undefined);
    await server.close(); // closed again: the port is now known to refuse
    const err = await failure(client(server.baseUrl).fetchRaw(EXTERNAL_ID, EXTERNAL_KEY), 'BOOTSTRAP_NETWORK');
    expect(err.details['osCode']).toBe('ECONNREFUSED');
  });

  it('connection reset before any response', async () => {
    const server = await serve((req) => req.socket.destroy());
    const err = await failure(client(server.baseUrl).fetchRaw(EXTERNAL_ID, EXTERNAL_KEY), 'BOOTSTRAP_NETWORK', server);
    expect(['ECONNRESET', 'UND_ERR_SOCKET']).toContain(err.details['osCode']);
  });

  it('socket closed in the middle of the body', async () => {
    const server = await serve((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': 1000 });
      res.write('{"client_id":"', () => res.socket?.destroy());
    });
    const err = await failure(client(server.baseUrl).fetchRaw(EXTERNAL_ID, EXTERNAL_KEY), 'BOOTSTRAP_NETWORK', server);
    expect(['ECONNRESET', 'UND_ERR_SOCKET', 'UND_ERR_RES_CONTENT_LENGTH_MISMATCH']).toContain(err.details['osCode']);
  });

  it.each(['ENOTFOUND', 'EAI_AGAIN'])('DNS failure %s (resolver stubbed, nothing leaves the host)', async (code) => {
    const lookup = (hostname: string, _options: unknown, callback: (err: Error) => void): void =>
      callback(Object.assign(new Error(`getaddrinfo ${code} ${hostname}`), { code }));
    const bootstrap = client('http://bootstrap.example.test:9013', { dispatcher: newAgent({ connect: { lookup } as never }) });
    const err = await failure(bootstrap.fetchRaw(EXTERNAL_ID, EXTERNAL_KEY), 'BOOTSTRAP_NETWORK');
    expect(err.details['osCode']).toBe(code);
    expect(err.message).toContain('http://bootstrap.example.test:9013/clients/bootstrap/dc:a6:32:01:02:03');
  });
});

describe('https', () => {
  const suite = useTeardown('all');
  let pkiDir = '';
  const pem = (name: string): Buffer => readFileSync(join(pkiDir, name));
  const openssl = (...args: string[]): void => {
    execFileSync('openssl', args, { cwd: pkiDir, stdio: 'pipe' });
  };

  beforeAll(() => {
    pkiDir = tempWorkDir(suite, 'mgda-pki-');
    const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
    openssl('req', '-x509', ...ec, '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '3', '-subj', '/CN=mgda test CA');
    openssl('req', ...ec, '-keyout', 'server.key', '-out', 'server.csr', '-subj', '/CN=127.0.0.1');
    mkdirSync(join(pkiDir, 'issued'));
    writeFileSync(join(pkiDir, 'index.txt'), '');
    writeFileSync(join(pkiDir, 'serial'), '1000\n');
    writeFileSync(
      join(pkiDir, 'ca.cnf'),
      [
        '[ca]',
        'default_ca = test',
        '[test]',
        'database = index.txt',
        'new_certs_dir = issued',
        'serial = serial',
        'default_md = sha256',
        'policy = any',
        'unique_subject = no',
        '[any]',
        'commonName = supplied',
        '[loopback]',
        'subjectAltName = IP:127.0.0.1',
        'basicConstraints = CA:FALSE',
        '[otherhost]',
        'subjectAltName = DNS:bootstrap.example.com',
        'basicConstraints = CA:FALSE',
        '',
      ].join('\n'),
    );
    // Validity windows are set explicitly so the clock cases need no waiting.
    const issue = (out: string, extensions: string, start: string, end: string): void =>
      openssl('ca', '-batch', '-config', 'ca.cnf', '-cert', 'ca.pem', '-keyfile', 'ca.key', '-in', 'server.csr', '-out', out, '-extensions', extensions, '-startdate', start, '-enddate', end, '-notext');
    const stamp = (offsetDays: number): string => `${new Date(Date.now() + offsetDays * 86_400_000).toISOString().replace(/[-:T]/g, '').slice(0, 14)}Z`;
    issue('good.pem', 'loopback', stamp(-1), stamp(2));
    issue('expired.pem', 'loopback', '20200101000000Z', '20200102000000Z');
    issue('future.pem', 'loopback', '20990101000000Z', '20990102000000Z');
    issue('otherhost.pem', 'otherhost', stamp(-1), stamp(2));
  });

  const httpsServer = (cert: string): Promise<TestServer> =>
    serve((_req, res) => sendBinary(res, Buffer.from(vector('resp-K32-v020-channels').secure_body_hex, 'hex')), {
      key: pem('server.key'),
      cert: pem(cert),
    });

  it('works against a certificate trusted through the CA given to the dispatcher', async () => {
    const server = await httpsServer('good.pem');
    const bootstrap = client(server.baseUrl, { mode: 'secure', encryptKey: K32, dispatcher: newAgent({ connect: { ca: pem('ca.pem') } }) });
    const config = await bootstrap.fetchConfig(EXTERNAL_ID, EXTERNAL_KEY, { requireDomain: false });
    expect(config.mqtt.username).toBe('ffec2491-0de1-4051-9e75-ad2e2d241627');
    expect(server.seen[0]?.requestLine).toBe('GET /clients/bootstrap/secure/dc:a6:32:01:02:03 HTTP/1.1');
  });

  it('an untrusted certificate fails with BOOTSTRAP_TLS', async () => {
    const server = await httpsServer('good.pem');
    const err = await failure(client(server.baseUrl, { mode: 'secure', encryptKey: K32 }).fetchRaw(EXTERNAL_ID, EXTERNAL_KEY), 'BOOTSTRAP_TLS', server);
    expect(err.details['osCode']).toBe('UNABLE_TO_VERIFY_LEAF_SIGNATURE');
    expect(server.seen).toHaveLength(0); // nothing was sent over the unverified connection
  });

  it('a certificate for another host name fails with BOOTSTRAP_TLS', async () => {
    const server = await httpsServer('otherhost.pem');
    const bootstrap = client(server.baseUrl, { mode: 'secure', encryptKey: K32, dispatcher: newAgent({ connect: { ca: pem('ca.pem') } }) });
    const err = await failure(bootstrap.fetchRaw(EXTERNAL_ID, EXTERNAL_KEY), 'BOOTSTRAP_TLS', server);
    expect(err.details['osCode']).toBe('ERR_TLS_CERT_ALTNAME_INVALID');
  });

  it.each([
    ['expired.pem', 'CERT_HAS_EXPIRED'],
    ['future.pem', 'CERT_NOT_YET_VALID'],
  ])('%s fails with BOOTSTRAP_TLS_CLOCK (%s)', async (cert, code) => {
    const server = await httpsServer(cert);
    const bootstrap = client(server.baseUrl, { mode: 'secure', encryptKey: K32, dispatcher: newAgent({ connect: { ca: pem('ca.pem') } }) });
    const err = await failure(bootstrap.fetchRaw(EXTERNAL_ID, EXTERNAL_KEY), 'BOOTSTRAP_TLS_CLOCK', server);
    expect(err.details['osCode']).toBe(code);
    expect(err.message).toContain('clock');
  });

  it('an https URL pointing at a plain HTTP server fails with BOOTSTRAP_TLS', async () => {
    const server = await serve((_req, res) => sendJson(res, 200, '{}'));
    const err = await failure(client(server.baseUrl.replace('http:', 'https:')).fetchRaw(EXTERNAL_ID, EXTERNAL_KEY), 'BOOTSTRAP_TLS', server);
    expect(String(err.details['osCode'])).toMatch(/^ERR_SSL_/);
  });
});
