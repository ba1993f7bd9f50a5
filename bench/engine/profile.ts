// One workload shape for a kernel profiler (ncu) to watch: `decode B CTX STEPS` runs STEPS decode steps of B
// sequences at context CTX (the KV pages are taken as they are: timing does not depend on their values much, and
// no prefill kernels mix into the profile), `prefill N` runs one N-token prefill step, and `mixed B CTX N` runs one
// step of B decode rows at context CTX plus one N-token prefill chunk (the scheduler's steps while a queue prefills).
// Usage: npx tsx bench/engine/profile.ts MODEL_DIR decode 256 192 3 | prefill 4096 | mixed 128 600 8192
import { openEngine } from '../../src/engine/engine.js';
import { loadModelSpec } from '../../src/engine/model.js';
import type { SamplingParams, SeqStep } from '../../src/engine/types.js';

const [dir, mode, ...nums] = process.argv.slice(2);
const n = nums.map(Number);
if (!dir || (mode !== 'decode' && mode !== 'prefill' && mode !== 'mixed'))
  throw new Error('usage: profile.ts MODEL_DIR decode B CTX STEPS | prefill N | mixed B CTX N');
const spec = await loadModelSpec(dir);
const greedy: SamplingParams = { temperature: 0, topP: 1, topK: 0, minP: 0, seed: null, logprobs: -1 };
const PAGE = 16;
const [B, CTX, STEPS] = mode === 'decode' ? [n[0], n[1], n[2]] : mode === 'mixed' ? [n[0], n[1], 1] : [1, n[0], 1];
const CHUNK = mode === 'mixed' ? n[2] : 0;
const pagesPerSeq = Math.ceil((CTX + STEPS) / PAGE);
const chunkPages = Math.ceil(CHUNK / PAGE);
const engine = openEngine(spec, {
  backend: 'cuda', deviceId: 0, pageSize: PAGE, numPages: B * pagesPerSeq + chunkPages + 16, memFractionStatic: 0.9,
  maxBatchTokens: Math.max(4096, CTX, B + CHUNK), maxSeqsPerStep: 257,
});
try {
  const pages = Array.from({ length: B }, (_, s) => Array.from({ length: pagesPerSeq }, (_, i) => s * pagesPerSeq + i));
  if (mode === 'prefill') {
    const tokens = Array.from({ length: CTX }, (_, i) => (i * 7919) % spec.vocabSize);
    engine.step([{ tokenIds: tokens, startPos: 0, pages: pages[0].slice(0, Math.ceil(CTX / PAGE)), sample: true, sampling: greedy, outputIndex: 0 }]);
  } else if (mode === 'mixed') {
    const decode: SeqStep[] = pages.map((p, s) => ({ tokenIds: [(s * 31) % spec.vocabSize], startPos: CTX - 1, pages: p.slice(0, Math.ceil(CTX / PAGE)), sample: true, sampling: greedy, outputIndex: 0 }));
    const chunk = Array.from({ length: CHUNK }, (_, i) => (i * 7919) % spec.vocabSize);
    const chunkPageIds = Array.from({ length: chunkPages }, (_, i) => B * pagesPerSeq + i);
    engine.step([...decode, { tokenIds: chunk, startPos: 0, pages: chunkPageIds, sample: true, sampling: greedy, outputIndex: 0 }]);
  } else {
    for (let i = 0; i < STEPS; i++) {
      const pos = CTX - 1 + i;
      const batch: SeqStep[] = pages.map((p, s) => ({ tokenIds: [(s * 31 + i) % spec.vocabSize], startPos: pos, pages: p.slice(0, Math.ceil((pos + 1) / PAGE)), sample: true, sampling: greedy, outputIndex: i }));
      engine.step(batch);
    }
  }
} finally {
  engine.close();
}
console.log(`profiled ${mode} B=${B} CTX=${CTX} steps=${STEPS} chunk=${CHUNK}`);
