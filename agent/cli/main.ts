#!/usr/bin/env node
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { loadConfig, ConfigError, DEFAULT_CONFIG_PATH, envBindings } from '../config/load.js';
import { createLogger } from '../logging/logger.js';
import { isAgentError, toAgentError } from '../errors/agent-error.js';
import { classifyFailure } from '../lifecycle/failure-policy.js';

/** Exit codes (documented in the README): sysexits.h where one fits. */
export const EXIT = { ok: 0, failure: 1, usage: 64, config: 78 } as const;

const HELP = `mg-device-agent: bootstrap a device from Magistrala and keep it connected

Usage: mg-device-agent <command> [options]

Commands:
  run          Run the agent (the long-running systemd service)
  identity     Print the external ID the agent would use and why
  dev-stack    Run the development Bootstrap service + MQTT broker (source checkouts only)

Options:
  --config PATH   configuration file (default ${DEFAULT_CONFIG_PATH})
  --help, -h      help for a command
  --version, -v   print the version

Exit codes: 0 ok, 1 failure, 64 usage error, 78 configuration error (EX_CONFIG).
Run "mg-device-agent <command> --help" for a command's options.`;

const RUN_HELP = `Usage: mg-device-agent run [--config PATH]

Runs the agent: identity, bootstrap, write to disk, MQTT, and stays up. Configuration: defaults,
then the JSON file, then MG_AGENT_* variables. Signals: SIGTERM/SIGINT stop (offline status,
disconnect, exit 0); SIGHUP checks Bootstrap for a new configuration.

Environment variables:
${envBindings()
  .map((b) => `  ${b.variable.padEnd(40)} ${b.section}.${b.key}`)
  .join('\n')}
  MG_AGENT_BOOTSTRAP_ENCRYPT_KEY           the secure-bootstrap key itself (removed from the environment once read)`;

const IDENTITY_HELP = `Usage: mg-device-agent identity [--config PATH]

Prints the external ID the agent would use, where it came from (configuration, persisted after the
first bootstrap, or an interface's MAC), the chosen interface, and why every other interface was
rejected. Reads nothing from the network and writes nothing.`;

function version(): string {
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

function fail(message: string, code: number): number {
  process.stderr.write(`mg-device-agent: ${message}\n`);
  return code;
}

function configFailure(err: unknown): number {
  if (err instanceof ConfigError) {
    const lines = err.problems.map((p) => `  - ${p.path}: ${p.message}`).join('\n');
    process.stderr.write(`mg-device-agent: invalid configuration:\n${lines}\n`);
    return EXIT.config;
  }
  const error = toAgentError(err);
  return fail(`${error.code}: ${error.message}`, classifyFailure(error.code) === 'fatal' ? EXIT.config : EXIT.failure);
}

async function runCommand(configPath: string | undefined): Promise<number> {
  let loaded;
  try {
    loaded = loadConfig(configPath ? { configPath } : {});
  } catch (err) {
    return configFailure(err);
  }
  const logger = createLogger({ level: loaded.config.log.level });
  logger.info({ version: version(), config: loaded.file ?? '(defaults and environment)', pid: process.pid }, 'mg-device-agent starting');
  const { buildAgent } = await import('../composition-root.js');
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
  process.on('SIGHUP', () => agent.runtime.requestUpdate('SIGHUP'));

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

async function identityCommand(configPath: string | undefined): Promise<number> {
  let loaded;
  try {
    loaded = loadConfig(configPath ? { configPath } : {});
  } catch (err) {
    return configFailure(err);
  }
  const logger = createLogger({ level: 'warn' });
  const { resolveIdentity } = await import('../identity/resolve-identity.js');
  const { listInterfaces } = await import('../identity/list-interfaces.js');
  const { chooseInterface } = await import('../identity/choose-interface.js');
  const { GenerationStore } = await import('../storage/generation-store.js');
  const store = new GenerationStore({ dir: loaded.config.state.dir, keepGenerations: loaded.config.state.keepGenerations, logger });
  try {
    const interfaces = await listInterfaces();
    const identity = await resolveIdentity({
      config: loaded.config.identity,
      listInterfaces: async () => interfaces,
      persisted: { load: () => store.loadIdentity() },
      logger,
    });
    process.stdout.write(`external ID: ${identity.externalId}\nsource: ${identity.source}\n`);
    if (identity.interfaceName) process.stdout.write(`interface: ${identity.interfaceName} (${identity.mac ?? '?'})\n`);
    let rejected = identity.rejected;
    if (!rejected) {
      try {
        rejected = chooseInterface(interfaces, loaded.config.identity.interface ? { preferred: loaded.config.identity.interface } : {}).rejected;
      } catch {
        rejected = [];
      }
    }
    for (const r of rejected) process.stdout.write(`rejected: ${r.name}: ${r.reason}\n`);
    return EXIT.ok;
  } catch (err) {
    const error = toAgentError(err);
    return fail(`${error.code}: ${error.message}`, EXIT.failure);
  }
}

export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (command === undefined || command === '--help' || command === '-h' || command === 'help') {
    process.stdout.write(HELP + '\n');
    return command === undefined ? EXIT.usage : EXIT.ok;
  }
  if (command === '--version' || command === '-v' || command === 'version') {
    process.stdout.write(version() + '\n');
    return EXIT.ok;
  }
  const commandHelp: Record<string, string> = { run: RUN_HELP, identity: IDENTITY_HELP };
  if (command === 'dev-stack') {
    let devstack;
    try {
      devstack = await import('../devstack/main.js');
    } catch {
      return fail('dev-stack is only available in a source checkout (the release build leaves it out)', EXIT.usage);
    }
    return devstack.runDevStackCommand(rest);
  }
  if (!(command in commandHelp)) return fail(`unknown command "${command}"; see mg-device-agent --help`, EXIT.usage);

  let values;
  try {
    ({ values } = parseArgs({
      args: rest,
      options: { config: { type: 'string' }, help: { type: 'boolean', short: 'h' } },
      strict: true,
    }));
  } catch (err) {
    return fail(`${(err as Error).message}; see mg-device-agent ${command} --help`, EXIT.usage);
  }
  if (values.help) {
    process.stdout.write((commandHelp[command] as string) + '\n');
    return EXIT.ok;
  }
  if (command === 'run') return runCommand(values.config);
  return identityCommand(values.config);
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(`mg-device-agent: ${isAgentError(err) ? `${err.code}: ${err.message}` : String(err)}\n`);
    process.exitCode = EXIT.failure;
  },
);
