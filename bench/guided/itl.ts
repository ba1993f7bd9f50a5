// Inter-token latency of grammar-constrained decoding (json_schema) against unconstrained decoding, at several batch
// sizes, through the worker's actors (Supervisor: scheduler thread, rank thread, engine), rounds alternating so both
// see the same machine. Issue 21's target: ITL with json_schema within 10% of unconstrained at batch 1 and 64 (GPU).
// ITL = the gaps between a request's consecutive tokens after its first (each step streams one token per request).
// The guided requests use a schema whose one string property runs past --output-len tokens, so both kinds decode
// the same number of tokens (both stop at max_tokens); a request whose grammar ends first contributes fewer gaps.
// Run (GPU machine, Qwen3-0.6B shape with random weights made in a temp dir):
//   npx tsx bench/guided/itl.ts --device cuda --batches 1,64 --output-len 128 --rounds 3
// CPU (the bundled stories260K):
//   npx tsx bench/guided/itl.ts --device cpu --model-path models/stories260K.gguf --batches 1,16 --output-len 64
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { makeModel } from '../../src/engine/make-model.js';
import type { PreprocessedRequest } from '../../src/protocol/request.js';
import { Supervisor } from '../../src/supervisor.js';
import { loadTokenizer } from '../../src/tokenizer/index.js';

const { values: a } = parseArgs({
  options: {
    'model-path': { type: 'string' },
    device: { type: 'string', default: 'cuda' },
    batches: { type: 'string', default: '1,64' },
    'output-len': { type: 'string', default: '128' },
    'prompt-len': { type: 'string', default: '32' },
    rounds: { type: 'string', default: '3' },
    'cpu-threads': { type: 'string' },
  },
});
let modelPath = a['model-path'];
if (!modelPath) {
  modelPath = join(mkdtempSync(join(tmpdir(), 'guided-itl-')), 'qwen3-0.6b');
  makeModel({ shape: 'qwen3-0.6b', seed: 1, outDir: modelPath });
}
const batches = a.batches!.split(',').map(Number);
const outputLen = Number(a['output-len']);
const rounds = Number(a.rounds);
const tokenizer = loadTokenizer(modelPath);
const base = tokenizer.encode('Once upon a time, in a land far away, there lived a curious little fox who loved to explore the forest.', { addSpecialTokens: true });
const prompt = Array.from({ length: Number(a['prompt-len']) }, (_, i) => base[i % base.length]);
const SCHEMA = { type: 'object', properties: { story: { type: 'string' } }, required: ['story'] };

const sup = await Supervisor.start({
  modelPath, device: a.device as 'cuda' | 'cpu', maxRunningRequests: Math.max(...batches), chunkedPrefillSize: 4096,
  ...(a['cpu-threads'] ? { cpuThreads: Number(a['cpu-threads']) } : {}),
});

function request(guided: boolean, seed: number): PreprocessedRequest {
  return {
    model: 'bench', token_ids: prompt, eos_token_ids: [...tokenizer.eosTokenIds], annotations: [],
    stop_conditions: { max_tokens: outputLen, ignore_eos: !guided },
    sampling_options: { temperature: 1, seed, ...(guided ? { guided_decoding: { json: SCHEMA } } : {}) },
  };
}

/** One batch of concurrent requests; the token gaps (ms) of all of them. */
async function runBatch(batch: number, guided: boolean, round: number): Promise<{ gaps: number[]; tokens: number }> {
  const gaps: number[] = [];
  let tokens = 0;
  await Promise.all(
    Array.from({ length: batch }, async (_, i) => {
      let last = -1;
      for await (const chunk of sup.generate(request(guided, round * 1000 + i))) {
        const now = performance.now();
        for (let k = 0; k < chunk.token_ids.length; k++) {
          if (last >= 0) gaps.push(k === 0 ? now - last : 0);
          tokens++;
        }
        if (chunk.token_ids.length) last = now;
      }
    }),
  );
  return { gaps, tokens };
}

const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((x, y) => x - y);
  return s[Math.min(s.length - 1, Math.floor(p * s.length))] ?? NaN;
};
const mean = (xs: number[]) => xs.reduce((s, x) => s + x, 0) / xs.length;

console.log(`model ${modelPath}, device ${a.device}, prompt ${prompt.length} tokens, output ${outputLen}, ${rounds} rounds (alternating)`);
await runBatch(Math.min(4, Math.max(...batches)), true, 99); // warm-up: grammar compiler, graphs
await runBatch(Math.min(4, Math.max(...batches)), false, 99);
for (const batch of batches) {
  const all = { free: [] as number[], guided: [] as number[] };
  const toks = { free: 0, guided: 0 };
  for (let r = 0; r < rounds; r++) {
    for (const kind of ['free', 'guided'] as const) {
      const { gaps, tokens } = await runBatch(batch, kind === 'guided', r);
      all[kind].push(...gaps);
      toks[kind] += tokens;
    }
  }
  const line = (kind: 'free' | 'guided') =>
    `${kind.padEnd(6)} ITL mean ${mean(all[kind]).toFixed(3)} ms, p50 ${pct(all[kind], 0.5).toFixed(3)} ms, p90 ${pct(all[kind], 0.9).toFixed(3)} ms (${all[kind].length} gaps, ${toks[kind]} tokens)`;
  console.log(`batch ${batch}:\n  ${line('free')}\n  ${line('guided')}\n  guided/free mean ${(mean(all.guided) / mean(all.free)).toFixed(3)}, p50 ${(pct(all.guided, 0.5) / pct(all.free, 0.5)).toFixed(3)}`);
}
await sup.stop();
