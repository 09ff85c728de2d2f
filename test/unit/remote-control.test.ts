import { chmodSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { AgentConfigSchema } from '../../agent/config/schema.js';
import type { DeviceConfig } from '../../agent/bootstrap/model.js';
import { encodeControlResponse, parseControlRequest, responseTopicFor, MAX_REQUEST_BYTES } from '../../agent/control/senml.js';
import { RateWindow, pickControlChannel, tokenMatches } from '../../agent/control/guards.js';
import { BOOTSTRAP_COOLDOWN_MS, RemoteControl, executeCommand, type ControlGeneration, type ControlTarget } from '../../agent/control/remote-control.js';
import { readControlSecret } from '../../agent/control/secret.js';
import type { AgentError } from '../../agent/errors/agent-error.js';
import { captureLogger } from '../helpers/log-capture.js';
import { makeTempDir } from '../helpers/temp-dir.js';

const json = (value: unknown) => Buffer.from(JSON.stringify(value));

describe('SenML requests (upstream agent format)', () => {
  it('takes the command from the first record, the ID from its bn without the ":", the argument from vs, the token from a "token" record', () => {
    const parsed = parseControlRequest(json([{ bn: '1:', n: 'config', vs: ' view ' }, { n: 'token', vs: 's3cret' }]));
    expect(parsed).toEqual({ ok: true, request: { id: '1', command: 'config', args: 'view', token: 's3cret' } });
    expect(parseControlRequest(json([{ bn: 'abc', n: 'ping' }]))).toEqual({ ok: true, request: { id: 'abc', command: 'ping', args: '' } });
  });

  it('names what is wrong, and keeps the ID when there is one to answer', () => {
    expect(parseControlRequest(Buffer.from('ping'))).toEqual({ ok: false, reason: 'request is not JSON' });
    expect(parseControlRequest(json({ bn: '1:', n: 'ping' }))).toMatchObject({ ok: false, reason: expect.stringContaining('SenML pack') });
    expect(parseControlRequest(json([]))).toMatchObject({ ok: false });
    expect(parseControlRequest(json([{ n: 'ping' }]))).toMatchObject({ ok: false, reason: expect.stringContaining('"bn"') });
    expect(parseControlRequest(json([{ bn: 'a\nb:', n: 'ping' }]))).not.toHaveProperty('id');
    expect(parseControlRequest(json([{ bn: `${'x'.repeat(129)}:`, n: 'ping' }]))).not.toHaveProperty('id');
    expect(parseControlRequest(json([{ bn: '7:' }]))).toEqual({ ok: false, id: '7', reason: 'the first record needs "n": "<command>"' });
    expect(parseControlRequest(json([{ bn: '7:', n: 'ping', vs: 1 }]))).toMatchObject({ ok: false, id: '7', command: 'ping' });
    const huge = Buffer.alloc(MAX_REQUEST_BYTES + 1, 0x20);
    expect(parseControlRequest(huge)).toEqual({ ok: false, reason: `request is ${MAX_REQUEST_BYTES + 1} bytes; the limit is ${MAX_REQUEST_BYTES}` });
  });

  it('answers with bn = request ID, n = command, t in seconds, vs = result, on the res subtopic', () => {
    expect(JSON.parse(encodeControlResponse('r1', 'ping', 'pong', 1_700_000_000_500))).toEqual([{ bn: 'r1', n: 'ping', t: 1_700_000_000.5, vs: 'pong' }]);
    expect(responseTopicFor('m/d/c/ch/req')).toBe('m/d/c/ch/res');
    expect(responseTopicFor('channels/ch/messages/req')).toBe('channels/ch/messages/res');
  });
});

describe('guards', () => {
  const channels = [
    { id: 'c1', name: 'telemetry' },
    { id: 'c2', name: 'Commands' },
    { id: 'c3', name: 'x', metadata: { type: 'control' } },
  ];

  it('control channel: configured ID or name, else named or typed control/commands, else none', () => {
    expect(pickControlChannel(channels, 'c1')?.id).toBe('c1');
    expect(pickControlChannel(channels, 'telemetry')?.id).toBe('c1');
    expect(pickControlChannel(channels, 'nope')).toBeUndefined();
    expect(pickControlChannel(channels)?.id).toBe('c2');
    expect(pickControlChannel([channels[0]!, channels[2]!])?.id).toBe('c3');
    expect(pickControlChannel([channels[0]!])).toBeUndefined();
  });

  it('the command secret must match exactly; a missing token never matches', () => {
    const secret = Buffer.from('correct horse');
    expect(tokenMatches(secret, 'correct horse')).toBe(true);
    expect(tokenMatches(secret, 'correct horse ')).toBe(false);
    expect(tokenMatches(secret, 'correct')).toBe(false);
    expect(tokenMatches(secret, undefined)).toBe(false);
    expect(tokenMatches(Buffer.from(''), undefined)).toBe(false);
  });

  it('rate window: at most N per sliding minute', () => {
    const window = new RateWindow(2);
    expect([window.tryAcquire(0), window.tryAcquire(10), window.tryAcquire(20)]).toEqual([true, true, false]);
    expect(window.tryAcquire(59_999)).toBe(false);
    expect(window.tryAcquire(60_000)).toBe(true);
  });
});

const config = AgentConfigSchema.parse({ bootstrap: { url: 'http://user:pw@bootstrap.example:9013' }, control: { maxRequestsPerMinute: 100 } });
const device: DeviceConfig = {
  family: 'clients',
  mqtt: { url: 'mqtt://u:p@broker.example:1883', username: 'client-1', password: 'mqtt-password-value' },
  domainId: 'dom',
  channels: [{ id: 'ch-control', name: 'commands' }, { id: 'ch-data', name: 'telemetry' }],
  content: '{"mqtt":{"secret":"content-secret"}}',
  certs: {},
};

function harness(options: { secret?: string; now?: () => number } = {}) {
  const published: { topic: string; payload: string }[] = [];
  const fallback: string[] = [];
  const updates: string[] = [];
  const { logger, raw: logLines } = captureLogger('info');
  let generation: ControlGeneration = { id: 4, config: device, fetchedAt: new Date('2025-01-01T00:00:00Z') };
  const target: ControlTarget = {
    publish: async (topic, payload) => {
      published.push({ topic, payload });
    },
    requestUpdate: (reason) => updates.push(reason),
    status: () => ({ state: 'online', generation: 4 }),
    generation: () => generation,
  };
  const control = new RemoteControl({
    config,
    target,
    fallback: { handle: (m) => void fallback.push(m.topic) },
    logger,
    ...(options.secret ? { secret: Buffer.from(options.secret) } : {}),
    ...(options.now ? { now: options.now } : {}),
  });
  control.useGeneration(generation);
  const send = (payload: unknown, subtopic = 'req', channelId = 'ch-control') =>
    control.handle({ topic: `m/dom/c/${channelId}/${subtopic}`, channelId, subtopic, payload: typeof payload === 'string' ? Buffer.from(payload) : json(payload) });
  const answers = () => published.map((p) => ({ topic: p.topic, ...(JSON.parse(p.payload) as { vs: string; bn: string }[])[0]! }));
  const replaceGeneration = (next: ControlGeneration) => {
    generation = next;
  };
  return { send, answers, fallback, updates, logLines, replaceGeneration };
}

describe('RemoteControl', () => {
  it('answers control-channel requests on res and hands everything else to the fallback', async () => {
    const h = harness();
    await h.send([{ bn: 'a:', n: 'ping' }]);
    await h.send('anything', 'events');
    await h.send([{ bn: 'b:', n: 'ping' }], 'req', 'ch-data');
    expect(h.answers()).toEqual([{ topic: 'm/dom/c/ch-control/res', bn: 'a', n: 'ping', t: expect.any(Number), vs: 'pong' }]);
    expect(h.fallback).toEqual(['m/dom/c/ch-control/events', 'm/dom/c/ch-data/req']);
  });

  it('config view leaves out the MQTT password, the content and URL user info', async () => {
    const h = harness();
    await h.send([{ bn: 'v:', n: 'config', vs: 'view' }]);
    const answer = h.answers()[0]!;
    const view = JSON.parse(answer.vs);
    expect(view.device.mqtt).toEqual({ url: 'mqtt://broker.example:1883', username: 'client-1', password: '[redacted]' });
    expect(view.device.content).toEqual({ bytes: 36, value: '[redacted]' });
    expect(view.agent.bootstrap.url).toBe('http://bootstrap.example:9013/');
    for (const secret of ['mqtt-password-value', 'content-secret', 'pw@', 'u:p@']) expect(answer.vs).not.toContain(secret);
    await h.send([{ bn: 'w:', n: 'config', vs: 'save,x' }]);
    expect(h.answers()[1]?.vs).toBe('error: config supports only "view" (got "save")');
  });

  it('with a secret: refuses a missing or wrong token with the same answer, and never logs the token', async () => {
    const h = harness({ secret: 'the-command-secret' });
    await h.send([{ bn: '1:', n: 'ping' }]);
    await h.send([{ bn: '2:', n: 'ping' }, { n: 'token', vs: 'guess' }]);
    await h.send([{ bn: '3:', n: 'ping' }, { n: 'token', vs: 'the-command-secret' }]);
    expect(h.answers().map((a) => a.vs)).toEqual(['error: unauthorized', 'error: unauthorized', 'pong']);
    expect(h.logLines.join('')).not.toContain('the-command-secret');
    expect(h.logLines.join('')).not.toContain('guess');
  });

  it('bootstrap asks the runtime for a check at most once per cooldown', async () => {
    let now = 1_000_000;
    const h = harness({ now: () => now });
    await h.send([{ bn: '1:', n: 'bootstrap' }]);
    now += BOOTSTRAP_COOLDOWN_MS - 1;
    await h.send([{ bn: '2:', n: 'bootstrap' }]);
    now += 1;
    await h.send([{ bn: '3:', n: 'bootstrap' }]);
    expect(h.answers().map((a) => a.vs)).toEqual(['accepted', 'error: a bootstrap check was requested 30 s ago; try again in 1 s', 'accepted']);
    expect(h.updates).toEqual(['control', 'control']);
  });

  it('executeCommand: unknown commands name the known ones; help lists them; nothing is ever executed', () => {
    const context = { target: { publish: async () => undefined, requestUpdate: () => undefined, status: () => ({}), generation: () => undefined }, config, generation: undefined, now: 0, lastBootstrapAt: undefined };
    expect(executeCommand({ id: '1', command: 'exec', args: 'ls,-l' }, context)).toEqual({ ok: false, reason: 'unknown command "exec"; known: ping, status, bootstrap, config, help' });
    const help = executeCommand({ id: '1', command: 'help', args: '' }, context);
    expect(help.ok && JSON.parse(help.value).map((c: { name: string }) => c.name)).toEqual(['ping', 'status', 'bootstrap', 'config', 'help']);
    expect(executeCommand({ id: '1', command: 'config', args: 'view' }, context)).toMatchObject({ ok: true, value: expect.stringContaining('"device":null') });
  });

  it('follows a generation applied without a new session: the control channel moves with the configuration', async () => {
    const h = harness();
    const moved: DeviceConfig = { ...device, channels: [{ id: 'ch-data', name: 'telemetry' }, { id: 'ch-new', name: 'x', metadata: { type: 'commands' } }] };
    h.replaceGeneration({ id: 5, config: moved, fetchedAt: new Date() });
    await h.send([{ bn: 'old:', n: 'ping' }], 'req', 'ch-control');
    await h.send([{ bn: 'new:', n: 'config', vs: 'view' }], 'req', 'ch-new');
    expect(h.fallback).toEqual(['m/dom/c/ch-control/req']);
    expect(h.answers().map((a) => [a.topic, a.bn])).toEqual([['m/dom/c/ch-new/res', 'new']]);
    expect(JSON.parse(h.answers()[0]!.vs).generation).toBe(5);
  });

  it('without a control channel every message goes to the fallback, and that is logged once', async () => {
    const h = harness();
    const { logger, raw: logLines } = captureLogger('info');
    const control = new RemoteControl({
      config,
      target: { publish: async () => undefined, requestUpdate: () => undefined, status: () => ({}), generation: () => undefined },
      fallback: { handle: (m) => void h.fallback.push(m.topic) },
      logger,
    });
    const plain = { ...device, channels: [{ id: 'ch-data', name: 'telemetry' }] };
    control.useGeneration({ id: 1, config: plain, fetchedAt: new Date() });
    control.useGeneration({ id: 2, config: plain, fetchedAt: new Date() });
    await control.handle({ topic: 'm/dom/c/ch-data/req', channelId: 'ch-data', subtopic: 'req', payload: json([{ bn: '1:', n: 'ping' }]) });
    expect(h.fallback).toEqual(['m/dom/c/ch-data/req']);
    expect(logLines.filter((l) => l.includes('remote control is off'))).toHaveLength(1);
  });
});

describe('readControlSecret', () => {
  it('the systemd credential wins over control.secretFile; neither means no secret; a file others can read is refused', async () => {
    const { dir, cleanup } = makeTempDir('mgda-control-secret-');
    try {
      const file = join(dir, 'secret-file');
      writeFileSync(file, 'from-the-file\n', { mode: 0o600 });
      mkdirSync(join(dir, 'creds'));
      expect((await readControlSecret({ file, credentialsDirectory: join(dir, 'creds') }))?.toString()).toBe('from-the-file');
      writeFileSync(join(dir, 'creds', 'control_secret'), 'from-systemd', { mode: 0o400 });
      expect((await readControlSecret({ file, credentialsDirectory: join(dir, 'creds') }))?.toString()).toBe('from-systemd');
      expect(await readControlSecret({ credentialsDirectory: '' })).toBeUndefined();
      chmodSync(file, 0o644);
      const refused = await readControlSecret({ file }).catch((e: unknown) => e as AgentError);
      expect(refused).toMatchObject({ code: 'CONTROL_SECRET_INVALID', message: expect.stringContaining('chmod 600') });
      expect(String((refused as AgentError).message)).not.toContain('from-the-file');
    } finally {
      cleanup();
    }
  });
});
