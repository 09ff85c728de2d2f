import { existsSync, readFileSync, readdirSync, readlinkSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import type { AgentProcess } from '../../agent/devstack/agent-process.js';
import { faultAlways } from '../../agent/devstack/faults.js';
import { cleanAgentEnv, registerDevice, writeDeviceFiles, type DeviceFiles, type RegisteredDevice } from '../../agent/devstack/scenario.js';
import type { DevStack } from '../../agent/devstack/stack.js';
import { StatusFileSchema } from '../../agent/lifecycle/status-file.js';
import { createDevChannel, onlineWith, randomExternalId, runAgentProcess, startStack, tempWorkDir, useTeardown, waitForLineFrom } from '../helpers/agent-harness.js';
import { FaultProxy } from '../helpers/fault-proxy.js';
import { notifyToolsMissing, startNotifyListener, type NotifyListener } from '../helpers/notify-listener.js';

/*
 * The real built agent over its lifetime: what systemd hears on a real NOTIFY_SOCKET, what the
 * status file says, how configuration changes are applied while it runs (SIGHUP, schedule), what a
 * crash loop and a torn state directory do to it, and that commands sent while it was away arrive.
 */

const missingTools = notifyToolsMissing();
const onCi = process.env.CI === 'true';
if (missingTools.length > 0 && !onCi) {
  console.warn(`\n!!! SKIPPING the NOTIFY_SOCKET tests of the real agent: missing ${missingTools.join(', ')}. Under CI=true this is a failure. !!!\n`);
}
const itNotify = missingTools.length > 0 && !onCi ? it.skip : it;

const t = useTeardown();

function content(s: DevStack, extra: Record<string, unknown> = {}, brokerUrl = s.mqttUrl): string {
  return JSON.stringify({ agent: { mqtt: { url: brokerUrl } }, domain_id: s.domainId, ...extra });
}

/** The device's agent.json and key file, in `dir` (default: a fresh directory the teardown removes). */
function deviceFiles(s: DevStack, device: RegisteredDevice, config?: Record<string, Record<string, unknown>>, dir = tempWorkDir(t, 'mgda-life-')): DeviceFiles {
  return writeDeviceFiles(dir, { externalId: device.externalId, bootstrapUrl: s.bootstrapUrl, externalKey: device.externalKey, ...(config ? { config } : {}) });
}

function run(configFile: string, env: NodeJS.ProcessEnv = {}): AgentProcess {
  return runAgentProcess(t, ['run', '--config', configFile], { env: cleanAgentEnv(env) });
}

/** Sessions the broker accepted for this client (each CONNECT that got CONNACK 0). */
function countConnects(s: DevStack, clientId: string): () => number {
  let n = 0;
  s.broker.events.on('clientConnected', (info: { username: string }) => {
    if (info.username === clientId) n++;
  });
  return () => n;
}

/** The operator's side, through the real management API. */
async function manage(s: DevStack, method: 'PUT' | 'POST', path: string, body: unknown): Promise<void> {
  const res = await fetch(`${s.bootstrapUrl}/${s.domainId}${path}`, {
    method,
    headers: { 'content-type': 'application/json', authorization: `Bearer ${s.userToken}` },
    body: JSON.stringify(body),
  });
  if (res.status !== 200) throw new Error(`${method} ${path}: ${res.status} ${await res.text()}`);
}

function updateContent(s: DevStack, device: RegisteredDevice, text: string): Promise<void> {
  return manage(s, 'PUT', `/clients/configs/${device.clientId}`, { name: `device ${device.externalId}`, content: text });
}

async function listener(): Promise<NotifyListener> {
  const l = await startNotifyListener(tempWorkDir(t, 'mgda-life-'));
  t.add(() => l.close());
  return l;
}

describe('systemd hears the truth (real NOTIFY_SOCKET, real agent)', () => {
  itNotify('READY=1 only once online, STATUS= on the way, WATCHDOG=1 at half of WATCHDOG_USEC, STOPPING=1 on SIGTERM', async () => {
    const s = await startStack(t);
    const device = await registerDevice(s, { externalId: randomExternalId(), enable: true });
    const files = deviceFiles(s, device);
    const notify = await listener();
    const agent = run(files.configFile, { NOTIFY_SOCKET: notify.socketPath, WATCHDOG_USEC: '1000000' });

    await notify.waitFor((m) => m.some((x) => x.lines.includes('READY=1')), 15_000, 'READY=1');
    const online = await agent.waitFor(onlineWith(2), 5_000, 'online');
    const ready = notify.with('READY=1');
    expect(ready).toHaveLength(1);
    expect(ready[0]?.lines).toContain('STATUS=online: 2/2 channels');
    expect(ready[0]?.at).toBeGreaterThanOrEqual(Date.parse(String(online['time'])) - 5); // not before it was online
    const statusesBefore = notify.messages.slice(0, notify.messages.indexOf(ready[0] as (typeof ready)[number])).flatMap((m) => m.lines);
    expect(statusesBefore).toEqual(expect.arrayContaining(['STATUS=bootstrapping', 'STATUS=connecting: generation 1']));

    const pingsAt = notify.with('WATCHDOG=1').length;
    await sleep(2_200);
    const pings = notify.with('WATCHDOG=1').length - pingsAt;
    expect(pings).toBeGreaterThanOrEqual(2); // every 500 ms; a busy machine coalesces a few
    expect(pings).toBeLessThanOrEqual(6);

    expect((await agent.stop()).code).toBe(0);
    await notify.waitFor((m) => m.some((x) => x.lines.includes('STOPPING=1')), 5_000, 'STOPPING=1');
    expect(notify.with('READY=1')).toHaveLength(1);
  });

  itNotify('no configuration and Bootstrap unreachable: no READY=1 (STATUS says why) until the first connection', async () => {
    const s = await startStack(t);
    const device = await registerDevice(s, { externalId: randomExternalId(), enable: true });
    s.bootstrap.setFault(faultAlways({ kind: 'status', status: 503 }));
    const files = deviceFiles(s, device);
    const notify = await listener();
    const agent = run(files.configFile, { NOTIFY_SOCKET: notify.socketPath });
    await agent.waitFor((l) => l['code'] === 'BOOTSTRAP_SERVER_ERROR' && Number(l['attempt']) >= 2, 10_000, 'two failed attempts');
    await notify.waitFor((m) => m.some((x) => x.lines.some((l) => l.startsWith('STATUS=waiting: bootstrap failed (BOOTSTRAP_SERVER_ERROR)'))), 5_000, 'a waiting STATUS');
    expect(notify.with('READY=1')).toHaveLength(0);
    s.bootstrap.setFault(undefined);
    await notify.waitFor((m) => m.some((x) => x.lines.includes('READY=1')), 15_000, 'READY=1 once online');
  });

  itNotify('a stored configuration and the broker unreachable: READY=1 saying it runs on the stored generation', async () => {
    const s = await startStack(t);
    const proxy = await FaultProxy.start({ host: '127.0.0.1', port: s.broker.port });
    t.add(() => proxy.close());
    const device = await registerDevice(s, { externalId: randomExternalId(), enable: true, content: content(s, {}, `mqtt://127.0.0.1:${proxy.port}`) });
    const files = deviceFiles(s, device);
    const first = run(files.configFile);
    await first.waitFor(onlineWith(2), 15_000, 'online');
    expect((await first.stop()).code).toBe(0);

    await proxy.setMode('down');
    const notify = await listener();
    const second = run(files.configFile, { NOTIFY_SOCKET: notify.socketPath });
    await notify.waitFor((m) => m.some((x) => x.lines.includes('READY=1')), 15_000, 'READY=1 while offline');
    expect(notify.with('READY=1')[0]?.lines).toContain('STATUS=offline: running on stored generation 1; broker unreachable (MQTT_NETWORK), retrying');
    await proxy.setMode('pass');
    await second.waitFor(onlineWith(2), 15_000, 'online once the broker is back');
    expect(notify.with('READY=1')).toHaveLength(1);
  });
});

describe('explicit requests', () => {
  it('SIGHUP while waiting out a long broker backoff: the connection is retried at once, not when the backoff ends', async () => {
    const s = await startStack(t);
    const proxy = await FaultProxy.start({ host: '127.0.0.1', port: s.broker.port });
    t.add(() => proxy.close());
    const device = await registerDevice(s, { externalId: randomExternalId(), enable: true, content: content(s, {}, `mqtt://127.0.0.1:${proxy.port}`) });
    const files = deviceFiles(s, device, { retry: { initialDelayMs: 60_000, maxDelayMs: 120_000 } });
    const agent = run(files.configFile);
    await agent.waitFor(onlineWith(2), 15_000, 'online');
    await proxy.setMode('down');
    const lost = await agent.waitFor((l) => l['stage'] === 'connection' && Number(l['retryInMs']) > 0, 15_000, 'the connection lost, with a backoff');
    const waiting = Number(lost['retryInMs']);
    await proxy.setMode('pass');
    const from = agent.lines.length;
    const hupAt = Date.now();
    agent.child.kill('SIGHUP');
    await waitForLineFrom(agent, from, onlineWith(2), 'online again after SIGHUP', 10_000);
    const took = Date.now() - hupAt;
    // Full jitter on a 60 s first step can be short by chance; the test means something only if it was not.
    expect(took).toBeLessThan(Math.max(waiting - 1_000, 5_000));
  });
});

describe('configuration changes while running', () => {
  function hook(dir: string): { program: string; out: string } {
    const program = join(dir, 'on-apply.sh');
    const out = join(dir, 'hook-out');
    writeFileSync(program, '#!/bin/sh\nmkdir -p "$1"\nenv | grep "^MG_AGENT_" | sort > "$1/env-$MG_AGENT_GENERATION"\necho "reloaded generation $MG_AGENT_GENERATION"\n', { mode: 0o755 });
    return { program, out };
  }

  function readEnv(file: string): Record<string, string> {
    return Object.fromEntries(
      readFileSync(file, 'utf8')
        .trim()
        .split('\n')
        .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]),
    );
  }

  itNotify('SIGHUP, content changed: RELOADING=1 then READY=1, file rewritten, no reconnect, onApply run with the paths', async () => {
    const s = await startStack(t);
    const device = await registerDevice(s, { externalId: randomExternalId(), enable: true, content: content(s, { version: 1 }) });
    const connects = countConnects(s, device.clientId);
    const dir = tempWorkDir(t, 'mgda-life-');
    const { program, out } = hook(dir);
    const files = deviceFiles(s, device, { updates: { onApply: [program, out] } }, dir);
    const notify = await listener();
    const agent = run(files.configFile, { NOTIFY_SOCKET: notify.socketPath, MG_AGENT_BOOTSTRAP_ENCRYPT_KEY: 'never-in-the-hook-env-xxxxxxxxxx' });
    await agent.waitFor(onlineWith(2), 15_000, 'online');
    await agent.waitForMessage('onApply finished'); // the first configuration is an applied change too
    expect(readEnv(join(out, 'env-1'))['MG_AGENT_CHANGE']).toBe('initial');

    await updateContent(s, device, content(s, { version: 2 }));
    const from = agent.lines.length;
    agent.child.kill('SIGHUP');
    await waitForLineFrom(agent, from, (l) => String(l.msg).includes('applied without reconnecting'), 'applied live');
    await waitForLineFrom(agent, from, (l) => l.msg === 'onApply finished', 'onApply after the change');

    const current = join(files.stateDir, 'current');
    expect(readlinkSync(current)).toBe('generations/000002');
    expect(JSON.parse(readFileSync(join(current, 'content'), 'utf8')).version).toBe(2);
    expect(connects()).toBe(1);
    const env = readEnv(join(out, 'env-2'));
    expect(env).toEqual({
      MG_AGENT_CHANGE: 'content',
      MG_AGENT_CONTENT_FILE: join(files.stateDir, 'generations', '000002', 'content'),
      MG_AGENT_GENERATION: '2',
    });
    expect(agent.lines.some((l) => l.msg === 'onApply stdout: reloaded generation 2')).toBe(true);

    await notify.waitFor((m) => m.filter((x) => x.lines.includes('READY=1')).length === 2, 10_000, 'READY=1 after the reload');
    const reloading = notify.with('RELOADING=1');
    expect(reloading).toHaveLength(1);
    expect(reloading[0]?.lines.some((l) => /^MONOTONIC_USEC=\d+$/.test(l))).toBe(true);
    const order = notify.messages.filter((m) => m.lines.includes('RELOADING=1') || m.lines.includes('READY=1')).map((m) => (m.lines.includes('READY=1') ? 'READY' : 'RELOADING'));
    expect(order).toEqual(['READY', 'RELOADING', 'READY']);
  });

  it('a channel connected by the operator: subscribed on the live session at the next periodic check', async () => {
    const s = await startStack(t);
    const device = await registerDevice(s, { externalId: randomExternalId(), enable: true });
    const connects = countConnects(s, device.clientId);
    const files = deviceFiles(s, device, { updates: { checkIntervalMs: 1_500 } });
    const agent = run(files.configFile);
    await agent.waitFor(onlineWith(2), 15_000, 'online');
    const alerts = await createDevChannel(s, 'alerts');
    const subscribed = new Promise<string>((resolve) =>
      s.broker.events.on('subscribed', (e: { username: string; topic: string }) => {
        if (e.username === device.clientId && e.topic.includes(alerts)) resolve(e.topic);
      }),
    );
    await manage(s, 'PUT', `/clients/configs/connections/${device.clientId}`, { channels: [...device.channelIds, alerts] });
    await agent.waitFor(onlineWith(3), 10_000, 'three channels without a restart');
    expect(await subscribed).toBe(`m/${s.domainId}/c/${alerts}/#`);
    expect(connects()).toBe(1);
    expect(readlinkSync(join(files.stateDir, 'current'))).toBe('generations/000002');
  });

  it('SIGHUP after the secret was rotated (session still up): a new session with the new secret, then promoted', async () => {
    const s = await startStack(t);
    const device = await registerDevice(s, { externalId: randomExternalId(), enable: true });
    const connects = countConnects(s, device.clientId);
    const files = deviceFiles(s, device);
    const agent = run(files.configFile);
    await agent.waitFor(onlineWith(2), 15_000, 'online');
    const rotated = await fetch(`${s.bootstrapUrl}/dev/clients/${device.clientId}/secret`, { method: 'POST' });
    const newSecret = ((await rotated.json()) as { client_secret: string }).client_secret;
    const from = agent.lines.length;
    agent.child.kill('SIGHUP');
    await waitForLineFrom(agent, from, (l) => l.msg === 'broker accepted the configuration; generation promoted', 'promoted');
    await waitForLineFrom(agent, from, onlineWith(2), 'online again');
    expect(connects()).toBe(2);
    expect(s.broker.sessions().filter((x) => x.username === device.clientId)).toHaveLength(1);
    expect(readlinkSync(join(files.stateDir, 'current'))).toBe('generations/000002');
    expect(agent.output).not.toContain(newSecret);
  });
});

describe('status file', () => {
  it('status.json: 0644, the shared schema, online with channels and a broker URL without credentials; "stopped" at the end', async () => {
    const s = await startStack(t);
    const device = await registerDevice(s, { externalId: randomExternalId(), enable: true });
    const files = deviceFiles(s, device);
    const agent = run(files.configFile);
    await agent.waitFor(onlineWith(2), 15_000, 'online');
    const path = join(files.stateDir, 'status.json');
    const read = () => StatusFileSchema.parse(JSON.parse(readFileSync(path, 'utf8')));
    for (let i = 0; i < 100 && !(existsSync(path) && read().state === 'online'); i++) await sleep(50);
    expect(statSync(path).mode & 0o777).toBe(0o644);
    const status = read();
    expect(status).toMatchObject({
      pid: agent.child.pid,
      state: 'online',
      generation: 1,
      externalId: device.externalId,
      lastBootstrap: { ok: true },
      connection: { broker: expect.stringContaining(s.mqttUrl), connected: true },
    });
    expect([...(status.channels?.subscribed ?? [])].sort()).toEqual([...device.channelIds].sort());
    const text = readFileSync(path, 'utf8');
    const secret = s.registry.getClient(device.clientId)?.secret as string;
    expect(text).not.toContain(secret);
    expect(text).not.toContain(device.externalKey);
    expect((await agent.stop()).code).toBe(0);
    expect(read()).toMatchObject({ state: 'stopped', connection: { connected: false } });
  });

  it('a second agent on the same state directory refuses to start, naming the one running; after that one stops it starts', async () => {
    const s = await startStack(t);
    const device = await registerDevice(s, { externalId: randomExternalId(), enable: true });
    const connects = countConnects(s, device.clientId);
    const files = deviceFiles(s, device);
    const first = run(files.configFile);
    await first.waitFor(onlineWith(2), 15_000, 'online');
    const statusPath = join(files.stateDir, 'status.json');
    for (let i = 0; i < 100 && !readFileSync(statusPath, 'utf8').includes('"online"'); i++) await sleep(50);

    const second = run(files.configFile);
    expect((await second.exited).code).toBe(1);
    const refusal = second.lines.filter((l) => l.level === 'fatal');
    expect(refusal).toHaveLength(1);
    expect(refusal[0]).toMatchObject({ code: 'STORAGE_STATE_DIR_IN_USE', otherPid: first.child.pid });
    expect(String(refusal[0]?.msg)).toContain(`another agent (pid ${first.child.pid}) is running on ${files.stateDir}`);
    expect(connects()).toBe(1); // the first agent's session was never disturbed
    expect(first.child.exitCode).toBeNull();

    expect((await first.stop()).code).toBe(0);
    const third = run(files.configFile);
    await third.waitFor(onlineWith(2), 15_000, 'online after the first one stopped');
  });
});

describe('restarts and power cuts', () => {
  it('a crash loop resumes the backoff it was in; the streak is forgotten once a connection stays up', async () => {
    const s = await startStack(t);
    const device = await registerDevice(s, { externalId: randomExternalId(), enable: true });
    s.bootstrap.setFault(faultAlways({ kind: 'status', status: 502 }));
    const files = deviceFiles(s, device, { retry: { initialDelayMs: 100, maxDelayMs: 2_000 } });
    const backoffFile = join(files.stateDir, 'backoff.json');
    const first = run(files.configFile);
    await first.waitFor((l) => l['code'] === 'BOOTSTRAP_SERVER_ERROR' && Number(l['attempt']) >= 4, 15_000, 'four failures');
    first.child.kill('SIGKILL'); // a crash: no chance to clean up
    await first.exited;
    const persisted = JSON.parse(readFileSync(backoffFile, 'utf8')) as { counts: { transient: number }; last: string };
    expect(persisted.last).toBe('transient');
    expect(persisted.counts.transient).toBeGreaterThanOrEqual(4);
    expect(statSync(backoffFile).mode & 0o777).toBe(0o600);

    const second = run(files.configFile);
    const resumed = await second.waitForMessage('resuming the backoff from before the restart', 10_000);
    expect(resumed['failures']).toBe(persisted.counts.transient);
    const next = await second.waitFor((l) => l['code'] === 'BOOTSTRAP_SERVER_ERROR', 15_000, 'the next failure');
    expect(Number(next['attempt'])).toBe(persisted.counts.transient + 1); // counting on, not from 1

    s.bootstrap.setFault(undefined);
    await second.waitFor(onlineWith(2), 15_000, 'online');
    // Stable for min(maxDelayMs, 60 s) = 2 s: the streak is over and the file goes.
    for (let i = 0; i < 100 && existsSync(backoffFile); i++) await sleep(50);
    expect(existsSync(backoffFile)).toBe(false);
  });

  it('a torn current generation at start-up: moved aside, logged once, back on the previous one, then refreshed', async () => {
    const s = await startStack(t);
    const device = await registerDevice(s, { externalId: randomExternalId(), enable: true, content: content(s, { version: 1 }) });
    const files = deviceFiles(s, device);
    const first = run(files.configFile);
    await first.waitFor(onlineWith(2), 15_000, 'online');
    await updateContent(s, device, content(s, { version: 2 }));
    first.child.kill('SIGHUP');
    await first.waitFor((l) => String(l.msg).includes('applied without reconnecting'), 10_000, 'generation 2');
    expect((await first.stop()).code).toBe(0);

    // A power cut left generation 2's content as zeros (the page never reached the card).
    const torn = join(files.stateDir, 'generations', '000002', 'content');
    writeFileSync(torn, Buffer.alloc(statSync(torn).size));
    const second = run(files.configFile);
    const damaged = await second.waitFor((l) => String(l.msg).startsWith('generation 2 is damaged'), 10_000, 'the damage reported');
    expect(damaged.msg).toContain('using generation 1 instead');
    await second.waitFor(onlineWith(2), 15_000, 'online on generation 1');
    // The background refresh brings the server's configuration back as a new generation.
    await second.waitFor((l) => String(l.msg).includes('applied without reconnecting'), 15_000, 'refreshed');
    expect(readlinkSync(join(files.stateDir, 'current'))).toBe('generations/000003');
    expect(JSON.parse(readFileSync(join(files.stateDir, 'current', 'content'), 'utf8')).version).toBe(2);
    expect(readdirSync(join(files.stateDir, 'damaged'))).toHaveLength(1);
    expect(second.lines.filter((l) => String(l.msg).includes('is damaged'))).toHaveLength(1);
  });

  it('commands sent while the agent was stopped are delivered when it comes back (persistent session, QoS 1)', async () => {
    const s = await startStack(t);
    const device = await registerDevice(s, { externalId: randomExternalId(), enable: true });
    const files = deviceFiles(s, device);
    const first = run(files.configFile);
    await first.waitFor(onlineWith(2), 15_000, 'online');
    expect((await first.stop()).code).toBe(0);

    const topic = `m/${s.domainId}/c/${device.channelIds[0]}/commands/reboot`;
    await s.broker.publish(topic, 'reboot-now', { qos: 1 });
    const second = run(files.configFile);
    const received = await second.waitFor((l) => l.msg === 'message received' && l['topic'] === topic, 15_000, 'the queued command');
    expect(received['bytes']).toBe('reboot-now'.length);
  });
});
