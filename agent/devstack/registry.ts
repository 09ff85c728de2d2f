import { randomUUID } from 'node:crypto';
import { closeSync, fsyncSync, mkdirSync, openSync, readFileSync, renameSync, rmSync, writeSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { AgentError } from '../errors/agent-error.js';

/**
 * The dev stack's in-memory world, shared by the Bootstrap emulator and the MQTT broker: clients
 * (Magistrala "things"), channels, client↔channel connections and bootstrap configs. Mutations
 * return a Result instead of throwing, so the HTTP layer maps them onto status codes without
 * guessing. With a persistence file, the whole world is written atomically after each change.
 */

export interface ClientRecord {
  id: string;
  /** MQTT password. A secret. */
  secret: string;
  domainId: string;
  name: string;
}

export interface ChannelRecord {
  id: string;
  domainId: string;
  name: string;
  /** Written as-is in v0.20 responses; null is sent as `"metadata":null`, like upstream. */
  metadata: Record<string, unknown> | null;
}

/** 1 = active (client connected to the config's channels), 0 = inactive. */
export type ConfigState = 0 | 1;

export interface BootstrapConfigRecord {
  /** Enrollment ID: the `id` of a v0.30 response. Not the MQTT username. */
  id: string;
  externalId: string;
  /** A secret. */
  externalKey: string;
  clientId: string;
  domainId: string;
  channels: string[];
  content: string;
  name: string;
  clientCert: string;
  /** TLS private key. A secret. */
  clientKey: string;
  caCert: string;
  state: ConfigState;
  /** v0.30 enable/disable: a disabled config fails bootstrap with 500 (v0.20 ignores it). */
  enabled: boolean;
}

export type Failure = { ok: false; reason: 'not_found' | 'conflict' | 'invalid'; message: string };
export type Result<T> = { ok: true; value: T } | Failure;

export type RegistryChange =
  | { kind: 'client-added' | 'client-removed' | 'client-secret-rotated'; clientId: string }
  | { kind: 'channel-added'; channelId: string }
  | { kind: 'connected' | 'disconnected'; clientId: string; channelId: string }
  | { kind: 'config-added' | 'config-updated' | 'config-removed'; clientId: string };

export interface NewClient {
  id?: string;
  secret?: string;
  domainId: string;
  name?: string;
}

export interface NewChannel {
  id?: string;
  domainId: string;
  name?: string;
  metadata?: Record<string, unknown> | null;
}

export interface NewConfig {
  id?: string;
  externalId: string;
  externalKey: string;
  /** Existing client; when absent or empty a client is created with a fresh secret. */
  clientId?: string;
  /** Only used when the client is created here: lets tests reproduce upstream vectors. */
  clientSecret?: string;
  domainId: string;
  /** Channel IDs; channels that do not exist yet are created in the config's domain. */
  channels?: string[];
  content?: string;
  name?: string;
  clientCert?: string;
  clientKey?: string;
  caCert?: string;
  state?: ConfigState;
  enabled?: boolean;
}

export interface CertUpdate {
  clientCert?: string;
  clientKey?: string;
  caCert?: string;
}

interface PersistedWorld {
  format: 'mg-devstack-registry';
  version: 1;
  clients: ClientRecord[];
  channels: ChannelRecord[];
  connections: { clientId: string; channelId: string }[];
  configs: BootstrapConfigRecord[];
}

export interface RegistryOptions {
  /** JSON file loaded at start (if it exists) and rewritten atomically after every change. */
  persistFile?: string;
  /** ID and secret generator; random UUIDs by default. */
  newId?: () => string;
}

const ok = <T>(value: T): Result<T> => ({ ok: true, value });
const fail = (reason: Failure['reason'], message: string): Failure => ({ ok: false, reason, message });
const connectionKey = (clientId: string, channelId: string): string => `${clientId}\u0000${channelId}`;

export class Registry {
  private readonly clientsById = new Map<string, ClientRecord>();
  private readonly channelsById = new Map<string, ChannelRecord>();
  private readonly connectionSet = new Map<string, { clientId: string; channelId: string }>();
  /** Keyed by client ID: upstream keeps one config per client. */
  private readonly configsByClient = new Map<string, BootstrapConfigRecord>();
  private readonly listeners = new Set<(change: RegistryChange) => void>();
  private readonly persistFile: string | undefined;
  private readonly newId: () => string;

  constructor(options: RegistryOptions = {}) {
    this.persistFile = options.persistFile;
    this.newId = options.newId ?? randomUUID;
    if (this.persistFile !== undefined) this.load(this.persistFile);
  }

  // ---- observation -------------------------------------------------------------------------

  /** Registers a listener for every change; returns the function that removes it. */
  onChange(listener: (change: RegistryChange) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  // ---- clients -----------------------------------------------------------------------------

  getClient(id: string): ClientRecord | undefined {
    const client = this.clientsById.get(id);
    return client === undefined ? undefined : { ...client };
  }

  listClients(): ClientRecord[] {
    return [...this.clientsById.values()].map((c) => ({ ...c }));
  }

  addClient(input: NewClient): Result<ClientRecord> {
    const id = input.id === undefined || input.id === '' ? this.newId() : input.id;
    if (this.clientsById.has(id)) return fail('conflict', `client ${id} already exists`);
    if (input.domainId === '') return fail('invalid', 'domain ID is empty');
    const client: ClientRecord = { id, secret: input.secret ?? this.newId(), domainId: input.domainId, name: input.name ?? '' };
    this.clientsById.set(id, client);
    this.commit([{ kind: 'client-added', clientId: id }]);
    return ok({ ...client });
  }

  /** Checks MQTT credentials: true only for a known client ID with exactly this secret. */
  authenticate(clientId: string, secret: string): boolean {
    const client = this.clientsById.get(clientId);
    return client !== undefined && client.secret.length > 0 && client.secret === secret;
  }

  /** Replaces the client's secret (a fresh random one unless given) and returns the new record. */
  rotateClientSecret(clientId: string, newSecret?: string): Result<ClientRecord> {
    const client = this.clientsById.get(clientId);
    if (client === undefined) return fail('not_found', `client ${clientId} not found`);
    client.secret = newSecret ?? this.newId();
    this.commit([{ kind: 'client-secret-rotated', clientId }]);
    return ok({ ...client });
  }

  /** Removes the client, its connections and its bootstrap config (upstream removes both together). */
  removeClient(clientId: string): Result<void> {
    if (!this.clientsById.has(clientId)) return fail('not_found', `client ${clientId} not found`);
    const changes: RegistryChange[] = [];
    for (const [key, conn] of this.connectionSet) {
      if (conn.clientId === clientId) {
        this.connectionSet.delete(key);
        changes.push({ kind: 'disconnected', clientId, channelId: conn.channelId });
      }
    }
    if (this.configsByClient.delete(clientId)) changes.push({ kind: 'config-removed', clientId });
    this.clientsById.delete(clientId);
    changes.push({ kind: 'client-removed', clientId });
    this.commit(changes);
    return ok(undefined);
  }

  // ---- channels ----------------------------------------------------------------------------

  getChannel(id: string): ChannelRecord | undefined {
    const channel = this.channelsById.get(id);
    return channel === undefined ? undefined : { ...channel };
  }

  listChannels(): ChannelRecord[] {
    return [...this.channelsById.values()].map((c) => ({ ...c }));
  }

  addChannel(input: NewChannel): Result<ChannelRecord> {
    const id = input.id === undefined || input.id === '' ? this.newId() : input.id;
    if (this.channelsById.has(id)) return fail('conflict', `channel ${id} already exists`);
    if (input.domainId === '') return fail('invalid', 'domain ID is empty');
    const channel: ChannelRecord = { id, domainId: input.domainId, name: input.name ?? '', metadata: input.metadata ?? null };
    this.channelsById.set(id, channel);
    this.commit([{ kind: 'channel-added', channelId: id }]);
    return ok({ ...channel });
  }

  // ---- connections -------------------------------------------------------------------------

  isConnected(clientId: string, channelId: string): boolean {
    return this.connectionSet.has(connectionKey(clientId, channelId));
  }

  connectionsOf(clientId: string): string[] {
    return [...this.connectionSet.values()].filter((c) => c.clientId === clientId).map((c) => c.channelId);
  }

  connect(clientId: string, channelId: string): Result<void> {
    const client = this.clientsById.get(clientId);
    const channel = this.channelsById.get(channelId);
    if (client === undefined) return fail('not_found', `client ${clientId} not found`);
    if (channel === undefined) return fail('not_found', `channel ${channelId} not found`);
    if (client.domainId !== channel.domainId) return fail('invalid', 'client and channel are in different domains');
    const key = connectionKey(clientId, channelId);
    if (this.connectionSet.has(key)) return ok(undefined);
    this.connectionSet.set(key, { clientId, channelId });
    this.commit([{ kind: 'connected', clientId, channelId }]);
    return ok(undefined);
  }

  disconnect(clientId: string, channelId: string): Result<void> {
    if (!this.connectionSet.delete(connectionKey(clientId, channelId))) return ok(undefined);
    this.commit([{ kind: 'disconnected', clientId, channelId }]);
    return ok(undefined);
  }

  // ---- bootstrap configs -------------------------------------------------------------------

  /** What the device endpoints look up: external IDs are unique across all domains, as upstream. */
  findConfigByExternalId(externalId: string): BootstrapConfigRecord | undefined {
    for (const config of this.configsByClient.values()) {
      if (config.externalId === externalId) return cloneConfig(config);
    }
    return undefined;
  }

  getConfig(domainId: string, clientId: string): BootstrapConfigRecord | undefined {
    const config = this.configsByClient.get(clientId);
    return config === undefined || config.domainId !== domainId ? undefined : cloneConfig(config);
  }

  listConfigs(domainId: string, offset = 0, limit = Number.MAX_SAFE_INTEGER): { total: number; configs: BootstrapConfigRecord[] } {
    const all = [...this.configsByClient.values()].filter((c) => c.domainId === domainId);
    return { total: all.length, configs: all.slice(offset, offset + limit).map(cloneConfig) };
  }

  /**
   * Creates a config like upstream's Add: validates the external credentials, creates the client
   * when none is named, creates missing channels, refuses a duplicate external ID or client.
   * A config created with state 1 connects its client at once.
   */
  addConfig(input: NewConfig): Result<BootstrapConfigRecord> {
    if (input.externalId === '') return fail('invalid', 'external ID is empty');
    if (input.externalKey === '') return fail('invalid', 'external key is empty');
    if (input.domainId === '') return fail('invalid', 'domain ID is empty');
    if (this.findConfigByExternalId(input.externalId) !== undefined) {
      return fail('conflict', `a config with external ID ${input.externalId} already exists`);
    }
    const channelIds = dedupe(input.channels ?? []);
    if (channelIds.some((id) => id === '')) return fail('invalid', 'channel ID is empty');
    for (const id of channelIds) {
      const channel = this.channelsById.get(id);
      if (channel !== undefined && channel.domainId !== input.domainId) {
        return fail('invalid', `channel ${id} belongs to another domain`);
      }
    }

    const changes: RegistryChange[] = [];
    let clientId = input.clientId ?? '';
    if (clientId === '') {
      const client: ClientRecord = {
        id: this.newId(),
        secret: input.clientSecret ?? this.newId(),
        domainId: input.domainId,
        name: input.name ?? '',
      };
      clientId = client.id;
      if (this.clientsById.has(clientId)) return fail('conflict', `client ${clientId} already exists`);
      this.clientsById.set(clientId, client);
      changes.push({ kind: 'client-added', clientId });
    } else {
      const existing = this.clientsById.get(clientId);
      if (existing === undefined) {
        if (input.clientSecret === undefined) return fail('not_found', `client ${clientId} not found`);
        // Creating a named client is only possible through the registry API (tests, fixtures).
        this.clientsById.set(clientId, { id: clientId, secret: input.clientSecret, domainId: input.domainId, name: input.name ?? '' });
        changes.push({ kind: 'client-added', clientId });
      } else if (existing.domainId !== input.domainId) {
        return fail('invalid', `client ${clientId} belongs to another domain`);
      } else if (this.configsByClient.has(clientId)) {
        return fail('conflict', `client ${clientId} already has a bootstrap config`);
      }
    }
    const configId = input.id === undefined || input.id === '' ? this.newId() : input.id;

    for (const id of channelIds) {
      if (!this.channelsById.has(id)) {
        this.channelsById.set(id, { id, domainId: input.domainId, name: '', metadata: null });
        changes.push({ kind: 'channel-added', channelId: id });
      }
    }
    const config: BootstrapConfigRecord = {
      id: configId,
      externalId: input.externalId,
      externalKey: input.externalKey,
      clientId,
      domainId: input.domainId,
      channels: channelIds,
      content: input.content ?? '',
      name: input.name ?? '',
      clientCert: input.clientCert ?? '',
      clientKey: input.clientKey ?? '',
      caCert: input.caCert ?? '',
      state: input.state ?? 0,
      enabled: input.enabled ?? true,
    };
    this.configsByClient.set(clientId, config);
    changes.push({ kind: 'config-added', clientId });
    if (config.state === 1) changes.push(...this.connectAll(clientId, channelIds));
    this.commit(changes);
    return ok(cloneConfig(config));
  }

  updateConfig(domainId: string, clientId: string, update: { name?: string; content?: string }): Result<BootstrapConfigRecord> {
    const config = this.ownedConfig(domainId, clientId);
    if (config === undefined) return fail('not_found', `no config for client ${clientId}`);
    if (update.name !== undefined) config.name = update.name;
    if (update.content !== undefined) config.content = update.content;
    this.commit([{ kind: 'config-updated', clientId }]);
    return ok(cloneConfig(config));
  }

  updateConfigCerts(domainId: string, clientId: string, certs: CertUpdate): Result<BootstrapConfigRecord> {
    const config = this.ownedConfig(domainId, clientId);
    if (config === undefined) return fail('not_found', `no config for client ${clientId}`);
    config.clientCert = certs.clientCert ?? '';
    config.clientKey = certs.clientKey ?? '';
    config.caCert = certs.caCert ?? '';
    this.commit([{ kind: 'config-updated', clientId }]);
    return ok(cloneConfig(config));
  }

  /** Replaces the config's channel list; while active, connections follow the change (upstream UpdateConnections). */
  updateConfigChannels(domainId: string, clientId: string, channels: string[]): Result<BootstrapConfigRecord> {
    const config = this.ownedConfig(domainId, clientId);
    if (config === undefined) return fail('not_found', `no config for client ${clientId}`);
    const wanted = dedupe(channels);
    if (wanted.some((id) => id === '')) return fail('invalid', 'channel ID is empty');
    for (const id of wanted) {
      const channel = this.channelsById.get(id);
      if (channel !== undefined && channel.domainId !== domainId) return fail('invalid', `channel ${id} belongs to another domain`);
    }
    const changes: RegistryChange[] = [];
    for (const id of wanted) {
      if (!this.channelsById.has(id)) {
        this.channelsById.set(id, { id, domainId, name: '', metadata: null });
        changes.push({ kind: 'channel-added', channelId: id });
      }
    }
    if (config.state === 1) {
      const removed = config.channels.filter((id) => !wanted.includes(id));
      changes.push(...this.disconnectAll(clientId, removed));
      changes.push(...this.connectAll(clientId, wanted));
    }
    config.channels = wanted;
    changes.push({ kind: 'config-updated', clientId });
    this.commit(changes);
    return ok(cloneConfig(config));
  }

  /** state 1 connects the client to the config's channels, state 0 disconnects it (upstream ChangeState). */
  setConfigState(domainId: string, clientId: string, state: ConfigState): Result<BootstrapConfigRecord> {
    const config = this.ownedConfig(domainId, clientId);
    if (config === undefined) return fail('not_found', `no config for client ${clientId}`);
    const changes: RegistryChange[] =
      state === 1 ? this.connectAll(clientId, config.channels) : this.disconnectAll(clientId, config.channels);
    config.state = state;
    changes.push({ kind: 'config-updated', clientId });
    this.commit(changes);
    return ok(cloneConfig(config));
  }

  setConfigEnabled(domainId: string, clientId: string, enabled: boolean): Result<BootstrapConfigRecord> {
    const config = this.ownedConfig(domainId, clientId);
    if (config === undefined) return fail('not_found', `no config for client ${clientId}`);
    config.enabled = enabled;
    this.commit([{ kind: 'config-updated', clientId }]);
    return ok(cloneConfig(config));
  }

  /** Removes the config only; the client and its connections stay (upstream Remove). */
  removeConfig(domainId: string, clientId: string): Result<void> {
    if (this.ownedConfig(domainId, clientId) === undefined) return fail('not_found', `no config for client ${clientId}`);
    this.configsByClient.delete(clientId);
    this.commit([{ kind: 'config-removed', clientId }]);
    return ok(undefined);
  }

  // ---- internals ---------------------------------------------------------------------------

  private ownedConfig(domainId: string, clientId: string): BootstrapConfigRecord | undefined {
    const config = this.configsByClient.get(clientId);
    return config !== undefined && config.domainId === domainId ? config : undefined;
  }

  private connectAll(clientId: string, channelIds: readonly string[]): RegistryChange[] {
    const changes: RegistryChange[] = [];
    for (const channelId of channelIds) {
      const key = connectionKey(clientId, channelId);
      if (this.connectionSet.has(key) || !this.channelsById.has(channelId)) continue;
      this.connectionSet.set(key, { clientId, channelId });
      changes.push({ kind: 'connected', clientId, channelId });
    }
    return changes;
  }

  private disconnectAll(clientId: string, channelIds: readonly string[]): RegistryChange[] {
    const changes: RegistryChange[] = [];
    for (const channelId of channelIds) {
      if (this.connectionSet.delete(connectionKey(clientId, channelId))) changes.push({ kind: 'disconnected', clientId, channelId });
    }
    return changes;
  }

  private commit(changes: RegistryChange[]): void {
    if (this.persistFile !== undefined) this.save(this.persistFile);
    for (const change of changes) {
      for (const listener of this.listeners) listener(change);
    }
  }

  private snapshot(): PersistedWorld {
    return {
      format: 'mg-devstack-registry',
      version: 1,
      clients: [...this.clientsById.values()],
      channels: [...this.channelsById.values()],
      connections: [...this.connectionSet.values()],
      configs: [...this.configsByClient.values()],
    };
  }

  /** Write to a temp file, fsync, rename over the old file, fsync the directory: never a torn file. */
  private save(file: string): void {
    const dir = dirname(file);
    const temp = join(dir, `.${basename(file)}.${process.pid}.${randomUUID()}.tmp`);
    try {
      mkdirSync(dir, { recursive: true });
      const fd = openSync(temp, 'wx', 0o600);
      try {
        writeSync(fd, JSON.stringify(this.snapshot(), null, 2) + '\n');
        fsyncSync(fd);
      } finally {
        closeSync(fd);
      }
      renameSync(temp, file);
      const dirFd = openSync(dir, 'r');
      try {
        fsyncSync(dirFd);
      } finally {
        closeSync(dirFd);
      }
    } catch (error) {
      rmSync(temp, { force: true });
      throw new AgentError('STORAGE_WRITE_FAILED', `dev stack registry could not be saved to ${file}`, { cause: error, details: { path: file } });
    }
  }

  private load(file: string): void {
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw new AgentError('STORAGE_CORRUPT', `dev stack registry file ${file} is unreadable`, { cause: error, details: { path: file } });
    }
    let world: PersistedWorld;
    try {
      world = JSON.parse(text) as PersistedWorld;
      if (world.format !== 'mg-devstack-registry' || world.version !== 1) throw new Error('unknown format');
    } catch (error) {
      throw new AgentError('STORAGE_CORRUPT', `dev stack registry file ${file} is not a registry written by this version`, {
        cause: error,
        details: { path: file },
      });
    }
    for (const c of world.clients) this.clientsById.set(c.id, { ...c });
    for (const c of world.channels) this.channelsById.set(c.id, { ...c });
    for (const c of world.connections) this.connectionSet.set(connectionKey(c.clientId, c.channelId), { ...c });
    for (const c of world.configs) this.configsByClient.set(c.clientId, cloneConfig(c));
  }
}

function cloneConfig(config: BootstrapConfigRecord): BootstrapConfigRecord {
  return { ...config, channels: [...config.channels] };
}

function dedupe(ids: readonly string[]): string[] {
  return [...new Set(ids)];
}

export function createRegistry(options: RegistryOptions = {}): Registry {
  return new Registry(options);
}
