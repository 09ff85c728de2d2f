import { z } from 'zod';
import { AgentError } from '../errors/agent-error.js';
import type { CertificateSet, DeviceChannel, DeviceConfig, ResponseFamily } from './model.js';

/*
 * Bootstrap response JSON (spec section 4) → DeviceConfig. Pure: no I/O, no clock.
 *
 * Secure bootstrap has no MAC, so these schemas are the only guard against a wrong key or a tampered
 * body: required fields are checked strictly, while unknown extra fields are tolerated because newer
 * servers may add some. Error messages name field paths and problems, never values (a value may be a
 * secret).
 */

export interface MappingFallbacks {
  /** mqtt.url from the agent configuration. */
  mqttUrl?: string;
  /** mqtt.domainId from the agent configuration. */
  domainId?: string;
  /** The "domain" topic scheme needs a domain ID; the legacy scheme does not. */
  requireDomain: boolean;
}

const FAMILY_LABELS: Record<ResponseFamily, string> = {
  clients: 'Clients (v0.16-v0.20)',
  profiles: 'Profiles (v0.30)',
  things: 'Things (v0.14/v0.15)',
  mainflux: 'mainflux (0.10-0.13)',
};

const MQTT_URL_SCHEMES = ['mqtt:', 'mqtts:', 'tcp:', 'ssl:', 'tls:', 'ws:', 'wss:'];

function isBrokerUrl(value: string): boolean {
  if (!URL.canParse(value)) return false;
  const url = new URL(value);
  return MQTT_URL_SCHEMES.includes(url.protocol.toLowerCase()) && url.hostname !== '';
}

// Messages are built from the issue kind only: zod never gets to quote a value (it may be a secret).
const stringError = { error: (issue: { input?: unknown }) => (issue.input === undefined ? 'is missing' : 'must be a string') };
const requiredString = z.string(stringError).min(1, 'must not be empty');
// Go omits empty optional strings; other producers may send null. Both mean "absent".
const optionalString = z.string(stringError).nullish();
const brokerUrl = z
  .string(stringError)
  .refine(isBrokerUrl, 'must be a broker URL with scheme mqtt, mqtts, tcp, ssl, tls, ws or wss');

const metadataSchema = z.record(z.string(), z.unknown(), { error: 'must be an object or null' }).nullish();

export const ChannelSchema = z.looseObject(
  {
    id: requiredString,
    name: optionalString,
    metadata: metadataSchema,
  },
  { error: 'must be an object' },
);

const channelList = z.array(ChannelSchema, { error: 'must be a list or null' }).nullish();

const certFields = {
  content: optionalString,
  client_cert: optionalString,
  client_key: optionalString,
  ca_cert: optionalString,
};

/** Clients family, Magistrala v0.16-v0.20 (and the 2025 docs). */
export const ClientsResponseSchema = z.looseObject({
  client_id: requiredString,
  client_secret: requiredString,
  channels: channelList,
  ...certFields,
});

/** Profiles family, Magistrala v0.30: credentials live only in `content`. */
export const ProfilesResponseSchema = z.looseObject({
  id: requiredString,
  ...certFields,
});

/** Legacy Things family, Magistrala v0.14/v0.15. */
export const ThingsResponseSchema = z.looseObject({
  thing_id: requiredString,
  thing_key: requiredString,
  channels: channelList,
  ...certFields,
});

/** mainflux 0.10-0.13. */
export const MainfluxResponseSchema = z.looseObject({
  mainflux_id: requiredString,
  mainflux_key: requiredString,
  mainflux_channels: channelList,
  ...certFields,
});

const objectError = { error: 'must be an object' };

/** What the agent reads from a JSON `content` for any family: a broker URL and a domain. */
const ContentLocationSchema = z.looseObject({
  domain_id: requiredString.optional(),
  mqtt: z.looseObject({ url: brokerUrl.optional() }, objectError).optional(),
  // Upstream agent's own content format (see the v0.20 vector).
  agent: z
    .looseObject({ mqtt: z.looseObject({ url: brokerUrl.optional() }, objectError).optional() }, objectError)
    .optional(),
});

const contentChannelRef = z.looseObject({ channel_id: requiredString.optional() }, objectError).optional();

/** Upstream's profile-template convention, plus an optional explicit channel list. */
const ProfileContentSchema = ContentLocationSchema.extend({
  mqtt: z
    .looseObject(
      {
        url: brokerUrl.optional(),
        client_id: requiredString.optional(),
        username: requiredString.optional(),
        secret: requiredString.optional(),
        password: requiredString.optional(),
      },
      objectError,
    )
    .optional(),
  telemetry: contentChannelRef,
  commands: contentChannelRef,
  channels: z
    .array(
      z.union([requiredString, z.looseObject({ id: requiredString, name: optionalString })], {
        error: 'must be a channel ID string or an object with "id"',
      }),
      { error: 'must be a list' },
    )
    .optional(),
});

type ProfileContent = z.infer<typeof ProfileContentSchema>;
type ContentLocation = z.infer<typeof ContentLocationSchema>;

/** Which family a response belongs to, from its identifying field. */
export function detectResponseFamily(json: unknown): ResponseFamily {
  if (typeof json !== 'object' || json === null || Array.isArray(json)) {
    throw new AgentError(
      'BOOTSTRAP_RESPONSE_INVALID',
      `bootstrap response is ${describeJsonType(json)}, not a JSON object`,
      { details: { jsonType: describeJsonType(json) } },
    );
  }
  if ('client_id' in json) return 'clients';
  if ('thing_id' in json) return 'things';
  if ('mainflux_id' in json) return 'mainflux';
  if ('id' in json) return 'profiles';
  throw new AgentError(
    'BOOTSTRAP_RESPONSE_INVALID',
    'bootstrap response has none of client_id, id, thing_id or mainflux_id, so it is not a Magistrala bootstrap response',
    { details: { field: 'client_id' } },
  );
}

/** Maps any supported response family onto DeviceConfig; see the module comment for the rules. */
export function mapBootstrapResponse(json: unknown, fallbacks: MappingFallbacks): DeviceConfig {
  const family = detectResponseFamily(json);
  switch (family) {
    case 'clients': {
      const res = parseOrThrow(ClientsResponseSchema, json, family, '');
      return mapCredentialFamily(family, res.client_id, res.client_secret, res.channels, res, fallbacks);
    }
    case 'things': {
      const res = parseOrThrow(ThingsResponseSchema, json, family, '');
      return mapCredentialFamily(family, res.thing_id, res.thing_key, res.channels, res, fallbacks);
    }
    case 'mainflux': {
      const res = parseOrThrow(MainfluxResponseSchema, json, family, '');
      return mapCredentialFamily(family, res.mainflux_id, res.mainflux_key, res.mainflux_channels, res, fallbacks);
    }
    case 'profiles': {
      const res = parseOrThrow(ProfilesResponseSchema, json, family, '');
      return mapProfile(res, fallbacks);
    }
  }
}

interface CommonFields {
  content?: string | null | undefined;
  client_cert?: string | null | undefined;
  client_key?: string | null | undefined;
  ca_cert?: string | null | undefined;
}

type ParsedChannel = z.infer<typeof ChannelSchema>;

function mapCredentialFamily(
  family: ResponseFamily,
  username: string,
  password: string,
  channels: ParsedChannel[] | null | undefined,
  res: CommonFields,
  fallbacks: MappingFallbacks,
): DeviceConfig {
  const contentJson = parseContentObject(res.content);
  const location =
    contentJson === undefined ? undefined : parseOrThrow(ContentLocationSchema, contentJson, family, 'content.');
  const url = brokerUrlFrom(location) ?? fallbacks.mqttUrl;
  const domainId = location?.domain_id ?? fallbacks.domainId;

  const missing: MissingValue[] = [];
  if (url === undefined) missing.push(missingUrl(res.content, contentJson));
  if (domainId === undefined && fallbacks.requireDomain) missing.push(missingDomain(res.content, contentJson));
  throwIfIncomplete(family, missing);

  return finish(family, { url: url as string, username, password }, domainId, (channels ?? []).map(toDeviceChannel), res);
}

function mapProfile(res: z.infer<typeof ProfilesResponseSchema>, fallbacks: MappingFallbacks): DeviceConfig {
  const family: ResponseFamily = 'profiles';
  const contentJson = parseContentObject(res.content);
  const content: ProfileContent | undefined =
    contentJson === undefined ? undefined : parseOrThrow(ProfileContentSchema, contentJson, family, 'content.');

  const username = content?.mqtt?.client_id ?? content?.mqtt?.username;
  const password = content?.mqtt?.secret ?? content?.mqtt?.password;
  const url = brokerUrlFrom(content) ?? fallbacks.mqttUrl;
  const domainId = content?.domain_id ?? fallbacks.domainId;

  const missing: MissingValue[] = [];
  // Credentials have no fallback: v0.30 carries them only in the operator's content template.
  const contentState = describeContentState(res.content, contentJson);
  if (username === undefined) {
    missing.push({
      value: 'mqtt.username',
      reason: `no MQTT username: a v0.30 response carries it only in content.mqtt.client_id (or content.mqtt.username) and ${contentState}`,
    });
  }
  if (password === undefined) {
    missing.push({
      value: 'mqtt.password',
      reason: `no MQTT password: a v0.30 response carries it only in content.mqtt.secret (or content.mqtt.password) and ${contentState}`,
    });
  }
  if (url === undefined) missing.push(missingUrl(res.content, contentJson));
  if (domainId === undefined && fallbacks.requireDomain) missing.push(missingDomain(res.content, contentJson));
  throwIfIncomplete(family, missing);

  const config = finish(
    family,
    { url: url as string, username: username as string, password: password as string },
    domainId,
    profileChannels(content),
    res,
  );
  config.enrollmentId = res.id;
  return config;
}

/** telemetry, commands, then the explicit list; one entry per ID, the first name seen wins. */
function profileChannels(content: ProfileContent | undefined): DeviceChannel[] {
  if (!content) return [];
  const ordered: DeviceChannel[] = [];
  if (content.telemetry?.channel_id !== undefined) ordered.push({ id: content.telemetry.channel_id, name: 'telemetry' });
  if (content.commands?.channel_id !== undefined) ordered.push({ id: content.commands.channel_id, name: 'commands' });
  for (const entry of content.channels ?? []) {
    if (typeof entry === 'string') ordered.push({ id: entry });
    else ordered.push(entry.name ? { id: entry.id, name: entry.name } : { id: entry.id });
  }
  const byId = new Map<string, DeviceChannel>();
  for (const channel of ordered) {
    const seen = byId.get(channel.id);
    if (!seen) byId.set(channel.id, channel);
    else if (seen.name === undefined && channel.name !== undefined) seen.name = channel.name;
  }
  return [...byId.values()];
}

function toDeviceChannel(channel: ParsedChannel): DeviceChannel {
  const mapped: DeviceChannel = { id: channel.id };
  if (channel.name) mapped.name = channel.name;
  // Keep an explicit null: it is what the server sent and costs nothing downstream.
  if (channel.metadata !== undefined) mapped.metadata = channel.metadata;
  return mapped;
}

function finish(
  family: ResponseFamily,
  mqtt: DeviceConfig['mqtt'],
  domainId: string | undefined,
  channels: DeviceChannel[],
  res: CommonFields,
): DeviceConfig {
  const certs: CertificateSet = {};
  if (res.client_cert) certs.clientCert = res.client_cert;
  if (res.client_key) certs.clientKey = res.client_key;
  if (res.ca_cert) certs.caCert = res.ca_cert;
  const config: DeviceConfig = { family, mqtt, channels, certs };
  if (domainId !== undefined) config.domainId = domainId;
  if (typeof res.content === 'string') config.content = res.content;
  return config;
}

function brokerUrlFrom(content: ContentLocation | undefined): string | undefined {
  return content?.mqtt?.url ?? content?.agent?.mqtt?.url;
}

/** `content` parsed as JSON when it is a JSON object; anything else is operator text we just keep. */
function parseContentObject(content: string | null | undefined): Record<string, unknown> | undefined {
  if (typeof content !== 'string') return undefined;
  let parsed: unknown;
  try {
    parsed = JSON.parse(content);
  } catch {
    return undefined;
  }
  return typeof parsed === 'object' && parsed !== null && !Array.isArray(parsed)
    ? (parsed as Record<string, unknown>)
    : undefined;
}

function describeContentState(content: string | null | undefined, contentJson: unknown): string {
  if (typeof content !== 'string' || content === '') return 'the response has no content';
  if (contentJson === undefined) return 'the response content is not a JSON object';
  return 'the content has none';
}

interface MissingValue {
  /** DeviceConfig field, for details. */
  value: string;
  /** What is missing and where it could have come from. */
  reason: string;
}

function missingUrl(content: string | null | undefined, contentJson: unknown): MissingValue {
  const where =
    contentJson === undefined
      ? describeContentState(content, contentJson)
      : 'the response has none (content.mqtt.url or content.agent.mqtt.url)';
  return { value: 'mqtt.url', reason: `no MQTT broker URL: ${where} and mqtt.url is not set in the agent configuration` };
}

function missingDomain(content: string | null | undefined, contentJson: unknown): MissingValue {
  const where = contentJson === undefined ? describeContentState(content, contentJson) : 'the response has none (content.domain_id)';
  return {
    value: 'domainId',
    reason: `no domain ID: ${where} and mqtt.domainId is not set in the agent configuration (the "domain" topic scheme needs it)`,
  };
}

function throwIfIncomplete(family: ResponseFamily, missing: MissingValue[]): void {
  if (missing.length === 0) return;
  throw new AgentError(
    'BOOTSTRAP_CONFIG_INCOMPLETE',
    `bootstrap configuration from the ${FAMILY_LABELS[family]} response is incomplete: ${missing.map((m) => m.reason).join('; ')}`,
    { details: { family, missing: missing.map((m) => m.value).join(', ') } },
  );
}

function parseOrThrow<T extends z.ZodType>(schema: T, value: unknown, family: ResponseFamily, pathPrefix: string): z.output<T> {
  const result = schema.safeParse(value);
  if (result.success) return result.data;
  const problems = result.error.issues.slice(0, 5).map((issue) => `${pathPrefix}${formatPath(issue.path)}: ${issue.message}`);
  const more = result.error.issues.length > 5 ? ` (and ${result.error.issues.length - 5} more)` : '';
  const firstPath = result.error.issues[0] ? `${pathPrefix}${formatPath(result.error.issues[0].path)}` : pathPrefix;
  throw new AgentError(
    'BOOTSTRAP_RESPONSE_INVALID',
    `bootstrap response does not match the ${FAMILY_LABELS[family]} format: ${problems.join('; ')}${more}`,
    { details: { family, field: firstPath, issues: result.error.issues.length } },
  );
}

function formatPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const segment of path) {
    if (typeof segment === 'number') out += `[${segment}]`;
    else out += out === '' ? String(segment) : `.${String(segment)}`;
  }
  return out === '' ? '(root)' : out;
}

function describeJsonType(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  return `a ${typeof value}`;
}
