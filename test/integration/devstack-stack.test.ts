import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it, onTestFinished } from 'vitest';
import { secureToken, decryptCfb } from '../../agent/bootstrap/crypto.js';
import { runDevStackCommand, EX_CONFIG, EX_USAGE } from '../../agent/devstack/main.js';
import { startDevStack } from '../../agent/devstack/stack.js';
import { K32_ENCRYPT_KEY } from '../helpers/agent-harness.js';
import { makeTempDir } from '../helpers/temp-dir.js';
import {
  activeResourceCounts,
  apiRequest,
  connectMqtt,
  nextMessage,
  rawRequest,
  settleResources,
  subscribe,
} from './devstack-helpers.js';

const HANDLE_KINDS = ['TCPServerWrap', 'TCPSocketWrap', 'Timeout'] as const;

/** Handle kinds of which more are open now than at the baseline. */
function aboveBaseline(now: Record<string, number>, baseline: Record<string, number>): Record<string, number> {
  return Object.fromEntries(Object.entries(now).filter(([kind, n]) => n > (baseline[kind] ?? 0)));
}

describe('dev stack', () => {
  it('runs the whole device flow (v0.30 content → MQTT) and closes without leaving a handle open', async () => {
    const baseline = await settleResources(activeResourceCounts(), HANDLE_KINDS);
    const stack = await startDevStack({ encryptKey: K32_ENCRYPT_KEY, responseFamily: 'v0.30' });
    const { domainId, userToken } = stack;

    const created = await apiRequest(stack.bootstrapUrl, 'POST', `/${domainId}/clients/configs`, userToken, {
      external_id: 'aa:bb:cc:00:00:01',
      external_key: 'device-key',
      channels: ['commands-ch', 'telemetry-ch'],
    });
    expect(created.status).toBe(201);
    const clientId = String(created.headers['location']).split('/').pop()!;
    expect((await apiRequest(stack.bootstrapUrl, 'PUT', `/${domainId}/clients/state/${clientId}`, userToken, { state: 1 })).status).toBe(200);

    const token = secureToken(Buffer.from(K32_ENCRYPT_KEY), 'device-key');
    const res = await rawRequest(stack.bootstrapUrl, '/clients/bootstrap/secure/aa:bb:cc:00:00:01', { headers: { Authorization: `Client ${token}` } });
    expect(res.status).toBe(200);
    const answer = JSON.parse(decryptCfb(Buffer.from(K32_ENCRYPT_KEY), res.body).toString('utf8')) as { content: string };
    const content = JSON.parse(answer.content) as {
      domain_id: string;
      mqtt: { url: string; client_id: string; secret: string };
      commands: { channel_id: string };
      telemetry: { channel_id: string };
    };
    expect(content.mqtt.url).toBe(stack.mqttUrl);
    expect(content.mqtt.client_id).toBe(clientId);
    expect(content.domain_id).toBe(domainId);
    expect([content.commands.channel_id, content.telemetry.channel_id]).toEqual(['commands-ch', 'telemetry-ch']);

    const device = await connectMqtt(content.mqtt.url, { username: content.mqtt.client_id, password: content.mqtt.secret });
    const commandTopic = `m/${content.domain_id}/c/${content.commands.channel_id}`;
    expect(await subscribe(device, commandTopic)).toBe(1);
    const command = nextMessage(device);
    await stack.broker.publish(commandTopic, '{"cmd":"ping"}', { qos: 1 });
    expect(await command).toMatchObject({ topic: commandTopic, payload: '{"cmd":"ping"}' });

    // Kick over HTTP reaches the broker.
    const gone = new Promise<void>((resolve) => device.once('close', () => resolve()));
    const kicked = await rawRequest(stack.bootstrapUrl, `/dev/clients/${clientId}/kick`, { method: 'POST' });
    expect(JSON.parse(kicked.body.toString())).toEqual({ client_id: clientId, sessions_closed: 1 });
    await gone;
    device.end(true);

    await stack.close();
    await stack.close();
    expect(aboveBaseline(await settleResources(baseline, HANDLE_KINDS), baseline)).toEqual({});
  });

  it('keeps its world in the persistence file across restarts', async () => {
    const { dir, cleanup } = makeTempDir('mgda-devstack-');
    onTestFinished(cleanup);
    const persistFile = join(dir, 'world.json');
    const first = await startDevStack({ encryptKey: K32_ENCRYPT_KEY, persistFile, userToken: 't', domainId: 'dom' });
    await apiRequest(first.bootstrapUrl, 'POST', '/dom/clients/configs', 't', { external_id: 'keep', external_key: 'k' });
    await first.close();

    const second = await startDevStack({ encryptKey: K32_ENCRYPT_KEY, persistFile, userToken: 't', domainId: 'dom' });
    onTestFinished(() => second.close());
    const res = await rawRequest(second.bootstrapUrl, '/clients/bootstrap/keep', { headers: { Authorization: 'Client k' } });
    expect(res.status).toBe(200);
  });

  it('closes what it started when the bootstrap port is taken', async () => {
    const holder = await startDevStack({ encryptKey: K32_ENCRYPT_KEY });
    onTestFinished(() => holder.close());
    const baseline = await settleResources(activeResourceCounts(), HANDLE_KINDS);
    await expect(startDevStack({ encryptKey: K32_ENCRYPT_KEY, bootstrapPort: holder.bootstrap.port })).rejects.toThrow(/could not listen/);
    expect(aboveBaseline(await settleResources(baseline, HANDLE_KINDS), baseline)).toEqual({});
  });
});

describe('dev-stack command', () => {
  function capture(): { lines: string[]; errors: string[]; out: (l: string) => void; err: (l: string) => void } {
    const lines: string[] = [];
    const errors: string[] = [];
    return { lines, errors, out: (l) => lines.push(l), err: (l) => errors.push(l) };
  }

  it('prints URLs, domain and token, serves until stopped, then resolves 0', async () => {
    const io = capture();
    const stop = new AbortController();
    let healthStatus = 0;
    const exit = runDevStackCommand(['--bootstrap-port', '0', '--mqtt-port=0', '--family', 'v0.30', '--domain-id', 'my-domain'], {
      ...io,
      env: { MG_BOOTSTRAP_ENCRYPT_KEY: K32_ENCRYPT_KEY },
      signal: stop.signal,
      onStarted: ({ bootstrapUrl }) => {
        void rawRequest(bootstrapUrl, '/health').then((r) => {
          healthStatus = r.status;
          stop.abort();
        });
      },
    });
    expect(await exit).toBe(0);
    expect(healthStatus).toBe(200);
    const text = io.lines.join('\n');
    expect(text).toMatch(/bootstrap: +http:\/\/127\.0\.0\.1:\d+ +\(family v0\.30\)/);
    expect(text).toMatch(/mqtt: +mqtt:\/\/127\.0\.0\.1:\d+/);
    expect(text).toContain('domain:     my-domain');
    expect(text).toMatch(/user token: \S+/);
    // The key came from the environment: it is not printed.
    expect(text).not.toContain(K32_ENCRYPT_KEY);
    expect(io.lines.at(-1)).toBe('dev stack stopped');
  });

  it('generates a 32-character key when none is given, prints it once, and serves secure bootstrap with it', async () => {
    const io = capture();
    const stop = new AbortController();
    let secureStatus = 0;
    const exit = runDevStackCommand(['--bootstrap-port', '0', '--mqtt-port', '0', '--user-token', 'tok', '--domain-id', 'd'], {
      ...io,
      env: {},
      signal: stop.signal,
      onStarted: ({ bootstrapUrl }) => {
        void (async () => {
          const keyLine = io.lines.find((l) => l.startsWith('encryption key'));
          const key = keyLine?.split(': ').pop() ?? '';
          await apiRequest(bootstrapUrl, 'POST', '/d/clients/configs', 'tok', { external_id: 'g', external_key: 'k' });
          const res = await rawRequest(bootstrapUrl, '/clients/bootstrap/secure/g', {
            headers: { Authorization: `Client ${secureToken(Buffer.from(key), 'k')}` },
          });
          secureStatus = res.status;
        })().finally(() => stop.abort());
      },
    });
    expect(await exit).toBe(0);
    const keyLines = io.lines.filter((l) => l.startsWith('encryption key'));
    expect(keyLines).toHaveLength(1);
    expect(keyLines[0]!.split(': ').pop()).toMatch(/^[A-Za-z0-9_-]{32}$/);
    expect(secureStatus).toBe(200);
  });

  it('stops on SIGTERM and removes its signal handlers', async () => {
    const io = capture();
    const before = process.listenerCount('SIGTERM');
    const exit = runDevStackCommand(['--bootstrap-port', '0', '--mqtt-port', '0'], {
      ...io,
      env: { MG_BOOTSTRAP_ENCRYPT_KEY: K32_ENCRYPT_KEY },
      onStarted: () => setImmediate(() => process.kill(process.pid, 'SIGTERM')),
    });
    expect(await exit).toBe(0);
    expect(process.listenerCount('SIGTERM')).toBe(before);
  });

  it('reads the key from --encrypt-key-file and refuses a key of the wrong length without printing it', async () => {
    const { dir, cleanup } = makeTempDir('mgda-devstack-');
    onTestFinished(cleanup);
    const badFile = join(dir, 'bad.key');
    writeFileSync(badFile, 'short-key-value\n');
    const io = capture();
    expect(await runDevStackCommand(['--encrypt-key-file', badFile, '--bootstrap-port', '0', '--mqtt-port', '0'], { ...io, env: {} })).toBe(EX_CONFIG);
    expect(io.errors.join('\n')).toMatch(/16, 24 or 32 bytes/);
    expect(io.errors.join('\n')).not.toContain('short-key-value');

    const goodFile = join(dir, 'good.key');
    writeFileSync(goodFile, 'MG_BS_KEY_16byte\n');
    const stop = new AbortController();
    const ok = capture();
    const exit = runDevStackCommand(['--encrypt-key-file', goodFile, '--bootstrap-port', '0', '--mqtt-port', '0'], {
      ...ok,
      env: {},
      signal: stop.signal,
      onStarted: () => stop.abort(),
    });
    expect(await exit).toBe(0);
  });

  it('rejects unknown options and bad values with usage (64)', async () => {
    for (const argv of [['--bogus', '1'], ['--family', 'v0.99'], ['--mqtt-port', '70000'], ['--state']]) {
      const io = capture();
      expect(await runDevStackCommand(argv, { ...io, env: { MG_BOOTSTRAP_ENCRYPT_KEY: K32_ENCRYPT_KEY } }), argv.join(' ')).toBe(EX_USAGE);
      expect(io.errors[0]).toMatch(/^dev-stack: /);
    }
    const help = capture();
    expect(await runDevStackCommand(['--help'], help)).toBe(0);
    expect(help.lines.join('\n')).toContain('--encrypt-key-file');
  });
});
