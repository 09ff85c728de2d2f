import { timingSafeEqual } from 'node:crypto';
import { emptyResponse, jsonMessage, jsonResponse, type PlannedResponse } from './device-endpoint.js';
import { fromParsedJson, goEncode, type GoJsonValue } from './go-json.js';
import type { BootstrapConfigRecord, Failure, Registry } from './registry.js';

/**
 * The operator side of the Bootstrap emulator (spec section 6), as pure request → response
 * decisions over the registry. Paths are `/{domainId}/clients/...`; every call needs
 * `Authorization: Bearer <userToken>`.
 */

export interface ManagementRequest {
  method: string;
  /** Routing path segments after the leading slash, e.g. ['dom', 'clients', 'configs']. */
  segments: string[];
  query: URLSearchParams;
  authorization: string | undefined;
  contentType: string | undefined;
  body: Buffer;
}

export interface ManagementContext {
  registry: Registry;
  userToken: string;
}

export const ManagementMessages = {
  unauthorized: 'missing or invalid bearer user token',
  malformed: 'malformed entity specification',
  unsupportedContentType: 'unsupported content type',
  missingId: 'missing entity id',
  missingKey: 'missing external key',
  notFound: 'entity not found',
  conflict: 'entity already exists',
  invalidState: 'invalid bootstrap state',
  invalidQuery: 'invalid query parameters',
  limitSize: 'invalid limit size',
} as const;

const MAX_LIST_LIMIT = 100;
const DEFAULT_LIST_LIMIT = 10;

/** True when `segments` look like a management path, so the server knows whose request it is. */
export function isManagementPath(segments: readonly string[]): boolean {
  return segments.length >= 3 && segments[0] !== '' && segments[1] === 'clients' && (segments[2] === 'configs' || segments[2] === 'state');
}

export function bearerMatches(authorization: string | undefined, token: string): boolean {
  const prefix = 'Bearer ';
  if (authorization === undefined || !authorization.startsWith(prefix) || token === '') return false;
  const presented = Buffer.from(authorization.slice(prefix.length), 'utf8');
  const expected = Buffer.from(token, 'utf8');
  return presented.length === expected.length && timingSafeEqual(presented, expected);
}

export function handleManagementRequest(request: ManagementRequest, ctx: ManagementContext): PlannedResponse {
  if (!bearerMatches(request.authorization, ctx.userToken)) return jsonMessage(401, ManagementMessages.unauthorized);
  const [domainId = '', , kind = '', ...rest] = request.segments;
  // A trailing slash (`/configs/`) names the collection, as chi's "/" sub-route does.
  const tail = rest.length > 0 && rest[rest.length - 1] === '' ? rest.slice(0, -1) : rest;
  const { method } = request;
  const { registry } = ctx;

  if (kind === 'state') {
    if (tail.length !== 1 || method !== 'PUT') return notAllowedOrMissing(tail.length === 1);
    return withJsonBody(request, (body) => {
      const state = body['state'];
      if (state !== 0 && state !== 1) return jsonMessage(400, ManagementMessages.invalidState);
      return toResponse(registry.setConfigState(domainId, tail[0]!, state), () => jsonResponse(200, ''));
    });
  }

  if (tail.length === 0) {
    if (method === 'GET') return listConfigs(request, registry, domainId);
    if (method === 'POST') return addConfig(request, registry, domainId);
    return emptyResponse(405);
  }

  if (tail.length === 2 && tail[0] === 'certs') {
    if (method !== 'PATCH') return emptyResponse(405);
    const clientId = tail[1]!;
    return withJsonBody(request, (body) => {
      const certs = { clientCert: body['client_cert'], clientKey: body['client_key'], caCert: body['ca_cert'] };
      if (!Object.values(certs).every(isOptionalString)) return jsonMessage(400, ManagementMessages.malformed);
      const result = registry.updateConfigCerts(domainId, clientId, certs as Record<keyof typeof certs, string | undefined>);
      return toResponse(result, (config) =>
        jsonResponse(
          200,
          goEncode(
            new Map<string, GoJsonValue>([
              ['client_id', config.clientId],
              ['client_cert', config.clientCert || undefined],
              ['client_key', config.clientKey || undefined],
              ['ca_cert', config.caCert || undefined],
            ]),
          ),
        ),
      );
    });
  }

  if (tail.length === 2 && tail[0] === 'connections') {
    if (method !== 'POST' && method !== 'PUT') return emptyResponse(405);
    const clientId = tail[1]!;
    return withJsonBody(request, (body) => {
      const channels = body['channels'];
      if (!isStringArray(channels)) return jsonMessage(400, ManagementMessages.malformed);
      return toResponse(registry.updateConfigChannels(domainId, clientId, channels), () => jsonResponse(200, ''));
    });
  }

  if (tail.length === 2 && (tail[1] === 'enable' || tail[1] === 'disable')) {
    // v0.30-style enable/disable of an enrollment: a disabled config fails bootstrap (v0.30 only).
    if (method !== 'POST') return emptyResponse(405);
    const result = registry.setConfigEnabled(domainId, tail[0]!, tail[1] === 'enable');
    return toResponse(result, (config) => jsonResponse(200, goEncode(configView(config, registry))));
  }

  if (tail.length !== 1) return jsonMessage(404, ManagementMessages.notFound);
  const clientId = tail[0]!;
  switch (method) {
    case 'GET': {
      const config = registry.getConfig(domainId, clientId);
      return config === undefined ? jsonMessage(404, ManagementMessages.notFound) : jsonResponse(200, goEncode(configView(config, registry)));
    }
    case 'PUT':
      return withJsonBody(request, (body) => {
        const name = body['name'];
        const content = body['content'];
        if (!isOptionalString(name) || !isOptionalString(content)) return jsonMessage(400, ManagementMessages.malformed);
        // Upstream binds the whole body: fields left out become empty.
        return toResponse(registry.updateConfig(domainId, clientId, { name: name ?? '', content: content ?? '' }), () =>
          jsonResponse(200, ''),
        );
      });
    case 'DELETE':
      // Upstream's delete is idempotent: 204 whether or not the config existed.
      registry.removeConfig(domainId, clientId);
      return emptyResponse(204);
    default:
      return emptyResponse(405);
  }
}

function addConfig(request: ManagementRequest, registry: Registry, domainId: string): PlannedResponse {
  return withJsonBody(request, (body) => {
    const fields = ['external_id', 'external_key', 'client_id', 'content', 'name', 'client_cert', 'client_key', 'ca_cert'] as const;
    if (!fields.every((f) => isOptionalString(body[f]))) return jsonMessage(400, ManagementMessages.malformed);
    const channels = body['channels'] ?? [];
    if (!isStringArray(channels)) return jsonMessage(400, ManagementMessages.malformed);
    const str = (f: (typeof fields)[number]): string => (body[f] as string | undefined) ?? '';
    if (str('external_id') === '') return jsonMessage(400, ManagementMessages.missingId);
    if (str('external_key') === '') return jsonMessage(400, ManagementMessages.missingKey);
    const result = registry.addConfig({
      externalId: str('external_id'),
      externalKey: str('external_key'),
      clientId: str('client_id'),
      domainId,
      channels,
      content: str('content'),
      name: str('name'),
      clientCert: str('client_cert'),
      clientKey: str('client_key'),
      caCert: str('ca_cert'),
    });
    return toResponse(result, (config) => ({
      status: 201,
      headers: { 'Content-Type': 'application/json', Location: `/clients/configs/${config.clientId}` },
      body: Buffer.alloc(0),
    }));
  });
}

function listConfigs(request: ManagementRequest, registry: Registry, domainId: string): PlannedResponse {
  const offset = parseCount(request.query.get('offset'), 0);
  const limit = parseCount(request.query.get('limit'), DEFAULT_LIST_LIMIT);
  if (offset === undefined || limit === undefined) return jsonMessage(400, ManagementMessages.invalidQuery);
  if (limit > MAX_LIST_LIMIT) return jsonMessage(400, ManagementMessages.limitSize);
  const page = registry.listConfigs(domainId, offset, limit);
  return jsonResponse(
    200,
    goEncode(
      new Map<string, GoJsonValue>([
        ['total', page.total],
        ['offset', offset],
        ['limit', limit],
        ['configs', page.configs.map((c) => configView(c, registry))],
      ]),
    ),
  );
}

/** Upstream's viewRes (clients flavour), plus the enrollment `id` and the v0.30 `status`. The TLS key is never shown. */
export function configView(config: BootstrapConfigRecord, registry: Registry): GoJsonValue {
  const client = registry.getClient(config.clientId);
  const channels = config.channels.map((id) => {
    const channel = registry.getChannel(id);
    return new Map<string, GoJsonValue>([
      ['id', id],
      ['name', channel?.name || undefined],
      ['metadata', channel?.metadata == null ? undefined : fromParsedJson(channel.metadata)],
    ]);
  });
  return new Map<string, GoJsonValue>([
    ['id', config.id],
    ['client_id', config.clientId],
    ['client_secret', client?.secret || undefined],
    ['channels', channels.length === 0 ? undefined : channels],
    ['external_id', config.externalId],
    ['external_key', config.externalKey || undefined],
    ['content', config.content || undefined],
    ['name', config.name || undefined],
    ['state', config.state],
    ['status', config.enabled ? 'enabled' : 'disabled'],
    ['client_cert', config.clientCert || undefined],
    ['ca_cert', config.caCert || undefined],
  ]);
}

function withJsonBody(request: ManagementRequest, handle: (body: Record<string, unknown>) => PlannedResponse): PlannedResponse {
  if (!(request.contentType ?? '').includes('application/json')) return jsonMessage(415, ManagementMessages.unsupportedContentType);
  let parsed: unknown;
  try {
    parsed = JSON.parse(request.body.toString('utf8'));
  } catch {
    return jsonMessage(400, ManagementMessages.malformed);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) return jsonMessage(400, ManagementMessages.malformed);
  return handle(parsed as Record<string, unknown>);
}

function toResponse<T>(result: { ok: true; value: T } | Failure, onSuccess: (value: T) => PlannedResponse): PlannedResponse {
  if (result.ok) return onSuccess(result.value);
  switch (result.reason) {
    case 'not_found':
      return jsonMessage(404, ManagementMessages.notFound);
    case 'conflict':
      return jsonMessage(409, ManagementMessages.conflict);
    case 'invalid':
      return jsonMessage(400, ManagementMessages.malformed);
  }
}

function notAllowedOrMissing(pathMatched: boolean): PlannedResponse {
  return pathMatched ? emptyResponse(405) : jsonMessage(404, ManagementMessages.notFound);
}

function isOptionalString(value: unknown): value is string | undefined {
  return value === undefined || typeof value === 'string';
}

function isStringArray(value: unknown): value is string[] {
  return Array.isArray(value) && value.every((v) => typeof v === 'string');
}

function parseCount(raw: string | null, fallback: number): number | undefined {
  if (raw === null || raw === '') return fallback;
  if (!/^\d{1,9}$/.test(raw)) return undefined;
  return Number(raw);
}
