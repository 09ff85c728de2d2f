import { parseArgs } from 'node:util';
import { CONFIG_OPTION, EXIT, HELP_OPTION, fail, parseCommand, print } from '../args.js';

export const HELP = `Usage: mg-device-agent bootstrap --once [--dry-run] [--config PATH]

Fetches this device's configuration from Bootstrap now, with the agent's own identity, keys and
client.

  --once      fetch once, then: when it differs from the stored configuration, write it as a new
              generation and make it current (the agent uses it from its next start); when it is
              the same, say so and write nothing. Refused while the agent is running: ask the
              running agent instead (systemctl reload mg-device-agent).
  --dry-run   with --once: write nothing; print what would change on disk and on the broker
              (broker URL, client, "credentials changed" without values, channels added and
              removed, certificate subjects and expiry, content sizes). Safe while the agent runs.

Options:
  --config PATH   configuration file (default /etc/mg-device-agent/agent.json)

Exit codes: 0 fetched (and written, or already up to date, or dry run), 1 the fetch or the write
failed, 64 usage error, 78 configuration error (keys, URL).`;

export async function execute(args: string[]): Promise<number> {
  const parsed = parseCommand('bootstrap', HELP, () =>
    parseArgs({ args, options: { ...CONFIG_OPTION, ...HELP_OPTION, once: { type: 'boolean' }, 'dry-run': { type: 'boolean' } }, strict: true }),
  );
  if (typeof parsed === 'number') return parsed;
  if (!parsed.values.once) return fail('bootstrap needs --once (with or without --dry-run); see mg-device-agent bootstrap --help', EXIT.usage);
  const dryRun = parsed.values['dry-run'] === true;

  const { loadConfigOrExit, configFailure, cliLogger } = await import('../configured.js');
  const loaded = loadConfigOrExit(parsed.values.config);
  if (typeof loaded === 'number') return loaded;
  const config = loaded.config;
  const { toAgentError } = await import('../../errors/agent-error.js');
  const { hintFor } = await import('../../diagnostics/hints.js');
  const { safeUrl } = await import('../../diagnostics/redact.js');
  const { describeChanges } = await import('../../diagnostics/describe-changes.js');
  const logger = cliLogger();

  if (!dryRun) {
    const { runningAgentPid } = await import('../../diagnostics/state-reader.js');
    const pid = await runningAgentPid(config.state.dir);
    if (pid !== undefined) {
      return fail(
        `the agent is running (pid ${pid}); two writers would race over ${config.state.dir}. ` +
          'Ask it to check now with "systemctl reload mg-device-agent" (SIGHUP), or use --dry-run to see what would change',
        EXIT.failure,
      );
    }
  }

  const { resolveDeviceIdentity } = await import('../../diagnostics/device-identity.js');
  let externalId: string;
  try {
    externalId = (await resolveDeviceIdentity(config, logger)).externalId;
  } catch (err) {
    const error = toAgentError(err);
    return fail(`cannot resolve the external ID: ${error.code}: ${error.message}`, EXIT.failure);
  }

  const { buildBootstrapAccess } = await import('../../composition-root.js');
  let access;
  try {
    access = await buildBootstrapAccess(config, process.env);
  } catch (err) {
    return configFailure(err);
  }
  let fetched;
  try {
    fetched = await access.fetchConfig(externalId, access.externalKey);
  } catch (err) {
    const error = toAgentError(err);
    const hint = hintFor(error.code);
    return fail(`bootstrap failed for ${externalId}: ${error.code}: ${error.message}${hint ? `\n  hint: ${hint}` : ''}`, EXIT.failure);
  } finally {
    await access.close();
  }
  print(`fetched the configuration of ${externalId} from ${safeUrl(config.bootstrap.url)}: ${fetched.family}, ${fetched.channels.length} channel(s)`);

  const describe = (before: Parameters<typeof describeChanges>[0], header: string): boolean => {
    const changes = describeChanges(before, fetched);
    if (!changes.changed) return false;
    print(header);
    for (const line of changes.lines) print(`  ${line}`);
    print(`on disk: a new generation with ${changes.files.join(', ')}`);
    print(`on the broker: ${changes.brokerEffects.join('; ')}`);
    return true;
  };

  try {
    if (dryRun) {
      const { readCurrentGeneration } = await import('../../diagnostics/state-reader.js');
      const { generation, warnings } = await readCurrentGeneration(config.state.dir, config.state.keepGenerations);
      for (const warning of warnings) print(`warning: ${warning}`);
      const header = generation ? `changes against generation ${generation.id}:` : 'no configuration on disk yet; it would be:';
      if (!describe(generation?.config, header)) print(`no changes: generation ${generation?.id} on disk is up to date`);
      print('dry run: nothing was written');
      return EXIT.ok;
    }

    const { GenerationStore } = await import('../../storage/generation-store.js');
    const { sameConfig } = await import('../../storage/config-diff.js');
    const store = new GenerationStore({ dir: config.state.dir, keepGenerations: config.state.keepGenerations, logger });
    await store.init();
    const current = await store.loadCurrent();
    if (current && sameConfig(current.config, fetched)) {
      print(`no changes: generation ${current.id} on disk is up to date; nothing written`);
      return EXIT.ok;
    }
    describe(current?.config, current ? `changes against generation ${current.id}:` : 'no configuration on disk yet; writing:');
    const gen = await store.writeCandidate(fetched, { externalId, fetchedAt: new Date() });
    await store.promote(gen);
    const { matchStateDirOwner } = await import('../../diagnostics/ownership.js');
    const fixed = await matchStateDirOwner(config.state.dir);
    if (fixed > 0) print(`gave ${fixed} new entr${fixed === 1 ? 'y' : 'ies'} to the state directory's owner`);
    print(`wrote generation ${gen.id} and made it current; the agent uses it from its next start`);
    return EXIT.ok;
  } catch (err) {
    const error = toAgentError(err);
    const hint = hintFor(error.code);
    return fail(`${error.code}: ${error.message}${hint ? `\n  hint: ${hint}` : ''}`, EXIT.failure);
  }
}
