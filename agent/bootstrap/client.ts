import { getGlobalDispatcher, type Dispatcher } from 'undici';
import { AgentError } from '../errors/agent-error.js';
import { cipherName, decryptCfb } from './crypto.js';
import { startDeadline } from './deadline.js';
import type { DeviceConfig } from './model.js';
import { mapBootstrapResponse, type MappingFallbacks } from './response.js';
import {
  authorizationHeader,
  bootstrapPath,
  classifyTransportError,
  errorForStatus,
  parseBaseUrl,
  parseRetryAfter,
  serverMessageFromBody,
  type BootstrapBase,
  type BootstrapFamily,
  type BootstrapMode,
} from './wire.js';

export interface BootstrapClientOptions {
  /** bootstrap.url: with or without a trailing slash or a path prefix. */
  baseUrl: string;
  mode: BootstrapMode;
  family: BootstrapFamily;
  /** Raw AES key bytes (16/24/32); required in secure mode. */
  encryptKey?: Buffer;
  /** One deadline per request covering connect, headers and body. */
  timeoutMs: number;
  /** A 200 body larger than this is refused without being buffered. */
  maxResponseBytes: number;
  /** e.g. an undici Agent trusting bootstrap.caFile; defaults to undici's global dispatcher. */
  dispatcher?: Dispatcher;
}

export interface FetchOptions {
  /** Aborting rejects with the signal's reason (not an AgentError): the caller is stopping. */
  signal?: AbortSignal;
}

/** Error bodies only feed a short server message into details; the rest is not worth reading. */
const ERROR_BODY_LIMIT = 4096;

const utf8 = new TextDecoder('utf-8', { fatal: true });

function ignore(): void {}

/** Marks the abort reason of our own deadline, to tell it apart from the caller's abort. */
class DeadlineExpired extends Error {}

/**
 * Fetches one device's configuration from the Magistrala Bootstrap service (spec sections 2-5).
 * Holds no sockets or timers between calls: each request owns its deadline timer and closes its
 * connection when done, so there is nothing to stop.
 */
export class BootstrapClient {
  private readonly base: BootstrapBase;
  private readonly options: BootstrapClientOptions;

  constructor(options: BootstrapClientOptions) {
    this.base = parseBaseUrl(options.baseUrl);
    if (options.mode === 'secure') {
      if (!options.encryptKey) {
        throw new AgentError(
          'ENCRYPT_KEY_INVALID',
          'secure bootstrap needs the encryption key (bootstrap.encryptKeyFile or MG_AGENT_BOOTSTRAP_ENCRYPT_KEY)',
        );
      }
      cipherName(options.encryptKey); // throws ENCRYPT_KEY_INVALID naming the length, not the key
    }
    for (const field of ['timeoutMs', 'maxResponseBytes'] as const) {
      if (!Number.isSafeInteger(options[field]) || options[field] <= 0) {
        throw new AgentError('CONFIG_INVALID', `bootstrap ${field} must be a positive whole number`, { details: { field } });
      }
    }
    this.options = options;
  }

  /** The request target as error messages name it (no credentials: those travel only in the header). */
  targetFor(externalId: string): string {
    return `GET ${this.base.origin}${this.pathFor(externalId)}`;
  }

  /** Fetches and maps in one step; mapping errors keep their code and gain the request target. */
  async fetchConfig(
    externalId: string,
    externalKey: string,
    fallbacks: MappingFallbacks,
    options: FetchOptions = {},
  ): Promise<DeviceConfig> {
    const json = await this.fetchRaw(externalId, externalKey, options);
    try {
      return mapBootstrapResponse(json, fallbacks);
    } catch (err) {
      if (!(err instanceof AgentError)) throw err;
      throw new AgentError(err.code, `${err.message} (from ${this.targetFor(externalId)})`, {
        details: { ...err.details, target: this.targetFor(externalId) },
      });
    }
  }

  /** The response JSON object (decrypted in secure mode), not yet validated against a family. */
  async fetchRaw(externalId: string, externalKey: string, options: FetchOptions = {}): Promise<unknown> {
    if (externalId === '') {
      throw new AgentError('CONFIG_INVALID', 'the external ID is empty; Bootstrap needs one in the request path', {
        details: { field: 'externalId' },
      });
    }
    const { mode, family, encryptKey, timeoutMs } = this.options;
    const target = this.targetFor(externalId);
    const authorization = authorizationHeader(family, mode, externalKey, encryptKey);
    const credentials = [externalKey, authorization.slice(authorization.indexOf(' ') + 1)];

    const callerSignal = options.signal;
    callerSignal?.throwIfAborted();
    const deadline = startDeadline(callerSignal, timeoutMs, () => new DeadlineExpired());

    // Every failure below HTTP goes through here: our deadline, the caller's abort, or the network.
    const transportFailure = (err: unknown, stage: 'connect' | 'body'): unknown => {
      if (err instanceof AgentError) return err; // already decided (status, size, decoding)
      if (callerSignal?.aborted) return callerSignal.reason;
      if (deadline.signal.reason instanceof DeadlineExpired) {
        return new AgentError(
          'BOOTSTRAP_TIMEOUT',
          `bootstrap request ${target} timed out after ${timeoutMs} ms (${stage === 'body' ? 'while reading the body' : 'before the response headers arrived'})`,
          { details: { target, timeoutMs, stage } },
        );
      }
      return classifyTransportError(err, target);
    };

    try {
      let response: Dispatcher.ResponseData;
      try {
        response = await (this.options.dispatcher ?? getGlobalDispatcher()).request({
          origin: this.base.origin,
          path: this.pathFor(externalId),
          method: 'GET',
          headers: {
            authorization,
            accept: mode === 'secure' ? 'application/octet-stream, application/json' : 'application/json',
            'user-agent': 'mg-device-agent',
          },
          signal: deadline.signal,
          // Bootstrap runs rarely: no idle keep-alive socket should outlive the request.
          reset: true,
        });
      } catch (err) {
        throw transportFailure(err, 'connect');
      }

      try {
        if (response.statusCode !== 200) {
          const body = await readAtMost(response.body, ERROR_BODY_LIMIT);
          const serverMessage = serverMessageFromBody(body.bytes, credentials);
          const retryAfterMs =
            response.statusCode === 429 || response.statusCode === 503
              ? parseRetryAfter(response.headers['retry-after'], Date.now())
              : undefined;
          const location = response.headers['location'];
          throw errorForStatus({
            status: response.statusCode,
            target,
            mode,
            family,
            bodyBytes: body.bytes.length,
            ...(serverMessage === undefined ? {} : { serverMessage }),
            ...(retryAfterMs === undefined ? {} : { retryAfterMs }),
            ...(typeof location === 'string' ? { location: safeLocation(location) } : {}),
          });
        }
        const body = await this.readSuccessBody(response, target);
        return mode === 'secure' ? this.decodeSecure(body, target) : decodePlain(body, target, response.headers['content-type']);
      } catch (err) {
        throw transportFailure(err, 'body');
      } finally {
        // Releases the socket when we stopped reading early. undici reports destroying an unfinished
        // body as an 'error' event; we already have our answer, so that event is expected and ignored.
        response.body.on('error', ignore).destroy();
      }
    } finally {
      deadline.dispose();
    }
  }

  private pathFor(externalId: string): string {
    return `${this.base.prefix}${bootstrapPath(this.options.family, this.options.mode, externalId)}`;
  }

  private async readSuccessBody(response: Dispatcher.ResponseData, target: string): Promise<Buffer> {
    const limit = this.options.maxResponseBytes;
    const announced = Number(response.headers['content-length']);
    if (Number.isFinite(announced) && announced > limit) throw tooLarge(target, limit, announced);
    const body = await readAtMost(response.body, limit);
    if (body.truncated) throw tooLarge(target, limit);
    return body.bytes;
  }

  private decodeSecure(body: Buffer, target: string): unknown {
    const key = this.options.encryptKey as Buffer; // checked in the constructor
    let plaintext: Buffer;
    try {
      plaintext = decryptCfb(key, body);
    } catch (err) {
      if (err instanceof AgentError && err.code === 'BOOTSTRAP_RESPONSE_UNDECRYPTABLE') {
        throw new AgentError(
          'BOOTSTRAP_RESPONSE_UNDECRYPTABLE',
          `bootstrap response to ${target} is ${body.length} bytes, too short to be encrypted (it must be longer than the 16-byte IV)`,
          { details: { target, bodyBytes: body.length } },
        );
      }
      throw err;
    }
    // No MAC: with a wrong key decryption "succeeds" and only the JSON check can notice.
    const json = parseJson(plaintext);
    if (json === undefined) {
      throw new AgentError(
        'BOOTSTRAP_RESPONSE_UNDECRYPTABLE',
        `bootstrap response to ${target} does not decrypt to JSON: the encryption key probably differs from the server's MG_BOOTSTRAP_ENCRYPT_KEY`,
        { details: { target, bodyBytes: body.length } },
      );
    }
    return requireObject(json, target);
  }
}

function decodePlain(body: Buffer, target: string, contentType: string | string[] | undefined): unknown {
  const json = parseJson(body);
  if (json === undefined) {
    throw new AgentError('BOOTSTRAP_RESPONSE_INVALID', `bootstrap response to ${target} ${describeNonJson(body)}`, {
      details: { target, bodyBytes: body.length, contentType: typeof contentType === 'string' ? contentType : undefined },
    });
  }
  return requireObject(json, target);
}

/** Never quotes the body: a truncated 200 body may well contain the client secret. */
function describeNonJson(body: Buffer): string {
  const start = body.toString('latin1').trimStart();
  if (start === '') return 'is empty, not JSON';
  if (start.startsWith('<')) return `is HTML or XML (${body.length} bytes), not JSON: something other than the Bootstrap service answered (a proxy or web server?)`;
  return `is not valid JSON (${body.length} bytes): truncated or garbled`;
}

function parseJson(bytes: Buffer): unknown {
  try {
    return JSON.parse(utf8.decode(bytes));
  } catch {
    return undefined;
  }
}

function requireObject(json: unknown, target: string): Record<string, unknown> {
  if (typeof json === 'object' && json !== null && !Array.isArray(json)) return json as Record<string, unknown>;
  throw new AgentError('BOOTSTRAP_RESPONSE_INVALID', `bootstrap response to ${target} is JSON but not an object`, {
    details: { target, jsonType: json === null ? 'null' : Array.isArray(json) ? 'array' : typeof json },
  });
}

function tooLarge(target: string, limit: number, announced?: number): AgentError {
  return new AgentError(
    'BOOTSTRAP_RESPONSE_TOO_LARGE',
    announced === undefined
      ? `bootstrap response to ${target} exceeds bootstrap.maxResponseBytes (${limit} bytes); reading stopped there`
      : `bootstrap response to ${target} announces ${announced} bytes, more than bootstrap.maxResponseBytes (${limit})`,
    { details: { target, maxResponseBytes: limit, contentLength: announced } },
  );
}

/** Reads at most `limit` bytes; past that it stops and reports truncation, never buffering more. */
async function readAtMost(body: AsyncIterable<Buffer>, limit: number): Promise<{ bytes: Buffer; truncated: boolean }> {
  const chunks: Buffer[] = [];
  let total = 0;
  for await (const chunk of body) {
    if (total + chunk.length > limit) {
      chunks.push(chunk.subarray(0, limit - total));
      return { bytes: Buffer.concat(chunks), truncated: true };
    }
    chunks.push(chunk);
    total += chunk.length;
  }
  return { bytes: Buffer.concat(chunks), truncated: false };
}

/** A redirect target for the message, stripped of anything that could carry a credential. */
function safeLocation(location: string): string | undefined {
  if (!URL.canParse(location, 'http://placeholder.invalid')) return undefined;
  const url = new URL(location, 'http://placeholder.invalid');
  const shown = url.host === 'placeholder.invalid' ? url.pathname : `${url.origin}${url.pathname}`;
  return shown.replace(/[^\x21-\x7e]/g, '?').slice(0, 200);
}
