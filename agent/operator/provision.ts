import { randomBytes } from 'node:crypto';
import { mkdir, open, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { AgentError, toAgentError } from '../errors/agent-error.js';
import { keyMatchesCertificate, toPem } from '../storage/pem.js';
import { ManagementClient } from './management-client.js';

/*
 * The operator's side of a new device: create its bootstrap config with a fresh external key, connect
 * it to its channels if asked, and leave the device's credential files (0600) where
 * scripts/provision-image.sh picks them up. The key exists only in that file and on the server; it is
 * never printed.
 */

/** Same rule as scripts/provision-image.sh: IDs end up in file names, JSON and a URL path. */
export const EXTERNAL_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/;

/** 32 random bytes as lowercase hex: 256 bits, and only characters every header and shell handle. */
export function generateExternalKey(): string {
  return randomBytes(32).toString('hex');
}

export interface ProvisionRequest {
  bootstrapUrl: string;
  domainId: string;
  userToken: string;
  externalId: string;
  name?: string;
  clientId?: string;
  channels: string[];
  content?: string;
  certs?: { clientCert?: string; clientKey?: string; caCert?: string };
  enable: boolean;
  /** The server's MG_BOOTSTRAP_ENCRYPT_KEY, copied next to the external key for secure bootstrap. */
  encryptKey?: string;
  outDir: string;
}

export interface ProvisionResult {
  clientId: string;
  enabled: boolean;
  externalKeyFile: string;
  encryptKeyFile?: string;
  /** Set when the config was created but enabling it failed: the files are kept, the operator enables by hand. */
  enableError?: AgentError;
}

/** Checks certificates and the key pair before anything reaches the server. Throws CERT_INVALID / CERT_KEY_MISMATCH. */
export function checkCertificates(certs: ProvisionRequest['certs']): void {
  if (!certs) return;
  if (certs.clientCert) toPem(certs.clientCert, 'certificate', 'client_cert');
  if (certs.clientKey) toPem(certs.clientKey, 'private key', 'client_key');
  if (certs.caCert) toPem(certs.caCert, 'certificate', 'ca_cert');
  if ((certs.clientCert === undefined) !== (certs.clientKey === undefined)) {
    throw new AgentError('CERT_INVALID', 'give --client-cert and --client-key together', { details: { field: certs.clientCert ? 'client_key' : 'client_cert' } });
  }
  if (certs.clientCert && certs.clientKey && !keyMatchesCertificate(certs.clientCert, certs.clientKey)) {
    throw new AgentError('CERT_KEY_MISMATCH', '--client-key does not belong to --client-cert', { details: { field: 'client_key' } });
  }
}

/** Creates `path` with `data`, mode 0600, failing if it exists: a key of another device is never overwritten. */
async function writeNewSecret(path: string, data: string): Promise<void> {
  let handle;
  try {
    handle = await open(path, 'wx', 0o600);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new AgentError('STORAGE_WRITE_FAILED', code === 'EEXIST' ? `${path} already exists; refusing to overwrite a device's key (use a new --out directory)` : `cannot create ${path} (${code ?? 'error'})`, {
      details: { path, osCode: code },
    });
  }
  try {
    await handle.chmod(0o600);
    await handle.writeFile(data, 'utf8');
    await handle.sync();
  } finally {
    await handle.close();
  }
}

export async function provisionDevice(request: ProvisionRequest, client?: ManagementClient): Promise<ProvisionResult> {
  if (!EXTERNAL_ID_PATTERN.test(request.externalId)) {
    throw new AgentError('CONFIG_INVALID', 'the external ID must be 1-128 characters of A-Z a-z 0-9 . _ : - and start with a letter or digit', {
      details: { field: 'external-id' },
    });
  }
  checkCertificates(request.certs);
  const operator = client ?? new ManagementClient({ baseUrl: request.bootstrapUrl, userToken: request.userToken, domainId: request.domainId });

  await mkdir(request.outDir, { recursive: true, mode: 0o700 });
  const externalKeyFile = join(request.outDir, 'external_key');
  const encryptKeyFile = request.encryptKey !== undefined ? join(request.outDir, 'encrypt_key') : undefined;
  const externalKey = generateExternalKey();
  // Files first: a config on the server whose key was never saved would be a device nobody can bootstrap.
  await writeNewSecret(externalKeyFile, `${externalKey}\n`);
  try {
    if (encryptKeyFile) await writeNewSecret(encryptKeyFile, request.encryptKey as string);
  } catch (err) {
    await rm(externalKeyFile, { force: true });
    throw err;
  }

  let clientId: string;
  try {
    ({ clientId } = await operator.createConfig({
      externalId: request.externalId,
      externalKey,
      ...(request.name ? { name: request.name } : {}),
      ...(request.clientId ? { clientId: request.clientId } : {}),
      channels: request.channels,
      ...(request.content !== undefined ? { content: request.content } : {}),
      ...(request.certs ?? {}),
    }));
  } catch (err) {
    // Nothing was created on the server: the key files would only mislead.
    await rm(externalKeyFile, { force: true });
    if (encryptKeyFile) await rm(encryptKeyFile, { force: true });
    throw err;
  }

  const result: ProvisionResult = { clientId, enabled: false, externalKeyFile, ...(encryptKeyFile ? { encryptKeyFile } : {}) };
  if (request.enable) {
    try {
      await operator.setState(clientId, 1);
      result.enabled = true;
    } catch (err) {
      result.enableError = toAgentError(err);
    }
  }
  return result;
}

/** Reads a PEM or base64 DER file given on the command line. */
export async function readTextFile(path: string, what: string): Promise<string> {
  try {
    return await readFile(path, 'utf8');
  } catch (err) {
    throw new AgentError('CONFIG_INVALID', `cannot read ${what} ${path} (${(err as NodeJS.ErrnoException).code ?? 'error'})`, { details: { path } });
  }
}
