import { AgentError, type ErrorCode } from '../errors/agent-error.js';

/**
 * Turns whatever MQTT.js 5.16 reports into an AgentError with a stable code, so the agent's retry
 * policy can tell "the broker does not accept these credentials" (re-bootstrap) from "the network is
 * down" (back off and retry) from "the certificate or the clock is wrong" (operator).
 *
 * How MQTT.js reports things (read from node_modules/mqtt/build/lib, checked in the tests):
 * - refused CONNACK: ErrorWithReasonCode, message "Connection refused: <reason>", numeric `code` =
 *   the 3.1.1 return code (1..5) or the v5 reason code (>= 0x80);
 * - socket errors: the Node error itself with its string `code` (ECONNREFUSED, ENOTFOUND, ...);
 * - TLS failures: the Node/OpenSSL error (UNABLE_TO_VERIFY_LEAF_SIGNATURE, CERT_HAS_EXPIRED,
 *   ERR_SSL_...), or Error("TLS not authorized");
 * - no CONNACK in time: Error("connack timeout") without a code; no PINGRESP: Error("Keepalive timeout");
 * - socket closed before CONNACK without an error: only a 'close' event (see closedBeforeConnackError);
 * - v5 PUBACK failure: ErrorWithReasonCode "Publish error: <reason>" through the publish callback;
 * - a SUBACK failure code: ErrorWithSubackPacket "Subscribe error: <reason>" without a numeric code
 *   but with the SUBACK as `packet` (which is what MqttSession reads).
 */

export type Details = Record<string, string | number | boolean | undefined>;

const V311_RETURN_CODES: Record<number, string> = {
  1: 'unacceptable protocol version',
  2: 'identifier rejected',
  3: 'server unavailable',
  4: 'bad username or password',
  5: 'not authorized',
};

const V5_REASON_CODES: Record<number, string> = {
  0x80: 'unspecified error',
  0x81: 'malformed packet',
  0x82: 'protocol error',
  0x83: 'implementation specific error',
  0x84: 'unsupported protocol version',
  0x85: 'client identifier not valid',
  0x86: 'bad user name or password',
  0x87: 'not authorized',
  0x88: 'server unavailable',
  0x89: 'server busy',
  0x8a: 'banned',
  0x8b: 'server shutting down',
  0x8c: 'bad authentication method',
  0x8d: 'keep alive timeout',
  0x8e: 'session taken over',
  0x8f: 'topic filter invalid',
  0x90: 'topic name invalid',
  0x93: 'receive maximum exceeded',
  0x95: 'packet too large',
  0x96: 'message rate too high',
  0x97: 'quota exceeded',
  0x98: 'administrative action',
  0x99: 'payload format invalid',
  0x9a: 'retain not supported',
  0x9b: 'QoS not supported',
  0x9c: 'use another server',
  0x9d: 'server moved',
  0x9e: 'shared subscriptions not supported',
  0x9f: 'connection rate exceeded',
  0xa0: 'maximum connect time',
  0xa1: 'subscription identifiers not supported',
  0xa2: 'wildcard subscriptions not supported',
};

/** 3.1.1 return codes 4/5 and v5 reason codes 0x86/0x87: the broker does not accept these credentials. */
const AUTH_REFUSAL_CODES = new Set([4, 5, 0x86, 0x87]);

const NETWORK_ERROR_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ECONNABORTED',
  'EHOSTUNREACH',
  'EHOSTDOWN',
  'ENETUNREACH',
  'ENETDOWN',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EAI_FAIL',
  'EPIPE',
  'ETIMEDOUT',
  'EADDRNOTAVAIL',
]);

const TLS_CLOCK_ERROR_CODES = new Set(['CERT_NOT_YET_VALID', 'CERT_HAS_EXPIRED']);

/** OpenSSL verification results as Node reports them (besides the ERR_SSL_/ERR_TLS_/ERR_OSSL_ families). */
const TLS_VERIFY_ERROR_CODES = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'UNABLE_TO_DECRYPT_CERT_SIGNATURE',
  'UNABLE_TO_DECODE_ISSUER_PUBLIC_KEY',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'CERT_SIGNATURE_FAILURE',
  'CERT_UNTRUSTED',
  'CERT_REJECTED',
  'CERT_REVOKED',
  'CERT_CHAIN_TOO_LONG',
  'INVALID_CA',
  'INVALID_PURPOSE',
  'PATH_LENGTH_EXCEEDED',
  'HOSTNAME_MISMATCH',
  'EPROTO',
]);

export function reasonName(code: number): string {
  return (code < 0x80 ? V311_RETURN_CODES[code] : V5_REASON_CODES[code]) ?? `reason code ${code}`;
}

/** The field name operators know from the spec: 3.1.1 says "return code", MQTT 5 "reason code". */
function codeDetails(code: number): Details {
  return code < 0x80 ? { returnCode: code, reason: reasonName(code) } : { reasonCode: code, reason: reasonName(code) };
}

/** A CONNACK that refused the connection (code > 0), from 3.1.1 or 5. */
export function classifyConnackCode(code: number, details: Details = {}): AgentError {
  const all = { ...details, ...codeDetails(code) };
  if (AUTH_REFUSAL_CODES.has(code)) {
    return new AgentError(
      'MQTT_AUTH_REFUSED',
      `the MQTT broker refused the credentials (${reasonName(code)}): the client ID/secret are wrong or revoked, or the client is not connected to its channels`,
      { details: all },
    );
  }
  return new AgentError('MQTT_CONNECT_REFUSED', `the MQTT broker refused the connection (${reasonName(code)})`, {
    details: all,
  });
}

/** Our own deadline for TCP + TLS + CONNACK ran out. */
export function connectTimeoutError(timeoutMs: number, details: Details = {}): AgentError {
  return new AgentError('MQTT_TIMEOUT', `no CONNACK from the MQTT broker within ${timeoutMs} ms`, {
    details: { ...details, timeoutMs },
  });
}

/**
 * The broker (or something in between) closed the socket before answering CONNECT. With TLS 1.3 this
 * is also how a rejected client certificate looks from the device's side, hence the hint.
 */
export function closedBeforeConnackError(details: Details & { clientCertificate?: boolean } = {}): AgentError {
  const hint = details.clientCertificate
    ? ' (with a TLS client certificate: the broker may have rejected the certificate)'
    : '';
  return new AgentError('MQTT_NETWORK', `the MQTT broker closed the connection before answering CONNECT${hint}`, {
    details,
  });
}

/** The connection ended after a successful CONNACK, with no error telling why. */
export function connectionClosedError(details: Details = {}): AgentError {
  return new AgentError('MQTT_NETWORK', 'the connection to the MQTT broker was closed', { details });
}

/** An MQTT 5 DISCONNECT sent by the broker on an established connection. */
export function classifyServerDisconnect(reasonCode: number, details: Details = {}): AgentError {
  const all = { ...details, reasonCode, reason: reasonName(reasonCode) };
  let code: ErrorCode = 'MQTT_NETWORK';
  if (AUTH_REFUSAL_CODES.has(reasonCode)) code = 'MQTT_AUTH_REFUSED';
  else if ([0x81, 0x82, 0x93, 0x94, 0x95, 0x99, 0x9a, 0x9b].includes(reasonCode)) code = 'MQTT_PROTOCOL';
  return new AgentError(code, `the MQTT broker disconnected the client (${reasonName(reasonCode)})`, {
    details: all,
  });
}

/** Is this SUBACK entry a failure? 3.1.1 only has 0x80; MQTT 5 uses every code from 0x80 up. */
export function isSubackFailure(code: number): boolean {
  return code >= 0x80;
}

function stringCode(error: Error): string | undefined {
  const code = (error as { code?: unknown }).code;
  return typeof code === 'string' ? code : undefined;
}

function numericCode(error: Error): number | undefined {
  const code = (error as { code?: unknown }).code;
  return typeof code === 'number' ? code : undefined;
}

function firstSubackFailure(error: Error): number | undefined {
  const granted = (error as { packet?: { granted?: unknown } }).packet?.granted;
  if (!Array.isArray(granted)) return undefined;
  return granted.find((code): code is number => typeof code === 'number' && isSubackFailure(code));
}

/** Any error MQTT.js emitted or passed to a callback. Never copies the error's text into the message. */
export function classifyMqttError(error: unknown, details: Details = {}): AgentError {
  if (error instanceof AgentError) return error;
  if (!(error instanceof Error)) {
    return new AgentError('MQTT_PROTOCOL', 'unexpected failure value from the MQTT client', { cause: error, details });
  }

  if (error.message.startsWith('Subscribe error')) {
    // The subscribe callback gets an ErrorWithSubackPacket: the code is only in the SUBACK it carries.
    const failure = numericCode(error) ?? firstSubackFailure(error);
    const reason = failure === undefined ? '' : ` (${reasonName(failure)})`;
    return new AgentError('MQTT_SUBSCRIBE_REFUSED', `the MQTT broker refused a subscription${reason}`, {
      cause: error,
      details: failure === undefined ? details : { ...details, ...codeDetails(failure) },
    });
  }

  const reasonCode = numericCode(error);
  if (reasonCode !== undefined) {
    if (error.message.startsWith('Connection refused')) {
      const refused = classifyConnackCode(reasonCode, details);
      return new AgentError(refused.code, refused.message, { cause: error, details: refused.details });
    }
    if (error.message.startsWith('Publish error')) {
      return new AgentError('MQTT_PUBLISH_REFUSED', `the MQTT broker refused the publish (${reasonName(reasonCode)})`, {
        cause: error,
        details: { ...details, ...codeDetails(reasonCode) },
      });
    }
    // Client-side protocol checks (duplicate CONNACK, packet too large, receive maximum...).
    return new AgentError('MQTT_PROTOCOL', `MQTT protocol error (${reasonName(reasonCode)})`, {
      cause: error,
      details: { ...details, ...codeDetails(reasonCode) },
    });
  }

  const code = stringCode(error);
  if (code !== undefined) {
    const withCode = { ...details, errorCode: code };
    if (TLS_CLOCK_ERROR_CODES.has(code)) {
      return new AgentError(
        'MQTT_TLS_CLOCK',
        `the broker certificate is ${code === 'CERT_HAS_EXPIRED' ? 'expired' : 'not yet valid'} by this device's clock (${code}); check the clock (NTP) before the certificate`,
        { cause: error, details: withCode },
      );
    }
    if (TLS_VERIFY_ERROR_CODES.has(code) || /^ERR_(SSL|TLS|OSSL)_/.test(code)) {
      return new AgentError(
        'MQTT_TLS',
        `TLS with the MQTT broker failed (${code}): check the CA certificate, the client certificate and key, and the broker host name`,
        { cause: error, details: withCode },
      );
    }
    // Other errno codes (EBADF, ENETRESET...) and Node's socket/stream failures are network trouble too.
    if (NETWORK_ERROR_CODES.has(code) || /^E[A-Z0-9]+$/.test(code) || /^ERR_(STREAM|SOCKET)_/.test(code)) {
      return new AgentError('MQTT_NETWORK', `cannot talk to the MQTT broker (${code})`, { cause: error, details: withCode });
    }
    return new AgentError('MQTT_PROTOCOL', `MQTT client failure (${code})`, { cause: error, details: withCode });
  }

  switch (error.message) {
    case 'connack timeout':
      return new AgentError('MQTT_TIMEOUT', 'no CONNACK from the MQTT broker in time', { cause: error, details });
    case 'Keepalive timeout':
      return new AgentError('MQTT_TIMEOUT', 'the MQTT broker stopped answering keepalive pings', {
        cause: error,
        details,
      });
    case 'TLS not authorized':
      return new AgentError('MQTT_TLS', 'the MQTT broker certificate is not trusted', { cause: error, details });
    case 'Connection closed':
    case 'client disconnecting':
      return connectionClosedErrorWithCause(error, details);
    default:
      // MQTT.js's packet parser and its other checks report malformed traffic without a code.
      return new AgentError('MQTT_PROTOCOL', 'the MQTT broker sent something the client could not accept', {
        cause: error,
        details,
      });
  }
}

function connectionClosedErrorWithCause(cause: Error, details: Details): AgentError {
  const closed = connectionClosedError(details);
  return new AgentError(closed.code, closed.message, { cause, details: closed.details });
}
