/**
 * The device's presence on its status topic: a retained "online" after connecting, a retained
 * "offline" on a clean stop, and the same "offline" as the Will so the broker publishes it when the
 * device vanishes without saying goodbye. Retained so a dashboard that subscribes later still sees it.
 */
export const STATUS_ONLINE = 'online';
export const STATUS_OFFLINE = 'offline';

export type StatusPayload = typeof STATUS_ONLINE | typeof STATUS_OFFLINE;

export interface StatusMessage {
  topic: string;
  payload: StatusPayload;
  /** QoS 1: the broker must confirm it, or the stop sequence cannot know it arrived. */
  qos: 1;
  retain: true;
}

export function statusMessage(topic: string, payload: StatusPayload): StatusMessage {
  return { topic, payload, qos: 1, retain: true };
}

export function onlineStatus(topic: string): StatusMessage {
  return statusMessage(topic, STATUS_ONLINE);
}

export function offlineStatus(topic: string): StatusMessage {
  return statusMessage(topic, STATUS_OFFLINE);
}

/** The Last Will for MqttSession: what the broker publishes if the connection dies uncleanly. */
export function statusWill(topic: string): StatusMessage {
  return offlineStatus(topic);
}
