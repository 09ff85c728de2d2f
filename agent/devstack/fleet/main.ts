import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { repoRoot } from '../agent-process.js';
import { formatMs, sparkline } from '../bench/stats.js';
import { Fleet, type ScenarioResult } from './fleet.js';
import { bootstrapDown, firstBoot, outage, rotate } from './scenarios.js';

/**
 * `npm run fleet -- --devices N [--scenario first-boot|outage|rotate|bootstrap-down|all]`: N
 * virtual devices in this one process against one dev stack. Prints the request rate the servers
 * saw (per second), its peak, when 50/99/100 % of the fleet was connected, and memory per device.
 * The outage scenario runs twice, with the agent's jitter and with every random draw pinned to the
 * top of its window (no jitter), and compares the peaks.
 */

const SCENARIOS = ['first-boot', 'outage', 'rotate', 'bootstrap-down'] as const;
type Scenario = (typeof SCENARIOS)[number];

const USAGE = `usage: npm run fleet -- --devices N [options]

  --devices N            virtual devices (default 100)
  --scenario NAME        ${SCENARIOS.join(' | ')} | all (default all)
  --jitter on|off|both   outage: compare with and without jitter (default both); others: on
  --outage-seconds S     outage: how long the power stays off (default 5)
  --uplink-delay S       outage: servers unreachable this long after power returns (default 20; 0 = at once)
  --down-seconds S       bootstrap-down: how long Bootstrap answers 503 (default 60)
  --secure               secure (AES-CFB) bootstrap instead of plain
  --out DIR              where the JSON goes (default bench-results/)
`;

function printResult(r: ScenarioResult, log: (line: string) => void): void {
  log(`\n${r.label} (${r.devices} devices): ${r.allConnected ? 'all connected' : 'NOT ALL CONNECTED'} after ${formatMs(r.connectedMs.p100 ?? r.durationMs)}`);
  log(`  connected: 50 % ${formatMs(r.connectedMs.p50)}, 99 % ${formatMs(r.connectedMs.p99)}, 100 % ${formatMs(r.connectedMs.p100)}`);
  log(`  peak requests/s: Bootstrap ${r.peakBootstrapPerSecond}, MQTT CONNECT ${r.peakMqttPerSecond}, together ${r.peakTotalPerSecond} (totals: ${r.totalBootstrap} Bootstrap, ${r.totalMqtt} CONNECT)`);
  const total = r.bootstrapPerSecond.map((b, i) => b + (r.mqttPerSecond[i] ?? 0));
  const peak = Math.max(1, ...total);
  for (let start = 0; start < total.length; start += 60) {
    const row = total.slice(start, start + 60);
    log(`  ${String(start).padStart(4)} s |${sparkline(row, peak)}| max ${Math.max(0, ...row)}/s`);
  }
  if (r.memoryPerDeviceBytes !== undefined) log(`  memory per device: ${Math.round(r.memoryPerDeviceBytes / 1024)} KB resident, ${Math.round((r.heapPerDeviceBytes ?? 0) / 1024)} KB JS heap`);
  if (r.warnLines > 0) log(`  ${r.warnLines} warn/error log lines across the fleet`);
  for (const note of r.notes) log(`  note: ${note}`);
}

async function main(argv: string[]): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        devices: { type: 'string', default: '100' },
        scenario: { type: 'string', default: 'all' },
        jitter: { type: 'string', default: 'both' },
        'outage-seconds': { type: 'string', default: '5' },
        'uplink-delay': { type: 'string', default: '20' },
        'down-seconds': { type: 'string', default: '60' },
        secure: { type: 'boolean', default: false },
        out: { type: 'string' },
        help: { type: 'boolean', default: false },
      },
      strict: true,
    }));
  } catch (error) {
    process.stderr.write(`fleet: ${(error as Error).message}\n${USAGE}`);
    return 64;
  }
  if (values.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  const number = (text: string, name: string, min: number): number => {
    if (!/^\d+(\.\d+)?$/.test(text) || Number(text) < min) throw new Error(`--${name} must be a number ≥ ${min}`);
    return Number(text);
  };
  let devices: number;
  let outageMs: number;
  let uplinkDelayMs: number;
  let downMs: number;
  try {
    devices = number(values.devices, 'devices', 1);
    outageMs = number(values['outage-seconds'], 'outage-seconds', 0) * 1000;
    uplinkDelayMs = number(values['uplink-delay'], 'uplink-delay', 0) * 1000;
    downMs = number(values['down-seconds'], 'down-seconds', 0) * 1000;
  } catch (error) {
    process.stderr.write(`fleet: ${(error as Error).message}\n`);
    return 64;
  }
  const scenarios: Scenario[] = values.scenario === 'all' ? [...SCENARIOS] : (values.scenario.split(',') as Scenario[]);
  if (!scenarios.every((s) => (SCENARIOS as readonly string[]).includes(s))) {
    process.stderr.write(`fleet: unknown scenario in "${values.scenario}"\n${USAGE}`);
    return 64;
  }
  if (!['on', 'off', 'both'].includes(values.jitter)) {
    process.stderr.write('fleet: --jitter must be on, off or both\n');
    return 64;
  }
  const log = (line: string) => process.stdout.write(`${line}\n`);
  log(`mg-device-agent fleet simulator: ${devices} devices in one process (pid ${process.pid}) with the dev stack, ${cpus().length} cores shared by both`);

  const fleet = new Fleet({ devices, secure: values.secure, log });
  const results: ScenarioResult[] = [];
  const startedAt = new Date();
  try {
    await fleet.setup();
    for (const scenario of scenarios) {
      log(`\n== ${scenario}`);
      if (scenario === 'first-boot') results.push(await firstBoot(fleet, values.jitter !== 'off'));
      if (scenario === 'rotate') results.push(await rotate(fleet));
      if (scenario === 'bootstrap-down') results.push(await bootstrapDown(fleet, downMs, values.jitter !== 'off'));
      if (scenario === 'outage') {
        const variants = values.jitter === 'both' ? [true, false] : [values.jitter === 'on'];
        for (const jitter of variants) results.push(await outage(fleet, { jitter, outageMs, uplinkDelayMs }));
      }
      for (const r of results.filter((x) => x.scenario === scenario)) printResult(r, log);
    }
  } finally {
    await fleet.close();
  }

  const withJitter = results.find((r) => r.scenario === 'outage' && r.jitter);
  const without = results.find((r) => r.scenario === 'outage' && !r.jitter);
  let comparison: { ratio: number; met: boolean } | undefined;
  if (withJitter && without) {
    const ratio = withJitter.peakTotalPerSecond / Math.max(1, without.peakTotalPerSecond);
    comparison = { ratio, met: ratio < 0.25 && withJitter.allConnected && without.allConnected };
    log(`\npower cut, peak requests/s with jitter ${withJitter.peakTotalPerSecond} vs without ${without.peakTotalPerSecond}: ratio ${ratio.toFixed(3)} (target < 0.25, every device connected): ${comparison.met ? 'met' : 'MISSED'}`);
  }
  const outDir = values.out ?? join(repoRoot(), 'bench-results');
  mkdirSync(outDir, { recursive: true });
  const file = join(outDir, `fleet-${devices}-${startedAt.toISOString().replace(/[:.]/g, '-')}.json`);
  writeFileSync(file, `${JSON.stringify({ startedAt: startedAt.toISOString(), devices, outageMs, uplinkDelayMs, downMs, results, comparison }, null, 2)}\n`);
  log(`\nresults: ${file}`);
  const everyoneConnected = results.every((r) => r.allConnected);
  return everyoneConnected && (comparison?.met ?? true) ? 0 : 1;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (error: unknown) => {
    process.stderr.write(`fleet: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
    process.exitCode = 1;
  },
);
