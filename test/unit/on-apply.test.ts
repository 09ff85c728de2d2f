import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { OnApplyRunner, type AppliedChange } from '../../agent/updates/on-apply.js';
import { K32_ENCRYPT_KEY, tempWorkDir, useTeardown } from '../helpers/agent-harness.js';
import { captureLogger } from '../helpers/log-capture.js';

/* The operator's onApply command as a real child process: its environment, its output, its limits. */

const t = useTeardown();

function setup(script: string, options: { timeoutMs?: number; baseEnv?: NodeJS.ProcessEnv; maxLogLines?: number } = {}) {
  const dir = tempWorkDir(t, 'mgda-onapply-');
  const program = join(dir, 'hook.sh');
  writeFileSync(program, `#!/bin/sh\n${script}\n`, { mode: 0o755 });
  const { logger, lines } = captureLogger();
  const runner = new OnApplyRunner({
    command: [program, dir],
    timeoutMs: options.timeoutMs ?? 10_000,
    logger,
    baseEnv: options.baseEnv ?? { PATH: process.env.PATH },
    killGraceMs: 300,
    ...(options.maxLogLines ? { maxLogLines: options.maxLogLines } : {}),
  });
  t.add(() => runner.stop());
  return { dir, runner, lines, logger, messages: () => lines.map((l) => String(l['msg'])) };
}

const change: AppliedChange = {
  generation: 7,
  paths: {
    content: '/var/lib/mg-device-agent/generations/000007/content',
    clientCert: '/var/lib/mg-device-agent/generations/000007/certs/client.crt',
    clientKey: '/var/lib/mg-device-agent/generations/000007/certs/client.key',
  },
  changes: ['content', 'certificates'],
};

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

describe('onApply command', () => {
  it('gets the paths of the written files, the generation and what changed; none of the agent\'s own settings', async () => {
    const { dir, runner } = setup('env > "$1/env.txt"');
    const result = await runner.run({ ...change });
    expect(result.outcome).toBe('ok');
    const env = Object.fromEntries(
      readFileSync(join(dir, 'env.txt'), 'utf8')
        .trim()
        .split('\n')
        .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]),
    );
    expect(env).toMatchObject({
      MG_AGENT_CONTENT_FILE: change.paths.content,
      MG_AGENT_CLIENT_CERT_FILE: change.paths.clientCert,
      MG_AGENT_CLIENT_KEY_FILE: change.paths.clientKey,
      MG_AGENT_GENERATION: '7',
      MG_AGENT_CHANGE: 'content,certificates',
    });
    expect(env['MG_AGENT_CA_CERT_FILE']).toBeUndefined(); // no CA in this generation
  });

  it('never passes on secrets or systemd plumbing from the agent\'s environment', async () => {
    const { dir, runner } = setup('env > "$1/env.txt"', {
      baseEnv: {
        PATH: process.env.PATH,
        LANG: 'C.UTF-8',
        MG_AGENT_BOOTSTRAP_ENCRYPT_KEY: K32_ENCRYPT_KEY,
        MG_AGENT_BOOTSTRAP_URL: 'http://bootstrap:9013',
        NOTIFY_SOCKET: '/run/systemd/notify',
        WATCHDOG_USEC: '30000000',
        WATCHDOG_PID: '1',
        CREDENTIALS_DIRECTORY: '/run/credentials/mg-device-agent.service',
      },
    });
    await runner.run(change);
    const text = readFileSync(join(dir, 'env.txt'), 'utf8');
    expect(text).toContain('LANG=C.UTF-8');
    for (const leaked of [K32_ENCRYPT_KEY, 'MG_AGENT_BOOTSTRAP_URL', 'NOTIFY_SOCKET', 'WATCHDOG_', 'CREDENTIALS_DIRECTORY']) {
      expect(text).not.toContain(leaked);
    }
  });

  it('logs its output line by line, long lines and endless output truncated', async () => {
    const { runner, messages, lines } = setup(
      `echo first; echo "$(printf 'x%.0s' $(seq 1 500))"; echo oops >&2; for i in $(seq 1 20); do echo line$i; done`,
      { maxLogLines: 5 },
    );
    expect((await runner.run(change)).outcome).toBe('ok');
    const out = messages().filter((m) => m.startsWith('onApply stdout:'));
    expect(out[0]).toBe('onApply stdout: first');
    expect(out[1]).toMatch(/^onApply stdout: x{300}… \(500 chars\)$/);
    expect(out).toHaveLength(6); // five lines, then the count of the rest
    expect(out.at(-1)).toBe('onApply stdout: 17 more line(s) not logged');
    expect(messages()).toContain('onApply stderr: oops');
    expect(lines.find((l) => l['msg'] === 'onApply finished')?.['exitCode']).toBe(0);
  });

  it('a failing command is reported with its exit code; the change stays applied', async () => {
    const { runner, lines } = setup('exit 3');
    expect(await runner.run(change)).toMatchObject({ outcome: 'failed', exitCode: 3 });
    const warning = lines.find((l) => l['level'] === 'warn');
    expect(warning?.['code']).toBe('ON_APPLY_FAILED');
    expect(String(warning?.['msg'])).toContain('exit code 3');
  });

  it('a command that runs too long is stopped at its timeout, with everything it started', async () => {
    const { dir, runner, lines } = setup('sleep 30 & echo $! > "$1/child.pid"; trap "" TERM; sleep 30', { timeoutMs: 1_000 });
    const result = await runner.run(change);
    expect(result.outcome).toBe('timeout');
    const grandchild = Number(readFileSync(join(dir, 'child.pid'), 'utf8'));
    for (let i = 0; i < 50 && alive(grandchild); i++) await sleep(20);
    expect(alive(grandchild)).toBe(false);
    expect(lines.find((l) => l['level'] === 'warn')?.['msg']).toBe('onApply did not finish within 1000 ms and was stopped');
  });

  it('a program that does not exist is a warning, not a crash', async () => {
    const { dir, lines, logger } = setup('true');
    const runner = new OnApplyRunner({
      command: [join(dir, 'no-such-program')],
      timeoutMs: 1_000,
      logger,
    });
    expect((await runner.run(change)).outcome).toBe('spawn-failed');
    expect(lines.find((l) => l['level'] === 'warn')).toMatchObject({ code: 'ON_APPLY_FAILED', errno: 'ENOENT' });
  });

  it('one run at a time: changes arriving meanwhile are merged into one run for the newest generation', async () => {
    const { dir, runner } = setup('echo "$MG_AGENT_GENERATION $MG_AGENT_CHANGE" >> "$1/runs.txt"; sleep 0.3');
    const runs = [
      runner.run({ generation: 1, paths: {}, changes: ['initial'] }),
      runner.run({ generation: 2, paths: {}, changes: ['content'] }),
      runner.run({ generation: 3, paths: {}, changes: ['channels'] }),
    ];
    const results = await Promise.all(runs);
    expect(readFileSync(join(dir, 'runs.txt'), 'utf8')).toBe('1 initial\n3 content,channels\n');
    expect(results.map((r) => r.generation)).toEqual([1, 3, 3]);
  });

  it('stop() ends a running command and drops waiting ones', async () => {
    const { dir, runner } = setup('echo started > "$1/started"; sleep 30');
    const running = runner.run({ generation: 1, paths: {}, changes: ['initial'] });
    const waiting = runner.run({ generation: 2, paths: {}, changes: ['content'] });
    for (let i = 0; i < 100 && !existsSync(join(dir, 'started')); i++) await sleep(20);
    await runner.stop();
    expect((await running).outcome).toBe('stopped');
    expect((await waiting).outcome).toBe('stopped');
    expect((await runner.run({ generation: 3, paths: {}, changes: ['content'] })).outcome).toBe('stopped');
  });
});
