import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { parseEncryptKey } from '../bootstrap/crypto.js';
import { isAgentError } from '../errors/agent-error.js';
import type { Logger } from '../logging/logger.js';
import { BOOTSTRAP_RESPONSE_FAMILIES, type BootstrapResponseFamily } from './device-endpoint.js';
import { startDevStack, type DevStackOptions } from './stack.js';

/**
 * `mg-device-agent dev-stack`: runs the dev Bootstrap server and broker until SIGINT/SIGTERM.
 * Development only: it prints the management token and, when it generates one, the encryption key.
 */

export const DEV_STACK_USAGE = `usage: mg-device-agent dev-stack [options]

Runs a development emulator of Magistrala's Bootstrap service and MQTT broker. Never expose it.

  --host ADDR               listen address (default 127.0.0.1)
  --bootstrap-port N        Bootstrap HTTP port (default 9013; 0 = any free port)
  --mqtt-port N             MQTT port (default 1883; 0 = any free port)
  --encrypt-key-file FILE   file holding MG_BOOTSTRAP_ENCRYPT_KEY (16, 24 or 32 bytes)
                            (else $MG_BOOTSTRAP_ENCRYPT_KEY, else a random key printed once)
  --family v0.20|v0.30      response family of the device endpoints (default v0.20)
  --state FILE              keep clients, channels and configs in this JSON file
  --domain-id ID            domain to print for convenience (default: random)
  --user-token TOKEN        management API bearer token (default: random)
  --help                    show this text
`;

export const EX_USAGE = 64;
export const EX_CONFIG = 78;

export interface DevStackCommandIo {
  /** Receives every line printed for the user (default: process.stdout). */
  out?: (line: string) => void;
  err?: (line: string) => void;
  env?: NodeJS.ProcessEnv;
  /** Stops the stack when aborted; without it, SIGINT and SIGTERM do. */
  signal?: AbortSignal;
  logger?: Logger;
  /** Called once the stack listens (tests use it to reach the stack). */
  onStarted?: (urls: { bootstrapUrl: string; mqttUrl: string; domainId: string; userToken: string }) => void;
}

interface ParsedArgs {
  host: string;
  bootstrapPort: number;
  mqttPort: number;
  encryptKeyFile?: string;
  family: BootstrapResponseFamily;
  stateFile?: string;
  domainId?: string;
  userToken?: string;
  help: boolean;
}

/** Parses the command's arguments; a string is a usage error to print. */
export function parseDevStackArgs(argv: readonly string[]): ParsedArgs | string {
  const parsed: ParsedArgs = { host: '127.0.0.1', bootstrapPort: 9013, mqttPort: 1883, family: 'v0.20', help: false };
  const args = argv.flatMap((a) => (a.startsWith('--') && a.includes('=') ? [a.slice(0, a.indexOf('=')), a.slice(a.indexOf('=') + 1)] : [a]));
  for (let i = 0; i < args.length; i++) {
    const flag = args[i]!;
    if (flag === '--help' || flag === '-h') {
      parsed.help = true;
      continue;
    }
    const value = args[i + 1];
    if (value === undefined) return `${flag} needs a value`;
    i++;
    switch (flag) {
      case '--host':
        parsed.host = value;
        break;
      case '--bootstrap-port':
      case '--mqtt-port': {
        if (!/^\d{1,5}$/.test(value) || Number(value) > 65535) return `${flag} must be a port number (0-65535), not "${value}"`;
        if (flag === '--bootstrap-port') parsed.bootstrapPort = Number(value);
        else parsed.mqttPort = Number(value);
        break;
      }
      case '--encrypt-key-file':
        parsed.encryptKeyFile = value;
        break;
      case '--family':
        if (!BOOTSTRAP_RESPONSE_FAMILIES.includes(value as BootstrapResponseFamily)) return `--family must be v0.20 or v0.30, not "${value}"`;
        parsed.family = value as BootstrapResponseFamily;
        break;
      case '--state':
        parsed.stateFile = value;
        break;
      case '--domain-id':
        parsed.domainId = value;
        break;
      case '--user-token':
        parsed.userToken = value;
        break;
      default:
        return `unknown option ${flag}`;
    }
  }
  return parsed;
}

/** Runs the dev stack until stopped; resolves with the process exit code. */
export async function runDevStackCommand(argv: string[], io: DevStackCommandIo = {}): Promise<number> {
  const out = io.out ?? ((line: string) => process.stdout.write(line + '\n'));
  const err = io.err ?? ((line: string) => process.stderr.write(line + '\n'));
  const env = io.env ?? process.env;

  const args = parseDevStackArgs(argv);
  if (typeof args === 'string') {
    err(`dev-stack: ${args}`);
    err(DEV_STACK_USAGE);
    return EX_USAGE;
  }
  if (args.help) {
    out(DEV_STACK_USAGE);
    return 0;
  }

  let encryptKey: string;
  let generatedKey = false;
  try {
    if (args.encryptKeyFile !== undefined) {
      // A trailing newline from `echo key > file` is not part of the key.
      encryptKey = readFileSync(args.encryptKeyFile, 'utf8').replace(/\r?\n$/, '');
    } else if (env['MG_BOOTSTRAP_ENCRYPT_KEY'] !== undefined && env['MG_BOOTSTRAP_ENCRYPT_KEY'] !== '') {
      encryptKey = env['MG_BOOTSTRAP_ENCRYPT_KEY'];
    } else {
      encryptKey = randomBytes(24).toString('base64url');
      generatedKey = true;
    }
    parseEncryptKey(encryptKey);
  } catch (error) {
    err(`dev-stack: ${isAgentError(error) ? error.message : `cannot read the encryption key file ${args.encryptKeyFile ?? ''}`}`);
    return EX_CONFIG;
  }

  const stackOptions: DevStackOptions = {
    host: args.host,
    bootstrapPort: args.bootstrapPort,
    mqttPort: args.mqttPort,
    encryptKey,
    responseFamily: args.family,
    ...(args.stateFile === undefined ? {} : { persistFile: args.stateFile }),
    ...(args.domainId === undefined ? {} : { domainId: args.domainId }),
    ...(args.userToken === undefined ? {} : { userToken: args.userToken }),
    ...(io.logger === undefined ? {} : { logger: io.logger }),
  };

  let stack;
  try {
    stack = await startDevStack(stackOptions);
  } catch (error) {
    const cause = error instanceof Error && error.cause instanceof Error ? `: ${error.cause.message}` : '';
    err(`dev-stack: ${error instanceof Error ? error.message : String(error)}${cause}`);
    return isAgentError(error) && error.code.startsWith('STORAGE') ? EX_CONFIG : 1;
  }

  out('mg-device-agent dev stack (development only; never expose it)');
  out(`bootstrap:  ${stack.bootstrapUrl}   (family ${args.family})`);
  out(`mqtt:       ${stack.mqttUrl}`);
  out(`domain:     ${stack.domainId}`);
  out(`user token: ${stack.userToken}`);
  if (generatedKey) out(`encryption key (generated for this run, dev only): ${encryptKey}`);
  if (args.stateFile !== undefined) out(`state file: ${args.stateFile}`);
  out('press Ctrl+C to stop');
  io.onStarted?.({ bootstrapUrl: stack.bootstrapUrl, mqttUrl: stack.mqttUrl, domainId: stack.domainId, userToken: stack.userToken });

  await waitForStop(io.signal);
  await stack.close();
  out('dev stack stopped');
  return 0;
}

function waitForStop(signal: AbortSignal | undefined): Promise<void> {
  if (signal !== undefined) {
    return signal.aborted ? Promise.resolve() : new Promise((resolve) => signal.addEventListener('abort', () => resolve(), { once: true }));
  }
  return new Promise((resolve) => {
    const stop = (): void => {
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
      resolve();
    };
    process.on('SIGINT', stop);
    process.on('SIGTERM', stop);
  });
}
