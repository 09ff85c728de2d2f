import { describe, expect, it } from 'vitest';
import type { DeviceConfig } from '../../agent/bootstrap/model.js';
import { changeKinds, planApply, type SubscriptionPlan } from '../../agent/updates/apply-plan.js';

/* Which change needs what: the least disruptive way to apply a configuration fetched while running. */

function config(overrides: Partial<DeviceConfig> = {}): DeviceConfig {
  return {
    family: 'clients',
    mqtt: { url: 'mqtts://broker.example:8883', username: 'client-1', password: 's1' },
    domainId: 'd1',
    channels: [{ id: 'c1', name: 'commands' }, { id: 'c2', name: 'telemetry' }],
    content: '{"a":1}',
    certs: {},
    ...overrides,
  };
}

/** The session plan the composition root would make: one filter per channel, status on the first. */
function planFor(c: DeviceConfig): SubscriptionPlan {
  return {
    ...(c.channels[0] ? { statusTopic: `m/${c.domainId}/c/${c.channels[0].id}/status` } : {}),
    subscriptions: c.channels.map((ch) => ({ channelId: ch.id, filter: `m/${c.domainId}/c/${ch.id}/#` })),
  };
}

function plan(current: DeviceConfig, next: DeviceConfig) {
  return planApply({ current, next, currentPlan: planFor(current), nextPlan: planFor(next) });
}

describe('planApply', () => {
  it('nothing to do for an identical configuration', () => {
    expect(plan(config(), config())).toEqual({ kind: 'none' });
  });

  it('content only: applied live, no MQTT change', () => {
    expect(plan(config(), config({ content: '{"a":2}' }))).toEqual({ kind: 'live', changes: ['content'], subscribe: [], unsubscribe: [] });
  });

  it('a channel added and one removed: live SUBSCRIBE and UNSUBSCRIBE, the status channel untouched', () => {
    const next = config({ channels: [{ id: 'c1', name: 'commands' }, { id: 'c3' }] });
    expect(plan(config(), next)).toEqual({
      kind: 'live',
      changes: ['channels'],
      subscribe: [{ channelId: 'c3', filter: 'm/d1/c/c3/#' }],
      unsubscribe: [{ channelId: 'c2', filter: 'm/d1/c/c2/#' }],
    });
  });

  it('a renamed channel is a change (onApply learns it) that needs no MQTT work', () => {
    const next = config({ channels: [{ id: 'c1', name: 'commands' }, { id: 'c2', name: 'metrics' }] });
    expect(plan(config(), next)).toEqual({ kind: 'live', changes: ['channels'], subscribe: [], unsubscribe: [] });
  });

  it.each([
    ['credentials', config({ mqtt: { url: 'mqtts://broker.example:8883', username: 'client-1', password: 's2' } }), ['credentials']],
    ['broker', config({ mqtt: { url: 'mqtts://other.example:8883', username: 'client-1', password: 's1' } }), ['broker']],
    ['certificates', config({ certs: { caCert: 'not-a-pem-but-different' } }), ['certificates']],
    ['domain', config({ domainId: 'd2' }), ['domain', 'status topic']],
  ] as const)('%s changed: a new session through the candidate path', (_name, next, reasons) => {
    const result = plan(config(), next);
    expect(result.kind).toBe('reconnect');
    expect(result.kind === 'reconnect' && result.reasons).toEqual(reasons);
  });

  it('the first channel removed moves the status topic: the Will is fixed at CONNECT, so reconnect', () => {
    const result = plan(config(), config({ channels: [{ id: 'c2', name: 'telemetry' }] }));
    expect(result).toEqual({ kind: 'reconnect', changes: ['channels'], reasons: ['status topic'] });
  });

  it('several kinds at once are all reported, and any one needing a session wins', () => {
    const next = config({ content: 'x', mqtt: { url: 'mqtts://broker.example:8883', username: 'client-1', password: 's2' } });
    expect(plan(config(), next)).toEqual({ kind: 'reconnect', changes: ['content', 'credentials'], reasons: ['credentials'] });
  });
});

describe('changeKinds', () => {
  it('the first configuration is "initial"; afterwards, what differs', () => {
    expect(changeKinds(undefined, config())).toEqual(['initial']);
    expect(changeKinds(config(), config({ content: 'y', family: 'profiles' }))).toEqual(['content', 'enrollment']);
    expect(changeKinds(config(), config())).toEqual([]);
  });
});
