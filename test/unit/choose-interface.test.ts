import { describe, expect, it } from 'vitest';
import {
  chooseInterface,
  compareInterfaceNames,
  formatMac,
  isLocallyAdministered,
  parseMac,
  type InterfaceFacts,
} from '../../agent/identity/choose-interface.js';
import { AgentError } from '../../agent/errors/agent-error.js';
import { MacFormats } from '../../agent/config/schema.js';
import { thrownAgentError } from '../helpers/agent-errors.js';

function nic(name: string, mac: string, extra: Partial<InterfaceFacts> = {}): InterfaceFacts {
  return { name, mac, internal: false, virtual: false, wireless: false, addrAssignType: 0, ...extra };
}

const lo = nic('lo', '00:00:00:00:00:00', { internal: true });

/** Every permutation of a short list, to prove the OS listing order never matters. */
function permutations<T>(items: readonly T[]): T[][] {
  if (items.length <= 1) return [[...items]];
  return items.flatMap((item, i) => permutations([...items.slice(0, i), ...items.slice(i + 1)]).map((rest) => [item, ...rest]));
}

describe('chooseInterface on typical machines', () => {
  const cases: { title: string; list: InterfaceFacts[]; chosen: string }[] = [
    {
      title: 'Raspberry Pi with eth0 and wlan0: wired wins',
      list: [lo, nic('wlan0', 'dc:a6:32:aa:bb:01', { wireless: true }), nic('eth0', 'dc:a6:32:aa:bb:00')],
      chosen: 'eth0',
    },
    {
      title: 'Pi with a randomised Wi-Fi MAC and a permanent one on eth0',
      list: [nic('wlan0', 'a6:11:22:33:44:55', { wireless: true, addrAssignType: 3 }), nic('eth0', 'dc:a6:32:aa:bb:00')],
      chosen: 'eth0',
    },
    {
      title: 'VM whose only NIC is locally administered but permanent (02:fc:...)',
      list: [lo, nic('eth0', '02:fc:00:00:00:01')],
      chosen: 'eth0',
    },
    {
      title: 'universally administered wireless beats locally administered wired',
      list: [nic('eth0', '02:fc:00:00:00:01'), nic('wlan0', 'b8:27:eb:00:00:02', { wireless: true })],
      chosen: 'wlan0',
    },
    {
      title: 'Docker host: docker0, veth, br-, wg0, tun0, tap0, ifb0 are never chosen',
      list: [
        nic('docker0', '02:42:ac:11:00:01'),
        nic('br-1a2b3c', '00:11:22:33:44:01'),
        nic('veth12ab', '00:11:22:33:44:02'),
        nic('wg0', '00:11:22:33:44:03'),
        nic('tun0', '00:11:22:33:44:04'),
        nic('tap0', '00:11:22:33:44:05'),
        nic('ifb0', '00:11:22:33:44:06'),
        nic('virbr0', '00:11:22:33:44:07'),
        nic('enp3s0', 'f4:4d:30:00:00:09'),
      ],
      chosen: 'enp3s0',
    },
    {
      title: 'wired beats wireless even when the wireless name sorts first (ath0 vs eth0)',
      list: [nic('ath0', '00:03:7f:00:00:01', { wireless: true }), nic('eth0', '00:03:7f:00:00:02')],
      chosen: 'eth0',
    },
    {
      title: 'names sort naturally: eth2 before eth10',
      list: [nic('eth10', '00:11:22:33:44:10'), nic('eth2', '00:11:22:33:44:02')],
      chosen: 'eth2',
    },
    {
      title: 'bond0 is refused, its first member is used',
      list: [nic('bond0', 'dc:a6:32:aa:bb:00', { addrAssignType: 2 }), nic('eth1', 'dc:a6:32:aa:bb:00', { addrAssignType: 3 }), nic('eth0', 'dc:a6:32:aa:bb:00')],
      chosen: 'eth0',
    },
  ];

  for (const { title, list, chosen } of cases) {
    it(title, () => {
      expect(chooseInterface(list).chosen.name).toBe(chosen);
    });
  }

  it('makes the same choice whatever order the OS lists the interfaces in', () => {
    const list = [
      lo,
      nic('wlan0', 'dc:a6:32:aa:bb:01', { wireless: true }),
      nic('eth1', 'dc:a6:32:aa:bb:03'),
      nic('eth0', 'dc:a6:32:aa:bb:02'),
      nic('docker0', '02:42:ac:11:00:01', { virtual: true }),
    ];
    const choices = new Set(permutations(list).map((order) => chooseInterface(order).chosen.name));
    expect([...choices]).toEqual(['eth0']);
    const rejectedNames = new Set(permutations(list).map((order) => JSON.stringify(chooseInterface(order).rejected)));
    expect(rejectedNames.size).toBe(1);
  });
});

describe('chooseInterface rejections', () => {
  const rejections: { title: string; facts: InterfaceFacts; reason: RegExp }[] = [
    { title: 'loopback', facts: lo, reason: /loopback/ },
    { title: 'interface flagged virtual', facts: nic('enp0s9', '00:11:22:33:44:55', { virtual: true }), reason: /virtual/ },
    { title: 'docker bridge', facts: nic('docker0', '02:42:ac:11:00:01'), reason: /docker/i },
    { title: 'team device', facts: nic('team0', '00:11:22:33:44:55'), reason: /team/ },
    { title: 'VLAN sub-interface', facts: nic('eth0.100', '00:11:22:33:44:55'), reason: /VLAN/ },
    { title: 'all-zero MAC', facts: nic('eth0', '00:00:00:00:00:00'), reason: /all-zero/ },
    { title: 'broadcast MAC', facts: nic('eth0', 'ff:ff:ff:ff:ff:ff'), reason: /broadcast/ },
    { title: 'multicast MAC', facts: nic('eth0', '01:00:5e:00:00:01'), reason: /multicast/ },
    { title: 'malformed MAC', facts: nic('eth0', 'dc:a6:32:01:02'), reason: /not a 6-byte/ },
    { title: 'InfiniBand-length address', facts: nic('ib0', '80:00:02:08:fe:80:00:00:00:00:00:00:00:02:c9:03:00:0a:2b:3c'), reason: /not a 6-byte/ },
    { title: 'no MAC at all', facts: nic('wwan0', ''), reason: /no MAC/ },
    { title: 'random MAC (addr_assign_type 1)', facts: nic('wlan0', 'b2:11:22:33:44:55', { wireless: true, addrAssignType: 1 }), reason: /random/ },
    {
      title: 'locally administered MAC set by software (Wi-Fi randomisation)',
      facts: nic('wlan0', 'b2:11:22:33:44:55', { wireless: true, addrAssignType: 3 }),
      reason: /locally administered.*addr_assign_type 3/,
    },
  ];

  for (const { title, facts, reason } of rejections) {
    it(`refuses ${title}`, () => {
      const error = thrownAgentError(() => chooseInterface([facts]));
      expect(error.code).toBe('IDENTITY_NO_USABLE_INTERFACE');
      expect(error.message).toMatch(reason);
    });
  }

  it('only wlan0 with a random MAC: nothing usable', () => {
    const error = thrownAgentError(() =>
      chooseInterface([lo, nic('wlan0', 'ae:12:34:56:78:9a', { wireless: true, addrAssignType: 1 })]),
    );
    expect(error.code).toBe('IDENTITY_NO_USABLE_INTERFACE');
    expect(error.message).toContain('wlan0: random MAC');
    expect(error.message).toContain('lo: loopback');
    expect(error.message).toContain('identity.externalId');
  });

  it('lists every reason when nothing is usable', () => {
    const list = [
      lo,
      nic('docker0', '02:42:ac:11:00:01'),
      nic('eth0', '00:00:00:00:00:00'),
      nic('wlan0', 'ae:12:34:56:78:9a', { wireless: true, addrAssignType: 1 }),
    ];
    const error = thrownAgentError(() => chooseInterface(list));
    expect(error.code).toBe('IDENTITY_NO_USABLE_INTERFACE');
    for (const name of ['lo', 'docker0', 'eth0', 'wlan0']) expect(error.message).toContain(`${name}:`);
    expect(error.details.rejected).toBe(
      'docker0: software interface: Docker bridge (docker*); eth0: all-zero MAC address; lo: loopback interface; ' +
        'wlan0: random MAC (addr_assign_type 1: the kernel generates a new one each boot)',
    );
  });

  it('an empty list is an error too', () => {
    expect(thrownAgentError(() => chooseInterface([])).code).toBe('IDENTITY_NO_USABLE_INTERFACE');
  });

  it('reports the unusable interfaces next to the chosen one', () => {
    const { chosen, rejected } = chooseInterface([nic('eth0', 'dc:a6:32:aa:bb:00'), nic('docker0', '02:42:ac:11:00:01'), lo]);
    expect(chosen.name).toBe('eth0');
    expect(rejected.map((r) => r.name)).toEqual(['docker0', 'lo']);
  });
});

describe('chooseInterface with identity.interface', () => {
  const list = [lo, nic('eth0', 'dc:a6:32:aa:bb:00'), nic('wlan0', 'dc:a6:32:aa:bb:01', { wireless: true }), nic('docker0', '02:42:ac:11:00:01')];

  it('uses the named interface even when automatic choice would pick another', () => {
    expect(chooseInterface(list, { preferred: 'wlan0' }).chosen).toEqual(list[2]);
  });

  it('IDENTITY_INTERFACE_NOT_FOUND names the missing interface and the ones present', () => {
    const error = thrownAgentError(() => chooseInterface(list, { preferred: 'end0' }));
    expect(error.code).toBe('IDENTITY_INTERFACE_NOT_FOUND');
    expect(error.message).toContain('"end0"');
    expect(error.message).toContain('docker0, eth0, lo, wlan0');
  });

  it('IDENTITY_INTERFACE_UNUSABLE says why', () => {
    const error = thrownAgentError(() => chooseInterface(list, { preferred: 'docker0' }));
    expect(error.code).toBe('IDENTITY_INTERFACE_UNUSABLE');
    expect(error.message).toContain('"docker0"');
    expect(error.message).toContain('Docker bridge');
  });

  it('IDENTITY_INTERFACE_UNUSABLE for a random MAC on the named interface', () => {
    const error = thrownAgentError(() =>
      chooseInterface([nic('wlan0', 'ae:12:34:56:78:9a', { wireless: true, addrAssignType: 1 })], { preferred: 'wlan0' }),
    );
    expect(error.code).toBe('IDENTITY_INTERFACE_UNUSABLE');
    expect(error.message).toContain('random MAC');
  });
});

describe('MAC helpers', () => {
  const expected: Record<(typeof MacFormats)[number], string> = {
    'lower-colon': 'dc:a6:32:01:02:0f',
    'upper-colon': 'DC:A6:32:01:02:0F',
    'lower-dash': 'dc-a6-32-01-02-0f',
    'upper-dash': 'DC-A6-32-01-02-0F',
    'lower-plain': 'dca63201020f',
    'upper-plain': 'DCA63201020F',
  };

  for (const format of MacFormats) {
    it(`formats ${format} from any notation`, () => {
      for (const input of ['dc:a6:32:01:02:0f', 'DC-A6-32-01-02-0F', 'dca63201020F']) {
        expect(formatMac(input, format)).toBe(expected[format]);
      }
    });
  }

  it('formatMac refuses what is not a MAC', () => {
    expect(() => formatMac('dc:a6:32:01:02', 'lower-colon')).toThrow(AgentError);
    expect(() => formatMac('dc:a6-32:01:02:0f', 'lower-colon')).toThrow(AgentError);
  });

  it('parseMac accepts six octets only', () => {
    expect(parseMac('dc:a6:32:01:02:0f')?.toString('hex')).toBe('dca63201020f');
    expect(parseMac('dc:a6:32:01:02:0f:00')).toBeUndefined();
    expect(parseMac('zz:a6:32:01:02:0f')).toBeUndefined();
    expect(parseMac('')).toBeUndefined();
  });

  it('isLocallyAdministered reads the U/L bit of the first octet', () => {
    expect(isLocallyAdministered('02:fc:00:00:00:01')).toBe(true);
    expect(isLocallyAdministered('b2:11:22:33:44:55')).toBe(true);
    expect(isLocallyAdministered('dc:a6:32:01:02:03')).toBe(false);
    expect(isLocallyAdministered('B8-27-EB-00-00-01')).toBe(false);
    expect(isLocallyAdministered('00:00:00:00:00:00')).toBe(false);
  });

  it('compareInterfaceNames is natural and total', () => {
    const names = ['wlan0', 'eth10', 'eth2', 'enp3s0', 'eth0', 'enp10s0', 'eno1'];
    expect([...names].sort(compareInterfaceNames)).toEqual(['eno1', 'enp3s0', 'enp10s0', 'eth0', 'eth2', 'eth10', 'wlan0']);
    expect(compareInterfaceNames('eth01', 'eth1')).not.toBe(0);
  });
});
