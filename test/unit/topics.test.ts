import { describe, expect, it } from 'vitest';
import { channelFilter, channelTopic, parseChannelTopic, pickStatusChannel } from '../../agent/mqtt/topics.js';
import { offlineStatus, onlineStatus, statusWill } from '../../agent/mqtt/status.js';
import { thrownAgentError } from '../helpers/agent-errors.js';

const DOMAIN = 'b4d0d5c1-7d7a-4b1e-9a59-0f1a6f0a2c11';
const CHANNEL = '0d8a2bcf-5a40-44f7-a7a5-5e9f2a1f9b01';

describe('channelTopic', () => {
  it('builds the v0.17+ domain topic, with and without a subtopic', () => {
    expect(channelTopic('domain', DOMAIN, CHANNEL)).toBe(`m/${DOMAIN}/c/${CHANNEL}`);
    expect(channelTopic('domain', DOMAIN, CHANNEL, 'status')).toBe(`m/${DOMAIN}/c/${CHANNEL}/status`);
    expect(channelTopic('domain', DOMAIN, CHANNEL, 'commands/reboot')).toBe(`m/${DOMAIN}/c/${CHANNEL}/commands/reboot`);
  });

  it('builds the legacy topic and needs no domain for it', () => {
    expect(channelTopic('legacy', undefined, CHANNEL)).toBe(`channels/${CHANNEL}/messages`);
    expect(channelTopic('legacy', undefined, CHANNEL, 'status')).toBe(`channels/${CHANNEL}/messages/status`);
    // A domain given anyway does not leak into the legacy topic.
    expect(channelTopic('legacy', DOMAIN, CHANNEL)).toBe(`channels/${CHANNEL}/messages`);
  });

  it('refuses the domain scheme without a domain, naming the setting to fix', () => {
    for (const missing of [undefined, '']) {
      const error = thrownAgentError(() => channelTopic('domain', missing, CHANNEL));
      expect(error.code).toBe('BOOTSTRAP_CONFIG_INCOMPLETE');
      expect(error.message).toContain('mqtt.domainId');
    }
  });

  it.each(['a/b', 'a+', '#', 'a\u0000b', ''])('refuses channel ID %j that would change the topic structure', (bad) => {
    const error = thrownAgentError(() => channelTopic('domain', DOMAIN, bad));
    expect(error.code).toBe('BOOTSTRAP_RESPONSE_INVALID');
    expect(error.details['field']).toBe('channelId');
    expect(thrownAgentError(() => channelTopic('legacy', undefined, bad)).code).toBe('BOOTSTRAP_RESPONSE_INVALID');
  });

  it.each(['d/x', 'd+', 'd#', 'd\u0000'])('refuses domain ID %j', (bad) => {
    const error = thrownAgentError(() => channelTopic('domain', bad, CHANNEL));
    expect(error.code).toBe('BOOTSTRAP_RESPONSE_INVALID');
    expect(error.details['field']).toBe('domainId');
  });

  it.each(['a/+', '#', 'a\u0000', '/status', 'status/', 'a//b', ''])('refuses subtopic %j', (bad) => {
    expect(thrownAgentError(() => channelTopic('domain', DOMAIN, CHANNEL, bad)).code).toBe('CONFIG_INVALID');
  });
});

describe('channelFilter', () => {
  it('matches the channel and everything under it', () => {
    expect(channelFilter('domain', DOMAIN, CHANNEL)).toBe(`m/${DOMAIN}/c/${CHANNEL}/#`);
    expect(channelFilter('legacy', undefined, CHANNEL)).toBe(`channels/${CHANNEL}/messages/#`);
  });

  it('validates like channelTopic', () => {
    expect(thrownAgentError(() => channelFilter('domain', undefined, CHANNEL)).code).toBe('BOOTSTRAP_CONFIG_INCOMPLETE');
    expect(thrownAgentError(() => channelFilter('domain', DOMAIN, '+')).code).toBe('BOOTSTRAP_RESPONSE_INVALID');
  });
});

describe('parseChannelTopic', () => {
  it('is the inverse of channelTopic for both schemes', () => {
    for (const subtopic of [undefined, 'status', 'commands/reboot/now']) {
      const domainTopic = channelTopic('domain', DOMAIN, CHANNEL, subtopic);
      expect(parseChannelTopic('domain', domainTopic)).toEqual({
        domainId: DOMAIN,
        channelId: CHANNEL,
        ...(subtopic ? { subtopic } : {}),
      });
      const legacyTopic = channelTopic('legacy', undefined, CHANNEL, subtopic);
      expect(parseChannelTopic('legacy', legacyTopic)).toEqual({ channelId: CHANNEL, ...(subtopic ? { subtopic } : {}) });
    }
  });

  it.each([
    ['domain', `channels/${CHANNEL}/messages`],
    ['legacy', `m/${DOMAIN}/c/${CHANNEL}`],
    ['domain', `m/${DOMAIN}/x/${CHANNEL}`],
    ['domain', `m/${DOMAIN}/c`],
    ['domain', `m/${DOMAIN}/c/`],
    ['domain', `m//c/${CHANNEL}`],
    ['legacy', 'channels//messages'],
    ['legacy', `channels/${CHANNEL}`],
    ['legacy', `channels/${CHANNEL}/other`],
    ['domain', `$SYS/broker/clients`],
    ['domain', ''],
  ] as const)('returns undefined for %s topic %j', (scheme, topic) => {
    expect(parseChannelTopic(scheme, topic)).toBeUndefined();
  });

  it('treats a trailing slash as no subtopic', () => {
    expect(parseChannelTopic('legacy', `channels/${CHANNEL}/messages/`)).toEqual({ channelId: CHANNEL });
  });
});

describe('pickStatusChannel', () => {
  const channels = [
    { id: 'ch-1', name: 'telemetry' },
    { id: 'ch-2', name: 'commands' },
    { id: 'commands', name: 'confusing' },
  ];

  it('defaults to the first channel', () => {
    expect(pickStatusChannel(channels)).toEqual(channels[0]);
  });

  it('finds the configured channel by ID, and an ID wins over a name', () => {
    expect(pickStatusChannel(channels, 'ch-2')?.id).toBe('ch-2');
    expect(pickStatusChannel(channels, 'commands')?.id).toBe('commands');
  });

  it('finds the configured channel by name', () => {
    expect(pickStatusChannel(channels, 'telemetry')?.id).toBe('ch-1');
  });

  it('returns undefined with no channels or when the configured one is absent', () => {
    expect(pickStatusChannel([])).toBeUndefined();
    expect(pickStatusChannel([], 'ch-1')).toBeUndefined();
    expect(pickStatusChannel(channels, 'nope')).toBeUndefined();
  });
});

describe('status messages', () => {
  it('are retained QoS 1 online/offline, and the Will is the offline one', () => {
    const topic = channelTopic('domain', DOMAIN, CHANNEL, 'status');
    expect(onlineStatus(topic)).toEqual({ topic, payload: 'online', qos: 1, retain: true });
    expect(offlineStatus(topic)).toEqual({ topic, payload: 'offline', qos: 1, retain: true });
    expect(statusWill(topic)).toEqual(offlineStatus(topic));
  });
});
