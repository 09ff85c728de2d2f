import { join } from 'node:path';
import { z } from 'zod';

/**
 * `<stateDir>/status.json`: what the running agent last said about itself, for `mg-device-agent
 * status` and support engineers. The running agent writes it (atomically, on every state change);
 * readers treat it as a hint: it survives a crash or a reboot, so its `pid` may be long gone.
 * It never holds a secret: IDs, URLs without user info, codes and times only.
 */
export const STATUS_FILE_NAME = 'status.json';

export function statusFilePath(stateDir: string): string {
  return join(stateDir, STATUS_FILE_NAME);
}

const isoTime = z.string().min(1);

// Loose objects: a field a newer agent adds must not make an older CLI refuse the whole file.
export const StatusFileSchema = z.looseObject({
  pid: z.number().int().positive(),
  /** The runtime state: idle, resolving-identity, bootstrapping, connecting, online, waiting, stopping, stopped. */
  state: z.string().min(1),
  detail: z.string().nullable().optional(),
  /** When the agent entered `state`. */
  since: isoTime,
  /** The generation in use (the `current` one once promoted). */
  generation: z.number().int().positive().nullable().optional(),
  externalId: z.string().nullable().optional(),
  lastBootstrap: z
    .looseObject({
      at: isoTime,
      ok: z.boolean(),
      /** The stable error code when ok is false. */
      code: z.string().optional(),
    })
    .nullable()
    .optional(),
  connection: z
    .looseObject({
      /** Broker URL without user info. */
      broker: z.string().nullable().optional(),
      connected: z.boolean(),
      since: isoTime.nullable().optional(),
    })
    .nullable()
    .optional(),
  channels: z
    .looseObject({
      subscribed: z.array(z.string()),
      refused: z.array(z.string()),
    })
    .nullable()
    .optional(),
  updatedAt: isoTime,
});

export type StatusFile = z.infer<typeof StatusFileSchema>;
