import { AgentError } from '../errors/agent-error.js';
import type { DeviceChannel } from '../bootstrap/model.js';

/**
 * Magistrala channel topics (spec section 7):
 *   domain (v0.17+):        m/<domainId>/c/<channelId>[/<subtopic>]
 *   legacy (v0.16, older):  channels/<channelId>/messages[/<subtopic>]
 * Pure functions; every ID is checked so a hostile or broken bootstrap response cannot turn a
 * channel topic into a wildcard or a different channel's topic.
 */
export type TopicScheme = 'domain' | 'legacy';

export interface ParsedChannelTopic {
  /** Only for the domain scheme. */
  domainId?: string;
  channelId: string;
  /** Everything after the channel part, without the leading '/'; absent when there is none. */
  subtopic?: string;
}

// '/' would add a topic level, '+' and '#' are wildcards, NUL is forbidden anywhere in MQTT topics.
const FORBIDDEN_IN_ID = /[/+#\u0000]/;
const FORBIDDEN_IN_SUBTOPIC = /[+#\u0000]/;

/** Throws when an ID (channel or domain) could not be one level of a topic name. */
export function assertTopicId(field: 'channelId' | 'domainId', value: string): void {
  if (value.length === 0 || FORBIDDEN_IN_ID.test(value)) {
    throw new AgentError(
      'BOOTSTRAP_RESPONSE_INVALID',
      `${field} is empty or contains '/', '+', '#' or NUL, so it cannot be used in an MQTT topic`,
      { details: { field, length: value.length } },
    );
  }
}

/** A subtopic may have several levels ("a/b"), but no wildcard, no NUL and no empty level. */
export function assertSubtopic(subtopic: string): void {
  const emptyLevel = subtopic.split('/').some((level) => level.length === 0);
  if (FORBIDDEN_IN_SUBTOPIC.test(subtopic) || emptyLevel) {
    throw new AgentError(
      'CONFIG_INVALID',
      `subtopic "${subtopic}" must not contain '+', '#', NUL or an empty level (leading, trailing or double '/')`,
      { details: { field: 'subtopic' } },
    );
  }
}

function channelBase(scheme: TopicScheme, domainId: string | undefined, channelId: string): string {
  assertTopicId('channelId', channelId);
  if (scheme === 'legacy') return `channels/${channelId}/messages`;
  if (domainId === undefined || domainId.length === 0) {
    throw new AgentError(
      'BOOTSTRAP_CONFIG_INCOMPLETE',
      'the "domain" topic scheme needs a domain ID, and neither the bootstrap content nor the configuration has one: set mqtt.domainId (or mqtt.topicScheme "legacy" for Magistrala v0.16 and older)',
      { details: { field: 'mqtt.domainId' } },
    );
  }
  assertTopicId('domainId', domainId);
  return `m/${domainId}/c/${channelId}`;
}

/** The topic name to publish on for a channel (and optional subtopic). */
export function channelTopic(
  scheme: TopicScheme,
  domainId: string | undefined,
  channelId: string,
  subtopic?: string,
): string {
  const base = channelBase(scheme, domainId, channelId);
  if (subtopic === undefined) return base;
  assertSubtopic(subtopic);
  return `${base}/${subtopic}`;
}

/** The filter matching a channel's topic and every subtopic under it. */
export function channelFilter(scheme: TopicScheme, domainId: string | undefined, channelId: string): string {
  return `${channelBase(scheme, domainId, channelId)}/#`;
}

/** Inverse of channelTopic; undefined for anything that is not a channel topic of this scheme. */
export function parseChannelTopic(scheme: TopicScheme, topic: string): ParsedChannelTopic | undefined {
  const levels = topic.split('/');
  let domainId: string | undefined;
  let channelId: string | undefined;
  let rest: string[];
  if (scheme === 'domain') {
    if (levels[0] !== 'm' || levels[2] !== 'c') return undefined;
    domainId = levels[1];
    channelId = levels[3];
    rest = levels.slice(4);
    if (domainId === undefined || !isUsableId(domainId)) return undefined;
  } else {
    if (levels[0] !== 'channels' || levels[2] !== 'messages') return undefined;
    channelId = levels[1];
    rest = levels.slice(3);
  }
  if (channelId === undefined || !isUsableId(channelId)) return undefined;
  const subtopic = rest.join('/');
  const parsed: ParsedChannelTopic = { channelId };
  if (domainId !== undefined) parsed.domainId = domainId;
  if (subtopic.length > 0) parsed.subtopic = subtopic;
  return parsed;
}

function isUsableId(value: string): boolean {
  return value.length > 0 && !FORBIDDEN_IN_ID.test(value);
}

/**
 * The channel that carries the retained online/offline status: the configured one (matched by ID
 * first, then by name), else the first channel. undefined when there are no channels, or when the
 * configured one is not among them (the caller warns; guessing another channel would publish status
 * where the operator did not ask for it).
 */
export function pickStatusChannel(
  channels: readonly DeviceChannel[],
  statusChannel?: string,
): DeviceChannel | undefined {
  if (statusChannel === undefined) return channels[0];
  return channels.find((c) => c.id === statusChannel) ?? channels.find((c) => c.name === statusChannel);
}
