// llama.cpp (node-llama-cpp 3.21.1, CPU) greedy continuations of the GGUF files our make-model writes (llama,
// qwen2 and qwen3 architectures), written to test/fixtures/make-model-gguf-llamacpp.json for
// test/golden-gguf-llamacpp.test.ts: proof that llama.cpp loads them and computes what our engine computes.
// Setup: cd bench/reference && npm i -E node-llama-cpp@3.21.1
// Run from the project root: node --import tsx bench/reference/gguf-llamacpp.mjs
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { getLlama, LlamaLogLevel } from 'node-llama-cpp';
import { makeModel } from '../../src/engine/make-model.ts';

const outPath = new URL('../../test/fixtures/make-model-gguf-llamacpp.json', import.meta.url).pathname;
const MODELS = [
  { shape: 'llama-tiny', seed: 21, std: 0.1, dtype: 'f32' },
  { shape: 'qwen2-tiny', seed: 22, std: 0.1, dtype: 'f32' },
  { shape: 'qwen3-tiny', seed: 23, std: 0.1, dtype: 'f32' },
];
const PROMPTS = ['The cat sat on', 'Hello, world! 123', 'a'];
const MAX_TOKENS = 16;

const dir = mkdtempSync(join(tmpdir(), 'gguf-llamacpp-'));
const llama = await getLlama({ gpu: false, build: 'never', logLevel: LlamaLogLevel.error });
const cases = [];
try {
  for (const m of MODELS) {
    const { dir: modelDir } = makeModel({ ...m, outDir: join(dir, m.shape), gguf: true });
    const model = await llama.loadModel({ modelPath: join(modelDir, 'model-f16.gguf') });
    const context = await model.createContext({ contextSize: 256, threads: 2 });
    const sequence = context.getSequence();
    for (const prompt of PROMPTS) {
      await sequence.clearHistory();
      const promptTokens = model.tokenize(prompt);
      const output = [];
      for await (const token of sequence.evaluate(promptTokens, { temperature: 0 })) {
        output.push(token);
        if (output.length >= MAX_TOKENS) break;
      }
      cases.push({ ...m, prompt, prompt_token_ids: promptTokens, output_token_ids: output });
      console.log(m.shape, JSON.stringify(prompt), JSON.stringify(output));
    }
    await context.dispose();
    await model.dispose();
  }
} finally {
  await llama.dispose();
  rmSync(dir, { recursive: true, force: true });
}
writeFileSync(outPath, JSON.stringify({
  generator: 'bench/reference/gguf-llamacpp.mjs',
  engine: 'llama.cpp via node-llama-cpp 3.21.1, CPU, greedy (temperature 0), no BOS (the Qwen tokenizer adds none)',
  max_tokens: MAX_TOKENS,
  cases,
}, null, 2) + '\n');
