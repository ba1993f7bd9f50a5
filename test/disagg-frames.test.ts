// The KV bootstrap wire on its own: frames split across and joined within chunks, a corrupt length or header is a
// protocol error naming the peer, and a layout mismatch names what differs and both sides; page repacking, a
// hand-over's partial last page included.
import t from 'tap';
import { FrameReader, MAX_FRAME_BYTES } from '../src/disagg/frames.js';
import { checkLayouts, type KvLayout } from '../src/disagg/layout.js';
import { bf16ToF32, convertPages, f32ToBf16 } from '../src/disagg/convert.js';

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

t.test('layout checks: page size and dtype are converted, the per-token shape and TP split must match', async (t) => {
  t.doesNotThrow(() => checkLayouts(layout, { ...layout, backend: 'cuda' }, 'room 1'), 'the backend alone may differ');
  t.doesNotThrow(() => checkLayouts(layout, { ...layout, dtype: 'bf16', pageSize: 16, bytesPerPage: 10240 }, 'room 1'), 'page size and dtype are converted');
  t.throws(() => checkLayouts(layout, { ...layout, dtype: 'fp8', bytesPerPage: 1280 }, 'room 1'), { code: 'LLM_ERR_KV_TRANSFER', message: /^room 1: KV layouts differ in dtype: prefill side has page size 4, dtype f32, .*; decode side has page size 4, dtype fp8/ });
  t.throws(() => checkLayouts(layout, { ...layout, numKvHeads: 2, bytesPerPage: 2560 }, 'room 2'), { message: /differ in numKvHeads/ });
  t.throws(() => checkLayouts({ ...layout, tpSize: 2 }, layout, 'room 3'), {
    code: 'LLM_ERR_KV_TRANSFER',
    message: /^room 3: KV TP layouts differ: the prefill side splits its KV heads over --tp-size 2, the decode side over --tp-size 1/,
  });
});

t.test('dtype conversion: f32 -> bf16 -> f32 within bf16 rounding, bf16 -> f32 exact', async (t) => {
  const xs = Float32Array.from([0, -0, 1, -1, 3.14159265, 1e-20, -65504.5, 1e30, 0.1, 1 + 2 ** -8, 1 + 3 * 2 ** -8, Infinity, -Infinity, NaN]);
  const back = bf16ToF32(f32ToBf16(xs));
  for (let i = 0; i < xs.length; i++) {
    if (Number.isNaN(xs[i])) t.ok(Number.isNaN(back[i]), 'NaN stays NaN');
    else if (!Number.isFinite(xs[i])) t.equal(back[i], xs[i]);
    else t.ok(Math.abs(back[i] - xs[i]) <= Math.abs(xs[i]) * 2 ** -8, `${xs[i]} -> ${back[i]}`);
  }
  t.equal(back[9], 1, 'ties round to even (down)');
  t.equal(back[10], 1 + 4 * 2 ** -8, 'ties round to even (up)');
  const bits = Uint16Array.from({ length: 65536 }, (_, i) => i).filter((b) => (b & 0x7f80) !== 0x7f80); // every finite bf16
  t.same(Array.from(f32ToBf16(bf16ToF32(bits))), Array.from(bits), 'bf16 -> f32 -> bf16 is the identity');
});

t.test('page repacking: 16 -> 4 and 4 -> 16 token rows, with dtype conversion', async (t) => {
  const f32 = { ...layout, pageSize: 4 };
  const tokens = 40; // 10 pages of 4, 2 whole pages of 16 (8 tokens left over)
  const rowElems = layout.numKvHeads * layout.headDim;
  const tensors = 2 * layout.numLayers;
  // value of element e of token t in tensor k, page-major export layout of page size 4
  const value = (k: number, tok: number, e: number) => k * 1000 + tok + e / 64;
  const src = new Float32Array(tokens * tensors * rowElems);
  for (let tok = 0; tok < tokens; tok++) for (let k = 0; k < tensors; k++) for (let e = 0; e < rowElems; e++) src[((Math.floor(tok / 4) * tensors + k) * 4 + (tok % 4)) * rowElems + e] = value(k, tok, e);
  const to16 = { ...layout, pageSize: 16, dtype: 'bf16', bytesPerPage: 2 * 5 * 16 * rowElems * 2 };
  const c = convertPages(new Uint8Array(src.buffer), 10, f32, to16);
  t.equal(c.pageCount, 2);
  t.equal(c.tokenCount, 32);
  const out = bf16ToF32(new Uint16Array(c.data.buffer, c.data.byteOffset, c.data.length / 2));
  for (const [tok, k, e] of [[0, 0, 0], [5, 3, 7], [31, 9, 31], [17, 1, 2]]) {
    const got = out[((Math.floor(tok / 16) * tensors + k) * 16 + (tok % 16)) * rowElems + e];
    t.ok(Math.abs(got - value(k, tok, e)) <= Math.abs(value(k, tok, e)) * 2 ** -8, `token ${tok} tensor ${k} element ${e}`);
  }
  const back = convertPages(c.data, 2, to16, f32);
  t.equal(back.pageCount, 8);
  t.same(Array.from(new Float32Array(back.data.buffer, back.data.byteOffset, back.data.length / 4)), Array.from(bf16ToF32(f32ToBf16(src.subarray(0, 32 * tensors * rowElems)))), 'repacked back to pages of 4, exactly the rounded values');
});

t.test('a hand-over\'s partial last page is repacked too: 38 tokens, 4 -> 16 -> 4', async (t) => {
  const rowElems = layout.numKvHeads * layout.headDim;
  const tensors = 2 * layout.numLayers;
  const tokens = 38; // pages of 4: 9 full + one of 2; pages of 16: 2 full + one of 6
  const src = new Float32Array(10 * 4 * tensors * rowElems);
  for (let tok = 0; tok < tokens; tok++) {
    for (let k = 0; k < tensors; k++) for (let e = 0; e < rowElems; e++) src[((Math.floor(tok / 4) * tensors + k) * 4 + (tok % 4)) * rowElems + e] = k * 1000 + tok + e / 64;
  }
  const to16 = { ...layout, pageSize: 16, bytesPerPage: 4 * layout.bytesPerPage };
  const c = convertPages(new Uint8Array(src.buffer), 10, layout, to16, tokens);
  t.same([c.pageCount, c.tokenCount], [3, tokens], 'three pages of 16, the last holding 6 tokens');
  const back = convertPages(c.data, 3, to16, layout, tokens);
  t.same([back.pageCount, back.tokenCount], [10, tokens]);
  const row = (data: Float32Array, ps: number, tok: number, k: number) => data.subarray(((Math.floor(tok / ps) * tensors + k) * ps + (tok % ps)) * rowElems, ((Math.floor(tok / ps) * tensors + k) * ps + (tok % ps) + 1) * rowElems);
  const out = new Float32Array(back.data.buffer, back.data.byteOffset, back.data.length / 4);
  let same = true;
  for (let tok = 0; tok < tokens; tok++) for (let k = 0; k < tensors; k++) same &&= row(out, 4, tok, k).every((v, e) => v === row(src, 4, tok, k)[e]);
  t.ok(same, 'every row of every prompt position survives the round trip');
  t.throws(() => convertPages(new Uint8Array(src.buffer), 10, layout, to16, 41), { code: 'LLM_ERR_KV_TRANSFER' }, 'more tokens than the pages hold');
});
