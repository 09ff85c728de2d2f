import { parseArgs } from 'node:util';
import { EXIT, HELP_OPTION, fail, parseCommand, print } from '../args.js';

export const HELP = `Usage: mg-device-agent provision --bootstrap-url URL --domain ID --external-id ID --out DIR
                              [--token-file FILE] [--channel ID]... [--content-file FILE]
                              [--client-cert FILE --client-key FILE] [--ca-cert FILE]
                              [--encrypt-key-file FILE] [--name NAME] [--client-id ID] [--enable]

Operator side, run on your workstation: creates the bootstrap config of one device on the Bootstrap
service with a freshly generated external key (32 random bytes, hex), optionally connects it to its
channels (--enable), and writes the device's credential files, mode 0600, into --out DIR:
  DIR/external_key   the new external key (never printed)
  DIR/encrypt_key    a copy of --encrypt-key-file, for secure bootstrap
ready for: scripts/provision-image.sh --external-key-file DIR/external_key [--encrypt-key-file DIR/encrypt_key]

The user token comes from --token-file (mode 0600) or the MG_USER_TOKEN environment variable; it is
never accepted on the command line, where other users and the shell history would see it.

Options:
  --bootstrap-url URL   the Bootstrap service, e.g. http://bootstrap.example.com:9013
  --domain ID           the domain the config belongs to
  --external-id ID      what the device presents (a fixed ID, or its MAC such as dc:a6:32:01:02:03)
  --channel ID          a channel to connect the device to (repeat for several)
  --content-file FILE   the config's content (for Magistrala v0.20 usually JSON naming the broker:
                        {"agent":{"mqtt":{"url":"mqtts://..."}},"domain_id":"..."})
  --client-cert FILE, --client-key FILE, --ca-cert FILE   certificates for mutual TLS (PEM)
  --encrypt-key-file F  the server's MG_BOOTSTRAP_ENCRYPT_KEY (16, 24 or 32 bytes)
  --name NAME           a name for the config (default "device <external ID>")
  --client-id ID        use an existing client instead of letting the server create one
  --enable              connect the client to its channels now (PUT .../clients/state/{id} {"state":1})
  --out DIR             where the credential files go (created 0700; existing key files are never overwritten)

Prints the client ID, never a key. Exit codes: 0 created (and enabled), 1 the server refused or a
file could not be written (nothing is left half-done: no key file without a config), 64 usage error.`;

export async function execute(args: string[]): Promise<number> {
  if (args.some((a) => a === '--token' || a.startsWith('--token='))) {
    return fail('--token is not accepted on the command line (ps and the shell history would show it); use --token-file FILE or MG_USER_TOKEN', EXIT.usage);
  }
  const parsed = parseCommand('provision', HELP, () =>
    parseArgs({
      args,
      options: {
        ...HELP_OPTION,
        'bootstrap-url': { type: 'string' },
        domain: { type: 'string' },
        'token-file': { type: 'string' },
        'external-id': { type: 'string' },
        channel: { type: 'string', multiple: true },
        'content-file': { type: 'string' },
        'client-cert': { type: 'string' },
        'client-key': { type: 'string' },
        'ca-cert': { type: 'string' },
        'encrypt-key-file': { type: 'string' },
        name: { type: 'string' },
        'client-id': { type: 'string' },
        enable: { type: 'boolean' },
        out: { type: 'string' },
      },
      strict: true,
    }),
  );
  if (typeof parsed === 'number') return parsed;
  const v = parsed.values;
  const missing = (['bootstrap-url', 'domain', 'external-id', 'out'] as const).filter((k) => !v[k]);
  if (missing.length > 0) return fail(`missing ${missing.map((m) => `--${m}`).join(', ')}; see mg-device-agent provision --help`, EXIT.usage);
  if (!v['token-file'] && !process.env['MG_USER_TOKEN']) return fail('the user token is needed: --token-file FILE or MG_USER_TOKEN', EXIT.usage);

  const { toAgentError } = await import('../../errors/agent-error.js');
  const { readSecretFile } = await import('../../credentials/secret-file.js');
  const { parseEncryptKey } = await import('../../bootstrap/crypto.js');
  const { provisionDevice, readTextFile } = await import('../../operator/provision.js');
  const { hintFor } = await import('../../diagnostics/hints.js');
  try {
    const userToken = v['token-file']
      ? await readSecretFile(v['token-file'], { label: 'user token', codes: { missing: 'CONFIG_INVALID', insecureMode: 'CONFIG_INVALID', empty: 'CONFIG_INVALID' } })
      : (process.env['MG_USER_TOKEN'] as string).trim();
    let encryptKey: string | undefined;
    if (v['encrypt-key-file']) {
      const codes = { missing: 'ENCRYPT_KEY_INVALID', insecureMode: 'ENCRYPT_KEY_INVALID', empty: 'ENCRYPT_KEY_INVALID' } as const;
      encryptKey = await readSecretFile(v['encrypt-key-file'], { label: 'encryption key', codes });
      parseEncryptKey(encryptKey); // 16, 24 or 32 bytes, or a clear error now rather than on the device
    }
    const certs = {
      ...(v['client-cert'] ? { clientCert: await readTextFile(v['client-cert'], 'client certificate') } : {}),
      ...(v['client-key'] ? { clientKey: await readTextFile(v['client-key'], 'client key') } : {}),
      ...(v['ca-cert'] ? { caCert: await readTextFile(v['ca-cert'], 'CA certificate') } : {}),
    };
    const externalId = v['external-id'] as string;
    const result = await provisionDevice({
      bootstrapUrl: v['bootstrap-url'] as string,
      domainId: v.domain as string,
      userToken,
      externalId,
      name: v.name ?? `device ${externalId}`,
      ...(v['client-id'] ? { clientId: v['client-id'] } : {}),
      channels: v.channel ?? [],
      ...(v['content-file'] ? { content: await readTextFile(v['content-file'], 'content file') } : {}),
      ...(Object.keys(certs).length > 0 ? { certs } : {}),
      enable: v.enable === true,
      ...(encryptKey !== undefined ? { encryptKey } : {}),
      outDir: v.out as string,
    });
    print(`created the bootstrap config of ${externalId}: client ${result.clientId}, ${(v.channel ?? []).length} channel(s)`);
    print(`wrote ${result.externalKeyFile} (0600)${result.encryptKeyFile ? ` and ${result.encryptKeyFile} (0600)` : ''}`);
    const image = [
      'scripts/provision-image.sh --image base.img --output device.img',
      `--bootstrap-url ${v['bootstrap-url']}`,
      `--external-key-file ${result.externalKeyFile}`,
      ...(result.encryptKeyFile ? [`--encrypt-key-file ${result.encryptKeyFile}`] : []),
      `--external-id ${externalId}`,
    ].join(' ');
    print(`next: ${image}`);
    if (result.enableError) {
      return fail(
        `the config was created but enabling it failed: ${result.enableError.code}: ${result.enableError.message}; ` +
          `enable it later with PUT /${v.domain}/clients/state/${result.clientId} {"state":1}`,
        EXIT.failure,
      );
    }
    print(result.enabled ? 'enabled: the client is connected to its channels' : 'not enabled: the broker refuses the channels until the config is enabled (--enable)');
    return EXIT.ok;
  } catch (err) {
    const error = toAgentError(err);
    const hint = error.code === 'BOOTSTRAP_UNEXPECTED_STATUS' ? 'check --bootstrap-url, --domain and the user token' : hintFor(error.code);
    return fail(`${error.code}: ${error.message}${hint ? `\n  hint: ${hint}` : ''}`, EXIT.failure);
  }
}
