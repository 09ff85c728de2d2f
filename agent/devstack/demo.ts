import { randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync, statSync, lstatSync, readlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { startDevStack, type DevStack } from './stack.js';
import { AgentProcess } from './agent-process.js';
import { makeTestCerts } from './dev-pki.js';
import { cleanAgentEnv, registerDevice, writeDeviceFiles } from './scenario.js';
import { listInterfaces } from '../identity/list-interfaces.js';
import { chooseInterface, formatMac } from '../identity/choose-interface.js';

/**
 * `npm run demo`: the agent's whole job on one machine. Starts the dev stack (Bootstrap emulator and
 * MQTT broker with mutual TLS) on free loopback ports, registers this machine's real MAC as a device
 * with a fresh external key, runs the real agent process in secure mode, enables the device, sends it
 * a message, stops it, and prints what happened. Exit 0 only if every step succeeded.
 */

const STEP_TIMEOUT_MS = 30_000;

interface Step {
  name: string;
  ok: boolean;
  detail: string;
}

function hasOpenssl(): boolean {
  try {
    execFileSync('openssl', ['version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

function modeOf(path: string): string {
  return (statSync(path).mode & 0o777).toString(8).padStart(4, '0');
}

function listTree(root: string): string[] {
  const out: string[] = [];
  const walk = (dir: string) => {
    for (const name of readdirSync(dir).sort()) {
      const full = join(dir, name);
      const st = lstatSync(full);
      const rel = relative(root, full);
      if (st.isSymbolicLink()) out.push(`  ${'link'.padEnd(6)} ${rel} -> ${readlinkSync(full)}`);
      else if (st.isDirectory()) {
        out.push(`  ${modeOf(full).padEnd(6)} ${rel}/`);
        walk(full);
      } else out.push(`  ${modeOf(full).padEnd(6)} ${rel} (${st.size} bytes)`);
    }
  };
  walk(root);
  return out;
}

async function main(): Promise<number> {
  const steps: Step[] = [];
  const record = (name: string, ok: boolean, detail = '') => {
    steps.push({ name, ok, detail });
    process.stdout.write(`${ok ? '✔' : '✘'} ${name}${detail ? `: ${detail}` : ''}\n`);
    return ok;
  };
  const work = mkdtempSync(join(tmpdir(), 'mg-device-agent-demo-'));
  let stack: DevStack | undefined;
  let agent: AgentProcess | undefined;
  const verbose = process.argv.includes('--verbose');

  try {
    // 1. The machine's real identity, chosen exactly as the agent will choose it.
    const choice = chooseInterface(await listInterfaces());
    const externalId = formatMac(choice.chosen.mac, 'lower-colon');
    record('identity', true, `${externalId} from ${choice.chosen.name}`);

    // 2. The dev stack, with mutual TLS on the broker when openssl is there to make certificates.
    const encryptKey = randomBytes(24).toString('base64url').slice(0, 32);
    const pki = hasOpenssl() ? makeTestCerts(mkdtempSync(join(work, 'pki-'))) : undefined;
    stack = await startDevStack({
      encryptKey,
      responseFamily: 'v0.20',
      ...(pki ? { tls: { key: pki.serverKey, cert: pki.serverCert, ca: pki.caCert, requestCert: true } } : {}),
    });
    record('dev stack', true, `Bootstrap ${stack.bootstrapUrl}, MQTT ${stack.mqttUrl}${pki ? ' (mutual TLS)' : ' (no openssl: plain TCP)'}`);

    // 3. The operator registers the device: three channels, content pointing at the broker, certificates.
    const device = await registerDevice(stack, {
      externalId,
      channelNames: ['commands', 'telemetry', 'alerts'],
      ...(pki ? { certs: { clientCert: pki.clientCert, clientKey: pki.clientKey, caCert: pki.caCert } } : {}),
    });
    const { clientId, channelIds, externalKey, operator } = device;
    record('device registered', true, `client ${clientId}, channels ${channelIds.length}, not yet enabled`);

    // 4. The device's files: external key and encryption key (0600), configuration.
    const files = writeDeviceFiles(work, {
      bootstrapUrl: stack.bootstrapUrl,
      externalKey,
      encryptKey,
      config: { mqtt: { statusChannel: 'commands' } },
    });
    const { stateDir, configFile } = files;

    // 5. The real agent process, in secure mode.
    const env = cleanAgentEnv();
    const statusTopic = `m/${stack.domainId}/c/${channelIds[0]}/status`;
    const statusSeen: { payload: string; retain: boolean }[] = [];
    stack.broker.events.on('published', (p: { topic: string; payload: Buffer; retain: boolean }) => {
      if (p.topic === statusTopic) statusSeen.push({ payload: p.payload.toString(), retain: p.retain });
    });
    agent = new AgentProcess({
      args: ['run', '--config', configFile],
      env,
      ...(verbose ? { echo: (l: string) => process.stdout.write(`    agent | ${l}\n`) } : {}),
    });
    const booted = await agent.waitForMessage('bootstrap succeeded', STEP_TIMEOUT_MS);
    record('secure bootstrap', true, `generation ${String(booted['generation'])}, ${String(booted['channels'])} channels, files ${JSON.stringify(booted['files'])}`);
    const firstOnline = await agent.waitForMessage('online: subscribed', STEP_TIMEOUT_MS);
    record('connected before enabling', true, `broker refused ${String(firstOnline['refused'])} of ${channelIds.length} subscriptions, as Magistrala does`);

    // 6. The operator enables the device; the agent's own retry picks the channels up, no restart.
    await operator.setState(clientId, 1);
    const allOnline = await agent.waitFor(
      (l) => typeof l.msg === 'string' && l.msg.startsWith(`online: subscribed to ${channelIds.length} of ${channelIds.length}`),
      STEP_TIMEOUT_MS,
      'all channels subscribed',
    );
    record('channels subscribed', true, JSON.stringify(allOnline['subscribed']));

    // 7. A message from the platform reaches the device.
    const commandTopic = `m/${stack.domainId}/c/${channelIds[0]}/req`;
    const payload = JSON.stringify([{ bn: 'demo:', n: 'ping', vs: 'hello device' }]);
    await stack.broker.publish(commandTopic, payload, { qos: 1 });
    const received = await agent.waitFor((l) => l['topic'] === commandTopic && typeof l['bytes'] === 'number', STEP_TIMEOUT_MS, 'message received');
    record('message received by the agent', received['bytes'] === Buffer.byteLength(payload), `${commandTopic} (${String(received['bytes'])} bytes)`);

    // 8. Files on disk with their modes.
    process.stdout.write(`  state directory ${stateDir}:\n${listTree(stateDir).join('\n')}\n`);
    const keyPath = join(stateDir, 'current', 'certs', 'client.key');
    const keyMode = pki ? modeOf(keyPath) : '0600';
    record('files written', modeOf(stateDir) === '0700' && keyMode === '0600', `state dir ${modeOf(stateDir)}${pki ? `, client.key ${keyMode}` : ''}`);

    // 9. SIGTERM: retained offline, clean exit.
    const exit = await agent.stop();
    const lastStatus = statusSeen.at(-1);
    record('online status was published retained', statusSeen.some((s) => s.payload === 'online' && s.retain));
    record('stopped on SIGTERM with exit 0', exit.code === 0, `exit code ${exit.code}`);
    record('retained offline left on the broker', lastStatus?.payload === 'offline' && lastStatus.retain === true, statusTopic);

    const leaked = [externalKey, encryptKey].filter((secret) => agent?.output.includes(secret));
    record('no secret in the agent output', leaked.length === 0);
  } catch (err) {
    record('demo', false, (err as Error).message);
  } finally {
    await agent?.stop().catch(() => undefined);
    await stack?.close().catch(() => undefined);
    rmSync(work, { recursive: true, force: true });
  }
  const failed = steps.filter((s) => !s.ok);
  process.stdout.write(failed.length === 0 ? `\ndemo succeeded: ${steps.length} steps\n` : `\ndemo FAILED: ${failed.map((s) => s.name).join(', ')}\n`);
  return failed.length === 0 ? 0 : 1;
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(`demo: ${String(err)}\n`);
    process.exitCode = 1;
  },
);
