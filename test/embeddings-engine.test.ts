// Embedding passes of the native engine (CPU) on make-model's Qwen3-Embedding-style checkpoints, against an
// independent float64 numpy reference of the forward (test/reference/embeddings.py): last-token and mean pooling,
// batches of several sequences equal to one at a time, the pooling the sentence-transformers files declare.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { readEmbeddingConfig } from '../src/engine/embedding-config.js';
import { openEngine } from '../src/engine/engine.js';
import { packFor } from '../src/engine/step.js';
import { makeModel } from '../src/engine/make-model.js';
import { loadModelSpec } from '../src/engine/model.js';
import type { EngineOptions } from '../src/engine/types.js';
import { codeOf } from './helpers/thrown.js';
import { cosine } from './helpers/vectors.js';

const options: EngineOptions = {
  backend: 'cpu', deviceId: 0, pageSize: 4, numPages: 16, memFractionStatic: 0.5, maxBatchTokens: 160, maxSeqsPerStep: 8, threads: 2,
};
const dir = mkdtempSync(join(tmpdir(), 'embeddings-engine-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));

const inputs = [[5, 17, 300, 42, 9, 1000, 77], [3], [100, 200, 300, 400, 500, 600, 700, 800, 900, 1000, 11, 12, 13, 14, 15, 16, 17], [64, 65]];

function reference(model: string, seqs: number[][]): number[][] {
  const out = execFileSync('python3', [join(import.meta.dirname, 'reference', 'embeddings.py')], { input: JSON.stringify({ model, inputs: seqs }) });
  return (JSON.parse(out.toString()) as { embeddings: number[][] }).embeddings;
}


for (const pooling of ['last', 'mean'] as const) {
  t.test(`qwen3-embedding-tiny, ${pooling} pooling`, async (t) => {
    const model = join(dir, pooling);
    makeModel({ shape: 'qwen3-embedding-tiny', seed: 7, outDir: model, pooling, std: 0.1 });
    const spec = await loadModelSpec(model);
    const cfg = readEmbeddingConfig(model, spec.architecture);
    t.same([cfg.pooling, cfg.normalize, cfg.matryoshka], [pooling, true, true], 'pooling and normalisation from the sentence-transformers files');
    const engine = openEngine(spec, options);
    t.teardown(() => engine.close());
    const batch = engine.embed(inputs, cfg);
    t.equal(batch.length, inputs.length);
    const ref = reference(model, inputs);
    batch.forEach((v, i) => {
      t.equal(v.length, spec.hiddenSize);
      t.ok(Math.abs(Math.hypot(...v) - 1) < 1e-5, `input ${i} is L2-normalised`);
      const c = cosine(v, ref[i]!);
      t.ok(c >= 0.99999, `input ${i} (${inputs[i]!.length} tokens): cosine to the float64 reference ${c.toFixed(7)}`);
    });
    inputs.forEach((seq, i) => {
      const [one] = engine.embed([seq], cfg);
      t.ok(cosine(one!, batch[i]!) > 0.9999999, `input ${i} alone embeds as in the batch`);
    });
    const raw = engine.embed([inputs[0]!], { pooling, normalize: false })[0]!;
    t.ok(Math.abs(Math.hypot(...raw) - 1) > 1e-3, 'normalize false leaves the pooled vector as it is');
    t.ok(cosine(raw, batch[0]!) > 0.9999999, 'and in the same direction');
  });
}

for (const pooling of ['cls', 'mean'] as const) {
  t.test(`bert-tiny (BertModel), ${pooling} pooling`, async (t) => {
    const model = join(dir, `bert-${pooling}`);
    makeModel({ shape: 'bert-tiny', seed: 9, outDir: model, pooling, std: 0.1 });
    const spec = await loadModelSpec(model);
    t.equal(spec.architecture, 'bert');
    const cfg = readEmbeddingConfig(model, spec.architecture);
    t.same([cfg.pooling, cfg.normalize, cfg.matryoshka], [pooling, true, false]);
    const engine = openEngine(spec, options);
    t.teardown(() => engine.close());
    const batch = engine.embed(inputs, cfg);
    const ref = reference(model, inputs);
    batch.forEach((v, i) => {
      const c = cosine(v, ref[i]!);
      t.ok(c >= 0.99999, `input ${i} (${inputs[i]!.length} tokens): cosine to the float64 reference ${c.toFixed(7)}`);
    });
    inputs.forEach((seq, i) => t.ok(cosine(engine.embed([seq], cfg)[0]!, batch[i]!) > 0.9999999, `input ${i} alone embeds as in the batch`));
    const greedy = { temperature: 0, topP: 1, topK: 0, minP: 0, seed: 1, logprobs: -1 };
    t.match(codeOf(() => engine.step(packFor(engine, [{ tokenIds: [1, 2], startPos: 0, pages: [0], sample: true, sampling: greedy, outputIndex: 0 }]))),
      { code: 'LLM_ERR_UNSUPPORTED_ARCH', message: /only embeds/ }, 'no generation step');
    t.match(codeOf(() => engine.embed([new Array(129).fill(1)], cfg)), { code: 'LLM_ERR_CONTEXT_LENGTH', message: /positions end at 128/ });
  });
}

t.test('the addon checks a pass at its boundary', async (t) => {
  const model = join(dir, 'last');
  const engine = openEngine(await loadModelSpec(model), options);
  t.teardown(() => engine.close());
  const last = { pooling: 'last', normalize: true } as const;
  t.match(codeOf(() => engine.embed([[1, 2], []], last)), { code: 'LLM_ERR_BAD_REQUEST', message: /sequence 1 has 0 tokens/ });
  t.match(codeOf(() => engine.embed([[1, 5000]], last)), { code: 'LLM_ERR_BAD_REQUEST', message: /token 5000 at index 1 out of range/ });
  t.match(codeOf(() => engine.embed([new Array(161).fill(1)], last)), { code: 'LLM_ERR_CONTEXT_LENGTH', message: /161 tokens in one pass.*maxBatchTokens/ });
  t.match(codeOf(() => engine.embed(new Array(9).fill([1]), last)), { code: 'LLM_ERR_BAD_REQUEST', message: /9 sequences.*maxSeqsPerStep/ });
});
