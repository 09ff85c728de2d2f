/*
 * The request/response format of upstream Magistrala's agent (absmach/agent, pkg/conn), so existing
 * tooling can talk to this one. Pure functions, no I/O.
 *
 *   request  on <channel>/req:  [{"bn":"<request id>:", "n":"<command>", "vs":"<argument>"},
 *                                {"n":"token", "vs":"<command secret>"}]            (token optional)
 *   response on <channel>/res:  [{"bn":"<request id>", "n":"<command>", "t":<unix seconds>, "vs":"<result>"}]
 *
 * Upstream takes the command from the first record's `n`, the request ID from its `bn` minus the
 * trailing ":", the argument from its `vs`, and the secret from any record named "token".
 */

export interface ControlRequest {
  id: string;
  command: string;
  /** The first record's `vs` ("" when absent), e.g. "view" for `config`. */
  args: string;
  /** The `vs` of a record named "token", when present. A secret: never logged or echoed. */
  token?: string;
}

export type ParsedRequest =
  | { ok: true; request: ControlRequest }
  /** `id` and `command` are set when they could be recovered, so the error can be answered. */
  | { ok: false; reason: string; id?: string; command?: string };

/** Larger requests are not parsed at all: no command of ours needs more. */
export const MAX_REQUEST_BYTES = 4096;
const MAX_ID_LENGTH = 128;
const MAX_COMMAND_LENGTH = 64;
const MAX_ARGS_LENGTH = 1024;
// Printable ASCII only: the ID and the command are echoed in answers and log lines.
const SAFE_TEXT = /^[\x20-\x7e]+$/;

function requestId(bn: unknown): string | undefined {
  if (typeof bn !== 'string') return undefined;
  const id = bn.endsWith(':') ? bn.slice(0, -1) : bn;
  if (id.length === 0 || id.length > MAX_ID_LENGTH || !SAFE_TEXT.test(id)) return undefined;
  return id;
}

export function parseControlRequest(payload: Buffer): ParsedRequest {
  if (payload.length > MAX_REQUEST_BYTES) return { ok: false, reason: `request is ${payload.length} bytes; the limit is ${MAX_REQUEST_BYTES}` };
  let json: unknown;
  try {
    json = JSON.parse(payload.toString('utf8'));
  } catch {
    return { ok: false, reason: 'request is not JSON' };
  }
  if (!Array.isArray(json) || json.length === 0) return { ok: false, reason: 'request is not a SenML pack (a non-empty JSON array of records)' };
  const records = json as unknown[];
  const first = records[0];
  if (first === null || typeof first !== 'object' || Array.isArray(first)) return { ok: false, reason: 'the first SenML record is not an object' };
  const head = first as Record<string, unknown>;
  const id = requestId(head['bn']);
  if (id === undefined) return { ok: false, reason: `the first record needs "bn": "<request id>:" (1-${MAX_ID_LENGTH} printable characters)` };
  const name = head['n'];
  if (typeof name !== 'string' || name.length === 0 || name.length > MAX_COMMAND_LENGTH || !SAFE_TEXT.test(name)) {
    return { ok: false, id, reason: 'the first record needs "n": "<command>"' };
  }
  const vs = head['vs'];
  if (vs !== undefined && (typeof vs !== 'string' || vs.length > MAX_ARGS_LENGTH)) {
    return { ok: false, id, command: name, reason: `"vs" must be a string of at most ${MAX_ARGS_LENGTH} characters` };
  }
  const tokenRecord = records.find(
    (r): r is Record<string, unknown> => r !== null && typeof r === 'object' && (r as Record<string, unknown>)['n'] === 'token',
  );
  const token = tokenRecord?.['vs'];
  return {
    ok: true,
    request: { id, command: name, args: typeof vs === 'string' ? vs.trim() : '', ...(typeof token === 'string' ? { token } : {}) },
  };
}

/** One SenML record answering request `id`; `value` is the result text (JSON for structured answers). */
export function encodeControlResponse(id: string, command: string, value: string, nowMs: number): string {
  return JSON.stringify([{ bn: id, n: command, t: nowMs / 1000, vs: value }]);
}

/** Error answers are ordinary answers whose value starts with "error: " (upstream sends the error text as vs). */
export function errorValue(reason: string): string {
  return `error: ${reason}`;
}

/** The answer topic for a request topic: the trailing "req" level becomes "res". */
export function responseTopicFor(requestTopic: string): string {
  return requestTopic.replace(/\/req$/, '/res');
}
