import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';

/**
 * A scripted MQTT "broker" on 127.0.0.1 that speaks just enough MQTT 3.1.1 / 5 by hand to answer
 * CONNECT, SUBSCRIBE, PUBLISH and PINGREQ with chosen codes. aedes only speaks 3.1.1, so this is how
 * the tests drive MQTT.js through MQTT 5 refusals exactly as bytes on the wire, and read back the
 * CONNECT the client really sent.
 */

export interface ParsedConnect {
  protocolLevel: number;
  cleanStart: boolean;
  keepalive: number;
  /** MQTT 5 CONNECT property 0x11. */
  sessionExpiryInterval?: number;
  clientId: string;
  will?: { topic: string; payload: string; qos: number; retain: boolean };
  username?: string;
  password?: string;
}

export interface FakeBrokerScript {
  /** CONNACK return code (3.1.1) or reason code (5) for each CONNECT; undefined: never answer. */
  connackCode?: number | undefined;
  sessionPresent?: boolean;
  /** SUBACK codes for a SUBSCRIBE's filters; default: grant QoS 1 to each. */
  subackCodes?: (filters: string[]) => number[];
  /** PUBACK reason code (MQTT 5) for a QoS 1 PUBLISH; default 0. */
  pubackCode?: (topic: string) => number;
  /** Answer PINGREQ (default true). */
  answerPings?: boolean;
  /** Answer QoS 1 PUBLISH with PUBACK (default true). */
  ackPublishes?: boolean;
}

export interface FakeBroker {
  port: number;
  url: string;
  connects: ParsedConnect[];
  published: { topic: string; payload: string; qos: number; retain: boolean }[];
  /** Sends an MQTT 5 DISCONNECT with this reason code on every open connection, then closes them. */
  disconnectAll(reasonCode: number): void;
  /** Resolves once a connection was accepted and none is open any more (the client left nothing behind). */
  allSocketsClosed(): Promise<void>;
  close(): Promise<void>;
}

class Reader {
  offset = 0;
  constructor(private readonly buf: Buffer) {}
  byte(): number {
    const value = this.buf.readUInt8(this.offset);
    this.offset += 1;
    return value;
  }
  u16(): number {
    const value = this.buf.readUInt16BE(this.offset);
    this.offset += 2;
    return value;
  }
  u32(): number {
    const value = this.buf.readUInt32BE(this.offset);
    this.offset += 4;
    return value;
  }
  varInt(): number {
    let value = 0;
    for (let shift = 0; ; shift += 7) {
      const b = this.byte();
      value += (b & 0x7f) * 2 ** shift;
      if ((b & 0x80) === 0) return value;
    }
  }
  bytes(n: number): Buffer {
    const value = this.buf.subarray(this.offset, this.offset + n);
    this.offset += n;
    return value;
  }
  binary(): Buffer {
    return this.bytes(this.u16());
  }
  string(): string {
    return this.binary().toString('utf8');
  }
  get done(): boolean {
    return this.offset >= this.buf.length;
  }
}

const BYTE_PROPS = new Set([0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2a]);
const U16_PROPS = new Set([0x13, 0x21, 0x22, 0x23]);
const U32_PROPS = new Set([0x02, 0x11, 0x18, 0x27]);
const STRING_PROPS = new Set([0x03, 0x08, 0x12, 0x15, 0x1a, 0x1c, 0x1f]);
const BINARY_PROPS = new Set([0x09, 0x16]);

/** Reads an MQTT 5 property block into id → numeric value (strings and pairs are skipped). */
function readProperties(r: Reader): Map<number, number> {
  const length = r.varInt();
  const end = r.offset + length;
  const props = new Map<number, number>();
  while (r.offset < end) {
    const id = r.varInt();
    if (BYTE_PROPS.has(id)) props.set(id, r.byte());
    else if (U16_PROPS.has(id)) props.set(id, r.u16());
    else if (U32_PROPS.has(id)) props.set(id, r.u32());
    else if (id === 0x0b) props.set(id, r.varInt());
    else if (STRING_PROPS.has(id) || BINARY_PROPS.has(id)) r.binary();
    else if (id === 0x26) {
      r.string();
      r.string();
    } else throw new Error(`unknown MQTT 5 property 0x${id.toString(16)}`);
  }
  return props;
}

function parseConnect(body: Buffer): ParsedConnect {
  const r = new Reader(body);
  r.string(); // "MQTT"
  const protocolLevel = r.byte();
  const flags = r.byte();
  const keepalive = r.u16();
  const v5 = protocolLevel === 5;
  const props = v5 ? readProperties(r) : new Map<number, number>();
  const parsed: ParsedConnect = { protocolLevel, cleanStart: (flags & 0x02) !== 0, keepalive, clientId: r.string() };
  const expiry = props.get(0x11);
  if (expiry !== undefined) parsed.sessionExpiryInterval = expiry;
  if (flags & 0x04) {
    if (v5) readProperties(r);
    const topic = r.string();
    const payload = r.binary().toString('utf8');
    parsed.will = { topic, payload, qos: (flags >> 3) & 0x03, retain: (flags & 0x20) !== 0 };
  }
  if (flags & 0x80) parsed.username = r.string();
  if (flags & 0x40) parsed.password = r.binary().toString('utf8');
  return parsed;
}

function encodeVarInt(n: number): number[] {
  const out: number[] = [];
  do {
    let b = n % 128;
    n = Math.floor(n / 128);
    if (n > 0) b |= 0x80;
    out.push(b);
  } while (n > 0);
  return out;
}

function packet(firstByte: number, body: number[]): Buffer {
  return Buffer.from([firstByte, ...encodeVarInt(body.length), ...body]);
}

export async function startFakeBroker(script: FakeBrokerScript): Promise<FakeBroker> {
  const connects: ParsedConnect[] = [];
  const published: FakeBroker['published'] = [];
  const sockets = new Set<Socket>();
  const closeWaiters: (() => void)[] = [];
  let accepted = 0;

  const server: Server = createServer((socket) => {
    sockets.add(socket);
    accepted += 1;
    let v5 = false;
    let pending = Buffer.alloc(0);
    socket.on('error', () => undefined);
    socket.on('close', () => {
      sockets.delete(socket);
      if (sockets.size === 0) for (const wake of closeWaiters.splice(0)) wake();
    });
    socket.on('data', (chunk) => {
      pending = Buffer.concat([pending, chunk]);
      for (;;) {
        if (pending.length < 2) return;
        const r = new Reader(pending);
        const first = r.byte();
        let length: number;
        try {
          length = r.varInt();
        } catch {
          return; // length bytes not complete yet
        }
        if (pending.length < r.offset + length) return;
        const body = pending.subarray(r.offset, r.offset + length);
        pending = pending.subarray(r.offset + length);
        handle(first, body);
      }
    });

    const handle = (first: number, body: Buffer): void => {
      const type = first >> 4;
      if (type === 1) {
        const connect = parseConnect(body);
        connects.push(connect);
        v5 = connect.protocolLevel === 5;
        if (script.connackCode === undefined) return;
        const ack = [script.sessionPresent ? 1 : 0, script.connackCode];
        socket.write(packet(0x20, v5 ? [...ack, 0] : ack));
      } else if (type === 8) {
        const r = new Reader(body);
        const id = r.u16();
        if (v5) readProperties(r);
        const filters: string[] = [];
        while (!r.done) {
          filters.push(r.string());
          r.byte();
        }
        const codes = script.subackCodes?.(filters) ?? filters.map(() => 1);
        socket.write(packet(0x90, [id >> 8, id & 0xff, ...(v5 ? [0] : []), ...codes]));
      } else if (type === 3) {
        const qos = (first >> 1) & 0x03;
        const r = new Reader(body);
        const topic = r.string();
        const id = qos > 0 ? r.u16() : 0;
        if (v5) readProperties(r);
        published.push({ topic, payload: r.bytes(body.length - r.offset).toString('utf8'), qos, retain: (first & 1) === 1 });
        if (qos === 1 && (script.ackPublishes ?? true)) {
          const code = script.pubackCode?.(topic) ?? 0;
          socket.write(packet(0x40, v5 ? [id >> 8, id & 0xff, code, 0] : [id >> 8, id & 0xff]));
        }
      } else if (type === 12) {
        if (script.answerPings ?? true) socket.write(packet(0xd0, []));
      } else if (type === 14) {
        socket.end();
      }
    };
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;

  return {
    port,
    url: `mqtt://127.0.0.1:${port}`,
    connects,
    published,
    disconnectAll: (reasonCode) => {
      for (const socket of sockets) socket.end(packet(0xe0, [reasonCode, 0]));
    },
    allSocketsClosed: () =>
      new Promise<void>((resolve) => {
        if (accepted > 0 && sockets.size === 0) return resolve();
        closeWaiters.push(resolve);
      }),
    close: async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
