import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { createSystemdNotifier, parseNotifyEnvironment } from '../../agent/systemd/notify.js';
import { tempWorkDir, useTeardown } from '../helpers/agent-harness.js';
import { captureLogger } from '../helpers/log-capture.js';
import { startNotifyListener, type NotifyListener, type NotifyMessage } from '../helpers/notify-listener.js';

/** How long a test waits for the datagrams it expects. */
const WAIT_MS = 10_000;

const t = useTeardown();

/** A real NOTIFY_SOCKET (see notify-listener.ts), gone at the end of the test. */
async function startListener(): Promise<NotifyListener> {
  const listener = await startNotifyListener(tempWorkDir(t, 'mgda-notify-'));
  t.add(() => listener.close());
  return listener;
}

function notifierFor(listener: NotifyListener, extraEnv: NodeJS.ProcessEnv = {}) {
  const { logger, lines } = captureLogger();
  const env: NodeJS.ProcessEnv = { PATH: process.env.PATH, NOTIFY_SOCKET: listener.socketPath, ...extraEnv };
  const notifier = createSystemdNotifier({ env, logger });
  t.add(() => notifier.stop());
  return { notifier, logLines: lines };
}

const count = (messages: NotifyMessage[], line: string): number => messages.filter((m) => m.lines.includes(line)).length;

describe('systemd notifier against a real NOTIFY_SOCKET', () => {
  it('sends READY=1, STATUS= and STOPPING=1 in order, naming this process as the main PID', async () => {
    const listener = await startListener();
    const { notifier, logLines } = notifierFor(listener);
    expect(notifier.enabled).toBe(true);

    notifier.ready('connected, 2 channels subscribed');
    notifier.status('reconnecting');
    notifier.stopping('shutting down');
    await notifier.flush();
    await listener.waitFor((m) => m.length >= 3, WAIT_MS);

    const [ready, status, stopping] = listener.messages;
    expect(ready?.lines).toEqual(expect.arrayContaining(['READY=1', 'STATUS=connected, 2 channels subscribed']));
    expect(status?.lines).toEqual(expect.arrayContaining(['STATUS=reconnecting']));
    expect(status?.lines).not.toContain('READY=1');
    expect(stopping?.lines).toEqual(expect.arrayContaining(['STOPPING=1', 'STATUS=shutting down']));
    for (const message of [ready, status, stopping]) {
      expect(message?.lines).toContain(`MAINPID=${process.pid}`);
      // As root, systemd-notify can send with our PID as the sender, which systemd attributes directly.
      if (process.getuid?.() === 0) expect(message?.pid).toBe(process.pid);
    }
    expect(logLines).toEqual([]);
  });

  it('follows every message with a barrier, so systemd attributes it before the helper exits', async () => {
    const listener = await startListener();
    const { notifier } = notifierFor(listener);

    notifier.ready();
    notifier.stopping();
    await notifier.flush();
    // The listener reports a barrier after closing its descriptor, so flush() can return before the
    // last BARRIER=1 line reaches us: wait for all four datagrams, not just the two messages.
    await listener.waitFor(() => listener.datagrams.length >= 4, WAIT_MS, 'two messages and two barriers');

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
    await listener.waitFor((m) => m.length >= 1, WAIT_MS);

    const [message] = listener.messages;
    expect(message?.lines.filter((l) => l !== `MAINPID=${process.pid}`)).toEqual(['STATUS=bootstrap failed: READY=1 STOPPING=1']);
  });

  it('sends RELOADING=1 with MONOTONIC_USEC on the monotonic clock systemd compares it with', async () => {
    const listener = await startListener();
    const { notifier } = notifierFor(listener);

    notifier.reloading('reloading configuration');
    notifier.ready('connected');
    await notifier.flush();
    await listener.waitFor((m) => m.length >= 2, WAIT_MS);

    const [reloading, ready] = listener.messages;
    expect(reloading?.lines).toContain('RELOADING=1');
    const stamp = reloading?.lines.find((l) => l.startsWith('MONOTONIC_USEC='));
    expect(stamp).toBeDefined();
    const usec = Number(stamp?.slice('MONOTONIC_USEC='.length));
    // Stamped before it was received, on the same clock (CLOCK_MONOTONIC), so close behind.
    expect(usec).toBeLessThanOrEqual(reloading?.receivedUsec ?? 0);
    expect((reloading?.receivedUsec ?? 0) - usec).toBeLessThan(30_000_000);
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
    const pings = count(listener.messages, 'WATCHDOG=1');
    // 100 ms over 1.5 s is 16 at most (one at start); a loaded machine coalesces some, never below a few.
    expect(pings).toBeGreaterThanOrEqual(4);
    expect(pings).toBeLessThanOrEqual(16);

    await sleep(400);
    expect(count(listener.messages, 'WATCHDOG=1')).toBe(pings);
    notifier.ready();
    await notifier.flush();
    await sleep(200);
    expect(count(listener.messages, 'READY=1')).toBe(0);
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
    expect(count(listener.messages, 'WATCHDOG=1')).toBe(0);
    expect(logLines.filter((l) => l.level === 'warn')).toHaveLength(1);

    health = 'healthy';
    await listener.waitFor((m) => count(m, 'WATCHDOG=1') >= 2, WAIT_MS);
  });

  it('does not ping for a watchdog meant for another process (WATCHDOG_PID)', async () => {
    const listener = await startListener();
    const { notifier } = notifierFor(listener, { WATCHDOG_USEC: '100000', WATCHDOG_PID: String(process.pid + 1) });
    expect(notifier.watchdogIntervalMs).toBeUndefined();

    notifier.startWatchdog(() => true);
    notifier.ready();
    await notifier.flush();
    await sleep(400);
    await listener.waitFor((m) => count(m, 'READY=1') === 1, WAIT_MS);
    expect(count(listener.messages, 'WATCHDOG=1')).toBe(0);
  });

  it('sends nothing at all when NOTIFY_SOCKET is unset', async () => {
    const listener = await startListener();
    const { logger, lines } = captureLogger();
    const notifier = createSystemdNotifier({
      env: { PATH: process.env.PATH, WATCHDOG_USEC: '100000', WATCHDOG_PID: String(process.pid) },
      logger,
    });
    t.add(() => notifier.stop());
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
    expect(lines).toEqual([]);
  });

  it('never throws when the helper is missing, and warns only once', async () => {
    const listener = await startListener();
    const { logger, lines } = captureLogger();
    const notifier = createSystemdNotifier({
      env: { PATH: process.env.PATH, NOTIFY_SOCKET: listener.socketPath },
      logger,
      command: '/nonexistent/systemd-notify',
    });
    t.add(() => notifier.stop());

    expect(() => {
      notifier.ready();
      notifier.status('a');
      notifier.stopping();
    }).not.toThrow();
    await notifier.flush();
    notifier.status('b');
    await notifier.flush();

    const logged = lines;
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
