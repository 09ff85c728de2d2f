import { readFile, readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { InterfaceFacts } from './choose-interface.js';

/** The part of systeminformation's NetworkInterfacesData this module reads. */
export interface SiNetworkInterface {
  iface: string;
  mac: string;
  internal: boolean;
  virtual: boolean;
  type: string;
}

export type SiNetworkInterfaces = () => Promise<SiNetworkInterface[] | SiNetworkInterface>;

export interface ListInterfacesOptions {
  sysClassNet?: string;
  /** systeminformation.networkInterfaces or a stand-in; the real package is loaded only when omitted. */
  si?: SiNetworkInterfaces;
}

const IFF_LOOPBACK = 0x8;

async function readSysfsText(path: string): Promise<string | undefined> {
  try {
    return (await readFile(path, 'utf8')).trim();
  } catch {
    return undefined;
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

/** What the kernel says about one interface; undefined when sysfs has no entry for it. */
async function readSysfsFacts(sysClassNet: string, name: string) {
  const dir = join(sysClassNet, name);
  if (!(await exists(dir))) return undefined;
  const assignText = await readSysfsText(join(dir, 'addr_assign_type'));
  const assign = assignText === undefined || assignText === '' ? Number.NaN : Number(assignText);
  const flags = Number.parseInt((await readSysfsText(join(dir, 'flags'))) ?? '', 16);
  return {
    address: (await readSysfsText(join(dir, 'address'))) ?? '',
    addrAssignType: Number.isInteger(assign) ? assign : undefined,
    loopback: Number.isInteger(flags) && (flags & IFF_LOOPBACK) !== 0,
    // Hardware NICs (PCI, USB, SDIO, platform, virtio) have a `device` link; bridges, veths, VLANs,
    // tunnels and bonds live under /sys/devices/virtual and do not.
    hasDevice: await exists(join(dir, 'device')),
    wireless: (await exists(join(dir, 'wireless'))) || (await exists(join(dir, 'phy80211'))),
  };
}

async function loadSystemInformation(): Promise<SiNetworkInterfaces> {
  // Loaded on demand: the package is large and only needed when the ID comes from a MAC.
  // systeminformation is CommonJS: Node's own loader also exposes its exports by name, a bundle
  // (the release) only as `default`, which both have.
  const si = (await import('systeminformation')).default;
  return () => si.networkInterfaces();
}

/**
 * Every network interface with the facts chooseInterface needs.
 *
 * systeminformation lists only interfaces that currently hold an IP address (it builds on
 * os.networkInterfaces()), so an unplugged eth0 would vanish and the chosen ID would change with the
 * cable. Interfaces present in sysfs but missing from that list are therefore added from sysfs.
 *
 * `virtual` comes from sysfs (no `device` link) when the interface is there: systeminformation's own
 * flag is a vendor-prefix guess that marks every VMware/VirtualBox/Hyper-V/Xen guest NIC as virtual,
 * which would leave a VM with nothing to choose.
 */
export async function listInterfaces(options: ListInterfacesOptions = {}): Promise<InterfaceFacts[]> {
  const sysClassNet = options.sysClassNet ?? '/sys/class/net';
  const networkInterfaces = options.si ?? (await loadSystemInformation());
  const reported = await networkInterfaces();
  const siList = Array.isArray(reported) ? reported : [reported];

  const byName = new Map<string, InterfaceFacts>();
  for (const entry of siList) {
    // systeminformation strips alias labels (eth0:1 -> eth0), so the same NIC may appear twice.
    if (!entry.iface || byName.has(entry.iface)) continue;
    const kernel = await readSysfsFacts(sysClassNet, entry.iface);
    byName.set(entry.iface, {
      name: entry.iface,
      mac: entry.mac || kernel?.address || '',
      internal: entry.internal || (kernel?.loopback ?? false),
      virtual: kernel ? !kernel.hasDevice : entry.virtual,
      wireless: entry.type === 'wireless' || (kernel?.wireless ?? false),
      addrAssignType: kernel?.addrAssignType,
    });
  }

  let sysfsNames: string[] = [];
  try {
    sysfsNames = await readdir(sysClassNet);
  } catch {
    // No sysfs (not Linux, or a restricted container): systeminformation's view is all there is.
  }
  for (const name of sysfsNames) {
    if (byName.has(name)) continue;
    const kernel = await readSysfsFacts(sysClassNet, name);
    if (!kernel) continue;
    byName.set(name, {
      name,
      mac: kernel.address,
      internal: kernel.loopback,
      virtual: !kernel.hasDevice,
      wireless: kernel.wireless,
      addrAssignType: kernel.addrAssignType,
    });
  }
  return [...byName.values()];
}
