import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { listInterfaces, type SiNetworkInterface } from '../../agent/identity/list-interfaces.js';
import { chooseInterface } from '../../agent/identity/choose-interface.js';
import { tempWorkDir, useTeardown } from '../helpers/agent-harness.js';

interface FakeSysfsInterface {
  address: string;
  addrAssignType?: number;
  /** Hex, as the kernel writes it (0x1003 up, 0x9 loopback). */
  flags?: string;
  /** Hardware NICs have a `device` entry. */
  device?: boolean;
  wirelessMarker?: 'wireless' | 'phy80211';
}

const t = useTeardown();

/** A /sys/class/net look-alike with the files list-interfaces reads. */
function makeSysfs(interfaces: Record<string, FakeSysfsInterface>): string {
  const dir = tempWorkDir(t, 'mgda-sysfs-');
  for (const [name, facts] of Object.entries(interfaces)) {
    const ifDir = join(dir, name);
    mkdirSync(ifDir);
    writeFileSync(join(ifDir, 'address'), `${facts.address}\n`);
    writeFileSync(join(ifDir, 'flags'), `${facts.flags ?? '0x1003'}\n`);
    if (facts.addrAssignType !== undefined) writeFileSync(join(ifDir, 'addr_assign_type'), `${facts.addrAssignType}\n`);
    if (facts.device) mkdirSync(join(ifDir, 'device'));
    if (facts.wirelessMarker) mkdirSync(join(ifDir, facts.wirelessMarker));
  }
  return dir;
}

function siEntry(iface: string, mac: string, extra: Partial<SiNetworkInterface> = {}): SiNetworkInterface {
  return { iface, mac, internal: false, virtual: false, type: 'wired', ...extra };
}

describe('listInterfaces', () => {
  it('combines systeminformation with addr_assign_type, device and wireless markers from sysfs', async () => {
    const sysClassNet = makeSysfs({
      lo: { address: '00:00:00:00:00:00', addrAssignType: 0, flags: '0x9' },
      eth0: { address: 'dc:a6:32:aa:bb:00', addrAssignType: 0, device: true },
      wlan0: { address: 'dc:a6:32:aa:bb:01', addrAssignType: 0, device: true, wirelessMarker: 'phy80211' },
      wlan1: { address: '00:c0:ca:00:00:01', addrAssignType: 3, device: true, wirelessMarker: 'wireless' },
    });
    const si = async () => [
      siEntry('lo', '00:00:00:00:00:00', { internal: true, type: 'virtual' }),
      siEntry('eth0', 'dc:a6:32:aa:bb:00'),
      // si reports "unknown" for a wireless NIC that is down; sysfs still knows it is 802.11.
      siEntry('wlan0', 'dc:a6:32:aa:bb:01', { type: 'unknown' }),
      siEntry('wlan1', '00:c0:ca:00:00:01', { type: 'unknown' }),
    ];
    const list = await listInterfaces({ sysClassNet, si });
    expect(list).toEqual([
      { name: 'lo', mac: '00:00:00:00:00:00', internal: true, virtual: true, wireless: false, addrAssignType: 0 },
      { name: 'eth0', mac: 'dc:a6:32:aa:bb:00', internal: false, virtual: false, wireless: false, addrAssignType: 0 },
      { name: 'wlan0', mac: 'dc:a6:32:aa:bb:01', internal: false, virtual: false, wireless: true, addrAssignType: 0 },
      { name: 'wlan1', mac: '00:c0:ca:00:00:01', internal: false, virtual: false, wireless: true, addrAssignType: 3 },
    ]);
  });

  it('takes wireless from systeminformation type "wireless" too', async () => {
    const sysClassNet = makeSysfs({ wlan0: { address: 'dc:a6:32:aa:bb:01', addrAssignType: 0, device: true } });
    const [wlan0] = await listInterfaces({ sysClassNet, si: async () => [siEntry('wlan0', 'dc:a6:32:aa:bb:01', { type: 'wireless' })] });
    expect(wlan0?.wireless).toBe(true);
  });

  it('a missing addr_assign_type file gives undefined', async () => {
    const sysClassNet = makeSysfs({ eth0: { address: 'dc:a6:32:aa:bb:00', device: true } });
    const [eth0] = await listInterfaces({ sysClassNet, si: async () => [siEntry('eth0', 'dc:a6:32:aa:bb:00')] });
    expect(eth0).toBeDefined();
    expect(eth0?.addrAssignType).toBeUndefined();
  });

  it('virtual follows the kernel: a VMware guest NIC is hardware, docker0 is not', async () => {
    const sysClassNet = makeSysfs({
      ens160: { address: '00:50:56:aa:bb:cc', addrAssignType: 0, device: true },
      docker0: { address: '02:42:ac:11:00:01', addrAssignType: 3 },
    });
    const si = async () => [
      // systeminformation flags 00:50:56 (VMware) as virtual by vendor prefix.
      siEntry('ens160', '00:50:56:aa:bb:cc', { virtual: true }),
      siEntry('docker0', '02:42:ac:11:00:01'),
    ];
    const list = await listInterfaces({ sysClassNet, si });
    expect(list.map((i) => [i.name, i.virtual])).toEqual([
      ['ens160', false],
      ['docker0', true],
    ]);
    expect(chooseInterface(list).chosen.name).toBe('ens160');
  });

  it('without a sysfs entry, systeminformation is all there is', async () => {
    const sysClassNet = makeSysfs({});
    const list = await listInterfaces({
      sysClassNet,
      si: async () => [siEntry('en0', 'a4:83:e7:00:00:01', { virtual: true })],
    });
    expect(list).toEqual([{ name: 'en0', mac: 'a4:83:e7:00:00:01', internal: false, virtual: true, wireless: false, addrAssignType: undefined }]);
  });

  it('works when the sysfs directory does not exist at all', async () => {
    const list = await listInterfaces({
      sysClassNet: '/nonexistent/sys/class/net',
      si: async () => [siEntry('eth0', 'dc:a6:32:aa:bb:00')],
    });
    expect(list.map((i) => i.name)).toEqual(['eth0']);
  });

  it('adds interfaces that have no IP address (unplugged eth0), so the choice does not follow the cable', async () => {
    const sysClassNet = makeSysfs({
      eth0: { address: 'dc:a6:32:aa:bb:00', addrAssignType: 0, device: true },
      wlan0: { address: 'dc:a6:32:aa:bb:01', addrAssignType: 0, device: true, wirelessMarker: 'phy80211' },
    });
    // systeminformation only lists interfaces holding an address: just wlan0 here.
    const si = async () => [siEntry('wlan0', 'dc:a6:32:aa:bb:01', { type: 'wireless' })];
    const list = await listInterfaces({ sysClassNet, si });
    expect(list).toContainEqual({ name: 'eth0', mac: 'dc:a6:32:aa:bb:00', internal: false, virtual: false, wireless: false, addrAssignType: 0 });
    expect(chooseInterface(list).chosen.name).toBe('eth0');
  });

  it('accepts a single object from systeminformation and lists an aliased NIC once', async () => {
    const sysClassNet = makeSysfs({ eth0: { address: 'dc:a6:32:aa:bb:00', addrAssignType: 0, device: true } });
    const single = await listInterfaces({ sysClassNet, si: async () => siEntry('eth0', 'dc:a6:32:aa:bb:00') });
    expect(single.map((i) => i.name)).toEqual(['eth0']);
    const twice = await listInterfaces({
      sysClassNet,
      si: async () => [siEntry('eth0', 'dc:a6:32:aa:bb:00'), siEntry('eth0', 'dc:a6:32:aa:bb:00')],
    });
    expect(twice.map((i) => i.name)).toEqual(['eth0']);
  });

  it('falls back to the sysfs address when systeminformation has no MAC', async () => {
    const sysClassNet = makeSysfs({ eth0: { address: 'dc:a6:32:aa:bb:00', addrAssignType: 0, device: true } });
    const [eth0] = await listInterfaces({ sysClassNet, si: async () => [siEntry('eth0', '')] });
    expect(eth0?.mac).toBe('dc:a6:32:aa:bb:00');
  });

  it('loads the real systeminformation when none is passed', async () => {
    // This machine's interfaces are unknown; what matters is that the lazy import works and the
    // loopback interface, which every Linux host has, comes back marked internal.
    const list = await listInterfaces();
    const loopback = list.find((i) => i.name === 'lo');
    expect(loopback?.internal).toBe(true);
  });
});
