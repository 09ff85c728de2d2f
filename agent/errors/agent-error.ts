/**
 * Every failure the agent can meet carries one of these stable codes. Retry policy, exit codes and
 * log lines branch on the code, never on message text (messages are for people and may change).
 * Messages must never contain a secret: callers pass identifiers and sizes, not values.
 */
export const ErrorCodes = [
  // configuration (exit 78, EX_CONFIG, at start-up)
  'CONFIG_INVALID',
  'CONFIG_FILE_UNREADABLE',
  'ENCRYPT_KEY_INVALID',
  'EXTERNAL_KEY_MISSING',
  'EXTERNAL_KEY_INSECURE_MODE',
  'EXTERNAL_KEY_EMPTY',
  'EXTERNAL_KEY_MALFORMED',
  // identity
  'IDENTITY_NO_USABLE_INTERFACE',
  'IDENTITY_INTERFACE_NOT_FOUND',
  'IDENTITY_INTERFACE_UNUSABLE',
  // bootstrap transport
  'BOOTSTRAP_NETWORK',
  'BOOTSTRAP_TIMEOUT',
  'BOOTSTRAP_TLS',
  'BOOTSTRAP_TLS_CLOCK',
  // bootstrap HTTP status
  'BOOTSTRAP_BAD_REQUEST',
  'BOOTSTRAP_UNAUTHORIZED',
  'BOOTSTRAP_FORBIDDEN',
  'BOOTSTRAP_NOT_FOUND',
  'BOOTSTRAP_CONFIG_DISABLED',
  'BOOTSTRAP_RATE_LIMITED',
  'BOOTSTRAP_SERVER_ERROR',
  'BOOTSTRAP_UNEXPECTED_STATUS',
  // bootstrap response content
  'BOOTSTRAP_RESPONSE_TOO_LARGE',
  'BOOTSTRAP_RESPONSE_UNDECRYPTABLE',
  'BOOTSTRAP_RESPONSE_INVALID',
  'BOOTSTRAP_CONFIG_INCOMPLETE',
  // certificates and disk
  'CERT_INVALID',
  'CERT_KEY_MISMATCH',
  'STORAGE_WRITE_FAILED',
  'STORAGE_CORRUPT',
  'STORAGE_STATE_DIR_IN_USE',
  // MQTT
  'MQTT_NETWORK',
  'MQTT_TIMEOUT',
  'MQTT_TLS',
  'MQTT_TLS_CLOCK',
  'MQTT_AUTH_REFUSED',
  'MQTT_CONNECT_REFUSED',
  'MQTT_SUBSCRIBE_REFUSED',
  'MQTT_PUBLISH_REFUSED',
  'MQTT_PROTOCOL',
  // anything we did not foresee
  'INTERNAL',
  // configuration updates: the operator's onApply command failed, timed out or could not start
  'ON_APPLY_FAILED',
  // remote control: control.secretFile is missing, unreadable, empty or readable by others (exit 78)
  'CONTROL_SECRET_INVALID',
] as const;

export type ErrorCode = (typeof ErrorCodes)[number];

export interface AgentErrorOptions {
  cause?: unknown;
  /** Non-secret facts that help an operator (status code, path, field name, sizes). */
  details?: Record<string, string | number | boolean | undefined>;
  /** Server-requested delay (Retry-After), in milliseconds. */
  retryAfterMs?: number;
}

export class AgentError extends Error {
  readonly code: ErrorCode;
  readonly details: Record<string, string | number | boolean | undefined>;
  readonly retryAfterMs: number | undefined;

  constructor(code: ErrorCode, message: string, options: AgentErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'AgentError';
    this.code = code;
    this.details = options.details ?? {};
    this.retryAfterMs = options.retryAfterMs;
  }

  /**
   * The structured fields of a log line: code and details. The message goes into the line's `msg`
   * (callers write `${error.message}` there), so it is not repeated; the cause's text never is.
   */
  toLog(): { code: ErrorCode } & Record<string, unknown> {
    return { code: this.code, ...this.details };
  }
}

export function isAgentError(value: unknown): value is AgentError {
  return value instanceof AgentError;
}

/** Wraps anything thrown into an AgentError so callers only ever see stable codes. */
export function toAgentError(value: unknown, fallback: ErrorCode = 'INTERNAL'): AgentError {
  if (value instanceof AgentError) return value;
  const message = value instanceof Error ? value.message : String(value);
  return new AgentError(fallback, message, { cause: value });
}
