import { randomBytes } from 'node:crypto';
import { afterAll, afterEach, beforeAll, expect } from 'vitest';
import { AgentProcess, type LogLine } from '../../agent/devstack/agent-process.js';
import { cleanAgentEnv } from '../../agent/devstack/scenario.js';
import { startDevStack, type DevStack, type DevStackOptions } from '../../agent/devstack/stack.js';
import { makeTempDir } from './temp-dir.js';
import { makeTestCerts, type TestCerts } from './test-certs.js';
import { keyByName, loadVectors } from './vectors.js';

/**
 * What the suites that drive the real built agent (and the dev stack) share: a teardown registry,
 * the encryption key, random device IDs, a dev stack, temporary directories, agent processes and
 * openssl-made certificates, each registered for removal when the test (or the file) ends.
 */

/** The K32 vector's MG_BOOTSTRAP_ENCRYPT_KEY (32 bytes, AES-256), read from the upstream vectors. */
export const K32_ENCRYPT_KEY = keyByName(loadVectors(), 'K32').env_value;

type Cleanup = () => unknown;

/** Cleanups run in reverse order of registration, each awaited; one that throws does not stop the rest. */
export interface Teardown {
  add(...cleanups: Cleanup[]): void;
  /** Runs (and forgets) everything added so far; rethrows the first failure once all have run. */
  run(): Promise<void>;
}

/** A teardown the caller runs itself (e.g. one per scenario in a concurrent suite). */
export function createTeardown(): Teardown {
  const cleanups: Cleanup[] = [];
  return {
    add: (...more) => {
      cleanups.push(...more);
    },
    async run() {
      const failures: unknown[] = [];
      for (const cleanup of cleanups.splice(0).reverse()) {
        try {
          await cleanup();
        } catch (error) {
          failures.push(error);
        }
      }
      if (failures.length > 0) throw failures[0];
    },
  };
}

/** A teardown run after each test of the file (or suite) it is called in; `'all'`: once, after all of them. */
export function useTeardown(after: 'each' | 'all' = 'each'): Teardown {
  const teardown = createTeardown();
  (after === 'each' ? afterEach : afterAll)(() => teardown.run());
  return teardown;
}

/** A fresh temporary directory, removed by the teardown. */
export function tempWorkDir(t: Teardown, prefix: string): string {
  const { dir, cleanup } = makeTempDir(prefix);
  t.add(cleanup);
  return dir;
}

/** A device ID: MAC-like (`3a:0f:...`, six random bytes) by default, `<prefix>-<8 hex digits>` with a prefix. */
export function randomExternalId(prefix?: string): string {
  if (prefix !== undefined) return `${prefix}-${randomBytes(4).toString('hex')}`;
  return Array.from(randomBytes(6), (b) => b.toString(16).padStart(2, '0')).join(':');
}

/** The dev stack (with the K32 key unless `options` says otherwise), closed by the teardown. */
export async function startStack(t: Teardown, options: Partial<DevStackOptions> = {}): Promise<DevStack> {
  const stack = await startDevStack({ encryptKey: K32_ENCRYPT_KEY, ...options });
  t.add(() => stack.close());
  return stack;
}

/** A new channel in the stack's domain, made through its /dev API as an operator would; its ID. */
export async function createDevChannel(stack: DevStack, name: string): Promise<string> {
  const res = await fetch(`${stack.bootstrapUrl}/dev/channels`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${stack.userToken}` },
    body: JSON.stringify({ domain_id: stack.domainId, name }),
  });
  return ((await res.json()) as { id: string }).id;
}

/**
 * The built agent (`node dist/cli/main.js <args>`, or `entry`) in a clean environment
 * (cleanAgentEnv() unless `env` is given), stopped by the teardown: SIGTERM, then SIGKILL after
 * `killAfterMs`.
 */
export function runAgentProcess(
  t: Teardown,
  args: string[],
  options: { env?: NodeJS.ProcessEnv; killAfterMs?: number; entry?: string } = {},
): AgentProcess {
  const agent = new AgentProcess({ args, env: options.env ?? cleanAgentEnv(), ...(options.entry ? { entry: options.entry } : {}) });
  t.add(async () => {
    await agent.stop(options.killAfterMs ?? 2_000);
  });
  return agent;
}

/**
 * openssl-made certificates (makeTestCerts) for the file or suite it is called in, made once in
 * beforeAll and removed after all its tests. The object is filled in by beforeAll, so read it in
 * tests and hooks only; `dir` is where openssl left its files (keys, requests, CA configuration).
 */
export function usePki(prefix = 'mgda-pki-'): TestCerts & { dir: string } {
  const pki = {} as TestCerts & { dir: string };
  beforeAll(() => {
    const { dir, cleanup } = makeTempDir(prefix);
    Object.assign(pki, makeTestCerts(dir), { dir });
    return cleanup;
  });
  return pki;
}

/** The non-empty lines of a PEM's body (no BEGIN/END lines): any of them in an output would be a leak. */
export function pemBodyLines(pem: string): string[] {
  return pem.split('\n').filter((line) => line.trim() !== '' && !line.startsWith('-----'));
}

/** Fails naming the leak when any of the secrets appears in the text (an agent's or a CLI's output). */
export function expectNoSecretsIn(text: string, secrets: string[]): void {
  for (const secret of secrets) expect(text, 'a secret was printed').not.toContain(secret);
}

/** A log-line predicate: online, subscribed to `subscribed` of `total` channels (on that generation, if given). */
export function onlineWith(subscribed: number, total = subscribed, generation?: number): (l: LogLine) => boolean {
  return (l) =>
    String(l.msg).startsWith(`online: subscribed to ${subscribed} of ${total}`) && (generation === undefined || l['generation'] === generation);
}

/** The first log line matching the predicate among those from index `from` on (already seen or future). */
export function waitForLineFrom(agent: AgentProcess, from: number, predicate: (l: LogLine) => boolean, what: string, timeoutMs = 15_000): Promise<LogLine> {
  return agent.waitFor((l) => agent.lines.indexOf(l) >= from && predicate(l), timeoutMs, what);
}
