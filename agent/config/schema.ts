import { validate as validateCron } from 'node-cron';
import { z } from 'zod';

/**
 * The single source of truth for the agent's configuration: types, defaults and validation.
 * Every key is documented in config/agent.example.json; environment variables MG_AGENT_* map onto
 * these keys mechanically (see config/load.ts), so adding a key here adds its variable too.
 */

const nonEmpty = z.string().min(1, 'must not be empty');
const absolutePath = z.string().min(1).refine((p) => p.startsWith('/'), 'must be an absolute path');

const httpUrl = z
  .string()
  .url('must be a URL such as http://bootstrap.example.com:9013')
  .refine((u) => /^https?:\/\//i.test(u), 'must start with http:// or https://')
  .refine(
    (u) => !/\/(clients|things)\/bootstrap\/?$/.test(u),
    'give the base URL only (e.g. http://host:9013): the agent adds /clients/bootstrap itself',
  );

const mqttUrl = z
  .string()
  .url('must be a URL such as mqtts://broker.example.com:8883')
  .refine((u) => /^(mqtts?|tcp|ssl|tls|wss?):\/\//i.test(u), 'scheme must be mqtt, mqtts, tcp, ssl, tls, ws or wss');

export const MacFormats = ['lower-colon', 'upper-colon', 'lower-dash', 'upper-dash', 'lower-plain', 'upper-plain'] as const;

export const BootstrapSchema = z
  .strictObject({
    /** Base URL of the Bootstrap service, without the /clients/bootstrap path. */
    url: httpUrl.optional(),
    /** secure: AES-CFB encrypted exchange (needs the encryption key); plain: the key in clear. */
    mode: z.enum(['secure', 'plain']).default('plain'),
    /** clients: Magistrala v0.16+ (/clients/bootstrap, "Client " scheme); things: v0.14/v0.15 legacy. */
    family: z.enum(['clients', 'things']).default('clients'),
    /** File holding MG_BOOTSTRAP_ENCRYPT_KEY (16, 24 or 32 bytes). Also $CREDENTIALS_DIRECTORY/encrypt_key or MG_AGENT_BOOTSTRAP_ENCRYPT_KEY. */
    encryptKeyFile: absolutePath.optional(),
    /** Overall deadline for one bootstrap request, headers and body included. */
    timeoutMs: z.number().int().min(1000).max(300_000).default(15_000),
    /** Responses larger than this are refused (bytes). */
    maxResponseBytes: z.number().int().min(1024).max(16 * 1024 * 1024).default(1024 * 1024),
    /** PEM bundle to trust for an https:// Bootstrap URL in addition to the system store. */
    caFile: absolutePath.optional(),
  })
  .prefault({});

export const IdentitySchema = z
  .strictObject({
    /** Fixed external ID; overrides the MAC-derived one. */
    externalId: nonEmpty.optional(),
    /** Network interface whose MAC is the external ID (otherwise chosen automatically). */
    interface: nonEmpty.optional(),
    macFormat: z.enum(MacFormats).default('lower-colon'),
    /** File with the external key, mode 0600 or 0400. $CREDENTIALS_DIRECTORY/external_key wins when present. */
    externalKeyFile: absolutePath.default('/etc/mg-device-agent/credentials/external_key'),
  })
  .prefault({});

export const MqttSchema = z
  .strictObject({
    /** Broker URL used when the bootstrap response carries none. */
    url: mqttUrl.optional(),
    /** Domain ID used when the bootstrap response carries none (needed by the "domain" topic scheme). */
    domainId: nonEmpty.optional(),
    /** domain: m/<domain>/c/<channel> (Magistrala v0.17+); legacy: channels/<channel>/messages (v0.16 and older). */
    topicScheme: z.enum(['domain', 'legacy']).default('domain'),
    /** 4 = MQTT 3.1.1, 5 = MQTT 5. */
    protocolVersion: z.union([z.literal(4), z.literal(5)], { error: 'must be 4 (MQTT 3.1.1) or 5 (MQTT 5)' }).default(4),
    qos: z.union([z.literal(0), z.literal(1)], { error: 'must be 0 or 1' }).default(1),
    keepaliveSeconds: z.number().int().min(5).max(3600).default(60),
    connectTimeoutMs: z.number().int().min(1000).max(120_000).default(15_000),
    /** Channel (ID or name) whose "status" subtopic carries the retained online/offline status; default: the first channel. */
    statusChannel: nonEmpty.optional(),
    statusSubtopic: nonEmpty.default('status'),
    /** Verify the broker's certificate. Only turn off for a lab broker you own. */
    tlsVerify: z.boolean().default(true),
    /** PEM bundle to trust for the broker when the bootstrap response carries no ca_cert. */
    caFile: absolutePath.optional(),
  })
  .prefault({});

export const StateSchema = z
  .strictObject({
    /** Where certificates, content and the last good configuration live (0700). */
    dir: absolutePath.default('/var/lib/mg-device-agent'),
    /** How many configuration generations to keep on disk (current included). */
    keepGenerations: z.number().int().min(2).max(10).default(3),
  })
  .prefault({});

export const RetrySchema = z
  .strictObject({
    /** First backoff step for transient failures (network, 5xx). */
    initialDelayMs: z.number().int().min(100).max(600_000).default(2_000),
    /** Cap for transient failures. */
    maxDelayMs: z.number().int().min(1_000).max(3_600_000).default(300_000),
    /** Cap for failures only an operator can fix (401/403/404, disabled config). */
    permanentMaxDelayMs: z.number().int().min(10_000).max(86_400_000).default(3_600_000),
    /** The first network attempt after boot waits a random delay up to this, so a fleet that lost power together does not return at once. */
    bootJitterMs: z.number().int().min(0).max(600_000).default(5_000),
  })
  .prefault({});

/** A JSON array given as text (MG_AGENT_UPDATES_ON_APPLY='["/usr/bin/x","--y"]'); anything else is left for zod to name. */
function parseJsonArrayText(value: unknown): unknown {
  if (typeof value !== 'string') return value;
  try {
    return JSON.parse(value) as unknown;
  } catch {
    return value;
  }
}

export const UpdatesSchema = z
  .strictObject({
    /** Periodic configuration check (monotonic, jittered ±15 %); 0 turns it off. */
    checkIntervalMs: z
      .number()
      .int()
      .min(0)
      .max(7 * 86_400_000)
      .refine((ms) => ms === 0 || ms >= 1_000, 'must be 0 (off) or at least 1000')
      .default(3_600_000),
    /** Extra wall-clock schedule, 5-field cron in local time (e.g. "30 3 * * *"); guarded against clock steps. */
    cron: z
      .string()
      .refine((expr) => expr.trim().split(/\s+/).length === 5 && validateCron(expr), 'must be a 5-field cron expression such as "30 3 * * *"')
      .optional(),
    /** Command run after every applied change, as an argv array (no shell). */
    onApply: z.preprocess(parseJsonArrayText, z.array(nonEmpty).min(1, 'must name a program')).optional(),
    /** The onApply command is killed after this long. */
    onApplyTimeoutMs: z.number().int().min(1_000).max(600_000).default(30_000),
  })
  .prefault({});

export const ControlSchema = z
  .strictObject({
    /** Answer requests on the control channel's "req" subtopic (SenML, like upstream's agent). */
    enabled: z.boolean().default(true),
    /** Control channel (ID or name); default: the channel named, or with metadata type, "control" or "commands". */
    channel: nonEmpty.optional(),
    /** File holding the command secret every request must carry (a "token" record); mode 0600 or 0400. $CREDENTIALS_DIRECTORY/control_secret wins when present. */
    secretFile: absolutePath.optional(),
    /** Requests answered per minute; more are dropped (one log line per minute says how many). */
    maxRequestsPerMinute: z.number().int().min(1).max(600).default(30),
  })
  .prefault({});

export const LogSchema = z
  .strictObject({
    level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace']).default('info'),
  })
  .prefault({});

export const AgentConfigSchema = z.strictObject({
  bootstrap: BootstrapSchema,
  identity: IdentitySchema,
  mqtt: MqttSchema,
  state: StateSchema,
  retry: RetrySchema,
  updates: UpdatesSchema,
  control: ControlSchema,
  log: LogSchema,
});

export type AgentConfig = z.infer<typeof AgentConfigSchema>;
export type MacFormat = (typeof MacFormats)[number];
