// One workload shape for a kernel profiler (ncu) to watch: `decode B CTX STEPS` runs STEPS decode steps of B
// sequences at context CTX (the KV pages are taken as they are: timing does not depend on their values much, and
// no prefill kernels mix into the profile), `prefill N` runs one N-token prefill step, and `mixed B CTX N [L]` runs
// one step of B decode rows at context CTX plus N prefill tokens, as one chunk or as new sequences of L tokens each
// (the scheduler's steps while a queue of prompts prefills).
// Usage: npx tsx bench/engine/profile.ts MODEL_DIR decode 256 192 3 | prefill 4096 | mixed 128 600 16384 512
// Under ncu set DSG_NO_GRAPH_WARMUP=1: the engine otherwise replays every decode graph once at start-up, and those
// launches come first in the profile.
import { openEngine } from '../../src/engine/engine.js';
import { packFor } from '../../src/engine/step.js';
import { loadModelSpec } from '../../src/engine/model.js';
import type { SamplingParams, SeqStep } from '../../src/engine/types.js';

const [dir, mode, ...nums] = process.argv.slice(2);
const n = nums.map(Number);
if (!dir || (mode !== 'decode' && mode !== 'prefill' && mode !== 'mixed'))
  throw new Error('usage: profile.ts MODEL_DIR decode B CTX STEPS | prefill N | mixed B CTX N [L]');
const spec = await loadModelSpec(dir);
const greedy: SamplingParams = { temperature: 0, topP: 1, topK: 0, minP: 0, seed: null, logprobs: -1 };
const PAGE = 16;
const [B, CTX, STEPS] = mode === 'decode' ? [n[0], n[1], n[2]] : mode === 'mixed' ? [n[0], n[1], 1] : [1, n[0], 1];
const CHUNK = mode === 'mixed' ? n[2] : 0;
const PROMPT = mode === 'mixed' && n[3] ? n[3] : CHUNK; // tokens per prefilled sequence
const pagesPerSeq = Math.ceil((CTX + STEPS) / PAGE);
const prompts = PROMPT > 0 ? Math.ceil(CHUNK / PROMPT) : 0;
const chunkPages = prompts * Math.ceil(PROMPT / PAGE);
const engine = openEngine(spec, {
  backend: 'cuda', deviceId: 0, pageSize: PAGE, numPages: B * pagesPerSeq + chunkPages + 16, memFractionStatic: 0.9,
  maxBatchTokens: Math.max(4096, CTX, B + CHUNK), maxSeqsPerStep: Math.max(256, B + prompts),
});
try {
  const pages = Array.from({ length: B }, (_, s) => Array.from({ length: pagesPerSeq }, (_, i) => s * pagesPerSeq + i));
  if (mode === 'prefill') {
    const tokens = Array.from({ length: CTX }, (_, i) => (i * 7919) % spec.vocabSize);
    engine.step(packFor(engine, [{ tokenIds: tokens, startPos: 0, pages: pages[0].slice(0, Math.ceil(CTX / PAGE)), sample: true, sampling: greedy, outputIndex: 0 }]));
  } else if (mode === 'mixed') {
    const decode: SeqStep[] = pages.map((p, s) => ({ tokenIds: [(s * 31) % spec.vocabSize], startPos: CTX - 1, pages: p.slice(0, Math.ceil(CTX / PAGE)), sample: true, sampling: greedy, outputIndex: 0 }));
    const perPrompt = Math.ceil(PROMPT / PAGE);
    const prefill: SeqStep[] = Array.from({ length: prompts }, (_, j) => {
      const len = Math.min(PROMPT, CHUNK - j * PROMPT);
      return {
        tokenIds: Array.from({ length: len }, (_, i) => (i * 7919 + j) % spec.vocabSize), startPos: 0,
        pages: Array.from({ length: Math.ceil(len / PAGE) }, (_, i) => B * pagesPerSeq + j * perPrompt + i), sample: true, sampling: greedy, outputIndex: 0,
      };
    });
    engine.step(packFor(engine, [...decode, ...prefill]));
  } else {
    for (let i = 0; i < STEPS; i++) {
      const pos = CTX - 1 + i;
      const batch: SeqStep[] = pages.map((p, s) => ({ tokenIds: [(s * 31 + i) % spec.vocabSize], startPos: pos, pages: p.slice(0, Math.ceil((pos + 1) / PAGE)), sample: true, sampling: greedy, outputIndex: i }));
      engine.step(packFor(engine, batch));
    }
  }
} finally {
  engine.close();
}
console.log(`profiled ${mode} B=${B} CTX=${CTX} steps=${STEPS} chunk=${CHUNK}`);
