// The engine against transformers' fixtures (make-fixtures.py): each checkpoint's inputs embedded on the CPU backend
// (cosine to transformers float32 >= 0.99999) and, where built and present, on CUDA (cosine to float32 no lower than
// transformers' own bf16 gives, within 1e-4). Prints one table row per checkpoint and backend; exits 1 on a miss.
// Usage: npx tsx bench/embeddings/check-fixtures.ts FIXTURES.json
import { readFileSync } from 'node:fs';
import { loadAddon } from '../../src/engine/addon.js';
import { readEmbeddingConfig } from '../../src/engine/embedding-config.js';
import { openEngine } from '../../src/engine/engine.js';
import { loadModelSpec } from '../../src/engine/model.js';
import type { BackendKind } from '../../src/engine/types.js';
import { cosine } from '../../test/helpers/vectors.js';

interface Fixture { model: string; pooling: string; inputs: number[][]; float32: number[][]; bf16?: number[][] }
const file = process.argv[2];
if (!file) {
  process.stderr.write('usage: check-fixtures.ts FIXTURES.json\n');
  process.exit(2);
}
const { fixtures, transformers } = JSON.parse(readFileSync(file, 'utf8')) as { fixtures: Fixture[]; transformers: string };
let failed = false;
process.stdout.write(`transformers ${transformers}\n| checkpoint | backend | min cosine to f32 | transformers bf16 min cosine | ok |\n|---|---|---|---|---|\n`);
const backends: BackendKind[] = loadAddon().backends.includes('cuda') ? ['cpu', 'cuda'] : ['cpu'];
for (const f of fixtures) {
  const spec = await loadModelSpec(f.model);
  const cfg = readEmbeddingConfig(f.model, spec.architecture);
  // BERT-style encoders run on the CPU backend only (the addon refuses them on CUDA)
  for (const backend of spec.architecture === 'bert' ? (['cpu'] as BackendKind[]) : backends) {
    const engine = openEngine(spec, { backend, deviceId: 0, pageSize: 16, numPages: 64, memFractionStatic: 0.5, maxBatchTokens: 512, maxSeqsPerStep: 16, threads: 0 });
    try {
      const ours = engine.embed(f.inputs, cfg);
      const min = Math.min(...ours.map((v, i) => cosine(v, f.float32[i]!)));
      const peer = f.bf16 ? Math.min(...f.bf16.map((v, i) => cosine(v, f.float32[i]!))) : null;
      const ok = backend === 'cpu' ? min >= 0.99999 : peer === null || min >= peer - 1e-4;
      failed ||= !ok;
      process.stdout.write(`| ${f.model.split('/').at(-1)} | ${backend} | ${min.toFixed(7)} | ${peer === null ? '-' : peer.toFixed(7)} | ${ok ? 'yes' : 'NO'} |\n`);
    } finally {
      engine.close();
    }
  }
}
process.exitCode = failed ? 1 : 0;
