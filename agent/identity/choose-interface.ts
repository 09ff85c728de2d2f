import { AgentError } from '../errors/agent-error.js';
import type { MacFormat } from '../config/schema.js';

/**
 * Picks the network interface whose MAC becomes the device's external ID. Pure: the facts come from
 * list-interfaces.ts, so every rule here is testable with plain tables.
 *
 * The ID must be the same on every boot, so the choice never depends on link state, addresses or the
 * order the OS lists interfaces in; only on what the hardware is.
 */
export interface InterfaceFacts {
  name: string;
  /** As the OS reports it; validated here. */
  mac: string;
  /** Loopback. */
  internal: boolean;
  /** A software device with no hardware behind it (bridge, veth, VLAN, tunnel...). */
  virtual: boolean;
  wireless: boolean;
  /** Linux /sys/class/net/<if>/addr_assign_type: 0 permanent, 1 random, 2 stolen, 3 set by software. */
  addrAssignType?: number;
}

export interface InterfaceRejection {
  name: string;
  reason: string;
}

export interface InterfaceChoice {
  chosen: InterfaceFacts;
  /** Interfaces that could never be chosen, with why (usable but lower-ranked ones are not listed). */
  rejected: InterfaceRejection[];
}

export const ADDR_ASSIGN_PERMANENT = 0;
export const ADDR_ASSIGN_RANDOM = 1;

/**
 * Names of software interfaces whose MAC is made up, copied or changes with configuration.
 * bond/team are refused too: their MAC is borrowed from whichever member joined first and changes
 * when membership changes; the member NICs themselves remain eligible.
 */
const SOFTWARE_INTERFACE_NAMES: readonly { pattern: RegExp; kind: string }[] = [
  { pattern: /^docker/, kind: 'Docker bridge (docker*)' },
  { pattern: /^br-/, kind: 'bridge (br-*)' },
  { pattern: /^br\d/, kind: 'bridge (br<N>)' },
  { pattern: /^(?:bridge|vmbr|lxcbr|lxdbr|virbr|cni|podman|kube-|cilium|flannel|weave)/, kind: 'bridge or container network' },
  { pattern: /^veth/, kind: 'virtual Ethernet pair (veth*)' },
  { pattern: /^(?:cali|vnet|macvtap|macvlan|ipvlan|vxlan|dummy)/, kind: 'virtual or overlay interface' },
  { pattern: /^tun/, kind: 'tunnel (tun*)' },
  { pattern: /^tap/, kind: 'tap device (tap*)' },
  { pattern: /^(?:wg|tailscale|zt)/, kind: 'VPN interface' },
  { pattern: /^ifb/, kind: 'intermediate functional block (ifb*)' },
  { pattern: /^bond/, kind: 'bond (MAC borrowed from a member; use the member NIC)' },
  { pattern: /^team/, kind: 'team (MAC borrowed from a member; use the member NIC)' },
  { pattern: /\.\d+$/, kind: 'VLAN sub-interface (shares its parent\'s MAC; use the parent)' },
];

const MAC_PATTERN = /^[0-9a-f]{2}([:-]?)[0-9a-f]{2}(?:\1[0-9a-f]{2}){4}$/i;

/** The six bytes of an Ethernet MAC written with ':' or '-' separators or none; undefined otherwise. */
export function parseMac(mac: string): Buffer | undefined {
  const text = mac.trim();
  if (!MAC_PATTERN.test(text)) return undefined;
  return Buffer.from(text.replace(/[:-]/g, ''), 'hex');
}

function requireMac(mac: string): Buffer {
  const bytes = parseMac(mac);
  if (!bytes) throw new AgentError('INTERNAL', `"${mac}" is not a 6-byte MAC address`, { details: { mac } });
  return bytes;
}

/** The U/L bit: set on addresses a host or hypervisor made up rather than the vendor's burned-in one. */
export function isLocallyAdministered(mac: string): boolean {
  return ((requireMac(mac)[0] ?? 0) & 0x02) !== 0;
}

/** Renders a MAC in one of the configured formats, e.g. lower-colon dc:a6:32:01:02:03, upper-plain DCA632010203. */
export function formatMac(mac: string, format: MacFormat): string {
  const hex = requireMac(mac).toString('hex');
  const [letterCase, separator] = format.split('-') as [string, string];
  const octets = hex.match(/../g) ?? [];
  const joined = octets.join(separator === 'colon' ? ':' : separator === 'dash' ? '-' : '');
  return letterCase === 'upper' ? joined.toUpperCase() : joined;
}

/** Same address whatever the notation; false when either is not a MAC. */
export function sameMac(a: string, b: string): boolean {
  const left = parseMac(a);
  const right = parseMac(b);
  return left !== undefined && right !== undefined && left.equals(right);
}

/** Why this interface can never provide the external ID; undefined when it can. */
export function unusableReason(facts: InterfaceFacts): string | undefined {
  if (facts.internal || facts.name === 'lo') return 'loopback interface';
  const software = SOFTWARE_INTERFACE_NAMES.find((entry) => entry.pattern.test(facts.name));
  if (software) return `software interface: ${software.kind}`;
  if (facts.virtual) return 'virtual interface (no hardware device behind it)';
  if (facts.mac.trim() === '') return 'has no MAC address';
  const bytes = parseMac(facts.mac);
  if (!bytes) return `MAC "${facts.mac}" is not a 6-byte Ethernet address`;
  if (bytes.every((b) => b === 0)) return 'all-zero MAC address';
  if (bytes.every((b) => b === 0xff)) return 'broadcast MAC address';
  if (((bytes[0] ?? 0) & 0x01) !== 0) return 'multicast MAC address';
  if (facts.addrAssignType === ADDR_ASSIGN_RANDOM) {
    return 'random MAC (addr_assign_type 1: the kernel generates a new one each boot)';
  }
  // A locally administered address is only stable when the kernel got it from the device (0) or we
  // cannot tell (non-Linux sysfs); one set by software (2 stolen, 3 set) is typically Wi-Fi MAC
  // randomisation by NetworkManager/iwd and changes across boots or networks.
  if (
    ((bytes[0] ?? 0) & 0x02) !== 0 &&
    facts.addrAssignType !== undefined &&
    facts.addrAssignType !== ADDR_ASSIGN_PERMANENT
  ) {
    return `locally administered MAC assigned by software (addr_assign_type ${facts.addrAssignType}), likely randomised`;
  }
  return undefined;
}

/** Compares names so eth2 sorts before eth10, independent of locale and of the OS listing order. */
export function compareInterfaceNames(a: string, b: string): number {
  const chunks = (s: string) => s.match(/\d+|\D+/g) ?? [];
  const left = chunks(a);
  const right = chunks(b);
  for (let i = 0; i < Math.min(left.length, right.length); i += 1) {
    const x = left[i] as string;
    const y = right[i] as string;
    if (x === y) continue;
    const bothNumeric = /^\d/.test(x) && /^\d/.test(y);
    if (bothNumeric) {
      const byValue = BigInt(x) < BigInt(y) ? -1 : BigInt(x) > BigInt(y) ? 1 : 0;
      if (byValue !== 0) return byValue;
    }
    return x < y ? -1 : 1;
  }
  if (left.length !== right.length) return left.length - right.length;
  return a < b ? -1 : a > b ? 1 : 0;
}

/** Ranking among usable interfaces: vendor MACs, then wired, then name; MAC last so the order is total. */
function compareCandidates(a: InterfaceFacts, b: InterfaceFacts): number {
  const local = Number(isLocallyAdministered(a.mac)) - Number(isLocallyAdministered(b.mac));
  if (local !== 0) return local;
  const wireless = Number(a.wireless) - Number(b.wireless);
  if (wireless !== 0) return wireless;
  const byName = compareInterfaceNames(a.name, b.name);
  if (byName !== 0) return byName;
  const macA = a.mac.toLowerCase();
  const macB = b.mac.toLowerCase();
  return macA < macB ? -1 : macA > macB ? 1 : 0;
}

export function chooseInterface(list: readonly InterfaceFacts[], options: { preferred?: string } = {}): InterfaceChoice {
  const rejected: InterfaceRejection[] = [];
  const usable: InterfaceFacts[] = [];
  const byName = [...list].sort((a, b) => compareInterfaceNames(a.name, b.name));

  if (options.preferred !== undefined) {
    const preferred = options.preferred;
    const matching = byName.filter((facts) => facts.name === preferred);
    if (matching.length === 0) {
      const available = byName.map((facts) => facts.name).join(', ') || 'none';
      throw new AgentError(
        'IDENTITY_INTERFACE_NOT_FOUND',
        `network interface "${preferred}" (identity.interface) does not exist; interfaces present: ${available}`,
        { details: { interface: preferred, available } },
      );
    }
    for (const facts of matching) {
      const reason = unusableReason(facts);
      if (reason === undefined) usable.push(facts);
      else rejected.push({ name: facts.name, reason });
    }
    const chosen = usable.sort(compareCandidates)[0];
    if (!chosen) {
      const reason = rejected.map((r) => r.reason).join('; ');
      throw new AgentError(
        'IDENTITY_INTERFACE_UNUSABLE',
        `network interface "${preferred}" (identity.interface) cannot provide a stable external ID: ${reason}. ` +
          'Choose another interface or set identity.externalId',
        { details: { interface: preferred, reason } },
      );
    }
    return { chosen, rejected };
  }

  for (const facts of byName) {
    const reason = unusableReason(facts);
    if (reason === undefined) usable.push(facts);
    else rejected.push({ name: facts.name, reason });
  }
  const chosen = usable.sort(compareCandidates)[0];
  if (!chosen) {
    const reasons = rejected.map((r) => `${r.name}: ${r.reason}`).join('; ');
    throw new AgentError(
      'IDENTITY_NO_USABLE_INTERFACE',
      `no network interface can provide a stable external ID (${reasons || 'no interfaces found'}). ` +
        'Set identity.externalId or identity.interface',
      { details: { rejected: reasons } },
    );
  }
  return { chosen, rejected };
}
