import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { createServer as createHttpServer, type Server as HttpServer } from 'node:http';
import { createServer as createTcpServer, type AddressInfo, type Server as TcpServer, type Socket } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { BootstrapClient } from '../../bootstrap/client.js';
import { decryptCfb, encryptCfb, parseEncryptKey, secureToken } from '../../bootstrap/crypto.js';
import { loadConfig } from '../../config/load.js';
import { readEncryptKey, readExternalKey } from '../../credentials/credentials.js';
import { AgentError, ErrorCodes } from '../../errors/agent-error.js';
import { classifyFailure } from '../../lifecycle/failure-policy.js';
import { createLogger, type Logger } from '../../logging/logger.js';
import { MqttSession } from '../../mqtt/session.js';
import { GenerationStore } from '../../storage/generation-store.js';
import { isCodedProblem, isOnline, waitForCount } from '../bench/agent-signals.js';
import { hasOpenssl, runAgent, startWorld, addDevice, type World } from '../bench/world.js';
import { makeTestCerts, type TestCerts } from '../dev-pki.js';
import { writeDeviceFiles } from '../scenario.js';
import { checkStateDir } from './disk-check.js';
import { mutateBytes, mutateJson, wrongEncoding, type Mutated } from './mutators.js';
import { Violations, type SuiteOptions, type SuiteReport } from './report.js';
import { createRng, type Rng } from './rng.js';

/**
 * Bad input, seeded: mutated plain and secure Bootstrap responses (fetched from a loopback HTTP
 * server through the real bootstrap client, mapper and store), configuration files, key files and
 * broker replies (a raw TCP server speaking broken MQTT to the real MQTT session), plus a smaller
 * sample through the real agent process. For every case: no crash (only AgentErrors with a stable
 * code come out), nothing invalid on disk, no secret in any message or log line, and each problem
 * named in one line.
 */

interface Secrets {
  list: string[];
}

interface Outcomes {
  byCode: Map<string, number>;
}

function count(outcomes: Outcomes, key: string): void {
  outcomes.byCode.set(key, (outcomes.byCode.get(key) ?? 0) + 1);
}

/** A logger that keeps every line (debug and up) for the secret check. */
function captureLogger(): { logger: Logger; lines: string[] } {
  const lines: string[] = [];
  const logger = createLogger({ level: 'debug', destination: { write: (line: string) => void lines.push(line) } });
  return { logger, lines };
}

const CODES = new Set<string>(ErrorCodes);

/** The invariants every failure must meet: an AgentError, a known code, one line, no secret. */
function checkFailure(error: unknown, where: string, secrets: Secrets, violations: Violations, allowInternal = false): string {
  if (!(error instanceof AgentError)) {
    const frame = error instanceof Error ? (error.stack ?? '').split('\n').find((l) => l.includes('/agent/') || l.includes('/dist/')) : undefined;
    violations.add(`${where}: threw ${error instanceof Error ? `${error.constructor.name}: ${error.message.split('\n')[0]}` : String(error)} instead of an AgentError${frame ? ` (${frame.trim()})` : ''}`);
    return 'NOT_AGENT_ERROR';
  }
  if (!CODES.has(error.code)) violations.add(`${where}: unknown code ${error.code}`);
  if (error.code === 'INTERNAL' && !allowInternal) violations.add(`${where}: INTERNAL (${error.message.slice(0, 160)})`);
  if (error.message.trim() === '' || /[\r\n]/.test(error.message)) violations.add(`${where}: message is not one line: ${JSON.stringify(error.message.slice(0, 160))}`);
  const shown = `${error.message} ${JSON.stringify(error.details)}`;
  for (const secret of secrets.list) if (secret.length >= 6 && shown.includes(secret)) violations.add(`${where}: ${error.code} message or details contain a secret`);
  return error.code;
}

function checkLogs(lines: string[], where: string, secrets: Secrets, violations: Violations): void {
  for (const line of lines) {
    for (const secret of secrets.list) if (secret.length >= 6 && line.includes(secret)) violations.add(`${where}: a log line contains a secret: ${line.slice(0, 120)}`);
  }
  lines.length = 0;
}

// ---------------------------------------------------------------------------------------------
// Bootstrap responses

interface Planned {
  status: number;
  headers: Record<string, string>;
  body: Buffer;
  /** close: destroy the socket after the headers; short: announce more bytes than are sent. */
  transport?: 'close' | 'short';
}

async function startResponder(plans: Map<string, Planned>): Promise<{ server: HttpServer; url: string }> {
  const server = createHttpServer((req, res) => {
    const id = decodeURIComponent((req.url ?? '').split('/').pop() ?? '');
    const plan = plans.get(id);
    if (!plan) {
      res.writeHead(404).end();
      return;
    }
    if (plan.transport === 'close') {
      res.writeHead(plan.status, { ...plan.headers, 'Content-Length': String(plan.body.length + 10) });
      res.flushHeaders();
      req.socket.destroy();
      return;
    }
    if (plan.transport === 'short') {
      res.writeHead(plan.status, { ...plan.headers, 'Content-Length': String(plan.body.length + 100) });
      res.write(plan.body);
      setImmediate(() => req.socket.destroy());
      return;
    }
    res.writeHead(plan.status, { ...plan.headers, 'Content-Length': String(plan.body.length) });
    res.end(plan.body);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { server, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}` };
}

interface BaseResponses {
  /** Plain bodies (Go JSON with the trailing newline) of both families. */
  plain: { family: 'v0.20' | 'v0.30'; body: Buffer }[];
  externalKey: string;
  encryptKey: Buffer;
  foreign?: TestCerts;
}

async function fetchBaseResponses(world: World, certs: TestCerts | undefined): Promise<BaseResponses & { secrets: string[] }> {
  const wd = await addDevice(world, { channels: 2, enable: true });
  const { stack } = world;
  if (certs) stack.registry.updateConfigCerts(stack.domainId, wd.device.clientId, { clientCert: certs.clientCert, clientKey: certs.clientKey, caCert: certs.caCert });
  const plain: BaseResponses['plain'] = [];
  for (const family of ['v0.20', 'v0.30'] as const) {
    stack.bootstrap.setResponseFamily(family);
    const res = await fetch(`${stack.bootstrapUrl}/clients/bootstrap/${wd.device.externalId}`, { headers: { authorization: `Client ${wd.device.externalKey}` } });
    if (res.status !== 200) throw new Error(`dev stack answered ${res.status} for the base response`);
    plain.push({ family, body: Buffer.from(await res.arrayBuffer()) });
  }
  stack.bootstrap.setResponseFamily('v0.20');
  const secret = stack.registry.getClient(wd.device.clientId)?.secret ?? '';
  const keyLines = certs ? certs.clientKey.split('\n').filter((l) => l && !l.startsWith('-----')) : [];
  return {
    plain,
    externalKey: wd.device.externalKey,
    encryptKey: parseEncryptKey(world.encryptKey),
    secrets: [wd.device.externalKey, world.encryptKey, secret, ...keyLines],
  };
}

function planResponse(rng: Rng, base: BaseResponses, secure: boolean, foreign: TestCerts | undefined): { plan: Planned; name: string } {
  const source = rng.pick(base.plain);
  const text = source.body.toString('utf8').trimEnd();
  const json = JSON.parse(text) as Parameters<typeof mutateJson>[1];
  const contentType = secure ? 'application/octet-stream' : 'application/json';
  const seal = (plaintext: Buffer) => (secure ? encryptCfb(base.encryptKey, plaintext) : plaintext);
  const kind = rng.int(10);
  let mutated: Mutated;
  if (kind < 3) mutated = mutateJson(rng, json, { ...(foreign ? { foreignCert: foreign.clientCert, foreignKey: foreign.caCert } : {}) });
  else if (kind < 5) mutated = mutateBytes(rng, Buffer.from(text, 'utf8'));
  else if (kind < 6) mutated = wrongEncoding(rng, text);
  else if (kind < 7 && secure) {
    // Damage the ciphertext itself: CFB garbles the block, so the JSON check is the only guard.
    const damaged = mutateBytes(rng, encryptCfb(base.encryptKey, Buffer.from(text, 'utf8')));
    return { plan: { status: 200, headers: { 'Content-Type': contentType }, body: damaged.body }, name: `${source.family} ciphertext: ${damaged.name}` };
  } else if (kind < 8) {
    const status = rng.pick([200, 201, 204, 301, 400, 401, 403, 404, 409, 418, 429, 500, 502, 503, 504, 599]);
    const body = rng.pick([Buffer.alloc(0), Buffer.from('{"message":"nope"}\n'), Buffer.from(`{"message":"${base.externalKey}"}`), rng.bytes(40), Buffer.from('<html>proxy</html>')]);
    const headers: Record<string, string> = { 'Content-Type': rng.pick(['application/json', 'text/html', 'application/octet-stream']) };
    if (rng.chance(0.4)) headers['Retry-After'] = rng.pick(['0', '5', '-1', '99999999999', 'Wed, 21 Oct 2015 07:28:00 GMT', 'soon']);
    if (rng.chance(0.2)) headers['Location'] = rng.pick([`http://user:${base.externalKey}@evil.example/x`, '/elsewhere', 'ünï']);
    return { plan: { status, headers, body }, name: `${source.family} status ${status}` };
  } else if (kind < 9) {
    const transport = rng.pick(['close', 'short'] as const);
    return { plan: { status: 200, headers: { 'Content-Type': contentType }, body: seal(Buffer.from(text, 'utf8')), transport }, name: `${source.family} transport ${transport}` };
  } else {
    return { plan: { status: 200, headers: { 'Content-Type': contentType }, body: seal(Buffer.from(text, 'utf8')) }, name: `${source.family} unmodified` };
  }
  return { plan: { status: 200, headers: { 'Content-Type': contentType }, body: seal(mutated.body) }, name: `${source.family} ${secure ? 'secure' : 'plain'}: ${mutated.name}` };
}

async function fuzzResponses(
  rng: Rng,
  cases: number,
  world: World,
  certs: TestCerts | undefined,
  foreign: TestCerts | undefined,
  violations: Violations,
  outcomes: Outcomes,
  seed: number,
): Promise<number> {
  const base = await fetchBaseResponses(world, certs);
  const secrets: Secrets = { list: base.secrets };
  const plans = new Map<string, Planned>();
  const { server, url } = await startResponder(plans);
  const { logger, lines } = captureLogger();
  const storeDir = mkdtempSync(join(world.work, 'fuzz-store-'));
  const store = new GenerationStore({ dir: storeDir, keepGenerations: 3, logger });
  await store.init();
  const clients = {
    plain: new BootstrapClient({ baseUrl: url, mode: 'plain', family: 'clients', timeoutMs: 5_000, maxResponseBytes: 1024 * 1024 }),
    secure: new BootstrapClient({ baseUrl: url, mode: 'secure', family: 'clients', encryptKey: base.encryptKey, timeoutMs: 5_000, maxResponseBytes: 1024 * 1024 }),
  };
  const fallbacks = { requireDomain: false };
  let written = 0;
  const runCase = async (i: number, caseRng: Rng) => {
    const secure = caseRng.chance(0.5);
    const { plan, name } = planResponse(caseRng, base, secure, foreign);
    const id = `case-${i}`;
    plans.set(id, plan);
    const where = `response case ${i} (${name}; seed ${seed})`;
    try {
      const config = await (secure ? clients.secure : clients.plain).fetchConfig(id, base.externalKey, fallbacks);
      let gen;
      try {
        gen = await store.writeCandidate(config, { externalId: id, fetchedAt: new Date() });
      } catch (error) {
        count(outcomes, `written: refused ${checkFailure(error, where, secrets, violations)}`);
        return;
      }
      written++;
      count(outcomes, 'accepted and written');
      const disk = checkStateDir(storeDir, undefined);
      for (const problem of disk.problems) violations.add(`${where}: wrote an invalid file: ${problem}`);
      await store.discard(gen);
    } catch (error) {
      count(outcomes, checkFailure(error, where, secrets, violations));
    } finally {
      plans.delete(id);
    }
  };
  try {
    const parallel = 8;
    for (let first = 0; first < cases; first += parallel) {
      const batch = Array.from({ length: Math.min(parallel, cases - first) }, (_, k) => ({ i: first + k, caseRng: rng.fork() }));
      await Promise.all(batch.map(({ i, caseRng }) => runCase(i, caseRng)));
      checkLogs(lines, `response cases ${first}-${first + batch.length - 1} (seed ${seed})`, secrets, violations);
    }
  } finally {
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
    rmSync(storeDir, { recursive: true, force: true });
  }
  return written;
}

// ---------------------------------------------------------------------------------------------
// Configuration files and key files

function fuzzConfigFiles(rng: Rng, cases: number, dir: string, violations: Violations, outcomes: Outcomes, seed: number): void {
  mkdirSync(join(dir, 'config-fuzz'), { mode: 0o700 });
  const files = writeDeviceFiles(join(dir, 'config-fuzz'), { bootstrapUrl: 'http://127.0.0.1:9', externalKey: 'config-fuzz-key', externalId: 'dc:a6:32:00:00:01' });
  const valid = JSON.parse(readFileSync(files.configFile, 'utf8')) as Parameters<typeof mutateJson>[1];
  const path = join(dir, 'config-fuzz', 'mutated.json');
  for (let i = 0; i < cases; i++) {
    const mutated = rng.chance(0.6) ? mutateJson(rng, valid, {}) : rng.chance(0.5) ? mutateBytes(rng, Buffer.from(JSON.stringify(valid))) : wrongEncoding(rng, JSON.stringify(valid));
    writeFileSync(path, mutated.body);
    const where = `config case ${i} (${mutated.name}; seed ${seed})`;
    try {
      loadConfig({ configPath: path, env: {} });
      count(outcomes, 'config accepted');
    } catch (error) {
      const code = checkFailure(error, where, { list: [] }, violations);
      if (error instanceof AgentError && classifyFailure(error.code) !== 'fatal') violations.add(`${where}: ${code} is not a configuration error (exit 78)`);
      count(outcomes, `config ${code}`);
    }
  }
}

async function fuzzKeyFiles(rng: Rng, cases: number, dir: string, violations: Violations, outcomes: Outcomes, seed: number): Promise<void> {
  const root = join(dir, 'key-fuzz');
  mkdirSync(root, { recursive: true, mode: 0o700 });
  const goodExternal = 'external-key-0123456789abcdef';
  const goodEncrypt = 'v7aT0HGxJxt2gULzr3RHwf4WIf6DusPp';
  for (let i = 0; i < cases; i++) {
    const which = rng.chance(0.5) ? 'external' : 'encrypt';
    const good = which === 'external' ? goodExternal : goodEncrypt;
    const path = join(root, `key-${i}`);
    let name: string;
    const shape = rng.int(8);
    if (shape === 0) name = 'missing';
    else if (shape === 1) {
      mkdirSync(path);
      name = 'a directory';
    } else if (shape === 2) {
      writeFileSync(path, good, { mode: 0o600 });
      symlinkSync(path, `${path}.link`);
      name = 'a symlink';
    } else {
      const mutated = rng.chance(0.5) ? mutateBytes(rng, Buffer.from(`${good}\n`)) : wrongEncoding(rng, good);
      const content = shape === 3 ? Buffer.alloc(rng.pick([0, 5 * 1024 * 1024]), 0x41) : mutated.body;
      writeFileSync(path, content, { mode: rng.pick([0o600, 0o400, 0o644, 0o640, 0o666]) });
      chmodSync(path, rng.pick([0o600, 0o400, 0o644, 0o604]));
      name = shape === 3 ? `${content.length} bytes` : mutated.name;
    }
    const target = name === 'a symlink' ? `${path}.link` : path;
    const where = `${which} key case ${i} (${name}; seed ${seed})`;
    try {
      if (which === 'external') await readExternalKey({ file: target, credentialsDirectory: '' });
      else await readEncryptKey({ file: target, env: {}, credentialsDirectory: '' });
      count(outcomes, `${which} key accepted`);
    } catch (error) {
      const code = checkFailure(error, where, { list: [good] }, violations);
      if (error instanceof AgentError && classifyFailure(error.code) !== 'fatal') violations.add(`${where}: ${code} is not fatal: a bad key file must stop the agent with exit 78`);
      count(outcomes, `${which} key ${code}`);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Broker replies

/** Remaining-length varint of an MQTT fixed header. */
function remainingLength(n: number): Buffer {
  const out: number[] = [];
  do {
    let digit = n % 128;
    n = Math.floor(n / 128);
    if (n > 0) digit |= 0x80;
    out.push(digit);
  } while (n > 0);
  return Buffer.from(out);
}

function brokerReply(rng: Rng, valid: Buffer): { name: string; bytes: Buffer | undefined } {
  switch (rng.int(7)) {
    case 0:
      return { name: 'valid', bytes: valid };
    case 1:
    case 2: {
      const m = mutateBytes(rng, valid);
      return { name: m.name, bytes: m.body };
    }
    case 3:
      return { name: 'huge remaining length', bytes: Buffer.concat([valid.subarray(0, 1), Buffer.from([0xff, 0xff, 0xff, 0x7f]), rng.bytes(16)]) };
    case 4: {
      const type = rng.pick([0x30, 0x40, 0x90, 0xb0, 0xd0, 0xe0, 0xf0, 0x00]);
      const body = rng.bytes(rng.int(8));
      return { name: `packet type 0x${type.toString(16)}`, bytes: Buffer.concat([Buffer.from([type]), remainingLength(body.length), body]) };
    }
    case 5:
      return { name: 'valid, then garbage', bytes: Buffer.concat([valid, rng.bytes(rng.between(1, 64))]) };
    default:
      return { name: 'no reply (connection closed)', bytes: undefined };
  }
}

async function fuzzBrokerReplies(rng: Rng, cases: number, violations: Violations, outcomes: Outcomes, seed: number, notes: string[]): Promise<void> {
  const password = 'broker-fuzz-secret-d41d8cd98f00';
  const secrets: Secrets = { list: [password] };
  const { logger, lines } = captureLogger();
  const hangs: string[] = [];
  const runCase = async (i: number, caseRng: Rng) => {
    const protocolVersion = caseRng.chance(0.5) ? 4 : 5;
    const connack = protocolVersion === 5 ? Buffer.from([0x20, 0x03, 0x00, caseRng.pick([0, 0, 0, 0x86, 0x87, 0x88, 0x80]), 0x00]) : Buffer.from([0x20, 0x02, 0x00, caseRng.pick([0, 0, 0, 1, 2, 3, 4, 5, 6])]);
    const connackReply = brokerReply(caseRng, connack);
    const subackReplyRng = caseRng.fork();
    let subackName = '';
    const sockets = new Set<Socket>();
    const server: TcpServer = createTcpServer((socket) => {
      sockets.add(socket);
      socket.on('error', () => undefined);
      let stage = 0;
      socket.on('data', (chunk: Buffer) => {
        if (stage === 0) {
          stage = 1;
          if (connackReply.bytes === undefined) socket.destroy();
          else socket.write(connackReply.bytes);
        } else if (stage === 1 && (chunk[0] ?? 0) >> 4 === 8) {
          stage = 2;
          // SUBSCRIBE: fixed header, remaining length (1-4 bytes), then the packet ID.
          let offset = 1;
          while (((chunk[offset] ?? 0) & 0x80) !== 0) offset++;
          const packetId = chunk.subarray(offset + 1, offset + 3);
          // Codes the protocol version allows (0x87 exists only in MQTT 5; on 3.1.1 it is one of the mutations).
          const legal = protocolVersion === 5 ? [0, 1, 0x80, 0x87] : [0, 1, 2, 0x80];
          const codes = Buffer.from([subackReplyRng.pick(legal), subackReplyRng.pick(legal)]);
          const props = protocolVersion === 5 ? Buffer.from([0x00]) : Buffer.alloc(0);
          const payload = Buffer.concat([packetId, props, codes]);
          const valid = Buffer.concat([Buffer.from([0x90]), remainingLength(payload.length), payload]);
          const reply =
            protocolVersion === 4 && subackReplyRng.chance(0.1)
              ? { name: 'MQTT 5 code 0x87 on 3.1.1', bytes: Buffer.concat([valid.subarray(0, -1), Buffer.from([0x87])]) }
              : brokerReply(subackReplyRng, valid);
          subackName = reply.name;
          if (reply.bytes === undefined) socket.destroy();
          else socket.write(reply.bytes);
        }
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const port = (server.address() as AddressInfo).port;
    const session = new MqttSession({
      url: `mqtt://127.0.0.1:${port}`,
      username: 'fuzz-client',
      password,
      protocolVersion,
      keepaliveSeconds: 30,
      connectTimeoutMs: 1_500,
      clean: false,
      logger,
    });
    const where = () => `broker case ${i} (MQTT ${protocolVersion === 5 ? 5 : '3.1.1'}, CONNACK ${connack.toString('hex')} → ${connackReply.name}${subackName ? `, SUBACK → ${subackName}` : ''}; seed ${seed})`;
    try {
      await session.connect();
      count(outcomes, 'broker: connected');
      const settled = await Promise.race([
        session.subscribe(['m/d/c/a/#', 'm/d/c/b/#'], 1).then(
          () => 'ok',
          (error: unknown) => checkFailure(error, `${where()} subscribe`, secrets, violations),
        ),
        sleep(2_000).then(() => 'hang'),
      ]);
      if (settled === 'hang') {
        hangs.push(subackName || 'no SUBACK sent');
        if (connackReply.name === 'valid' && subackName === 'valid') violations.add(`${where()}: subscribe() did not settle after a valid CONNACK and SUBACK`);
      }
      count(outcomes, `broker subscribe: ${settled}`);
    } catch (error) {
      count(outcomes, `broker: ${checkFailure(error, where(), secrets, violations)}`);
    } finally {
      await session.stop({ timeoutMs: 200 }).catch((error: unknown) => violations.add(`${where()}: stop() threw ${String(error)}`));
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  };
  const parallel = 16;
  for (let first = 0; first < cases; first += parallel) {
    const batch = Array.from({ length: Math.min(parallel, cases - first) }, (_, k) => ({ i: first + k, caseRng: rng.fork() }));
    await Promise.all(batch.map(({ i, caseRng }) => runCase(i, caseRng)));
    checkLogs(lines, `broker cases ${first}-${first + batch.length - 1} (seed ${seed})`, secrets, violations);
  }
  if (hangs.length > 0) {
    const kinds = [...new Set(hangs.map((h) => h.replace(/\d+/g, 'N')))].join('; ');
    notes.push(`broker replies: ${hangs.length} subscribe() call(s) never settled (2 s) while the connection stayed up, after: ${kinds}`);
  }
}

// ---------------------------------------------------------------------------------------------
// The real process: a few mutated responses end to end

async function sampleRealProcess(rng: Rng, cases: number, world: World, violations: Violations, outcomes: Outcomes, seed: number): Promise<void> {
  const base = await fetchBaseResponses(world, undefined);
  const plans = new Map<string, Planned>();
  const { server, url } = await startResponder(plans);
  try {
    const runOne = async (i: number, caseRng: Rng) => {
      const secure = caseRng.chance(0.5);
      const { plan, name } = planResponse(caseRng, base, secure, undefined);
      const id = `proc-case-${i}`;
      plans.set(id, plan);
      const dir = mkdtempSync(join(world.work, 'proc-'));
      const files = writeDeviceFiles(dir, {
        bootstrapUrl: url,
        externalKey: base.externalKey,
        externalId: id,
        ...(secure ? { encryptKey: world.encryptKey } : {}),
        config: { mqtt: { url: world.stack.mqttUrl, domainId: world.stack.domainId }, log: { level: 'debug' } },
      });
      const agent = runAgent(files);
      const where = `process case ${i} (${name}; seed ${seed})`;
      try {
        await waitForCount(agent, (l) => isCodedProblem(l) || isOnline(l), 1, 15_000, 'a problem line or online');
        await sleep(100);
        if (agent.child.exitCode !== null) violations.add(`${where}: the agent exited (code ${agent.child.exitCode})`);
        const problem = agent.lines.find(isCodedProblem);
        count(outcomes, `process: ${problem ? String(problem['code']) : 'online'}`);
        for (const secret of base.secrets) if (secret.length >= 6 && agent.output.includes(secret)) violations.add(`${where}: the agent printed a secret`);
        const nonJson = agent.output.split('\n').filter((l) => l.trim() !== '' && !l.startsWith('{'));
        if (nonJson.length > 0) violations.add(`${where}: output that is not a JSON log line: ${nonJson[0]?.slice(0, 120)}`);
        const disk = checkStateDir(files.stateDir, undefined);
        for (const p of disk.problems) violations.add(`${where}: ${p}`);
      } catch (error) {
        violations.add(`${where}: ${(error as Error).message.split('\n')[0]}`);
      } finally {
        await agent.stop(3_000);
        plans.delete(id);
      }
    };
    const parallel = 4;
    for (let first = 0; first < cases; first += parallel) {
      const batch = Array.from({ length: Math.min(parallel, cases - first) }, (_, k) => ({ i: first + k, caseRng: rng.fork() }));
      await Promise.all(batch.map(({ i, caseRng }) => runOne(i, caseRng)));
    }
  } finally {
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}

// ---------------------------------------------------------------------------------------------

export async function runBadInput(options: SuiteOptions): Promise<SuiteReport> {
  const started = performance.now();
  const rng = createRng(options.seed);
  const long = options.mode === 'long';
  const plan = long
    ? { responses: 8_000, configs: 1_000, keys: 600, broker: 1_000, process: 40 }
    : { responses: 300, configs: 60, keys: 40, broker: 60, process: 4 };
  const violations = new Violations();
  const outcomes: Outcomes = { byCode: new Map() };
  const notes: string[] = [];
  const uncaught: unknown[] = [];
  const onUncaught = (error: unknown) => uncaught.push(error);
  process.on('uncaughtException', onUncaught);
  process.on('unhandledRejection', onUncaught);
  const world = await startWorld({ tls: false, prefix: 'mgda-torture-input-' });
  let written = 0;
  try {
    const certSets = hasOpenssl() ? [makeTestCerts(mkdtempSync(join(world.work, 'pki-a-'))), makeTestCerts(mkdtempSync(join(world.work, 'pki-b-')))] : [];
    if (certSets.length === 0) notes.push('openssl missing: responses carry no certificates');
    options.log(`  bad input: ${plan.responses} responses...`);
    written = await fuzzResponses(rng.fork(), plan.responses, world, certSets[0], certSets[1], violations, outcomes, options.seed);
    options.log(`  bad input: ${plan.configs} configuration files, ${plan.keys} key files...`);
    fuzzConfigFiles(rng.fork(), plan.configs, world.work, violations, outcomes, options.seed);
    await fuzzKeyFiles(rng.fork(), plan.keys, world.work, violations, outcomes, options.seed);
    options.log(`  bad input: ${plan.broker} broker replies...`);
    await fuzzBrokerReplies(rng.fork(), plan.broker, violations, outcomes, options.seed, notes);
    options.log(`  bad input: ${plan.process} responses through the real agent process...`);
    await sampleRealProcess(rng.fork(), plan.process, world, violations, outcomes, options.seed);
  } finally {
    process.off('uncaughtException', onUncaught);
    process.off('unhandledRejection', onUncaught);
    await world.close();
  }
  for (const error of uncaught) violations.add(`uncaught in the harness process (seed ${options.seed}): ${error instanceof Error ? error.message.split('\n')[0] : String(error)}`);
  const total = plan.responses + plan.configs + plan.keys + plan.broker + plan.process;
  const top = [...outcomes.byCode.entries()].sort((a, b) => b[1] - a[1]);
  notes.push(`outcomes: ${top.map(([k, v]) => `${k} ${v}`).join(', ')}`);
  return {
    suite: 'bad-input',
    seed: options.seed,
    cases: total,
    violations: violations.final(),
    notes,
    durationMs: performance.now() - started,
    stats: { ...plan, written, uncaught: uncaught.length, violations: violations.count },
  };
}
