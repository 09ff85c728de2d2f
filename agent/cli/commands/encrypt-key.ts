import { parseArgs } from 'node:util';
import { EXIT, HELP_OPTION, fail, parseCommand, print } from '../args.js';

export const HELP = `Usage: mg-device-agent encrypt-key --external-key-file FILE --encrypt-key-file FILE
                                [--bootstrap-url URL] [--external-id ID] [--family clients|things]

Prints the secure-bootstrap token for an external key: lowercase hex of a random IV followed by the
key encrypted with AES-CFB under the server's MG_BOOTSTRAP_ENCRYPT_KEY, exactly what the agent sends
as "Authorization: Client <token>" in secure mode. Then a ready curl line, for debugging a device's
bootstrap by hand (the answer is binary: the IV, then the encrypted JSON).

The token is a credential: anyone holding it can fetch this device's configuration, MQTT secret
included, for as long as the external key is valid. Do not paste it into tickets or chats.

Options:
  --external-key-file F   the device's external key (mode 0600 or 0400)
  --encrypt-key-file F    the server's MG_BOOTSTRAP_ENCRYPT_KEY (16, 24 or 32 bytes, mode 0600 or 0400)
  --bootstrap-url URL     for the curl line (default: a placeholder)
  --external-id ID        for the curl line (default: a placeholder)
  --family clients|things clients (/clients/bootstrap, Magistrala v0.16+) or things (v0.14/v0.15)

Exit codes: 0 printed, 1 a key file is missing, unsafe or invalid, 64 usage error.`;

function shellQuote(text: string): string {
  return `'${text.replace(/'/g, `'\\''`)}'`;
}

export async function execute(args: string[]): Promise<number> {
  const parsed = parseCommand('encrypt-key', HELP, () =>
    parseArgs({
      args,
      options: {
        ...HELP_OPTION,
        'external-key-file': { type: 'string' },
        'encrypt-key-file': { type: 'string' },
        'bootstrap-url': { type: 'string' },
        'external-id': { type: 'string' },
        family: { type: 'string' },
      },
      strict: true,
    }),
  );
  if (typeof parsed === 'number') return parsed;
  const v = parsed.values;
  if (!v['external-key-file'] || !v['encrypt-key-file']) return fail('--external-key-file and --encrypt-key-file are required; see mg-device-agent encrypt-key --help', EXIT.usage);
  const family = v.family ?? 'clients';
  if (family !== 'clients' && family !== 'things') return fail('--family must be clients or things', EXIT.usage);

  const { readEncryptKey, readExternalKey } = await import('../../credentials/credentials.js');
  const { authorizationHeader, bootstrapPath, parseBaseUrl } = await import('../../bootstrap/wire.js');
  const { toAgentError } = await import('../../errors/agent-error.js');
  try {
    // credentialsDirectory '' : only the named files count, whatever the environment says.
    const externalKey = await readExternalKey({ file: v['external-key-file'], credentialsDirectory: '' });
    const encryptKey = await readEncryptKey({ file: v['encrypt-key-file'], env: {}, credentialsDirectory: '' });
    if (!encryptKey) return fail('the encryption key file is empty', EXIT.failure);
    const header = authorizationHeader(family, 'secure', externalKey, encryptKey);
    const token = header.slice(header.indexOf(' ') + 1);
    const base = v['bootstrap-url'] ? parseBaseUrl(v['bootstrap-url']) : undefined;
    const path = v['external-id'] ? bootstrapPath(family, 'secure', v['external-id']) : `/${family}/bootstrap/secure/<external-id>`;
    const url = `${base ? `${base.origin}${base.prefix}` : '<bootstrap-url>'}${path}`;
    print(token);
    print(`curl -sS -o response.bin -w '%{http_code}\\n' -H ${shellQuote(`Authorization: ${header}`)} ${shellQuote(url)}`);
    print('# response.bin is binary: a 16-byte IV, then the configuration JSON encrypted with AES-CFB (same key).');
    print('# The token is a credential: it fetches this device\'s configuration, MQTT secret included.');
    return EXIT.ok;
  } catch (err) {
    const error = toAgentError(err);
    return fail(`${error.code}: ${error.message}`, EXIT.failure);
  }
}
