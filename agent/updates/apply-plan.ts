import type { DeviceConfig } from '../bootstrap/model.js';
import { diffConfigs, hasChanges, type ConfigDiff } from '../storage/config-diff.js';

/*
 * How to apply a configuration that changed on the server with the least disruption. Pure: the
 * runtime does what the plan says.
 *
 * - content, channel names/metadata, enrollment: write the new generation and promote it; the MQTT
 *   session is untouched.
 * - channels added or removed: the same, plus SUBSCRIBE/UNSUBSCRIBE on the live session.
 * - credentials, certificates, broker, domain, or a status topic that moves (the Will is fixed at
 *   CONNECT): a new session through the candidate path, promoted only when the broker accepts it.
 */

/** What changed, as the onApply command sees it in MG_AGENT_CHANGE. `initial`: the first configuration. */
export type ChangeKind = 'initial' | 'content' | 'channels' | 'credentials' | 'certificates' | 'broker' | 'domain' | 'enrollment';

export interface PlannedSubscription {
  channelId: string;
  filter: string;
}

/** The parts of a session plan the decision looks at (the runtime's SessionPlan has them). */
export interface SubscriptionPlan {
  statusTopic?: string;
  subscriptions: PlannedSubscription[];
}

export type ApplyPlan =
  | { kind: 'none' }
  | { kind: 'live'; changes: ChangeKind[]; subscribe: PlannedSubscription[]; unsubscribe: PlannedSubscription[] }
  | { kind: 'reconnect'; changes: ChangeKind[]; reasons: string[] };

export function changeKindsOf(diff: ConfigDiff): ChangeKind[] {
  const kinds: ChangeKind[] = [];
  if (diff.content) kinds.push('content');
  if (diff.channelsAdded.length + diff.channelsRemoved.length + diff.channelsChanged.length > 0) kinds.push('channels');
  if (diff.credentials) kinds.push('credentials');
  if (diff.certs) kinds.push('certificates');
  if (diff.broker) kinds.push('broker');
  if (diff.domain) kinds.push('domain');
  if (diff.enrollment) kinds.push('enrollment');
  return kinds;
}

/** What a newly promoted generation changed compared with the one before it (none: the first). */
export function changeKinds(before: DeviceConfig | undefined, after: DeviceConfig): ChangeKind[] {
  return before === undefined ? ['initial'] : changeKindsOf(diffConfigs(before, after));
}

export function planApply(input: {
  current: DeviceConfig;
  next: DeviceConfig;
  currentPlan: SubscriptionPlan;
  nextPlan: SubscriptionPlan;
}): ApplyPlan {
  const diff = diffConfigs(input.current, input.next);
  if (!hasChanges(diff)) return { kind: 'none' };
  const changes = changeKindsOf(diff);

  const reasons: string[] = [];
  if (diff.credentials) reasons.push('credentials');
  if (diff.certs) reasons.push('certificates');
  if (diff.broker) reasons.push('broker');
  if (diff.domain) reasons.push('domain');
  if (input.currentPlan.statusTopic !== input.nextPlan.statusTopic) reasons.push('status topic');
  if (reasons.length > 0) return { kind: 'reconnect', changes, reasons };

  const before = new Set(input.currentPlan.subscriptions.map((s) => s.filter));
  const after = new Set(input.nextPlan.subscriptions.map((s) => s.filter));
  return {
    kind: 'live',
    changes,
    subscribe: input.nextPlan.subscriptions.filter((s) => !before.has(s.filter)),
    unsubscribe: input.currentPlan.subscriptions.filter((s) => !after.has(s.filter)),
  };
}
