import { createHash, randomBytes } from 'node:crypto';
import { basename, join } from 'node:path';
import { z } from 'zod';
import type { CertificateSet, DeviceConfig } from '../bootstrap/model.js';
import { AgentError, isAgentError } from '../errors/agent-error.js';
import type { Logger } from '../logging/logger.js';
import {
  TEMP_MARKER,
  ensureDir,
  fsyncDir,
  isTempName,
  nodeFs,
  osErrorCode,
  storageWriteError,
  writeFileAtomic,
  type EnsureDirResult,
  type Fs,
} from './atomic-write.js';
import { keyMatchesCertificate, toPem, type CertField, type PemKind } from './pem.js';

/*
 * The state directory holds complete configurations ("generations"), each written in full into a
 * hidden temporary directory and renamed into place, and a `current` symlink swapped atomically to
 * the one in use. A power cut at any moment leaves either the old or the new configuration, and
 * whatever does come back torn is detected on load (every file is checked against the sha256
 * recorded in config.json) and set aside in favour of the previous good one.
 *
 *   <stateDir>/ 0700: identity.json 0600, current -> generations/000007, generations/, damaged/
 *   generations/000007/ 0700: config.json 0600, content 0600, certs/{client.crt 0644, client.key 0600, ca.crt 0644}
 */

const DIR_MODE = 0o700;
const SECRET_FILE_MODE = 0o600;
const PUBLIC_FILE_MODE = 0o644;

const CURRENT_LINK = 'current';
const GENERATIONS_DIR = 'generations';
const DAMAGED_DIR = 'damaged';
const IDENTITY_FILE = 'identity.json';
const CONFIG_FILE = 'config.json';
const CONTENT_FILE = 'content';
const CERTS_DIR = 'certs';
const DEFAULT_KEEP_DAMAGED = 3;

type CertSlot = keyof CertificateSet;

interface CertFileSpec {
  slot: CertSlot;
  file: 'certs/client.crt' | 'certs/client.key' | 'certs/ca.crt';
  kind: PemKind;
  field: CertField;
  mode: number;
}

const CERT_FILES: readonly CertFileSpec[] = [
  { slot: 'clientCert', file: 'certs/client.crt', kind: 'certificate', field: 'client_cert', mode: PUBLIC_FILE_MODE },
  { slot: 'clientKey', file: 'certs/client.key', kind: 'private key', field: 'client_key', mode: SECRET_FILE_MODE },
  { slot: 'caCert', file: 'certs/ca.crt', kind: 'certificate', field: 'ca_cert', mode: PUBLIC_FILE_MODE },
];

export interface GenerationPaths {
  content?: string;
  clientCert?: string;
  clientKey?: string;
  caCert?: string;
}

export interface Generation {
  id: number;
  /** Absolute path of generations/NNNNNN (stable while `current` moves on). */
  dir: string;
  /** config.certs holds the PEM text and config.content the content string, as loaded back. */
  config: DeviceConfig;
  fetchedAt: Date;
  externalId: string;
  paths: GenerationPaths;
}

export interface PersistedIdentity {
  externalId: string;
  interfaceName?: string;
  mac?: string;
  /** ISO 8601 time of the first successful bootstrap with this ID. */
  persistedAt: string;
}

export interface GenerationStoreOptions {
  dir: string;
  /** Generations kept on disk, the current one included; the current and previous good ones are always kept. */
  keepGenerations: number;
  logger: Logger;
  fs?: Fs;
  /** Damaged generations kept for support before the oldest are deleted. */
  keepDamaged?: number;
  now?: () => Date;
}

const Sha256Schema = z.string().regex(/^[0-9a-f]{64}$/, 'must be a lowercase sha256 hex digest');

// Loose objects: a field added to DeviceConfig later survives a round trip instead of failing it.
const StoredChannelSchema = z.looseObject({
  id: z.string().min(1),
  name: z.string().optional(),
  metadata: z.record(z.string(), z.unknown()).nullable().optional(),
});

const StoredConfigSchema = z.looseObject({
  family: z.enum(['clients', 'profiles', 'things', 'mainflux']),
  enrollmentId: z.string().optional(),
  mqtt: z.looseObject({ url: z.string(), username: z.string(), password: z.string() }),
  domainId: z.string().optional(),
  channels: z.array(StoredChannelSchema),
});

const ManifestSchema = z.strictObject({
  version: z.literal(1),
  generation: z.number().int().positive(),
  fetchedAt: z.iso.datetime(),
  externalId: z.string().min(1),
  config: StoredConfigSchema,
  files: z.strictObject({
    content: Sha256Schema.optional(),
    'certs/client.crt': Sha256Schema.optional(),
    'certs/client.key': Sha256Schema.optional(),
    'certs/ca.crt': Sha256Schema.optional(),
  }),
});

type Manifest = z.infer<typeof ManifestSchema>;
type ManifestFileName = keyof Manifest['files'];

const IdentitySchema = z.looseObject({
  externalId: z.string().min(1),
  interfaceName: z.string().optional(),
  mac: z.string().optional(),
  persistedAt: z.string().min(1),
});

function formatId(id: number): string {
  return String(id).padStart(6, '0');
}

const GENERATION_NAME = /^\d{6,}$/;
const DAMAGED_NAME = /-(\d{6,})(?:-\d+)?$/;

function sha256(bytes: Buffer): string {
  return createHash('sha256').update(bytes).digest('hex');
}

function describeZodError(error: z.ZodError): string {
  // Paths and codes only: a message could quote a received value, and config.json holds the MQTT password.
  const issue = error.issues[0];
  if (!issue) return 'invalid';
  const path = issue.path.length > 0 ? issue.path.map(String).join('.') : '(root)';
  return `${path}: ${issue.code}`;
}

function problemWithBytes(name: string, bytes: Buffer): string | undefined {
  if (bytes.length === 0) return `${name} is empty`;
  if (bytes.every((b) => b === 0)) return `${name} is zero-filled (${bytes.length} bytes)`;
  return undefined;
}

interface PreparedCandidate {
  config: DeviceConfig;
  storedConfig: Manifest['config'];
  files: { name: ManifestFileName; bytes: Buffer; mode: number }[];
}

type Verification = { ok: true; generation: Generation } | { ok: false; problem: string };

export class GenerationStore {
  private readonly dir: string;
  private readonly generationsDir: string;
  private readonly damagedDir: string;
  private readonly currentPath: string;
  private readonly identityPath: string;
  private readonly keepGenerations: number;
  private readonly keepDamaged: number;
  private readonly log: Logger;
  private readonly fs: Fs;
  private readonly now: () => Date;
  // Operations run one at a time: a load repairing `current` must not race a promote.
  private tail: Promise<unknown> = Promise.resolve();

  constructor(options: GenerationStoreOptions) {
    this.dir = options.dir;
    this.generationsDir = join(options.dir, GENERATIONS_DIR);
    this.damagedDir = join(options.dir, DAMAGED_DIR);
    this.currentPath = join(options.dir, CURRENT_LINK);
    this.identityPath = join(options.dir, IDENTITY_FILE);
    this.keepGenerations = Math.max(2, Math.floor(options.keepGenerations));
    this.keepDamaged = Math.max(1, Math.floor(options.keepDamaged ?? DEFAULT_KEEP_DAMAGED));
    this.log = options.logger;
    this.fs = options.fs ?? nodeFs;
    this.now = options.now ?? (() => new Date());
  }

  private exclusive<T>(operation: () => Promise<T>): Promise<T> {
    const run = this.tail.then(operation, operation);
    this.tail = run.catch(() => undefined);
    return run;
  }

  /** Creates the state directory (0700, tightening a looser one) and removes leftovers of interrupted writes. */
  init(): Promise<void> {
    return this.exclusive(async () => {
      this.logModeFix(this.dir, await ensureDir(this.dir, DIR_MODE, this.fs));
      this.logModeFix(this.generationsDir, await ensureDir(this.generationsDir, DIR_MODE, this.fs));
      let removed = 0;
      for (const parent of [this.dir, this.generationsDir]) {
        const leftovers = (await this.fs.readdir(parent)).filter(isTempName);
        for (const name of leftovers) {
          await this.fs.rm(join(parent, name), { recursive: true, force: true }).catch((error: unknown) => {
            throw storageWriteError('remove leftover', join(parent, name), error);
          });
        }
        if (leftovers.length > 0) await fsyncDir(parent, this.fs);
        removed += leftovers.length;
      }
      if (removed > 0) this.log.info({ removed }, `removed ${removed} leftover temporary file(s) from an interrupted write`);
    });
  }

  private logModeFix(path: string, result: EnsureDirResult): void {
    if (result.modeFixedFrom === undefined) return;
    const from = result.modeFixedFrom.toString(8).padStart(4, '0');
    this.log.warn({ path, previousMode: from, mode: '0700' }, `${path} was mode ${from}; tightened to 0700`);
  }

  /**
   * Validates and writes `config` as a new generation next to the current one, without touching
   * `current`. Certificates are normalised to PEM and checked before anything is written.
   */
  writeCandidate(config: DeviceConfig, meta: { externalId: string; fetchedAt: Date }): Promise<Generation> {
    return this.exclusive(async () => {
      const prepared = prepareCandidate(config);
      if (meta.externalId.length === 0) throw new AgentError('INTERNAL', 'writeCandidate needs a non-empty external ID');
      if (Number.isNaN(meta.fetchedAt.getTime())) throw new AgentError('INTERNAL', 'writeCandidate needs a valid fetchedAt');

      await ensureDir(this.generationsDir, DIR_MODE, this.fs);
      const id = (await this.highestKnownId()) + 1;
      const name = formatId(id);
      const finalDir = join(this.generationsDir, name);
      const tempDir = join(this.generationsDir, `.${name}${TEMP_MARKER}${randomBytes(6).toString('hex')}`);
      const manifest: Manifest = {
        version: 1,
        generation: id,
        fetchedAt: meta.fetchedAt.toISOString(),
        externalId: meta.externalId,
        config: prepared.storedConfig,
        files: Object.fromEntries(prepared.files.map((f) => [f.name, sha256(f.bytes)])),
      };
      let renamed = false;
      try {
        await this.makeDir(tempDir);
        if (prepared.files.some((f) => f.name.startsWith(`${CERTS_DIR}/`))) await this.makeDir(join(tempDir, CERTS_DIR));
        for (const file of prepared.files) {
          await writeFileAtomic(join(tempDir, file.name), file.bytes, { mode: file.mode, fs: this.fs });
        }
        // The manifest goes last: a generation without one is never mistaken for a complete one.
        await writeFileAtomic(join(tempDir, CONFIG_FILE), `${JSON.stringify(manifest, null, 2)}\n`, {
          mode: SECRET_FILE_MODE,
          fs: this.fs,
        });
        await fsyncDir(tempDir, this.fs);
        await this.fs.rename(tempDir, finalDir).catch((error: unknown) => {
          throw storageWriteError('rename generation into', finalDir, error);
        });
        renamed = true;
        await fsyncDir(this.generationsDir, this.fs);
      } catch (error) {
        await this.fs.rm(tempDir, { recursive: true, force: true }).catch(() => undefined);
        if (renamed) await this.fs.rm(finalDir, { recursive: true, force: true }).catch(() => undefined);
        throw storageWriteError('write generation', finalDir, error);
      }
      this.log.debug({ generation: id, files: prepared.files.map((f) => f.name) }, `wrote candidate generation ${id}`);
      return {
        id,
        dir: finalDir,
        config: prepared.config,
        fetchedAt: new Date(manifest.fetchedAt),
        externalId: meta.externalId,
        paths: pathsFor(finalDir, manifest.files),
      };
    });
  }

  private async makeDir(path: string): Promise<void> {
    await this.fs.mkdir(path, { recursive: false, mode: DIR_MODE });
    await this.fs.chmod(path, DIR_MODE);
  }

  /** Points `current` at `gen` atomically, then prunes generations beyond keepGenerations. */
  promote(gen: Generation): Promise<void> {
    return this.exclusive(async () => {
      const stats = await this.fs.lstat(gen.dir).catch(() => undefined);
      if (!stats?.isDirectory()) {
        throw new AgentError('STORAGE_CORRUPT', `generation ${gen.id} is not on disk; cannot promote it`, {
          details: { generation: gen.id, path: gen.dir },
        });
      }
      const previous = await this.readCurrentLink();
      if (previous?.id !== gen.id) await this.pointCurrentAt(gen.id);
      await this.prune(gen.id, previous?.id);
    });
  }

  /** Removes a candidate that was refused. The current generation is never removed. */
  discard(gen: Generation): Promise<void> {
    return this.exclusive(async () => {
      const current = await this.readCurrentLink();
      if (current?.id === gen.id) {
        throw new AgentError('INTERNAL', `refusing to discard generation ${gen.id}: it is the current one`, {
          details: { generation: gen.id },
        });
      }
      try {
        await this.removeGenerationDir(gen.dir);
        await fsyncDir(this.generationsDir, this.fs);
      } catch (error) {
        throw storageWriteError('remove generation', gen.dir, error);
      }
      this.log.debug({ generation: gen.id }, `discarded candidate generation ${gen.id}`);
    });
  }

  /**
   * The verified current generation. A damaged one is moved to damaged/ (one warn line says why)
   * and the highest-numbered valid older generation becomes current; undefined when none is valid.
   */
  loadCurrent(): Promise<Generation | undefined> {
    return this.exclusive(async () => {
      const link = await this.readCurrentLink();
      if (!link) return undefined;

      let problem: string;
      if (link.id === undefined) {
        problem = `"current" points at ${JSON.stringify(link.target)}, which is not a generation`;
      } else {
        const verified = await this.verify(link.id);
        if (verified.ok) return verified.generation;
        problem = verified.problem;
      }

      const fallback = await this.findValidGeneration(link.id);
      let movedTo: string | undefined;
      let repairFailed: string | undefined;
      try {
        if (link.id !== undefined) movedTo = await this.moveToDamaged(link.id);
        if (fallback) await this.pointCurrentAt(fallback.id);
        else {
          await this.fs.unlink(this.currentPath);
          await fsyncDir(this.dir, this.fs);
        }
      } catch (error) {
        // A read-only disk cannot be repaired, but a valid older generation can still be used.
        repairFailed = isAgentError(error) ? String(error.details.osCode ?? error.code) : osErrorCode(error);
      }
      const subject = link.id === undefined ? 'the current configuration' : `generation ${link.id}`;
      const outcome = fallback ? `using generation ${fallback.id} instead` : 'no valid generation remains';
      const aside = movedTo ? `; moved to ${DAMAGED_DIR}/${movedTo}` : '';
      const failed = repairFailed ? ` (could not repair the state directory: ${repairFailed})` : '';
      this.log.warn(
        { generation: link.id, problem, movedTo, fallback: fallback?.id, repairFailed },
        `${subject} is damaged: ${problem}${aside}; ${outcome}${failed}`,
      );
      return fallback;
    });
  }

  /** The persisted external ID, or undefined (with a warning when the file exists but is unusable). */
  loadIdentity(): Promise<PersistedIdentity | undefined> {
    return this.exclusive(async () => {
      let bytes: Buffer;
      try {
        bytes = await this.fs.readFile(this.identityPath);
      } catch (error) {
        const code = osErrorCode(error);
        if (code !== 'ENOENT') this.log.warn({ path: this.identityPath, osCode: code }, `cannot read ${IDENTITY_FILE} (${code}); ignoring it`);
        return undefined;
      }
      let reason: string;
      try {
        const parsed = IdentitySchema.safeParse(JSON.parse(bytes.toString('utf8')));
        if (parsed.success) {
          const { externalId, interfaceName, mac, persistedAt } = parsed.data;
          return {
            externalId,
            persistedAt,
            ...(interfaceName !== undefined ? { interfaceName } : {}),
            ...(mac !== undefined ? { mac } : {}),
          };
        }
        reason = describeZodError(parsed.error);
      } catch {
        reason = problemWithBytes(IDENTITY_FILE, bytes) ?? `not valid JSON (${bytes.length} bytes)`;
      }
      this.log.warn({ path: this.identityPath, problem: reason }, `${IDENTITY_FILE} is unusable (${reason}); ignoring it`);
      return undefined;
    });
  }

  saveIdentity(identity: PersistedIdentity): Promise<void> {
    return this.exclusive(async () => {
      const parsed = IdentitySchema.safeParse(identity);
      if (!parsed.success) throw new AgentError('INTERNAL', `identity to persist is invalid (${describeZodError(parsed.error)})`);
      const record: PersistedIdentity = {
        externalId: identity.externalId,
        ...(identity.interfaceName !== undefined ? { interfaceName: identity.interfaceName } : {}),
        ...(identity.mac !== undefined ? { mac: identity.mac } : {}),
        persistedAt: identity.persistedAt,
      };
      await writeFileAtomic(this.identityPath, `${JSON.stringify(record, null, 2)}\n`, { mode: SECRET_FILE_MODE, fs: this.fs });
    });
  }

  // ---- internals (called only from inside exclusive operations) ----

  private async readCurrentLink(): Promise<{ target: string; id: number | undefined } | undefined> {
    let target: string;
    try {
      target = await this.fs.readlink(this.currentPath);
    } catch (error) {
      const code = osErrorCode(error);
      if (code === 'ENOENT') return undefined;
      // EINVAL: something other than a symlink sits at "current".
      if (code === 'EINVAL') return { target: '(not a symlink)', id: undefined };
      throw new AgentError('STORAGE_CORRUPT', `cannot read ${this.currentPath}: ${code}`, {
        cause: error,
        details: { path: this.currentPath, osCode: code },
      });
    }
    const match = /(?:^|\/)generations\/(\d{6,})\/?$/.exec(target);
    return { target, id: match ? Number(match[1]) : undefined };
  }

  private async pointCurrentAt(id: number): Promise<void> {
    const tempLink = join(this.dir, `.${CURRENT_LINK}${TEMP_MARKER}${randomBytes(6).toString('hex')}`);
    let created = false;
    try {
      // Relative target: the state directory can be moved or inspected from a rescue system.
      await this.fs.symlink(`${GENERATIONS_DIR}/${formatId(id)}`, tempLink);
      created = true;
      await this.fs.rename(tempLink, this.currentPath);
      created = false;
      await fsyncDir(this.dir, this.fs);
    } catch (error) {
      if (created) await this.fs.unlink(tempLink).catch(() => undefined);
      throw storageWriteError('point "current" at generation in', this.dir, error);
    }
  }

  private async listIds(dir: string, pattern: RegExp): Promise<number[]> {
    let names: string[];
    try {
      names = await this.fs.readdir(dir);
    } catch (error) {
      if (osErrorCode(error) === 'ENOENT') return [];
      throw storageWriteError('list', dir, error);
    }
    return names.flatMap((name) => {
      const match = pattern.exec(name);
      return match ? [Number(match[1] ?? match[0])] : [];
    });
  }

  private async generationIds(): Promise<number[]> {
    return (await this.listIds(this.generationsDir, GENERATION_NAME)).sort((a, b) => b - a);
  }

  /** Damaged generations keep their numbers reserved so support can tell them apart (a discarded candidate's may be reused). */
  private async highestKnownId(): Promise<number> {
    const ids = [...(await this.generationIds()), ...(await this.listIds(this.damagedDir, DAMAGED_NAME))];
    return ids.reduce((max, id) => Math.max(max, id), 0);
  }

  private async prune(currentId: number, previousId: number | undefined): Promise<void> {
    const older = (await this.generationIds()).filter((id) => id < currentId);
    const keep = new Set<number>([currentId]);
    if (previousId !== undefined) keep.add(previousId);
    for (const id of older) {
      if (keep.size >= this.keepGenerations) break;
      keep.add(id);
    }
    const removed: number[] = [];
    for (const id of older.filter((candidate) => !keep.has(candidate))) {
      try {
        await this.removeGenerationDir(join(this.generationsDir, formatId(id)));
        removed.push(id);
      } catch (error) {
        // Pruning is housekeeping: a failure leaves an extra directory, never a wrong configuration.
        this.log.warn({ generation: id, osCode: osErrorCode(error) }, `could not remove old generation ${id}`);
      }
    }
    if (removed.length > 0) {
      await fsyncDir(this.generationsDir, this.fs).catch(() => undefined);
      this.log.debug({ removed }, `pruned ${removed.length} old generation(s)`);
    }
  }

  /**
   * Deletes a generation directory so that nobody, not even a power cut half-way, sees it partly
   * deleted: it is renamed to a hidden temporary name first, which init() removes if the deletion
   * was cut short (the torture harness caught a manifest-less generation left by a SIGKILL mid-rm).
   */
  private async removeGenerationDir(dir: string): Promise<void> {
    const doomed = join(this.generationsDir, `.${basename(dir)}${TEMP_MARKER}rm-${randomBytes(6).toString('hex')}`);
    try {
      await this.fs.rename(dir, doomed);
    } catch (error) {
      if (osErrorCode(error) === 'ENOENT') return;
      throw error;
    }
    await this.fs.rm(doomed, { recursive: true, force: true });
  }

  private async moveToDamaged(id: number): Promise<string | undefined> {
    const source = join(this.generationsDir, formatId(id));
    const exists = await this.fs.lstat(source).then(
      () => true,
      () => false,
    );
    if (!exists) return undefined;
    await ensureDir(this.damagedDir, DIR_MODE, this.fs);
    const stamp = this.now().toISOString().replace(/[-:.]/g, '');
    const existing = new Set(await this.fs.readdir(this.damagedDir));
    let name = `${stamp}-${formatId(id)}`;
    for (let n = 1; existing.has(name); n++) name = `${stamp}-${formatId(id)}-${n}`;
    try {
      await this.fs.rename(source, join(this.damagedDir, name));
      await fsyncDir(this.generationsDir, this.fs);
      await fsyncDir(this.damagedDir, this.fs);
    } catch (error) {
      throw storageWriteError('move damaged generation to', join(this.damagedDir, name), error);
    }
    await this.pruneDamaged();
    return name;
  }

  private async pruneDamaged(): Promise<void> {
    // Oldest first by generation number, not by the timestamp: a Pi without an RTC may boot in 1970.
    const idOf = (name: string) => Number(DAMAGED_NAME.exec(name)?.[1] ?? 0);
    const names = (await this.fs.readdir(this.damagedDir))
      .filter((n) => DAMAGED_NAME.test(n))
      .sort((a, b) => idOf(a) - idOf(b) || (a < b ? -1 : a > b ? 1 : 0));
    for (const name of names.slice(0, Math.max(0, names.length - this.keepDamaged))) {
      await this.fs.rm(join(this.damagedDir, name), { recursive: true, force: true }).catch(() => undefined);
    }
  }

  /**
   * The highest-numbered valid generation below `belowId` (any, when undefined). Invalid ones met on
   * the way are moved aside too, each with its own warning, so they are not examined again.
   */
  private async findValidGeneration(belowId: number | undefined): Promise<Generation | undefined> {
    const ids = (await this.generationIds()).filter((id) => belowId === undefined || id < belowId);
    for (const id of ids) {
      const verified = await this.verify(id);
      if (verified.ok) return verified.generation;
      let movedTo: string | undefined;
      try {
        movedTo = await this.moveToDamaged(id);
      } catch {
        movedTo = undefined;
      }
      const aside = movedTo ? `; moved to ${DAMAGED_DIR}/${movedTo}` : '';
      this.log.warn({ generation: id, problem: verified.problem, movedTo }, `older generation ${id} is damaged too: ${verified.problem}${aside}`);
    }
    return undefined;
  }

  private async readGenerationFile(dir: string, name: string): Promise<Buffer | string> {
    try {
      return await this.fs.readFile(join(dir, name));
    } catch (error) {
      const code = osErrorCode(error);
      return code === 'ENOENT' ? `${name} is missing` : `${name} cannot be read (${code})`;
    }
  }

  /** Reads generation `id` back and proves it whole; a description of the first problem otherwise. */
  private async verify(id: number): Promise<Verification> {
    const dir = join(this.generationsDir, formatId(id));
    const fail = (problem: string): Verification => ({ ok: false, problem });
    const stats = await this.fs.lstat(dir).catch(() => undefined);
    if (!stats) return fail(`directory ${GENERATIONS_DIR}/${formatId(id)} is missing`);
    if (!stats.isDirectory()) return fail(`${GENERATIONS_DIR}/${formatId(id)} is not a directory`);

    const manifestBytes = await this.readGenerationFile(dir, CONFIG_FILE);
    if (typeof manifestBytes === 'string') return fail(manifestBytes);
    const byteProblem = problemWithBytes(CONFIG_FILE, manifestBytes);
    if (byteProblem) return fail(byteProblem);
    let json: unknown;
    try {
      json = JSON.parse(manifestBytes.toString('utf8'));
    } catch {
      // Never the parser's message: it quotes the text, which holds the MQTT password.
      return fail(`${CONFIG_FILE} is not valid JSON (${manifestBytes.length} bytes; truncated?)`);
    }
    const parsed = ManifestSchema.safeParse(json);
    if (!parsed.success) return fail(`${CONFIG_FILE} does not match the schema (${describeZodError(parsed.error)})`);
    const manifest = parsed.data;
    if (manifest.generation !== id) return fail(`${CONFIG_FILE} belongs to generation ${manifest.generation}`);

    const contents = new Map<ManifestFileName, Buffer>();
    for (const [name, digest] of Object.entries(manifest.files) as [ManifestFileName, string | undefined][]) {
      if (digest === undefined) continue;
      const bytes = await this.readGenerationFile(dir, name);
      if (typeof bytes === 'string') return fail(bytes);
      if (sha256(bytes) !== digest) {
        return fail(problemWithBytes(name, bytes) ?? `${name} does not match its recorded sha256 (${bytes.length} bytes)`);
      }
      contents.set(name, bytes);
    }

    const certs: CertificateSet = {};
    for (const spec of CERT_FILES) {
      const bytes = contents.get(spec.file);
      if (!bytes) continue;
      try {
        certs[spec.slot] = toPem(bytes.toString('utf8'), spec.kind, spec.field);
      } catch (error) {
        return fail(`${spec.file} is invalid (${isAgentError(error) ? error.message : 'unparsable'})`);
      }
    }
    let pairProblem: string | undefined;
    try {
      pairProblem = certificatePairProblem(certs);
    } catch {
      pairProblem = 'client_cert or client_key cannot be compared';
    }
    if (pairProblem) return fail(pairProblem.replaceAll('client_cert', 'certs/client.crt').replaceAll('client_key', 'certs/client.key'));

    const contentBytes = contents.get(CONTENT_FILE);
    const config: DeviceConfig = {
      ...(manifest.config as Omit<DeviceConfig, 'certs' | 'content'>),
      ...(contentBytes !== undefined ? { content: contentBytes.toString('utf8') } : {}),
      certs,
    };
    return {
      ok: true,
      generation: {
        id,
        dir,
        config,
        fetchedAt: new Date(manifest.fetchedAt),
        externalId: manifest.externalId,
        paths: pathsFor(dir, manifest.files),
      },
    };
  }
}

function pathsFor(dir: string, files: Manifest['files']): GenerationPaths {
  const paths: GenerationPaths = {};
  if (files.content !== undefined) paths.content = join(dir, CONTENT_FILE);
  for (const spec of CERT_FILES) {
    if (files[spec.file] !== undefined) paths[spec.slot] = join(dir, spec.file);
  }
  return paths;
}

/** Why client cert and key cannot be used together, or undefined when they can (or are both absent). */
function certificatePairProblem(certs: CertificateSet): string | undefined {
  if (certs.clientCert !== undefined && certs.clientKey === undefined) return 'client_cert is present but client_key is missing';
  if (certs.clientKey !== undefined && certs.clientCert === undefined) return 'client_key is present but client_cert is missing';
  if (certs.clientCert !== undefined && certs.clientKey !== undefined && !keyMatchesCertificate(certs.clientCert, certs.clientKey)) {
    return 'client_key does not belong to client_cert (their public keys differ)';
  }
  return undefined;
}

/** Everything writeCandidate checks before it touches the disk. */
function prepareCandidate(config: DeviceConfig): PreparedCandidate {
  const certs: CertificateSet = {};
  const files: PreparedCandidate['files'] = [];
  for (const spec of CERT_FILES) {
    const value = config.certs[spec.slot];
    // The server omits empty fields; treat an empty string the same way.
    if (value === undefined || value.trim() === '') continue;
    certs[spec.slot] = toPem(value, spec.kind, spec.field);
  }
  const pairProblem = certificatePairProblem(certs);
  if (pairProblem) {
    const mismatch = certs.clientCert !== undefined && certs.clientKey !== undefined;
    throw new AgentError(mismatch ? 'CERT_KEY_MISMATCH' : 'CERT_INVALID', pairProblem, {
      details: { field: mismatch || certs.clientKey === undefined ? 'client_key' : 'client_cert' },
    });
  }
  if (config.content !== undefined) {
    if (typeof config.content !== 'string') throw new AgentError('INTERNAL', 'content must be a string');
    files.push({ name: CONTENT_FILE, bytes: Buffer.from(config.content, 'utf8'), mode: SECRET_FILE_MODE });
  }
  for (const spec of CERT_FILES) {
    const pem = certs[spec.slot];
    if (pem !== undefined) files.push({ name: spec.file, bytes: Buffer.from(pem, 'utf8'), mode: spec.mode });
  }

  const { certs: _certs, content: _content, ...rest } = config;
  const stored = StoredConfigSchema.safeParse(rest);
  if (!stored.success) {
    // A mapper bug, not a server problem: writing it would only produce a generation that never loads.
    throw new AgentError('INTERNAL', `configuration to store is invalid (${describeZodError(stored.error)})`);
  }
  return {
    config: { ...config, certs },
    storedConfig: stored.data,
    files,
  };
}
