import { Writable } from 'node:stream';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { AgentConfigSchema } from '../../agent/config/schema.js';
import type { DeviceConfig } from '../../agent/bootstrap/model.js';
import { AgentError } from '../../agent/errors/agent-error.js';
import {
  AgentRuntime,
  type GenerationPort,
  type SessionPort,
  type SessionPlan,
  type StorePort,
} from '../../agent/lifecycle/agent-runtime.js';

/*
 * The runtime's decisions, driven through fake ports: no sockets, no disk, no real timers. Sleeps
 * resolve on the next tick and are recorded, so a test sees every backoff the agent chose.
 */

const config = AgentConfigSchema.parse({ bootstrap: { url: 'http://127.0.0.1:1' }, retry: { initialDelayMs: 100 } });

function device(password: string, channels = ['c1', 'c2']): DeviceConfig {
  return {
    family: 'clients',
    mqtt: { url: 'mqtt://127.0.0.1:1', username: 'client-1', password },
    domainId: 'd1',
    channels: channels.map((id) => ({ id })),
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
  connects: string[] = [];
  published: { topic: string; payload: string }[] = [];
  live: { lose: (e: AgentError) => void } | undefined;

  session(gen: Gen, plan: SessionPlan): SessionPort {
    let lostListener: (e: AgentError) => void = () => undefined;
    const broker = this;
    return {
      async connect() {
        broker.connects.push(gen.config.mqtt.password);
        if (broker.down) throw new AgentError('MQTT_NETWORK', 'connect ECONNREFUSED');
        if (!broker.accepted.has(gen.config.mqtt.password)) throw new AgentError('MQTT_AUTH_REFUSED', 'bad username or password');
        broker.live = { lose: (e) => lostListener(e) };
      },
      async subscribe(filters) {
        return filters.map((filter) => ({ filter, granted: broker.grantable.has(filter) }));
      },
      async publish(topic, payload) {
        broker.published.push({ topic, payload: String(payload) });
      },
      onMessage() {},
      onLost(listener) {
        lostListener = listener;
      },
      async stop(opts) {
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

function build(opts: { store: FakeStore; broker: FakeBroker; fetch: () => Promise<DeviceConfig> }) {
  const logs: Record<string, unknown>[] = [];
  const sink = new Writable({
    write(chunk, _enc, cb) {
      logs.push(JSON.parse(String(chunk)) as Record<string, unknown>);
      cb();
    },
  });
  const sleeps: number[] = [];
  let fetches = 0;
  const runtime = new AgentRuntime<Gen>({
    config,
    logger: pino({ level: 'debug' }, sink),
    store: opts.store,
    resolveIdentity: async () => ({ externalId: 'aa:bb:cc:dd:ee:ff', source: 'interface' }),
    readExternalKey: async () => 'ext-key-secret',
    fetchConfig: async () => {
      fetches++;
      return opts.fetch();
    },
    planSession: (d) => ({
      statusTopic: `m/${d.domainId}/c/${d.channels[0]?.id}/status`,
      subscriptions: d.channels.map((c) => ({ channelId: c.id, filter: `m/${d.domainId}/c/${c.id}/#` })),
    }),
    sameConfig: (a, b) => JSON.stringify(a) === JSON.stringify(b),
    createSession: (gen, plan) => opts.broker.session(gen, plan),
    parseTopic: () => undefined,
    notifier: { ready() {}, status() {}, stopping() {} },
    messageHandler: { handle() {} },
    random: () => 0.5,
    sleep: async (ms, signal) => {
      sleeps.push(ms);
      await new Promise((r) => setImmediate(r));
      if (signal.aborted) throw new Error('aborted');
    },
  });
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
