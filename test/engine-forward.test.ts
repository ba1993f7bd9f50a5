// The CPU backend's forward pass against an independent float64 TypeScript reference, on tiny random llama /
// qwen2 / qwen3 models: a mixed prefill batch, a chunked prefill over a cached prefix, then 8 decode steps,
// at page sizes 1 and 16 with shuffled page tables. Bar: relative error of every logits row < 1e-4.

import { mkdtempSync, rmSync } from 'node:fs';
import { packFor } from '../src/engine/step.js';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { openEngine } from '../src/engine/engine.js';
import type { SamplingParams, SeqStep } from '../src/engine/types.js';
import { referenceLogits, relError, rng, writeTinyModel, TINY_SHAPES } from './helpers/engine-tiny-model.js';

const shapes = TINY_SHAPES;

const greedy: SamplingParams = { temperature: 0, topP: 1, topK: 0, minP: 0, seed: 7, logprobs: 0 };
const TOL = 1e-4;

const dir = mkdtempSync(join(tmpdir(), 'engine-forward-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));

for (const [name, shape] of Object.entries(shapes)) {
  for (const pageSize of [1, 16]) {
    t.test(`${name}, page size ${pageSize}`, async (t) => {
      const modelDir = mkdtempSync(join(dir, `${name}-`));
      const model = writeTinyModel(modelDir, shape, 1234);
      const numPages = 256;
      const engine = openEngine(model.spec, {
        backend: 'cpu', deviceId: 0, pageSize, numPages, memFractionStatic: 0.5, maxBatchTokens: 160, maxSeqsPerStep: 8, threads: 2,
      });
      t.teardown(() => engine.close());
      const rand = rng(99);
      // A shuffled free list, so page tables are scattered, never the identity.
      const free = Array.from({ length: numPages }, (_, i) => i);
      for (let i = free.length - 1; i > 0; i--) {
        const j = Math.floor(rand() * (i + 1));
        [free[i], free[j]] = [free[j], free[i]];
      }
      const promptLens = [5, 17, 70, 20];
      const cachedPrefix = 12; // seq 3: prefill [0, 12) in step 0, [12, 20) in step 1 over the cached prefix
      const tokens = promptLens.map((n) => Array.from({ length: n }, () => Math.floor(rand() * shape.vocabSize)));
      const pages: number[][] = promptLens.map(() => []);
      const inCache = promptLens.map(() => 0);
      // Engine logits per seq: [position, logits row].
      const seen: [number, Float32Array][][] = promptLens.map(() => []);

      const ensurePages = (s: number, kvLen: number): void => {
        while (pages[s].length * pageSize < kvLen) pages[s].push(free.pop() as number);
      };
      for (let stepIdx = 0; stepIdx <= 8; stepIdx++) {
        const batch: SeqStep[] = [];
        for (let s = 0; s < promptLens.length; s++) {
          let chunk: number[];
          if (stepIdx === 0) chunk = s === 3 ? tokens[s].slice(0, cachedPrefix) : tokens[s];
          else if (s === 3 && stepIdx === 1) chunk = tokens[s].slice(cachedPrefix);
          else chunk = [tokens[s][tokens[s].length - 1]];
          const startPos = inCache[s];
          ensurePages(s, startPos + chunk.length);
          const sample = !(s === 3 && stepIdx === 0);
          batch.push({ tokenIds: chunk, startPos, pages: pages[s].slice(), sample, sampling: greedy, outputIndex: stepIdx });
        }
        const r = engine.step(packFor(engine, batch, { returnLogits: true }));
        const logits = r.logits as Float32Array;
        for (let s = 0; s < batch.length; s++) {
          const b = batch[s];
          inCache[s] = b.startPos + b.tokenIds.length;
          seen[s].push([inCache[s] - 1, logits.slice(s * shape.vocabSize, (s + 1) * shape.vocabSize)]);
          if (b.sample) {
            t.ok(r.tokens[s] >= 0 && r.tokens[s] < shape.vocabSize, `step ${stepIdx} seq ${s}: token in range`);
            tokens[s].push(r.tokens[s]);
          } else {
            t.equal(r.tokens[s], -1, `step ${stepIdx} seq ${s}: no sample, token -1`);
          }
        }
      }
      let worst = 0;
      for (let s = 0; s < promptLens.length; s++) {
        const ref = referenceLogits(model, tokens[s]);
        for (const [pos, row] of seen[s]) {
          const e = relError(row, ref[pos]);
          worst = Math.max(worst, e);
          if (e >= TOL) t.fail(`seq ${s} position ${pos}: relative error ${e.toExponential(2)} >= ${TOL}`);
          // Greedy is argmax of the engine's own logits.
          const tokenAfter = tokens[s][pos + 1];
          if (tokenAfter !== undefined && pos + 1 >= promptLens[s]) {
            let best = 0;
            for (let i = 1; i < row.length; i++) if (row[i] > row[best]) best = i;
            t.equal(tokenAfter, best, `seq ${s} position ${pos}: greedy token is the argmax`);
          }
        }
      }
      t.ok(worst < TOL, `max relative logits error ${worst.toExponential(2)} < ${TOL}`);
    });
  }
}

t.test('a 300-token prefill (several MLP chunks, attention key blocks and query tiles) then decode', async (t) => {
  const modelDir = mkdtempSync(join(dir, 'long-'));
  const model = writeTinyModel(modelDir, shapes.qwen3, 4321);
  const pageSize = 16;
  const engine = openEngine(model.spec, {
    backend: 'cpu', deviceId: 0, pageSize, numPages: 64, memFractionStatic: 0.5, maxBatchTokens: 320, maxSeqsPerStep: 2, threads: 2,
  });
  t.teardown(() => engine.close());
  const rand = rng(7);
  const tokens = Array.from({ length: 300 }, () => Math.floor(rand() * shapes.qwen3.vocabSize));
  const pages = Array.from({ length: 20 }, (_, i) => 63 - i);
  const rows: [number, Float32Array][] = [];
  let pos = 0;
  for (let step = 0; step < 3; step++) {
    const chunk = step === 0 ? tokens.slice() : [tokens[tokens.length - 1]];
    const kv = pos + chunk.length;
    const r = engine.step(packFor(engine, [{ tokenIds: chunk, startPos: pos, pages: pages.slice(0, Math.ceil(kv / pageSize)), sample: true, sampling: greedy, outputIndex: step }], { returnLogits: true }));
    rows.push([kv - 1, (r.logits as Float32Array).slice()]);
    tokens.push(r.tokens[0]);
    pos = kv;
  }
  const ref = referenceLogits(model, tokens);
  for (const [p, row] of rows) {
    const e = relError(row, ref[p]);
    t.ok(e < TOL, `position ${p}: relative error ${e.toExponential(2)} < ${TOL}`);
  }
});

t.test('batch invariance: a token gets bitwise the same logits alone, in a batch, or after a chunked prefill', async (t) => {
  // The llama shape has k tails (intermediate 100) and an odd LM-head row count (vocabulary 99).
  const modelDir = mkdtempSync(join(dir, 'invariance-'));
  const model = writeTinyModel(modelDir, shapes.llama, 77);
  const pageSize = 4;
  const engine = openEngine(model.spec, {
    backend: 'cpu', deviceId: 0, pageSize, numPages: 64, memFractionStatic: 0.5, maxBatchTokens: 64, maxSeqsPerStep: 4, threads: 2,
  });
  t.teardown(() => engine.close());
  const prompt = [5, 9, 14, 3, 7, 22, 31, 2, 8, 60, 11, 4, 19, 42, 17, 6, 90, 33, 21, 13];
  const pagesA = [0, 1, 2, 3, 4, 5];
  const pagesB = [10, 11, 12, 13, 14, 15];
  const seq = (tokenIds: number[], startPos: number, pages: number[]): SeqStep => ({
    tokenIds, startPos, pages: pages.slice(0, Math.ceil((startPos + tokenIds.length) / pageSize)), sample: true, sampling: greedy, outputIndex: 0,
  });
  const V = shapes.llama.vocabSize;
  // A: the whole prompt in one step, alone. B: the same prompt as 12 + 8 tokens, inside batches with others.
  const a = engine.step(packFor(engine, [seq(prompt, 0, pagesA)], { returnLogits: true }));
  engine.step(packFor(engine, [seq([1, 2, 3], 0, [20]), seq(prompt.slice(0, 12), 0, pagesB)], { returnLogits: true }));
  const b = engine.step(packFor(engine, [seq(prompt.slice(12), 12, pagesB), seq([4, 5], 0, [21])], { returnLogits: true }));
  t.same(Array.from((b.logits as Float32Array).slice(0, V)), Array.from((a.logits as Float32Array).slice(0, V)), 'chunked prefill in a batch = whole prefill alone');
  // Decode: alone (a one-token matmul) and beside two other sequences (a three-token matmul).
  const next = a.tokens[0];
  const alone = engine.step(packFor(engine, [seq([next], 20, pagesA)], { returnLogits: true }));
  const batched = engine.step(packFor(engine, [seq([7, 7, 7], 0, [30]), seq([next], 20, pagesB), seq([8], 0, [31])], { returnLogits: true }));
  t.same(Array.from((batched.logits as Float32Array).slice(V, 2 * V)), Array.from((alone.logits as Float32Array).slice(0, V)), 'decode in a batch = decode alone');
});
