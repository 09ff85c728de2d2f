/**
 * Faults the dev Bootstrap server can inject into device requests, for retry, timeout and
 * corruption tests. A FaultRule is asked once per device request; returning undefined lets the
 * request be answered normally.
 */
export type Fault =
  /** Answer with this status instead (body `{"message": ...}` unless given; headers e.g. Retry-After). */
  | { kind: 'status'; status: number; body?: string; headers?: Record<string, string> }
  /** Read the request and never answer; the socket stays open until the client gives up or the server closes. */
  | { kind: 'hang' }
  /** Destroy the connection without any response bytes. */
  | { kind: 'close' }
  /** 200 with the endpoint's usual content type and a body that is not a valid response (random bytes unless given). */
  | { kind: 'garbage'; body?: string | Buffer }
  /** The real response, headers at once, then the body in chunks of `bytesPerChunk` every `intervalMs`. */
  | { kind: 'trickle'; bytesPerChunk?: number; intervalMs?: number };

export type FaultKind = Fault['kind'];

export interface DeviceRequestInfo {
  method: string;
  /** Raw request path, without the query. */
  path: string;
  secure: boolean;
  /** As the server routes it (see go-path.ts). */
  externalId: string;
}

export type FaultRule = (request: DeviceRequestInfo) => Fault | undefined;

/** A rule that answers the next `count` device requests with `fault`, then lets requests through. */
export function faultNext(count: number, fault: Fault): FaultRule {
  let remaining = count;
  return () => {
    if (remaining <= 0) return undefined;
    remaining -= 1;
    return fault;
  };
}

/** A rule that applies `fault` to every device request until it is replaced or cleared. */
export function faultAlways(fault: Fault): FaultRule {
  return () => fault;
}

/** Validates a fault received as JSON (the /dev/fault endpoint); undefined when it is not one. */
export function parseFault(value: unknown): Fault | undefined {
  if (typeof value !== 'object' || value === null) return undefined;
  const v = value as Record<string, unknown>;
  switch (v['kind']) {
    case 'status': {
      const status = v['status'];
      if (typeof status !== 'number' || !Number.isInteger(status) || status < 100 || status > 599) return undefined;
      const body = v['body'];
      if (body !== undefined && typeof body !== 'string') return undefined;
      const headers = v['headers'];
      if (headers !== undefined) {
        if (typeof headers !== 'object' || headers === null) return undefined;
        if (!Object.values(headers).every((h) => typeof h === 'string')) return undefined;
      }
      return {
        kind: 'status',
        status,
        ...(body === undefined ? {} : { body }),
        ...(headers === undefined ? {} : { headers: headers as Record<string, string> }),
      };
    }
    case 'hang':
      return { kind: 'hang' };
    case 'close':
      return { kind: 'close' };
    case 'garbage': {
      const body = v['body'];
      if (body !== undefined && typeof body !== 'string') return undefined;
      return body === undefined ? { kind: 'garbage' } : { kind: 'garbage', body };
    }
    case 'trickle': {
      const bytesPerChunk = v['bytesPerChunk'];
      const intervalMs = v['intervalMs'];
      const positiveInt = (n: unknown): boolean => n === undefined || (typeof n === 'number' && Number.isInteger(n) && n > 0);
      if (!positiveInt(bytesPerChunk) || !positiveInt(intervalMs)) return undefined;
      return {
        kind: 'trickle',
        ...(bytesPerChunk === undefined ? {} : { bytesPerChunk: bytesPerChunk as number }),
        ...(intervalMs === undefined ? {} : { intervalMs: intervalMs as number }),
      };
    }
    default:
      return undefined;
  }
}
