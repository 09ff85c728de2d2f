import { execFileSync } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, readlinkSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import type { AgentProcess, LogLine } from '../../agent/devstack/agent-process.js';
import { startBootstrapServer, type BootstrapServer } from '../../agent/devstack/bootstrap-server.js';
import { createRegistry, type Registry } from '../../agent/devstack/registry.js';
import { writeDeviceFiles, type DeviceFiles } from '../../agent/devstack/scenario.js';
import { connectObserver, readRetained } from '../helpers/aedes-broker.js';
import { K32_ENCRYPT_KEY, expectNoSecretsIn, onlineWith, pemBodyLines, runAgentProcess, tempWorkDir, usePki, useTeardown } from '../helpers/agent-harness.js';
import { findMosquittoTools, startMosquitto, type MosquittoBroker, type MosquittoTools } from './mosquitto-broker.js';

/*
 * The real built agent against a broker we did not write: Debian's Eclipse Mosquitto 2.x, one process
 * per test on a free loopback port, mutual TLS with openssl-made certificates, per-user topic rights.
 * Bootstrap (secure mode) comes from the dev stack's Bootstrap server, whose content points the agent
 * at mosquitto; certificates arrive in the bootstrap response, as in production.
 */

const { tools, missing } = findMosquittoTools();
const IN_CI = process.env['CI'] === 'true';

if (!tools && !IN_CI) {
  const lines = [
    'SKIPPED: test/mosquitto (the real-broker suite) needs Debian\'s mosquitto and openssl.',
    `Missing: ${missing.join(', ')}`,
    'Install:  sudo apt-get install mosquitto openssl',
    'Under CI=true a missing tool fails the suite instead of skipping it.',
  ];
  const width = Math.max(...lines.map((l) => l.length)) + 4;
  const bar = '#'.repeat(width + 2);
  console.warn(['', bar, ...lines.map((l) => `#  ${l.padEnd(width - 2)}#`), bar, ''].join('\n'));
}

if (!tools && IN_CI) {
  describe('agent against mosquitto (tools missing)', () => {
    it('mosquitto is required in CI', () => {
      throw new Error(`mosquitto is required in CI: missing ${missing.join(', ')} (apt-get install mosquitto openssl)`);
    });
  });
}

const t = useTeardown();

interface ScenarioOptions {
  protocolVersion?: 4 | 5;
  authorisation?: 'acl-file' | 'dynamic-security';
  /** Which of the three channels the bootstrap config lists (default the first two). */
  configChannels?: number[];
  /** Which of the three channels the broker lets the device use (default the first two). */
  brokerChannels?: number[];
  /** The broker's certificate (default: the test CA's server certificate). */
  serverCert?: string;
}

interface Scenario {
  broker: MosquittoBroker;
  bootstrap: BootstrapServer;
  registry: Registry;
  domainId: string;
  /** Three channels: the config and the broker's rights pick from these. */
  channels: [string, string, string];
  device: { externalId: string; externalKey: string; clientId: string; secret: string };
  observer: { username: string; password: string };
  files: DeviceFiles;
  /** Secrets that must never reach the agent's output; tests add rotated ones. */
  secrets: string[];
}

const topicOf = (s: Scenario, channel: string, subtopic?: string): string =>
  `m/${s.domainId}/c/${channel}${subtopic === undefined ? '' : `/${subtopic}`}`;
const filterOf = (s: Scenario, channel: string): string => topicOf(s, channel, '#');

/** The first channel carries the device's retained online/offline status (the agent's default). */
const statusTopicOf = (s: Scenario): string => topicOf(s, s.channels[0], 'status');

function secretHex(bytes = 16): string {
  return randomBytes(bytes).toString('hex');
}

const receivedOn = (topic: string) => (l: LogLine) => l.msg === 'message received' && l['topic'] === topic;

describe.skipIf(!tools)('agent against Debian mosquitto (mutual TLS, secure bootstrap)', () => {
  const mosquittoTools = tools as MosquittoTools;
  const pki = usePki('mgda-mosq-pki-');
  let foreignServerCert: string;

  beforeAll(() => {
    // The same server key and request, signed by the PKI's unrelated CA: a broker certificate the device must refuse.
    execFileSync(
      mosquittoTools.openssl,
      ['x509', '-req', '-in', 'server.csr', '-CA', 'other-ca.pem', '-CAkey', 'other-ca.key', '-CAcreateserial', '-out', 'foreign-server.pem', '-days', '2', '-extfile', 'server.ext'],
      { cwd: pki.dir, stdio: ['ignore', 'ignore', 'pipe'] },
    );
    foreignServerCert = readFileSync(join(pki.dir, 'foreign-server.pem'), 'utf8');
  });

  async function scenario(options: ScenarioOptions = {}): Promise<Scenario> {
    const dir = tempWorkDir(t, 'mgda-mosq-');
    const domainId = randomUUID();
    const channels: [string, string, string] = [randomUUID(), randomUUID(), randomUUID()];
    const pick = (indexes: number[]): string[] => indexes.map((i) => channels[i] as string);
    const device = { externalId: `mosq-${secretHex(4)}`, externalKey: secretHex(32), clientId: randomUUID(), secret: secretHex() };
    const observer = { username: `observer-${secretHex(4)}`, password: secretHex() };
    const filter = (channel: string): string => `m/${domainId}/c/${channel}/#`;

    const broker = await startMosquitto({
      tools: mosquittoTools,
      dir: join(dir, 'broker'),
      tls: { caCert: pki.caCert, serverCert: options.serverCert ?? pki.serverCert, serverKey: pki.serverKey },
      users: [
        { username: device.clientId, password: device.secret, topics: pick(options.brokerChannels ?? [0, 1]).map(filter) },
        { username: observer.username, password: observer.password, topics: channels.map(filter) },
      ],
      authorisation: options.authorisation ?? 'acl-file',
    });
    t.add(() => broker.stop());

    const registry = createRegistry();
    const added = registry.addConfig({
      externalId: device.externalId,
      externalKey: device.externalKey,
      clientId: device.clientId,
      clientSecret: device.secret,
      domainId,
      channels: pick(options.configChannels ?? [0, 1]),
      content: JSON.stringify({ agent: { mqtt: { url: broker.url } }, domain_id: domainId }),
      clientCert: pki.clientCert,
      clientKey: pki.clientKey,
      caCert: pki.caCert,
      state: 1,
    });
    if (!added.ok) throw new Error(added.message);
    const bootstrap = await startBootstrapServer({ registry, encryptKey: K32_ENCRYPT_KEY, responseFamily: 'v0.20', userToken: randomUUID() });
    t.add(() => bootstrap.close());

    const deviceDir = join(dir, 'device');
    mkdirSync(deviceDir, { mode: 0o700 });
    const files = writeDeviceFiles(deviceDir, {
      bootstrapUrl: bootstrap.url,
      externalKey: device.externalKey,
      encryptKey: K32_ENCRYPT_KEY,
      externalId: device.externalId,
      config: { mqtt: { protocolVersion: options.protocolVersion ?? 4 } },
    });
    const secrets = [device.externalKey, K32_ENCRYPT_KEY, device.secret, observer.password, ...pemBodyLines(pki.clientKey)];
    return { broker, bootstrap, registry, domainId, channels, device, observer, files, secrets };
  }

  function runAgent(s: Scenario): AgentProcess {
    return runAgentProcess(t, ['run', '--config', s.files.configFile]);
  }

  /** A separate MQTT.js client with its own user, over mutual TLS like every client of this broker. */
  function observerOptions(s: Scenario) {
    return { username: s.observer.username, password: s.observer.password, ca: pki.caCert, cert: pki.clientCert, key: pki.clientKey };
  }

  async function publishAsObserver(s: Scenario, messages: { topic: string; payload: string }[]): Promise<void> {
    const observer = await connectObserver(s.broker.url, observerOptions(s));
    try {
      // QoS 1 and in order: when the last PUBACK is in, mosquitto has routed every message before it.
      for (const m of messages) await observer.publishAsync(m.topic, m.payload, { qos: 1 });
    } finally {
      await observer.closeNow();
    }
  }

  const secureStatuses = (s: Scenario): (number | null)[] => s.bootstrap.requests.filter((r) => r.endpoint === 'secure').map((r) => r.status);

  /** The filters mosquitto granted this client, from its own log ("<client> <qos> <filter>" lines). */
  function filtersGrantedBy(broker: MosquittoBroker, clientId: string): string[] {
    const pattern = new RegExp(`^\\d+: ${clientId} \\d (\\S+)$`, 'gm');
    return [...new Set([...broker.log().matchAll(pattern)].map((m) => m[1] as string))].sort();
  }

  it('MQTT 3.1.1: subscribes to exactly its two channels, receives a message, retained online, retained offline after SIGTERM', async () => {
    const s = await scenario();
    const [first, second, third] = s.channels;
    const agent = runAgent(s);

    const online = await agent.waitFor(onlineWith(2, 2), 20_000, 'online');
    expect([...(online['subscribed'] as string[])].sort()).toEqual([first, second].sort());
    expect(online['statusTopic']).toBe(statusTopicOf(s));
    expect(secureStatuses(s)).toEqual([200]);
    // Mosquitto's side: the handshake passed require_certificate, the client ID is the user name, the
    // session is persistent (c0), and the two channel filters are all it subscribed.
    expect(s.broker.log()).toMatch(new RegExp(`New client connected from 127\\.0\\.0\\.1:\\d+ as ${s.device.clientId} \\(p2, c0, k60, u'${s.device.clientId}'\\)`));
    expect(filtersGrantedBy(s.broker, s.device.clientId)).toEqual([filterOf(s, first), filterOf(s, second)].sort());

    expect(await readRetained(s.broker.url, statusTopicOf(s), observerOptions(s))).toBe('online');

    const wanted = topicOf(s, second, 'commands/x');
    const notInConfig = topicOf(s, third, 'commands/x');
    await publishAsObserver(s, [
      { topic: notInConfig, payload: 'not for this device' },
      { topic: wanted, payload: 'twelve bytes' },
    ]);
    const received = await agent.waitFor(receivedOn(wanted), 10_000, 'the message');
    expect(received['bytes']).toBe(12);
    expect(received['channel']).toBe(second);
    expect(agent.lines.filter((l) => l.msg === 'message received' && String(l['topic']).includes(third))).toEqual([]);
    expect(agent.output).not.toContain('twelve bytes'); // payloads are not logged

    const exit = await agent.stop();
    expect(exit.code).toBe(0);
    // A clean goodbye (DISCONNECT, so no Will) after the agent's own retained "offline".
    expect(s.broker.log()).toContain(`Received DISCONNECT from ${s.device.clientId}`);
    expect(await readRetained(s.broker.url, statusTopicOf(s), observerOptions(s))).toBe('offline');
    expectNoSecretsIn(agent.output, s.secrets);
  });

  it.each([
    { version: 5 as const, label: 'MQTT 5', protocolFlag: 'p5' },
    { version: 4 as const, label: 'MQTT 3.1.1', protocolFlag: 'p2' },
  ])('$label persistent session: a QoS 1 message sent while the agent is stopped arrives when it starts again', async ({ version, protocolFlag }) => {
    const s = await scenario({ protocolVersion: version });
    const first = runAgent(s);
    await first.waitFor(onlineWith(2, 2), 20_000, 'online');
    expect(s.broker.log()).toContain(`as ${s.device.clientId} (${protocolFlag}, c0,`);
    expect((await first.stop()).code).toBe(0);

    const topic = topicOf(s, s.channels[1], 'commands/queued');
    const payload = 'sent while the device was offline';
    await publishAsObserver(s, [{ topic, payload }]);

    const second = runAgent(s);
    await second.waitForMessage('starting on the stored configuration');
    const connected = await second.waitForMessage('connected to the MQTT broker');
    expect(connected['sessionPresent']).toBe(true);
    const received = await second.waitFor(receivedOn(topic), 10_000, 'the queued message');
    expect(received['bytes']).toBe(Buffer.byteLength(payload));
    expect(second.lines.filter(receivedOn(topic))).toHaveLength(1);
    expect((await second.stop()).code).toBe(0);
    expect(secureStatuses(s).every((status) => status === 200)).toBe(true);
    expectNoSecretsIn(first.output, s.secrets);
    expectNoSecretsIn(second.output, s.secrets);
  });

  it.each([
    { version: 4 as const, label: 'MQTT 3.1.1', reasonCode: 0x80 },
    { version: 5 as const, label: 'MQTT 5', reasonCode: 0x87 },
  ])('$label, dynamic security: a channel the broker refuses gets SUBACK $reasonCode, MQTT_SUBSCRIBE_REFUSED for that channel only, the others work', async ({ version, reasonCode }) => {
    const s = await scenario({ protocolVersion: version, authorisation: 'dynamic-security', configChannels: [0, 1, 2], brokerChannels: [0, 1] });
    const [first, second, third] = s.channels;
    const agent = runAgent(s);

    const online = await agent.waitFor(onlineWith(2, 3), 20_000, 'online with one channel refused');
    expect([...(online['subscribed'] as string[])].sort()).toEqual([first, second].sort());
    const refusals = agent.lines.filter((l) => l['code'] === 'MQTT_SUBSCRIBE_REFUSED' && l['channel'] !== undefined);
    expect(refusals.length).toBeGreaterThan(0);
    for (const line of refusals) {
      expect(line['channel']).toBe(third);
      expect(line['filter']).toBe(filterOf(s, third));
      expect(line['reasonCode']).toBe(reasonCode);
      expect(line.level).toBe('warn');
    }
    expect(filtersGrantedBy(s.broker, s.device.clientId)).toEqual([filterOf(s, first), filterOf(s, second)].sort());

    const wanted = topicOf(s, second, 'commands/y');
    await publishAsObserver(s, [{ topic: wanted, payload: 'still works' }]);
    expect((await agent.waitFor(receivedOn(wanted), 10_000, 'the message'))['bytes']).toBe(11);
    expect(await readRetained(s.broker.url, statusTopicOf(s), observerOptions(s))).toBe('online');
    expect((await agent.stop()).code).toBe(0);
    expectNoSecretsIn(agent.output, s.secrets);
  });

  it('acl_file: mosquitto 2.0 grants every SUBSCRIBE and withholds what the user may not read, so only the allowed channels deliver', async () => {
    const s = await scenario({ configChannels: [0, 1, 2], brokerChannels: [0, 1] });
    const [, second, third] = s.channels;
    const agent = runAgent(s);

    // No SUBACK failure to see: the agent (rightly, from what it is told) reports 3 of 3.
    await agent.waitFor(onlineWith(3, 3), 20_000, 'online');
    expect(agent.lines.filter((l) => l['code'] === 'MQTT_SUBSCRIBE_REFUSED')).toEqual([]);

    const withheld = topicOf(s, third, 'commands/z');
    const allowed = topicOf(s, second, 'commands/z');
    await publishAsObserver(s, [
      { topic: withheld, payload: 'withheld by the ACL' },
      { topic: allowed, payload: 'delivered' },
    ]);
    await agent.waitFor(receivedOn(allowed), 10_000, 'the allowed message');
    expect(agent.lines.filter(receivedOn(withheld))).toEqual([]);
    expect((await agent.stop()).code).toBe(0);
    expectNoSecretsIn(agent.output, s.secrets);
  });

  it('secret rotated on the broker: disconnected, CONNACK refused, MQTT_AUTH_REFUSED, re-bootstraps, and connects once Bootstrap hands out the new secret', async () => {
    const s = await scenario();
    const agent = runAgent(s);
    await agent.waitFor(onlineWith(2, 2, 1), 20_000, 'online on generation 1');
    expect(secureStatuses(s)).toEqual([200]);

    // The operator changes the secret on the broker first; Bootstrap still hands out the old one.
    const newSecret = secretHex();
    s.secrets.push(newSecret);
    await s.broker.changePassword(s.device.clientId, newSecret);
    await agent.waitForMessage('connection to the broker lost');

    const refused = await agent.waitFor((l) => l['code'] === 'MQTT_AUTH_REFUSED' && String(l.msg).includes('re-bootstrapping'), 15_000, 'the auth refusal');
    expect(refused['returnCode']).toBe(5); // mosquitto answers a wrong password with "not authorized"
    await agent.waitForMessage('Bootstrap returned the same credentials the broker refused');
    expect(secureStatuses(s).length).toBeGreaterThanOrEqual(2); // the re-bootstrap reached the server

    const rotated = s.registry.rotateClientSecret(s.device.clientId, newSecret);
    if (!rotated.ok) throw new Error(rotated.message);
    const online = await agent.waitFor(onlineWith(2, 2, 2), 20_000, 'online on generation 2 with the new secret');
    expect([...(online['subscribed'] as string[])].sort()).toEqual([s.channels[0], s.channels[1]].sort());
    expect(readlinkSync(join(s.files.stateDir, 'current'))).toBe('generations/000002');
    const statuses = secureStatuses(s);
    expect(statuses.length).toBeGreaterThanOrEqual(3);
    expect(statuses.every((status) => status === 200)).toBe(true);
    expect((await agent.stop()).code).toBe(0);
    expectNoSecretsIn(agent.output, s.secrets);
  });

  it('broker certificate signed by another CA: MQTT_TLS, nothing promoted, mosquitto never sees a CONNECT', async () => {
    const s = await scenario({ serverCert: foreignServerCert });
    const agent = runAgent(s);

    const failed = await agent.waitFor((l) => l['code'] === 'MQTT_TLS' && l['stage'] === 'connect', 20_000, 'the TLS failure');
    expect(failed['errorCode']).toBe('UNABLE_TO_VERIFY_LEAF_SIGNATURE');
    expect(failed['failureClass']).toBe('operator');
    expect(secureStatuses(s)[0]).toBe(200); // Bootstrap worked; only the broker is refused
    expect((await agent.stop()).code).toBe(0);

    // Stopped, so no later attempt can change the picture: no generation ever became current.
    expect(agent.lines.some((l) => String(l.msg).includes('promoted'))).toBe(false);
    expect(existsSync(join(s.files.stateDir, 'current'))).toBe(false);
    // The device hung up inside the TLS handshake (Node sends no alert, so mosquitto only sees EOF):
    // no MQTT session ever existed, so the client secret never crossed the untrusted connection.
    expect(s.broker.log()).not.toContain('New client connected');
    expectNoSecretsIn(agent.output, s.secrets);
  });
});
