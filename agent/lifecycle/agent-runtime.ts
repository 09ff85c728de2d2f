import { setTimeout as sleepTimer } from 'node:timers/promises';
import type { Logger } from 'pino';
import type { AgentConfig } from '../config/schema.js';
import type { DeviceConfig } from '../bootstrap/model.js';
import { AgentError, toAgentError, type ErrorCode } from '../errors/agent-error.js';
import { backoffDelay, policyFor, withRetryAfter } from './backoff.js';
import { classifyFailure, isClockProblem, type FailureClass } from './failure-policy.js';
import { SlidingWindowBreaker } from './circuit-breaker.js';
import { STATUS_OFFLINE, STATUS_ONLINE } from '../mqtt/status.js';

/*
 * The agent's main loop: identity → last good configuration or bootstrap → write a candidate →
 * connect → promote → subscribe → online, and back round on failure. Everything it touches comes in
 * through the small ports below, built by the composition root; this file does no I/O of its own
 * except sleeping, and every sleep is cut short by stop().
 */

export interface ResolvedIdentityPort {
  externalId: string;
  source: string;
  interfaceName?: string;
  mac?: string;
}

export interface GenerationPort {
  id: number;
  config: DeviceConfig;
  paths: { content?: string; clientCert?: string; clientKey?: string; caCert?: string };
}

export interface StorePort<G extends GenerationPort> {
  init(): Promise<void>;
  loadCurrent(): Promise<G | undefined>;
  writeCandidate(config: DeviceConfig, meta: { externalId: string; fetchedAt: Date }): Promise<G>;
  promote(gen: G): Promise<void>;
  discard(gen: G): Promise<void>;
  loadIdentity(): Promise<{ externalId: string } | undefined>;
  saveIdentity(identity: { externalId: string; interfaceName?: string; mac?: string; persistedAt: string }): Promise<void>;
}

export interface SubscriptionResult {
  filter: string;
  granted: boolean;
  reasonCode?: number;
}

export interface IncomingMessage {
  topic: string;
  payload: Buffer;
  retain?: boolean;
}

export interface SessionPort {
  connect(): Promise<void>;
  subscribe(filters: string[], qos: 0 | 1): Promise<SubscriptionResult[]>;
  publish(topic: string, payload: string | Buffer, options: { qos: 0 | 1; retain: boolean }): Promise<void>;
  onMessage(listener: (message: IncomingMessage) => void): void;
  onLost(listener: (error: AgentError) => void): void;
  stop(options: { status?: { topic: string; payload: string }; timeoutMs: number }): Promise<void>;
}

/** What the session needs besides the generation: where the retained status and the Will go. */
export interface SessionPlan {
  statusTopic?: string;
  subscriptions: { channelId: string; filter: string }[];
}

export interface NotifierPort {
  ready(status?: string): void;
  status(text: string): void;
  stopping(): void;
}

export interface MessageHandler {
  handle(message: { topic: string; channelId: string; subtopic?: string; payload: Buffer }): void | Promise<void>;
}

export interface AgentRuntimeDeps<G extends GenerationPort> {
  config: AgentConfig;
  logger: Logger;
  store: StorePort<G>;
  resolveIdentity: () => Promise<ResolvedIdentityPort>;
  readExternalKey: () => Promise<string>;
  fetchConfig: (externalId: string, externalKey: string, signal: AbortSignal) => Promise<DeviceConfig>;
  planSession: (config: DeviceConfig) => SessionPlan;
  /** True when two configurations need no change on disk or on the broker. */
  sameConfig: (a: DeviceConfig, b: DeviceConfig) => boolean;
  createSession: (gen: G, plan: SessionPlan) => SessionPort;
  parseTopic: (topic: string) => { channelId: string; subtopic?: string } | undefined;
  notifier: NotifierPort;
  messageHandler: MessageHandler;
  random?: () => number;
  now?: () => number;
  sleep?: (ms: number, signal: AbortSignal) => Promise<void>;
}

export type AgentState =
  | 'idle'
  | 'resolving-identity'
  | 'bootstrapping'
  | 'connecting'
  | 'online'
  | 'waiting'
  | 'stopping'
  | 'stopped';

export { STATUS_ONLINE, STATUS_OFFLINE };

class StopRequested extends Error {}

export class AgentRuntime<G extends GenerationPort> {
  private readonly deps: AgentRuntimeDeps<G>;
  private readonly log: Logger;
  private readonly abort = new AbortController();
  private readonly random: () => number;
  private readonly sleepFn: (ms: number, signal: AbortSignal) => Promise<void>;
  private readonly authBreaker: SlidingWindowBreaker;
  private loopDone: Promise<void> | undefined;
  private session: SessionPort | undefined;
  private statusTopic: string | undefined;
  private stateValue: AgentState = 'idle';
  private attempts = new Map<FailureClass, number>();
  private clockWarned = false;
  private fatal: AgentError | undefined;
  private subscribedChannels: string[] = [];

  constructor(deps: AgentRuntimeDeps<G>) {
    this.deps = deps;
    this.log = deps.logger;
    this.random = deps.random ?? Math.random;
    this.sleepFn = deps.sleep ?? ((ms, signal) => sleepTimer(ms, undefined, { signal }).then(() => undefined));
    this.authBreaker = new SlidingWindowBreaker(6, 3_600_000, deps.now ?? Date.now);
  }

  get state(): AgentState {
    return this.stateValue;
  }

  /** Channels whose subscription the broker granted in the current session. */
  get channels(): readonly string[] {
    return this.subscribedChannels;
  }

  /** Starts the main loop. Resolves at once; `done` settles when the loop ends. */
  start(): void {
    if (this.loopDone) return;
    this.loopDone = this.loop().catch((err: unknown) => {
      if (err instanceof StopRequested || this.abort.signal.aborted) return;
      this.fatal = toAgentError(err);
      this.log.fatal(this.fatal.toLog(), `agent stopped on an unrecoverable error: ${this.fatal.message}`);
    });
  }

  /** Settles when the loop has ended; rejects with the fatal error if it ended on one. */
  async done(): Promise<void> {
    await this.loopDone;
    if (this.fatal) throw this.fatal;
  }

  /** Publishes offline, disconnects, ends the loop. Never throws; safe to call twice. */
  async stop(timeoutMs = 4_000): Promise<void> {
    if (this.stateValue === 'stopped') return;
    this.setState('stopping');
    this.deps.notifier.stopping();
    this.abort.abort();
    const session = this.session;
    this.session = undefined;
    if (session) {
      await session
        .stop({
          ...(this.statusTopic ? { status: { topic: this.statusTopic, payload: STATUS_OFFLINE } } : {}),
          timeoutMs,
        })
        .catch(() => undefined);
    }
    await this.loopDone?.catch(() => undefined);
    this.setState('stopped');
  }

  private setState(state: AgentState, detail?: string): void {
    this.stateValue = state;
    this.deps.notifier.status(detail ? `${state}: ${detail}` : state);
  }

  private checkStop(): void {
    if (this.abort.signal.aborted) throw new StopRequested();
  }

  private async sleep(ms: number): Promise<void> {
    try {
      await this.sleepFn(ms, this.abort.signal);
    } catch {
      throw new StopRequested();
    }
  }

  /** Logs a failure in one line and waits the class's backoff. Fatal failures are rethrown. */
  private async backOff(stage: string, error: AgentError): Promise<void> {
    const failure = classifyFailure(error.code);
    if (failure === 'fatal') throw error;
    const attempt = this.attempts.get(failure) ?? 0;
    this.attempts.set(failure, attempt + 1);
    const policy = policyFor(failure, this.deps.config.retry);
    const delay = withRetryAfter(backoffDelay(policy, attempt, this.random), error.retryAfterMs, policy.maxDelayMs);
    if (isClockProblem(error.code) && !this.clockWarned) {
      this.clockWarned = true;
      this.log.warn(
        { code: error.code, now: new Date().toISOString() },
        'a certificate is not valid at the current time: the system clock is probably wrong (no NTP yet?); certificates are kept and verification stays on',
      );
    }
    this.log.warn({ stage, ...error.toLog(), failureClass: failure, attempt: attempt + 1, retryInMs: delay }, `${stage} failed: ${error.message}`);
    this.setState('waiting', `${stage} failed (${error.code}), retry in ${Math.round(delay / 1000)}s`);
    await this.sleep(delay);
  }

  private resetAttempts(): void {
    this.attempts.clear();
  }

  private async loop(): Promise<void> {
    const { store } = this.deps;
    this.setState('resolving-identity');
    await store.init();
    let identity: ResolvedIdentityPort | undefined;
    while (!identity) {
      this.checkStop();
      try {
        identity = await this.deps.resolveIdentity();
      } catch (err) {
        await this.backOff('identity', toAgentError(err));
      }
    }
    this.identity = identity;
    this.externalKey = await this.deps.readExternalKey(); // fatal codes propagate: exit 78

    let current = await store.loadCurrent();
    if (current) {
      this.log.info({ generation: current.id }, 'starting on the stored configuration; refreshing from Bootstrap once online');
      this.refreshDue = true;
    }
    let candidate: G | undefined;

    for (;;) {
      this.checkStop();
      if (!current && !candidate) {
        try {
          candidate = await this.bootstrapCandidate(undefined);
        } catch (err) {
          if (this.abort.signal.aborted) throw new StopRequested();
          await this.backOff('bootstrap', toAgentError(err));
          continue;
        }
      }
      const target = (candidate ?? current) as G;
      const isCandidate = candidate !== undefined;
      candidate = undefined;
      const outcome = await this.runSession(target, isCandidate);
      this.checkStop();
      if (outcome.promoted) current = target;
      if (outcome.kind === 'switch') {
        candidate = outcome.candidate;
        continue;
      }
      const error = outcome.error;
      const failure = classifyFailure(error.code);
      // A candidate the broker could not be reached with is tried again as it is; one it refused is dropped.
      const retryCandidate = isCandidate && !outcome.promoted && failure === 'transient' ? target : undefined;
      if (isCandidate && !outcome.promoted && !retryCandidate) {
        await store.discard(target).catch(() => undefined);
        if (current) this.log.warn({ generation: target.id, previous: current.id, code: error.code }, `new configuration was refused (${error.code}); returning to generation ${current.id}`);
      }
      if (failure === 'auth') {
        // The broker refused the credentials: end that client (done), ask Bootstrap once for fresh
        // ones and connect with what comes back, a bounded number of times per hour.
        if (this.authBreaker.tryAcquire()) {
          this.log.warn({ ...error.toLog() }, `broker refused the credentials (${error.message}); re-bootstrapping`);
          try {
            candidate = await this.bootstrapCandidate(current);
            if (candidate) continue;
            this.log.warn({}, 'Bootstrap returned the same credentials the broker refused; backing off');
          } catch (err) {
            if (this.abort.signal.aborted) throw new StopRequested();
            await this.backOff('bootstrap', toAgentError(err));
            continue;
          }
        } else {
          this.log.warn({ retryInMs: this.authBreaker.msUntilOpen() }, 're-bootstrap limit reached for this hour; backing off');
        }
      }
      await this.backOff(outcome.stage, error);
      candidate = retryCandidate;
    }
  }

  private identity: ResolvedIdentityPort | undefined;
  private externalKey: string | undefined;
  private refreshDue = false;
  private refreshRunning = false;
  private switchTo: ((candidate: G) => void) | undefined;
  private onlineConfig: DeviceConfig | undefined;

  /**
   * Fetches the configuration and writes it as a candidate generation. Returns undefined when it
   * equals `current` (nothing to apply). Throws the classified AgentError on failure.
   */
  private async bootstrapCandidate(current: G | undefined): Promise<G | undefined> {
    const identity = this.identity as ResolvedIdentityPort;
    this.setState('bootstrapping');
    const fetched = await this.deps.fetchConfig(identity.externalId, this.externalKey as string, this.abort.signal);
    this.checkStop();
    this.refreshDue = false; // just fetched: a pending refresh would ask the same question again
    if (current && this.deps.sameConfig(current.config, fetched)) return undefined;
    const gen = await this.deps.store.writeCandidate(fetched, { externalId: identity.externalId, fetchedAt: new Date() });
    this.log.info(
      { generation: gen.id, channels: fetched.channels.length, family: fetched.family, files: Object.keys(gen.paths) },
      'bootstrap succeeded; configuration written as a candidate generation',
    );
    return gen;
  }

  /** Asks for a configuration check (SIGHUP, control channel, schedule). Checks never overlap. */
  requestUpdate(reason: string): void {
    this.refreshDue = true;
    this.log.info({ reason }, 'configuration update requested');
    if (this.stateValue === 'online') void this.refresh();
  }

  private async refresh(): Promise<void> {
    if (this.refreshRunning || !this.refreshDue || !this.onlineConfig) return;
    this.refreshRunning = true;
    this.refreshDue = false;
    const onlineConfig = this.onlineConfig;
    try {
      const identity = this.identity as ResolvedIdentityPort;
      const fetched = await this.deps.fetchConfig(identity.externalId, this.externalKey as string, this.abort.signal);
      if (this.abort.signal.aborted || this.onlineConfig !== onlineConfig) return;
      if (this.deps.sameConfig(onlineConfig, fetched)) {
        this.log.info({}, 'configuration is up to date');
        return;
      }
      const gen = await this.deps.store.writeCandidate(fetched, { externalId: identity.externalId, fetchedAt: new Date() });
      this.log.info({ generation: gen.id }, 'configuration changed on the server; switching to the new generation');
      if (this.switchTo) this.switchTo(gen);
      else await this.deps.store.discard(gen).catch(() => undefined);
    } catch (err) {
      if (this.abort.signal.aborted) return;
      const error = toAgentError(err);
      this.log.warn({ stage: 'refresh', ...error.toLog() }, `configuration check failed, staying on the current configuration: ${error.message}`);
    } finally {
      this.refreshRunning = false;
    }
  }

  /**
   * Connects with one generation, promotes it if it is a candidate, subscribes, goes online, and
   * waits until the connection is lost or a newer candidate arrives. Throws StopRequested on stop.
   */
  private async runSession(
    gen: G,
    isCandidate: boolean,
  ): Promise<
    | { kind: 'failed'; promoted: boolean; stage: string; error: AgentError }
    | { kind: 'switch'; promoted: boolean; candidate: G }
  > {
    this.setState('connecting');
    let plan: SessionPlan;
    try {
      plan = this.deps.planSession(gen.config);
    } catch (err) {
      return { kind: 'failed', promoted: false, stage: 'plan', error: toAgentError(err) };
    }
    const session = this.deps.createSession(gen, plan);
    let lost: (error: AgentError) => void = () => undefined;
    const lostPromise = new Promise<AgentError>((resolve) => {
      lost = resolve;
    });
    session.onLost((error) => lost(error));
    session.onMessage((message) => this.dispatch(message));
    this.session = session;
    this.statusTopic = plan.statusTopic;
    try {
      await session.connect();
    } catch (err) {
      this.session = undefined;
      await session.stop({ timeoutMs: 1_000 }).catch(() => undefined);
      if (this.abort.signal.aborted) throw new StopRequested();
      return { kind: 'failed', promoted: false, stage: 'connect', error: toAgentError(err) };
    }
    if (this.abort.signal.aborted) throw new StopRequested();

    if (isCandidate) {
      await this.deps.store.promote(gen);
      this.log.info({ generation: gen.id }, 'broker accepted the configuration; generation promoted');
    }
    await this.persistIdentity();

    const results = await session
      .subscribe(plan.subscriptions.map((s) => s.filter), this.deps.config.mqtt.qos)
      .catch((): SubscriptionResult[] => plan.subscriptions.map((s) => ({ filter: s.filter, granted: false })));
    const granted: string[] = [];
    for (const sub of plan.subscriptions) {
      const result = results.find((r) => r.filter === sub.filter);
      if (result?.granted) granted.push(sub.channelId);
      else
        this.log.warn(
          { code: 'MQTT_SUBSCRIBE_REFUSED' satisfies ErrorCode, channel: sub.channelId, filter: sub.filter, reasonCode: result?.reasonCode },
          `broker refused the subscription to channel ${sub.channelId}; is the client connected to it?`,
        );
    }
    this.subscribedChannels = granted;
    await this.publishOnline(session, plan);
    this.resetAttempts();
    this.log.info(
      { generation: gen.id, subscribed: granted, refused: plan.subscriptions.length - granted.length, statusTopic: plan.statusTopic },
      `online: subscribed to ${granted.length} of ${plan.subscriptions.length} channels`,
    );
    this.setState('online', `generation ${gen.id}, ${granted.length}/${plan.subscriptions.length} channels`);
    this.deps.notifier.ready(`online: ${granted.length}/${plan.subscriptions.length} channels`);

    const sessionScope = new AbortController();
    const refused = plan.subscriptions.filter((sub) => !granted.includes(sub.channelId));
    if (refused.length > 0) void this.retrySubscriptions(session, plan, refused, gen.id, sessionScope.signal);

    const switchPromise = new Promise<G>((resolve) => {
      this.switchTo = resolve;
    });
    this.onlineConfig = gen.config;
    if (this.refreshDue) void this.refresh();
    const abortPromise = new Promise<'stop'>((resolve) =>
      this.abort.signal.addEventListener('abort', () => resolve('stop'), { once: true }),
    );
    const ended = await Promise.race([lostPromise, abortPromise, switchPromise.then((c) => ({ candidate: c }))]);
    this.switchTo = undefined;
    this.onlineConfig = undefined;
    sessionScope.abort();
    if (ended === 'stop') throw new StopRequested();
    this.session = undefined;
    this.subscribedChannels = [];
    if ('candidate' in ended) {
      // Planned switch: say offline so nobody sees a stale online, then hand over to the candidate.
      await session
        .stop({ ...(plan.statusTopic ? { status: { topic: plan.statusTopic, payload: STATUS_OFFLINE } } : {}), timeoutMs: 2_000 })
        .catch(() => undefined);
      return { kind: 'switch', promoted: isCandidate, candidate: ended.candidate };
    }
    await session.stop({ timeoutMs: 1_000 }).catch(() => undefined);
    this.log.warn({ ...ended.toLog() }, `connection to the broker lost: ${ended.message}`);
    return { kind: 'failed', promoted: isCandidate, stage: 'connection', error: ended };
  }

  /**
   * The MQTT library does not retry a refused subscription; the operator may connect the channel at
   * any time, so keep asking on a slow backoff for as long as this session lives.
   */
  private async retrySubscriptions(
    session: SessionPort,
    plan: SessionPlan,
    refused: { channelId: string; filter: string }[],
    generation: number,
    signal: AbortSignal,
  ): Promise<void> {
    const total = plan.subscriptions.length;
    const retry = this.deps.config.retry;
    const policy = { initialDelayMs: retry.initialDelayMs * 5, maxDelayMs: retry.maxDelayMs };
    let pending = refused;
    for (let attempt = 0; pending.length > 0; attempt++) {
      try {
        await this.sleepFn(Math.max(backoffDelay(policy, attempt, this.random), retry.initialDelayMs), signal);
      } catch {
        return; // session over
      }
      if (signal.aborted) return;
      const results = await session.subscribe(pending.map((p) => p.filter), this.deps.config.mqtt.qos).catch(() => []);
      if (signal.aborted) return;
      const nowGranted = pending.filter((p) => results.find((r) => r.filter === p.filter)?.granted);
      for (const sub of nowGranted) {
        this.subscribedChannels = [...this.subscribedChannels, sub.channelId];
        this.log.info({ channel: sub.channelId, filter: sub.filter, attempt: attempt + 1 }, `subscription to channel ${sub.channelId} granted on retry`);
      }
      pending = pending.filter((p) => !nowGranted.includes(p));
      if (nowGranted.length > 0) {
        // A broker that refused the channel also dropped the online status published on it.
        await this.publishOnline(session, plan);
        this.log.info({ generation, subscribed: this.subscribedChannels, refused: pending.length }, `online: subscribed to ${this.subscribedChannels.length} of ${total} channels`);
        this.setState('online', `generation ${generation}, ${this.subscribedChannels.length}/${total} channels`);
      }
    }
  }

  private async publishOnline(session: SessionPort, plan: SessionPlan): Promise<void> {
    if (!plan.statusTopic) return;
    await session.publish(plan.statusTopic, STATUS_ONLINE, { qos: 1, retain: true }).catch((err: unknown) => {
      const error = toAgentError(err);
      this.log.warn(error.toLog(), `could not publish the online status: ${error.message}`);
    });
  }

  private async persistIdentity(): Promise<void> {
    const identity = this.identity;
    if (!identity || identity.source === 'persisted' || identity.source === 'config') return;
    try {
      await this.deps.store.saveIdentity({
        externalId: identity.externalId,
        ...(identity.interfaceName ? { interfaceName: identity.interfaceName } : {}),
        ...(identity.mac ? { mac: identity.mac } : {}),
        persistedAt: new Date().toISOString(),
      });
      identity.source = 'persisted';
    } catch (err) {
      const error = toAgentError(err);
      this.log.warn(error.toLog(), `could not persist the external ID (${error.message}); will try again after the next success`);
    }
  }

  private dispatch(message: IncomingMessage): void {
    const parsed = this.deps.parseTopic(message.topic);
    if (!parsed) return;
    Promise.resolve()
      .then(() => this.deps.messageHandler.handle({ topic: message.topic, ...parsed, payload: message.payload }))
      .catch((err: unknown) => {
        const error = toAgentError(err);
        this.log.warn({ topic: message.topic, ...error.toLog() }, `message handler failed: ${error.message}`);
      });
  }
}
