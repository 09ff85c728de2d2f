import type { Registry } from './registry.js';

/**
 * Magistrala's MQTT authorisation as a pure decision: a client may publish or subscribe only on a
 * channel it is connected to, addressed as `m/<domainId>/c/<channelId>[/<subtopic>]` (v0.17+) or
 * the legacy `channels/<channelId>/messages[/<subtopic>]`. Wildcards may appear only in the
 * subtopic; the domain and channel must be literal.
 */

export type TopicDecision =
  | { allowed: true; channelId: string; domainId?: string }
  | { allowed: false; reason: 'malformed-topic' | 'wildcard-channel' | 'unknown-channel' | 'wrong-domain' | 'not-connected' };

export interface ParsedChannelTopic {
  channelId: string;
  /** Present for the m/<domain>/c/<channel> form only. */
  domainId?: string;
}

const hasWildcard = (part: string): boolean => part.includes('+') || part.includes('#');

/** Splits a topic into its domain/channel parts, or says why it is not a channel topic. */
export function parseChannelTopic(topic: string): ParsedChannelTopic | 'malformed-topic' | 'wildcard-channel' {
  const levels = topic.split('/');
  if (levels[0] === 'm' && levels[2] === 'c' && levels.length >= 4) {
    const domainId = levels[1]!;
    const channelId = levels[3]!;
    if (hasWildcard(domainId) || hasWildcard(channelId)) return 'wildcard-channel';
    if (domainId === '' || channelId === '') return 'malformed-topic';
    return { domainId, channelId };
  }
  if (levels[0] === 'channels' && levels.length >= 3) {
    const channelId = levels[1]!;
    if (hasWildcard(channelId) || hasWildcard(levels[2]!)) return 'wildcard-channel';
    if (channelId === '' || levels[2] !== 'messages') return 'malformed-topic';
    return { channelId };
  }
  // `m/+/c/...`, `#`, `m/#` and the like name no single channel.
  if (levels.slice(0, 4).some(hasWildcard)) return 'wildcard-channel';
  return 'malformed-topic';
}

export function authorizeTopic(registry: Registry, clientId: string, topic: string): TopicDecision {
  const parsed = parseChannelTopic(topic);
  if (typeof parsed === 'string') return { allowed: false, reason: parsed };
  const channel = registry.getChannel(parsed.channelId);
  if (channel === undefined) return { allowed: false, reason: 'unknown-channel' };
  if (parsed.domainId !== undefined && parsed.domainId !== channel.domainId) return { allowed: false, reason: 'wrong-domain' };
  if (!registry.isConnected(clientId, parsed.channelId)) return { allowed: false, reason: 'not-connected' };
  return parsed.domainId === undefined
    ? { allowed: true, channelId: parsed.channelId }
    : { allowed: true, channelId: parsed.channelId, domainId: parsed.domainId };
}
