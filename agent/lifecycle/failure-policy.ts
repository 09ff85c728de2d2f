import type { ErrorCode } from '../errors/agent-error.js';

/**
 * One place decides how the agent reacts to a failure, by its stable code:
 * - transient: the network, a busy or broken server, a wrong clock. Retry with backoff, keep the config.
 * - auth: the broker refused the credentials. End the session, re-bootstrap (behind a breaker).
 * - operator: only an operator can fix it (unknown device, wrong key, disabled config). Retry slowly,
 *   keep running on the last good configuration.
 * - invalid: the server answered something unusable. Keep the last good configuration, back off.
 * - fatal: the agent's own configuration is wrong; restarting will not help (exit 78).
 */
export type FailureClass = 'transient' | 'auth' | 'operator' | 'invalid' | 'fatal';

const CLASS_BY_CODE: Record<ErrorCode, FailureClass> = {
  CONFIG_INVALID: 'fatal',
  CONFIG_FILE_UNREADABLE: 'fatal',
  ENCRYPT_KEY_INVALID: 'fatal',
  EXTERNAL_KEY_MISSING: 'fatal',
  EXTERNAL_KEY_INSECURE_MODE: 'fatal',
  EXTERNAL_KEY_EMPTY: 'fatal',
  EXTERNAL_KEY_MALFORMED: 'fatal',
  IDENTITY_NO_USABLE_INTERFACE: 'transient', // interfaces may still be coming up at boot
  IDENTITY_INTERFACE_NOT_FOUND: 'transient',
  IDENTITY_INTERFACE_UNUSABLE: 'fatal',
  BOOTSTRAP_NETWORK: 'transient',
  BOOTSTRAP_TIMEOUT: 'transient',
  BOOTSTRAP_TLS: 'operator',
  BOOTSTRAP_TLS_CLOCK: 'transient',
  BOOTSTRAP_BAD_REQUEST: 'operator',
  BOOTSTRAP_UNAUTHORIZED: 'operator',
  BOOTSTRAP_FORBIDDEN: 'operator',
  BOOTSTRAP_NOT_FOUND: 'operator',
  BOOTSTRAP_CONFIG_DISABLED: 'operator',
  BOOTSTRAP_RATE_LIMITED: 'transient',
  BOOTSTRAP_SERVER_ERROR: 'transient',
  BOOTSTRAP_UNEXPECTED_STATUS: 'transient',
  BOOTSTRAP_RESPONSE_TOO_LARGE: 'invalid',
  BOOTSTRAP_RESPONSE_UNDECRYPTABLE: 'operator', // almost always a key mismatch with the server
  BOOTSTRAP_RESPONSE_INVALID: 'invalid',
  BOOTSTRAP_CONFIG_INCOMPLETE: 'operator',
  CERT_INVALID: 'invalid',
  CERT_KEY_MISMATCH: 'invalid',
  STORAGE_WRITE_FAILED: 'transient', // disk full or read-only: may clear
  STORAGE_CORRUPT: 'invalid',
  STORAGE_STATE_DIR_IN_USE: 'transient', // refused at start-up; systemd retries once the other agent is gone
  MQTT_NETWORK: 'transient',
  MQTT_TIMEOUT: 'transient',
  MQTT_TLS: 'operator',
  MQTT_TLS_CLOCK: 'transient',
  MQTT_AUTH_REFUSED: 'auth',
  MQTT_CONNECT_REFUSED: 'transient',
  MQTT_SUBSCRIBE_REFUSED: 'operator',
  MQTT_PROTOCOL: 'transient',
  MQTT_PUBLISH_REFUSED: 'transient',
  INTERNAL: 'transient',
  ON_APPLY_FAILED: 'operator', // logged, never retried: the change itself is applied
  CONTROL_SECRET_INVALID: 'fatal',
};

export function classifyFailure(code: ErrorCode): FailureClass {
  return CLASS_BY_CODE[code] ?? 'transient';
}

/** Codes that mean the device clock is probably wrong (certificate not yet valid / expired). */
export function isClockProblem(code: ErrorCode): boolean {
  return code === 'BOOTSTRAP_TLS_CLOCK' || code === 'MQTT_TLS_CLOCK';
}
