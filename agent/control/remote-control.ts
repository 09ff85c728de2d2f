import type { AgentConfig } from '../config/schema.js';
import type { Logger } from '../logging/logger.js';
import type { DeviceChannel, DeviceConfig } from '../bootstrap/model.js';
import type { MessageHandler } from '../lifecycle/agent-runtime.js';
import { toAgentError } from '../errors/agent-error.js';
import { encodeControlResponse, errorValue, parseControlRequest, responseTopicFor, type ControlRequest } from './senml.js';
import { RateWindow, pickControlChannel, tokenMatches } from './guards.js';
import { redactedAgentConfig, redactedDeviceConfig } from '../diagnostics/redact.js';

/*
 * Remote control over the control channel: requests on its `req` subtopic, answers on `res`, in
 * upstream's SenML format (senml.ts). A fixed set of read-mostly commands, each a function of ours:
 * nothing a request says is ever run as a program. Everything else on the channels goes to the
 * fallback handler unchanged.
 */

type IncomingChannelMessage = Parameters<MessageHandler['handle']>[0];

/** What remote control needs from the running agent. */
export interface ControlTarget {
  publish(topic: string, payload: string, options: { qos: 0 | 1; retain: boolean }): Promise<void>;
  requestUpdate(reason: string): void;
  /** The runtime's own status snapshot (no secrets in it). */
  status(): object;
  /** The generation in use now: a configuration check may have replaced it without a new session. */
  generation(): ControlGeneration | undefined;
}

/** The generation the agent is connected with, as remote control sees it. */
export interface ControlGeneration {
  id: number;
  config: DeviceConfig;
  fetchedAt: Date;
}

export interface RemoteControlOptions {
  /** The agent's configuration: `control.*` settings, and shown (redacted) by `config view`. */
  config: AgentConfig;
  /** The command secret's bytes (control.secretFile); every request must then carry it as a "token" record. */
  secret?: Buffer;
  target: ControlTarget;
  fallback: MessageHandler;
  logger: Logger;
  now?: () => number;
}

/** A `bootstrap` request within this long of the previous accepted one is refused: the server is not ours to hammer. */
export const BOOTSTRAP_COOLDOWN_MS = 30_000;

export const COMMANDS = [
  { name: 'ping', usage: 'ping', description: 'answers "pong"' },
  { name: 'status', usage: 'status', description: 'state, generation, channels (JSON, no secrets)' },
  { name: 'bootstrap', usage: 'bootstrap', description: 'checks Bootstrap for a new configuration now; answers "accepted"' },
  { name: 'config', usage: 'config,view', description: 'the configuration in use (JSON, secrets redacted)' },
  { name: 'help', usage: 'help', description: 'this list' },
] as const;

export type CommandOutcome = { ok: true; value: string } | { ok: false; reason: string };

export interface CommandContext {
  target: ControlTarget;
  config: AgentConfig;
  generation: ControlGeneration | undefined;
  now: number;
  lastBootstrapAt: number | undefined;
}

/** What a well-formed, authorised request gets. The only side effect is `bootstrap`'s requestUpdate. */
export function executeCommand(request: ControlRequest, context: CommandContext): CommandOutcome {
  switch (request.command) {
    case 'ping':
      return { ok: true, value: 'pong' };
    case 'status':
      return { ok: true, value: JSON.stringify({ ...context.target.status(), fetchedAt: context.generation?.fetchedAt.toISOString() ?? null }) };
    case 'bootstrap': {
      const since = context.lastBootstrapAt === undefined ? Infinity : context.now - context.lastBootstrapAt;
      if (since < BOOTSTRAP_COOLDOWN_MS) {
        return { ok: false, reason: `a bootstrap check was requested ${Math.round(since / 1000)} s ago; try again in ${Math.ceil((BOOTSTRAP_COOLDOWN_MS - since) / 1000)} s` };
      }
      context.target.requestUpdate('control');
      return { ok: true, value: 'accepted' };
    }
    case 'config': {
      // Upstream writes "config" with "view" as the first comma-separated argument.
      const sub = request.args.split(',')[0]?.trim() ?? '';
      if (sub !== 'view') return { ok: false, reason: `config supports only "view" (got "${sub.slice(0, 32)}")` };
      return {
        ok: true,
        value: JSON.stringify({
          generation: context.generation?.id ?? null,
          agent: redactedAgentConfig(context.config),
          device: context.generation ? redactedDeviceConfig(context.generation.config) : null,
        }),
      };
    }
    case 'help':
      return { ok: true, value: JSON.stringify(COMMANDS) };
    default:
      return { ok: false, reason: `unknown command "${request.command}"; known: ${COMMANDS.map((c) => c.name).join(', ')}` };
  }
}

export class RemoteControl implements MessageHandler {
  private readonly options: RemoteControlOptions;
  private readonly log: Logger;
  private readonly now: () => number;
  private readonly window: RateWindow;
  private generation: ControlGeneration | undefined;
  private controlChannel: DeviceChannel | undefined;
  private announced: string | undefined;
  private lastBootstrapAt: number | undefined;
  private dropped = 0;
  private droppedLoggedAt: number | undefined;

  constructor(options: RemoteControlOptions) {
    this.options = options;
    this.log = options.logger.child({ component: 'control' });
    this.now = options.now ?? Date.now;
    this.window = new RateWindow(options.config.control.maxRequestsPerMinute);
  }

  /** Called with each generation the agent connects with (and seen on each message): the control channel may differ between them. */
  useGeneration(generation: ControlGeneration): void {
    const settings = this.options.config.control;
    if (!settings.enabled) return;
    this.generation = generation;
    this.controlChannel = pickControlChannel(generation.config.channels, settings.channel);
    const announcement = this.controlChannel?.id ?? '(none)';
    if (announcement === this.announced) return;
    this.announced = announcement;
    if (this.controlChannel) {
      this.log.info(
        { channel: this.controlChannel.id, channelName: this.controlChannel.name, secretRequired: this.options.secret !== undefined },
        `remote control on channel ${this.controlChannel.id}: requests on its "req" subtopic, answers on "res"`,
      );
    } else if (settings.channel !== undefined) {
      this.log.warn({ controlChannel: settings.channel }, 'control.channel names no channel of this device; remote control is off');
    } else {
      this.log.info({}, 'no control channel (none is named or typed "control" or "commands", and control.channel is not set); remote control is off');
    }
  }

  handle(message: IncomingChannelMessage): void | Promise<void> {
    const current = this.options.target.generation();
    if (current !== undefined && current.id !== this.generation?.id) this.useGeneration(current);
    if (this.controlChannel === undefined || message.channelId !== this.controlChannel.id || message.subtopic !== 'req') {
      return this.options.fallback.handle(message);
    }
    return this.answer(message);
  }

  private async answer(message: IncomingChannelMessage): Promise<void> {
    const now = this.now();
    if (!this.window.tryAcquire(now)) {
      this.dropped++;
      if (this.droppedLoggedAt === undefined || now - this.droppedLoggedAt >= 60_000) {
        const limit = this.options.config.control.maxRequestsPerMinute;
        this.log.warn({ dropped: this.dropped, limit }, `control requests over the limit of ${limit} per minute are dropped (${this.dropped} so far)`);
        this.droppedLoggedAt = now;
      }
      return;
    }
    const parsed = parseControlRequest(message.payload);
    if (!parsed.ok) {
      this.log.warn({ topic: message.topic, requestId: parsed.id, bytes: message.payload.length }, `malformed control request: ${parsed.reason}`);
      // Without an ID there is nobody to answer: the log line is all there is.
      if (parsed.id !== undefined) await this.reply(message.topic, parsed.id, parsed.command ?? 'error', errorValue(`malformed request: ${parsed.reason}`));
      return;
    }
    const { request } = parsed;
    if (this.options.secret !== undefined && !tokenMatches(this.options.secret, request.token)) {
      const fields = { requestId: request.id, command: request.command, tokenPresent: request.token !== undefined };
      this.log.warn(fields, 'control request refused: missing or wrong command secret');
      await this.reply(message.topic, request.id, request.command, errorValue('unauthorized'));
      return;
    }
    const outcome = executeCommand(request, {
      target: this.options.target,
      config: this.options.config,
      generation: this.generation,
      now,
      lastBootstrapAt: this.lastBootstrapAt,
    });
    if (request.command === 'bootstrap' && outcome.ok) this.lastBootstrapAt = now;
    this.log.info(
      { topic: message.topic, bytes: message.payload.length, requestId: request.id, command: request.command, ok: outcome.ok },
      `control request ${request.command}: ${outcome.ok ? 'answered' : outcome.reason}`,
    );
    await this.reply(message.topic, request.id, request.command, outcome.ok ? outcome.value : errorValue(outcome.reason));
  }

  private async reply(requestTopic: string, id: string, command: string, value: string): Promise<void> {
    const topic = responseTopicFor(requestTopic);
    try {
      await this.options.target.publish(topic, encodeControlResponse(id, command, value, this.now()), { qos: 1, retain: false });
    } catch (err) {
      const error = toAgentError(err);
      this.log.warn({ ...error.toLog(), requestId: id, topic }, `could not answer control request ${id}: ${error.message}`);
    }
  }
}
