import { getGlobalDispatcher } from 'undici';
import { AgentError } from '../errors/agent-error.js';

/**
 * The operator's side of Bootstrap (spec section 6): create a device's bootstrap config, connect it
 * to its channels, look it up, remove it. Talks to a real Magistrala or to the dev stack alike.
 */
export interface ManagementClientOptions {
  /** Base URL of the Bootstrap service, e.g. http://localhost:9013. */
  baseUrl: string;
  /** The operator's user access token (Bearer). A secret: never logged. */
  userToken: string;
  domainId: string;
  timeoutMs?: number;
}

export interface NewBootstrapConfig {
  externalId: string;
  externalKey: string;
  name?: string;
  /** Existing client; when empty the server creates one and returns its ID in Location. */
  clientId?: string;
  channels?: string[];
  content?: string;
  clientCert?: string;
  clientKey?: string;
  caCert?: string;
}

export class ManagementClient {
  private readonly base: string;

  constructor(private readonly options: ManagementClientOptions) {
    this.base = options.baseUrl.replace(/\/+$/, '');
  }

  private async call(method: 'GET' | 'POST' | 'PUT' | 'DELETE', path: string, body?: unknown) {
    const url = `${this.base}/${encodeURIComponent(this.options.domainId)}${path}`;
    let res;
    try {
      const target = new URL(url);
      res = await getGlobalDispatcher().request({
        origin: target.origin,
        path: `${target.pathname}${target.search}`,
        method,
        headers: {
          authorization: `Bearer ${this.options.userToken}`,
          ...(body === undefined ? {} : { 'content-type': 'application/json' }),
        },
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
        headersTimeout: this.options.timeoutMs ?? 15_000,
        bodyTimeout: this.options.timeoutMs ?? 15_000,
      });
    } catch (err) {
      throw new AgentError('BOOTSTRAP_NETWORK', `${method} ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, {
        details: { path },
      });
    }
    const text = await res.body.text();
    if (res.statusCode >= 400) {
      let message = text.slice(0, 200);
      try {
        const parsed = JSON.parse(text) as { message?: string; error?: string };
        message = parsed.message ?? parsed.error ?? message;
      } catch {
        /* not JSON: keep the text */
      }
      throw new AgentError('BOOTSTRAP_UNEXPECTED_STATUS', `${method} ${path} answered ${res.statusCode}: ${message}`, {
        details: { status: res.statusCode, path },
      });
    }
    return { status: res.statusCode, headers: res.headers, text };
  }

  /** Creates the config; returns the client ID (from the request, or the server's Location header). */
  async createConfig(config: NewBootstrapConfig): Promise<{ clientId: string }> {
    const res = await this.call('POST', '/clients/configs', {
      external_id: config.externalId,
      external_key: config.externalKey,
      ...(config.clientId ? { client_id: config.clientId } : {}),
      ...(config.name ? { name: config.name } : {}),
      channels: config.channels ?? [],
      ...(config.content !== undefined ? { content: config.content } : {}),
      ...(config.clientCert ? { client_cert: config.clientCert } : {}),
      ...(config.clientKey ? { client_key: config.clientKey } : {}),
      ...(config.caCert ? { ca_cert: config.caCert } : {}),
    });
    const location = String(res.headers['location'] ?? '');
    const clientId = config.clientId || location.split('/').filter(Boolean).pop();
    if (!clientId) throw new AgentError('BOOTSTRAP_RESPONSE_INVALID', 'the server created the config but returned no client ID in Location');
    return { clientId };
  }

  /** state 1 connects the client to its config's channels; 0 disconnects it. */
  async setState(clientId: string, state: 0 | 1): Promise<void> {
    await this.call('PUT', `/clients/state/${encodeURIComponent(clientId)}`, { state });
  }

  async viewConfig(clientId: string): Promise<Record<string, unknown>> {
    const res = await this.call('GET', `/clients/configs/${encodeURIComponent(clientId)}`);
    return JSON.parse(res.text) as Record<string, unknown>;
  }

  async updateContent(clientId: string, update: { name?: string; content?: string }): Promise<void> {
    await this.call('PUT', `/clients/configs/${encodeURIComponent(clientId)}`, update);
  }

  async removeConfig(clientId: string): Promise<void> {
    await this.call('DELETE', `/clients/configs/${encodeURIComponent(clientId)}`);
  }
}
