import { parseArgs } from 'node:util';
import { CONFIG_OPTION, EXIT, HELP_OPTION, fail, parseCommand, print } from '../args.js';

export const HELP = `Usage: mg-device-agent status [--config PATH] [--json]

Shows what the agent last reported about itself (<state.dir>/status.json) and what is on disk:
whether it is running (from the recorded pid), its state and since when, the configuration
generation in use, the last bootstrap result and time, the broker connection, subscribed and refused
channels, and certificate expiry. Works when the agent is not running. Reads only; prints no secret.

Options:
  --config PATH   configuration file (default /etc/mg-device-agent/agent.json)
  --json          the same facts as one JSON object, for scripts and monitoring

Exit codes: 0 status shown, 1 nothing to show (the agent never ran here) or the state directory is
unreadable, 64 usage error, 78 configuration error.`;

export async function execute(args: string[]): Promise<number> {
  const parsed = parseCommand('status', HELP, () =>
    parseArgs({ args, options: { ...CONFIG_OPTION, ...HELP_OPTION, json: { type: 'boolean' } }, strict: true }),
  );
  if (typeof parsed === 'number') return parsed;
  const { loadConfigOrExit } = await import('../configured.js');
  const loaded = loadConfigOrExit(parsed.values.config);
  if (typeof loaded === 'number') return loaded;
  const { collectStatus, formatStatus } = await import('../../diagnostics/status-report.js');
  const { toAgentError } = await import('../../errors/agent-error.js');
  let report;
  try {
    report = await collectStatus(loaded.config.state.dir, loaded.config.state.keepGenerations, new Date());
  } catch (err) {
    const error = toAgentError(err);
    return fail(`cannot read the state directory ${loaded.config.state.dir}: ${error.code}: ${error.message}`, EXIT.failure);
  }
  if (parsed.values.json) print(JSON.stringify(report, null, 2));
  else print(formatStatus(report));
  return report.status === null && report.generation === null ? EXIT.failure : EXIT.ok;
}
