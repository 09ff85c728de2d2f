import { existsSync, readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { cleanAgentEnv, defaultContent } from '../../agent/devstack/scenario.js';
import { decryptCfb } from '../../agent/bootstrap/crypto.js';
import { K32_ENCRYPT_KEY, createDevChannel, expectNoSecretsIn, onlineWith, randomExternalId, runAgentProcess, startStack, tempWorkDir, useTeardown } from '../helpers/agent-harness.js';
import { runCli } from '../helpers/run-cli.js';

/*
 * The operator's side against the dev stack: `provision` creates a device and its credential files,
 * the real agent bootstraps with exactly those files, and `encrypt-key` prints a token and a curl
 * line that the Bootstrap service accepts.
 */

const t = useTeardown();

function mode(path: string): number {
  return statSync(path).mode & 0o777;
}

describe('provision and encrypt-key', () => {
  it('provision → credential files (0600) → the real agent bootstraps with them (secure mode) → encrypt-key token works with curl', async () => {
    const stack = await startStack(t);
    const dir = tempWorkDir(t, 'mgda-operator-');
    const tokenFile = join(dir, 'user-token');
    writeFileSync(tokenFile, `${stack.userToken}\n`, { mode: 0o600 });
    const encryptKeyFile = join(dir, 'server-encrypt-key');
    writeFileSync(encryptKeyFile, K32_ENCRYPT_KEY, { mode: 0o600 });
    const contentFile = join(dir, 'content.json');
    writeFileSync(contentFile, defaultContent(stack));
    const commands = await createDevChannel(stack, 'commands');
    const telemetry = await createDevChannel(stack, 'telemetry');
    const externalId = randomExternalId('line');
    const out = join(dir, 'out', externalId);

    const provisioned = await runCli([
      'provision',
      '--bootstrap-url', stack.bootstrapUrl,
      '--domain', stack.domainId,
      '--token-file', tokenFile,
      '--external-id', externalId,
      '--channel', commands,
      '--channel', telemetry,
      '--content-file', contentFile,
      '--encrypt-key-file', encryptKeyFile,
      '--enable',
      '--out', out,
    ]);
    expect(provisioned.code, provisioned.stderr).toBe(0);
    const config = stack.registry.findConfigByExternalId(externalId);
    expect(config).toBeDefined();
    expect(provisioned.stdout).toContain(`created the bootstrap config of ${externalId}: client ${config?.clientId}, 2 channel(s)`);
    expect(provisioned.stdout).toContain(`--external-key-file ${join(out, 'external_key')}`);
    expect(provisioned.stdout).toContain('enabled: the client is connected to its channels');

    // The key: 32 random bytes as hex, in a 0600 file, the same the server stores, never printed.
    const keyText = readFileSync(join(out, 'external_key'), 'utf8');
    expect(keyText).toMatch(/^[0-9a-f]{64}\n$/);
    const externalKey = keyText.trim();
    expect(config?.externalKey).toBe(externalKey);
    expect(config?.state).toBe(1);
    expect([...(config?.channels ?? [])].sort()).toEqual([commands, telemetry].sort());
    expect(mode(join(out, 'external_key'))).toBe(0o600);
    expect(readFileSync(join(out, 'encrypt_key'), 'utf8')).toBe(K32_ENCRYPT_KEY);
    expect(mode(join(out, 'encrypt_key'))).toBe(0o600);
    expect(mode(out)).toBe(0o700);
    expectNoSecretsIn(provisioned.stdout + provisioned.stderr, [externalKey, stack.userToken, K32_ENCRYPT_KEY]);

    // The device, with nothing but those files and the URL, comes online on both channels.
    const agentConfig = join(dir, 'agent.json');
    writeFileSync(
      agentConfig,
      JSON.stringify({
        bootstrap: { url: stack.bootstrapUrl, mode: 'secure', encryptKeyFile: join(out, 'encrypt_key') },
        identity: { externalId, externalKeyFile: join(out, 'external_key') },
        state: { dir: join(dir, 'state') },
        retry: { initialDelayMs: 200 },
      }),
    );
    const agent = runAgentProcess(t, ['run', '--config', agentConfig]);
    await agent.waitFor(onlineWith(2), 20_000, 'online');
    expect(stack.bootstrap.requests.filter((r) => r.endpoint === 'secure').map((r) => r.status)).toEqual([200]);
    expect((await agent.stop()).code).toBe(0);

    // encrypt-key: the printed curl line, sent as written, gets this device's configuration.
    const printed = await runCli([
      'encrypt-key',
      '--external-key-file', join(out, 'external_key'),
      '--encrypt-key-file', join(out, 'encrypt_key'),
      '--bootstrap-url', stack.bootstrapUrl,
      '--external-id', externalId,
    ]);
    expect(printed.code, printed.stderr).toBe(0);
    const [token, curl] = printed.stdout.split('\n');
    expect(token).toMatch(/^[0-9a-f]{64,}$/);
    const curlParts = /^curl -sS -o response\.bin -w '%\{http_code\}\\n' -H '(Authorization: Client [0-9a-f]+)' '([^']+)'$/.exec(curl ?? '');
    expect(curlParts, curl).not.toBeNull();
    expect(curlParts?.[1]).toBe(`Authorization: Client ${token}`);
    expect(curlParts?.[2]).toBe(`${stack.bootstrapUrl}/clients/bootstrap/secure/${externalId}`);
    const res = await fetch(curlParts?.[2] as string, { headers: { authorization: (curlParts?.[1] as string).slice('Authorization: '.length) } });
    expect(res.status).toBe(200);
    const body = JSON.parse(decryptCfb(Buffer.from(K32_ENCRYPT_KEY), Buffer.from(await res.arrayBuffer())).toString('utf8'));
    expect(body.client_id).toBe(config?.clientId);
    expectNoSecretsIn(printed.stdout, [externalKey, K32_ENCRYPT_KEY]);
  });

  it('refuses a token on the command line, a wrong token (no key file left behind) and overwriting a key file', async () => {
    const stack = await startStack(t);
    const dir = tempWorkDir(t, 'mgda-operator-');
    const out = join(dir, 'out');
    const base = ['provision', '--bootstrap-url', stack.bootstrapUrl, '--domain', stack.domainId, '--out', out];

    const onCommandLine = await runCli([...base, '--external-id', 'dev-a', '--token', stack.userToken]);
    expect(onCommandLine.code).toBe(64);
    expect(onCommandLine.stderr).toContain('--token is not accepted on the command line');

    const noToken = await runCli([...base, '--external-id', 'dev-a']);
    expect(noToken.code).toBe(64);
    expect(noToken.stderr).toContain('--token-file FILE or MG_USER_TOKEN');

    const wrongToken = await runCli([...base, '--external-id', 'dev-a'], { env: cleanAgentEnv({ MG_USER_TOKEN: 'not-the-token' }) });
    expect(wrongToken.code).toBe(1);
    expect(wrongToken.stderr).toContain('answered 401');
    expect(wrongToken.stderr).not.toContain('not-the-token');
    expect(existsSync(out) ? readdirSync(out) : []).toEqual([]);
    expect(stack.registry.findConfigByExternalId('dev-a')).toBeUndefined();

    const env = cleanAgentEnv({ MG_USER_TOKEN: stack.userToken });
    expect((await runCli([...base, '--external-id', 'dev-a'], { env })).code).toBe(0);
    const keyBefore = readFileSync(join(out, 'external_key'), 'utf8');
    const again = await runCli([...base, '--external-id', 'dev-b'], { env });
    expect(again.code).toBe(1);
    expect(again.stderr).toContain('already exists; refusing to overwrite');
    expect(readFileSync(join(out, 'external_key'), 'utf8')).toBe(keyBefore);
    expect(stack.registry.findConfigByExternalId('dev-b')).toBeUndefined();
  });
});
