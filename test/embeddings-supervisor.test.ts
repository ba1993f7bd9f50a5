// sup.embed through the actors (scheduler thread, rank threads, the CPU engine): many concurrent inputs batched into
// passes equal the engine's own vectors one at a time; tensor parallelism (2 ranks) gives the same vectors; limits.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { Supervisor } from '../src/supervisor.js';
import type { SupervisorConfig } from '../src/config/supervisor.js';
import { openEngine } from '../src/engine/engine.js';
import { makeModel } from '../src/engine/make-model.js';
import { loadModelSpec } from '../src/engine/model.js';
import { cosine } from './helpers/vectors.js';

const dir = mkdtempSync(join(tmpdir(), 'embeddings-sup-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
const { dir: modelPath } = makeModel({ shape: 'qwen3-embedding-tiny', seed: 3, outDir: join(dir, 'model'), std: 0.1 });
const base: SupervisorConfig = {
  modelPath, device: 'cpu', pageSize: 4, numPages: 64, cpuThreads: 1, maxRunningRequests: 4, maxPrefillTokens: 60,
  chunkedPrefillSize: 16, stepTimeoutMs: 20_000, startTimeoutMs: 60_000,
};
const inputs = Array.from({ length: 11 }, (_, i) => Array.from({ length: 3 + ((i * 7) % 19) }, (_, j) => (i * 31 + j * 17) % 1000));

async function expected(): Promise<Float32Array[]> {
  const engine = openEngine(await loadModelSpec(modelPath), { backend: 'cpu', deviceId: 0, pageSize: 4, numPages: 8, memFractionStatic: 0.5, maxBatchTokens: 64, maxSeqsPerStep: 1, threads: 1 });
  try {
    return inputs.map((seq) => engine.embed([seq], { pooling: 'last', normalize: true })[0]!);
  } finally {
    engine.close();
  }
}


for (const tpSize of [1, 2]) {
  t.test(`tp ${tpSize}: concurrent callers, batched passes`, async (t) => {
    const want = await expected();
    const sup = await Supervisor.start({ ...base, tpSize });
    t.teardown(() => sup.stop());
    const model = await sup.embeddingModel();
    t.same({ pooling: model.pooling, normalize: model.normalize, hiddenSize: model.hiddenSize, maxInputTokens: model.maxInputTokens },
      { pooling: 'last', normalize: true, hiddenSize: 64, maxInputTokens: 64 }, 'the model: last token, normalised, the pass limit');
    // three callers at once: their inputs share passes (4 sequences, 64 tokens at most each)
    const parts = [inputs.slice(0, 4), inputs.slice(4, 5), inputs.slice(5)];
    const got = (await Promise.all(parts.map((p) => sup.embed(p)))).flat();
    t.equal(got.length, inputs.length);
    got.forEach((v, i) => t.ok(cosine(v, want[i]!) > 0.999999, `input ${i}: the engine's vector (cosine ${cosine(v, want[i]!).toFixed(7)})`));
    const mean = await sup.embed([inputs[0]!], { pooling: 'mean' });
    t.ok(cosine(mean[0]!, got[0]!) < 0.9999, 'options override the pooling');
    await t.rejects(sup.embed([new Array(65).fill(1)]), { code: 'LLM_ERR_CONTEXT_LENGTH', message: /65 tokens; the model takes at most 64/ });
    await t.rejects(sup.embed([[1, 2000]]), { code: 'LLM_ERR_BAD_REQUEST', message: /token 2000 at index 1 is outside the vocabulary/ });
    t.ok(cosine((await sup.embed([inputs[1]!]))[0]!, want[1]!) > 0.999999, 'the worker serves on after a refused pass');
  });
}

t.test('a BERT-style encoder through the actors; refused with tensor parallelism', async (t) => {
  const { dir: bertPath } = makeModel({ shape: 'bert-tiny', seed: 4, outDir: join(dir, 'bert'), std: 0.1 });
  const engine = openEngine(await loadModelSpec(bertPath), { backend: 'cpu', deviceId: 0, pageSize: 4, numPages: 8, memFractionStatic: 0.5, maxBatchTokens: 64, maxSeqsPerStep: 4, threads: 1 });
  const want = inputs.map((seq) => engine.embed([seq], { pooling: 'cls', normalize: true })[0]!);
  engine.close();
  const sup = await Supervisor.start({ ...base, modelPath: bertPath });
  t.teardown(() => sup.stop());
  t.match(await sup.embeddingModel(), { pooling: 'cls', normalize: true, matryoshka: false, maxInputTokens: 64 });
  const got = await sup.embed(inputs);
  got.forEach((v, i) => t.ok(cosine(v, want[i]!) > 0.999999, `input ${i}: the engine's vector`));
  await t.rejects(Supervisor.start({ ...base, modelPath: bertPath, tpSize: 2, maxRestarts: 0 }), { message: /without tensor parallelism/ });
});
