// Byte-level tests of the TCP request-plane framing, built by hand from the reference description (§10.1, §10.3),
// not from the encoder: every expected buffer below is assembled field by field.
import t from 'tap';
import { LlmError } from '../src/errors.js';
import {
  DEFAULT_MAX_MESSAGE_SIZE,
  RequestFrameDecoder,
  ResponseFrameDecoder,
  TwoPartDecoder,
  decodeRequestFrame,
  decodeTwoPart,
  encodeRequestFrame,
  encodeResponseFrame,
  encodeTwoPart,
  encodeTwoPartBody,
  encodeTwoPartHeader,
  maxMessageSizeFromEnv,
} from '../src/runtime/request-plane/framing.js';

const u16 = (n: number) => Buffer.from([n >> 8, n & 0xff]);
const u32 = (n: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
};
const u64 = (n: bigint) => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(n);
  return b;
};
const txt = (s: string) => Buffer.from(s, 'utf8');

function handRequestFrame(path: string, headersJson: string, payload: Buffer): Buffer {
  return Buffer.concat([u16(txt(path).length), txt(path), u16(txt(headersJson).length), txt(headersJson), u32(payload.length), payload]);
}

function handTwoPart(header: string, body: string, checksum = 0n): Buffer {
  return Buffer.concat([u64(BigInt(txt(header).length)), u64(BigInt(txt(body).length)), u64(checksum), txt(header), txt(body)]);
}

/** Feeds `bytes` to `push` in the given chunk sizes (cycled) and collects everything decoded. */
function feed<T>(bytes: Buffer, sizes: number[], push: (b: Buffer) => T[]): T[] {
  const out: T[] = [];
  let at = 0;
  let i = 0;
  while (at < bytes.length) {
    const n = sizes[i++ % sizes.length];
    out.push(...push(bytes.subarray(at, at + n)));
    at += n;
  }
  return out;
}

t.test('request frame: encoder output equals the hand-assembled bytes', async (t) => {
  const payload = handTwoPart('{"id":"r1"}', '{"token_ids":[1,2]}');
  const expected = handRequestFrame('7b/generate', '{"request-id":"r1"}', payload);
  const encoded = encodeRequestFrame({ path: '7b/generate', headers: { 'request-id': 'r1' }, payload }, 'main');
  t.same([...encoded], [...expected]);
  // first bytes spelled out: u16 BE path length 11, then the path
  t.same([...encoded.subarray(0, 4)], [0x00, 0x0b, 0x37, 0x62]);
  const decoded = decodeRequestFrame(expected, undefined, 'main');
  t.equal(decoded.path, '7b/generate');
  t.same(decoded.headers, { 'request-id': 'r1' });
  t.same([...decoded.payload], [...payload]);
});

t.test('request frame: empty headers and payload, multi-byte UTF-8 path', async (t) => {
  const f = handRequestFrame('ff/gén', '', Buffer.alloc(0));
  t.equal(f.length, 2 + 7 + 2 + 0 + 4);
  const d = decodeRequestFrame(f, undefined, 'main');
  t.equal(d.path, 'ff/gén');
  t.same(d.headers, {});
  t.equal(d.payload.length, 0);
});

t.test('request frames survive any split into chunks and coalescing', async (t) => {
  const frames = [0, 1, 2, 3, 4].map((i) => handRequestFrame(`${i}/ep`, `{"request-id":"r${i}"}`, txt('x'.repeat(i * 37))));
  const stream = Buffer.concat(frames);
  for (const sizes of [[1], [2, 3], [7], [stream.length], [5, 100, 1]]) {
    const decoder = new RequestFrameDecoder(undefined, 'main');
    const got = feed(stream, sizes, (b) => decoder.push(b));
    t.equal(got.length, 5, `chunk sizes ${sizes}`);
    got.forEach((f, i) => {
      if (f instanceof LlmError) throw f;
      t.equal(f.path, `${i}/ep`);
      t.equal(f.headers['request-id'], `r${i}`);
      t.equal(f.payload.length, i * 37);
    });
    t.equal(decoder.buffered, 0);
  }
});

t.test('request frame: oversized payload is refused from its length prefix alone', async (t) => {
  // the limit applies to the whole frame: 2 + path + 2 + headers + 4 + payload (as Dynamo's codec does)
  const decoder = new RequestFrameDecoder(1024, 'main');
  // only the prefix arrives: path "1/a", no headers, payload_len 1014 → 1025 bytes; nothing else is needed to refuse it
  const prefix = Buffer.concat([u16(3), txt('1/a'), u16(0), u32(1014)]);
  t.throws(() => decoder.push(prefix), { code: 'LLM_ERR_PROTOCOL', message: /request frame of 1025 bytes exceeds the maximum message size of 1024 bytes \(DYN_TCP_MAX_MESSAGE_SIZE\)/ });
  // exactly at the limit is fine
  const ok = new RequestFrameDecoder(1024, 'main').push(handRequestFrame('1/a', '', Buffer.alloc(1013)));
  t.equal(ok.length, 1);
  // a 4 GiB length is refused without allocating it
  t.throws(() => new RequestFrameDecoder(undefined, 'main').push(Buffer.concat([u16(0), u16(0), u32(0xffffffff)])), /4294967303 bytes exceeds the maximum message size of 33554432/);
});

t.test('request frame: malformed headers come back as an error in place, later frames still decode', async (t) => {
  const decoder = new RequestFrameDecoder(undefined, 'main');
  const got = decoder.push(
    Buffer.concat([
      handRequestFrame('1/a', '{not json', Buffer.alloc(0)),
      handRequestFrame('1/a', '{"n":5}', Buffer.alloc(0)),
      handRequestFrame('1/a', '[1]', Buffer.alloc(0)),
      Buffer.concat([u16(2), Buffer.from([0xff, 0xfe]), u16(0), u32(0)]),
      handRequestFrame('1/ok', '{"a":"b"}', txt('p')),
    ]),
  );
  t.equal(got.length, 5);
  t.match(got[0], { code: 'LLM_ERR_PROTOCOL', message: /request frame headers are not valid JSON/ });
  t.match(got[1], { code: 'LLM_ERR_PROTOCOL', message: 'request frame header "n" must be a string, got 5' });
  t.match(got[2], { code: 'LLM_ERR_PROTOCOL', message: /must be a JSON object of strings, got \[1\]/ });
  t.match(got[3], { code: 'LLM_ERR_PROTOCOL', message: 'request frame path is not valid UTF-8' });
  t.match(got[4], { path: '1/ok', headers: { a: 'b' } });
  t.throws(() => decodeRequestFrame(Buffer.concat([handRequestFrame('1/a', '', Buffer.alloc(0)), Buffer.from([0])]), undefined, 'main'), /exactly one request frame/);
});

t.test('response frame: empty is an ACK, non-empty is error text', async (t) => {
  t.same([...encodeResponseFrame()], [0, 0, 0, 0]);
  const err = 'No handler found for path: 7b/nope';
  t.same([...encodeResponseFrame(err)], [...Buffer.concat([u32(err.length), txt(err)])]);
  const decoder = new ResponseFrameDecoder();
  const stream = Buffer.concat([u32(0), u32(err.length), txt(err), u32(0)]);
  const got = feed(stream, [1, 3], (b) => decoder.push(b));
  t.same(got, [{ ack: true }, { ack: false, error: err }, { ack: true }]);
  t.throws(() => new ResponseFrameDecoder(10).push(u32(11)), { code: 'LLM_ERR_PROTOCOL', message: /response frame of 15 bytes exceeds the maximum message size of 10 bytes/ });
});

t.test('TwoPartMessage: 24-byte prefix, header then body', async (t) => {
  const header = '{"subject":"s1","stream_type":"response"}';
  const expected = handTwoPart(header, '');
  t.same([...encodeTwoPartHeader({ subject: 's1', stream_type: 'response' })], [...expected]);
  t.same([...encodeTwoPartBody({ complete_final: true })], [...handTwoPart('', '{"complete_final":true}')]);
  t.same([...encodeTwoPart('h', 'bb')], [0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0x68, 0x62, 0x62]);
  const m = decodeTwoPart(handTwoPart('head', 'body'));
  t.equal(m.header.toString(), 'head');
  t.equal(m.body.toString(), 'body');
  t.throws(() => decodeTwoPart(Buffer.alloc(23)), /shorter than its 24-byte length prefix/);
  t.throws(() => decodeTwoPart(Buffer.concat([handTwoPart('a', 'b'), Buffer.from([1])])), /lengths say 26 bytes but the message holds 27/);
});

t.test('TwoPartMessage checksum: 0 skips, xxh3-64 of header‖body is verified', async (t) => {
  // xxh3-64 (seed 0) of the empty input, a published test vector
  const emptyHash = 0x2d06800538d394c2n;
  t.equal(decodeTwoPart(handTwoPart('', '', emptyHash)).header.length, 0);
  t.throws(() => decodeTwoPart(handTwoPart('', '', 1n)), { code: 'LLM_ERR_PROTOCOL', message: /checksum mismatch: frame says 0x1, xxh3-64 of header and body is 0x2d06800538d394c2/ });
  // the encoder's checksum covers header‖body: moving a byte from body to header keeps it
  const a = encodeTwoPart('ab', 'cd', { checksum: true });
  const b = encodeTwoPart('abc', 'd', { checksum: true });
  t.same([...a.subarray(16, 24)], [...b.subarray(16, 24)]);
  t.not(a.readBigUInt64BE(16), 0n);
  t.equal(decodeTwoPart(a).body.toString(), 'cd');
  const corrupted = Buffer.from(a);
  corrupted[corrupted.length - 1] ^= 1;
  t.throws(() => decodeTwoPart(corrupted), /checksum mismatch/);
});

t.test('TwoPartMessage stream decoder: partial and coalesced delivery, size limit on the prefix', async (t) => {
  const messages = [handTwoPart('{"subject":"u"}', ''), handTwoPart('{"error":null}', ''), ...Array.from({ length: 20 }, (_, i) => handTwoPart('', `{"data":${i}}`)), handTwoPart('"sentinel"', '')];
  const stream = Buffer.concat(messages);
  for (const sizes of [[1], [23, 1, 25], [stream.length]]) {
    const decoder = new TwoPartDecoder();
    const got = feed(stream, sizes, (b) => decoder.push(b));
    t.equal(got.length, 23);
    t.equal(got[5].body.toString(), '{"data":3}');
    t.equal(got[22].header.toString(), '"sentinel"');
    t.equal(decoder.buffered, 0);
  }
  // a prefix announcing more than the maximum is refused before the body arrives
  const decoder = new TwoPartDecoder(100);
  t.throws(() => decoder.push(Buffer.concat([u64(50n), u64(27n), u64(0n)])), { code: 'LLM_ERR_PROTOCOL', message: /TwoPartMessage of 101 bytes \(header 50, body 27\) exceeds the maximum message size of 100 bytes/ });
  t.throws(() => new TwoPartDecoder().push(Buffer.concat([u64(1n << 62n), u64(1n << 62n), u64(0n)])), /exceeds the maximum/);
  t.throws(() => encodeTwoPart('x'.repeat(80), '', { maxMessageSize: 100 }), /TwoPartMessage of 104 bytes exceeds/);
});

t.test('DYN_TCP_MAX_MESSAGE_SIZE', async (t) => {
  t.equal(maxMessageSizeFromEnv({}), DEFAULT_MAX_MESSAGE_SIZE);
  t.equal(DEFAULT_MAX_MESSAGE_SIZE, 33554432);
  t.equal(maxMessageSizeFromEnv({ DYN_TCP_MAX_MESSAGE_SIZE: '4096' }), 4096);
  t.throws(() => maxMessageSizeFromEnv({ DYN_TCP_MAX_MESSAGE_SIZE: '32MB' }), { code: 'LLM_ERR_CONFIG', message: 'DYN_TCP_MAX_MESSAGE_SIZE must be a positive integer number of bytes, got "32MB"' });
  t.throws(() => maxMessageSizeFromEnv({ DYN_TCP_MAX_MESSAGE_SIZE: '0' }), /positive integer/);
});
