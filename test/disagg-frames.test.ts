// The KV bootstrap wire on its own: frames split across and joined within chunks, a corrupt length or header is a
// protocol error naming the peer, and a layout mismatch names what differs and both sides.
import t from 'tap';
import { FrameReader, MAX_FRAME_BYTES } from '../src/disagg/frames.js';
import { checkLayouts, type KvLayout } from '../src/disagg/layout.js';

function frame(header: unknown, body: Uint8Array = new Uint8Array(0)): Buffer {
  const json = Buffer.from(JSON.stringify(header));
  const prefix = Buffer.alloc(8);
  prefix.writeUInt32BE(4 + json.length + body.length, 0);
  prefix.writeUInt32BE(json.length, 4);
  return Buffer.concat([prefix, json, body]);
}

const layout: KvLayout = { backend: 'cpu', dtype: 'f32', pageSize: 4, numLayers: 5, numKvHeads: 4, headDim: 8, tpSize: 1, bytesPerPage: 5120 };

t.test('frames split over chunks, and two in one chunk', async (t) => {
  const body = Uint8Array.from({ length: 300 }, (_, i) => i & 255);
  const a = frame({ type: 'pages', room: '123', layout, token_ids: [1, 2, 3, 4], page_count: 1 }, body);
  const b = frame({ type: 'error', code: 'LLM_ERR_TIMEOUT', message: 'late' });
  const all = Buffer.concat([a, b]);
  const reader = new FrameReader('peer');
  const out = [];
  for (let i = 0; i < all.length; i += 7) out.push(...reader.push(all.subarray(i, i + 7)));
  t.equal(out.length, 2);
  t.same(out[0].header, { type: 'pages', room: '123', layout, token_ids: [1, 2, 3, 4], page_count: 1 });
  t.same(Array.from(out[0].body), Array.from(body));
  t.equal(out[1].header.type, 'error');
  t.same(new FrameReader('p').push(all).map((f) => f.header.type), ['pages', 'error']);
});

t.test('corrupt frames are protocol errors naming the peer', async (t) => {
  const huge = Buffer.alloc(8);
  huge.writeUInt32BE(MAX_FRAME_BYTES + 1, 0);
  t.throws(() => new FrameReader('prefill worker 10.0.0.1:5000').push(huge), { code: 'LLM_ERR_PROTOCOL', message: /prefill worker 10\.0\.0\.1:5000 claims \d+ bytes/ });
  t.throws(() => new FrameReader('x').push(frame({ type: 'fetch', room: 'abc', layout })), { code: 'LLM_ERR_PROTOCOL', message: /KV bootstrap frame from x/ });
  const notJson = Buffer.concat([Buffer.from([0, 0, 0, 7, 0, 0, 0, 3]), Buffer.from('{{{')]);
  t.throws(() => new FrameReader('y').push(notJson), { code: 'LLM_ERR_PROTOCOL', message: 'KV bootstrap frame from y: header is not JSON' });
});

t.test('layout checks', async (t) => {
  t.doesNotThrow(() => checkLayouts(layout, { ...layout, backend: 'cuda' }, 'room 1'), 'the backend alone may differ');
  t.throws(() => checkLayouts(layout, { ...layout, dtype: 'bf16', bytesPerPage: 2560 }, 'room 1'), {
    code: 'LLM_ERR_KV_TRANSFER',
    message: /^room 1: KV layouts differ in dtype, bytesPerPage: prefill side has page size 4, dtype f32, .*; decode side has page size 4, dtype bf16/,
  });
  t.throws(() => checkLayouts(layout, { ...layout, numKvHeads: 2, tpSize: 2, bytesPerPage: 2560 }, 'room 2'), { message: /differ in numKvHeads, tpSize, bytesPerPage/ });
});
