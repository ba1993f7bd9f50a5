// The Qwen2.5-VL vision tower on the CPU engine against the float64 numpy reference (test/reference/
// qwen2_5_vl_reference.py) on make-model's qwen2.5-vl-tiny: grids whose merged size divides the window (the
// reference pads a whole extra window there), grids with partial windows at the bottom/right edges, two frames, and
// a grid of several full windows; then the addon boundary's checks.
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
import type { Engine } from '../src/engine/types.js';

const REFERENCE = new URL('./reference/qwen2_5_vl_reference.py', import.meta.url).pathname;

const skip = numpyReferenceSkip();

/** Deterministic pseudo-random pixels in the normalised range. */
function pixels(n: number, seed: number): Float32Array {
  const out = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = (s / 4294967296) * 4 - 2;
  }
  return out;
}

t.test('vision tower: CPU engine vs the float64 reference', { skip }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'vl-vision-test-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  // f32 weights for the grids; bf16 ones (as real checkpoints ship) for one more image.
  const made = makeModel({ shape: 'qwen2.5-vl-tiny', seed: 11, outDir: join(dir, 'model'), dtype: 'f32', std: 0.1 });
  const madeBf16 = makeModel({ shape: 'qwen2.5-vl-tiny', seed: 12, outDir: join(dir, 'model-bf16'), dtype: 'bf16', std: 0.1 });
  const open = async (modelDir: string): Promise<Engine> => {
    const e = openEngine(await loadModelSpec(modelDir), { backend: 'cpu', deviceId: 0, pageSize: 4, numPages: 4, memFractionStatic: 0.5, maxBatchTokens: 16, maxSeqsPerStep: 1, threads: 2 });
    t.teardown(() => e.close());
    return e;
  };
  const engine = await open(made.dir);
  const engineBf16 = await open(madeBf16.dir);
  const patchDim = 3 * 2 * 14 * 14;
  const grids: [number, number, number][] = [[1, 8, 8], [1, 10, 14], [2, 4, 6], [1, 16, 18], [1, 12, 6]];
  const images = grids.map((g, i) => ({ pixelValues: pixels(g[0] * g[1] * g[2] * patchDim, 100 + i), gridThw: g }));
  const bf16Index = images.length - 1;
  const got = [...engine.encodeImages!(images.slice(0, bf16Index)), ...engineBf16.encodeImages!([images[bf16Index]!])];
  t.equal(got.length, images.length);
  images.forEach((im, i) => {
    const modelDir = i === bf16Index ? madeBf16.dir : made.dir;
    const [gt, gh, gw] = im.gridThw;
    const tokens = (gt * gh * gw) / 4;
    const out = got[i]!;
    t.equal(out.length, tokens * 64, `image ${i}: ${tokens} tokens x 64`);
    const px = join(dir, `px${i}.f32`);
    const ref = join(dir, `ref${i}.f64`);
    writeFileSync(px, Buffer.from(im.pixelValues.buffer));
    execFileSync('python3', [REFERENCE, 'vision', modelDir, px, String(gt), String(gh), String(gw), ref]);
    const refBuf = readFileSync(ref);
    const want = new Float64Array(refBuf.buffer, refBuf.byteOffset, refBuf.byteLength / 8);
    t.equal(want.length, out.length);
    let worstCos = 1;
    let maxDiff = 0;
    let maxRef = 0;
    for (let i = 0; i < out.length; i++) {
      maxDiff = Math.max(maxDiff, Math.abs(out[i]! - want[i]!));
      maxRef = Math.max(maxRef, Math.abs(want[i]!));
    }
    for (let r = 0; r < tokens; r++) {
      let dot = 0, a2 = 0, b2 = 0;
      for (let c = 0; c < 64; c++) {
        const a = out[r * 64 + c]!, b = want[r * 64 + c]!;
        dot += a * b; a2 += a * a; b2 += b * b;
      }
      worstCos = Math.min(worstCos, dot / Math.sqrt(a2 * b2));
    }
    t.ok(worstCos >= 0.99999, `image ${i} (grid ${im.gridThw.join('x')}): worst per-token cosine ${worstCos}`);
    // Stricter than the cosine: the tiny tower's attention moves the output little, so a wrong grouping of the
    // windows still leaves the cosine near 1 but is far outside this.
    t.ok(maxDiff / maxRef < 1e-4, `image ${i}: max abs difference ${maxDiff} relative to ${maxRef}`);
  });
  // Each image is encoded on its own: the same image alone gives the same embeddings.
  t.same(engine.encodeImages!([images[1]!])[0], got[1]);

  const bad = (pixelValues: Float32Array, gridThw: [number, number, number]) => () => engine.encodeImages!([{ pixelValues, gridThw }]);
  t.throws(bad(new Float32Array(4 * patchDim - 1), [1, 2, 2]), { code: 'LLM_ERR_BAD_REQUEST', message: /image 0: image grid 1x2x2 needs 4 x 1176 pixel values, got 4703/ });
  t.throws(bad(new Float32Array(6 * patchDim), [1, 2, 3]), { code: 'LLM_ERR_BAD_REQUEST', message: /multiples of the merge size 2/ });
  t.throws(bad(new Float32Array(4 * patchDim), [0, 2, 2]), { code: 'LLM_ERR_BAD_REQUEST', message: /grid_thw/ });
  const nan = new Float32Array(4 * patchDim);
  nan[77] = Number.NaN;
  t.throws(bad(nan, [1, 2, 2]), { code: 'LLM_ERR_BAD_REQUEST', message: /pixel value 77 is not finite/ });
});

t.test('a text-only model takes no images', { skip: existsSync(addonPath()) ? false : 'native addon not built' }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'vl-vision-test-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const made = makeModel({ shape: 'qwen2-tiny', seed: 1, outDir: join(dir, 'model'), dtype: 'f32' });
  const engine = openEngine(await loadModelSpec(made.dir), { backend: 'cpu', deviceId: 0, pageSize: 4, numPages: 4, memFractionStatic: 0.5, maxBatchTokens: 16, maxSeqsPerStep: 1 });
  t.teardown(() => engine.close());
  t.throws(() => engine.encodeImages!([{ pixelValues: new Float32Array(4704), gridThw: [1, 2, 2] }]), { code: 'LLM_ERR_BAD_REQUEST', message: /no vision tower/ });
});

t.test('a fixture image through the processor and the tower', { skip }, async (t) => {
  const { decodeImage } = await import('../src/multimodal/image-source.js');
  const { parsePreprocessorConfig, processImage } = await import('../src/multimodal/image-processor.js');
  const dir = mkdtempSync(join(tmpdir(), 'vl-vision-test-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const made = makeModel({ shape: 'qwen2.5-vl-tiny', seed: 13, outDir: join(dir, 'model'), dtype: 'f32', std: 0.1 });
  const engine = openEngine(await loadModelSpec(made.dir), { backend: 'cpu', deviceId: 0, pageSize: 4, numPages: 4, memFractionStatic: 0.5, maxBatchTokens: 16, maxSeqsPerStep: 1, threads: 2 });
  t.teardown(() => engine.close());
  const config = parsePreprocessorConfig(JSON.parse(readFileSync(join(made.dir, 'preprocessor_config.json'), 'utf8')));
  const png = readFileSync(new URL('./fixtures/multimodal/gradient-320x240.png', import.meta.url));
  const image = processImage(await decodeImage(png, { maxPixels: 1 << 24 }, 'image 0'), config);
  const [out] = engine.encodeImages!([{ pixelValues: image.pixelValues, gridThw: image.gridThw }]);
  t.equal(out!.length, image.tokens * 64, `${image.tokens} tokens for grid ${image.gridThw.join('x')}`);
  const px = join(dir, 'px.f32');
  writeFileSync(px, Buffer.from(image.pixelValues.buffer, image.pixelValues.byteOffset, image.pixelValues.byteLength));
  execFileSync('python3', [REFERENCE, 'vision', made.dir, px, ...image.gridThw.map(String), join(dir, 'ref.f64')]);
  const buf = readFileSync(join(dir, 'ref.f64'));
  const want = new Float64Array(buf.buffer, buf.byteOffset, buf.byteLength / 8);
  let maxDiff = 0;
  let maxRef = 0;
  for (let i = 0; i < want.length; i++) {
    maxDiff = Math.max(maxDiff, Math.abs(out![i]! - want[i]!));
    maxRef = Math.max(maxRef, Math.abs(want[i]!));
  }
  t.ok(maxDiff / maxRef < 1e-4, `max abs difference ${maxDiff} relative to ${maxRef}`);
});
