import { toAgentError } from '../errors/agent-error.js';
import type { AgentConfig } from '../config/schema.js';
import type { Logger } from '../logging/logger.js';
import { chooseInterface, formatMac, sameMac } from './choose-interface.js';
import type { InterfaceFacts, InterfaceRejection } from './choose-interface.js';

/** Written after the first successful bootstrap so the ID survives NIC swaps and new adapters. */
export type PersistedIdentity = {
  externalId: string;
  interfaceName?: string;
  mac?: string;
  /** ISO 8601. */
  persistedAt: string;
};

export type IdentitySource = 'config' | 'persisted' | 'interface';

export interface ResolvedIdentity {
  externalId: string;
  source: IdentitySource;
  interfaceName?: string;
  mac?: string;
  /** Interfaces that could not be used, when the ID was derived from an interface. */
  rejected?: InterfaceRejection[];
}

export interface ResolveIdentityDeps {
  config: AgentConfig['identity'];
  listInterfaces: () => Promise<InterfaceFacts[]>;
  persisted: { load(): Promise<PersistedIdentity | undefined> };
  logger: Logger;
}

/**
 * Decides the external ID: configured > persisted > derived from an interface MAC. A persisted ID is
 * kept even when the hardware changed, because the server knows the device by that ID; a mismatch
 * only earns one warning so an operator can see why the ID no longer matches the label on the box.
 */
export async function resolveIdentity(deps: ResolveIdentityDeps): Promise<ResolvedIdentity> {
  const { config, logger } = deps;

  if (config.externalId !== undefined) {
    logger.info({ externalId: config.externalId, source: 'config' }, 'external ID from configuration (identity.externalId)');
    return { externalId: config.externalId, source: 'config' };
  }

  const persisted = await deps.persisted.load();
  if (persisted && persisted.externalId !== '') {
    await warnIfHardwareMoved(deps, persisted);
    logger.info(
      { externalId: persisted.externalId, source: 'persisted', interface: persisted.interfaceName, persistedAt: persisted.persistedAt },
      'external ID from the identity persisted at first bootstrap',
    );
    return {
      externalId: persisted.externalId,
      source: 'persisted',
      ...(persisted.interfaceName !== undefined && { interfaceName: persisted.interfaceName }),
      ...(persisted.mac !== undefined && { mac: persisted.mac }),
    };
  }

  let interfaces: InterfaceFacts[];
  try {
    interfaces = await deps.listInterfaces();
  } catch (error) {
    throw toAgentError(error, 'IDENTITY_NO_USABLE_INTERFACE');
  }
  const { chosen, rejected } = chooseInterface(interfaces, config.interface === undefined ? {} : { preferred: config.interface });
  const externalId = formatMac(chosen.mac, config.macFormat);
  if (rejected.length > 0) {
    logger.debug({ rejected }, 'network interfaces not usable for the external ID');
  }
  logger.info(
    { externalId, source: 'interface', interface: chosen.name, mac: chosen.mac, wireless: chosen.wireless },
    `external ID from the MAC of ${chosen.name}`,
  );
  return { externalId, source: 'interface', interfaceName: chosen.name, mac: chosen.mac, rejected };
}

/** At most one warning, naming every way the persisted identity no longer matches this machine. */
async function warnIfHardwareMoved(deps: ResolveIdentityDeps, persisted: PersistedIdentity): Promise<void> {
  const { config, logger } = deps;
  const problems: string[] = [];
  const fields: Record<string, unknown> = { externalId: persisted.externalId, interface: persisted.interfaceName };

  if (config.interface !== undefined && config.interface !== persisted.interfaceName) {
    problems.push(
      `identity.interface is "${config.interface}" but the persisted ID came from ` +
        `${persisted.interfaceName === undefined ? 'no interface' : `"${persisted.interfaceName}"`}; the persisted ID wins`,
    );
    fields.configuredInterface = config.interface;
  }

  if (persisted.interfaceName !== undefined) {
    try {
      const live = (await deps.listInterfaces()).find((facts) => facts.name === persisted.interfaceName);
      if (!live) {
        problems.push(`interface ${persisted.interfaceName} is gone`);
      } else if (persisted.mac !== undefined && !sameMac(live.mac, persisted.mac)) {
        problems.push(`interface ${persisted.interfaceName} now has MAC ${live.mac}, not ${persisted.mac}`);
        fields.persistedMac = persisted.mac;
        fields.liveMac = live.mac;
      }
    } catch (error) {
      problems.push(`could not list network interfaces to check (${toAgentError(error).message})`);
    }
  }

  if (problems.length > 0) {
    logger.warn(
      fields,
      `keeping the persisted external ID although ${problems.join('; ')}. ` +
        'To change the ID, set identity.externalId or remove the persisted identity and re-provision the device',
    );
  }
}
