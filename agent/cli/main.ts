#!/usr/bin/env node
import { isAgentError } from '../errors/agent-error.js';
import { EXIT, EXIT_CODES_HELP, fail, print, version } from './args.js';

/*
 * The entry point only dispatches: each command lives in commands/<name>.ts and is imported when it
 * runs, so `--help` and `--version` load nothing heavy and `run` loads only what it uses.
 */

interface CommandModule {
  execute(args: string[]): Promise<number>;
}

const COMMANDS: Record<string, { summary: string; load: () => Promise<CommandModule> }> = {
  run: { summary: 'Run the agent (the long-running systemd service)', load: () => import('./commands/run.js') },
  identity: { summary: 'Print the external ID the agent would use and why', load: () => import('./commands/identity.js') },
  bootstrap: { summary: 'Fetch the configuration now (--once), or show what would change (--dry-run)', load: () => import('./commands/bootstrap.js') },
  status: { summary: "Show the agent's state, generation, connection, channels, certificate expiry", load: () => import('./commands/status.js') },
  doctor: { summary: 'Check everything a failing device depends on, one PASS/FAIL line each', load: () => import('./commands/doctor.js') },
  provision: { summary: "Operator: create a device's bootstrap config and write its credential files", load: () => import('./commands/provision.js') },
  'encrypt-key': { summary: 'Operator: print the secure-bootstrap token for an external key (for curl)', load: () => import('./commands/encrypt-key.js') },
};

const HELP = `mg-device-agent: bootstrap a device from Magistrala and keep it connected

Usage: mg-device-agent <command> [options]

Commands:
${Object.entries(COMMANDS)
  .map(([name, c]) => `  ${name.padEnd(12)} ${c.summary}`)
  .join('\n')}
  dev-stack    Run the development Bootstrap service + MQTT broker (source checkouts only)

Options:
  --config PATH   configuration file (default /etc/mg-device-agent/agent.json)
  --help, -h      help for a command
  --version, -v   print the version

${EXIT_CODES_HELP} doctor: 0 every check passed (warnings allowed), 1 a check failed.
Run "mg-device-agent <command> --help" for a command's options.`;

export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  // `mg-device-agent doctor | head`: a reader that went away is not an error worth a stack trace.
  // Not for `run`: under systemd a lost journal stream must stay a failure that gets it restarted.
  if (command !== 'run') {
    for (const stream of [process.stdout, process.stderr]) {
      stream.on('error', (err: NodeJS.ErrnoException) => {
        if (err.code === 'EPIPE') process.exit(process.exitCode ?? EXIT.ok);
        throw err;
      });
    }
  }
  if (command === undefined || command === '--help' || command === '-h' || command === 'help') {
    print(HELP);
    return command === undefined ? EXIT.usage : EXIT.ok;
  }
  if (command === '--version' || command === '-v' || command === 'version') {
    print(version());
    return EXIT.ok;
  }
  if (command === 'dev-stack') {
    let devstack;
    try {
      devstack = await import('../devstack/main.js');
    } catch {
      return fail('dev-stack is only available in a source checkout (the release build leaves it out)', EXIT.usage);
    }
    return devstack.runDevStackCommand(rest);
  }
  const entry = Object.hasOwn(COMMANDS, command) ? COMMANDS[command] : undefined;
  if (!entry) return fail(`unknown command "${command}"; see mg-device-agent --help`, EXIT.usage);
  return (await entry.load()).execute(rest);
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
