import { chownSync, lstatSync, mkdirSync, readFileSync, readdirSync, readlinkSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import type { DevStack } from '../../agent/devstack/stack.js';
import { registerDevice, writeDeviceFiles, type RegisteredDevice } from '../../agent/devstack/scenario.js';
import { K32_ENCRYPT_KEY, expectNoSecretsIn, onlineWith, pemBodyLines, randomExternalId, runAgentProcess, startStack, tempWorkDir, usePki, useTeardown } from '../helpers/agent-harness.js';
import { runCli, snapshotTree, type CliRun } from '../helpers/run-cli.js';

/*
 * `bootstrap --once [--dry-run]` and `status`, run as the built CLI against the dev stack: what they
 * print, what they leave on disk (nothing, for --dry-run), and that no secret is ever printed.
 */

const t = useTeardown();
const pki = usePki('mgda-cli-pki-');

function expectNoSecrets(runs: CliRun[], secrets: string[]): void {
  for (const run of runs) expectNoSecretsIn(run.stdout + run.stderr, secrets);
}

async function devStackCall(stack: DevStack, method: string, path: string, body?: unknown): Promise<unknown> {
  const res = await fetch(`${stack.bootstrapUrl}${path}`, {
    method,
    headers: { authorization: `Bearer ${stack.userToken}`, 'content-type': 'application/json' },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  if (res.status >= 300) throw new Error(`${method} ${path}: ${res.status} ${await res.text()}`);
  const text = await res.text();
  return text ? JSON.parse(text) : undefined;
}

async function addChannel(stack: DevStack, device: RegisteredDevice, name: string): Promise<string> {
  const { id } = (await devStackCall(stack, 'POST', '/dev/channels', { domain_id: stack.domainId, name })) as { id: string };
  await devStackCall(stack, 'PUT', `/${stack.domainId}/clients/configs/connections/${device.clientId}`, { channels: [...device.channelIds, id] });
  return id;
}

describe('bootstrap --once', () => {
  it('--dry-run writes nothing; --once writes and promotes only when the configuration changed; the diff is redacted', async () => {
    const stack = await startStack(t);
    const device = await registerDevice(stack, { externalId: randomExternalId(), enable: true });
    const files = writeDeviceFiles(tempWorkDir(t, 'mgda-cli-'), { externalId: device.externalId, bootstrapUrl: stack.bootstrapUrl, externalKey: device.externalKey, encryptKey: K32_ENCRYPT_KEY });
    const cli = (...args: string[]) => runCli([...args, '--config', files.configFile]);

    // Nothing on disk yet: the dry run describes all of it and creates nothing, not even the directory.
    const first = await cli('bootstrap', '--once', '--dry-run');
    expect(first.code, first.stderr).toBe(0);
    expect(first.stdout).toContain(`fetched the configuration of ${device.externalId}`);
    expect(first.stdout).toContain('no configuration on disk yet; it would be:');
    expect(first.stdout).toContain(`channels: ${device.channelIds[0]} (commands), ${device.channelIds[1]} (telemetry)`);
    expect(first.stdout).toContain(`as client ${device.clientId} (password not shown)`);
    expect(first.stdout).toContain('dry run: nothing was written');
    expect(snapshotTree(files.stateDir)).toBe('(absent)');

    const written = await cli('bootstrap', '--once');
    expect(written.code, written.stderr).toBe(0);
    expect(written.stdout).toContain('wrote generation 1 and made it current');
    expect(readlinkSync(join(files.stateDir, 'current'))).toBe('generations/000001');
    const content = JSON.parse(readFileSync(join(files.stateDir, 'current', 'content'), 'utf8'));
    expect(content.domain_id).toBe(stack.domainId);

    const again = await cli('bootstrap', '--once');
    expect(again.code).toBe(0);
    expect(again.stdout).toContain('no changes: generation 1 on disk is up to date; nothing written');
    expect(readlinkSync(join(files.stateDir, 'current'))).toBe('generations/000001');

    // The operator changes the device: new content, one more channel, a rotated client secret.
    const oldSecret = stack.registry.getClient(device.clientId)?.secret as string;
    const newContent = JSON.stringify({ agent: { mqtt: { url: stack.mqttUrl } }, domain_id: stack.domainId, marker: 'content-marker-9f2' });
    await device.operator.updateContent(device.clientId, { content: newContent });
    const alerts = await addChannel(stack, device, 'alerts');
    const rotated = (await devStackCall(stack, 'POST', `/dev/clients/${device.clientId}/secret`, {})) as { client_secret: string };

    const before = snapshotTree(files.stateDir);
    const diff = await cli('bootstrap', '--once', '--dry-run');
    expect(diff.code, diff.stderr).toBe(0);
    const oldBytes = Buffer.byteLength(JSON.stringify(content));
    expect(diff.stdout).toContain('changes against generation 1:');
    expect(diff.stdout).toContain(`MQTT credentials: client ${device.clientId} unchanged, password changed (not shown)`);
    expect(diff.stdout).toContain(`channels added: ${alerts} (alerts)`);
    expect(diff.stdout).toContain(`content: changed (${oldBytes} -> ${Buffer.byteLength(newContent)} bytes; not shown)`);
    expect(diff.stdout).toContain('on the broker: reconnect (credentials changed); subscribe to 1 more channel(s)');
    expect(diff.stdout).toContain('dry run: nothing was written');
    expect(snapshotTree(files.stateDir)).toBe(before);

    const applied = await cli('bootstrap', '--once');
    expect(applied.stdout).toContain('wrote generation 2 and made it current');
    expect(readFileSync(join(files.stateDir, 'current', 'content'), 'utf8')).toBe(newContent);

    expectNoSecrets([first, written, again, diff, applied], [device.externalKey, K32_ENCRYPT_KEY, oldSecret, rotated.client_secret, 'content-marker-9f2']);
  });

  it('a refused fetch exits 1 with the code and a hint; without --once it is a usage error', async () => {
    const stack = await startStack(t);
    const device = await registerDevice(stack, { externalId: randomExternalId() });
    const files = writeDeviceFiles(tempWorkDir(t, 'mgda-cli-'), { externalId: device.externalId, bootstrapUrl: stack.bootstrapUrl, externalKey: 'not-the-registered-key' });
    const refused = await runCli(['bootstrap', '--once', '--config', files.configFile]);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain('BOOTSTRAP_FORBIDDEN');
    expect(refused.stderr).toContain('hint: wrong external key');
    expect(snapshotTree(files.stateDir)).toBe('(absent)');
    expectNoSecrets([refused], ['not-the-registered-key']);

    const usage = await runCli(['bootstrap', '--config', files.configFile]);
    expect(usage.code).toBe(64);
    expect(usage.stderr).toContain('--once');
  });
  it("run by root in a state directory owned by the agent's user: what root wrote is handed to that user", async () => {
    const stack = await startStack(t);
    const device = await registerDevice(stack, { externalId: randomExternalId(), enable: true });
    const files = writeDeviceFiles(tempWorkDir(t, 'mgda-cli-'), { externalId: device.externalId, bootstrapUrl: stack.bootstrapUrl, externalKey: device.externalKey });
    mkdirSync(files.stateDir, { mode: 0o700 });
    // As root (CI), the directory belongs to "nobody", as the service user's would; otherwise to us.
    const isRoot = process.getuid?.() === 0;
    if (isRoot) chownSync(files.stateDir, 65534, 65534);
    const owner = statSync(files.stateDir).uid;

    const run = await runCli(['bootstrap', '--once', '--config', files.configFile]);
    expect(run.code, run.stderr).toBe(0);
    const entries = snapshotTree(files.stateDir).split('\n').length;
    const owners = new Set<number>();
    const walk = (path: string): void => {
      owners.add(lstatSync(path).uid);
      if (lstatSync(path).isDirectory()) for (const name of readdirSync(path)) walk(join(path, name));
    };
    walk(files.stateDir);
    expect([...owners]).toEqual([owner]);
    if (isRoot) expect(run.stdout).toContain(`gave ${entries - 1} new entries to the state directory's owner`);
    else expect(run.stdout).not.toContain('gave');
  });
});

describe('status', () => {
  it('before the first run, while the agent runs (refusing a second writer), and after it stopped', async () => {
    const stack = await startStack(t, { tls: { key: pki.serverKey, cert: pki.serverCert, ca: pki.caCert, requestCert: true } });
    const device = await registerDevice(stack, {
      externalId: randomExternalId(),
      enable: true,
      certs: { clientCert: pki.clientCert, clientKey: pki.clientKey, caCert: pki.caCert },
    });
    const files = writeDeviceFiles(tempWorkDir(t, 'mgda-cli-'), { externalId: device.externalId, bootstrapUrl: stack.bootstrapUrl, externalKey: device.externalKey, encryptKey: K32_ENCRYPT_KEY });
    const status = (...extra: string[]) => runCli(['status', '--config', files.configFile, ...extra]);

    const nothing = await status();
    expect(nothing.code).toBe(1);
    expect(nothing.stdout).toContain('agent: unknown (no status file: the agent has not run here yet)');
    expect(nothing.stdout).toContain('generation: none on disk');

    const agent = runAgentProcess(t, ['run', '--config', files.configFile]);
    await agent.waitFor(onlineWith(2), 20_000, 'online');

    // status.json is written at most once a second: wait until it shows the online state.
    let report: { running: boolean; status: { state: string; pid: number; channels: { subscribed: string[] } } } | undefined;
    for (let i = 0; i < 50; i++) {
      const json = await status('--json');
      report = JSON.parse(json.stdout);
      if (report?.status?.state === 'online' && report.status.channels.subscribed.length === 2) break;
      await new Promise((r) => setTimeout(r, 200));
    }
    expect(report?.running).toBe(true);
    expect(report?.status.pid).toBe(agent.child.pid);
    expect([...(report?.status.channels.subscribed ?? [])].sort()).toEqual([...device.channelIds].sort());

    const live = await status();
    expect(live.code, live.stderr).toBe(0);
    expect(live.stdout).toContain(`agent: running (pid ${agent.child.pid})`);
    expect(live.stdout).toMatch(/^state: online/m);
    expect(live.stdout).toContain(`generation: 1 on disk`);
    expect(live.stdout).toMatch(/^last bootstrap: ok at \d{4}-/m);
    expect(live.stdout).toContain(`connection: connected to ${stack.mqttUrl}`);
    expect(live.stdout).toContain(`${device.channelIds[0]} (commands)`);
    expect(live.stdout).toMatch(/^client certificate: CN=device-client, expires .* \(in [01] days?\)$/m);
    expect(live.stdout).toMatch(/^CA certificate: CN=mgda test CA, expires/m);

    const second = await runCli(['bootstrap', '--once', '--config', files.configFile]);
    expect(second.code).toBe(1);
    expect(second.stderr).toContain(`the agent is running (pid ${agent.child.pid})`);
    expect(second.stderr).toContain('systemctl reload mg-device-agent');

    expect((await agent.stop()).code).toBe(0);
    const after = await status();
    expect(after.code).toBe(0);
    expect(after.stdout).toContain(`agent: not running (pid ${agent.child.pid} from the status file is gone`);
    expect(after.stdout).toMatch(/^state: stopped/m);

    const secret = stack.registry.getClient(device.clientId)?.secret as string;
    const keyBody = pemBodyLines(pki.clientKey)[0] as string;
    expectNoSecrets([nothing, live, after, second], [device.externalKey, K32_ENCRYPT_KEY, secret, keyBody]);
  });
});
