import { parseArgs } from 'node:util';
import { CONFIG_OPTION, EXIT, EXIT_CODES_HELP, HELP_OPTION, fail, parseCommand, print } from '../args.js';

export const HELP = `Usage: mg-device-agent identity [--config PATH]

Prints the external ID the agent would use, where it came from (configuration, persisted after the
first bootstrap, or an interface's MAC), the chosen interface, and why every other interface was
rejected. Reads nothing from the network and writes nothing.

${EXIT_CODES_HELP}`;

export async function execute(args: string[]): Promise<number> {
  const parsed = parseCommand('identity', HELP, () => parseArgs({ args, options: { ...CONFIG_OPTION, ...HELP_OPTION }, strict: true }));
  if (typeof parsed === 'number') return parsed;
  const { loadConfigOrExit } = await import('../configured.js');
  const loaded = loadConfigOrExit(parsed.values.config);
  if (typeof loaded === 'number') return loaded;

  const { createLogger } = await import('../../logging/logger.js');
  const { toAgentError } = await import('../../errors/agent-error.js');
  const { resolveIdentity } = await import('../../identity/resolve-identity.js');
  const { listInterfaces } = await import('../../identity/list-interfaces.js');
  const { chooseInterface } = await import('../../identity/choose-interface.js');
  const { GenerationStore } = await import('../../storage/generation-store.js');
  const logger = createLogger({ level: 'warn' });
  const store = new GenerationStore({ dir: loaded.config.state.dir, keepGenerations: loaded.config.state.keepGenerations, logger });
  try {
    const interfaces = await listInterfaces();
    const identity = await resolveIdentity({
      config: loaded.config.identity,
      listInterfaces: async () => interfaces,
      persisted: { load: () => store.loadIdentity() },
      logger,
    });
    print(`external ID: ${identity.externalId}\nsource: ${identity.source}`);
    if (identity.interfaceName) print(`interface: ${identity.interfaceName} (${identity.mac ?? '?'})`);
    let rejected = identity.rejected;
    if (!rejected) {
      // A configured or persisted ID skips the interface choice; show what it would have been anyway.
      try {
        rejected = chooseInterface(interfaces, loaded.config.identity.interface ? { preferred: loaded.config.identity.interface } : {}).rejected;
      } catch {
        rejected = [];
      }
    }
    for (const r of rejected) print(`rejected: ${r.name}: ${r.reason}`);
    return EXIT.ok;
  } catch (err) {
    const error = toAgentError(err);
    return fail(`${error.code}: ${error.message}`, EXIT.failure);
  }
}
