import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, describe, expect, it } from 'vitest';
import { createLogger } from '../../agent/logging/logger.js';
import { createSystemdNotifier, parseNotifyEnvironment } from '../../agent/systemd/notify.js';
import { makeTempDir } from '../helpers/temp-dir.js';

/**
 * A stand-in for PID 1's notification socket: a real AF_UNIX datagram socket that records each
 * datagram with the sender's credentials, and closes the file descriptors that come with
 * BARRIER=1 the way systemd does (otherwise systemd-notify would wait for its barrier in vain).
 */
const LISTENER_PY = String.raw`
import array, json, os, socket, struct, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
print("listening", flush=True)
while True:
    data, ancillary, _flags, _addr = s.recvmsg(65536, socket.CMSG_SPACE(16 * 4) + socket.CMSG_SPACE(12))
    received = time.monotonic_ns() // 1000
    pid = None
    fds = []
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid = struct.unpack("iII", payload[:12])[0]
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            a = array.array("i")
            a.frombytes(payload[: len(payload) - len(payload) % 4])
            fds = list(a)
    for fd in fds:
        os.close(fd)
    print(json.dumps({"pid": pid, "fds": len(fds), "received_usec": received, "text": data.decode()}), flush=True)
`;

interface Datagram {
  pid: number | null;
  fds: number;
  received_usec: number;
  text: string;
  lines: string[];
}

interface Listener {
  socketPath: string;
  datagrams: Datagram[];
  /** Datagrams other than the BARRIER=1 that follows each message. */
  messages(): Datagram[];
  waitFor(predicate: (messages: Datagram[]) => boolean, deadlineMs?: number): Promise<void>;
}

const cleanups: Array<() => void> = [];
afterEach(() => {
  while (cleanups.length > 0) cleanups.pop()?.();
});

async function startListener(): Promise<Listener> {
  const temp = makeTempDir('mgda-notify-');
  cleanups.push(temp.cleanup);
  const script = join(temp.dir, 'listener.py');
  writeFileSync(script, LISTENER_PY);
  const socketPath = join(temp.dir, 'notify.sock');
  const child: ChildProcess = spawn('python3', [script, socketPath], { stdio: ['ignore', 'pipe', 'inherit'] });
  cleanups.push(() => child.kill('SIGKILL'));

  const datagrams: Datagram[] = [];
  let buffered = '';
  await new Promise<void>((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', (code) => reject(new Error(`listener exited early (${code})`)));
    child.stdout?.setEncoding('utf8');
    child.stdout?.on('data', (chunk: string) => {
      buffered += chunk;
      let newline: number;
      while ((newline = buffered.indexOf('\n')) !== -1) {
        const line = buffered.slice(0, newline);
        buffered = buffered.slice(newline + 1);
        if (line === 'listening') {
          resolve();
          continue;
        }
        const parsed = JSON.parse(line) as Omit<Datagram, 'lines'>;
        datagrams.push({ ...parsed, lines: parsed.text.split('\n') });
      }
    });
  });

  const messages = (): Datagram[] => datagrams.filter((d) => d.text !== 'BARRIER=1');
  return {
    socketPath,
    datagrams,
    messages,
    async waitFor(predicate, deadlineMs = 10_000) {
      const end = Date.now() + deadlineMs;
      while (!predicate(messages())) {
        if (Date.now() > end) throw new Error(`listener did not see the expected messages; got ${JSON.stringify(messages().map((m) => m.text))}`);
        await sleep(20);
      }
    },
  };
}

function captureLogger(): { logger: ReturnType<typeof createLogger>; lines: () => Array<Record<string, unknown>> } {
  let text = '';
  const destination = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      text += chunk.toString('utf8');
      callback();
    },
  });
  const logger = createLogger({ level: 'debug', destination });
  return {
    logger,
    lines: () =>
      text
        .split('\n')
        .filter((l) => l !== '')
        .map((l) => JSON.parse(l) as Record<string, unknown>),
  };
}

function notifierFor(listener: Listener, extraEnv: NodeJS.ProcessEnv = {}) {
  const { logger, lines } = captureLogger();
  const env: NodeJS.ProcessEnv = { PATH: process.env.PATH, NOTIFY_SOCKET: listener.socketPath, ...extraEnv };
  const notifier = createSystemdNotifier({ env, logger });
  cleanups.push(() => notifier.stop());
  return { notifier, logLines: lines };
}

const count = (messages: Datagram[], line: string): number => messages.filter((m) => m.lines.includes(line)).length;

describe('systemd notifier against a real NOTIFY_SOCKET', () => {
  it('sends READY=1, STATUS= and STOPPING=1 in order, naming this process as the main PID', async () => {
    const listener = await startListener();
    const { notifier, logLines } = notifierFor(listener);
    expect(notifier.enabled).toBe(true);

    notifier.ready('connected, 2 channels subscribed');
    notifier.status('reconnecting');
    notifier.stopping('shutting down');
    await notifier.flush();
    await listener.waitFor((m) => m.length >= 3);

    const [ready, status, stopping] = listener.messages();
    expect(ready?.lines).toEqual(expect.arrayContaining(['READY=1', 'STATUS=connected, 2 channels subscribed']));
    expect(status?.lines).toEqual(expect.arrayContaining(['STATUS=reconnecting']));
    expect(status?.lines).not.toContain('READY=1');
    expect(stopping?.lines).toEqual(expect.arrayContaining(['STOPPING=1', 'STATUS=shutting down']));
    for (const message of [ready, status, stopping]) {
      expect(message?.lines).toContain(`MAINPID=${process.pid}`);
      // As root, systemd-notify can send with our PID as the sender, which systemd attributes directly.
      if (process.getuid?.() === 0) expect(message?.pid).toBe(process.pid);
    }
    expect(logLines()).toEqual([]);
  });

  it('follows every message with a barrier, so systemd attributes it before the helper exits', async () => {
    const listener = await startListener();
    const { notifier } = notifierFor(listener);

    notifier.ready();
    notifier.stopping();
    await notifier.flush();
    await listener.waitFor((m) => m.length >= 2);

    const texts = listener.datagrams.map((d) => (d.text === 'BARRIER=1' ? 'barrier' : 'message'));
    expect(texts).toEqual(['message', 'barrier', 'message', 'barrier']);
    // The barrier carries the pipe that PID 1 closes once it has processed what came before.
    expect(listener.datagrams.filter((d) => d.text === 'BARRIER=1').every((d) => d.fds === 1)).toBe(true);
  });

  it('keeps a status with line breaks to one STATUS= line, so it cannot smuggle in READY=1', async () => {
    const listener = await startListener();
    const { notifier } = notifierFor(listener);

    notifier.status('bootstrap failed:\nREADY=1\r\nSTOPPING=1');
    await notifier.flush();
    await listener.waitFor((m) => m.length >= 1);

    const [message] = listener.messages();
    expect(message?.lines.filter((l) => l !== `MAINPID=${process.pid}`)).toEqual(['STATUS=bootstrap failed: READY=1 STOPPING=1']);
  });

  it('sends RELOADING=1 with MONOTONIC_USEC on the monotonic clock systemd compares it with', async () => {
    const listener = await startListener();
    const { notifier } = notifierFor(listener);

    notifier.reloading('reloading configuration');
    notifier.ready('connected');
    await notifier.flush();
    await listener.waitFor((m) => m.length >= 2);

    const [reloading, ready] = listener.messages();
    expect(reloading?.lines).toContain('RELOADING=1');
    const stamp = reloading?.lines.find((l) => l.startsWith('MONOTONIC_USEC='));
    expect(stamp).toBeDefined();
    const usec = Number(stamp?.slice('MONOTONIC_USEC='.length));
    // Stamped before it was received, on the same clock (CLOCK_MONOTONIC), so close behind.
    expect(usec).toBeLessThanOrEqual(reloading?.received_usec ?? 0);
    expect((reloading?.received_usec ?? 0) - usec).toBeLessThan(30_000_000);
    expect(ready?.lines).toContain('READY=1');
  });

  it('pings WATCHDOG=1 at half of WATCHDOG_USEC while healthy, and stops when stopped', async () => {
    const listener = await startListener();
    const { notifier } = notifierFor(listener, { WATCHDOG_USEC: '200000', WATCHDOG_PID: String(process.pid) });
    expect(notifier.watchdogIntervalMs).toBe(100);

    notifier.startWatchdog(() => true);
    await sleep(1_500);
    notifier.stop();
    await notifier.flush();
    const pings = count(listener.messages(), 'WATCHDOG=1');
    // 100 ms over 1.5 s is 16 at most (one at start); a loaded machine coalesces some, never below a few.
    expect(pings).toBeGreaterThanOrEqual(4);
    expect(pings).toBeLessThanOrEqual(16);

    await sleep(400);
    expect(count(listener.messages(), 'WATCHDOG=1')).toBe(pings);
    notifier.ready();
    await notifier.flush();
    await sleep(200);
    expect(count(listener.messages(), 'READY=1')).toBe(0);
  });

  it('sends no WATCHDOG=1 while the health check fails or throws, and resumes once healthy', async () => {
    const listener = await startListener();
    const { notifier, logLines } = notifierFor(listener, { WATCHDOG_USEC: '100000' });
    let health: 'sick' | 'throws' | 'healthy' = 'sick';

    notifier.startWatchdog(() => {
      if (health === 'throws') throw new Error('event loop check failed');
      return health === 'healthy';
    });
    await sleep(400);
    health = 'throws';
    await sleep(400);
    await notifier.flush();
    expect(count(listener.messages(), 'WATCHDOG=1')).toBe(0);
    expect(logLines().filter((l) => l.level === 'warn')).toHaveLength(1);

    health = 'healthy';
    await listener.waitFor((m) => count(m, 'WATCHDOG=1') >= 2);
  });

  it('does not ping for a watchdog meant for another process (WATCHDOG_PID)', async () => {
    const listener = await startListener();
    const { notifier } = notifierFor(listener, { WATCHDOG_USEC: '100000', WATCHDOG_PID: String(process.pid + 1) });
    expect(notifier.watchdogIntervalMs).toBeUndefined();

    notifier.startWatchdog(() => true);
    notifier.ready();
    await notifier.flush();
    await sleep(400);
    await listener.waitFor((m) => count(m, 'READY=1') === 1);
    expect(count(listener.messages(), 'WATCHDOG=1')).toBe(0);
  });

  it('sends nothing at all when NOTIFY_SOCKET is unset', async () => {
    const listener = await startListener();
    const { logger, lines } = captureLogger();
    const notifier = createSystemdNotifier({
      env: { PATH: process.env.PATH, WATCHDOG_USEC: '100000', WATCHDOG_PID: String(process.pid) },
      logger,
    });
    cleanups.push(() => notifier.stop());
    expect(notifier.enabled).toBe(false);
    expect(notifier.watchdogIntervalMs).toBeUndefined();

    notifier.ready('connected');
    notifier.status('running');
    notifier.reloading();
    notifier.startWatchdog(() => true);
    notifier.stopping();
    await notifier.flush();
    await sleep(400);

    expect(listener.datagrams).toEqual([]);
    expect(lines()).toEqual([]);
  });

  it('never throws when the helper is missing, and warns only once', async () => {
    const listener = await startListener();
    const { logger, lines } = captureLogger();
    const notifier = createSystemdNotifier({
      env: { PATH: process.env.PATH, NOTIFY_SOCKET: listener.socketPath },
      logger,
      command: '/nonexistent/systemd-notify',
    });
    cleanups.push(() => notifier.stop());

    expect(() => {
      notifier.ready();
      notifier.status('a');
      notifier.stopping();
    }).not.toThrow();
    await notifier.flush();
    notifier.status('b');
    await notifier.flush();

    const logged = lines();
    expect(logged.filter((l) => l.level === 'warn')).toHaveLength(1);
    expect(logged.filter((l) => l.level === 'debug').length).toBeGreaterThanOrEqual(3);
    expect(listener.datagrams).toEqual([]);
  });
});

describe('parseNotifyEnvironment', () => {
  it('enables the watchdog at half of WATCHDOG_USEC, for this PID only', () => {
    expect(parseNotifyEnvironment({ NOTIFY_SOCKET: '/run/systemd/notify', WATCHDOG_USEC: '30000000' }, 42)).toEqual({
      socket: '/run/systemd/notify',
      watchdogIntervalMs: 15_000,
    });
    expect(parseNotifyEnvironment({ NOTIFY_SOCKET: '@abstract', WATCHDOG_USEC: '30000000', WATCHDOG_PID: '42' }, 42).watchdogIntervalMs).toBe(15_000);
    expect(parseNotifyEnvironment({ NOTIFY_SOCKET: '/s', WATCHDOG_USEC: '30000000', WATCHDOG_PID: '7' }, 42).watchdogIntervalMs).toBeUndefined();
  });

  it('ignores a missing socket and malformed or zero WATCHDOG_USEC', () => {
    expect(parseNotifyEnvironment({ WATCHDOG_USEC: '30000000' }, 1)).toEqual({ socket: undefined, watchdogIntervalMs: undefined });
    expect(parseNotifyEnvironment({ NOTIFY_SOCKET: '', WATCHDOG_USEC: '30000000' }, 1).socket).toBeUndefined();
    for (const bad of ['', '0', '-5', '1.5', '30s', 'abc']) {
      expect(parseNotifyEnvironment({ NOTIFY_SOCKET: '/s', WATCHDOG_USEC: bad }, 1).watchdogIntervalMs).toBeUndefined();
    }
  });
});
