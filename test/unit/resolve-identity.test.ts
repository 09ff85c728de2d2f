import { describe, expect, it } from 'vitest';
import { resolveIdentity, type PersistedIdentity } from '../../agent/identity/resolve-identity.js';
import type { InterfaceFacts } from '../../agent/identity/choose-interface.js';
import { IdentitySchema } from '../../agent/config/schema.js';
import { AgentError } from '../../agent/errors/agent-error.js';
import { captureLogger } from '../helpers/log-capture.js';

function nic(name: string, mac: string, extra: Partial<InterfaceFacts> = {}): InterfaceFacts {
  return { name, mac, internal: false, virtual: false, wireless: false, addrAssignType: 0, ...extra };
}

const piInterfaces = [
  nic('lo', '00:00:00:00:00:00', { internal: true }),
  nic('wlan0', 'dc:a6:32:aa:bb:01', { wireless: true }),
  nic('eth0', 'dc:a6:32:aa:bb:00'),
  nic('docker0', '02:42:ac:11:00:01', { virtual: true }),
];

const listingMustNotBeNeeded = async (): Promise<InterfaceFacts[]> => {
  throw new Error('interfaces listed although not needed');
};

function persistedStore(identity: PersistedIdentity | undefined) {
  return { load: async () => identity };
}

describe('resolveIdentity', () => {
  it('an explicit identity.externalId wins without looking at disk or interfaces', async () => {
    const log = captureLogger();
    const result = await resolveIdentity({
      config: IdentitySchema.parse({ externalId: 'gateway-0042' }),
      listInterfaces: listingMustNotBeNeeded,
      persisted: { load: async () => { throw new Error('persisted identity read although not needed'); } },
      logger: log.logger,
    });
    expect(result).toEqual({ externalId: 'gateway-0042', source: 'config' });
    expect(log.at('info')).toHaveLength(1);
    expect(log.at('info')[0]).toMatchObject({ externalId: 'gateway-0042', source: 'config' });
    expect(log.at('warn')).toHaveLength(0);
  });

  it('derives the ID from the chosen interface in the configured format', async () => {
    const log = captureLogger();
    const result = await resolveIdentity({
      config: IdentitySchema.parse({ macFormat: 'upper-dash' }),
      listInterfaces: async () => piInterfaces,
      persisted: persistedStore(undefined),
      logger: log.logger,
    });
    expect(result.externalId).toBe('DC-A6-32-AA-BB-00');
    expect(result).toMatchObject({ source: 'interface', interfaceName: 'eth0', mac: 'dc:a6:32:aa:bb:00' });
    expect(result.rejected?.map((r) => r.name)).toEqual(['docker0', 'lo']);

    const info = log.at('info');
    expect(info).toHaveLength(1);
    expect(info[0]).toMatchObject({ externalId: 'DC-A6-32-AA-BB-00', source: 'interface', interface: 'eth0', msg: 'external ID from the MAC of eth0' });
    expect(log.at('debug')[0]).toMatchObject({ rejected: [{ name: 'docker0' }, { name: 'lo' }] });
    expect(log.at('warn')).toHaveLength(0);
  });

  it('defaults to lower-colon, the form Magistrala operators usually register', async () => {
    const result = await resolveIdentity({
      config: IdentitySchema.parse({}),
      listInterfaces: async () => piInterfaces,
      persisted: persistedStore(undefined),
      logger: captureLogger().logger,
    });
    expect(result.externalId).toBe('dc:a6:32:aa:bb:00');
  });

  it('honours identity.interface', async () => {
    const result = await resolveIdentity({
      config: IdentitySchema.parse({ interface: 'wlan0', macFormat: 'lower-plain' }),
      listInterfaces: async () => piInterfaces,
      persisted: persistedStore(undefined),
      logger: captureLogger().logger,
    });
    expect(result).toMatchObject({ externalId: 'dca632aabb01', interfaceName: 'wlan0' });
  });

  it('a missing identity.interface is IDENTITY_INTERFACE_NOT_FOUND', async () => {
    const run = resolveIdentity({
      config: IdentitySchema.parse({ interface: 'end0' }),
      listInterfaces: async () => piInterfaces,
      persisted: persistedStore(undefined),
      logger: captureLogger().logger,
    });
    await expect(run).rejects.toMatchObject({ code: 'IDENTITY_INTERFACE_NOT_FOUND' });
  });

  it('a failing interface listing becomes IDENTITY_NO_USABLE_INTERFACE', async () => {
    const run = resolveIdentity({
      config: IdentitySchema.parse({}),
      listInterfaces: async () => { throw new Error('sysfs not mounted'); },
      persisted: persistedStore(undefined),
      logger: captureLogger().logger,
    });
    await expect(run).rejects.toBeInstanceOf(AgentError);
    await expect(run).rejects.toMatchObject({ code: 'IDENTITY_NO_USABLE_INTERFACE' });
  });

  it('keeps the persisted ID silently when the hardware still matches', async () => {
    const log = captureLogger();
    const result = await resolveIdentity({
      config: IdentitySchema.parse({ macFormat: 'upper-plain' }),
      listInterfaces: async () => piInterfaces,
      // Stored in another notation than the live one: still the same address.
      persisted: persistedStore({ externalId: 'dc:a6:32:aa:bb:00', interfaceName: 'eth0', mac: 'DC:A6:32:AA:BB:00', persistedAt: '2025-01-01T00:00:00Z' }),
      logger: log.logger,
    });
    // The format changed in config, but the server knows the device by the persisted ID.
    expect(result).toEqual({ externalId: 'dc:a6:32:aa:bb:00', source: 'persisted', interfaceName: 'eth0', mac: 'DC:A6:32:AA:BB:00' });
    expect(log.at('warn')).toHaveLength(0);
    expect(log.at('info')).toHaveLength(1);
    expect(log.at('info')[0]).toMatchObject({ externalId: 'dc:a6:32:aa:bb:00', source: 'persisted' });
  });

  it('keeps the persisted ID with one warning when the interface MAC changed', async () => {
    const log = captureLogger();
    const result = await resolveIdentity({
      config: IdentitySchema.parse({}),
      listInterfaces: async () => piInterfaces,
      persisted: persistedStore({ externalId: 'b8:27:eb:00:00:01', interfaceName: 'eth0', mac: 'b8:27:eb:00:00:01', persistedAt: '2025-01-01T00:00:00Z' }),
      logger: log.logger,
    });
    expect(result.externalId).toBe('b8:27:eb:00:00:01');
    expect(result.source).toBe('persisted');
    const warnings = log.at('warn');
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatchObject({ persistedMac: 'b8:27:eb:00:00:01', liveMac: 'dc:a6:32:aa:bb:00', interface: 'eth0' });
    expect(warnings[0]?.msg).toContain('eth0 now has MAC dc:a6:32:aa:bb:00, not b8:27:eb:00:00:01');
  });

  it('keeps the persisted ID with one warning when the interface is gone', async () => {
    const log = captureLogger();
    const result = await resolveIdentity({
      config: IdentitySchema.parse({}),
      listInterfaces: async () => piInterfaces,
      persisted: persistedStore({ externalId: 'gw-1', interfaceName: 'enx001122334455', mac: '00:11:22:33:44:55', persistedAt: '2025-01-01T00:00:00Z' }),
      logger: log.logger,
    });
    expect(result).toMatchObject({ externalId: 'gw-1', source: 'persisted' });
    expect(log.at('warn')).toHaveLength(1);
    expect(log.at('warn')[0]?.msg).toContain('interface enx001122334455 is gone');
  });

  it('puts a changed identity.interface and a changed MAC into the same single warning', async () => {
    const log = captureLogger();
    await resolveIdentity({
      config: IdentitySchema.parse({ interface: 'wlan0' }),
      listInterfaces: async () => piInterfaces,
      persisted: persistedStore({ externalId: 'b8:27:eb:00:00:01', interfaceName: 'eth0', mac: 'b8:27:eb:00:00:01', persistedAt: '2025-01-01T00:00:00Z' }),
      logger: log.logger,
    });
    const warnings = log.at('warn');
    expect(warnings).toHaveLength(1);
    expect(warnings[0]?.msg).toContain('identity.interface is "wlan0"');
    expect(warnings[0]?.msg).toContain('now has MAC');
  });

  it('a persisted ID without an interface needs no listing', async () => {
    const log = captureLogger();
    const result = await resolveIdentity({
      config: IdentitySchema.parse({}),
      listInterfaces: listingMustNotBeNeeded,
      persisted: persistedStore({ externalId: 'gw-7', persistedAt: '2025-01-01T00:00:00Z' }),
      logger: log.logger,
    });
    expect(result).toEqual({ externalId: 'gw-7', source: 'persisted' });
    expect(log.at('warn')).toHaveLength(0);
  });

  it('a failed listing does not lose the persisted ID', async () => {
    const log = captureLogger();
    const result = await resolveIdentity({
      config: IdentitySchema.parse({}),
      listInterfaces: async () => { throw new Error('sysfs not mounted'); },
      persisted: persistedStore({ externalId: 'gw-8', interfaceName: 'eth0', mac: 'dc:a6:32:aa:bb:00', persistedAt: '2025-01-01T00:00:00Z' }),
      logger: log.logger,
    });
    expect(result.externalId).toBe('gw-8');
    expect(log.at('warn')).toHaveLength(1);
    expect(log.at('warn')[0]?.msg).toContain('could not list network interfaces');
  });
});
