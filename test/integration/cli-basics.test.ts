import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { spawn } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { agentEntryPoint } from '../../agent/devstack/agent-process.js';
import { cleanAgentEnv } from '../../agent/devstack/scenario.js';
import { tempWorkDir, useTeardown } from '../helpers/agent-harness.js';
import { runCli } from '../helpers/run-cli.js';

/* The CLI's surface: --help on every command, --version, exit codes for usage errors, `identity`. */

const t = useTeardown();

const COMMANDS = ['run', 'identity', 'bootstrap', 'status', 'doctor', 'provision', 'encrypt-key'];

describe('mg-device-agent CLI', () => {
  it('--help lists every command; each command has --help with its exit codes; --version is the package version', async () => {
    const top = await runCli(['--help']);
    expect(top.code).toBe(0);
    for (const command of COMMANDS) expect(top.stdout).toMatch(new RegExp(`^  ${command} +\\S`, 'm'));
    expect(top.stdout).toContain('Exit codes: 0 ok, 1 failure, 64 usage error, 78 configuration error');

    const helps = await Promise.all(COMMANDS.map((command) => runCli([command, '--help'])));
    helps.forEach((help, i) => {
      expect(help.code, COMMANDS[i]).toBe(0);
      expect(help.stdout, COMMANDS[i]).toMatch(new RegExp(`^Usage: mg-device-agent ${COMMANDS[i]}`));
      expect(help.stdout, COMMANDS[i]).toMatch(/Exit codes:/);
    });

    const version = await runCli(['--version']);
    expect(version.stdout.trim()).toBe((JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version);
  });

  it('usage errors exit 64: no command, an unknown command, an unknown option', async () => {
    expect((await runCli([])).code).toBe(64);
    const unknown = await runCli(['frobnicate']);
    expect(unknown.code).toBe(64);
    expect(unknown.stderr).toContain('unknown command "frobnicate"');
    const option = await runCli(['status', '--verbose']);
    expect(option.code).toBe(64);
    expect(option.stderr).toContain("see mg-device-agent status --help");
  });

  it('identity: a configured external ID; an invalid configuration exits 78', async () => {
    const dir = tempWorkDir(t, 'mgda-cli-basics-');
    const configFile = join(dir, 'agent.json');
    writeFileSync(configFile, JSON.stringify({ identity: { externalId: 'line-7-unit-42' }, state: { dir: join(dir, 'state') } }));
    const identity = await runCli(['identity', '--config', configFile]);
    expect(identity.code, identity.stderr).toBe(0);
    expect(identity.stdout).toMatch(/^external ID: line-7-unit-42\nsource: config\n/);

    writeFileSync(configFile, JSON.stringify({ control: { maxRequestsPerMinute: 0 } }));
    const invalid = await runCli(['status', '--config', configFile]);
    expect(invalid.code).toBe(78);
    expect(invalid.stderr).toContain('control.maxRequestsPerMinute');
  });

  it('a reader that goes away (doctor | head) ends the command quietly, without a stack trace', async () => {
    const dir = tempWorkDir(t, 'mgda-cli-epipe-');
    const config = join(dir, 'agent.json');
    writeFileSync(config, JSON.stringify({ bootstrap: { url: 'http://127.0.0.1:9' }, identity: { externalId: 'dev-1', externalKeyFile: join(dir, 'missing') }, state: { dir: join(dir, 'state') } }));
    const child = spawn(process.execPath, [agentEntryPoint(), 'doctor', '--config', config], { env: cleanAgentEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
    child.stdout.destroy(); // the reader is gone before the first line
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    const code = await new Promise<number | null>((resolve) => child.once('close', resolve));
    expect(stderr).not.toContain('EPIPE');
    expect(stderr).not.toMatch(/\n\s+at /); // no stack trace
    expect(code).not.toBeNull();
  });
});
