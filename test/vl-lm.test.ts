// The Qwen2.5-VL language model with an image on the CPU engine against the float64 numpy reference
// (test/reference/qwen2_5_vl_reference.py): a prompt with an image (its placeholder expanded, M-RoPE positions from
// src/multimodal/mrope.ts, the vision tower's embeddings in place of the placeholders) prefilled in two chunks that
// split the image, then greedy decode steps at (index + delta) beside a text-only sequence in the same step; then
// the checks of the multimodal side input at the addon boundary.
import t from 'tap';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { addonPath } from '../src/engine/addon.js';
import { numpyReferenceSkip } from './helpers/numpy-reference.js';
import { openEngine } from '../src/engine/engine.js';
import { makeModel } from '../src/engine/make-model.js';
import { loadModelSpec } from '../src/engine/model.js';
import { packFor } from '../src/engine/step.js';
import type { SamplingParams, SeqStep } from '../src/engine/types.js';
import { expandImagePlaceholders, multimodalPositions } from '../src/multimodal/mrope.js';

const REFERENCE = new URL('./reference/qwen2_5_vl_reference.py', import.meta.url).pathname;

const skip = numpyReferenceSkip();
const greedy: SamplingParams = { temperature: 0, topP: 1, topK: 0, minP: 0, seed: null, logprobs: -1 };
const PAGE = 4;

t.test('M-RoPE prefill with image embeddings and decode at index + delta match the reference', { skip }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'vl-lm-test-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const made = makeModel({ shape: 'qwen2.5-vl-tiny', seed: 21, outDir: join(dir, 'model'), dtype: 'f32', std: 0.1 });
  // A small rope_theta: with head_dim 16 the height and width sections' frequencies at theta 1e6 are too low for a
  // wrong section to move the logits measurably; at 50 every section turns by a good fraction of a radian.
  const cfgPath = join(made.dir, 'config.json');
  writeFileSync(cfgPath, JSON.stringify({ ...JSON.parse(readFileSync(cfgPath, 'utf8')), rope_theta: 50 }));
  const spec = await loadModelSpec(made.dir);
  const vision = spec.vision!;
  const V = spec.vocabSize;
  const engine = openEngine(spec, { backend: 'cpu', deviceId: 0, pageSize: PAGE, numPages: 24, memFractionStatic: 0.5, maxBatchTokens: 64, maxSeqsPerStep: 4, threads: 1 });
  t.teardown(() => engine.close());

  const grid: [number, number, number] = [1, 6, 8];
  const pixelValues = new Float32Array(6 * 8 * 1176).map((_, i) => Math.sin(i * 0.013) * 1.7);
  const embeds = engine.encodeImages!([{ pixelValues, gridThw: grid }])[0]!;
  const prompt = expandImagePlaceholders([12, 300, 7, 99, 5, vision.visionStartTokenId, vision.imageTokenId, vision.visionEndTokenId, 44, 61, 800, 2], vision.imageTokenId, [grid], 2);
  const n = prompt.length; // 5 + 1 + 12 + 1 + 4 = 23
  const { positions, delta } = multimodalPositions(prompt, vision.imageTokenId, [grid], 2);
  t.equal(n, 23);
  t.ok(delta < 0, `delta ${delta}: the image's tokens share positions`);
  const pos3 = (i: number): [number, number, number] => (i < n ? [positions[i]!, positions[n + i]!, positions[2 * n + i]!] : [i + delta, i + delta, i + delta]);
  const imageRowsBefore = (i: number) => prompt.slice(0, i).filter((x) => x === vision.imageTokenId).length;

  // A text-only neighbour sequence in the decode steps: its three sections all take its ordinary position.
  const other = [9, 8, 7, 6, 5];
  const pagesA = [0, 1, 2, 3, 4, 5, 6];
  const pagesB = [10, 11, 12];
  const pagesFor = (pages: number[], kvLen: number) => pages.slice(0, Math.ceil(kvLen / PAGE));

  const ids = [...prompt];
  const logits: Float32Array[] = [];
  // Prefill, two chunks; the first ends inside the image (rows 0..3 of its 12 embeddings).
  for (const [a, b] of [[0, 10], [10, n]] as const) {
    const seq: SeqStep = { tokenIds: prompt.slice(a, b), startPos: a, pages: pagesFor(pagesA, b), sample: b === n, sampling: greedy, outputIndex: 0 };
    const mp = new Int32Array(3 * (b - a));
    for (let i = a; i < b; i++) pos3(i).forEach((p, s) => (mp[s * (b - a) + (i - a)] = p));
    const imageEmbeds = embeds.slice(imageRowsBefore(a) * 64, imageRowsBefore(b) * 64);
    const r = engine.step(packFor(engine, [seq], { returnLogits: true }), { positions: mp, imageEmbeds });
    if (b === n) {
      logits.push(r.logits!.slice(0, V));
      ids.push(r.tokens[0]!);
    }
  }
  // The neighbour's prefill (text only: no side input needed).
  engine.step(packFor(engine, [{ tokenIds: other.slice(0, 4), startPos: 0, pages: pagesFor(pagesB, 4), sample: false, sampling: greedy, outputIndex: 0 }]));
  for (let k = 0; k < 2; k++) {
    const i = ids.length - 1;
    const seqs: SeqStep[] = [
      { tokenIds: [other[4]!], startPos: 4, pages: pagesFor(pagesB, 5), sample: false, sampling: greedy, outputIndex: 0 },
      { tokenIds: [ids[i]!], startPos: i, pages: pagesFor(pagesA, i + 1), sample: true, sampling: greedy, outputIndex: k + 1 },
    ];
    if (k === 1) seqs.shift();
    const T = seqs.length;
    const mp = new Int32Array(3 * T);
    for (let s = 0; s < 3; s++) {
      if (T === 2) mp[s * T] = 4;
      mp[s * T + T - 1] = pos3(i)[s];
    }
    const r = engine.step(packFor(engine, seqs, { returnLogits: true }), { positions: mp });
    logits.push(r.logits!.slice((T - 1) * V, T * V));
    ids.push(r.tokens[T - 1]!);
  }

  // The reference over the whole sequence (prompt + the two fed-back tokens), positions as above.
  const total = ids.length - 1;
  const refPositions = [0, 1, 2].map((s) => Array.from({ length: total }, (_, i) => pos3(i)[s]));
  writeFileSync(join(dir, 'embeds.f32'), Buffer.from(embeds.buffer, embeds.byteOffset, embeds.byteLength));
  writeFileSync(join(dir, 'req.json'), JSON.stringify({ tokens: ids.slice(0, total), positions: refPositions, images: [{ embeds: join(dir, 'embeds.f32') }] }));
  execFileSync('python3', [REFERENCE, 'lm', made.dir, join(dir, 'req.json'), join(dir, 'logits.f64')]);
  const buf = readFileSync(join(dir, 'logits.f64'));
  const ref = new Float64Array(buf.buffer, buf.byteOffset, buf.byteLength / 8);
  t.equal(ref.length, total * V);
  logits.forEach((got, k) => {
    const row = n - 1 + k;
    let maxDiff = 0;
    let maxRef = 0;
    for (let v = 0; v < V; v++) {
      maxDiff = Math.max(maxDiff, Math.abs(got[v]! - ref[row * V + v]!));
      maxRef = Math.max(maxRef, Math.abs(ref[row * V + v]!));
    }
    t.ok(maxDiff / maxRef < 1e-4, `position ${row}: max logit difference ${maxDiff} relative to ${maxRef}`);
  });

  // Without the side input the image tokens would be plain token embeddings at ordinary positions: different logits.
  const plain = openEngine(spec, { backend: 'cpu', deviceId: 0, pageSize: PAGE, numPages: 8, memFractionStatic: 0.5, maxBatchTokens: 64, maxSeqsPerStep: 1, threads: 1 });
  t.teardown(() => plain.close());
  const r0 = plain.step(packFor(plain, [{ tokenIds: prompt, startPos: 0, pages: pagesFor(pagesA, n), sample: true, sampling: greedy, outputIndex: 0 }], { returnLogits: true }));
  t.notSame(r0.logits!.slice(0, V), logits[0], 'the image changes the logits');

  // Boundary checks.
  const step1 = packFor(engine, [{ tokenIds: [vision.imageTokenId, 5], startPos: 0, pages: [20], sample: true, sampling: greedy, outputIndex: 0 }]);
  t.throws(() => engine.step(step1, { positions: new Int32Array(5) }), { code: 'LLM_ERR_BAD_REQUEST', message: /multimodal.positions has 5 values, 3 x 2 tokens needed/ });
  t.throws(() => engine.step(step1, { positions: new Int32Array([0, 1, 0, -1, 0, 1]) }), { code: 'LLM_ERR_BAD_REQUEST', message: /positions\[3\] = -1 out of range/ });
  t.throws(() => engine.step(step1, { positions: new Int32Array(6), imageEmbeds: new Float32Array(128) }), {
    code: 'LLM_ERR_BAD_REQUEST', message: /imageEmbeds has 128 values; the step has 1 image tokens \(id \d+\) x hidden 64/,
  });
  const nan = new Float32Array(64);
  nan[3] = Number.POSITIVE_INFINITY;
  t.throws(() => engine.step(step1, { positions: new Int32Array(6), imageEmbeds: nan }), { code: 'LLM_ERR_BAD_REQUEST', message: /imageEmbeds\[3\] is not finite/ });
});

t.test('a model without M-RoPE refuses a multimodal step', { skip: existsSync(addonPath()) ? false : 'native addon not built' }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'vl-lm-test-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const made = makeModel({ shape: 'qwen2-tiny', seed: 1, outDir: join(dir, 'model'), dtype: 'f32' });
  const engine = openEngine(await loadModelSpec(made.dir), { backend: 'cpu', deviceId: 0, pageSize: PAGE, numPages: 4, memFractionStatic: 0.5, maxBatchTokens: 16, maxSeqsPerStep: 1 });
  t.teardown(() => engine.close());
  const step = packFor(engine, [{ tokenIds: [1, 2], startPos: 0, pages: [0], sample: true, sampling: greedy, outputIndex: 0 }]);
  t.throws(() => engine.step(step, { positions: new Int32Array(6) }), { code: 'LLM_ERR_BAD_REQUEST', message: /no M-RoPE/ });
});

t.test('tensor parallel (CPU, TP 2): a multimodal prefill and decode equal TP 1', { skip: existsSync(addonPath()) ? false : 'native addon not built' }, async (t) => {
  const { TpRanks } = await import('./helpers/tp-ranks.js');
  const dir = mkdtempSync(join(tmpdir(), 'vl-lm-test-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const made = makeModel({ shape: 'qwen2.5-vl-tiny', seed: 23, outDir: join(dir, 'model'), dtype: 'f32', std: 0.1 });
  const spec = await loadModelSpec(made.dir);
  const vision = spec.vision!;
  const V = spec.vocabSize;
  const options = { backend: 'cpu' as const, deviceId: 0, pageSize: PAGE, numPages: 16, memFractionStatic: 0.5, maxBatchTokens: 64, maxSeqsPerStep: 2, threads: 1 };
  const single = openEngine(spec, options);
  t.teardown(() => single.close());
  const grid: [number, number, number] = [1, 4, 4];
  const embeds = single.encodeImages!([{ pixelValues: new Float32Array(16 * 1176).map((_, i) => Math.cos(i * 0.01)), gridThw: grid }])[0]!;
  const prompt = expandImagePlaceholders([3, 4, vision.visionStartTokenId, vision.imageTokenId, vision.visionEndTokenId, 5], vision.imageTokenId, [grid], 2);
  const n = prompt.length;
  const { positions, delta } = multimodalPositions(prompt, vision.imageTokenId, [grid], 2);
  const pages = [0, 1, 2, 3];
  const prefill: SeqStep[] = [{ tokenIds: prompt, startPos: 0, pages: pages.slice(0, Math.ceil(n / PAGE)), sample: true, sampling: greedy, outputIndex: 0 }];
  const want = single.step(packFor(single, prefill, { returnLogits: true }), { positions, imageEmbeds: embeds });
  const decode: SeqStep[] = [{ tokenIds: [want.tokens[0]!], startPos: n, pages: pages.slice(0, Math.ceil((n + 1) / PAGE)), sample: true, sampling: greedy, outputIndex: 1 }];
  const decodePositions = new Int32Array([n + delta, n + delta, n + delta]);
  const want2 = single.step(packFor(single, decode, { returnLogits: true }), { positions: decodePositions });

  const { ranks, opened } = await TpRanks.start(spec, options, { size: 2, group: `vl-lm-test-${process.pid}` });
  t.teardown(() => ranks.close());
  t.same(opened.errors, [undefined, undefined], 'both ranks open');
  const got = await ranks.step(prefill, { returnLogits: true, multimodal: { positions, imageEmbeds: embeds } });
  const got2 = await ranks.step(decode, { returnLogits: true, multimodal: { positions: decodePositions } });
  for (const [label, g, w] of [['prefill', got, want], ['decode', got2, want2]] as const) {
    t.same(g.errors, [undefined, undefined], `${label}: no rank failed`);
    let maxDiff = 0;
    let maxRef = 0;
    for (let v = 0; v < V; v++) {
      maxDiff = Math.max(maxDiff, Math.abs(g.value!.logits![v]! - w.logits![v]!));
      maxRef = Math.max(maxRef, Math.abs(w.logits![v]!));
    }
    t.ok(maxDiff / maxRef < 1e-5, `${label}: TP 2 logits within ${maxDiff / maxRef} of TP 1`);
    t.equal(g.value!.tokens[0], w.tokens[0], `${label}: same token`);
  }
});
