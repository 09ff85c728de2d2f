import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import type { DevStack } from '../../agent/devstack/stack.js';
import { registerDevice, writeDeviceFiles, type RegisteredDevice } from '../../agent/devstack/scenario.js';
import { connectObserver } from '../helpers/aedes-broker.js';
import { expectNoSecretsIn, onlineWith, randomExternalId, runAgentProcess, startStack, tempWorkDir, useTeardown } from '../helpers/agent-harness.js';

/*
 * Remote control end to end: the real agent online at the dev stack, an operator's MQTT client on the
 * control channel publishing SenML requests on `req` and reading the answers on `res`, exactly as
 * upstream Magistrala tooling does.
 */

const t = useTeardown();

interface Answer {
  bn: string;
  n: string;
  t: number;
  vs: string;
}

/** A registered, enabled device whose agent is online; `control` gives the control.* settings for its directory. */
async function onlineAgent(stack: DevStack, control: (dir: string) => Record<string, unknown> = () => ({})) {
  const device = await registerDevice(stack, { externalId: randomExternalId('rc'), enable: true });
  const dir = tempWorkDir(t, 'mgda-rc-');
  const files = writeDeviceFiles(dir, {
    externalId: device.externalId,
    bootstrapUrl: stack.bootstrapUrl,
    externalKey: device.externalKey,
    config: { control: control(dir) },
  });
  const agent = runAgentProcess(t, ['run', '--config', files.configFile]);
  await agent.waitFor(onlineWith(2), 20_000, 'online');
  return { device, agent };
}

/** An operator's client connected to the control channel: publishes on req, collects answers from res. */
async function operatorClient(stack: DevStack, device: RegisteredDevice) {
  const operator = stack.registry.addClient({ domainId: stack.domainId, name: 'operator console' });
  if (!operator.ok) throw new Error(operator.message);
  const controlChannel = device.channelIds[0] as string; // "commands"
  for (const channel of device.channelIds) stack.registry.connect(operator.value.id, channel);
  const client = await connectObserver(stack.mqttUrl, { username: operator.value.id, password: operator.value.secret });
  t.add(() => client.closeNow());
  const base = `m/${stack.domainId}/c/${controlChannel}`;
  const answers: Answer[] = [];
  const waiters: { id: string; resolve: (a: Answer) => void }[] = [];
  client.on('message', (topic, payload) => {
    if (topic !== `${base}/res`) return;
    for (const answer of JSON.parse(payload.toString('utf8')) as Answer[]) {
      answers.push(answer);
      waiters.filter((w) => w.id === answer.bn).forEach((w) => w.resolve(answer));
    }
  });
  await client.subscribeAsync(`${base}/res`, { qos: 1 });
  const send = (payload: string, topic = `${base}/req`) => client.publishAsync(topic, payload, { qos: 1 });
  const ask = async (id: string, payload: unknown): Promise<Answer> => {
    const answered = new Promise<Answer>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no answer to ${id}; answers so far: ${JSON.stringify(answers)}`)), 8_000);
      waiters.push({ id, resolve: (a) => (clearTimeout(timer), resolve(a)) });
    });
    await send(typeof payload === 'string' ? payload : JSON.stringify(payload));
    return answered;
  };
  return { ask, send, answers, base };
}

describe('remote control over the control channel', () => {
  it('ping, status, config view, bootstrap (once per 30 s), unknown, malformed; other messages are only logged', async () => {
    const stack = await startStack(t);
    const { device, agent } = await onlineAgent(stack);
    const op = await operatorClient(stack, device);
    const secret = stack.registry.getClient(device.clientId)?.secret as string;

    const pong = await op.ask('req-1', [{ bn: 'req-1:', n: 'ping' }]);
    expect(pong).toMatchObject({ bn: 'req-1', n: 'ping', vs: 'pong' });
    expect(Math.abs(pong.t - Date.now() / 1000)).toBeLessThan(60); // SenML time: seconds since the epoch

    const status = await op.ask('9f1c2d7e-5b3a-4c8e-a1d2-3e4f5a6b7c8d', [{ bn: '9f1c2d7e-5b3a-4c8e-a1d2-3e4f5a6b7c8d:', n: 'status' }]);
    const snapshot = JSON.parse(status.vs);
    expect(snapshot.state).toBe('online');
    expect(snapshot.generation).toBe(1);
    expect(snapshot.externalId).toBe(device.externalId);
    expect([...snapshot.channels.subscribed].sort()).toEqual([...device.channelIds].sort());
    expect(snapshot.connection.connected).toBe(true);

    const view = await op.ask('req-3', [{ bn: 'req-3:', n: 'config', vs: 'view' }]);
    const config = JSON.parse(view.vs);
    expect(config.generation).toBe(1);
    expect(config.device.mqtt).toEqual({ url: stack.mqttUrl, username: device.clientId, password: '[redacted]' });
    expect(config.device.content.value).toBe('[redacted]');
    expect(config.agent.bootstrap.url).toBe(`${stack.bootstrapUrl}/`);
    expect(config.agent.control.enabled).toBe(true);

    const checksBefore = stack.bootstrap.requests.length;
    const accepted = await op.ask('req-4', [{ bn: 'req-4:', n: 'bootstrap' }]);
    expect(accepted.vs).toBe('accepted');
    await agent.waitFor((l) => l.msg === 'configuration check requested' && l['reason'] === 'control', 5_000, 'check requested');
    await agent.waitForMessage('configuration is up to date', 10_000);
    expect(stack.bootstrap.requests.length).toBe(checksBefore + 1);
    const tooSoon = await op.ask('req-5', [{ bn: 'req-5:', n: 'bootstrap' }]);
    expect(tooSoon.vs).toMatch(/^error: a bootstrap check was requested \d+ s ago; try again in \d+ s$/);

    const unknown = await op.ask('req-6', [{ bn: 'req-6:', n: 'exec', vs: 'rm,-rf,/' }]);
    expect(unknown).toMatchObject({ bn: 'req-6', n: 'exec' });
    expect(unknown.vs).toBe('error: unknown command "exec"; known: ping, status, bootstrap, config, help');

    const badArgs = await op.ask('req-7', [{ bn: 'req-7:', n: 'ping', vs: 5 }]);
    expect(badArgs.vs).toMatch(/^error: malformed request: "vs" must be a string/);

    // No request ID to answer: only a log line. The ping after it is the next answer on `res`.
    const answeredSoFar = op.answers.length;
    await op.send('this is not SenML');
    await op.send('hello', `m/${stack.domainId}/c/${device.channelIds[1]}/req`); // telemetry channel: not control
    const after = await op.ask('req-8', [{ bn: 'req-8:', n: 'ping' }]);
    expect(after.vs).toBe('pong');
    expect(op.answers.slice(answeredSoFar).map((a) => a.bn)).toEqual(['req-8']);
    await agent.waitForMessage('malformed control request: request is not JSON', 5_000);
    await agent.waitFor((l) => l.msg === 'message received' && l['topic'] === `m/${stack.domainId}/c/${device.channelIds[1]}/req`, 5_000, 'fallback log');

    expectNoSecretsIn(JSON.stringify(op.answers), [device.externalKey, secret]);
    expectNoSecretsIn(agent.output, [device.externalKey, secret]);
  });

  it('with a command secret: missing and wrong tokens are refused, the right one is served; over the rate limit requests are dropped', async () => {
    const stack = await startStack(t);
    const commandSecret = `cmd-${randomBytes(12).toString('hex')}`;
    const { device, agent } = await onlineAgent(stack, (dir) => {
      const secretFile = join(dir, 'control_secret');
      writeFileSync(secretFile, `${commandSecret}\n`, { mode: 0o600 });
      return { secretFile, maxRequestsPerMinute: 4 };
    });
    const op = await operatorClient(stack, device);

    const missing = await op.ask('s-1', [{ bn: 's-1:', n: 'ping' }]);
    expect(missing.vs).toBe('error: unauthorized');
    const wrong = await op.ask('s-2', [{ bn: 's-2:', n: 'ping' }, { n: 'token', vs: `${commandSecret}x` }]);
    expect(wrong.vs).toBe('error: unauthorized');
    const right = await op.ask('s-3', [{ bn: 's-3:', n: 'ping' }, { n: 'token', vs: commandSecret }]);
    expect(right.vs).toBe('pong');
    const fourth = await op.ask('s-4', [{ bn: 's-4:', n: 'status' }, { n: 'token', vs: commandSecret }]);
    expect(JSON.parse(fourth.vs).state).toBe('online');

    // The fifth request within the minute gets no answer; a dropped-requests line says so.
    await op.send(JSON.stringify([{ bn: 's-5:', n: 'ping' }, { n: 'token', vs: commandSecret }]));
    await agent.waitForMessage('control requests over the limit of 4 per minute are dropped', 5_000);
    expect(op.answers.map((a) => a.bn)).toEqual(['s-1', 's-2', 's-3', 's-4']);
    await agent.waitFor((l) => l.msg === 'control request refused: missing or wrong command secret' && l['requestId'] === 's-2', 5_000, 'refusal log');
    expect(agent.output).not.toContain(commandSecret);
  });
});
