import { createHash } from 'node:crypto';
import { existsSync, lstatSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { join } from 'node:path';
import { isTempName } from '../../storage/atomic-write.js';
import { keyMatchesCertificate } from '../../storage/pem.js';

/**
 * Reads a state directory the way a person auditing it after a power cut would, independently of
 * the store's own loader: every generation must be whole (each file matches the sha256 in its
 * config.json, the client key belongs to the client certificate, nothing is empty), every
 * generation must be exactly one of the configurations the server ever handed out (never a mix of
 * two), and `current` must point at a whole one. Leftover hidden temporary files are allowed: they
 * are what an interrupted write leaves and the agent removes them at start.
 */

/** The files of one configuration as the server handed it out. */
export interface KnownConfig {
  label: string;
  content?: string;
  clientCert?: string;
  clientKey?: string;
  caCert?: string;
}

export interface GenerationOnDisk {
  id: number;
  /** Label of the known configuration it equals; undefined when it matches none (a violation). */
  matches: string | undefined;
}

export interface DiskReport {
  problems: string[];
  generations: GenerationOnDisk[];
  /** Generation `current` points at, when it does. */
  current: GenerationOnDisk | undefined;
  tempLeftovers: number;
  damaged: number;
}

const MANIFEST_FILES = ['content', 'certs/client.crt', 'certs/client.key', 'certs/ca.crt'] as const;

function sha256(bytes: Buffer): string {
  return createHash('sha256').update(bytes).digest('hex');
}

/** PEM text compared without line-ending and trailing-space differences (the store normalises PEM). */
function samePem(a: string | undefined, b: string | undefined): boolean {
  const norm = (s: string | undefined) => (s === undefined || s.trim() === '' ? undefined : s.replace(/\r\n/g, '\n').trim());
  return norm(a) === norm(b);
}

function checkGeneration(dir: string, id: number, known: readonly KnownConfig[] | undefined, problems: string[]): GenerationOnDisk {
  const name = `generations/${String(id).padStart(6, '0')}`;
  const fail = (problem: string): GenerationOnDisk => {
    problems.push(`${name}: ${problem}`);
    return { id, matches: undefined };
  };
  let manifest: { generation?: unknown; files?: Record<string, unknown> };
  try {
    const bytes = readFileSync(join(dir, 'config.json'));
    if (bytes.length === 0) return fail('config.json is empty');
    manifest = JSON.parse(bytes.toString('utf8')) as typeof manifest;
  } catch (error) {
    return fail(`config.json unreadable or not JSON (${(error as NodeJS.ErrnoException).code ?? 'parse error'})`);
  }
  if (manifest.generation !== id) return fail(`config.json says generation ${String(manifest.generation)}`);
  const files: Record<string, string | undefined> = {};
  for (const file of MANIFEST_FILES) {
    const digest = manifest.files?.[file];
    const path = join(dir, file);
    if (digest === undefined) {
      if (existsSync(path)) return fail(`${file} exists but config.json does not list it`);
      continue;
    }
    if (!existsSync(path)) return fail(`${file} is listed but missing`);
    const bytes = readFileSync(path);
    if (bytes.length === 0 && file !== 'content') return fail(`${file} is empty`);
    if (sha256(bytes) !== digest) return fail(`${file} does not match its sha256 (${bytes.length} bytes)`);
    files[file] = bytes.toString('utf8');
  }
  for (const entry of readdirSync(dir)) {
    if (isTempName(entry)) continue;
    if (!['config.json', 'content', 'certs'].includes(entry)) return fail(`unexpected entry ${entry}`);
  }
  const cert = files['certs/client.crt'];
  const key = files['certs/client.key'];
  if ((cert === undefined) !== (key === undefined)) return fail('client certificate without key or key without certificate');
  if (cert !== undefined && key !== undefined) {
    let pair = false;
    try {
      pair = keyMatchesCertificate(cert, key);
    } catch {
      pair = false;
    }
    if (!pair) return fail('client key does not belong to the client certificate');
  }
  if (known === undefined) return { id, matches: 'any' };
  const match = known.find(
    (k) =>
      (k.content ?? undefined) === files['content'] &&
      samePem(k.clientCert, cert) &&
      samePem(k.clientKey, key) &&
      samePem(k.caCert, files['certs/ca.crt']),
  );
  if (!match) return fail('is not any configuration the server handed out (mixed or altered)');
  return { id, matches: match.label };
}

/** `known` undefined: only check that every generation is whole, not which configuration it holds. */
export function checkStateDir(stateDir: string, known: readonly KnownConfig[] | undefined): DiskReport {
  const problems: string[] = [];
  const generations: GenerationOnDisk[] = [];
  let tempLeftovers = 0;
  let damaged = 0;
  if (!existsSync(stateDir)) return { problems, generations, current: undefined, tempLeftovers, damaged };

  for (const entry of readdirSync(stateDir)) {
    const path = join(stateDir, entry);
    if (isTempName(entry)) {
      tempLeftovers++;
      continue;
    }
    const st = lstatSync(path);
    if (st.isFile()) {
      const bytes = readFileSync(path);
      if (bytes.length === 0) problems.push(`${entry} is empty`);
      else if (entry.endsWith('.json')) {
        try {
          JSON.parse(bytes.toString('utf8'));
        } catch {
          problems.push(`${entry} is not valid JSON (${bytes.length} bytes)`);
        }
      }
    }
  }
  const generationsDir = join(stateDir, 'generations');
  if (existsSync(generationsDir)) {
    for (const entry of readdirSync(generationsDir).sort()) {
      if (isTempName(entry)) {
        tempLeftovers++;
        continue;
      }
      if (!/^\d{6,}$/.test(entry)) {
        problems.push(`generations/${entry} is not a generation name`);
        continue;
      }
      generations.push(checkGeneration(join(generationsDir, entry), Number(entry), known, problems));
    }
  }
  const damagedDir = join(stateDir, 'damaged');
  if (existsSync(damagedDir)) damaged = readdirSync(damagedDir).length;
  if (damaged > 0) problems.push(`${damaged} generation(s) were set aside as damaged`);

  let current: GenerationOnDisk | undefined;
  const link = join(stateDir, 'current');
  let target: string | undefined;
  try {
    target = readlinkSync(link);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') problems.push(`current is not a symlink (${(error as NodeJS.ErrnoException).code})`);
  }
  if (target !== undefined) {
    const id = /^generations\/(\d{6,})$/.exec(target)?.[1];
    current = id === undefined ? undefined : generations.find((g) => g.id === Number(id));
    if (!current) problems.push(`current points at ${target}, which is not a generation on disk`);
  }
  return { problems, generations, current, tempLeftovers, damaged };
}
