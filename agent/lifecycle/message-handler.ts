import type { Logger } from 'pino';
import type { MessageHandler } from './agent-runtime.js';

export type { MessageHandler } from './agent-runtime.js';

/**
 * The default handler: records that a message arrived.
 * Later work (remote control, commands) plugs its own handlers in through the composition root.
 */
export class LoggingMessageHandler implements MessageHandler {
  constructor(private readonly logger: Logger) {}

  handle(message: { topic: string; channelId: string; subtopic?: string; payload: Buffer }): void {
    // Topic and size only: payloads may carry commands or secrets meant for the application.
    this.logger.info(
      { topic: message.topic, channel: message.channelId, subtopic: message.subtopic, bytes: message.payload.length },
      'message received',
    );
  }
}
