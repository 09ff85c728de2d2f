import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { ConfigError, envBindings, loadConfig } from '../../agent/config/load.js';
import { AgentConfigSchema } from '../../agent/config/schema.js';

const EXAMPLE = new URL('../../config/agent.example.json', import.meta.url).pathname;

function fileReader(files: Record<string, string>) {
  return (path: string) => {
    const text = files[path];
    if (text === undefined) throw Object.assign(new Error(`ENOENT: ${path}`), { code: 'ENOENT' });
    return text;
  };
}

function problemsOf(fn: () => unknown): { path: string; message: string }[] {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return (err as ConfigError).problems;
  }
  throw new Error('expected a ConfigError');
}

describe('configuration', () => {
  it('has safe defaults when nothing is configured', () => {
    const { config, file } = loadConfig({ env: {}, readFile: fileReader({}) });
    expect(file).toBeUndefined();
    expect(config.bootstrap.mode).toBe('plain');
    expect(config.bootstrap.timeoutMs).toBe(15_000);
    expect(config.identity.macFormat).toBe('lower-colon');
    expect(config.identity.externalKeyFile).toBe('/etc/mg-device-agent/credentials/external_key');
    expect(config.mqtt.topicScheme).toBe('domain');
    expect(config.mqtt.tlsVerify).toBe(true);
    expect(config.state.dir).toBe('/var/lib/mg-device-agent');
  });

  it('reads the file, then lets MG_AGENT_* variables win, with types coerced', () => {
    const files = { '/c.json': JSON.stringify({ bootstrap: { url: 'http://a:9013', timeoutMs: 5000 }, mqtt: { qos: 0 } }) };
    const { config, file } = loadConfig({
      configPath: '/c.json',
      readFile: fileReader(files),
      env: {
        MG_AGENT_BOOTSTRAP_URL: 'http://b:9013',
        MG_AGENT_MQTT_DOMAIN_ID: 'dom-1',
        MG_AGENT_MQTT_PROTOCOL_VERSION: '5',
        MG_AGENT_MQTT_TLS_VERIFY: 'false',
      },
    });
    expect(file).toBe('/c.json');
    expect(config.bootstrap.url).toBe('http://b:9013');
    expect(config.bootstrap.timeoutMs).toBe(5000);
    expect(config.mqtt.qos).toBe(0);
    expect(config.mqtt.domainId).toBe('dom-1');
    expect(config.mqtt.protocolVersion).toBe(5);
    expect(config.mqtt.tlsVerify).toBe(false);
  });

  it('maps every key to exactly one variable named after it', () => {
    const names = envBindings().map((b) => b.variable);
    expect(new Set(names).size).toBe(names.length);
    expect(names).toContain('MG_AGENT_IDENTITY_EXTERNAL_KEY_FILE');
    expect(names).toContain('MG_AGENT_STATE_KEEP_GENERATIONS');
    expect(names).toContain('MG_AGENT_RETRY_PERMANENT_MAX_DELAY_MS');
    const keys = Object.entries(AgentConfigSchema.shape).length;
    expect(keys).toBeGreaterThan(0);
  });

  it('lists every problem at once, with the path and the variable it came from', () => {
    const files = { '/c.json': JSON.stringify({ bootstrap: { mode: 'fast', timeoutMs: -1, extra: 1 }, mqtt: { url: 'ftp://x' } }) };
    const problems = problemsOf(() =>
      loadConfig({ configPath: '/c.json', readFile: fileReader(files), env: { MG_AGENT_MQTT_QOS: 'two', MG_AGENT_MQTT_TYPO: '1' } }),
    );
    const paths = problems.map((p) => p.path);
    expect(paths).toContain('bootstrap.mode');
    expect(paths).toContain('bootstrap.timeoutMs');
    expect(paths).toContain('mqtt.url');
    expect(paths).toContain('mqtt.qos (from MG_AGENT_MQTT_QOS)');
    expect(paths).toContain('MG_AGENT_MQTT_TYPO');
    expect(problems.find((p) => p.path === 'bootstrap')?.message).toContain('extra');
    expect(problems.find((p) => p.path.startsWith('mqtt.qos'))?.message).toBe('must be 0 or 1');
  });

  it('never quotes the file when it is not JSON (it may be a key file given by mistake)', () => {
    for (const text of ['ExtKeySecret-0123456789', 'Jf9tI5Ta3zQ', '{"bootstrap": {"url": ExtKeySecret}}', '']) {
      const problems = problemsOf(() => loadConfig({ configPath: '/k', readFile: fileReader({ '/k': text }), env: {} }));
      expect(problems).toHaveLength(1);
      expect(problems[0]?.message).toMatch(/^not valid JSON/);
      expect(problems[0]?.message).not.toContain('ExtKey');
      expect(problems[0]?.message).not.toContain('Jf9t');
    }
  });

  it('refuses a Bootstrap URL that already contains the device path', () => {
    const problems = problemsOf(() => loadConfig({ env: { MG_AGENT_BOOTSTRAP_URL: 'http://h:9013/clients/bootstrap' }, readFile: fileReader({}) }));
    expect(problems[0]?.message).toContain('base URL only');
  });

  it('names a file that is not JSON, and a missing explicit file', () => {
    const bad = problemsOf(() => loadConfig({ configPath: '/c.json', readFile: fileReader({ '/c.json': '{ "bootstrap": ' }), env: {} }));
    expect(bad[0]?.message).toMatch(/not valid JSON/);
    expect(() => loadConfig({ configPath: '/nope.json', readFile: fileReader({}), env: {} })).toThrowError(
      expect.objectContaining({ code: 'CONFIG_FILE_UNREADABLE' }),
    );
  });

  it('the README configuration table names every key and its variable', () => {
    const readme = readFileSync(new URL('../../README.md', import.meta.url).pathname, 'utf8');
    for (const b of envBindings()) expect(readme, `README row for ${b.section}.${b.key}`).toContain(`| \`${b.section}.${b.key}\` | \`${b.variable}\` |`);
  });

  it('the example file is valid and documents every key of the schema', () => {
    const text = readFileSync(EXAMPLE, 'utf8');
    const { config } = loadConfig({ configPath: EXAMPLE, env: {} });
    expect(config.bootstrap.url).toBe('http://bootstrap.example.com:9013');
    const raw = JSON.parse(text) as Record<string, Record<string, unknown>>;
    for (const b of envBindings()) {
      expect(raw[b.section], `section ${b.section}`).toBeDefined();
      expect(Object.keys(raw[b.section] ?? {}), `${b.section}.${b.key} in the example`).toContain(b.key);
      expect(Object.keys(raw[b.section] ?? {}), `${b.section}.${b.key} documented`).toContain(`//${b.key}`);
    }
  });
});
