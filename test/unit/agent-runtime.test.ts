import { Writable } from 'node:stream';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { AgentConfigSchema } from '../../agent/config/schema.js';
import type { DeviceConfig } from '../../agent/bootstrap/model.js';
import { AgentError } from '../../agent/errors/agent-error.js';
import {
  AgentRuntime,
  type AgentRuntimeDeps,
  type GenerationPort,
  type RuntimeStatus,
  type SessionPort,
  type SessionPlan,
  type StorePort,
} from '../../agent/lifecycle/agent-runtime.js';
import type { AttemptStorePort, BackoffAttempts } from '../../agent/lifecycle/backoff-state.js';
import type { AppliedChange } from '../../agent/updates/on-apply.js';

/*
 * The runtime's decisions, driven through fake ports: no sockets, no disk, no real timers. Sleeps
 * resolve on the next tick and are recorded, so a test sees every backoff the agent chose.
 */

const config = AgentConfigSchema.parse({ bootstrap: { url: 'http://127.0.0.1:1' }, retry: { initialDelayMs: 100, bootJitterMs: 0 } });

function device(password: string, channels = ['c1', 'c2'], content?: string): DeviceConfig {
  return {
    family: 'clients',
    mqtt: { url: 'mqtt://127.0.0.1:1', username: 'client-1', password },
    domainId: 'd1',
    channels: channels.map((id) => ({ id })),
    ...(content === undefined ? {} : { content }),
    certs: {},
  };
}

interface Gen extends GenerationPort {
  promoted: boolean;
  discarded: boolean;
}

class FakeStore implements StorePort<Gen> {
  gens: Gen[] = [];
  current: Gen | undefined;
  identity: { externalId: string } | undefined;
  async init() {}
  async loadCurrent() {
    return this.current;
  }
  async writeCandidate(config: DeviceConfig) {
    const gen: Gen = { id: this.gens.length + 1, config, paths: {}, promoted: false, discarded: false };
    this.gens.push(gen);
    return gen;
  }
  async promote(gen: Gen) {
    gen.promoted = true;
    this.current = gen;
  }
  async discard(gen: Gen) {
    gen.discarded = true;
  }
  async loadIdentity() {
    return this.identity;
  }
  async saveIdentity(identity: { externalId: string }) {
    this.identity = identity;
  }
}

/** A broker that accepts only the passwords in `accepted`, and grants only `grantable` filters. */
class FakeBroker {
  accepted = new Set<string>();
  grantable = new Set<string>();
  down = false;
  /** Broker URLs nobody answers on (a mistyped host). */
  unreachable = new Set<string>();
  /** CONNECT never answered (a wedged broker). */
  hang = false;
  /** Every connection is dropped right after it was established. */
  flapping = false;
  connects: string[] = [];
  subscribes: string[][] = [];
  unsubscribes: string[][] = [];
  published: { topic: string; payload: string }[] = [];
  live: { lose: (e: AgentError) => void } | undefined;

  session(gen: Gen, plan: SessionPlan): SessionPort {
    let lostListener: (e: AgentError) => void = () => undefined;
    let abandon: (e: AgentError) => void = () => undefined;
    const broker = this;
    return {
      async connect() {
        broker.connects.push(gen.config.mqtt.password);
        if (broker.hang) await new Promise((_resolve, reject) => (abandon = reject)); // until stop()
        if (broker.down || broker.unreachable.has(gen.config.mqtt.url)) throw new AgentError('MQTT_NETWORK', 'connect ECONNREFUSED');
        if (!broker.accepted.has(gen.config.mqtt.password)) throw new AgentError('MQTT_AUTH_REFUSED', 'bad username or password');
        broker.live = { lose: (e) => lostListener(e) };
        if (broker.flapping) setImmediate(() => lostListener(new AgentError('MQTT_NETWORK', 'connection reset')));
      },
      async subscribe(filters) {
        broker.subscribes.push(filters);
        return filters.map((filter) => ({ filter, granted: broker.grantable.has(filter) }));
      },
      async unsubscribe(filters) {
        broker.unsubscribes.push(filters);
      },
      async publish(topic, payload) {
        broker.published.push({ topic, payload: String(payload) });
      },
      onMessage() {},
      onLost(listener) {
        lostListener = listener;
      },
      async stop(opts) {
        abandon(new AgentError('MQTT_NETWORK', 'connect abandoned: the MQTT session is stopping'));
        if (opts.status) broker.published.push({ topic: opts.status.topic, payload: opts.status.payload });
        broker.live = undefined;
      },
    };
    void plan;
  }
}

const runtimes: AgentRuntime<Gen>[] = [];
afterEach(async () => {
  await Promise.all(runtimes.splice(0).map((r) => r.stop()));
});

/** What systemd would receive, one string per message. */
class RecordingNotifier {
  messages: string[] = [];
  ready(status?: string) {
    this.messages.push(`READY=1${status ? ` ${status}` : ''}`);
  }
  status(text: string) {
    this.messages.push(`STATUS=${text}`);
  }
  reloading(status?: string) {
    this.messages.push(`RELOADING=1${status ? ` ${status}` : ''}`);
  }
  stopping() {
    this.messages.push('STOPPING=1');
  }
  count(prefix: string): number {
    return this.messages.filter((m) => m.startsWith(prefix)).length;
  }
}

class MemoryAttempts implements AttemptStorePort {
  saves: BackoffAttempts[] = [];
  constructor(private stored: BackoffAttempts = { counts: {} }) {}
  async load() {
    return structuredClone(this.stored);
  }
  async save(attempts: BackoffAttempts) {
    this.stored = structuredClone(attempts);
    this.saves.push(this.stored);
  }
}

interface BuildOptions {
  store: FakeStore;
  broker: FakeBroker;
  fetch: (signal: AbortSignal) => Promise<DeviceConfig>;
  config?: typeof config;
  notifier?: RecordingNotifier;
  attempts?: AttemptStorePort;
  onApplied?: (change: AppliedChange) => Promise<unknown>;
  onStatus?: (status: RuntimeStatus) => void;
  random?: () => number;
  monotonicNow?: () => number;
  /** Replaces the recording sleep for these delays (e.g. a sleep that never ends). */
  sleepOverride?: (ms: number, signal: AbortSignal) => Promise<void> | undefined;
}

function build(opts: BuildOptions) {
  const logs: Record<string, unknown>[] = [];
  const sink = new Writable({
    write(chunk, _enc, cb) {
      logs.push(JSON.parse(String(chunk)) as Record<string, unknown>);
      cb();
    },
  });
  const sleeps: number[] = [];
  let fetches = 0;
  const deps: AgentRuntimeDeps<Gen> = {
    config: opts.config ?? config,
    logger: pino({ level: 'debug' }, sink),
    store: opts.store,
    resolveIdentity: async () => ({ externalId: 'aa:bb:cc:dd:ee:ff', source: 'interface' }),
    readExternalKey: async () => 'ext-key-secret',
    fetchConfig: async (_id, _key, signal) => {
      fetches++;
      return opts.fetch(signal);
    },
    planSession: (d) => ({
      statusTopic: `m/${d.domainId}/c/${d.channels[0]?.id}/status`,
      subscriptions: d.channels.map((c) => ({ channelId: c.id, filter: `m/${d.domainId}/c/${c.id}/#` })),
    }),
    createSession: (gen, plan) => opts.broker.session(gen, plan),
    parseTopic: () => undefined,
    notifier: opts.notifier ?? new RecordingNotifier(),
    messageHandler: { handle() {} },
    random: opts.random ?? (() => 0.5),
    sleep: async (ms, signal) => {
      const overridden = opts.sleepOverride?.(ms, signal);
      if (overridden) return overridden;
      sleeps.push(ms);
      await new Promise((r) => setImmediate(r));
      if (signal.aborted) throw new Error('aborted');
    },
    ...(opts.attempts ? { attempts: opts.attempts } : {}),
    ...(opts.onApplied ? { onApplied: opts.onApplied } : {}),
    ...(opts.onStatus ? { onStatus: opts.onStatus } : {}),
    ...(opts.monotonicNow ? { monotonicNow: opts.monotonicNow } : {}),
  };
  const runtime = new AgentRuntime<Gen>(deps);
  runtimes.push(runtime);
  return { runtime, logs, sleeps, fetches: () => fetches };
}

async function until(cond: () => boolean, what: string, maxTicks = 2000): Promise<void> {
  for (let i = 0; i < maxTicks; i++) {
    if (cond()) return;
    await new Promise((r) => setImmediate(r));
  }
  throw new Error(`never happened: ${what}`);
}

describe('agent runtime decisions', () => {
  it('first boot: bootstraps, connects, promotes the candidate, persists the ID, subscribes and goes online', async () => {
    const store = new FakeStore();
    const broker = new FakeBroker();
    broker.accepted.add('s1');
    broker.grantable.add('m/d1/c/c1/#').add('m/d1/c/c2/#');
    const { runtime } = build({ store, broker, fetch: async () => device('s1') });
    runtime.start();
    await until(() => runtime.state === 'online', 'online');
    expect(store.current?.id).toBe(1);
    expect(store.identity?.externalId).toBe('aa:bb:cc:dd:ee:ff');
    expect(runtime.channels).toEqual(['c1', 'c2']);
    expect(broker.published).toEqual([{ topic: 'm/d1/c/c1/status', payload: 'online' }]);
    await runtime.stop();
    expect(broker.published.at(-1)).toEqual({ topic: 'm/d1/c/c1/status', payload: 'offline' });
    expect(runtime.state).toBe('stopped');
  });

  it('boot with a stored configuration connects at once and refreshes in the background', async () => {
    const store = new FakeStore();
    store.current = { id: 7, config: device('s1'), paths: {}, promoted: true, discarded: false };
    const broker = new FakeBroker();
    broker.accepted.add('s1');
    let release: () => void = () => undefined;
    const gate = new Promise<void>((r) => (release = r));
    const { runtime, fetches } = build({
      store,
      broker,
      fetch: async () => {
        await gate; // Bootstrap is slow or unreachable: the device must already be online
        return device('s1');
      },
    });
    runtime.start();
    await until(() => runtime.state === 'online', 'online on the stored generation');
    expect(broker.connects).toEqual(['s1']);
    release();
    await until(() => fetches() === 1, 'one background refresh');
    expect(store.gens).toHaveLength(0); // unchanged configuration: nothing written
  });

  it('a refused candidate is discarded and the agent returns to the previous generation', async () => {
    const store = new FakeStore();
    store.current = { id: 3, config: device('good'), paths: {}, promoted: true, discarded: false };
    const broker = new FakeBroker();
    broker.accepted.add('good');
    const { runtime, logs } = build({ store, broker, fetch: async () => device('bad-new') });
    runtime.start();
    await until(() => broker.connects.includes('bad-new'), 'candidate tried');
    await until(() => runtime.state === 'online' && broker.connects.at(-1) === 'good', 'back online on generation 3');
    expect(store.gens[0]?.discarded).toBe(true);
    expect(store.current?.id).toBe(3);
    expect(logs.some((l) => String(l['msg']).includes('returning to generation 3'))).toBe(true);
  });

  it('broker refuses credentials: ends the session, re-bootstraps once, connects with the new ones', async () => {
    const store = new FakeStore();
    store.current = { id: 1, config: device('old'), paths: {}, promoted: true, discarded: false };
    const broker = new FakeBroker();
    broker.accepted.add('rotated'); // the server rotated the secret
    const { runtime, fetches } = build({ store, broker, fetch: async () => device('rotated') });
    runtime.start();
    await until(() => runtime.state === 'online', 'online with rotated credentials');
    expect(broker.connects).toEqual(['old', 'rotated']);
    expect(fetches()).toBe(1);
    expect(store.current?.config.mqtt.password).toBe('rotated');
  });

  it('re-bootstraps are bounded per hour when the broker refuses everyone', async () => {
    const store = new FakeStore();
    let n = 0;
    const broker = new FakeBroker(); // accepts nothing
    const { runtime, fetches, logs } = build({ store, broker, fetch: async () => device(`s${n++}`) });
    runtime.start();
    await until(() => logs.some((l) => String(l['msg']).includes('re-bootstrap limit reached')), 'breaker opens');
    // First bootstrap plus at most the breaker's allowance (6 per hour).
    expect(fetches()).toBeLessThanOrEqual(1 + 6);
  });

  it('403 from Bootstrap with a stored configuration: stays online on it, never exits', async () => {
    const store = new FakeStore();
    store.current = { id: 2, config: device('s1'), paths: {}, promoted: true, discarded: false };
    const broker = new FakeBroker();
    broker.accepted.add('s1');
    const { runtime, logs } = build({
      store,
      broker,
      fetch: async () => {
        throw new AgentError('BOOTSTRAP_FORBIDDEN', 'Bootstrap refused the external key (403)');
      },
    });
    runtime.start();
    await until(() => logs.some((l) => l['code'] === 'BOOTSTRAP_FORBIDDEN'), 'the refusal is logged');
    expect(runtime.state).toBe('online');
    expect(store.gens).toHaveLength(0);
  });

  it('no configuration and Bootstrap unreachable: waits with growing backoff, never gives up', async () => {
    const store = new FakeStore();
    const broker = new FakeBroker();
    let calls = 0;
    const { runtime, sleeps } = build({
      store,
      broker,
      fetch: async () => {
        calls++;
        throw new AgentError('BOOTSTRAP_NETWORK', 'connect ECONNREFUSED 127.0.0.1:1');
      },
    });
    runtime.start();
    await until(() => calls >= 6, 'six attempts');
    // random() = 0.5 → half of each ceiling: 100·2^n / 2
    expect(sleeps.slice(0, 5)).toEqual([50, 100, 200, 400, 800]);
    expect(runtime.state).not.toBe('stopped');
  });

  it('a refused subscription is retried until the operator connects the channel', async () => {
    const store = new FakeStore();
    const broker = new FakeBroker();
    broker.accepted.add('s1');
    broker.grantable.add('m/d1/c/c1/#');
    const { runtime, logs } = build({ store, broker, fetch: async () => device('s1') });
    runtime.start();
    await until(() => runtime.state === 'online', 'online');
    expect(runtime.channels).toEqual(['c1']);
    expect(logs.some((l) => l['code'] === 'MQTT_SUBSCRIBE_REFUSED' && l['channel'] === 'c2')).toBe(true);
    broker.grantable.add('m/d1/c/c2/#'); // operator connects the channel
    await until(() => runtime.channels.length === 2, 'c2 granted on retry');
    expect(broker.connects).toHaveLength(1); // no reconnect needed
  });

  it('an explicit check (SIGHUP) also retries refused subscriptions at once, not at the next slow retry', async () => {
    const store = new FakeStore();
    const broker = new FakeBroker();
    broker.accepted.add('s1');
    broker.grantable.add('m/d1/c/c1/#');
    const { runtime } = build({ store, broker, fetch: async () => device('s1') });
    // Sleeps that only end when aborted: the slow retry would never come by itself.
    (runtime as unknown as { sleepFn: (ms: number, signal: AbortSignal) => Promise<void> }).sleepFn = (_ms, signal) =>
      new Promise((_resolve, reject) => signal.addEventListener('abort', () => reject(new Error('aborted')), { once: true }));
    runtime.start();
    await until(() => runtime.state === 'online', 'online');
    expect(runtime.channels).toEqual(['c1']);
    broker.grantable.add('m/d1/c/c2/#');
    void runtime.requestUpdate('SIGHUP', { reload: true });
    await until(() => runtime.channels.length === 2, 'c2 granted right after SIGHUP');
  });

  it('a stored configuration whose broker is down is retried as it is, without asking Bootstrap each time', async () => {
    const store = new FakeStore();
    const broker = new FakeBroker();
    broker.accepted.add('s1');
    broker.down = true;
    const { runtime, fetches } = build({ store, broker, fetch: async () => device('s1') });
    runtime.start();
    await until(() => broker.connects.length >= 4, 'several connect attempts');
    expect(fetches()).toBe(1);
    broker.down = false;
    await until(() => runtime.state === 'online', 'online once the broker is back');
    expect(store.current?.id).toBe(1);
  });
});

/** A sleep that lasts until its signal aborts (a timer that never fires within the test). */
function endless(_ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((_resolve, reject) => {
    if (signal.aborted) reject(new Error('aborted'));
    signal.addEventListener('abort', () => reject(new Error('aborted')), { once: true });
  });
}

const STABLE_MS = 60_000; // min(retry.maxDelayMs, 60 s) with the default maxDelayMs

function storedGen(id: number, config: DeviceConfig): Gen {
  return { id, config, paths: { content: `/state/generations/${id}/content` }, promoted: true, discarded: false };
}

describe('state that is not what it seems', () => {
  it('a stored generation fetched for another external ID is never used (no connecting as another device)', async () => {
    const store = new FakeStore();
    store.current = { id: 4, externalId: 'other:device', config: device('not-mine'), paths: {}, promoted: true, discarded: false };
    const broker = new FakeBroker();
    broker.accepted.add('not-mine').add('mine');
    const { runtime, logs, fetches } = build({ store, broker, fetch: async () => device('mine') });
    runtime.start();
    await until(() => runtime.state === 'online', 'online');
    expect(broker.connects).toEqual(['mine']);
    expect(fetches()).toBe(1);
    expect(logs.some((l) => String(l['msg']).includes('belongs to external ID other:device'))).toBe(true);
  });

  it('a state directory that cannot be prepared is retried with backoff, not a crash', async () => {
    const store = new FakeStore();
    let failures = 2;
    store.init = async () => {
      if (failures-- > 0) throw new AgentError('STORAGE_WRITE_FAILED', 'could not create directory /var/lib/x: EROFS', { details: { osCode: 'EROFS' } });
    };
    const broker = new FakeBroker();
    broker.accepted.add('s1');
    const { runtime, logs } = build({ store, broker, fetch: async () => device('s1') });
    runtime.start();
    await until(() => runtime.state === 'online', 'online once the directory is writable');
    expect(logs.filter((l) => l['code'] === 'STORAGE_WRITE_FAILED' && l['stage'] === 'state directory')).toHaveLength(2);
  });
});

describe('backoff that survives a restart, and boot jitter', () => {
  it('resumes the persisted failure streak: the first attempt waits in the window the agent was in', async () => {
    const attempts = new MemoryAttempts({ counts: { transient: 4 }, last: 'transient' });
    let calls = 0;
    const { runtime, sleeps } = build({
      store: new FakeStore(),
      broker: new FakeBroker(),
      attempts,
      fetch: async () => {
        calls++;
        throw new AgentError('BOOTSTRAP_NETWORK', 'connect ECONNREFUSED');
      },
    });
    runtime.start();
    await until(() => calls >= 3, 'three attempts');
    // random 0.5, initial 100: the persisted 4 failures put the window at 800 (half: 400), not at 100.
    expect(sleeps.slice(0, 3)).toEqual([400, 800, 1600]);
    // One write per failed attempt, counting on from the persisted streak.
    expect(attempts.saves.slice(0, 2).map((a) => a.counts.transient)).toEqual([5, 6]);
    expect(attempts.saves.at(0)?.last).toBe('transient');
  });

  it('forgets the streak once a connection has stayed up, but not while the link flaps', async () => {
    const store = new FakeStore();
    store.current = storedGen(1, device('s1'));
    const broker = new FakeBroker();
    broker.accepted.add('s1');
    broker.flapping = true;
    const attempts = new MemoryAttempts();
    let stable: (() => void) | undefined;
    const { runtime, logs } = build({
      store,
      broker,
      attempts,
      fetch: async () => device('s1'),
      // The stability timer only fires when the test says so.
      sleepOverride: (ms, signal) =>
        ms === STABLE_MS
          ? new Promise<void>((resolve, reject) => {
              stable = resolve;
              signal.addEventListener('abort', () => reject(new Error('aborted')), { once: true });
            })
          : undefined,
    });
    runtime.start();
    await until(() => broker.connects.length >= 5, 'five flaps');
    // Every drop within the stability window counts: the backoff grows instead of restarting at 50.
    const waits = logs.filter((l) => l['stage'] === 'connection').map((l) => l['retryInMs']);
    expect(waits.slice(0, 4)).toEqual([50, 100, 200, 400]);
    expect(attempts.saves.at(-1)?.counts.transient).toBeGreaterThanOrEqual(4);

    broker.flapping = false;
    const flaps = broker.connects.length;
    await until(() => broker.connects.length > flaps && runtime.state === 'online', 'a connection that stays');
    stable?.();
    await until(() => attempts.saves.at(-1)?.counts.transient === undefined, 'streak reset');
    expect(attempts.saves.at(-1)).toEqual({ counts: {} });
  });

  it('a clean first boot waits a random delay up to retry.bootJitterMs before its first bootstrap', async () => {
    const jittered = AgentConfigSchema.parse({ bootstrap: { url: 'http://127.0.0.1:1' }, retry: { initialDelayMs: 100, bootJitterMs: 10_000 } });
    const broker = new FakeBroker();
    broker.accepted.add('s1');
    const { runtime, sleeps, fetches, logs } = build({ store: new FakeStore(), broker, config: jittered, random: () => 0.999, fetch: async () => device('s1') });
    runtime.start();
    await until(() => runtime.state === 'online', 'online');
    expect(fetches()).toBe(1);
    expect(sleeps[0]).toBe(9990); // within [0, 10 000)
    expect(logs.some((l) => String(l['msg']).includes('boot jitter'))).toBe(true);
  });

  it('with a stored configuration: connects after the boot jitter, and asks Bootstrap only after its own jitter', async () => {
    const jittered = AgentConfigSchema.parse({ bootstrap: { url: 'http://127.0.0.1:1' }, retry: { initialDelayMs: 100, bootJitterMs: 8_000 } });
    const store = new FakeStore();
    store.current = storedGen(4, device('s1'));
    const broker = new FakeBroker();
    broker.accepted.add('s1');
    // Both jitters are random 0.5 of 8 s: each 4 s sleep waits until the test releases it.
    const jitters: (() => void)[] = [];
    const { runtime, fetches } = build({
      store,
      broker,
      config: jittered,
      fetch: async () => device('s1'),
      sleepOverride: (ms, signal) =>
        ms === 4_000
          ? new Promise<void>((resolve, reject) => {
              jitters.push(resolve);
              signal.addEventListener('abort', () => reject(new Error('aborted')), { once: true });
            })
          : ms === STABLE_MS
            ? endless(ms, signal)
            : undefined,
    });
    runtime.start();
    await until(() => jitters.length === 2, 'connect and refresh both waiting out their jitter');
    expect(broker.connects).toEqual([]); // not straight back to the broker with the rest of the fleet
    for (const release of jitters) release(); // which one is the connect's does not matter
    await until(() => runtime.state === 'online', 'online on the stored generation');
    expect(broker.connects).toEqual(['s1']);
    await until(() => fetches() === 1, 'background refresh after its jitter');
  });
});

describe('configuration checks while running', () => {
  function onlineOn(config: DeviceConfig, opts: Partial<BuildOptions> & { fetch: BuildOptions['fetch'] }) {
    const store = new FakeStore();
    store.current = storedGen(1, config);
    store.gens.push(store.current);
    const broker = opts.broker ?? new FakeBroker();
    broker.accepted.add(config.mqtt.password);
    for (const c of config.channels) broker.grantable.add(`m/d1/c/${c.id}/#`);
    const applied: AppliedChange[] = [];
    const built = build({
      store,
      broker,
      onApplied: async (change) => {
        applied.push(change);
      },
      sleepOverride: (ms, signal) => (ms === STABLE_MS ? endless(ms, signal) : undefined),
      ...opts,
    });
    return { ...built, store, broker, applied };
  }

  it('only the content changed: a new generation, promoted without reconnecting, onApply told "content"', async () => {
    let served = device('s1', ['c1', 'c2'], 'v1');
    const { runtime, store, broker, applied } = onlineOn(served, { fetch: async () => served });
    runtime.start();
    await until(() => runtime.state === 'online', 'online');
    await until(() => applied.length === 0 && broker.subscribes.length === 1, 'boot refresh settled');
    served = device('s1', ['c1', 'c2'], 'v2');
    const outcome = await runtime.requestUpdate('control');
    expect(outcome).toEqual({ result: 'applied', generation: 2, changes: ['content'] });
    expect(store.current?.id).toBe(2);
    expect(store.current?.config.content).toBe('v2');
    expect(broker.connects).toEqual(['s1']); // same session
    expect(applied).toEqual([{ generation: 2, paths: {}, changes: ['content'] }]);
  });

  it('channels added and removed: subscribed and unsubscribed on the live session', async () => {
    let served = device('s1', ['c1', 'c2']);
    const { runtime, store, broker, applied } = onlineOn(served, { fetch: async () => served });
    broker.grantable.add('m/d1/c/c3/#');
    runtime.start();
    await until(() => runtime.state === 'online', 'online');
    served = device('s1', ['c1', 'c3']);
    const outcome = await runtime.requestUpdate('control');
    expect(outcome).toMatchObject({ result: 'applied', changes: ['channels'] });
    expect(broker.unsubscribes).toEqual([['m/d1/c/c2/#']]);
    expect(broker.subscribes.at(-1)).toEqual(['m/d1/c/c3/#']);
    expect(runtime.channels).toEqual(['c1', 'c3']);
    expect(broker.connects).toEqual(['s1']);
    expect(store.current?.config.channels.map((c) => c.id)).toEqual(['c1', 'c3']);
    expect(applied.map((a) => a.changes)).toEqual([['channels']]);
  });

  it('an added channel the broker refuses joins the slow retry and is subscribed once the operator connects it', async () => {
    let served = device('s1', ['c1']);
    const { runtime, broker } = onlineOn(served, { fetch: async () => served });
    runtime.start();
    await until(() => runtime.state === 'online', 'online');
    served = device('s1', ['c1', 'c9']);
    await runtime.requestUpdate('control');
    expect(runtime.status().channels).toEqual({ subscribed: ['c1'], refused: ['c9'] });
    broker.grantable.add('m/d1/c/c9/#');
    await until(() => runtime.channels.includes('c9'), 'c9 granted on retry');
    expect(broker.connects).toEqual(['s1']);
  });

  it('new credentials: a new session through the candidate path, promoted once the broker accepts it', async () => {
    let served = device('s1');
    const { runtime, store, broker, applied } = onlineOn(served, { fetch: async () => served });
    broker.accepted.add('s2');
    runtime.start();
    await until(() => runtime.state === 'online', 'online');
    served = device('s2');
    const outcome = await runtime.requestUpdate('control');
    expect(outcome).toMatchObject({ result: 'reconnecting', generation: 2, changes: ['credentials'] });
    await until(() => store.current?.id === 2 && runtime.state === 'online', 'online on generation 2');
    expect(broker.connects).toEqual(['s1', 's2']);
    // The old session said goodbye before the new one connected.
    expect(broker.published.filter((p) => p.payload === 'offline')).toHaveLength(1);
    expect(applied.map((a) => a.changes)).toEqual([['credentials']]);
  });

  it('new credentials the broker refuses: the candidate is dropped and the agent returns to its generation', async () => {
    let served = device('s1');
    const { runtime, store, broker, logs, applied } = onlineOn(served, { fetch: async () => served });
    runtime.start();
    await until(() => runtime.state === 'online', 'online');
    served = device('bad');
    await runtime.requestUpdate('control');
    served = device('s1'); // the re-bootstrap after the refusal gets the working credentials back
    await until(() => broker.connects.length >= 3 && runtime.state === 'online', 'back online');
    expect(broker.connects.slice(0, 3)).toEqual(['s1', 'bad', 's1']);
    expect(store.current?.id).toBe(1);
    expect(store.gens.find((g) => g.id === 2)?.discarded).toBe(true);
    expect(logs.some((l) => String(l['msg']).includes('returning to generation 1'))).toBe(true);
    expect(applied).toEqual([]);
  });

  it('a new broker URL nobody answers on: tried a few times, then given up for the previous generation', async () => {
    const served = device('s1');
    const moved: DeviceConfig = { ...device('s1'), mqtt: { ...served.mqtt, url: 'mqtt://typo.example:1883' } };
    const { runtime, store, broker, logs } = onlineOn(served, { fetch: async () => moved });
    broker.unreachable.add('mqtt://typo.example:1883');
    runtime.start();
    await until(() => runtime.state === 'online', 'online');
    await until(() => store.gens.length === 2, 'the boot refresh wrote the moved configuration');
    await until(() => logs.some((l) => String(l['msg']).includes('could not reach its broker 3 times')), 'given up');
    await until(() => runtime.state === 'online' && store.current?.id === 1, 'back online on generation 1');
    expect(store.gens[1]?.discarded).toBe(true);
    expect(logs.find((l) => String(l['msg']).includes('could not reach its broker'))?.['msg']).toBe(
      'new configuration could not reach its broker 3 times (MQTT_NETWORK); returning to generation 1',
    );
  });

  it('checks never overlap: requests during a check are served by exactly one more check', async () => {
    let gate: (() => void) | undefined;
    let inFlight = 0;
    let maxInFlight = 0;
    const served = device('s1');
    const { runtime, fetches } = onlineOn(served, {
      fetch: async () => {
        inFlight++;
        maxInFlight = Math.max(maxInFlight, inFlight);
        await new Promise<void>((resolve) => (gate = resolve));
        inFlight--;
        return served;
      },
    });
    runtime.start();
    await until(() => runtime.state === 'online' && gate !== undefined, 'boot refresh in flight');
    const requests = [runtime.requestUpdate('SIGHUP'), runtime.requestUpdate('control'), runtime.requestUpdate('periodic', { scheduled: true })];
    gate?.(); // the boot refresh ends; one more check serves the three requests
    await until(() => fetches() === 2 && inFlight === 1, 'second check in flight');
    gate?.();
    expect(await Promise.all(requests)).toEqual([{ result: 'unchanged' }, { result: 'unchanged' }, { result: 'unchanged' }]);
    expect(fetches()).toBe(2);
    expect(maxInFlight).toBe(1);
  });

  it("a check's Bootstrap request is aborted at its deadline, shorter than the check interval", async () => {
    const hourly = AgentConfigSchema.parse({
      bootstrap: { url: 'http://127.0.0.1:1', timeoutMs: 60_000 },
      retry: { initialDelayMs: 100, bootJitterMs: 0 },
      updates: { checkIntervalMs: 2_000 },
    });
    const served = device('s1');
    let aborted: unknown;
    let hang = false;
    const { runtime } = onlineOn(served, {
      config: hourly,
      fetch: (signal) =>
        hang
          ? new Promise<DeviceConfig>((_resolve, reject) =>
              signal.addEventListener('abort', () => {
                aborted = signal.reason;
                reject(signal.reason);
              }),
            )
          : Promise.resolve(served),
    });
    runtime.start();
    await until(() => runtime.state === 'online', 'online');
    hang = true;
    const outcome = await runtime.requestUpdate('control');
    // 2000 ms less 15 % jitter, halved: 850 ms, well inside the bootstrap client's own 60 s.
    expect(outcome).toEqual({ result: 'failed', code: 'BOOTSTRAP_TIMEOUT', message: 'configuration check did not finish within its deadline of 850 ms' });
    expect(aborted).toBeInstanceOf(AgentError);
    expect(runtime.state).toBe('online');
  });

  it('while waiting out a backoff on a stored configuration, a check that finds a new configuration tries it at once', async () => {
    const store = new FakeStore();
    store.current = storedGen(1, device('old'));
    const broker = new FakeBroker();
    broker.accepted.add('new');
    let served = device('old');
    const { runtime, sleeps } = build({
      store,
      broker,
      fetch: async () => served,
      // Long backoffs: only the check can end them.
      sleepOverride: (ms, signal) => (ms >= 50 ? endless(ms, signal) : undefined),
    });
    runtime.start();
    await until(() => broker.connects.length === 1 && runtime.state === 'waiting', 'refused and waiting');
    served = device('new');
    const outcome = await runtime.requestUpdate('SIGHUP');
    expect(outcome).toMatchObject({ result: 'reconnecting', changes: ['credentials'] });
    await until(() => runtime.state === 'online', 'online with the new configuration');
    expect(broker.connects).toEqual(['old', 'new']);
    expect(store.current?.config.mqtt.password).toBe('new');
    void sleeps;
  });

  it('an explicit request while the agent has no configuration and waits on a slow retry: bootstraps now', async () => {
    let forbidden = true;
    const broker = new FakeBroker();
    broker.accepted.add('s1');
    const { runtime, fetches } = build({
      store: new FakeStore(),
      broker,
      fetch: async () => {
        if (forbidden) throw new AgentError('BOOTSTRAP_FORBIDDEN', 'Bootstrap refused the external key (403)');
        return device('s1');
      },
      sleepOverride: (ms, signal) => (ms >= 50 ? endless(ms, signal) : undefined),
    });
    runtime.start();
    await until(() => fetches() === 1 && runtime.state === 'waiting', 'first 403, then a long wait');
    forbidden = false; // the operator fixed the key on the server
    expect(await runtime.requestUpdate('control')).toMatchObject({ result: 'deferred' });
    await until(() => runtime.state === 'online', 'online without waiting out the backoff');
    expect(fetches()).toBe(2);
  });
});

describe('what systemd and status.json are told', () => {
  it('READY=1 once online, after the STATUS lines of the way there; once only', async () => {
    const notifier = new RecordingNotifier();
    const broker = new FakeBroker();
    broker.accepted.add('s1');
    broker.grantable.add('m/d1/c/c1/#');
    const { runtime } = build({ store: new FakeStore(), broker, notifier, fetch: async () => device('s1') });
    runtime.start();
    await until(() => runtime.state === 'online', 'online');
    const readyAt = notifier.messages.findIndex((m) => m.startsWith('READY=1'));
    expect(notifier.messages.slice(0, readyAt)).toEqual(expect.arrayContaining(['STATUS=bootstrapping', 'STATUS=connecting: generation 1']));
    expect(notifier.messages[readyAt]).toBe('READY=1 online: 1/2 channels');
    broker.live?.lose(new AgentError('MQTT_NETWORK', 'reset'));
    await until(() => broker.connects.length === 2 && runtime.state === 'online', 'reconnected');
    expect(notifier.count('READY=1')).toBe(1);
    await runtime.stop();
    expect(notifier.messages.at(-2)).toBe('STOPPING=1');
  });

  it('READY=1 with a stored configuration while the broker is unreachable; none without one', async () => {
    const withStored = new FakeStore();
    withStored.current = storedGen(3, device('s1'));
    const downBroker = new FakeBroker();
    downBroker.down = true;
    const stored = new RecordingNotifier();
    const a = build({ store: withStored, broker: downBroker, notifier: stored, fetch: async () => device('s1') });
    a.runtime.start();
    await until(() => downBroker.connects.length >= 3, 'retrying');
    expect(stored.messages.filter((m) => m.startsWith('READY=1'))).toEqual([
      'READY=1 offline: running on stored generation 3; broker unreachable (MQTT_NETWORK), retrying',
    ]);

    const empty = new RecordingNotifier();
    let calls = 0;
    const b = build({
      store: new FakeStore(),
      broker: new FakeBroker(),
      notifier: empty,
      fetch: async () => {
        calls++;
        throw new AgentError('BOOTSTRAP_NETWORK', 'ENETUNREACH');
      },
    });
    b.runtime.start();
    await until(() => calls >= 5, 'retrying');
    expect(empty.count('READY=1')).toBe(0);
  });

  it('SIGHUP: RELOADING=1, then READY=1 when the check is done; on a new session only once it is online', async () => {
    const notifier = new RecordingNotifier();
    let served = device('s1');
    const store = new FakeStore();
    store.current = storedGen(1, served);
    const broker = new FakeBroker();
    broker.accepted.add('s1').add('s2');
    const { runtime } = build({ store, broker, notifier, fetch: async () => served, sleepOverride: (ms, signal) => (ms === STABLE_MS ? endless(ms, signal) : undefined) });
    runtime.start();
    await until(() => runtime.state === 'online', 'online');
    await runtime.requestUpdate('SIGHUP', { reload: true });
    const afterFirst = notifier.messages.filter((m) => /^(READY|RELOADING)=1/.test(m));
    expect(afterFirst.map((m) => m.split(' ')[0])).toEqual(['READY=1', 'RELOADING=1', 'READY=1']);

    served = device('s2');
    notifier.messages = [];
    await runtime.requestUpdate('SIGHUP', { reload: true });
    expect(notifier.count('READY=1')).toBe(0); // still switching
    await until(() => notifier.count('READY=1') === 1, 'READY after the new session');
    expect(broker.connects.at(-1)).toBe('s2');
    const order = notifier.messages.filter((m) => /^(READY|RELOADING)=1|^STATUS=(connecting|online)/.test(m)).map((m) => m.split(':')[0]);
    expect(order).toEqual(['RELOADING=1 reloading', 'STATUS=connecting', 'STATUS=online', 'READY=1 online']);
  });

  it('no RELOADING=1 before the first READY=1 (systemd would wait for a READY that is not due yet)', async () => {
    const notifier = new RecordingNotifier();
    const { runtime } = build({
      store: new FakeStore(),
      broker: new FakeBroker(),
      notifier,
      fetch: async () => {
        throw new AgentError('BOOTSTRAP_SERVER_ERROR', '502');
      },
      sleepOverride: (ms, signal) => (ms >= 50 ? endless(ms, signal) : undefined),
    });
    runtime.start();
    await until(() => runtime.state === 'waiting', 'waiting');
    await runtime.requestUpdate('SIGHUP', { reload: true });
    expect(notifier.count('RELOADING=1')).toBe(0);
  });

  it('healthy while waiting or online; unhealthy once a step outlives every deadline it has', async () => {
    let mono = 0;
    const broker = new FakeBroker();
    broker.hang = true;
    const store = new FakeStore();
    store.current = storedGen(1, device('s1'));
    const { runtime, logs } = build({ store, broker, monotonicNow: () => mono, fetch: async () => device('s1') });
    runtime.start();
    await until(() => runtime.state === 'connecting' && broker.connects.length === 1, 'connect hangs');
    // bootstrap.timeoutMs 15 s, connectTimeoutMs 15 s, plus a minute of margin.
    mono += 75_000;
    expect(runtime.isHealthy()).toBe(true);
    mono += 1;
    expect(runtime.isHealthy()).toBe(false);
    expect(runtime.isHealthy()).toBe(false);
    expect(logs.filter((l) => String(l['msg']).startsWith('main loop stuck'))).toHaveLength(1);
  });

  it('a failed check while online (403: only an operator can fix it) is reported until a check succeeds', async () => {
    const notifier = new RecordingNotifier();
    const statuses: RuntimeStatus[] = [];
    const store = new FakeStore();
    store.current = storedGen(2, device('s1'));
    const broker = new FakeBroker();
    broker.accepted.add('s1');
    broker.grantable.add('m/d1/c/c1/#').add('m/d1/c/c2/#');
    let forbidden = true;
    const { runtime } = build({
      store,
      broker,
      notifier,
      onStatus: (s) => statuses.push(s),
      fetch: async () => {
        if (forbidden) throw new AgentError('BOOTSTRAP_FORBIDDEN', 'Bootstrap refused the external key (403)');
        return device('s1');
      },
      sleepOverride: (ms, signal) => (ms === STABLE_MS ? endless(ms, signal) : undefined),
    });
    runtime.start();
    await until(() => notifier.messages.includes('STATUS=online: generation 2, 2/2 channels; last configuration check failed (BOOTSTRAP_FORBIDDEN)'), 'failure shown');
    expect(statuses.at(-1)).toMatchObject({ state: 'online', lastBootstrap: { ok: false, code: 'BOOTSTRAP_FORBIDDEN' } });
    forbidden = false;
    expect(await runtime.requestUpdate('control')).toEqual({ result: 'unchanged' });
    expect(notifier.messages.at(-1)).toBe('STATUS=online: generation 2, 2/2 channels');
    expect(statuses.at(-1)).toMatchObject({ lastBootstrap: { ok: true } });
  });

  it('status snapshots: state, generation, broker without user info, channels, last bootstrap', async () => {
    const statuses: RuntimeStatus[] = [];
    const broker = new FakeBroker();
    broker.accepted.add('s1');
    broker.grantable.add('m/d1/c/c1/#');
    const config = device('s1');
    config.mqtt.url = 'mqtt://user:hunter2@broker.example:1883';
    const { runtime } = build({ store: new FakeStore(), broker, fetch: async () => config, onStatus: (s) => statuses.push(s) });
    runtime.start();
    await until(() => runtime.state === 'online', 'online');
    const online = statuses.at(-1) as RuntimeStatus;
    expect(online).toMatchObject({
      state: 'online',
      detail: 'generation 1, 1/2 channels',
      generation: 1,
      externalId: 'aa:bb:cc:dd:ee:ff',
      lastBootstrap: { ok: true },
      connection: { broker: 'mqtt://broker.example:1883', connected: true },
      channels: { subscribed: ['c1'], refused: ['c2'] },
    });
    expect(JSON.stringify(statuses)).not.toContain('hunter2');
    expect(statuses.map((s) => s.state)).toEqual(expect.arrayContaining(['resolving-identity', 'bootstrapping', 'connecting', 'online']));
    await runtime.stop();
    expect(statuses.at(-1)).toMatchObject({ state: 'stopped', connection: { connected: false } });
  });
});
