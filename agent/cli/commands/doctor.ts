import { parseArgs } from 'node:util';
import { CONFIG_OPTION, EXIT, HELP_OPTION, parseCommand, print } from '../args.js';

export const HELP = `Usage: mg-device-agent doctor [--config PATH] [--json]

Runs the checks a support engineer would run on a failing device, in order, one line each:
  PASS|FAIL|WARN <check>: <detail>     (FAIL and WARN lines are followed by a hint)

  configuration, external key file (present, mode 0600/0400), encryption key (secure mode),
  control secret file (if configured), clock synchronised (timedatectl, systemd-timesyncd) and
  plausible (not before this agent's build date), identity, Bootstrap DNS and TCP, bootstrap
  authentication (a real fetch, nothing is saved), the stored configuration (intact, same as the
  server), certificate validity and expiry (WARN under 30 days) and key match, broker DNS and TCP,
  broker login and subscribe permission per channel (its own client ID and a clean session, so the
  running agent is not disturbed; nothing is published), owner and modes of the state directory,
  free disk space.

Writes nothing and prints no secret. Run it as root (or the agent's user) so it can read the keys.

Options:
  --config PATH   configuration file (default /etc/mg-device-agent/agent.json)
  --json          one JSON array of {status, name, detail, hint} instead of lines

Exit codes: 0 every check passed (WARN allowed), 1 at least one FAIL, 64 usage error.`;

export async function execute(args: string[]): Promise<number> {
  const parsed = parseCommand('doctor', HELP, () =>
    parseArgs({ args, options: { ...CONFIG_OPTION, ...HELP_OPTION, json: { type: 'boolean' } }, strict: true }),
  );
  if (typeof parsed === 'number') return parsed;
  const { formatCheck, doctorExitCode, failure } = await import('../../diagnostics/checks.js');
  const { loadConfig, ConfigError } = await import('../../config/load.js');
  const { toAgentError } = await import('../../errors/agent-error.js');
  const json = parsed.values.json === true;
  const show = (result: import('../../diagnostics/checks.js').CheckResult) => {
    if (!json) print(formatCheck(result));
  };

  let config;
  try {
    config = loadConfig(parsed.values.config ? { configPath: parsed.values.config } : {}).config;
  } catch (err) {
    const detail =
      err instanceof ConfigError ? err.problems.map((p) => `${p.path}: ${p.message}`).join('; ') : `${toAgentError(err).code}: ${toAgentError(err).message}`;
    const result = failure('configuration', detail, 'fix the configuration file (see config/agent.example.json); nothing else can be checked before');
    show(result);
    if (json) print(JSON.stringify([result], null, 2));
    return EXIT.failure;
  }
  const { runDoctor } = await import('../../diagnostics/doctor.js');
  const results = await runDoctor({ config, env: process.env, emit: show });
  if (json) print(JSON.stringify(results, null, 2));
  else {
    const failed = results.filter((r) => r.status === 'FAIL').length;
    const warned = results.filter((r) => r.status === 'WARN').length;
    print(`\n${results.length} checks: ${results.length - failed - warned} passed, ${warned} warned, ${failed} failed`);
  }
  return doctorExitCode(results);
}
