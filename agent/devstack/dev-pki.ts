import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';

/**
 * Certificates made by the system's openssl for the demo and TLS tests: a CA, a second unrelated CA, a server
 * certificate for localhost/127.0.0.1, a client certificate (mutual TLS) and an expired server
 * certificate (for the clock check). All EC P-256 keys, PEM text.
 */
export interface TestCerts {
  caCert: string;
  otherCaCert: string;
  serverCert: string;
  serverKey: string;
  clientCert: string;
  clientKey: string;
  expiredServerCert: string;
}

function openssl(cwd: string, args: string[]): void {
  execFileSync('openssl', args, { cwd, stdio: ['ignore', 'ignore', 'pipe'] });
}

function newKeyAndCsr(dir: string, name: string, subject: string): void {
  openssl(dir, ['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', subject]);
}

function newCa(dir: string, name: string, subject: string): void {
  openssl(dir, ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.pem`, '-days', '2', '-subj', subject]);
}

export function makeTestCerts(dir: string): TestCerts {
  newCa(dir, 'ca', '/CN=mgda test CA');
  newCa(dir, 'other-ca', '/CN=mgda unrelated CA');

  writeFileSync(join(dir, 'server.ext'), 'subjectAltName=DNS:localhost,IP:127.0.0.1\n');
  newKeyAndCsr(dir, 'server', '/CN=localhost');
  openssl(dir, ['x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'server.pem', '-days', '2', '-extfile', 'server.ext']);

  writeFileSync(join(dir, 'client.ext'), 'extendedKeyUsage=clientAuth\n');
  newKeyAndCsr(dir, 'client', '/CN=device-client');
  openssl(dir, ['x509', '-req', '-in', 'client.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'client.pem', '-days', '2', '-extfile', 'client.ext']);

  // `openssl x509` (3.0) cannot backdate a certificate; `openssl ca` can, with explicit dates.
  mkdirSync(join(dir, 'ca-db'));
  writeFileSync(join(dir, 'ca-db', 'index.txt'), '');
  writeFileSync(join(dir, 'ca-db', 'serial'), '1000\n');
  writeFileSync(
    join(dir, 'ca.cnf'),
    [
      '[ ca ]',
      'default_ca = test_ca',
      '[ test_ca ]',
      'database = ca-db/index.txt',
      'new_certs_dir = ca-db',
      'serial = ca-db/serial',
      'default_md = sha256',
      'policy = any_name',
      'unique_subject = no',
      '[ any_name ]',
      'commonName = supplied',
      '',
    ].join('\n'),
  );
  openssl(dir, ['ca', '-batch', '-config', 'ca.cnf', '-cert', 'ca.pem', '-keyfile', 'ca.key', '-in', 'server.csr', '-out', 'expired.pem', '-startdate', '20200101000000Z', '-enddate', '20200102000000Z', '-extfile', 'server.ext', '-notext']);

  const read = (name: string): string => readFileSync(join(dir, name), 'utf8');
  return {
    caCert: read('ca.pem'),
    otherCaCert: read('other-ca.pem'),
    serverCert: read('server.pem'),
    serverKey: read('server.key'),
    clientCert: read('client.pem'),
    clientKey: read('client.key'),
    expiredServerCert: read('expired.pem'),
  };
}
