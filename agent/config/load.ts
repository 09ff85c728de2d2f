import { readFileSync } from 'node:fs';
import type { z } from 'zod';
import { AgentError } from '../errors/agent-error.js';
import { AgentConfigSchema, type AgentConfig } from './schema.js';

export const DEFAULT_CONFIG_PATH = '/etc/mg-device-agent/agent.json';
export const ENV_PREFIX = 'MG_AGENT_';

export interface ConfigProblem {
  /** Dotted key path, e.g. "mqtt.url", or the variable name when it came from the environment. */
  path: string;
  message: string;
}

/** Invalid configuration: carries every problem at once so the operator fixes them in one go. */
export class ConfigError extends AgentError {
  readonly problems: ConfigProblem[];
  constructor(problems: ConfigProblem[], source: string) {
    super(
      'CONFIG_INVALID',
      `invalid configuration (${source}): ` + problems.map((p) => `${p.path}: ${p.message}`).join('; '),
      { details: { problems: problems.length } },
    );
    this.problems = problems;
  }
}

type AnyZod = z.ZodType & { _zod: { def: Record<string, unknown> & { type: string } } };

function unwrap(schema: AnyZod): AnyZod {
  let t = schema;
  while (['default', 'optional', 'prefault', 'nullable'].includes(t._zod.def.type)) {
    t = t._zod.def['innerType'] as AnyZod;
  }
  return t;
}

function camelToSnake(name: string): string {
  return name.replace(/([a-z0-9])([A-Z])/g, '$1_$2').toUpperCase();
}

type EnvKind = 'string' | 'number' | 'boolean';

export interface EnvBinding {
  variable: string;
  section: string;
  key: string;
  kind: EnvKind;
}

/**
 * Every configuration key has one variable: MG_AGENT_<SECTION>_<KEY_IN_SNAKE_CASE>, e.g.
 * mqtt.domainId → MG_AGENT_MQTT_DOMAIN_ID. Derived from the schema, so it cannot drift.
 */
export function envBindings(): EnvBinding[] {
  const bindings: EnvBinding[] = [];
  for (const [section, sectionSchema] of Object.entries(AgentConfigSchema.shape)) {
    const obj = unwrap(sectionSchema as unknown as AnyZod) as unknown as { shape: Record<string, AnyZod> };
    for (const [key, field] of Object.entries(obj.shape)) {
      const base = unwrap(field);
      let kind: EnvKind = 'string';
      if (base._zod.def.type === 'number') kind = 'number';
      else if (base._zod.def.type === 'boolean') kind = 'boolean';
      else if (base._zod.def.type === 'union') {
        const options = base._zod.def['options'] as AnyZod[];
        const allNumbers = options.every(
          (o) => o._zod.def.type === 'literal' && (o._zod.def['values'] as unknown[]).every((v) => typeof v === 'number'),
        );
        if (allNumbers) kind = 'number';
      }
      bindings.push({ variable: `${ENV_PREFIX}${camelToSnake(section)}_${camelToSnake(key)}`, section, key, kind });
    }
  }
  return bindings;
}

/** Where JSON.parse gave up, as line and column, without quoting any of the text. */
function describeJsonError(text: string, err: unknown): string {
  const message = (err as Error).message;
  const position = /position (\d+)/.exec(message)?.[1];
  if (/Unexpected end of JSON input/.test(message)) return 'it ends too early';
  const at = position !== undefined ? Number(position) : undefined;
  if (at === undefined) return text.trim() === '' ? 'the file is empty' : 'unexpected character';
  const before = text.slice(0, at).split('\n');
  return `unexpected character at line ${before.length}, column ${(before.at(-1)?.length ?? 0) + 1}`;
}

/** JSON has no comments: keys starting with "//" are documentation and are dropped before validation. */
function stripComments(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(stripComments);
  if (value === null || typeof value !== 'object') return value;
  return Object.fromEntries(
    Object.entries(value as Record<string, unknown>)
      .filter(([k]) => !k.startsWith('//'))
      .map(([k, v]) => [k, stripComments(v)]),
  );
}

function coerce(raw: string, kind: EnvKind): unknown {
  if (kind === 'number') {
    const n = Number(raw.trim());
    return raw.trim() !== '' && Number.isFinite(n) ? n : raw; // leave it a string: zod names the problem
  }
  if (kind === 'boolean') {
    const v = raw.trim().toLowerCase();
    if (['true', '1', 'yes', 'on'].includes(v)) return true;
    if (['false', '0', 'no', 'off'].includes(v)) return false;
    return raw;
  }
  return raw;
}

export interface LoadConfigOptions {
  /** Explicit --config path: must exist. Without it the default path is read if present. */
  configPath?: string;
  env?: NodeJS.ProcessEnv;
  readFile?: (path: string) => string;
}

export interface LoadedConfig {
  config: AgentConfig;
  /** Which file was read, if any. */
  file: string | undefined;
}

/** defaults → JSON file → MG_AGENT_* variables (later wins). Throws ConfigError listing every problem. */
export function loadConfig(options: LoadConfigOptions = {}): LoadedConfig {
  const env = options.env ?? process.env;
  const read = options.readFile ?? ((p: string) => readFileSync(p, 'utf8'));
  const path = options.configPath ?? DEFAULT_CONFIG_PATH;

  let fileValue: Record<string, unknown> = {};
  let file: string | undefined;
  let text: string | undefined;
  try {
    text = read(path);
    file = path;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (!(code === 'ENOENT' && options.configPath === undefined)) {
      throw new AgentError('CONFIG_FILE_UNREADABLE', `cannot read configuration file ${path}: ${code ?? String(err)}`, {
        details: { path, errno: code },
      });
    }
  }
  if (text !== undefined) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch (err) {
      // V8's message quotes the text around the error: never echo it (the file may be a key file by mistake).
      throw new ConfigError([{ path: '(file)', message: `not valid JSON (${describeJsonError(text, err)})` }], path);
    }
    if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
      throw new ConfigError([{ path: '(file)', message: 'must be a JSON object' }], path);
    }
    try {
      fileValue = stripComments(parsed) as Record<string, unknown>;
    } catch {
      // Only a structure deep enough to exhaust the stack fails here (found by the torture harness).
      throw new ConfigError([{ path: '(file)', message: 'nested too deeply to be a configuration' }], path);
    }
  }

  const merged: Record<string, Record<string, unknown>> = {};
  for (const [k, v] of Object.entries(fileValue)) {
    merged[k] = v !== null && typeof v === 'object' && !Array.isArray(v) ? { ...(v as Record<string, unknown>) } : (v as never);
  }
  const fromEnv = new Map<string, string>(); // "section.key" → variable name, for messages
  for (const b of envBindings()) {
    const raw = env[b.variable];
    if (raw === undefined) continue;
    const section = (merged[b.section] ??= {});
    if (typeof section !== 'object') continue; // the file's wrong type is reported by zod below
    section[b.key] = coerce(raw, b.kind);
    fromEnv.set(`${b.section}.${b.key}`, b.variable);
  }
  const known = new Set(envBindings().map((b) => b.variable));
  const unknownVars = Object.keys(env).filter(
    (name) => name.startsWith(ENV_PREFIX) && !known.has(name) && name !== 'MG_AGENT_BOOTSTRAP_ENCRYPT_KEY',
  );

  const result = AgentConfigSchema.safeParse(merged);
  const problems: ConfigProblem[] = unknownVars.map((v) => ({ path: v, message: 'unknown variable (typo?)' }));
  if (!result.success) {
    for (const issue of result.error.issues) {
      const dotted = issue.path.join('.');
      const keys = issue.code === 'unrecognized_keys' ? ` (${(issue as { keys: string[] }).keys.join(', ')})` : '';
      const variable = fromEnv.get(dotted);
      problems.push({ path: variable ? `${dotted} (from ${variable})` : dotted || '(root)', message: issue.message + keys });
    }
  }
  if (problems.length > 0) throw new ConfigError(problems, file ?? 'environment');
  return { config: (result as { data: AgentConfig }).data, file };
}
