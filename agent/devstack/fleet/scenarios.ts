import { setTimeout as sleep } from 'node:timers/promises';
import type { Fleet, ScenarioResult } from './fleet.js';

/**
 * The fleet scenarios. Each measures from the moment the fleet (or the server) comes back: request
 * rate seen by the servers, and when 50/99/100 % of devices were online again.
 */

/** Longest a scenario waits for the whole fleet: beyond the default backoff cap (300 s) plus margin. */
const FLEET_TIMEOUT_MS = 420_000;

async function ensureOnline(fleet: Fleet): Promise<void> {
  if (fleet.devices.every((d) => d.agent?.runtime.state === 'online')) return;
  await fleet.stopAll();
  const t0 = await fleet.bootAll(true);
  if (!(await fleet.waitAllOnline(FLEET_TIMEOUT_MS, t0))) throw new Error('the fleet did not come online for the scenario set-up');
}

/** First boot of the whole fleet: empty state directories, everyone powered on at once. */
export async function firstBoot(fleet: Fleet, jitter: boolean): Promise<ScenarioResult> {
  await fleet.stopAll();
  fleet.wipeState();
  const before = fleet.resident();
  const t0 = await fleet.bootAll(jitter);
  const all = await fleet.waitAllOnline(FLEET_TIMEOUT_MS, t0);
  const result = fleet.result('first-boot', `first boot, jitter ${jitter ? 'on' : 'off'}`, jitter, t0, all, []);
  await sleep(2_000); // let start-up garbage go before weighing
  const after = fleet.resident();
  const n = fleet.devices.length;
  return {
    ...result,
    memoryPerDeviceBytes: (after.rss - before.rss) / n,
    heapPerDeviceBytes: (after.heap - before.heap) / n,
    notes: [...result.notes, "memory per device includes the in-process dev stack's side of each connection (aedes session, sockets)"],
  };
}

export interface OutageOptions {
  jitter: boolean;
  /** How long the power stays off. */
  outageMs: number;
  /** After power returns, the servers stay unreachable this long (the uplink boots slower than the devices); 0 = reachable at once. */
  uplinkDelayMs: number;
}

/** A fleet-wide power cut: every agent dies without a goodbye; power returns to all at the same instant. */
export async function outage(fleet: Fleet, options: OutageOptions): Promise<ScenarioResult> {
  await ensureOnline(fleet);
  await fleet.powerCut();
  if (options.uplinkDelayMs > 0) await fleet.servers.stop();
  await sleep(options.outageMs);
  const t0 = await fleet.bootAll(options.jitter);
  let uplink: Promise<void> | undefined;
  if (options.uplinkDelayMs > 0) uplink = sleep(Math.max(0, t0 + options.uplinkDelayMs - performance.now())).then(() => fleet.servers.start());
  await uplink;
  const all = await fleet.waitAllOnline(FLEET_TIMEOUT_MS, t0);
  const notes = [options.uplinkDelayMs > 0 ? `servers unreachable for the first ${options.uplinkDelayMs / 1000} s after power returned` : 'servers reachable as soon as power returned'];
  return fleet.result('outage', `power cut, uplink back after ${options.uplinkDelayMs / 1000} s, jitter ${options.jitter ? 'on' : 'off'}`, options.jitter, t0, all, notes);
}

/** Every device's MQTT secret rotated on the server and its session kicked: all must re-bootstrap. */
export async function rotate(fleet: Fleet): Promise<ScenarioResult> {
  await ensureOnline(fleet);
  const t0 = performance.now();
  fleet.rotateAll();
  const all = await fleet.waitAllOnline(FLEET_TIMEOUT_MS, t0);
  return fleet.result('rotate', 'credentials of every device rotated', true, t0, all, []);
}

/** The fleet boots for the first time while Bootstrap answers 503 for `downMs`. */
export async function bootstrapDown(fleet: Fleet, downMs: number, jitter: boolean): Promise<ScenarioResult> {
  await fleet.stopAll();
  fleet.wipeState();
  fleet.setBootstrapDown(true);
  const t0 = await fleet.bootAll(jitter);
  await sleep(Math.max(0, t0 + downMs - performance.now()));
  fleet.setBootstrapDown(false);
  const all = await fleet.waitAllOnline(FLEET_TIMEOUT_MS, t0);
  return fleet.result('bootstrap-down', `first boot with Bootstrap answering 503 for ${downMs / 1000} s`, jitter, t0, all, []);
}
