import { createServer, connect, type Server, type Socket } from 'node:net';

/**
 * A TCP proxy on 127.0.0.1 in front of a real server (the dev Bootstrap service or broker), for the
 * faults a real network and a real broker produce that the servers themselves cannot:
 *
 * - pass: forwards both ways.
 * - down: nothing listens (ECONNREFUSED); open connections are reset.
 * - silent: connections are accepted and open ones kept, but nothing is forwarded either way (a
 *   dead link, a wedged broker): only timeouts and keep-alives notice.
 * - refusing: new MQTT connections get CONNACK 3 "server unavailable" (not an auth refusal); open
 *   ones are reset.
 * `reset()` drops every open connection once (for a flapping link, call it repeatedly).
 */
export type ProxyMode = 'pass' | 'down' | 'silent' | 'refusing';

interface Pair {
  client: Socket;
  upstream: Socket | undefined;
  forwarding: boolean;
}

export class FaultProxy {
  /** Connections accepted while in each mode. */
  readonly accepted: Record<ProxyMode, number> = { pass: 0, down: 0, silent: 0, refusing: 0 };
  private server: Server | undefined;
  private pairs = new Set<Pair>();
  private modeValue: ProxyMode = 'pass';

  private constructor(
    private readonly target: { host: string; port: number },
    readonly port: number,
  ) {}

  static async start(target: { host: string; port: number }): Promise<FaultProxy> {
    const probe = createServer();
    const port = await new Promise<number>((resolve, reject) => {
      probe.once('error', reject);
      probe.listen(0, '127.0.0.1', () => resolve((probe.address() as { port: number }).port));
    });
    await new Promise<void>((resolve) => probe.close(() => resolve()));
    const proxy = new FaultProxy(target, port);
    await proxy.listen();
    return proxy;
  }

  get mode(): ProxyMode {
    return this.modeValue;
  }

  async setMode(mode: ProxyMode): Promise<void> {
    const previous = this.modeValue;
    this.modeValue = mode;
    if (mode === 'down') {
      this.reset();
      await this.unlisten();
      return;
    }
    if (previous === 'down') await this.listen();
    if (mode === 'refusing') this.reset();
    // silent: open connections stop forwarding; pass: new connections forward again (dead ones stay dead).
    for (const pair of this.pairs) if (mode === 'silent') pair.forwarding = false;
  }

  /** Drops every open connection. */
  reset(): void {
    for (const pair of this.pairs) {
      pair.client.destroy();
      pair.upstream?.destroy();
    }
    this.pairs.clear();
  }

  async close(): Promise<void> {
    this.reset();
    await this.unlisten();
  }

  private listen(): Promise<void> {
    const server = createServer((socket) => this.accept(socket));
    this.server = server;
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.port, '127.0.0.1', () => {
        server.off('error', reject);
        resolve();
      });
    });
  }

  private unlisten(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    if (!server) return Promise.resolve();
    return new Promise((resolve) => server.close(() => resolve()));
  }

  private accept(client: Socket): void {
    const mode = this.modeValue;
    this.accepted[mode]++;
    const pair: Pair = { client, upstream: undefined, forwarding: mode === 'pass' };
    this.pairs.add(pair);
    client.on('error', () => undefined);
    client.once('close', () => {
      pair.upstream?.destroy();
      this.pairs.delete(pair);
    });
    if (mode === 'silent') {
      client.on('data', () => undefined); // read and drop
      return;
    }
    if (mode === 'refusing') {
      client.once('data', () => client.end(Buffer.from([0x20, 0x02, 0x00, 0x03])));
      return;
    }
    const upstream = connect(this.target.port, this.target.host);
    pair.upstream = upstream;
    upstream.on('error', () => client.destroy());
    upstream.once('close', () => client.destroy());
    client.on('data', (chunk) => {
      if (pair.forwarding) upstream.write(chunk);
    });
    upstream.on('data', (chunk) => {
      if (pair.forwarding) client.write(chunk);
    });
  }
}
