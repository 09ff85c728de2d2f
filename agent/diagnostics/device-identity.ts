import type { AgentConfig } from '../config/schema.js';
import type { Logger } from '../logging/logger.js';
import { resolveIdentity, type ResolvedIdentity } from '../identity/resolve-identity.js';
import { listInterfaces } from '../identity/list-interfaces.js';
import { GenerationStore } from '../storage/generation-store.js';
import { readOnlyFs } from './state-reader.js';

/** The external ID exactly as `run` would resolve it (configured, persisted, or from a MAC), reading only. */
export async function resolveDeviceIdentity(config: AgentConfig, logger: Logger): Promise<ResolvedIdentity> {
  const store = new GenerationStore({ dir: config.state.dir, keepGenerations: config.state.keepGenerations, logger, fs: readOnlyFs });
  return resolveIdentity({
    config: config.identity,
    listInterfaces: () => listInterfaces(),
    persisted: { load: () => store.loadIdentity() },
    logger,
  });
}
