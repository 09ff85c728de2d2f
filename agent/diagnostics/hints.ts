import type { ErrorCode } from '../errors/agent-error.js';

/**
 * What a support engineer should try next for a failure, by its stable code. One table, used by
 * `doctor`, `bootstrap --once` and `status`, so the advice is the same wherever a code shows up.
 */
const HINTS: Partial<Record<ErrorCode, string>> = {
  CONFIG_INVALID: 'fix the listed keys in the configuration file (see config/agent.example.json)',
  CONFIG_FILE_UNREADABLE: 'check the --config path and that this user can read it',
  ENCRYPT_KEY_INVALID: "the encryption key must be the server's MG_BOOTSTRAP_ENCRYPT_KEY: exactly 16, 24 or 32 bytes, in a 0600 file",
  EXTERNAL_KEY_MISSING: 'put the external key at identity.externalKeyFile (mode 0600), or re-run provision-image.sh',
  EXTERNAL_KEY_INSECURE_MODE: 'restrict the key file to its owner: chmod 600 <file>',
  EXTERNAL_KEY_EMPTY: 'the external key file is empty: write the key the operator created for this device',
  IDENTITY_NO_USABLE_INTERFACE: 'no wired or wireless interface with a real MAC: set identity.externalId or identity.interface',
  IDENTITY_INTERFACE_NOT_FOUND: 'identity.interface names an interface this device does not have: see "mg-device-agent identity"',
  IDENTITY_INTERFACE_UNUSABLE: 'identity.interface has no usable MAC: choose another or set identity.externalId',
  BOOTSTRAP_NETWORK: 'check bootstrap.url, DNS, routing and firewalls, and that the Bootstrap service runs (default port 9013)',
  BOOTSTRAP_TIMEOUT: 'the Bootstrap service did not answer in time: check the network path and the server load (bootstrap.timeoutMs)',
  BOOTSTRAP_TLS:
    "the TLS handshake failed: an untrusted server certificate needs its CA in bootstrap.caFile; a port that speaks plain HTTP (ERR_SSL_WRONG_VERSION_NUMBER) needs an http:// URL or the TLS port",
  BOOTSTRAP_TLS_CLOCK: 'a certificate is not valid at the current time: fix the clock (NTP) first',
  BOOTSTRAP_BAD_REQUEST: 'the server refused the request: check the external ID (see "mg-device-agent identity")',
  BOOTSTRAP_UNAUTHORIZED: 'the server did not accept the Authorization scheme: check bootstrap.family (clients or things)',
  BOOTSTRAP_FORBIDDEN:
    "wrong external key, or in secure mode an encryption key that differs from the server's MG_BOOTSTRAP_ENCRYPT_KEY: compare with the operator's records",
  BOOTSTRAP_NOT_FOUND:
    'the server has no bootstrap config for this external ID: compare "mg-device-agent identity" with the external_id the operator created (exact text, MAC format included)',
  BOOTSTRAP_CONFIG_DISABLED: 'the operator has disabled this bootstrap config: enable it on the server',
  BOOTSTRAP_RATE_LIMITED: 'the server asks to slow down: wait and try again',
  BOOTSTRAP_SERVER_ERROR: 'the Bootstrap service failed: check its logs; the agent keeps its last good configuration',
  BOOTSTRAP_UNEXPECTED_STATUS: 'an unexpected HTTP status: is bootstrap.url really the Bootstrap service (not a proxy or another service)?',
  BOOTSTRAP_RESPONSE_TOO_LARGE: 'the configuration is larger than bootstrap.maxResponseBytes: raise it or shrink the content',
  BOOTSTRAP_RESPONSE_UNDECRYPTABLE: "the encryption key differs from the server's MG_BOOTSTRAP_ENCRYPT_KEY",
  BOOTSTRAP_RESPONSE_INVALID: 'the server sent a configuration the agent cannot use: check the bootstrap config (content, certificates) on the server',
  BOOTSTRAP_CONFIG_INCOMPLETE: 'the configuration lacks a broker URL, credentials or domain: set them in the content, or mqtt.url / mqtt.domainId here',
  CERT_INVALID: 'a certificate or key in the bootstrap config does not parse: re-upload it as PEM',
  CERT_KEY_MISMATCH: 'client_key does not belong to client_cert: upload the matching pair',
  STORAGE_WRITE_FAILED: 'the state directory cannot be written: check free space, a read-only file system and its owner',
  STORAGE_CORRUPT: 'the state directory is damaged: the agent falls back to an older generation or bootstraps again',
  MQTT_NETWORK: 'the broker is unreachable: check the broker URL, DNS, firewalls (1883, or 8883 for TLS)',
  MQTT_TIMEOUT: 'the broker did not answer CONNECT in time: check the network path and the broker',
  MQTT_TLS:
    "the TLS handshake failed: an untrusted broker certificate needs ca_cert in the bootstrap config or mqtt.caFile; a port that speaks plain MQTT (ERR_SSL_WRONG_VERSION_NUMBER) needs an mqtt:// URL or the TLS port",
  MQTT_TLS_CLOCK: 'a certificate is not valid at the current time: fix the clock (NTP) first',
  MQTT_AUTH_REFUSED:
    'the broker refused the client ID and secret (client removed or secret rotated): "mg-device-agent bootstrap --once" fetches the current ones',
  MQTT_CONNECT_REFUSED: 'the broker is unavailable or busy: try again later',
  MQTT_SUBSCRIBE_REFUSED:
    'the client is not connected to this channel: enable the bootstrap config (PUT /{domainId}/clients/state/{clientId} {"state":1}) or connect the client to the channel',
  MQTT_PUBLISH_REFUSED: 'the broker refused a publish: is the client connected to that channel?',
  MQTT_PROTOCOL: 'the broker broke the MQTT protocol: check mqtt.protocolVersion (4 or 5)',
  CONTROL_SECRET_INVALID: 'control.secretFile must exist, be non-empty and be readable by its owner only (chmod 600)',
};

export function hintFor(code: string): string | undefined {
  return (HINTS as Record<string, string | undefined>)[code];
}
