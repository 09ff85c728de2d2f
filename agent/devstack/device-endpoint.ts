import { encryptCfb, openSecureToken } from '../bootstrap/crypto.js';
import { fromParsedJson, goEncode, goMarshal, goMarshalIndent, type GoJsonValue } from './go-json.js';
import type { BootstrapConfigRecord, Registry } from './registry.js';

/**
 * The device side of the Bootstrap emulator as pure decisions: given a routed request and the
 * registry, what status, headers and bytes a v0.20 or v0.30 server would send (spec sections 2–5).
 */

export type BootstrapResponseFamily = 'v0.20' | 'v0.30';
export const BOOTSTRAP_RESPONSE_FAMILIES: readonly BootstrapResponseFamily[] = ['v0.20', 'v0.30'];

export interface PlannedResponse {
  status: number;
  headers: Record<string, string>;
  body: Buffer;
}

export interface DeviceRoute {
  secure: boolean;
  externalId: string;
}

/** Upstream error texts, so a client that shows them shows what a real server says. */
export const DeviceErrorMessages = {
  missingKey: 'missing or invalid bearer entity key',
  missingId: 'missing entity id',
  notFound: 'entity not found',
  wrongKey: 'failed to get bootstrap configuration for given external key',
  wrongSecureKey: 'failed to get bootstrap configuration for given encrypted external key',
} as const;

const CLIENT_SCHEME = 'Client ';

/**
 * Matches the routing path (see go-path.ts) against chi's device routes:
 * `/clients/bootstrap[/]`, `/clients/bootstrap/{externalID}`, `/clients/bootstrap/secure/{externalID}`.
 * Undefined for any other path.
 */
export function matchDeviceRoute(routingPath: string): DeviceRoute | undefined {
  const prefix = '/clients/bootstrap';
  if (routingPath === prefix || routingPath === prefix + '/') return { secure: false, externalId: '' };
  if (!routingPath.startsWith(prefix + '/')) return undefined;
  const rest = routingPath.slice(prefix.length + 1);
  if (rest.startsWith('secure/')) {
    const id = rest.slice('secure/'.length);
    return id.includes('/') ? undefined : { secure: true, externalId: id };
  }
  return rest.includes('/') ? undefined : { secure: false, externalId: rest };
}

export function jsonMessage(status: number, message: string): PlannedResponse {
  return jsonResponse(status, goEncode(new Map([['message', message]])));
}

export function jsonResponse(status: number, text: string, extraHeaders: Record<string, string> = {}): PlannedResponse {
  const body = Buffer.from(text, 'utf8');
  return { status, headers: { 'Content-Type': 'application/json', ...extraHeaders }, body };
}

export function emptyResponse(status: number, extraHeaders: Record<string, string> = {}): PlannedResponse {
  return { status, headers: { ...extraHeaders }, body: Buffer.alloc(0) };
}

export interface DeviceContext {
  registry: Registry;
  family: BootstrapResponseFamily;
  /** MG_BOOTSTRAP_ENCRYPT_KEY as the operator wrote it; a key of the wrong length makes every secure request 403, as upstream. */
  encryptKey: string;
  /** Written into rendered v0.30 content as mqtt.url. */
  brokerUrl?: string;
  /** IV for secure responses; random by default (tests pin it to compare with upstream vectors). */
  responseIv?: () => Buffer;
}

/**
 * Decides the answer to a device request. `authorization` is the header value as Node received it
 * (latin1-decoded), so raw UTF-8 key bytes can still be compared exactly.
 */
export function planDeviceResponse(
  request: { method: string; route: DeviceRoute; authorization: string | undefined },
  ctx: DeviceContext,
): PlannedResponse {
  if (request.method !== 'GET' && request.method !== 'HEAD') return emptyResponse(405, { Allow: 'GET' });

  const header = request.authorization ?? '';
  // Scheme word is case-sensitive and needs exactly "Client " (upstream ExtractClientSecret).
  const credential = header.startsWith(CLIENT_SCHEME) ? header.slice(CLIENT_SCHEME.length) : '';
  if (credential === '') return jsonMessage(401, DeviceErrorMessages.missingKey);
  if (request.route.externalId === '') return jsonMessage(400, DeviceErrorMessages.missingId);

  const config = ctx.registry.findConfigByExternalId(request.route.externalId);
  if (config === undefined) return jsonMessage(404, DeviceErrorMessages.notFound);

  if (request.route.secure) {
    const presented = openTokenOrUndefined(ctx.encryptKey, credential);
    if (presented === undefined || !sameBytes(Buffer.from(presented, 'utf8'), config.externalKey)) {
      return jsonMessage(403, DeviceErrorMessages.wrongSecureKey);
    }
  } else if (!sameBytes(Buffer.from(credential, 'latin1'), config.externalKey)) {
    return jsonMessage(403, DeviceErrorMessages.wrongKey);
  }

  // v0.30 refuses a disabled enrollment with a bare 500; v0.20 has no such check.
  if (ctx.family === 'v0.30' && !config.enabled) return emptyResponse(500);

  const document = deviceDocument(config, ctx);
  if (!request.route.secure) {
    return jsonResponse(200, goEncode(document));
  }
  const key = Buffer.from(ctx.encryptKey, 'utf8');
  const iv = ctx.responseIv?.();
  const body = encryptCfb(key, Buffer.from(goMarshal(document), 'utf8'), iv);
  return { status: 200, headers: { 'Content-Type': 'application/octet-stream' }, body };
}

function openTokenOrUndefined(encryptKey: string, token: string): string | undefined {
  try {
    return openSecureToken(Buffer.from(encryptKey, 'utf8'), token);
  } catch {
    // Invalid key length: upstream's dec() fails inside aes.NewCipher and answers 403.
    return undefined;
  }
}

function sameBytes(presented: Buffer, stored: string): boolean {
  const expected = Buffer.from(stored, 'utf8');
  return expected.length > 0 && presented.equals(expected);
}

/** The response struct of the active family, field order and omitempty as upstream. */
export function deviceDocument(config: BootstrapConfigRecord, ctx: DeviceContext): GoJsonValue {
  const orUndefined = (s: string): string | undefined => (s === '' ? undefined : s);
  if (ctx.family === 'v0.30') {
    const content = config.content !== '' ? config.content : renderProfileContent(config, ctx);
    return new Map<string, GoJsonValue>([
      ['id', orUndefined(config.id)],
      ['content', orUndefined(content)],
      ['client_cert', orUndefined(config.clientCert)],
      ['client_key', orUndefined(config.clientKey)],
      ['ca_cert', orUndefined(config.caCert)],
    ]);
  }
  const client = ctx.registry.getClient(config.clientId);
  const channels = config.channels.map((id) => {
    const channel = ctx.registry.getChannel(id);
    return new Map<string, GoJsonValue>([
      ['id', id],
      ['name', orUndefined(channel?.name ?? '')],
      // interface{} holding a nil map: never omitted, written as null.
      ['metadata', channel?.metadata == null ? null : fromParsedJson(channel.metadata)],
    ]);
  });
  return new Map<string, GoJsonValue>([
    ['client_id', config.clientId],
    ['client_secret', client?.secret ?? ''],
    ['channels', channels.length === 0 ? null : channels],
    ['content', orUndefined(config.content)],
    ['client_cert', orUndefined(config.clientCert)],
    ['client_key', orUndefined(config.clientKey)],
    ['ca_cert', orUndefined(config.caCert)],
  ]);
}

/**
 * What an operator's v0.30 profile template typically renders into `content` (upstream renderer's
 * JSON branch: json.MarshalIndent, so keys sorted, two-space indent, HTML characters escaped).
 * The first channel carries commands, the second telemetry (the first again when there is one).
 */
export function renderProfileContent(config: BootstrapConfigRecord, ctx: Pick<DeviceContext, 'registry' | 'brokerUrl'>): string {
  const client = ctx.registry.getClient(config.clientId);
  const mqtt: Record<string, GoJsonValue> = { client_id: config.clientId, secret: client?.secret ?? '' };
  if (ctx.brokerUrl !== undefined) mqtt['url'] = ctx.brokerUrl;
  const doc: Record<string, GoJsonValue> = {
    device_id: config.id,
    domain_id: config.domainId,
    external_id: config.externalId,
    mqtt,
  };
  const commands = config.channels[0];
  const telemetry = config.channels[1] ?? commands;
  if (commands !== undefined) doc['commands'] = { channel_id: commands };
  if (telemetry !== undefined) doc['telemetry'] = { channel_id: telemetry };
  return goMarshalIndent(doc);
}
