import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../../agent/config/load.js';

/* The configuration keys of issue 3: updates.* and retry.bootJitterMs, from the environment too. */

const noFile = (): string => {
  throw Object.assign(new Error('ENOENT'), { code: 'ENOENT' });
};

function problems(env: NodeJS.ProcessEnv): string[] {
  try {
    loadConfig({ env, readFile: noFile });
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return (err as ConfigError).problems.map((p) => p.path);
  }
  return [];
}

describe('updates configuration', () => {
  it('defaults: hourly checks, no cron, no onApply, a few seconds of boot jitter', () => {
    const { config } = loadConfig({ env: {}, readFile: noFile });
    expect(config.updates).toEqual({ checkIntervalMs: 3_600_000, onApplyTimeoutMs: 30_000 });
    expect(config.retry.bootJitterMs).toBe(5_000);
  });

  it('onApply from the environment is a JSON argv array; cron is 5 fields', () => {
    const { config } = loadConfig({
      env: { MG_AGENT_UPDATES_ON_APPLY: '["/usr/local/bin/reload", "--all"]', MG_AGENT_UPDATES_CRON: '30 3 * * 1-5', MG_AGENT_UPDATES_CHECK_INTERVAL_MS: '0' },
      readFile: noFile,
    });
    expect(config.updates.onApply).toEqual(['/usr/local/bin/reload', '--all']);
    expect(config.updates.cron).toBe('30 3 * * 1-5');
    expect(config.updates.checkIntervalMs).toBe(0);
  });

  it('refuses what cannot work, naming the variable', () => {
    expect(problems({ MG_AGENT_UPDATES_ON_APPLY: '/usr/local/bin/reload --all' })).toEqual(['updates.onApply (from MG_AGENT_UPDATES_ON_APPLY)']);
    expect(problems({ MG_AGENT_UPDATES_ON_APPLY: '[]' })).toEqual(['updates.onApply (from MG_AGENT_UPDATES_ON_APPLY)']);
    expect(problems({ MG_AGENT_UPDATES_CRON: '*/10 * * * * *' })).toEqual(['updates.cron (from MG_AGENT_UPDATES_CRON)']);
    expect(problems({ MG_AGENT_UPDATES_CRON: '61 * * * *' })).toEqual(['updates.cron (from MG_AGENT_UPDATES_CRON)']);
    expect(problems({ MG_AGENT_UPDATES_CHECK_INTERVAL_MS: '500' })).toEqual(['updates.checkIntervalMs (from MG_AGENT_UPDATES_CHECK_INTERVAL_MS)']);
  });
});
