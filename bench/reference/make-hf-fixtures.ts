// Writes the tiny random checkpoints whose HF transformers logits are committed under test/fixtures/hf-logits/
// (see hf_logits.py): qwen3-tiny (q/k norm, tied, head_dim != hidden/heads), qwen2-tiny (QKV bias, untied),
// llama-tiny, and llama-tiny with Llama-3 RoPE scaling. float32, std 0.1 so attention patterns are far from
// uniform. Run: npx tsx bench/reference/make-hf-fixtures.ts   (output: test/fixtures/hf/<name>/)

import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { makeModel } from '../../src/engine/make-model.js';
import type { ModelShapeName } from '../../src/engine/make-model.js';

const root = new URL('../../test/fixtures/hf/', import.meta.url).pathname;

const fixtures: { name: string; shape: ModelShapeName; seed: number; ropeScaling?: Record<string, number | string> }[] = [
  { name: 'qwen3-tiny', shape: 'qwen3-tiny', seed: 101 },
  { name: 'qwen2-tiny', shape: 'qwen2-tiny', seed: 102 },
  { name: 'llama-tiny', shape: 'llama-tiny', seed: 103 },
  {
    name: 'llama-tiny-rope-llama3',
    shape: 'llama-tiny',
    seed: 104,
    // A small original context so the low, medium and high frequency bands of head_dim 16 all occur.
    ropeScaling: { rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 64 },
  },
];

for (const f of fixtures) {
  const dir = join(root, f.name);
  rmSync(dir, { recursive: true, force: true });
  makeModel({ shape: f.shape, seed: f.seed, outDir: dir, dtype: 'f32', std: 0.1 });
  if (f.ropeScaling !== undefined) {
    const cfgPath = join(dir, 'config.json');
    const cfg = JSON.parse(readFileSync(cfgPath, 'utf8')) as { rope_parameters: Record<string, unknown> };
    cfg.rope_parameters = { ...cfg.rope_parameters, ...f.ropeScaling };
    writeFileSync(cfgPath, JSON.stringify(cfg, null, 2) + '\n');
  }
  console.log(dir);
}
