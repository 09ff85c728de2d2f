import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { pbkdf2Sync, randomBytes } from 'node:crypto';
import { accessSync, constants, mkdirSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { connect as tcpConnect, createServer } from 'node:net';
import { userInfo } from 'node:os';
import { delimiter, join } from 'node:path';

/**
 * A real Eclipse Mosquitto 2.x (Debian's package) on a free loopback port, one process per test, with
 * mutual TLS and per-user topic permissions. Two ways of granting topics, because mosquitto treats them
 * differently and the agent must cope with both:
 * - 'acl-file': password_file (made by mosquitto_passwd) + acl_file. Mosquitto 2.0 never refuses a
 *   SUBSCRIBE under an acl_file (its check returns success for subscriptions, "FIXME - implement ACL
 *   subscription strings"): it grants the filter and withholds the messages the user may not read.
 * - 'dynamic-security': the dynamic security plugin shipped in the same package. It refuses a SUBSCRIBE
 *   outside the user's roles in the SUBACK: 0x80 for MQTT 3.1.1, 0x87 (not authorized) for MQTT 5.
 */

export interface MosquittoTools {
  mosquitto: string;
  mosquittoPasswd: string;
  openssl: string;
  dynamicSecurityPlugin: string;
}

export type ToolSearch = { tools: MosquittoTools; missing: [] } | { tools: undefined; missing: string[] };

function isExecutableFile(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return statSync(path).isFile();
  } catch {
    return false;
  }
}

function findExecutable(name: string): string | undefined {
  // /usr/sbin first: Debian installs the broker there, and it is often not on a user's PATH.
  const dirs = ['/usr/sbin', '/usr/local/sbin', ...(process.env['PATH'] ?? '').split(delimiter)].filter((d) => d !== '');
  return dirs.map((dir) => join(dir, name)).find(isExecutableFile);
}

/** The plugin lives in the multiarch library directory (/usr/lib/x86_64-linux-gnu, /usr/lib/aarch64-linux-gnu...). */
function findDynamicSecurityPlugin(): string | undefined {
  const file = 'mosquitto_dynamic_security.so';
  const candidates = ['/usr/lib', '/usr/local/lib', '/usr/lib64'].flatMap((base) => {
    let subdirs: string[] = [];
    try {
      subdirs = readdirSync(base).filter((entry) => entry.endsWith('-linux-gnu') || entry.endsWith('-linux-gnueabihf'));
    } catch {
      /* no such directory */
    }
    return [join(base, file), ...subdirs.map((sub) => join(base, sub, file))];
  });
  return candidates.find((path) => {
    try {
      return statSync(path).isFile();
    } catch {
      return false;
    }
  });
}

/** Looks the broker, its password tool, its dynamic security plugin and openssl up; names what is missing. */
export function findMosquittoTools(): ToolSearch {
  const found = {
    mosquitto: findExecutable('mosquitto'),
    mosquittoPasswd: findExecutable('mosquitto_passwd'),
    openssl: findExecutable('openssl'),
    dynamicSecurityPlugin: findDynamicSecurityPlugin(),
  };
  const missing = Object.entries(found)
    .filter(([, path]) => path === undefined)
    .map(([name]) => name);
  if (missing.length > 0) return { tools: undefined, missing };
  return { tools: found as MosquittoTools, missing: [] };
}

export interface BrokerUser {
  username: string;
  password: string;
  /** Topic filters this user may publish to, subscribe to and receive from. */
  topics: string[];
}

export interface MosquittoOptions {
  tools: MosquittoTools;
  /** Working directory for the generated configuration, certificates and user files (created if absent). */
  dir: string;
  tls: { caCert: string; serverCert: string; serverKey: string };
  users: BrokerUser[];
  authorisation?: 'acl-file' | 'dynamic-security';
  /** Bound for start-up, port retries included. */
  startTimeoutMs?: number;
}

export interface MosquittoBroker {
  port: number;
  /** mqtts://127.0.0.1:<port>: the server certificate names 127.0.0.1. */
  url: string;
  pid: number;
  /** Everything mosquitto logged so far (log_type all: connects, CONNACK codes, SUBSCRIBEs, TLS errors). */
  log(): string;
  /** Resolves when the log, from character `from` on, matches; rejects after timeoutMs or if mosquitto exits. */
  waitForLog(pattern: RegExp, timeoutMs?: number, from?: number): Promise<void>;
  /**
   * Rewrites the user's password with mosquitto_passwd and makes mosquitto reload (SIGHUP). Mosquitto
   * then disconnects every connected client whose password no longer matches. acl-file only.
   */
  changePassword(username: string, password: string): Promise<void>;
  /** SIGTERM, SIGKILL after a bound. Never throws; safe to call twice. */
  stop(): Promise<void>;
}

/** A port the kernel just handed out on 127.0.0.1; the caller retries if someone takes it first. */
export function freeLoopbackPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address !== null ? address.port : 0;
      server.close(() => (port > 0 ? resolve(port) : reject(new Error('no port from the kernel'))));
    });
  });
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = tcpConnect({ host: '127.0.0.1', port });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => {
      socket.destroy();
      resolve(false);
    });
  });
}

const delay = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

function writePrivate(path: string, text: string): void {
  writeFileSync(path, text, { mode: 0o600 });
}

/** Passwords in the dynamic security file: PBKDF2-HMAC-SHA512, 101 iterations, over a raw 12-byte salt (as mosquitto_ctrl writes them). */
function dynamicSecurityClient(user: BrokerUser, rolename: string): Record<string, unknown> {
  const salt = randomBytes(12);
  return {
    username: user.username,
    password: pbkdf2Sync(user.password, salt, 101, 64, 'sha512').toString('base64'),
    salt: salt.toString('base64'),
    iterations: 101,
    roles: [{ rolename }],
  };
}

function dynamicSecurityConfig(users: BrokerUser[]): string {
  const roleOf = (i: number): string => `user-${i}`;
  return JSON.stringify(
    {
      // Deny by default, so a filter outside the user's role gets a SUBACK failure code.
      defaultACLAccess: { publishClientSend: false, publishClientReceive: false, subscribe: false, unsubscribe: true },
      clients: users.map((user, i) => dynamicSecurityClient(user, roleOf(i))),
      groups: [],
      roles: users.map((user, i) => ({
        rolename: roleOf(i),
        acls: user.topics.flatMap((topic) =>
          ['subscribePattern', 'publishClientSend', 'publishClientReceive'].map((acltype) => ({ acltype, topic, allow: true })),
        ),
      })),
    },
    null,
    2,
  );
}

function aclFile(users: BrokerUser[]): string {
  return users.map((user) => [`user ${user.username}`, ...user.topics.map((t) => `topic readwrite ${t}`), ''].join('\n')).join('\n');
}

function configFile(options: MosquittoOptions, port: number, files: Record<string, string>): string {
  const auth =
    (options.authorisation ?? 'acl-file') === 'acl-file'
      ? [`password_file ${files['passwords']}`, `acl_file ${files['acl']}`]
      : [`plugin ${options.tools.dynamicSecurityPlugin}`, `plugin_opt_config_file ${files['dynsec']}`];
  return [
    '# Generated by the mg-device-agent mosquitto suite.',
    'per_listener_settings true',
    'persistence false',
    // Mosquitto started as root drops to the "mosquitto" user, which cannot read these 0600 files.
    `user ${userInfo().username}`,
    'log_dest stderr',
    'log_type all',
    `listener ${port} 127.0.0.1`,
    'allow_anonymous false',
    ...auth,
    `cafile ${files['ca']}`,
    `certfile ${files['cert']}`,
    `keyfile ${files['key']}`,
    'require_certificate true',
    'use_identity_as_username false',
    '',
  ].join('\n');
}

export async function startMosquitto(options: MosquittoOptions): Promise<MosquittoBroker> {
  const { tools, dir } = options;
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const files = {
    ca: join(dir, 'ca.pem'),
    cert: join(dir, 'server.pem'),
    key: join(dir, 'server.key'),
    passwords: join(dir, 'passwords'),
    acl: join(dir, 'acl'),
    dynsec: join(dir, 'dynamic-security.json'),
    config: join(dir, 'mosquitto.conf'),
  };
  writeFileSync(files.ca, options.tls.caCert);
  writeFileSync(files.cert, options.tls.serverCert);
  writePrivate(files.key, options.tls.serverKey);
  if ((options.authorisation ?? 'acl-file') === 'acl-file') {
    // -b puts the password on mosquitto_passwd's command line: fine for throwaway test users only.
    options.users.forEach((user, i) => {
      const args = i === 0 ? ['-b', '-c', files.passwords, user.username, user.password] : ['-b', files.passwords, user.username, user.password];
      execFileSync(tools.mosquittoPasswd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    });
    writePrivate(files.acl, aclFile(options.users));
  } else {
    writePrivate(files.dynsec, dynamicSecurityConfig(options.users));
  }

  const deadline = Date.now() + (options.startTimeoutMs ?? 10_000);
  let lastLog = '';
  for (let attempt = 1; attempt <= 5; attempt++) {
    const port = await freeLoopbackPort();
    writeFileSync(files.config, configFile(options, port, files));
    const started = await launch(tools.mosquitto, files.config, port, deadline);
    if (started.ok) return wrap(started.child, started.log, port, (username, password) => {
      if ((options.authorisation ?? 'acl-file') !== 'acl-file') throw new Error('changePassword needs the acl-file authorisation');
      execFileSync(tools.mosquittoPasswd, ['-b', files.passwords, username, password], { stdio: ['ignore', 'ignore', 'pipe'] });
    });
    lastLog = started.log();
    // Another process took the port between our probe and mosquitto's bind: pick another one.
    if (!/address already in use/i.test(lastLog) || Date.now() >= deadline) break;
  }
  throw new Error(`mosquitto did not start:\n${lastLog.slice(-2000)}`);
}

type Launched = { ok: true; child: ChildProcess; log: () => string } | { ok: false; log: () => string };

async function launch(binary: string, config: string, port: number, deadline: number): Promise<Launched> {
  const child = spawn(binary, ['-c', config], { stdio: ['ignore', 'ignore', 'pipe'] });
  let text = '';
  child.stderr?.setEncoding('utf8').on('data', (chunk: string) => {
    text += chunk;
  });
  const log = (): string => text;
  let spawnFailed = false;
  // A failed spawn emits 'error' and may never emit 'exit'.
  const exited = new Promise<void>((resolve) => {
    child.once('exit', () => resolve());
    child.once('error', (err) => {
      spawnFailed = true;
      text += `\nspawn failed: ${err.message}`;
      resolve();
    });
  });
  // Ready = mosquitto says it runs AND its port accepts a connection (probing, not sleeping a guess).
  while (Date.now() < deadline) {
    if (spawnFailed || child.exitCode !== null || child.signalCode !== null) {
      await exited;
      return { ok: false, log };
    }
    if (/ running/.test(text) && (await canConnect(port))) {
      if (child.exitCode === null && child.signalCode === null) return { ok: true, child, log };
    }
    await delay(20);
  }
  child.kill('SIGKILL');
  await exited;
  text += `\nno listener on 127.0.0.1:${port} in time`;
  return { ok: false, log };
}

function wrap(child: ChildProcess, log: () => string, port: number, setPassword: (username: string, password: string) => void): MosquittoBroker {
  const exited = new Promise<void>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve();
    else child.once('exit', () => resolve());
  });
  // Last resort if the test worker dies without running afterEach: never leave a broker behind.
  const killOnExit = (): void => {
    child.kill('SIGKILL');
  };
  process.once('exit', killOnExit);

  const waitForLog = async (pattern: RegExp, timeoutMs = 10_000, from = 0): Promise<void> => {
    const until = Date.now() + timeoutMs;
    for (;;) {
      if (pattern.test(log().slice(from))) return;
      if (child.exitCode !== null || child.signalCode !== null) throw new Error(`mosquitto exited before logging ${pattern}:\n${log().slice(-1500)}`);
      if (Date.now() >= until) throw new Error(`mosquitto did not log ${pattern} within ${timeoutMs} ms:\n${log().slice(-1500)}`);
      await delay(20);
    }
  };

  let stopping: Promise<void> | undefined;
  return {
    port,
    url: `mqtts://127.0.0.1:${port}`,
    pid: child.pid as number,
    log,
    waitForLog,
    async changePassword(username, password) {
      setPassword(username, password);
      const from = log().length;
      child.kill('SIGHUP');
      await waitForLog(/Reloading config/, 5_000, from);
    },
    stop() {
      stopping ??= (async () => {
        if (child.exitCode === null && child.signalCode === null) {
          child.kill('SIGTERM');
          const timer = setTimeout(() => child.kill('SIGKILL'), 3_000);
          await exited;
          clearTimeout(timer);
        }
        process.removeListener('exit', killOnExit);
      })().catch(() => undefined);
      return stopping;
    },
  };
}
