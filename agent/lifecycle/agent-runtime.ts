import { setTimeout as sleepTimer } from 'node:timers/promises';
import type { Logger } from 'pino';
import type { AgentConfig } from '../config/schema.js';
import { startDeadline } from '../bootstrap/deadline.js';
import type { DeviceConfig } from '../bootstrap/model.js';
import { AgentError, toAgentError, type ErrorCode } from '../errors/agent-error.js';
import { backoffDelay, firstAttemptDelay, policyFor, withRetryAfter } from './backoff.js';
import { classifyFailure, isClockProblem, type FailureClass } from './failure-policy.js';
import { SlidingWindowBreaker } from './circuit-breaker.js';
import { isEmptyAttempts, type AttemptStorePort, type BackoffAttempts } from './backoff-state.js';
import { STATUS_OFFLINE, STATUS_ONLINE } from '../mqtt/status.js';
import { redactBrokerUrl } from '../mqtt/session.js';
import { sameConfig } from '../storage/config-diff.js';
import { changeKinds, planApply, type ChangeKind } from '../updates/apply-plan.js';
import type { AppliedChange } from '../updates/on-apply.js';
import { DEFAULT_JITTER_FRACTION } from '../updates/periodic-schedule.js';

/*
 * The agent's main loop: identity → last good configuration or bootstrap → write a candidate →
 * connect → promote → subscribe → online, and back round on failure. Everything it touches comes in
 * through the small ports below, built by the composition root; this file does no I/O of its own
 * except sleeping, and every sleep is cut short by stop().
 *
 * Configuration checks (schedule, SIGHUP, control channel) run only at quiet points: while online
 * (next to the session, which keeps running) or while the loop waits out a backoff (inline, by the
 * loop itself). They never overlap; requests that arrive during a check are served by one more
 * check right after it. A changed configuration is applied with the least disruption (see
 * updates/apply-plan.ts).
 *
 * systemd: READY=1 is sent the first time the agent is online (connected and its subscriptions
 * answered), or, with a stored configuration, the first time a connection attempt fails for a
 * transient reason (network down, broker unavailable): the agent then runs on the stored
 * configuration as well as it can. Without a stored configuration READY=1 waits for the first
 * successful connection. RELOADING=1 on SIGHUP, READY=1 once the check is done (after the new
 * configuration went online, or was given up for the previous one).
 */

export interface ResolvedIdentityPort {
  externalId: string;
  source: string;
  interfaceName?: string;
  mac?: string;
}

export interface GenerationPort {
  id: number;
  /** The external ID the generation was fetched for. */
  externalId?: string;
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
  unsubscribe(filters: string[]): Promise<void>;
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
  reloading(status?: string): void;
  stopping(status?: string): void;
}

export interface MessageHandler {
  handle(message: { topic: string; channelId: string; subtopic?: string; payload: Buffer }): void | Promise<void>;
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

/** The runtime's view of itself, as `status.json` shows it (the writer adds pid and updatedAt). */
export interface RuntimeStatus {
  state: AgentState;
  detail: string | null;
  since: string;
  generation: number | null;
  externalId: string | null;
  lastBootstrap: { at: string; ok: boolean; code?: string } | null;
  connection: { broker: string | null; connected: boolean; since: string | null };
  channels: { subscribed: string[]; refused: string[] };
}

/** How a configuration check ended; the control channel reports it back. */
export type UpdateOutcome =
  | { result: 'unchanged' }
  | { result: 'applied'; generation: number; changes: ChangeKind[] }
  | { result: 'reconnecting'; generation: number; changes: ChangeKind[] }
  | { result: 'deferred'; reason: string }
  | { result: 'failed'; code: ErrorCode; message: string };

export interface UpdateRequestOptions {
  /** SIGHUP: RELOADING=1 now, READY=1 when done. */
  reload?: boolean;
  /** From a schedule: does not cut a backoff short. */
  scheduled?: boolean;
}

export interface AgentRuntimeDeps<G extends GenerationPort> {
  config: AgentConfig;
  logger: Logger;
  store: StorePort<G>;
  resolveIdentity: () => Promise<ResolvedIdentityPort>;
  readExternalKey: () => Promise<string>;
  fetchConfig: (externalId: string, externalKey: string, signal: AbortSignal) => Promise<DeviceConfig>;
  planSession: (config: DeviceConfig) => SessionPlan;
  createSession: (gen: G, plan: SessionPlan) => SessionPort;
  parseTopic: (topic: string) => { channelId: string; subtopic?: string } | undefined;
  notifier: NotifierPort;
  messageHandler: MessageHandler;
  /** Failure counts kept across restarts; without it they live in memory only. */
  attempts?: AttemptStorePort;
  /** Receives a snapshot after every change of state, generation, connection or channels. */
  onStatus?: (status: RuntimeStatus) => void;
  /** Runs after every promoted generation (the onApply command); not awaited. */
  onApplied?: (change: AppliedChange) => Promise<unknown>;
  random?: () => number;
  /** Wall clock (ms), for the re-bootstrap breaker and the status times. */
  now?: () => number;
  /** Monotonic clock (ms), for the health check and interrupted sleeps. */
  monotonicNow?: () => number;
  sleep?: (ms: number, signal: AbortSignal) => Promise<void>;
}

export { STATUS_ONLINE, STATUS_OFFLINE };

class StopRequested extends Error {}

/** A step running longer than its own deadlines plus this is stuck: the watchdog pings stop. */
const STUCK_MARGIN_MS = 60_000;
/** Re-bootstraps after an auth refusal allowed per hour. */
const AUTH_REBOOTSTRAPS_PER_HOUR = 6;
/** A new configuration whose broker cannot be reached this many times in a row is given up for the previous one. */
const CANDIDATE_CONNECT_ATTEMPTS = 3;

interface DueCheck {
  reasons: string[];
  explicit: boolean;
  waiters: ((outcome: UpdateOutcome) => void)[];
}

/** Everything about the session while online; replaced on every connection. */
interface OnlineContext<G> {
  gen: G;
  plan: SessionPlan;
  session: SessionPort;
  granted: string[];
  /** Refused subscriptions (channel ID → filter), retried on a slow backoff. */
  pending: Map<string, string>;
  retrying: boolean;
  scope: AbortController;
  /** Set by a check that needs a new session; the loop takes it over. */
  switchCandidate?: G;
  switchNow: () => void;
  /** Cuts the refused-subscription retry's wait short. */
  wakeSubscriptionRetry?: () => void;
  /** When the broker accepted this session (monotonic ms): a session dropped right away hints at a client ID clash. */
  onlineAtMonotonic: number;
}

/** A session lost sooner than this after CONNACK is suspicious (takeover by a twin device, ACL kick). */
const SHORT_SESSION_MS = 5_000;

type SessionOutcome<G> =
  | { kind: 'failed'; promoted: boolean; stage: string; error: AgentError; candidate?: G }
  | { kind: 'switch'; promoted: boolean; candidate: G };

export class AgentRuntime<G extends GenerationPort> {
  private readonly deps: AgentRuntimeDeps<G>;
  private readonly log: Logger;
  private readonly abort = new AbortController();
  private readonly random: () => number;
  private readonly now: () => number;
  private readonly monotonicNow: () => number;
  private readonly sleepFn: (ms: number, signal: AbortSignal) => Promise<void>;
  private readonly authBreaker: SlidingWindowBreaker;
  private loopDone: Promise<void> | undefined;
  private fatal: AgentError | undefined;

  private stateValue: AgentState = 'idle';
  private stateDetail: string | null = null;
  private stateSince = new Date(0);
  private stateSinceMonotonic = 0;
  private stuckLogged = false;

  private identity: ResolvedIdentityPort | undefined;
  private externalKey: string | undefined;
  /** The promoted generation: the last one the broker accepted (or the stored one at boot). */
  private current: G | undefined;
  /** A written generation the loop tries next (fresh from Bootstrap, not yet accepted by the broker). */
  private nextCandidate: G | undefined;
  private online: OnlineContext<G> | undefined;
  /** The session being connected or in use, for stop(). */
  private session: SessionPort | undefined;
  private statusTopic: string | undefined;
  private takeoverHinted = false;
  private broker: string | null = null;
  private connectedSince: Date | undefined;
  private lastBootstrap: RuntimeStatus['lastBootstrap'] = null;

  private attempts = new Map<FailureClass, number>();
  private lastFailureClass: FailureClass | undefined;
  private clockWarned = false;

  private readySent = false;
  private reloadPending = false;
  private dueCheck: DueCheck | undefined;
  private checkRunning = false;
  /** The code of the last configuration check when it failed; shown in STATUS= and status.json while online. */
  private checkFailure: ErrorCode | undefined;
  private wakeBackoff: (() => void) | undefined;

  constructor(deps: AgentRuntimeDeps<G>) {
    this.deps = deps;
    this.log = deps.logger;
    this.random = deps.random ?? Math.random;
    this.now = deps.now ?? Date.now;
    this.monotonicNow = deps.monotonicNow ?? (() => performance.now());
    this.sleepFn = deps.sleep ?? ((ms, signal) => sleepTimer(ms, undefined, { signal }).then(() => undefined));
    this.authBreaker = new SlidingWindowBreaker(AUTH_REBOOTSTRAPS_PER_HOUR, 3_600_000, this.now);
  }

  get state(): AgentState {
    return this.stateValue;
  }

  /** The generation in use: the live session's, else the promoted one. */
  get generation(): G | undefined {
    return this.online?.gen ?? this.current;
  }

  /** Channels whose subscription the broker granted in the current session. */
  get channels(): readonly string[] {
    return this.online?.granted ?? [];
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
    if (this.stateValue === 'stopped' || this.abort.signal.aborted) {
      await this.loopDone?.catch(() => undefined);
      return;
    }
    this.setState('stopping');
    this.deps.notifier.stopping();
    this.abort.abort();
    this.resolveDueCheck({ result: 'deferred', reason: 'the agent is stopping' });
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
    this.online = undefined;
    this.connectedSince = undefined;
    this.setState('stopped');
  }

  /**
   * True while the main loop makes progress: it is waiting on something with its own deadline
   * (a backoff, the live session), or its current step has not outlived every deadline it has.
   * The systemd watchdog pings only while this holds.
   */
  isHealthy(): boolean {
    if (this.stateValue === 'stopped') return false;
    if (!['resolving-identity', 'bootstrapping', 'connecting'].includes(this.stateValue)) return true;
    const { bootstrap, mqtt } = this.deps.config;
    const budget = Math.max(bootstrap.timeoutMs, mqtt.connectTimeoutMs) + STUCK_MARGIN_MS;
    const age = this.monotonicNow() - this.stateSinceMonotonic;
    if (age <= budget) return true;
    if (!this.stuckLogged) {
      this.stuckLogged = true;
      this.log.error({ state: this.stateValue, stuckForMs: Math.round(age) }, `main loop stuck in "${this.stateValue}" for ${Math.round(age / 1000)} s; watchdog pings withheld`);
    }
    return false;
  }

  /** The snapshot status.json shows. */
  status(): RuntimeStatus {
    const online = this.online;
    return {
      state: this.stateValue,
      detail: this.stateDetail,
      since: this.stateSince.toISOString(),
      generation: this.current?.id ?? null,
      externalId: this.identity?.externalId ?? null,
      lastBootstrap: this.lastBootstrap,
      connection: {
        broker: this.broker,
        connected: online !== undefined,
        since: online && this.connectedSince ? this.connectedSince.toISOString() : null,
      },
      channels: { subscribed: [...(online?.granted ?? [])], refused: [...(online?.pending.keys() ?? [])] },
    };
  }

  /** Publishes on the live session (remote-control answers); rejects with MQTT_NETWORK while there is none. */
  publish(topic: string, payload: string | Buffer, options: { qos: 0 | 1; retain: boolean }): Promise<void> {
    // The session being connected or in use: a persistent session delivers queued requests right after CONNECT.
    const session = this.session;
    if (!session) return Promise.reject(new AgentError('MQTT_NETWORK', 'not connected to the broker', { details: { topic } }));
    return session.publish(topic, payload, options);
  }

  /**
   * Asks for a configuration check (SIGHUP, control channel, schedule). Resolves when a check that
   * covers this request has finished; never rejects. Checks never overlap.
   */
  requestUpdate(reason: string, options: UpdateRequestOptions = {}): Promise<UpdateOutcome> {
    if (this.abort.signal.aborted || !this.loopDone) {
      return Promise.resolve({ result: 'deferred', reason: this.loopDone ? 'the agent is stopping' : 'the agent is not running' });
    }
    this.log.info({ reason }, 'configuration check requested');
    if (options.scheduled !== true) this.online?.wakeSubscriptionRetry?.();
    if (options.reload && this.readySent) {
      this.reloadPending = true;
      this.deps.notifier.reloading('reloading: checking Bootstrap for a new configuration');
    }
    return new Promise<UpdateOutcome>((resolve) => {
      const due = (this.dueCheck ??= { reasons: [], explicit: false, waiters: [] });
      due.reasons.push(reason);
      due.explicit ||= options.scheduled !== true;
      due.waiters.push(resolve);
      this.startDueCheck();
    });
  }

  // ---------------------------------------------------------------------------------------------
  // state, readiness, status

  private setState(state: AgentState, detail?: string): void {
    if (state !== this.stateValue) {
      this.stateSince = new Date(this.now());
      this.stateSinceMonotonic = this.monotonicNow();
      this.stuckLogged = false;
    }
    this.stateValue = state;
    this.stateDetail = detail ?? null;
    this.deps.notifier.status(detail ? `${state}: ${detail}` : state);
    this.report();
  }

  private report(): void {
    try {
      this.deps.onStatus?.(this.status());
    } catch (err) {
      const error = toAgentError(err);
      this.log.warn(error.toLog(), `status report failed: ${error.message}`);
    }
  }

  /** READY=1 the first time, and once more after each RELOADING=1. */
  private markReady(status: string): void {
    if (this.readySent && !this.reloadPending) return;
    this.readySent = true;
    this.reloadPending = false;
    this.deps.notifier.ready(status);
  }

  // ---------------------------------------------------------------------------------------------
  // sleeping and backoff

  private checkStop(): void {
    if (this.abort.signal.aborted) throw new StopRequested();
  }

  /** Sleeps; an explicit update request can cut it short ('woken'). Throws StopRequested on stop. */
  private async sleepInterruptible(ms: number): Promise<'elapsed' | 'woken'> {
    const sleep = new AbortController();
    const onStop = (): void => sleep.abort();
    this.abort.signal.addEventListener('abort', onStop, { once: true });
    let woken = false;
    this.wakeBackoff = () => {
      woken = true;
      sleep.abort();
    };
    try {
      await this.sleepFn(ms, sleep.signal);
      return 'elapsed';
    } catch {
      if (woken && !this.abort.signal.aborted) return 'woken';
      throw new StopRequested();
    } finally {
      this.wakeBackoff = undefined;
      this.abort.signal.removeEventListener('abort', onStop);
    }
  }

  /** Waits out a backoff; configuration checks requested meanwhile run here, inline. */
  private async waitBackoff(delayMs: number): Promise<void> {
    const until = this.monotonicNow() + delayMs;
    let remaining = delayMs;
    for (;;) {
      if (this.dueCheck && !this.checkRunning && (await this.runCheckWhileWaiting()) === 'retry-now') return;
      if (remaining <= 0) return;
      if ((await this.sleepInterruptible(remaining)) === 'elapsed') return;
      remaining = until - this.monotonicNow();
    }
  }

  /** Logs a failure in one line and waits the class's backoff. Fatal failures are rethrown. */
  private async backOff(stage: string, error: AgentError): Promise<void> {
    const failure = classifyFailure(error.code);
    if (failure === 'fatal') throw error;
    const attempt = this.attempts.get(failure) ?? 0;
    this.attempts.set(failure, attempt + 1);
    this.lastFailureClass = failure;
    await this.saveAttempts();
    const policy = policyFor(failure, this.deps.config.retry);
    const delay = withRetryAfter(backoffDelay(policy, attempt, this.random), error.retryAfterMs, policy.maxDelayMs);
    if (isClockProblem(error.code) && !this.clockWarned) {
      this.clockWarned = true;
      this.log.warn(
        { code: error.code, now: new Date(this.now()).toISOString() },
        'a certificate is not valid at the current time: the system clock is probably wrong (no NTP yet?); certificates are kept and verification stays on',
      );
    }
    const what = stage === 'connection' ? 'connection to the broker lost' : `${stage} failed`;
    this.log.warn({ stage, ...error.toLog(), failureClass: failure, attempt: attempt + 1, retryInMs: delay }, `${what}: ${error.message}`);
    this.setState('waiting', `${what} (${error.code}), retry in ${Math.round(delay / 1000)}s`);
    await this.waitBackoff(delay);
  }

  private async loadAttempts(): Promise<void> {
    let loaded: BackoffAttempts = { counts: {} };
    try {
      loaded = (await this.deps.attempts?.load()) ?? loaded;
    } catch {
      loaded = { counts: {} };
    }
    for (const [failure, n] of Object.entries(loaded.counts) as [FailureClass, number][]) {
      if (n > 0) this.attempts.set(failure, n);
    }
    this.lastFailureClass = loaded.last;
  }

  private attemptsSnapshot(): BackoffAttempts {
    return {
      counts: Object.fromEntries(this.attempts),
      ...(this.lastFailureClass && this.attempts.get(this.lastFailureClass) ? { last: this.lastFailureClass } : {}),
    };
  }

  private async saveAttempts(): Promise<void> {
    await this.deps.attempts?.save(this.attemptsSnapshot()).catch(() => undefined);
  }

  /** A connection that stayed up counts as success: the backoff starts from the first step again. */
  private async resetAttempts(): Promise<void> {
    if (this.attempts.size === 0 && this.lastFailureClass === undefined) return;
    const had = !isEmptyAttempts(this.attemptsSnapshot());
    this.attempts.clear();
    this.lastFailureClass = undefined;
    if (had) await this.saveAttempts();
  }

  // ---------------------------------------------------------------------------------------------
  // the loop

  private async loop(): Promise<void> {
    const { store } = this.deps;
    // First: the status file and the backoff state live in the state directory. A read-only or
    // missing one may heal (remount, systemd recreating it): retry rather than exit and restart-loop.
    for (;;) {
      this.checkStop();
      try {
        await store.init();
        break;
      } catch (err) {
        await this.backOff('state directory', toAgentError(err));
      }
    }
    this.setState('resolving-identity');
    await this.loadAttempts();
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

    this.current = await store.loadCurrent();
    if (this.current?.externalId !== undefined && this.current.externalId !== identity.externalId) {
      // A copied state directory or a changed ID: never connect as another device (it would kick it off).
      this.log.warn(
        { generation: this.current.id, storedFor: this.current.externalId, externalId: identity.externalId },
        `the stored configuration belongs to external ID ${this.current.externalId}, not ${identity.externalId}; bootstrapping afresh`,
      );
      this.current = undefined;
    }
    this.report();
    const first = firstAttemptDelay(
      { failures: this.lastFailureClass ? this.attempts.get(this.lastFailureClass) ?? 0 : 0, failureClass: this.lastFailureClass },
      this.deps.config.retry,
      this.random,
    );
    if (first.kind === 'resume') {
      this.log.info(
        { failureClass: this.lastFailureClass, failures: this.attempts.get(this.lastFailureClass as FailureClass), delayMs: first.delayMs },
        `resuming the backoff from before the restart: first attempt in ${Math.round(first.delayMs / 1000)} s`,
      );
    }
    if (this.current) {
      this.log.info({ generation: this.current.id }, 'starting on the stored configuration; refreshing from Bootstrap in the background');
      // Both the first connect and the Bootstrap refresh are jittered: a fleet that lost power together
      // must not return to the broker, or to Bootstrap, in one wave.
      this.scheduleBootRefresh(Math.floor(this.random() * this.deps.config.retry.bootJitterMs));
      if (first.kind === 'resume') {
        this.setState('waiting', `resuming backoff, first attempt in ${Math.round(first.delayMs / 1000)}s`);
        await this.waitBackoff(first.delayMs);
      } else if (first.delayMs > 0) {
        this.setState('waiting', `first connect in ${Math.round(first.delayMs / 1000)}s (boot jitter)`);
        await this.waitBackoff(first.delayMs);
      }
    } else if (first.delayMs > 0) {
      this.setState('waiting', `first attempt in ${Math.round(first.delayMs / 1000)}s`);
      if (first.kind === 'jitter') this.log.info({ delayMs: first.delayMs }, `first bootstrap in ${first.delayMs} ms (boot jitter)`);
      await this.waitBackoff(first.delayMs);
    }

    let triedCandidate: G | undefined;
    let candidateFailures = 0;
    for (;;) {
      this.checkStop();
      if (!this.current && !this.nextCandidate) {
        try {
          this.nextCandidate = await this.bootstrapCandidate(undefined);
        } catch (err) {
          if (this.abort.signal.aborted) throw new StopRequested();
          await this.backOff('bootstrap', toAgentError(err));
          continue;
        }
      }
      const isCandidate = this.nextCandidate !== undefined;
      const target = (this.nextCandidate ?? this.current) as G;
      this.nextCandidate = undefined;
      if (target !== triedCandidate) candidateFailures = 0;
      triedCandidate = isCandidate ? target : undefined;
      const outcome = await this.runSession(target, isCandidate);
      this.checkStop();
      if (outcome.kind === 'switch') {
        this.nextCandidate = outcome.candidate;
        continue;
      }
      const error = outcome.error;
      const failure = classifyFailure(error.code);
      // A candidate the broker could not be reached with is tried again as it is, a few times when a
      // previous generation exists (a mistyped broker URL must not strand the device); one it refused is dropped.
      const unreachable = isCandidate && !outcome.promoted && failure === 'transient';
      if (unreachable) candidateFailures++;
      const retryCandidate = unreachable && (!this.current || candidateFailures < CANDIDATE_CONNECT_ATTEMPTS) ? target : undefined;
      if (isCandidate && !outcome.promoted && !retryCandidate) {
        await store.discard(target).catch(() => undefined);
        if (this.current) {
          const why = unreachable ? `could not reach its broker ${candidateFailures} times` : 'was refused';
          this.log.warn({ generation: target.id, previous: this.current.id, code: error.code }, `new configuration ${why} (${error.code}); returning to generation ${this.current.id}`);
        }
      }
      // A check that asked for a new session while this one was being lost: try that next.
      this.nextCandidate = outcome.candidate ?? retryCandidate;
      if (this.current && failure === 'transient' && outcome.stage === 'connect') {
        this.markReady(`offline: running on stored generation ${this.current.id}; broker unreachable (${error.code}), retrying`);
      } else if (this.reloadPending) {
        this.markReady(`reload done: ${outcome.stage} failed (${error.code}), retrying`);
      }
      if (failure === 'auth' && !this.nextCandidate) {
        // The broker refused the credentials: that client is ended (done), ask Bootstrap once for
        // fresh ones and connect with what comes back, a bounded number of times per hour.
        if (this.authBreaker.tryAcquire()) {
          this.log.warn({ ...error.toLog() }, `re-bootstrapping for fresh credentials: ${error.message}`);
          try {
            this.nextCandidate = await this.bootstrapCandidate(this.current);
            if (this.nextCandidate) continue;
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
    }
  }

  /** The stored configuration is used at once; Bootstrap is asked a (jittered) moment later. */
  private scheduleBootRefresh(delayMs: number): void {
    this.sleepFn(delayMs, this.abort.signal).then(
      () => void this.requestUpdate('boot', { scheduled: true }),
      () => undefined, // stopped first
    );
  }

  /** One Bootstrap request, with the outcome recorded for status.json. */
  private async fetchConfig(signal: AbortSignal): Promise<DeviceConfig> {
    const identity = this.identity as ResolvedIdentityPort;
    try {
      const fetched = await this.deps.fetchConfig(identity.externalId, this.externalKey as string, signal);
      this.lastBootstrap = { at: new Date(this.now()).toISOString(), ok: true };
      return fetched;
    } catch (err) {
      if (!this.abort.signal.aborted) {
        this.lastBootstrap = { at: new Date(this.now()).toISOString(), ok: false, code: toAgentError(err).code };
      }
      throw err;
    } finally {
      this.report();
    }
  }

  private writeGeneration(config: DeviceConfig): Promise<G> {
    return this.deps.store.writeCandidate(config, { externalId: (this.identity as ResolvedIdentityPort).externalId, fetchedAt: new Date(this.now()) });
  }

  /**
   * Fetches the configuration and writes it as a candidate generation. Returns undefined when it
   * equals `current` (nothing to apply). Throws the classified AgentError on failure.
   */
  private async bootstrapCandidate(current: G | undefined): Promise<G | undefined> {
    this.setState('bootstrapping');
    const fetched = await this.fetchConfig(this.abort.signal);
    this.checkStop();
    this.checkFailure = undefined; // Bootstrap answered: an earlier failed check is no longer news
    if (current && sameConfig(current.config, fetched)) return undefined;
    const gen = await this.writeGeneration(fetched);
    this.log.info(
      { generation: gen.id, channels: fetched.channels.length, family: fetched.family, files: Object.keys(gen.paths) },
      'bootstrap succeeded; configuration written as a candidate generation',
    );
    return gen;
  }

  /** Points `current` at gen, then tells the onApply command what changed. */
  private async promote(gen: G, changes?: ChangeKind[]): Promise<void> {
    const previous = this.current;
    await this.deps.store.promote(gen);
    this.current = gen;
    const applied: AppliedChange = { generation: gen.id, paths: gen.paths, changes: changes ?? changeKinds(previous?.config, gen.config) };
    this.report();
    if (this.deps.onApplied) {
      this.deps.onApplied(applied).catch((err: unknown) => {
        const error = toAgentError(err);
        this.log.warn(error.toLog(), `onApply failed: ${error.message}`);
      });
    }
  }

  // ---------------------------------------------------------------------------------------------
  // configuration checks

  private resolveDueCheck(outcome: UpdateOutcome): void {
    const due = this.dueCheck;
    this.dueCheck = undefined;
    for (const resolve of due?.waiters ?? []) resolve(outcome);
  }

  /** Starts the due check now if the agent is at a quiet point; otherwise the next quiet point does. */
  private startDueCheck(): void {
    if (!this.dueCheck || this.checkRunning) return;
    if (this.online) void this.runCheckOnline(this.online);
    else this.wakeBackoff?.(); // the loop runs it inline, then goes on waiting unless told otherwise
  }

  /** Aborts a check's Bootstrap request at its deadline, shorter than the check interval. */
  private checkDeadlineMs(): number {
    const { bootstrap, updates } = this.deps.config;
    if (updates.checkIntervalMs <= 0) return bootstrap.timeoutMs;
    return Math.max(1, Math.min(bootstrap.timeoutMs, Math.floor((updates.checkIntervalMs * (1 - DEFAULT_JITTER_FRACTION)) / 2)));
  }

  /** Fetches with the check's deadline. Resolves to the config, or rejects with the classified error. */
  private async fetchForCheck(): Promise<DeviceConfig> {
    const deadlineMs = this.checkDeadlineMs();
    const deadline = startDeadline(
      this.abort.signal,
      deadlineMs,
      () => new AgentError('BOOTSTRAP_TIMEOUT', `configuration check did not finish within its deadline of ${deadlineMs} ms`, { details: { deadlineMs } }),
    );
    try {
      return await this.fetchConfig(deadline.signal);
    } catch (err) {
      if (!this.abort.signal.aborted && deadline.signal.aborted) throw deadline.signal.reason;
      throw err;
    } finally {
      deadline.dispose();
    }
  }

  private checkFailed(due: DueCheck, err: unknown): UpdateOutcome {
    if (this.abort.signal.aborted) return { result: 'deferred', reason: 'the agent is stopping' };
    const error = toAgentError(err);
    this.log.warn(
      { stage: 'refresh', reasons: due.reasons, ...error.toLog() },
      `configuration check failed, staying on the current configuration: ${error.message}`,
    );
    return { result: 'failed', code: error.code, message: error.message };
  }

  /** After a check: answer its requests, report how it went, finish a reload. */
  private finishCheck(due: DueCheck, outcome: UpdateOutcome): void {
    for (const resolve of due.waiters) resolve(outcome);
    if (outcome.result !== 'deferred') {
      const failure = outcome.result === 'failed' ? outcome.code : undefined;
      if (failure !== this.checkFailure) {
        this.checkFailure = failure;
        if (this.online) this.setOnline(this.online);
      }
    }
    // A new session finishes the reload itself (online, or back on the previous generation).
    if (this.reloadPending && outcome.result !== 'reconnecting') {
      const online = this.online;
      this.markReady(online ? `online: ${online.granted.length}/${online.plan.subscriptions.length} channels` : `${this.stateValue}${this.stateDetail ? `: ${this.stateDetail}` : ''}`);
    }
  }

  /** A check while online: the session keeps running; a change is applied live or via a new session. */
  private async runCheckOnline(ctx: OnlineContext<G>): Promise<void> {
    const due = this.dueCheck as DueCheck;
    this.dueCheck = undefined;
    this.checkRunning = true;
    let outcome: UpdateOutcome | typeof REQUEUED;
    try {
      outcome = await this.checkOnline(ctx, due);
    } catch (err) {
      outcome = this.checkFailed(due, err);
    } finally {
      this.checkRunning = false;
    }
    if (outcome === REQUEUED) this.requeue(due); // the session ended during the check: the next quiet point asks again
    else this.finishCheck(due, outcome);
    this.startDueCheck();
  }

  private requeue(due: DueCheck): void {
    const later = this.dueCheck;
    this.dueCheck = {
      reasons: [...due.reasons, ...(later?.reasons ?? [])],
      explicit: due.explicit || (later?.explicit ?? false),
      waiters: [...due.waiters, ...(later?.waiters ?? [])],
    };
  }

  private async checkOnline(ctx: OnlineContext<G>, due: DueCheck): Promise<UpdateOutcome | typeof REQUEUED> {
    const fetched = await this.fetchForCheck();
    if (this.online !== ctx) return REQUEUED;
    const nextPlan = this.deps.planSession(fetched);
    const plan = planApply({ current: ctx.gen.config, next: fetched, currentPlan: ctx.plan, nextPlan });
    if (plan.kind === 'none') {
      this.log.info({ reasons: due.reasons }, 'configuration is up to date');
      return { result: 'unchanged' };
    }
    const gen = await this.writeGeneration(fetched);
    if (this.online !== ctx) {
      await this.deps.store.discard(gen).catch(() => undefined);
      return REQUEUED;
    }
    if (plan.kind === 'reconnect') {
      this.log.info(
        { generation: gen.id, changes: plan.changes, reconnectFor: plan.reasons },
        `configuration changed on the server (${plan.changes.join(', ')}); connecting with generation ${gen.id}`,
      );
      ctx.switchCandidate = gen;
      ctx.switchNow();
      return { result: 'reconnecting', generation: gen.id, changes: plan.changes };
    }
    await this.promote(gen, plan.changes);
    ctx.gen = gen;
    ctx.plan = nextPlan;
    await this.applySubscriptionChanges(ctx, plan.subscribe, plan.unsubscribe);
    this.log.info(
      { generation: gen.id, changes: plan.changes, subscribed: plan.subscribe.map((s) => s.channelId), unsubscribed: plan.unsubscribe.map((s) => s.channelId) },
      `configuration changed on the server (${plan.changes.join(', ')}); generation ${gen.id} applied without reconnecting`,
    );
    if (this.online === ctx) this.setOnline(ctx);
    return { result: 'applied', generation: gen.id, changes: plan.changes };
  }

  /** Channels removed: unsubscribed. Channels added: subscribed; refused ones join the retry. */
  private async applySubscriptionChanges(
    ctx: OnlineContext<G>,
    subscribe: { channelId: string; filter: string }[],
    unsubscribe: { channelId: string; filter: string }[],
  ): Promise<void> {
    const granted = new Set(ctx.granted);
    const live = unsubscribe.filter((s) => granted.has(s.channelId));
    for (const sub of unsubscribe) {
      ctx.pending.delete(sub.channelId);
      granted.delete(sub.channelId);
    }
    ctx.granted = ctx.granted.filter((id) => granted.has(id));
    if (live.length > 0) {
      await ctx.session.unsubscribe(live.map((s) => s.filter)).catch((err: unknown) => {
        const error = toAgentError(err);
        this.log.warn(error.toLog(), `could not unsubscribe from removed channels: ${error.message}`);
      });
    }
    if (subscribe.length > 0) {
      const results = await ctx.session
        .subscribe(subscribe.map((s) => s.filter), this.deps.config.mqtt.qos)
        .catch((): SubscriptionResult[] => subscribe.map((s) => ({ filter: s.filter, granted: false })));
      this.recordSubscriptions(ctx, subscribe, results);
    }
    if (subscribe.length + unsubscribe.length === 0) return;
    this.log.info(
      { generation: ctx.gen.id, subscribed: ctx.granted, refused: ctx.pending.size },
      `online: subscribed to ${ctx.granted.length} of ${ctx.plan.subscriptions.length} channels`,
    );
    if (ctx.pending.size > 0) void this.retrySubscriptions(ctx);
  }

  /**
   * A check while the loop waits out a backoff, run by the loop itself. Returns 'retry-now' when
   * the loop should stop waiting: a new configuration to try, or an explicit request while the agent
   * has none yet (its next attempt is the check).
   */
  private async runCheckWhileWaiting(): Promise<'retry-now' | 'continue'> {
    const due = this.dueCheck as DueCheck;
    this.dueCheck = undefined;
    if (!this.current && !this.nextCandidate) {
      const outcome: UpdateOutcome = { result: 'deferred', reason: due.explicit ? 'no configuration yet: bootstrapping now' : 'no configuration yet: the agent is bootstrapping' };
      this.finishCheck(due, outcome);
      return due.explicit ? 'retry-now' : 'continue';
    }
    this.checkRunning = true;
    let outcome: UpdateOutcome;
    let retryNow = false;
    try {
      const base = (this.nextCandidate ?? this.current) as G;
      const fetched = await this.fetchForCheck();
      if (sameConfig(base.config, fetched)) {
        this.log.info({ reasons: due.reasons }, 'configuration is up to date');
        outcome = { result: 'unchanged' };
      } else {
        const gen = await this.writeGeneration(fetched);
        if (this.nextCandidate) await this.deps.store.discard(this.nextCandidate).catch(() => undefined);
        this.nextCandidate = gen;
        const changes = changeKinds(base.config, fetched);
        this.log.info({ generation: gen.id, changes }, `configuration changed on the server (${changes.join(', ')}); trying generation ${gen.id} now`);
        outcome = { result: 'reconnecting', generation: gen.id, changes };
        retryNow = true;
      }
    } catch (err) {
      outcome = this.checkFailed(due, err);
    } finally {
      this.checkRunning = false;
    }
    this.finishCheck(due, outcome);
    // An explicit request (SIGHUP, `systemctl reload`) is someone saying "try now": the connection is
    // retried at once instead of when the backoff runs out, whatever the check found.
    if (!retryNow && due.explicit) this.log.info({ reasons: due.reasons }, 'explicit request: retrying the connection now');
    return retryNow || due.explicit ? 'retry-now' : 'continue';
  }

  // ---------------------------------------------------------------------------------------------
  // the session

  private setOnline(ctx: OnlineContext<G>): void {
    const note = this.checkFailure ? `; last configuration check failed (${this.checkFailure})` : '';
    this.setState('online', `generation ${ctx.gen.id}, ${ctx.granted.length}/${ctx.plan.subscriptions.length} channels${note}`);
  }

  private recordSubscriptions(ctx: OnlineContext<G>, subs: { channelId: string; filter: string }[], results: SubscriptionResult[]): void {
    for (const sub of subs) {
      const result = results.find((r) => r.filter === sub.filter);
      if (result?.granted) {
        if (!ctx.granted.includes(sub.channelId)) ctx.granted.push(sub.channelId);
        ctx.pending.delete(sub.channelId);
      } else {
        ctx.pending.set(sub.channelId, sub.filter);
        this.log.warn(
          { code: 'MQTT_SUBSCRIBE_REFUSED' satisfies ErrorCode, channel: sub.channelId, filter: sub.filter, reasonCode: result?.reasonCode },
          `broker refused the subscription to channel ${sub.channelId}; is the client connected to it?`,
        );
      }
    }
  }

  /**
   * Connects with one generation, promotes it if it is a candidate, subscribes, goes online, and
   * waits until the connection is lost or a newer candidate arrives. Throws StopRequested on stop.
   */
  private async runSession(gen: G, isCandidate: boolean): Promise<SessionOutcome<G>> {
    this.setState('connecting', `generation ${gen.id}`);
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
    this.broker = safeBroker(gen.config.mqtt.url);
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
      await this.promote(gen);
      this.log.info({ generation: gen.id }, 'broker accepted the configuration; generation promoted');
    }
    await this.persistIdentity();

    let switchNow: () => void = () => undefined;
    const switchPromise = new Promise<'switch'>((resolve) => {
      switchNow = () => resolve('switch');
    });
    const ctx: OnlineContext<G> = {
      gen,
      plan,
      session,
      granted: [],
      pending: new Map(),
      retrying: false,
      scope: new AbortController(),
      switchNow,
      onlineAtMonotonic: this.monotonicNow(),
    };
    const results = await session
      .subscribe(plan.subscriptions.map((s) => s.filter), this.deps.config.mqtt.qos)
      .catch((): SubscriptionResult[] => plan.subscriptions.map((s) => ({ filter: s.filter, granted: false })));
    this.recordSubscriptions(ctx, plan.subscriptions, results);
    await this.publishOnline(session, plan);
    this.connectedSince = new Date(this.now());
    this.online = ctx;
    this.log.info(
      { generation: gen.id, subscribed: ctx.granted, refused: ctx.pending.size, statusTopic: plan.statusTopic },
      `online: subscribed to ${ctx.granted.length} of ${plan.subscriptions.length} channels`,
    );
    this.setOnline(ctx);
    this.markReady(`online: ${ctx.granted.length}/${plan.subscriptions.length} channels`);

    if (ctx.pending.size > 0) void this.retrySubscriptions(ctx);
    void this.resetAttemptsWhenStable(ctx.scope.signal);
    this.startDueCheck();

    // Tied to the session's scope: one listener per session would otherwise pile up on the agent's signal.
    const abortPromise = new Promise<'stop'>((resolve) =>
      this.abort.signal.addEventListener('abort', () => resolve('stop'), { once: true, signal: ctx.scope.signal }),
    );
    const ended = await Promise.race([lostPromise, abortPromise, switchPromise]);
    this.online = undefined;
    this.connectedSince = undefined;
    ctx.scope.abort();
    if (ended === 'stop') throw new StopRequested();
    this.session = undefined;
    const candidate = ctx.switchCandidate;
    if (ended === 'switch' && candidate) {
      // Planned switch: say offline so nobody sees a stale online, then hand over to the candidate.
      await session
        .stop({ ...(plan.statusTopic ? { status: { topic: plan.statusTopic, payload: STATUS_OFFLINE } } : {}), timeoutMs: 2_000 })
        .catch(() => undefined);
      return { kind: 'switch', promoted: isCandidate, candidate };
    }
    const error = ended as AgentError;
    await session.stop({ timeoutMs: 1_000 }).catch(() => undefined);
    const lastedMs = this.monotonicNow() - ctx.onlineAtMonotonic;
    if (lastedMs < SHORT_SESSION_MS && !this.takeoverHinted) {
      this.takeoverHinted = true;
      this.log.warn(
        { code: error.code, lastedMs },
        'the broker dropped the connection right after it was accepted: is another device using the same client ID (a cloned SD card)?',
      );
    }
    // The backoff line that follows names the error: one line per lost connection, not three.
    return { kind: 'failed', promoted: isCandidate, stage: 'connection', error, ...(candidate ? { candidate } : {}) };
  }

  /** After a connection has stayed up a while, the next failure starts the backoff from the first step. */
  private async resetAttemptsWhenStable(signal: AbortSignal): Promise<void> {
    const stableMs = Math.min(this.deps.config.retry.maxDelayMs, 60_000);
    try {
      await this.sleepFn(stableMs, signal);
    } catch {
      return; // the session ended first: a flapping link keeps its backoff
    }
    if (!signal.aborted) await this.resetAttempts();
  }

  /**
   * The MQTT library does not retry a refused subscription; the operator may connect the channel at
   * any time, so keep asking on a slow backoff for as long as this session lives.
   */
  private async retrySubscriptions(ctx: OnlineContext<G>): Promise<void> {
    if (ctx.retrying) return;
    ctx.retrying = true;
    const signal = ctx.scope.signal;
    const retry = this.deps.config.retry;
    const policy = { initialDelayMs: retry.initialDelayMs * 5, maxDelayMs: retry.maxDelayMs };
    try {
      for (let attempt = 0; ctx.pending.size > 0; attempt++) {
        // An explicit check (SIGHUP, control channel) cuts the wait short: the operator may just have
        // connected the channel and wants to see it work now.
        const nap = new AbortController();
        const onEnd = (): void => nap.abort();
        signal.addEventListener('abort', onEnd, { once: true });
        ctx.wakeSubscriptionRetry = () => nap.abort();
        try {
          await this.sleepFn(Math.max(backoffDelay(policy, attempt, this.random), retry.initialDelayMs), nap.signal);
        } catch {
          if (signal.aborted) return; // session over
        } finally {
          signal.removeEventListener('abort', onEnd);
          ctx.wakeSubscriptionRetry = undefined;
        }
        if (signal.aborted) return;
        const pending = [...ctx.pending.entries()].map(([channelId, filter]) => ({ channelId, filter }));
        if (pending.length === 0) return;
        const results = await ctx.session.subscribe(pending.map((p) => p.filter), this.deps.config.mqtt.qos).catch((): SubscriptionResult[] => []);
        if (signal.aborted) return;
        const nowGranted = pending.filter((p) => results.find((r) => r.filter === p.filter)?.granted && ctx.pending.get(p.channelId) === p.filter);
        for (const sub of nowGranted) {
          ctx.pending.delete(sub.channelId);
          if (!ctx.granted.includes(sub.channelId)) ctx.granted.push(sub.channelId);
          this.log.info({ channel: sub.channelId, filter: sub.filter, attempt: attempt + 1 }, `subscription to channel ${sub.channelId} granted on retry`);
        }
        if (nowGranted.length > 0) {
          // A broker that refused the channel also dropped the online status published on it.
          await this.publishOnline(ctx.session, ctx.plan);
          this.log.info(
            { generation: ctx.gen.id, subscribed: ctx.granted, refused: ctx.pending.size },
            `online: subscribed to ${ctx.granted.length} of ${ctx.plan.subscriptions.length} channels`,
          );
          if (this.online === ctx) this.setOnline(ctx);
        }
      }
    } finally {
      ctx.retrying = false;
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
        persistedAt: new Date(this.now()).toISOString(),
      });
      identity.source = 'persisted';
    } catch (err) {
      const error = toAgentError(err);
      this.log.warn(error.toLog(), `could not persist the external ID (${error.message}); will try again after the next success`);
    }
  }

  private dispatch(message: IncomingMessage): void {
    // The channel filter covers the agent's own retained status: that is not a message for the device.
    if (this.statusTopic === message.topic) return;
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

/** Marks a check whose session ended under it: asked again at the next quiet point. */
const REQUEUED = Symbol('requeued');

/** The broker URL without user info, for status.json. */
function safeBroker(url: string): string | null {
  try {
    return redactBrokerUrl(new URL(url));
  } catch {
    return null;
  }
}
