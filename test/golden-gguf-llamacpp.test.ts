// GGUF files written by make-model --gguf (llama, qwen2, qwen3 architectures) against llama.cpp: same prompt
// tokens and the same greedy continuation (test/fixtures/make-model-gguf-llamacpp.json, written by
// bench/reference/gguf-llamacpp.mjs from the same deterministic make-model weights).
import t from 'tap';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { addonPath } from '../src/engine/addon.js';
import { makeModel } from '../src/engine/make-model.js';
import type { ModelShapeName } from '../src/engine/make-model.js';
import { loadModelSpec } from '../src/engine/model.js';
import type { DType } from '../src/engine/types.js';
import { generateTokens, openEngineFor } from '../src/cli/commands/generate.js';
import { loadTokenizer } from '../src/tokenizer/index.js';

interface Case {
  shape: ModelShapeName;
  seed: number;
  std: number;
  dtype: DType;
  prompt: string;
  prompt_token_ids: number[];
  output_token_ids: number[];
}

const fixture = JSON.parse(readFileSync(new URL('./fixtures/make-model-gguf-llamacpp.json', import.meta.url), 'utf8')) as { cases: Case[] };
const built = existsSync(addonPath());
const dir = mkdtempSync(join(tmpdir(), 'gguf-llamacpp-test-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));

const shapes = [...new Set(fixture.cases.map((c) => c.shape))];
for (const shape of shapes) {
  t.test(`${shape} GGUF: tokens and greedy output match llama.cpp`, { skip: built ? false : `native addon not built (${addonPath()})` }, async (t) => {
    const cases = fixture.cases.filter((c) => c.shape === shape);
    const first = cases[0] as Case;
    const { dir: modelDir } = makeModel({ shape, seed: first.seed, std: first.std, dtype: first.dtype, outDir: join(dir, shape), gguf: true });
    const gguf = join(modelDir, 'model-f16.gguf');
    const spec = await loadModelSpec(gguf);
    const tok = loadTokenizer(gguf);
    const engine = openEngineFor(spec, 'cpu', 64, 32);
    try {
      for (const c of cases) {
        t.same(tok.encode(c.prompt), c.prompt_token_ids, `prompt tokens of ${JSON.stringify(c.prompt)}`);
        const r = generateTokens(engine, c.prompt_token_ids, {
          maxTokens: c.output_token_ids.length,
          sampling: { temperature: 0, topP: 1, topK: -1, minP: 0, seed: null, logprobs: -1 },
          stopTokenIds: [],
        });
        t.same(r.outputTokenIds, c.output_token_ids, `greedy output of ${JSON.stringify(c.prompt)}`);
      }
    } finally {
      engine.close();
    }
  });
}
