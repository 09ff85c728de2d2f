import { EXIT, EXIT_CODES_HELP, parseOrUsage, print, version, CONFIG_OPTION, HELP_OPTION } from '../args.js';
import { parseArgs } from 'node:util';
import type { ErrorCode } from '../../errors/agent-error.js';

/** `run`: the long-running systemd service. Its help is built lazily (it lists every variable of the schema). */

async function runHelp(): Promise<string> {
  const { envBindings } = await import('../../config/load.js');
  return `Usage: mg-device-agent run [--config PATH]

Runs the agent: identity, bootstrap, write to disk, MQTT, and stays up. Configuration: defaults,
then the JSON file, then MG_AGENT_* variables. Signals: SIGTERM/SIGINT stop (offline status,
disconnect, exit 0); SIGHUP checks Bootstrap for a new configuration.

Environment variables:
${envBindings()
  .map((b) => `  ${b.variable.padEnd(40)} ${b.section}.${b.key}`)
  .join('\n')}
  MG_AGENT_BOOTSTRAP_ENCRYPT_KEY           the secure-bootstrap key itself (removed from the environment once read)

${EXIT_CODES_HELP}`;
}

export async function execute(args: string[]): Promise<number> {
  const parsed = parseOrUsage('run', () => parseArgs({ args, options: { ...CONFIG_OPTION, ...HELP_OPTION }, strict: true }));
  if (typeof parsed === 'number') return parsed;
  if (parsed.values.help) {
    print(await runHelp());
    return EXIT.ok;
  }
  return runCommand(parsed.values.config);
}

async function runCommand(configPath: string | undefined): Promise<number> {
  const { loadConfig } = await import('../../config/load.js');
  const { createLogger } = await import('../../logging/logger.js');
  const { toAgentError } = await import('../../errors/agent-error.js');
  const { configFailure } = await import('../configured.js');
  let loaded;
  try {
    loaded = loadConfig(configPath ? { configPath } : {});
  } catch (err) {
    return configFailure(err);
  }
  const logger = createLogger({ level: loaded.config.log.level });
  logger.info({ version: version(), config: loaded.file ?? '(defaults and environment)', pid: process.pid }, 'mg-device-agent starting');
  const { runningAgentPid } = await import('../../diagnostics/state-reader.js');
  const otherPid = await runningAgentPid(loaded.config.state.dir);
  if (otherPid !== undefined) {
    logger.fatal(
      { code: 'STORAGE_STATE_DIR_IN_USE' satisfies ErrorCode, otherPid, stateDir: loaded.config.state.dir },
      `cannot start: another agent (pid ${otherPid}) is running on ${loaded.config.state.dir}; two would fight over its files and ` +
        'its client ID. Stop that one first (systemctl stop mg-device-agent), or give this one its own state.dir',
    );
    return EXIT.failure;
  }
  const { buildAgent } = await import('../../composition-root.js');
  let agent;
  try {
    agent = await buildAgent({ config: loaded.config, logger });
  } catch (err) {
    const error = toAgentError(err);
    logger.fatal(error.toLog(), `cannot start: ${error.message}`);
    return configFailure(err);
  }

  let stopping: Promise<void> | undefined;
  const stop = (signal: string): Promise<void> => {
    if (!stopping) {
      logger.info({ signal }, 'stopping');
      // Hard deadline: systemd's stop timeout must never be the thing that ends us.
      setTimeout(() => {
        logger.error({}, 'graceful stop took too long; exiting');
        process.exit(EXIT.ok);
      }, 4_800).unref();
      stopping = agent.stop();
    }
    return stopping;
  };
  const onSignal = (signal: NodeJS.Signals) => void stop(signal);
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  // RELOADING=1 now, READY=1 once the check is done (see agent/lifecycle/agent-runtime.ts).
  process.on('SIGHUP', () => void agent.runtime.requestUpdate('SIGHUP', { reload: true }));

  agent.start();
  try {
    await agent.runtime.done();
  } catch (err) {
    await stop('fatal');
    return configFailure(err);
  }
  await stop('done');
  logger.info({}, 'stopped');
  return EXIT.ok;
}
