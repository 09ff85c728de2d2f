import { describe, expect, it } from 'vitest';
import { goEncode, goMarshal, goMarshalIndent, goQuote } from '../../agent/devstack/go-json.js';
import { goRoutingPath } from '../../agent/devstack/go-path.js';
import { parseChannelTopic } from '../../agent/devstack/topic-acl.js';

describe('Go-compatible JSON', () => {
  it('produces valid JSON that parses back to the same value', () => {
    const value = {
      text: 'line\nbreak\ttab "quoted" back\\slash \u0001\u001f\u007f é 😀 \u2028\u2029 <a href="x">&amp;</a>',
      numbers: [0, -1, 1.5, 1e21, 1e-7, 123456789012],
      nested: { list: [true, false, null], empty: {}, none: [] },
    };
    expect(JSON.parse(goMarshal(value))).toEqual(value);
    expect(JSON.parse(goMarshalIndent(value))).toEqual(value);
  });

  it('escapes like Go: HTML characters, line/paragraph separators, control characters', () => {
    expect(goQuote('<>&')).toBe('"\\u003c\\u003e\\u0026"');
    expect(goQuote('\u2028\u2029')).toBe('"\\u2028\\u2029"');
    expect(goQuote('\n\r\t\b\f\u0001\u001f')).toBe('"\\n\\r\\t\\b\\f\\u0001\\u001f"');
    // Go writes invalid UTF-8 (a lone surrogate has no UTF-8 form) as the replacement character.
    expect(goQuote('a\ud800b')).toBe('"a\\ufffdb"');
    expect(goQuote('😀é')).toBe('"😀é"');
  });

  it('writes Maps (structs) in insertion order without undefined fields, plain objects (Go maps) sorted by UTF-8 bytes', () => {
    expect(goMarshal(new Map<string, string | undefined>([['z', '1'], ['omitted', undefined], ['a', '2']]))).toBe('{"z":"1","a":"2"}');
    // UTF-16 order would put the emoji (D83D…) before U+FF5E; UTF-8 order (F0… vs EF…) puts it after.
    expect(Object.keys(JSON.parse(goMarshal({ '😀': 1, '～': 2, b: 3, a: 4 })) as object)).toEqual(['a', 'b', '～', '😀']);
  });

  it('indents like json.MarshalIndent(v, "", "  ") and encodes with a trailing newline like json.Encoder', () => {
    const data = { b: [1, { d: 'x', c: null }], a: {}, e: [] };
    const sortedForOracle = { a: {}, b: [1, { c: null, d: 'x' }], e: [] };
    expect(goMarshalIndent(data)).toBe(JSON.stringify(sortedForOracle, null, 2));
    expect(goEncode(data)).toBe(JSON.stringify(sortedForOracle) + '\n');
  });
});

describe('Go request path routing', () => {
  it('routes on the decoded path only when the client encoded it the way Go would', () => {
    expect(goRoutingPath('/clients/bootstrap/dc:a6:32')).toBe('/clients/bootstrap/dc:a6:32');
    expect(goRoutingPath('/clients/bootstrap/dc%3Aa6%3A32')).toBe('/clients/bootstrap/dc%3Aa6%3A32');
    expect(goRoutingPath('/clients/bootstrap/dev%20one')).toBe('/clients/bootstrap/dev one');
    expect(goRoutingPath('/clients/bootstrap/%C3%A9')).toBe('/clients/bootstrap/é');
    expect(goRoutingPath('/clients/bootstrap/a%2Fb')).toBe('/clients/bootstrap/a%2Fb');
    expect(goRoutingPath('/clients/bootstrap/bad%zz')).toBeUndefined();
  });
});

describe('Magistrala channel topics', () => {
  it('finds the domain and channel, and refuses wildcards in them', () => {
    expect(parseChannelTopic('m/dom/c/ch/sub/topic')).toEqual({ domainId: 'dom', channelId: 'ch' });
    expect(parseChannelTopic('channels/ch/messages/sub')).toEqual({ channelId: 'ch' });
    expect(parseChannelTopic('m/dom/c/+')).toBe('wildcard-channel');
    expect(parseChannelTopic('m/#')).toBe('wildcard-channel');
    expect(parseChannelTopic('m/dom/c')).toBe('malformed-topic');
    expect(parseChannelTopic('channels/ch/other')).toBe('malformed-topic');
  });
});
