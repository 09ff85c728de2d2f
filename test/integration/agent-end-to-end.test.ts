import { existsSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, statSync, writeFileSync, chmodSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import type { DevStack } from '../../agent/devstack/stack.js';
import { cleanAgentEnv, registerDevice, writeDeviceFiles, type RegisteredDevice } from '../../agent/devstack/scenario.js';
import { readRetained } from '../helpers/aedes-broker.js';
import { K32_ENCRYPT_KEY, expectNoSecretsIn, onlineWith, pemBodyLines, randomExternalId, runAgentProcess, startStack, tempWorkDir, usePki, useTeardown } from '../helpers/agent-harness.js';

/*
 * The real built agent (node dist/cli/main.js run) against the dev stack over loopback TCP:
 * what lands on disk, what the broker sees, what the logs say, and that no secret is ever printed.
 */

const t = useTeardown();
const pki = usePki('mgda-e2e-pki-');

function mode(path: string): number {
  return statSync(path).mode & 0o777;
}

/** Every secret a device holds in these tests; none may ever reach the agent's output. */
function secretsOf(stack: DevStack, device: RegisteredDevice, extra: string[] = []): string[] {
  const client = stack.registry.getClient(device.clientId);
  return [device.externalKey, K32_ENCRYPT_KEY, client?.secret ?? 'missing-secret', pemBodyLines(pki.clientKey)[0] ?? '', ...extra];
}

describe('agent end to end against the dev stack', () => {
  it('secure bootstrap with mutual TLS: files on disk, refused until enabled, message received, retained offline on SIGTERM', async () => {
    const stack = await startStack(t, { tls: { key: pki.serverKey, cert: pki.serverCert, ca: pki.caCert, requestCert: true } });
    const id = randomExternalId();
    const content = JSON.stringify({ agent: { mqtt: { url: stack.mqttUrl } }, domain_id: stack.domainId, note: '<&> ünï' });
    const device = await registerDevice(stack, {
      externalId: id,
      content,
      channelNames: ['commands', 'telemetry', 'alerts'],
      certs: { clientCert: pki.clientCert, clientKey: pki.clientKey, caCert: pki.caCert },
    });
    const dir = tempWorkDir(t, 'mgda-e2e-');
    const files = writeDeviceFiles(dir, { externalId: device.externalId, bootstrapUrl: stack.bootstrapUrl, externalKey: device.externalKey, encryptKey: K32_ENCRYPT_KEY });
    const agent = runAgentProcess(t, ['run', '--config', files.configFile]);

    await agent.waitForMessage('bootstrap succeeded');
    const first = await agent.waitForMessage('online: subscribed');
    expect(first['refused']).toBe(3); // connected, but the client is not yet connected to its channels
    const secureRequests = stack.bootstrap.requests.filter((r) => r.endpoint === 'secure');
    expect(secureRequests.map((r) => r.status)).toEqual([200]);
    expect(secureRequests[0]?.path).toBe(`/clients/bootstrap/secure/${id}`); // ':' not percent-encoded

    // On disk: the current generation, content byte for byte, certificates as PEM, private parts 0600.
    const current = join(files.stateDir, 'current');
    expect(mode(files.stateDir)).toBe(0o700);
    expect(readFileSync(join(current, 'content'), 'utf8')).toBe(content);
    expect(mode(join(current, 'content'))).toBe(0o600);
    expect(readFileSync(join(current, 'certs', 'client.key'), 'utf8')).toContain('PRIVATE KEY-----');
    expect(mode(join(current, 'certs', 'client.key'))).toBe(0o600);
    expect(readFileSync(join(current, 'certs', 'ca.crt'), 'utf8').trim()).toBe(pki.caCert.trim());
    expect(existsSync(join(files.stateDir, 'identity.json'))).toBe(false); // a configured ID needs no persisting

    // The operator enables the client: the agent's own retry subscribes, without a reconnect.
    await device.operator.setState(device.clientId, 1);
    await agent.waitFor(onlineWith(3), 20_000, 'all channels');
    expect(stack.broker.sessions().filter((s) => s.username === device.clientId)).toHaveLength(1);

    const topic = `m/${stack.domainId}/c/${device.channelIds[1]}/commands/x`;
    await stack.broker.publish(topic, 'twelve bytes', { qos: 1 });
    const received = await agent.waitFor((l) => l.msg === 'message received' && l['topic'] === topic, 10_000, 'message');
    expect(received['bytes']).toBe(12);
    expect(agent.output).not.toContain('twelve bytes'); // payloads are not logged
    const statusTopicOfAgent = `m/${stack.domainId}/c/${device.channelIds[0]}/status`;
    expect(agent.lines.filter((l) => l.msg === 'message received' && l['topic'] === statusTopicOfAgent)).toEqual([]); // its own status is no message

    const started = Date.now();
    const exit = await agent.stop();
    expect(exit.code).toBe(0);
    expect(Date.now() - started).toBeLessThan(5_000);
    const statusTopic = `m/${stack.domainId}/c/${device.channelIds[0]}/status`;
    const observer = stack.registry.addClient({ domainId: stack.domainId });
    if (!observer.ok) throw new Error(observer.message);
    stack.registry.connect(observer.value.id, device.channelIds[0] as string);
    const retained = await readRetained(stack.mqttUrl, statusTopic, {
      username: observer.value.id,
      password: observer.value.secret,
      ca: pki.caCert,
      cert: pki.clientCert,
      key: pki.clientKey,
    });
    expect(retained).toBe('offline');
    expectNoSecretsIn(agent.output, secretsOf(stack, device));
  });

  it('plain bootstrap against the Profiles (v0.30) response family: credentials and channels from content', async () => {
    const stack = await startStack(t, { responseFamily: 'v0.30' });
    const device = await registerDevice(stack, { externalId: randomExternalId(), content: '', enable: true });
    const dir = tempWorkDir(t, 'mgda-e2e-');
    const files = writeDeviceFiles(dir, { externalId: device.externalId, bootstrapUrl: stack.bootstrapUrl, externalKey: device.externalKey });
    const agent = runAgentProcess(t, ['run', '--config', files.configFile]);
    const booted = await agent.waitForMessage('bootstrap succeeded');
    expect(booted['family']).toBe('profiles');
    const online = await agent.waitFor(onlineWith(2), 20_000, 'online');
    expect([...(online['subscribed'] as string[])].sort()).toEqual([...device.channelIds].sort());
    expect(stack.bootstrap.requests.filter((r) => r.endpoint === 'plain').map((r) => r.status)).toEqual([200]);
    const saved = JSON.parse(readFileSync(join(files.stateDir, 'current', 'config.json'), 'utf8'));
    expect(saved.config.family).toBe('profiles');
    expect(mode(join(files.stateDir, 'current', 'config.json'))).toBe(0o600);
    expect((await agent.stop()).code).toBe(0);
    expectNoSecretsIn(agent.output, secretsOf(stack, device));
  });

  it('wrong encryption key: 403, one clear line, nothing written, keeps running and backs off', async () => {
    const stack = await startStack(t);
    const device = await registerDevice(stack, { externalId: randomExternalId() });
    const dir = tempWorkDir(t, 'mgda-e2e-');
    const wrongKey = 'MG_BS_KEY_16byte'; // a valid length, but not the server's key
    const files = writeDeviceFiles(dir, { externalId: device.externalId, bootstrapUrl: stack.bootstrapUrl, externalKey: device.externalKey, encryptKey: wrongKey });
    const agent = runAgentProcess(t, ['run', '--config', files.configFile]);
    const line = await agent.waitFor((l) => l['code'] === 'BOOTSTRAP_FORBIDDEN', 15_000, 'the 403');
    expect(line.level).toBe('warn');
    expect(Number(line['retryInMs'])).toBeGreaterThanOrEqual(0);
    expect(stack.bootstrap.requests.filter((r) => r.endpoint === 'secure').map((r) => r.status)).toEqual([403]);
    expect(existsSync(join(files.stateDir, 'current'))).toBe(false);
    expect(existsSync(join(files.stateDir, 'generations')) ? readdirSync(join(files.stateDir, 'generations')) : []).toEqual([]);
    expect(agent.child.exitCode).toBeNull(); // never exits on an operator problem
    expectNoSecretsIn(agent.output, [...secretsOf(stack, device), wrongKey]);
  });

  it('unknown external ID: 404 named in the log, nothing written', async () => {
    const stack = await startStack(t);
    const dir = tempWorkDir(t, 'mgda-e2e-');
    const files = writeDeviceFiles(dir, {
      bootstrapUrl: stack.bootstrapUrl,
      externalKey: 'some-key-nobody-registered',
      config: { identity: { externalId: 'no:such:device' } },
    });
    const agent = runAgentProcess(t, ['run', '--config', files.configFile]);
    const line = await agent.waitFor((l) => l['code'] === 'BOOTSTRAP_NOT_FOUND', 15_000, 'the 404');
    expect(String(line.msg)).toContain('404');
    expect(stack.bootstrap.requests.map((r) => r.path)).toContain('/clients/bootstrap/no:such:device');
    expect(existsSync(join(files.stateDir, 'current'))).toBe(false);
    expect(agent.output).not.toContain('some-key-nobody-registered');
  });

  it('restarts on the stored configuration even when Bootstrap is gone', async () => {
    const stack = await startStack(t);
    const device = await registerDevice(stack, { externalId: randomExternalId(), enable: true });
    const dir = tempWorkDir(t, 'mgda-e2e-');
    const files = writeDeviceFiles(dir, { externalId: device.externalId, bootstrapUrl: stack.bootstrapUrl, externalKey: device.externalKey });
    const first = runAgentProcess(t, ['run', '--config', files.configFile]);
    await first.waitFor(onlineWith(2), 20_000, 'online');
    expect((await first.stop()).code).toBe(0);

    await stack.bootstrap.close(); // Bootstrap down, broker up
    const second = runAgentProcess(t, ['run', '--config', files.configFile]);
    await second.waitForMessage('starting on the stored configuration');
    await second.waitFor(onlineWith(2), 20_000, 'online from the stored generation');
    await second.waitFor((l) => l['stage'] === 'refresh' && l['code'] === 'BOOTSTRAP_NETWORK', 20_000, 'refresh failure logged');
    expect(readlinkTarget(files.stateDir)).toBe('generations/000001');
    expect((await second.stop()).code).toBe(0);
  });
});

function readlinkTarget(stateDir: string): string {
  return readlinkSync(join(stateDir, 'current'));
}

describe('start-up refusals', () => {
  function runToExit(args: string[], env: NodeJS.ProcessEnv = cleanAgentEnv()) {
    const agent = runAgentProcess(t, args, { env, killAfterMs: 1_000 });
    return agent.exited.then((status) => ({ ...status, output: agent.output }));
  }

  it('invalid configuration: exit 78 with every problem listed', async () => {
    const dir = mkdtempSync(join(tempWorkDir(t, 'mgda-e2e-'), 'cfg-'));
    const configFile = join(dir, 'agent.json');
    writeFileSync(configFile, JSON.stringify({ bootstrap: { url: 'not a url', mode: 'loud' }, mqtt: { qos: 3 } }));
    const result = await runToExit(['run', '--config', configFile]);
    expect(result.code).toBe(78);
    expect(result.output).toContain('bootstrap.url');
    expect(result.output).toContain('bootstrap.mode');
    expect(result.output).toContain('mqtt.qos');
  });

  it('external key file readable by others: exit 78 naming the fix, key not printed', async () => {
    const dir = tempWorkDir(t, 'mgda-e2e-');
    const files = writeDeviceFiles(dir, { bootstrapUrl: 'http://127.0.0.1:9', externalKey: 'very-secret-external-key' });
    chmodSync(files.keyFile, 0o644);
    const result = await runToExit(['run', '--config', files.configFile]);
    expect(result.code).toBe(78);
    expect(result.output).toContain('EXTERNAL_KEY_INSECURE_MODE');
    expect(result.output).toContain('chmod 600');
    expect(result.output).not.toContain('very-secret-external-key');
  });

  it('secure mode with an encryption key of the wrong length: exit 78, key not printed', async () => {
    const dir = tempWorkDir(t, 'mgda-e2e-');
    const files = writeDeviceFiles(dir, { bootstrapUrl: 'http://127.0.0.1:9', externalKey: 'k', encryptKey: 'twenty-byte-key-xxxx' });
    const result = await runToExit(['run', '--config', files.configFile]);
    expect(result.code).toBe(78);
    expect(result.output).toContain('ENCRYPT_KEY_INVALID');
    expect(result.output).not.toContain('twenty-byte-key-xxxx');
  });

  it('unknown command and --help', async () => {
    expect((await runToExit(['frobnicate'])).code).toBe(64);
    const help = await runToExit(['run', '--help']);
    expect(help.code).toBe(0);
    expect(help.output).toContain('MG_AGENT_MQTT_DOMAIN_ID');
  });
});
