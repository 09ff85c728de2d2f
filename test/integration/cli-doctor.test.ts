import { chmodSync, writeFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import type { BrokerEvents } from '../../agent/devstack/broker.js';
import { registerDevice, writeDeviceFiles } from '../../agent/devstack/scenario.js';
import { K32_ENCRYPT_KEY, expectNoSecretsIn, onlineWith, pemBodyLines, randomExternalId, runAgentProcess, startStack, tempWorkDir, usePki, useTeardown } from '../helpers/agent-harness.js';
import { runCli, snapshotTree, type CliRun } from '../helpers/run-cli.js';

/*
 * `mg-device-agent doctor` as a support engineer runs it: the built CLI against the dev stack, on a
 * healthy device and on broken ones, read line by line.
 */

const t = useTeardown();
const pki = usePki('mgda-doctor-pki-');

/** The verdict lines of a doctor run, by check name. */
function verdicts(run: CliRun): Map<string, { status: string; detail: string; hint?: string }> {
  const map = new Map<string, { status: string; detail: string; hint?: string }>();
  const lines = run.stdout.split('\n');
  lines.forEach((line, i) => {
    const match = /^(PASS|FAIL|WARN) ([^:]+): (.*)$/.exec(line);
    if (!match) return;
    const hint = /^ {5}hint: (.*)$/.exec(lines[i + 1] ?? '')?.[1];
    map.set(match[2] as string, { status: match[1] as string, detail: match[3] as string, ...(hint ? { hint } : {}) });
  });
  return map;
}

function doctor(configFile: string): Promise<CliRun> {
  return runCli(['doctor', '--config', configFile], { timeoutMs: 30_000 });
}

describe('doctor', () => {
  it('healthy device: every check passes, nothing is written, and a running agent is not disturbed', async () => {
    const stack = await startStack(t);
    const device = await registerDevice(stack, { externalId: randomExternalId('doctor'), enable: true });
    const files = writeDeviceFiles(tempWorkDir(t, 'mgda-doctor-'), { externalId: device.externalId, bootstrapUrl: stack.bootstrapUrl, externalKey: device.externalKey, encryptKey: K32_ENCRYPT_KEY });
    expect((await runCli(['bootstrap', '--once', '--config', files.configFile])).code).toBe(0);

    const before = snapshotTree(files.stateDir);
    const run = await doctor(files.configFile);
    expect(run.code, run.stdout + run.stderr).toBe(0);
    expect(snapshotTree(files.stateDir)).toBe(before);
    const checks = verdicts(run);
    const [commands, telemetry] = device.channelIds;
    const expected = [
      'configuration',
      'external key file',
      'encryption key',
      'clock plausible',
      'identity',
      'bootstrap DNS',
      'bootstrap TCP',
      'bootstrap authentication',
      'stored configuration',
      'broker DNS',
      'broker TCP',
      'broker login',
      `channel ${commands} (commands)`,
      `channel ${telemetry} (telemetry)`,
      'state directory',
      'free disk space',
    ];
    for (const name of expected) expect(checks.get(name)?.status, `${name}: ${run.stdout}`).toBe('PASS');
    // Whether NTP is synchronised depends on the machine running the tests; it may say "unknown".
    expect(['PASS', 'WARN']).toContain(checks.get('clock synchronised')?.status);
    expect(checks.get('encryption key')?.detail).toBe('32 bytes (AES-256)');
    expect(checks.get('stored configuration')?.detail).toMatch(/^generation 1, fetched .*, same as the server$/);
    expect(run.stdout).toMatch(/^\d+ checks: \d+ passed, [01] warned, 0 failed$/m);
    const asJson = await runCli(['doctor', '--json', '--config', files.configFile], { timeoutMs: 30_000 });
    const parsed = JSON.parse(asJson.stdout) as { status: string; name: string; detail: string }[];
    expect(parsed.map((r) => r.name)).toEqual([...checks.keys()]);
    expect(parsed.find((r) => r.name === 'broker login')?.status).toBe('PASS');

    // With the agent online: the probe uses its own client ID, so the agent's session stays up.
    const agent = runAgentProcess(t, ['run', '--config', files.configFile]);
    await agent.waitFor(onlineWith(2), 20_000, 'online');
    const probeSessions: string[] = [];
    const probePublishes: string[] = [];
    stack.broker.events.on('clientConnected', (s: BrokerEvents['clientConnected']) => probeSessions.push(s.mqttClientId));
    stack.broker.events.on('published', (p: BrokerEvents['published']) => {
      if (p.mqttClientId?.includes('-doctor-')) probePublishes.push(p.topic);
    });
    const live = await doctor(files.configFile);
    expect(live.code, live.stdout).toBe(0);
    expect(probeSessions).toHaveLength(1);
    expect(probeSessions[0]).toMatch(new RegExp(`^${device.clientId}-doctor-[0-9a-f]{6}$`));
    expect(probePublishes).toEqual([]);
    expect(stack.broker.sessions().map((s) => s.mqttClientId)).toEqual([device.clientId]);
    expect(agent.lines.some((l) => String(l.msg).includes('connection to the broker lost'))).toBe(false);

    const secret = stack.registry.getClient(device.clientId)?.secret as string;
    for (const output of [run.stdout + run.stderr, live.stdout + live.stderr]) expectNoSecretsIn(output, [device.externalKey, K32_ENCRYPT_KEY, secret]);
  });

  it('broken devices: a channel not connected, a wrong key, a key file others can read, the broker down', async () => {
    const stack = await startStack(t);
    // Registered but never enabled: bootstrap works, the broker refuses its channels.
    const device = await registerDevice(stack, { externalId: randomExternalId('doctor') });
    const dir = tempWorkDir(t, 'mgda-doctor-');
    const files = writeDeviceFiles(dir, { externalId: device.externalId, bootstrapUrl: stack.bootstrapUrl, externalKey: device.externalKey });
    expect((await runCli(['bootstrap', '--once', '--config', files.configFile])).code).toBe(0);

    const notConnected = await doctor(files.configFile);
    expect(notConnected.code).toBe(1);
    let checks = verdicts(notConnected);
    expect(checks.get('broker login')?.status).toBe('PASS');
    for (const [i, name] of ['commands', 'telemetry'].entries()) {
      const check = checks.get(`channel ${device.channelIds[i]} (${name})`);
      expect(check?.status).toBe('FAIL');
      expect(check?.detail).toContain(`subscribe refused on m/${stack.domainId}/c/${device.channelIds[i]}/#`);
      expect(check?.hint).toContain('PUT /{domainId}/clients/state/{clientId}');
    }
    expect(notConnected.stdout).toMatch(/^\d+ checks: \d+ passed, [01] warned, 2 failed$/m);

    writeFileSync(files.keyFile, 'a-wrong-external-key\n', { mode: 0o600 });
    const wrongKey = await doctor(files.configFile);
    expect(wrongKey.code).toBe(1);
    checks = verdicts(wrongKey);
    expect(checks.get('external key file')?.status).toBe('PASS');
    expect(checks.get('bootstrap authentication')?.status).toBe('FAIL');
    expect(checks.get('bootstrap authentication')?.detail).toMatch(/^BOOTSTRAP_FORBIDDEN: /);
    expect(checks.get('bootstrap authentication')?.hint).toContain('wrong external key');
    expect(checks.get('bootstrap TCP')?.status).toBe('PASS');

    writeFileSync(files.keyFile, `${device.externalKey}\n`);
    chmodSync(files.keyFile, 0o644);
    const looseMode = await doctor(files.configFile);
    expect(looseMode.code).toBe(1);
    checks = verdicts(looseMode);
    expect(checks.get('external key file')?.status).toBe('FAIL');
    expect(checks.get('external key file')?.detail).toMatch(/^EXTERNAL_KEY_INSECURE_MODE: .* has mode 0644/);
    expect(looseMode.stdout).toContain('chmod 600');

    chmodSync(files.keyFile, 0o600);
    await stack.broker.close();
    const brokerDown = await doctor(files.configFile);
    expect(brokerDown.code).toBe(1);
    checks = verdicts(brokerDown);
    expect(checks.get('bootstrap authentication')?.status).toBe('PASS');
    expect(checks.get('broker TCP')?.status).toBe('FAIL');
    expect(checks.get('broker TCP')?.detail).toMatch(/^127\.0\.0\.1:\d+ ECONNREFUSED$/);
    expect(checks.get('broker TCP')?.hint).toContain('nothing listens on that port');
    expect(checks.has('broker login')).toBe(false);

    for (const run of [notConnected, wrongKey, looseMode, brokerDown]) {
      expect(run.stdout + run.stderr).not.toContain(device.externalKey);
      expect(run.stdout + run.stderr).not.toContain('a-wrong-external-key');
    }
  });

  it('mutual TLS: broker login with the client certificate, key match, and a warning for a certificate about to expire', async () => {
    const stack = await startStack(t, { tls: { key: pki.serverKey, cert: pki.serverCert, ca: pki.caCert, requestCert: true } });
    const device = await registerDevice(stack, {
      externalId: randomExternalId('doctor'),
      enable: true,
      certs: { clientCert: pki.clientCert, clientKey: pki.clientKey, caCert: pki.caCert },
    });
    const files = writeDeviceFiles(tempWorkDir(t, 'mgda-doctor-'), { externalId: device.externalId, bootstrapUrl: stack.bootstrapUrl, externalKey: device.externalKey });
    expect((await runCli(['bootstrap', '--once', '--config', files.configFile])).code).toBe(0);

    const run = await doctor(files.configFile);
    const checks = verdicts(run);
    // The test certificates live two days: under the 30-day threshold, so a warning, not a failure.
    expect(checks.get('client certificate')?.status).toBe('WARN');
    expect(checks.get('client certificate')?.detail).toMatch(/^CN=device-client expires on .* \(in [01] days?\)$/);
    expect(checks.get('CA certificate')?.status).toBe('WARN');
    expect(checks.get('client key')).toEqual({ status: 'PASS', detail: 'belongs to the client certificate' });
    expect(checks.get('broker login')?.status).toBe('PASS');
    expect(checks.get(`channel ${device.channelIds[0]} (commands)`)?.status).toBe('PASS');
    expect(run.code, run.stdout).toBe(0);
    const keyBody = pemBodyLines(pki.clientKey)[0] as string;
    expectNoSecretsIn(run.stdout + run.stderr, [keyBody]);
  });
});
