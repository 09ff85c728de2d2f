import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { createServer, STATUS_CODES, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import type { Logger } from '../logging/logger.js';
import { AgentError } from '../errors/agent-error.js';
import {
  BOOTSTRAP_RESPONSE_FAMILIES,
  emptyResponse,
  jsonMessage,
  jsonResponse,
  matchDeviceRoute,
  planDeviceResponse,
  type BootstrapResponseFamily,
  type DeviceRoute,
  type PlannedResponse,
} from './device-endpoint.js';
import { faultAlways, faultNext, parseFault, type Fault, type FaultKind, type FaultRule } from './faults.js';
import { goEncode, type GoJsonValue } from './go-json.js';
import { goRoutingPath } from './go-path.js';
import { bearerMatches, handleManagementRequest, isManagementPath } from './management-api.js';
import type { Registry } from './registry.js';

/**
 * A development emulator of Magistrala's Bootstrap service (v0.20 "clients" and v0.30 "profiles"
 * response families) on node:http, plus dev-only endpoints under /dev/ for tests and demos.
 * See agent/devstack/README.md for every endpoint.
 */

export type RequestEndpoint = 'plain' | 'secure' | 'management' | 'dev' | 'health' | 'other';

/** One request as the server saw it. Never holds credentials or bodies. */
export interface RequestLogEntry {
  method: string;
  /** Raw request path as sent (percent-encoding kept), without the query string. */
  path: string;
  endpoint: RequestEndpoint;
  /** null while in flight, and for requests that got no response (hang, close, client gone). */
  status: number | null;
  /** ISO time the request arrived. */
  time: string;
  durationMs: number | null;
  fault?: FaultKind;
}

export interface BootstrapServerOptions {
  host?: string;
  port?: number;
  registry: Registry;
  /** MG_BOOTSTRAP_ENCRYPT_KEY. Not validated here: like upstream, a wrong-length key makes secure requests 403. */
  encryptKey: string;
  responseFamily: BootstrapResponseFamily;
  /** Bearer token the management API accepts. */
  userToken: string;
  /** Broker URL written into rendered v0.30 content. */
  brokerUrl?: string;
  logger?: Logger;
  /** Called by POST /dev/clients/{id}/kick; the stack wires it to the broker. Returns sessions closed. */
  kick?: (clientId: string) => number;
  /** IV source for secure responses (tests pin it to reproduce upstream vectors). */
  responseIv?: () => Buffer;
  /** Oldest entries are dropped beyond this many (default 10,000). */
  maxLoggedRequests?: number;
}

export interface BootstrapServer {
  url: string;
  port: number;
  /** Chronological log of requests (newest last). */
  requests: RequestLogEntry[];
  /** Emits 'request' (RequestLogEntry) when a request completes or is abandoned. */
  events: EventEmitter;
  /** Installs (or with undefined, removes) the rule consulted for every device request. */
  setFault(rule: FaultRule | undefined): void;
  setResponseFamily(family: BootstrapResponseFamily): void;
  readonly responseFamily: BootstrapResponseFamily;
  /** Closes the listener and every open connection (hung ones too) and stops fault timers. */
  close(): Promise<void>;
}

const MAX_BODY_BYTES = 1024 * 1024;

export async function startBootstrapServer(options: BootstrapServerOptions): Promise<BootstrapServer> {
  const host = options.host ?? '127.0.0.1';
  const registry = options.registry;
  const maxLogged = options.maxLoggedRequests ?? 10_000;
  let family: BootstrapResponseFamily = checkFamily(options.responseFamily);
  let faultRule: FaultRule | undefined;
  const requests: RequestLogEntry[] = [];
  const events = new EventEmitter();
  const sockets = new Set<Socket>();
  const timers = new Set<NodeJS.Timeout>();
  let closing: Promise<void> | undefined;

  const server = createServer((req, res) => {
    handle(req, res).catch((error: unknown) => {
      options.logger?.error({ err: error instanceof Error ? error.message : String(error) }, 'dev bootstrap server: handler failed');
      if (!res.headersSent) send(res, req, jsonMessage(500, 'internal error'));
      else res.destroy();
    });
  });
  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const method = req.method ?? 'GET';
    const target = req.url ?? '/';
    const queryAt = target.indexOf('?');
    const rawPath = queryAt === -1 ? target : target.slice(0, queryAt);
    const query = new URLSearchParams(queryAt === -1 ? '' : target.slice(queryAt + 1));
    const routingPath = goRoutingPath(rawPath);
    const deviceRoute = routingPath === undefined ? undefined : matchDeviceRoute(routingPath);
    const segments = (routingPath ?? '').split('/').slice(1);
    const endpoint: RequestEndpoint =
      deviceRoute !== undefined
        ? deviceRoute.secure
          ? 'secure'
          : 'plain'
        : routingPath === '/health'
          ? 'health'
          : segments[0] === 'dev'
            ? 'dev'
            : isManagementPath(segments)
              ? 'management'
              : 'other';
    const entry = track(req, res, { method, path: rawPath, endpoint });

    if (routingPath === undefined) {
      send(res, req, textResponse(400, '400 Bad Request'));
      return;
    }
    if (deviceRoute !== undefined) {
      answerDevice(req, res, deviceRoute, rawPath, entry);
      return;
    }
    if (endpoint === 'health') {
      send(res, req, jsonResponse(200, goEncode(new Map([['status', 'pass'], ['description', 'bootstrap service (mg-device-agent dev stack)']]))));
      return;
    }
    const body = await readBody(req);
    if (body === undefined) {
      send(res, req, jsonMessage(413, 'request body too large'));
      return;
    }
    if (endpoint === 'dev') {
      send(res, req, answerDev(req, segments.slice(1), body));
      return;
    }
    if (endpoint === 'management') {
      const planned = handleManagementRequest(
        {
          method,
          segments,
          query,
          authorization: req.headers.authorization,
          contentType: req.headers['content-type'],
          body,
        },
        { registry, userToken: options.userToken },
      );
      send(res, req, planned);
      return;
    }
    // chi's default for unknown routes.
    send(res, req, textResponse(404, '404 page not found\n'));
  }

  function answerDevice(req: IncomingMessage, res: ServerResponse, route: DeviceRoute, rawPath: string, entry: RequestLogEntry): void {
    const method = req.method ?? 'GET';
    const fault = faultRule?.({ method, path: rawPath, secure: route.secure, externalId: route.externalId });
    if (fault !== undefined) entry.fault = fault.kind;
    if (fault?.kind === 'hang') return;
    if (fault?.kind === 'close') {
      req.socket.destroy();
      return;
    }
    if (fault?.kind === 'status') {
      const body = fault.body ?? goEncode(new Map([['message', (STATUS_CODES[fault.status] ?? 'fault').toLowerCase()]]));
      send(res, req, jsonResponse(fault.status, body, fault.headers ?? {}));
      return;
    }
    if (fault?.kind === 'garbage') {
      const body = fault.body === undefined ? randomBytes(64) : Buffer.from(fault.body);
      const contentType = route.secure ? 'application/octet-stream' : 'application/json';
      send(res, req, { status: 200, headers: { 'Content-Type': contentType }, body });
      return;
    }
    const planned = planDeviceResponse(
      { method, route, authorization: req.headers.authorization },
      {
        registry,
        family,
        encryptKey: options.encryptKey,
        ...(options.brokerUrl === undefined ? {} : { brokerUrl: options.brokerUrl }),
        ...(options.responseIv === undefined ? {} : { responseIv: options.responseIv }),
      },
    );
    if (fault?.kind === 'trickle') {
      trickle(res, req, planned, fault.bytesPerChunk ?? 1, fault.intervalMs ?? 100);
      return;
    }
    send(res, req, planned);
  }

  function answerDev(req: IncomingMessage, path: string[], body: Buffer): PlannedResponse {
    const loopback = isLoopback(req.socket.remoteAddress);
    if (!loopback && !bearerMatches(req.headers.authorization, options.userToken)) return jsonMessage(401, 'missing or invalid bearer user token');
    const method = req.method ?? 'GET';
    const json = (): Record<string, unknown> | undefined => parseJsonObject(body);
    const route = path.join('/');

    if (route === 'family') {
      if (method === 'GET') return jsonResponse(200, goEncode(new Map([['family', family]])));
      if (method !== 'PUT') return emptyResponse(405);
      const requested = json()?.['family'];
      if (!BOOTSTRAP_RESPONSE_FAMILIES.includes(requested as BootstrapResponseFamily)) return jsonMessage(400, 'family must be "v0.20" or "v0.30"');
      family = requested as BootstrapResponseFamily;
      return jsonResponse(200, goEncode(new Map([['family', family]])));
    }
    if (route === 'fault') {
      if (method === 'DELETE') {
        faultRule = undefined;
        return emptyResponse(204);
      }
      if (method !== 'PUT') return emptyResponse(405);
      const request = json();
      const fault = parseFault(request?.['fault']);
      const count = request?.['count'];
      if (fault === undefined) return jsonMessage(400, 'fault must be {"kind": "status"|"hang"|"close"|"garbage"|"trickle", ...}');
      if (count !== undefined && (typeof count !== 'number' || !Number.isInteger(count) || count < 1)) {
        return jsonMessage(400, 'count must be a positive integer');
      }
      faultRule = count === undefined ? faultAlways(fault) : faultNext(count, fault);
      return emptyResponse(204);
    }
    if (route === 'requests') {
      if (method === 'DELETE') {
        requests.length = 0;
        return emptyResponse(204);
      }
      if (method !== 'GET') return emptyResponse(405);
      return jsonResponse(200, JSON.stringify({ requests }) + '\n');
    }
    if (route === 'channels') {
      if (method !== 'POST') return emptyResponse(405);
      const request = json();
      const domainId = request?.['domain_id'];
      const id = request?.['id'];
      const name = request?.['name'];
      const metadata = request?.['metadata'];
      if (typeof domainId !== 'string' || !optionalString(id) || !optionalString(name)) return jsonMessage(400, 'domain_id (string) is required; id and name are strings');
      if (metadata !== undefined && metadata !== null && (typeof metadata !== 'object' || Array.isArray(metadata))) {
        return jsonMessage(400, 'metadata must be an object or null');
      }
      const result = registry.addChannel({
        domainId,
        ...(id === undefined ? {} : { id }),
        ...(name === undefined ? {} : { name }),
        metadata: (metadata as Record<string, unknown> | null | undefined) ?? null,
      });
      if (!result.ok) return jsonMessage(result.reason === 'conflict' ? 409 : 400, result.message);
      const channel = result.value;
      return jsonResponse(201, JSON.stringify({ id: channel.id, domain_id: channel.domainId, name: channel.name, metadata: channel.metadata }) + '\n');
    }
    if (path.length === 3 && path[0] === 'clients' && (path[2] === 'secret' || path[2] === 'kick')) {
      if (method !== 'POST') return emptyResponse(405);
      const clientId = path[1]!;
      if (path[2] === 'kick') {
        if (registry.getClient(clientId) === undefined) return jsonMessage(404, 'entity not found');
        const closed = options.kick?.(clientId) ?? 0;
        return jsonResponse(200, goEncode(new Map<string, GoJsonValue>([['client_id', clientId], ['sessions_closed', closed]])));
      }
      const requested = body.length === 0 ? undefined : json()?.['secret'];
      if (requested !== undefined && (typeof requested !== 'string' || requested === '')) return jsonMessage(400, 'secret must be a non-empty string');
      const result = registry.rotateClientSecret(clientId, requested);
      if (!result.ok) return jsonMessage(404, 'entity not found');
      return jsonResponse(200, goEncode(new Map([['client_id', result.value.id], ['client_secret', result.value.secret]])));
    }
    return textResponse(404, '404 page not found\n');
  }

  function track(req: IncomingMessage, res: ServerResponse, base: Pick<RequestLogEntry, 'method' | 'path' | 'endpoint'>): RequestLogEntry {
    const started = Date.now();
    const entry: RequestLogEntry = { ...base, status: null, time: new Date(started).toISOString(), durationMs: null };
    requests.push(entry);
    if (requests.length > maxLogged) requests.splice(0, requests.length - maxLogged);
    let done = false;
    const complete = (answered: boolean): void => {
      if (done) return;
      done = true;
      entry.durationMs = Date.now() - started;
      if (answered) entry.status = res.statusCode;
      options.logger?.info(
        { method: entry.method, path: entry.path, endpoint: entry.endpoint, status: entry.status, durationMs: entry.durationMs, fault: entry.fault },
        'dev bootstrap request',
      );
      events.emit('request', entry);
    };
    res.once('finish', () => complete(true));
    res.once('close', () => complete(res.writableFinished));
    return entry;
  }

  function trickle(res: ServerResponse, req: IncomingMessage, planned: PlannedResponse, bytesPerChunk: number, intervalMs: number): void {
    res.writeHead(planned.status, { ...planned.headers, 'Content-Length': String(planned.body.length) });
    if (req.method === 'HEAD') {
      res.end();
      return;
    }
    let offset = 0;
    const timer = setInterval(() => {
      if (res.destroyed) {
        stop();
        return;
      }
      const chunk = planned.body.subarray(offset, offset + bytesPerChunk);
      offset += chunk.length;
      if (offset >= planned.body.length) {
        stop();
        res.end(chunk);
      } else {
        res.write(chunk);
      }
    }, intervalMs);
    const stop = (): void => {
      clearInterval(timer);
      timers.delete(timer);
    };
    timers.add(timer);
    res.once('close', stop);
  }

  await new Promise<void>((resolve, reject) => {
    const onError = (error: Error): void => {
      reject(new AgentError('INTERNAL', `dev bootstrap server could not listen on ${host}:${options.port ?? 0}`, { cause: error }));
    };
    server.once('error', onError);
    server.listen(options.port ?? 0, host, () => {
      server.off('error', onError);
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;

  return {
    url: `http://${host.includes(':') ? `[${host}]` : host}:${port}`,
    port,
    requests,
    events,
    setFault(rule) {
      faultRule = rule;
    },
    setResponseFamily(next) {
      family = checkFamily(next);
    },
    get responseFamily() {
      return family;
    },
    close() {
      closing ??= new Promise<void>((resolve) => {
        for (const timer of timers) clearInterval(timer);
        timers.clear();
        server.close(() => resolve());
        server.closeAllConnections();
        for (const socket of sockets) socket.destroy();
      });
      return closing;
    },
  };
}

function send(res: ServerResponse, req: IncomingMessage, planned: PlannedResponse): void {
  res.writeHead(planned.status, { ...planned.headers, 'Content-Length': String(planned.body.length) });
  res.end(req.method === 'HEAD' ? undefined : planned.body);
}

function textResponse(status: number, text: string): PlannedResponse {
  return {
    status,
    headers: { 'Content-Type': 'text/plain; charset=utf-8', 'X-Content-Type-Options': 'nosniff' },
    body: Buffer.from(text, 'utf8'),
  };
}

/** The request body, or undefined when it exceeds the limit (the rest is drained, not kept). */
function readBody(req: IncomingMessage): Promise<Buffer | undefined> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let tooLarge = false;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > MAX_BODY_BYTES) tooLarge = true;
      else chunks.push(chunk);
    });
    req.once('end', () => resolve(tooLarge ? undefined : Buffer.concat(chunks)));
    req.once('error', reject);
  });
}

function parseJsonObject(body: Buffer): Record<string, unknown> | undefined {
  try {
    const value: unknown = JSON.parse(body.toString('utf8'));
    return typeof value === 'object' && value !== null && !Array.isArray(value) ? (value as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

function optionalString(value: unknown): value is string | undefined {
  return value === undefined || typeof value === 'string';
}

function isLoopback(address: string | undefined): boolean {
  if (address === undefined) return false;
  return address === '::1' || address.startsWith('127.') || address.startsWith('::ffff:127.');
}

function checkFamily(family: BootstrapResponseFamily): BootstrapResponseFamily {
  if (!BOOTSTRAP_RESPONSE_FAMILIES.includes(family)) {
    throw new AgentError('CONFIG_INVALID', `dev bootstrap response family must be "v0.20" or "v0.30", not "${String(family)}"`);
  }
  return family;
}

export type { Fault, FaultRule } from './faults.js';
export { faultNext, faultAlways } from './faults.js';
export type { BootstrapResponseFamily } from './device-endpoint.js';
