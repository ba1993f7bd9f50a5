// The engine against transformers itself, on the fixtures bench/multimodal/make-vl-fixtures.py writes on the GPU
// machine (test/fixtures/vl, or VL_FIXTURES=DIR): the checkpoint transformers saved loads as it is; our tower on
// transformers' pixels gives its embeddings; src/multimodal/mrope.ts gives its M-RoPE positions and delta; prefill
// and greedy decode give its float32 logits (1e-4 relative) and greedy ids. Skipped while the fixtures are absent.
import t from 'tap';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { addonPath } from '../src/engine/addon.js';
import { openEngine } from '../src/engine/engine.js';
import { loadModelSpec } from '../src/engine/model.js';
import { packFor } from '../src/engine/step.js';
import type { SamplingParams } from '../src/engine/types.js';
import { multimodalPositions } from '../src/multimodal/mrope.js';

const DIR = process.env['VL_FIXTURES'] ?? new URL('./fixtures/vl', import.meta.url).pathname;
const skip = !existsSync(join(DIR, 'expected.json')) ? `no fixtures at ${DIR} (bench/multimodal/make-vl-fixtures.py)` : !existsSync(addonPath()) ? 'native addon not built' : false;

interface Expected {
  images: Record<string, { grid_thw: [number, number, number]; pixels: string; embeds: string; embeds_shape: [number, number] }>;
  prompts: { input_ids: number[]; images: string[]; position_ids: number[][]; rope_delta: number; last_logits: number[]; greedy_ids: number[]; step_logits: number[][] }[];
}

function f32(file: string): Float32Array {
  const b = readFileSync(join(DIR, file));
  return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
}

function relErr(got: ArrayLike<number>, want: ArrayLike<number>): number {
  let maxDiff = 0;
  let maxRef = 0;
  for (let i = 0; i < want.length; i++) {
    maxDiff = Math.max(maxDiff, Math.abs(got[i]! - want[i]!));
    maxRef = Math.max(maxRef, Math.abs(want[i]!));
  }
  return maxDiff / maxRef;
}

t.test('transformers fixtures: tower embeddings, M-RoPE positions, logits and greedy ids', { skip }, async (t) => {
  const expected = JSON.parse(readFileSync(join(DIR, 'expected.json'), 'utf8')) as Expected;
  const spec = await loadModelSpec(join(DIR, 'model'));
  const vision = spec.vision!;
  const hidden = spec.hiddenSize;
  const merge = vision.spatialMergeSize;
  const engine = openEngine(spec, { backend: 'cpu', deviceId: 0, pageSize: 16, numPages: 64, memFractionStatic: 0.5, maxBatchTokens: 1024, maxSeqsPerStep: 1, threads: 2 });
  t.teardown(() => engine.close());

  const embeds = new Map<string, Float32Array>();
  for (const [name, im] of Object.entries(expected.images)) {
    const [got] = engine.encodeImages!([{ pixelValues: f32(im.pixels), gridThw: im.grid_thw }]);
    const want = f32(im.embeds);
    t.equal(got!.length, want.length, `${name}: ${im.embeds_shape.join(' x ')}`);
    let worstCos = 1;
    for (let r = 0; r < want.length / hidden; r++) {
      let dot = 0, a2 = 0, b2 = 0;
      for (let c = 0; c < hidden; c++) {
        const a = got![r * hidden + c]!, b = want[r * hidden + c]!;
        dot += a * b; a2 += a * a; b2 += b * b;
      }
      worstCos = Math.min(worstCos, dot / Math.sqrt(a2 * b2));
    }
    t.ok(worstCos >= 0.99999, `${name}: worst per-token cosine ${worstCos}`);
    embeds.set(name, got!);
  }

  const greedy: SamplingParams = { temperature: 0, topP: 1, topK: 0, minP: 0, seed: null, logprobs: -1 };
  expected.prompts.forEach((p, k) => {
    const n = p.input_ids.length;
    const grids = p.images.map((name) => expected.images[name]!.grid_thw);
    const { positions, delta } = multimodalPositions(p.input_ids, vision.imageTokenId, grids, merge);
    t.same([0, 1, 2].map((s) => Array.from(positions.subarray(s * n, (s + 1) * n))), p.position_ids, `prompt ${k}: M-RoPE positions as transformers'`);
    t.equal(delta, p.rope_delta, `prompt ${k}: rope delta ${delta}`);
    const imageEmbeds = new Float32Array(p.images.reduce((a, name) => a + embeds.get(name)!.length, 0));
    let at = 0;
    for (const name of p.images) {
      imageEmbeds.set(embeds.get(name)!, at);
      at += embeds.get(name)!.length;
    }
    const pages = Array.from({ length: Math.ceil((n + p.greedy_ids.length) / 16) }, (_, i) => i);
    const ids = [...p.input_ids];
    const got: number[] = [];
    for (let s = 0; s < p.greedy_ids.length; s++) {
      const start = s === 0 ? 0 : ids.length - 1;
      const len = ids.length - start;
      const mp = new Int32Array(3 * len);
      for (let i = 0; i < len; i++) for (let sec = 0; sec < 3; sec++) mp[sec * len + i] = start + i < n ? positions[sec * n + start + i]! : start + i + delta;
      const step = packFor(engine, [{ tokenIds: ids.slice(start), startPos: start, pages: pages.slice(0, Math.ceil(ids.length / 16)), sample: true, sampling: greedy, outputIndex: s }], { returnLogits: true });
      const r = engine.step(step, s === 0 ? { positions: mp, imageEmbeds } : { positions: mp });
      const err = relErr(r.logits!, p.step_logits[s]!);
      t.ok(err < 1e-4, `prompt ${k} step ${s}: logits within ${err} relative`);
      got.push(r.tokens[0]!);
      ids.push(p.greedy_ids[s]!); // teacher-forced: one early tie cannot cascade
    }
    t.same(got, p.greedy_ids, `prompt ${k}: greedy ids`);
  });
});
