import { createHash } from 'node:crypto';
import {
  chmodSync,
  copyFileSync,
  existsSync,
  lstatSync,
  mkdirSync,
  readFileSync,
  readdirSync,
  readlinkSync,
  rmSync,
  statSync,
  symlinkSync,
  truncateSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { DeviceConfig } from '../../agent/bootstrap/model.js';
import type { Logger } from '../../agent/logging/logger.js';
import type { Fs } from '../../agent/storage/atomic-write.js';
import { GenerationStore, type Generation } from '../../agent/storage/generation-store.js';
import { faultyFs } from '../helpers/faulty-fs.js';
import { captureLogger } from '../helpers/log-capture.js';
import { useTestPki, pemBody } from '../helpers/openssl-pki.js';
import { makeTempDir } from '../helpers/temp-dir.js';
import { loadVectors, responseVectorById } from '../helpers/vectors.js';
import { rejectedAgentError } from '../helpers/agent-errors.js';

const pki = useTestPki();

let root: string;
let stateDir: string;
let cleanupRoot: () => void;
let savedUmask: number;
let logLines: Record<string, unknown>[];
let logText: string[];
let logger: Logger;

beforeEach(() => {
  ({ dir: root, cleanup: cleanupRoot } = makeTempDir('mgda-store-'));
  stateDir = join(root, 'state');
  savedUmask = process.umask();
  ({ logger, lines: logLines, raw: logText } = captureLogger());
});
afterEach(() => {
  process.umask(savedUmask);
  cleanupRoot();
});

const MQTT_PASSWORD = '30c775d7-3504-42c6-976c-52c02474bf2f';
const V030_CONTENT = (() => {
  const vector = responseVectorById(loadVectors(), 'resp-K32-v030-full');
  return (JSON.parse(vector.plain_endpoint_body) as { content: string }).content;
})();
const FETCHED_AT = new Date('2026-01-02T03:04:05.678Z');

function newStore(options: { keepGenerations?: number; fs?: Fs } = {}): GenerationStore {
  return new GenerationStore({ dir: stateDir, keepGenerations: options.keepGenerations ?? 3, logger, ...(options.fs ? { fs: options.fs } : {}) });
}

function rsaConfig(overrides: Partial<DeviceConfig> = {}): DeviceConfig {
  return {
    family: 'profiles',
    enrollmentId: '3094cf29-e73f-4be1-a4d2-b5c5d7a827ec',
    mqtt: { url: 'ssl://messaging.example.com:8883', username: 'ffec2491-0de1-4051-9e75-ad2e2d241627', password: MQTT_PASSWORD },
    domainId: 'e9692c28-b730-4797-8a15-2e25c08f9641',
    channels: [
      { id: 'bc9a0af7-6d0f-4806-aa5a-61d68c0a7cf7', name: 'commands', metadata: { type: 'control' } },
      { id: 'b465a688-c1ca-417d-a36f-71f6f1be2409', name: 'telemetry', metadata: null },
    ],
    content: V030_CONTENT,
    certs: { clientCert: pki.rsa.certPem, clientKey: pki.rsa.keyPkcs8Pem, caCert: pki.caCertPem },
    ...overrides,
  };
}

function ecConfig(overrides: Partial<DeviceConfig> = {}): DeviceConfig {
  return rsaConfig({
    family: 'clients',
    content: 'second generation ✓\r\n  ',
    certs: { clientCert: pki.ec.certPem, clientKey: pki.ec.keySec1Pem, caCert: pki.caBundlePem },
    ...overrides,
  });
}

async function writeAndPromote(store: GenerationStore, config: DeviceConfig): Promise<Generation> {
  const gen = await store.writeCandidate(config, { externalId: 'dc:a6:32:01:02:03', fetchedAt: FETCHED_AT });
  await store.promote(gen);
  return gen;
}

function modeOf(path: string): number {
  return lstatSync(path).mode & 0o777;
}

function genDir(id: number): string {
  return join(stateDir, 'generations', String(id).padStart(6, '0'));
}

/** Every entry under the state directory: type, mode and exact bytes or link target. */
function snapshot(dir = stateDir): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (path: string, rel: string) => {
    const stats = lstatSync(path);
    const mode = (stats.mode & 0o777).toString(8);
    if (stats.isSymbolicLink()) out[rel] = `link ${readlinkSync(path)}`;
    else if (stats.isDirectory()) {
      out[rel] = `dir ${mode}`;
      for (const name of readdirSync(path).sort()) walk(join(path, name), rel ? `${rel}/${name}` : name);
    } else out[rel] = `file ${mode} ${readFileSync(path).toString('base64')}`;
  };
  walk(dir, '');
  return out;
}

function warnings(): Record<string, unknown>[] {
  return logLines.filter((l) => l.level === 'warn');
}

function sha256(bytes: Buffer): string {
  return createHash('sha256').update(bytes).digest('hex');
}

/** Fails when any log line carries private key material or the MQTT password. */
function expectLogsFreeOfSecrets(): void {
  const all = logText.join('\n');
  expect(all).not.toContain(MQTT_PASSWORD.slice(0, 8));
  for (const pem of [pki.rsa.keyPkcs8Pem, pki.ec.keySec1Pem, pki.unrelatedRsaKeyPem, pki.unrelatedEcKeyPem]) {
    const body = pemBody(pem);
    for (let at = 0; at + 24 <= body.length; at += 24) expect(all).not.toContain(body.slice(at, at + 24));
  }
}

describe('init', () => {
  it('creates the state directory and generations/ with mode 0700 even under umask 0', async () => {
    process.umask(0);
    await newStore().init();
    expect(modeOf(stateDir)).toBe(0o700);
    expect(modeOf(join(stateDir, 'generations'))).toBe(0o700);
  });

  it('tightens a state directory that is too open, with one warning', async () => {
    mkdirSync(stateDir);
    chmodSync(stateDir, 0o755);
    await newStore().init();
    expect(modeOf(stateDir)).toBe(0o700);
    expect(warnings()).toHaveLength(1);
    expect(warnings()[0]!.msg).toBe(`${stateDir} was mode 0755; tightened to 0700`);
  });

  it('removes what an interrupted write left behind and nothing else', async () => {
    const store = newStore();
    await store.init();
    await writeAndPromote(store, rsaConfig());
    await store.saveIdentity({ externalId: 'dc:a6:32:01:02:03', persistedAt: FETCHED_AT.toISOString() });
    const before = snapshot();
    writeFileSync(join(stateDir, '.identity.json.tmp-123-abcdef'), '{"externalId":');
    symlinkSync('generations/000009', join(stateDir, '.current.tmp-123-abcdef'));
    mkdirSync(join(stateDir, 'generations', '.000002.tmp-abcdef', 'certs'), { recursive: true });
    writeFileSync(join(stateDir, 'generations', '.000002.tmp-abcdef', 'certs', 'client.crt'), 'half a cert');

    await newStore().init();

    expect(snapshot()).toEqual(before);
    expect(logLines.some((l) => l.msg === 'removed 3 leftover temporary file(s) from an interrupted write')).toBe(true);
  });
});

describe('writeCandidate, promote, loadCurrent', () => {
  it('lays out a generation with exact modes under umask 0 and points current at it', async () => {
    process.umask(0);
    const store = newStore();
    await store.init();
    const gen = await writeAndPromote(store, rsaConfig());
    await store.saveIdentity({ externalId: 'dc:a6:32:01:02:03', interfaceName: 'eth0', mac: 'dc:a6:32:01:02:03', persistedAt: FETCHED_AT.toISOString() });

    expect(gen.id).toBe(1);
    expect(gen.dir).toBe(genDir(1));
    expect(readlinkSync(join(stateDir, 'current'))).toBe('generations/000001');
    expect(snapshotModes()).toEqual({
      '': '700',
      current: 'link',
      generations: '700',
      'generations/000001': '700',
      'generations/000001/config.json': '600',
      'generations/000001/content': '600',
      'generations/000001/certs': '700',
      'generations/000001/certs/client.crt': '644',
      'generations/000001/certs/client.key': '600',
      'generations/000001/certs/ca.crt': '644',
      'identity.json': '600',
    });
    expect(gen.paths).toEqual({
      content: join(genDir(1), 'content'),
      clientCert: join(genDir(1), 'certs/client.crt'),
      clientKey: join(genDir(1), 'certs/client.key'),
      caCert: join(genDir(1), 'certs/ca.crt'),
    });
  });

  it('keeps 0644/0600 under a strict umask too', async () => {
    process.umask(0o077);
    const store = newStore();
    await store.init();
    await writeAndPromote(store, rsaConfig());
    expect(modeOf(join(genDir(1), 'certs/client.crt'))).toBe(0o644);
    expect(modeOf(join(genDir(1), 'certs/ca.crt'))).toBe(0o644);
    expect(modeOf(join(genDir(1), 'certs/client.key'))).toBe(0o600);
  });

  it('writes content and certificates byte for byte and a manifest that describes them', async () => {
    const store = newStore();
    await store.init();
    await writeAndPromote(store, rsaConfig());
    const dir = genDir(1);
    expect(readFileSync(join(dir, 'content'))).toEqual(Buffer.from(V030_CONTENT, 'utf8'));
    expect(readFileSync(join(dir, 'certs/client.crt'), 'utf8')).toBe(pki.rsa.certPem);
    expect(readFileSync(join(dir, 'certs/client.key'), 'utf8')).toBe(pki.rsa.keyPkcs8Pem);
    expect(readFileSync(join(dir, 'certs/ca.crt'), 'utf8')).toBe(pki.caCertPem);

    const manifest = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')) as Record<string, unknown>;
    const { certs: _certs, content: _content, ...withoutFiles } = rsaConfig();
    expect(manifest).toEqual({
      version: 1,
      generation: 1,
      fetchedAt: '2026-01-02T03:04:05.678Z',
      externalId: 'dc:a6:32:01:02:03',
      config: withoutFiles,
      files: {
        content: sha256(readFileSync(join(dir, 'content'))),
        'certs/client.crt': sha256(readFileSync(join(dir, 'certs/client.crt'))),
        'certs/client.key': sha256(readFileSync(join(dir, 'certs/client.key'))),
        'certs/ca.crt': sha256(readFileSync(join(dir, 'certs/ca.crt'))),
      },
    });
  });

  it('keeps awkward content exactly: non-ASCII, CRLF, trailing whitespace, empty', async () => {
    const store = newStore();
    await store.init();
    for (const content of ['température ✓ 温度 \u0000\r\nline\r\n\t  ', '', '\n']) {
      const gen = await writeAndPromote(store, rsaConfig({ content }));
      expect(readFileSync(join(gen.dir, 'content'))).toEqual(Buffer.from(content, 'utf8'));
      const loaded = await newStore().loadCurrent();
      expect(loaded?.id).toBe(gen.id);
      expect(loaded?.config.content).toBe(content);
    }
    expect(warnings()).toEqual([]);
  });

  it('writes base64 DER certificates and keys as PEM', async () => {
    const store = newStore();
    await store.init();
    const gen = await writeAndPromote(
      store,
      rsaConfig({ certs: { clientCert: pki.ec.certDerBase64, clientKey: pki.ec.keySec1DerBase64, caCert: pki.caCertPem.replace(/\n/g, '\r\n') } }),
    );
    expect(readFileSync(gen.paths.clientCert!, 'utf8')).toBe(pki.ec.certPem);
    expect(readFileSync(gen.paths.clientKey!, 'utf8')).toBe(pki.ec.keySec1Pem);
    expect(readFileSync(gen.paths.caCert!, 'utf8')).toBe(pki.caCertPem);
    expect(gen.config.certs).toEqual({ clientCert: pki.ec.certPem, clientKey: pki.ec.keySec1Pem, caCert: pki.caCertPem });
  });

  it('writes no certs directory and no content file when there are none', async () => {
    const store = newStore();
    await store.init();
    const { content: _omitted, ...noContent } = rsaConfig({ certs: {} });
    const gen = await writeAndPromote(store, noContent);
    expect(readdirSync(gen.dir)).toEqual(['config.json']);
    expect(gen.paths).toEqual({});
    const loaded = await newStore().loadCurrent();
    expect(loaded?.config).toEqual({ ...noContent, certs: {} });
    expect(loaded?.config.content).toBeUndefined();
  });

  it('loads back after a restart exactly what it wrote', async () => {
    const store = newStore();
    await store.init();
    const written = await writeAndPromote(store, rsaConfig());
    const reloaded = newStore();
    await reloaded.init();
    const loaded = await reloaded.loadCurrent();
    expect(loaded).toEqual(written);
    expect(loaded?.config).toEqual(rsaConfig());
    expect(loaded?.fetchedAt).toEqual(FETCHED_AT);
    expect(loaded?.externalId).toBe('dc:a6:32:01:02:03');
  });

  it('does not make a candidate current before promote, and has nothing to load before the first one', async () => {
    const store = newStore();
    await store.init();
    expect(await store.loadCurrent()).toBeUndefined();
    const candidate = await store.writeCandidate(rsaConfig(), { externalId: 'x', fetchedAt: FETCHED_AT });
    expect(existsSync(join(stateDir, 'current'))).toBe(false);
    expect(await store.loadCurrent()).toBeUndefined();
    expect(existsSync(candidate.dir)).toBe(true);
  });

  it('numbers generations upwards and swaps current from one to the next', async () => {
    const store = newStore();
    await store.init();
    await writeAndPromote(store, rsaConfig());
    const second = await store.writeCandidate(ecConfig(), { externalId: 'x', fetchedAt: FETCHED_AT });
    expect(second.id).toBe(2);
    expect(readlinkSync(join(stateDir, 'current'))).toBe('generations/000001');
    expect((await store.loadCurrent())?.id).toBe(1);
    await store.promote(second);
    expect(readlinkSync(join(stateDir, 'current'))).toBe('generations/000002');
    const loaded = await newStore().loadCurrent();
    expect(loaded?.config).toEqual(ecConfig());
    expect(readdirSync(stateDir).sort()).toEqual(['current', 'generations']);
  });
});

function snapshotModes(): Record<string, string> {
  return Object.fromEntries(
    Object.entries(snapshot()).map(([path, entry]) => {
      const [type, mode] = entry.split(' ');
      return [path, type === 'link' ? 'link' : mode!];
    }),
  );
}

describe('writeCandidate refuses bad certificates before touching the disk', () => {
  const cases: [string, () => DeviceConfig, string, RegExp][] = [
    ['an unparsable client certificate', () => rsaConfig({ certs: { ...rsaConfig().certs, clientCert: pki.rsa.certPem.slice(0, 200) } }), 'CERT_INVALID', /^client_cert: /],
    ['the MQTT secret under client_key', () => rsaConfig({ certs: { ...rsaConfig().certs, clientKey: MQTT_PASSWORD } }), 'CERT_INVALID', /^client_key: /],
    ['a broken CA certificate', () => rsaConfig({ certs: { ...rsaConfig().certs, caCert: '-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n' } }), 'CERT_INVALID', /^ca_cert: /],
    ['a key that belongs to another certificate', () => rsaConfig({ certs: { ...rsaConfig().certs, clientKey: pki.unrelatedRsaKeyPem } }), 'CERT_KEY_MISMATCH', /client_key does not belong to client_cert/],
    ['the EC key with the RSA certificate', () => rsaConfig({ certs: { ...rsaConfig().certs, clientKey: pki.ec.keySec1Pem } }), 'CERT_KEY_MISMATCH', /client_key does not belong/],
    ['a certificate without its key', () => rsaConfig({ certs: { clientCert: pki.rsa.certPem, caCert: pki.caCertPem } }), 'CERT_INVALID', /client_key is missing/],
    ['a key without its certificate', () => rsaConfig({ certs: { clientKey: pki.rsa.keyPkcs8Pem } }), 'CERT_INVALID', /client_cert is missing/],
  ];
  for (const [name, makeConfig, code, message] of cases) {
    it(`${name}: ${code}, previous generation kept byte for byte`, async () => {
      const store = newStore();
      await store.init();
      await writeAndPromote(store, ecConfig());
      const before = snapshot();

      const error = await rejectedAgentError(() => store.writeCandidate(makeConfig(), { externalId: 'x', fetchedAt: FETCHED_AT }));

      expect(error.code).toBe(code);
      expect(error.message).toMatch(message);
      expect(snapshot()).toEqual(before);
      expect((await newStore().loadCurrent())?.config).toEqual(ecConfig());
      const told = JSON.stringify(error.toLog()) + error.message;
      expect(told).not.toContain(MQTT_PASSWORD);
      for (const pem of [pki.rsa.keyPkcs8Pem, pki.unrelatedRsaKeyPem, pki.ec.keySec1Pem]) expect(told).not.toContain(pemBody(pem).slice(40, 80));
    });
  }
});

describe('a failure while writing a generation', () => {
  const failures: [string, (op: string, path: string) => string | undefined, string][] = [
    ['ENOSPC half-way through the private key', (op, path) => (op === 'write' && path.includes('client.key') ? 'ENOSPC' : undefined), 'ENOSPC'],
    ['EROFS when writing the manifest', (op, path) => (op === 'open' && path.includes('config.json') ? 'EROFS' : undefined), 'EROFS'],
    ['EIO on fsync of the certs directory', (op, path) => (op === 'fsync' && path.endsWith('/certs') ? 'EIO' : undefined), 'EIO'],
    ['EACCES renaming the generation into place', (op, path) => (op === 'rename' && /generations\/\d+$/.test(path) ? 'EACCES' : undefined), 'EACCES'],
    ['EIO on fsync of generations/ after the rename', (op, path) => (op === 'fsync' && path.endsWith('/generations') ? 'EIO' : undefined), 'EIO'],
  ];
  for (const [name, rule, osCode] of failures) {
    it(`${name}: no partial generation, current unchanged`, async () => {
      const store = newStore();
      await store.init();
      await writeAndPromote(store, rsaConfig());
      const before = snapshot();
      let armed = true;
      const broken = newStore({ fs: faultyFs((op, path) => (armed ? rule(op, path) : undefined), { maxWriteBytes: 64 }) });

      const error = await rejectedAgentError(() => broken.writeCandidate(ecConfig(), { externalId: 'x', fetchedAt: FETCHED_AT }));

      expect(error.code).toBe('STORAGE_WRITE_FAILED');
      expect(error.details.osCode).toBe(osCode);
      expect(snapshot()).toEqual(before);
      expect((await newStore().loadCurrent())?.config).toEqual(rsaConfig());
      // Once the disk recovers, the next attempt succeeds.
      armed = false;
      const retry = await broken.writeCandidate(ecConfig(), { externalId: 'x', fetchedAt: FETCHED_AT });
      await broken.promote(retry);
      expect((await newStore().loadCurrent())?.config).toEqual(ecConfig());
    });
  }

  it('a failed promote leaves current where it was and the candidate intact', async () => {
    const store = newStore();
    await store.init();
    await writeAndPromote(store, rsaConfig());
    const broken = newStore({ fs: faultyFs((op, path) => (op === 'rename' && path.endsWith('/current') ? 'EROFS' : undefined)) });
    const candidate = await broken.writeCandidate(ecConfig(), { externalId: 'x', fetchedAt: FETCHED_AT });
    const error = await rejectedAgentError(() => broken.promote(candidate));
    expect(error.code).toBe('STORAGE_WRITE_FAILED');
    expect(error.details.osCode).toBe('EROFS');
    expect(readlinkSync(join(stateDir, 'current'))).toBe('generations/000001');
    expect(readdirSync(stateDir).sort()).toEqual(['current', 'generations']);
    expect((await newStore().loadCurrent())?.id).toBe(1);
  });
});

describe('concurrent callers', () => {
  it('get distinct, complete generations', async () => {
    const store = newStore({ keepGenerations: 5 });
    await store.init();
    const written = await Promise.all([rsaConfig({ content: 'a' }), ecConfig({ content: 'b' }), rsaConfig({ content: 'c' })].map((c) => store.writeCandidate(c, { externalId: 'x', fetchedAt: FETCHED_AT })));
    expect(written.map((g) => g.id)).toEqual([1, 2, 3]);
    for (const gen of written) {
      await store.promote(gen);
      expect((await newStore().loadCurrent())?.config.content).toBe(gen.config.content);
    }
  });
});

describe('pruning and discarding', () => {
  it('keeps keepGenerations generations', async () => {
    const store = newStore({ keepGenerations: 3 });
    await store.init();
    for (let i = 0; i < 6; i++) await writeAndPromote(store, i % 2 ? ecConfig() : rsaConfig());
    expect(readdirSync(join(stateDir, 'generations')).sort()).toEqual(['000004', '000005', '000006']);
    expect(readlinkSync(join(stateDir, 'current'))).toBe('generations/000006');
  });

  it('never prunes the previous good generation, even when newer candidates exist', async () => {
    const store = newStore({ keepGenerations: 2 });
    await store.init();
    await writeAndPromote(store, rsaConfig());
    const good = await writeAndPromote(store, ecConfig());
    // A candidate that was never promoted (the agent restarted before trying it).
    await store.writeCandidate(rsaConfig(), { externalId: 'x', fetchedAt: FETCHED_AT });
    await writeAndPromote(store, rsaConfig({ content: 'four' }));
    expect(readdirSync(join(stateDir, 'generations')).sort()).toEqual(['000002', '000004']);
    expect(good.id).toBe(2);
  });

  it('discard removes a refused candidate and refuses to remove the current one', async () => {
    const store = newStore();
    await store.init();
    const current = await writeAndPromote(store, rsaConfig());
    const before = snapshot();
    const candidate = await store.writeCandidate(ecConfig(), { externalId: 'x', fetchedAt: FETCHED_AT });
    await store.discard(candidate);
    expect(snapshot()).toEqual(before);
    const error = await rejectedAgentError(() => store.discard(current));
    expect(error.code).toBe('INTERNAL');
    expect(snapshot()).toEqual(before);
  });
});

describe('loadCurrent recovers from torn or damaged generations', () => {
  async function twoGenerations(): Promise<{ first: Generation; second: Generation }> {
    const store = newStore();
    await store.init();
    const first = await writeAndPromote(store, rsaConfig());
    const second = await writeAndPromote(store, ecConfig());
    return { first, second };
  }

  function zeroFill(path: string): void {
    writeFileSync(path, Buffer.alloc(statSync(path).size));
  }

  function rewriteManifestHash(dir: string, file: string): void {
    const manifestPath = join(dir, 'config.json');
    const manifest = JSON.parse(readFileSync(manifestPath, 'utf8')) as { files: Record<string, string> };
    manifest.files[file] = sha256(readFileSync(join(dir, file)));
    writeFileSync(manifestPath, JSON.stringify(manifest));
  }

  const damages: [string, (dirs: { first: string; second: string }) => void, string][] = [
    ['an empty content file', ({ second }) => truncateSync(join(second, 'content'), 0), 'content is empty'],
    ['a zero-filled private key', ({ second }) => zeroFill(join(second, 'certs/client.key')), 'certs/client.key is zero-filled'],
    ['a zero-filled config.json', ({ second }) => zeroFill(join(second, 'config.json')), 'config.json is zero-filled'],
    ['an empty config.json', ({ second }) => truncateSync(join(second, 'config.json'), 0), 'config.json is empty'],
    ['a truncated config.json', ({ second }) => truncateSync(join(second, 'config.json'), 300), 'config.json is not valid JSON (300 bytes; truncated?)'],
    ['a truncated certificate', ({ second }) => truncateSync(join(second, 'certs/client.crt'), 100), 'certs/client.crt does not match its recorded sha256 (100 bytes)'],
    ['a missing CA certificate', ({ second }) => rmSync(join(second, 'certs/ca.crt')), 'certs/ca.crt is missing'],
    ['a missing config.json', ({ second }) => rmSync(join(second, 'config.json')), 'config.json is missing'],
    [
      'a key copied from another generation',
      ({ first, second }) => copyFileSync(join(first, 'certs/client.key'), join(second, 'certs/client.key')),
      'certs/client.key does not match its recorded sha256',
    ],
    [
      'cert and key from different generations with a manifest that agrees',
      ({ first, second }) => {
        copyFileSync(join(first, 'certs/client.key'), join(second, 'certs/client.key'));
        rewriteManifestHash(second, 'certs/client.key');
      },
      'certs/client.key does not belong to certs/client.crt',
    ],
    [
      'a certificate file that is not a certificate',
      ({ second }) => {
        writeFileSync(join(second, 'certs/client.crt'), 'garbage\n');
        rewriteManifestHash(second, 'certs/client.crt');
      },
      'certs/client.crt is invalid (client_cert: ',
    ],
    [
      'a manifest that fails the schema',
      ({ second }) => {
        const manifest = JSON.parse(readFileSync(join(second, 'config.json'), 'utf8')) as { config: { mqtt: Record<string, unknown> } };
        manifest.config.mqtt.password = 42;
        writeFileSync(join(second, 'config.json'), JSON.stringify(manifest));
      },
      'config.json does not match the schema (config.mqtt.password: invalid_type)',
    ],
  ];

  for (const [name, damage, problem] of damages) {
    it(`${name}: one warning, moved to damaged/, previous generation current again`, async () => {
      const { first } = await twoGenerations();
      const firstBefore = snapshot(first.dir);
      damage({ first: first.dir, second: genDir(2) });
      const damagedBytes = snapshot(genDir(2));
      logLines.length = 0;
      logText.length = 0;

      const loaded = await newStore().loadCurrent();

      expect(loaded?.id).toBe(1);
      expect(loaded?.config).toEqual(rsaConfig());
      expect(readlinkSync(join(stateDir, 'current'))).toBe('generations/000001');
      expect(snapshot(first.dir)).toEqual(firstBefore);
      expect(existsSync(genDir(2))).toBe(false);
      const aside = readdirSync(join(stateDir, 'damaged'));
      expect(aside).toHaveLength(1);
      expect(aside[0]).toMatch(/^\d{8}T\d{9}Z-000002$/);
      expect(snapshot(join(stateDir, 'damaged', aside[0]!))).toEqual(damagedBytes);

      expect(warnings()).toHaveLength(1);
      const line = warnings()[0]!;
      expect(line.msg).toContain('generation 2 is damaged: ');
      expect(line.msg).toContain(problem);
      expect(line.msg).toContain(`moved to damaged/${aside[0]}; using generation 1 instead`);
      expect(line).toMatchObject({ generation: 2, fallback: 1, movedTo: aside[0] });
      expectLogsFreeOfSecrets();

      // Repaired for good: the next start loads generation 1 silently, and numbering never reuses 2.
      const again = newStore();
      expect((await again.loadCurrent())?.id).toBe(1);
      expect(warnings()).toHaveLength(1);
      expect((await again.writeCandidate(ecConfig(), { externalId: 'x', fetchedAt: FETCHED_AT })).id).toBe(3);
    });
  }

  it('a dangling current symlink: one warning, previous generation current again', async () => {
    await twoGenerations();
    rmSync(genDir(2), { recursive: true });
    logLines.length = 0;
    const loaded = await newStore().loadCurrent();
    expect(loaded?.id).toBe(1);
    expect(readlinkSync(join(stateDir, 'current'))).toBe('generations/000001');
    expect(warnings()).toHaveLength(1);
    expect(warnings()[0]!.msg).toBe('generation 2 is damaged: directory generations/000002 is missing; using generation 1 instead');
    expect(existsSync(join(stateDir, 'damaged'))).toBe(false);
  });

  it('the only generation damaged: undefined, current removed, generation kept aside', async () => {
    const store = newStore();
    await store.init();
    await writeAndPromote(store, rsaConfig());
    zeroFill(join(genDir(1), 'certs/client.crt'));
    logLines.length = 0;
    expect(await newStore().loadCurrent()).toBeUndefined();
    expect(existsSync(join(stateDir, 'current'))).toBe(false);
    expect(readdirSync(join(stateDir, 'generations'))).toEqual([]);
    expect(readdirSync(join(stateDir, 'damaged'))).toHaveLength(1);
    expect(warnings()).toHaveLength(1);
    expect(warnings()[0]!.msg).toContain('generation 1 is damaged: certs/client.crt is zero-filled');
    expect(warnings()[0]!.msg).toContain('no valid generation remains');
  });

  it('skips an older generation that is damaged too and falls back further', async () => {
    const store = newStore({ keepGenerations: 5 });
    await store.init();
    await writeAndPromote(store, rsaConfig({ content: 'one' }));
    await writeAndPromote(store, rsaConfig({ content: 'two' }));
    await writeAndPromote(store, rsaConfig({ content: 'three' }));
    truncateSync(join(genDir(3), 'config.json'), 10);
    rmSync(join(genDir(2), 'content'));
    logLines.length = 0;
    const loaded = await newStore().loadCurrent();
    expect(loaded?.config.content).toBe('one');
    expect(readlinkSync(join(stateDir, 'current'))).toBe('generations/000001');
    expect(readdirSync(join(stateDir, 'generations'))).toEqual(['000001']);
    expect(readdirSync(join(stateDir, 'damaged'))).toHaveLength(2);
    expect(warnings().map((l) => l.generation)).toEqual([2, 3]);
  });

  it('a current symlink that points outside generations/: falls back to the newest valid generation', async () => {
    await twoGenerations();
    rmSync(join(stateDir, 'current'));
    symlinkSync('../../etc', join(stateDir, 'current'));
    logLines.length = 0;
    expect((await newStore().loadCurrent())?.id).toBe(2);
    expect(readlinkSync(join(stateDir, 'current'))).toBe('generations/000002');
    expect(warnings()).toHaveLength(1);
    expect(warnings()[0]!.msg).toBe('the current configuration is damaged: "current" points at "../../etc", which is not a generation; using generation 2 instead');
  });

  it('never falls forward onto a newer candidate that was not promoted', async () => {
    const store = newStore();
    await store.init();
    await writeAndPromote(store, rsaConfig());
    await store.writeCandidate(ecConfig(), { externalId: 'x', fetchedAt: FETCHED_AT });
    zeroFill(join(genDir(1), 'config.json'));
    expect(await newStore().loadCurrent()).toBeUndefined();
    expect(existsSync(genDir(2))).toBe(true);
  });

  it('on a read-only disk still returns the previous generation and says it could not repair', async () => {
    await twoGenerations();
    zeroFill(join(genDir(2), 'certs/client.key'));
    logLines.length = 0;
    const readOnly = faultyFs((op) => (['rename', 'symlink', 'mkdir', 'unlink', 'rm', 'chmod'].includes(op) ? 'EROFS' : undefined));
    const loaded = await newStore({ fs: readOnly }).loadCurrent();
    expect(loaded?.id).toBe(1);
    expect(readlinkSync(join(stateDir, 'current'))).toBe('generations/000002');
    expect(warnings()).toHaveLength(1);
    expect(warnings()[0]!.msg).toContain('using generation 1 instead (could not repair the state directory: EROFS)');
  });

  it('keeps at most keepDamaged damaged generations', async () => {
    const store = new GenerationStore({ dir: stateDir, keepGenerations: 10, keepDamaged: 2, logger });
    await store.init();
    await writeAndPromote(store, rsaConfig());
    for (let i = 0; i < 4; i++) {
      const gen = await writeAndPromote(store, ecConfig());
      truncateSync(join(gen.dir, 'content'), 0);
      expect((await store.loadCurrent())?.id).toBe(1);
    }
    const aside = readdirSync(join(stateDir, 'damaged')).sort();
    expect(aside.map((n) => n.slice(-6))).toEqual(['000004', '000005']);
  });
});

describe('identity', () => {
  it('persists the external ID atomically with mode 0600 and reads it back after a restart', async () => {
    process.umask(0);
    const store = newStore();
    await store.init();
    expect(await store.loadIdentity()).toBeUndefined();
    const identity = { externalId: 'dc:a6:32:01:02:03', interfaceName: 'eth0', mac: 'dc:a6:32:01:02:03', persistedAt: FETCHED_AT.toISOString() };
    await store.saveIdentity(identity);
    expect(modeOf(join(stateDir, 'identity.json'))).toBe(0o600);
    expect(JSON.parse(readFileSync(join(stateDir, 'identity.json'), 'utf8'))).toEqual(identity);
    expect(await newStore().loadIdentity()).toEqual(identity);
    expect(readdirSync(stateDir).sort()).toEqual(['generations', 'identity.json']);
    expect(warnings()).toEqual([]);
  });

  for (const [name, bytes] of [
    ['truncated', Buffer.from('{"externalId":"dc:a6')],
    ['zero-filled', Buffer.alloc(64)],
    ['missing the external ID', Buffer.from('{"persistedAt":"2026-01-01T00:00:00Z"}')],
  ] as const) {
    it(`treats a ${name} identity.json as absent, with one warning`, async () => {
      const store = newStore();
      await store.init();
      writeFileSync(join(stateDir, 'identity.json'), bytes);
      expect(await store.loadIdentity()).toBeUndefined();
      expect(warnings()).toHaveLength(1);
      expect(warnings()[0]!.msg).toMatch(/^identity\.json is unusable \(/);
    });
  }
});

describe('secrets', () => {
  it('no log line of a full life cycle carries a private key or the MQTT password', async () => {
    const store = newStore({ keepGenerations: 2 });
    await store.init();
    await writeAndPromote(store, rsaConfig());
    await writeAndPromote(store, ecConfig());
    const candidate = await store.writeCandidate(rsaConfig(), { externalId: 'x', fetchedAt: FETCHED_AT });
    await store.discard(candidate);
    const third = await writeAndPromote(store, rsaConfig({ content: 'three' }));
    // A corruption right before the password: JSON.parse's own message would quote it.
    const manifestPath = join(third.dir, 'config.json');
    writeFileSync(manifestPath, readFileSync(manifestPath, 'utf8').replace(`"password": "${MQTT_PASSWORD}`, `"password": x"${MQTT_PASSWORD}`));
    expect(warnings()).toHaveLength(0);
    expect((await newStore().loadCurrent())?.id).toBe(2);
    expect(warnings()).toHaveLength(1);
    await rejectedAgentError(() => store.writeCandidate(rsaConfig({ certs: { ...rsaConfig().certs, clientKey: pki.unrelatedRsaKeyPem } }), { externalId: 'x', fetchedAt: FETCHED_AT }));
    expect(logLines.length).toBeGreaterThan(3);
    expectLogsFreeOfSecrets();
  });
});
