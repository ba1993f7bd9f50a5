// Speed of our engine on the Qwen3-0.6B shape (issue 4), on the GPU machine: batch-1 inter-token latency, decode
// output tok/s at batch 1, 8, 32, 64, 128, 256 (prompt 128, 128 new tokens, greedy), prefill tok/s at 1024 and
// 4096 tokens, each as a fraction of its floor. Decode steps are pipelined (Engine.stepBegin/stepEnd) as the rank
// runs them; the bench/RESULTS.md figures up to the third session of 2026-11-27 timed one step at a time. Floors:
// decode = max(bytes / copy bandwidth, FLOPs / GEMM rate) per step with bytes = weights + the KV cache read at the
// mean context; prefill = FLOPs / GEMM rate.
// Usage: npx tsx bench/engine/bench.ts MODEL_DIR COPY_TBPS GEMM_TFLOPS  (ceilings from ceilings.py, same command).
// Prints JSON lines, then a markdown table.
import { performance } from 'node:perf_hooks';
import { packFor } from '../../src/engine/step.js';
import { openEngine } from '../../src/engine/engine.js';
import { loadModelSpec } from '../../src/engine/model.js';
import type { SamplingParams, SeqStep } from '../../src/engine/types.js';
import { placeholderFor } from '../../src/scheduler/placeholder.js';

const [dir, bwArg, rateArg] = process.argv.slice(2);
if (!dir || !bwArg || !rateArg) throw new Error('usage: bench.ts MODEL_DIR COPY_TBPS GEMM_TFLOPS');
const bw = Number(bwArg) * 1e12;
const rate = Number(rateArg) * 1e12;
const spec = await loadModelSpec(dir);
const greedy: SamplingParams = { temperature: 0, topP: 1, topK: 0, minP: 0, seed: null, logprobs: -1 };
const PAGE = 16;
const PROMPT = 128;
const NEW = 128;
const MAX_TOKENS = 4096;
const engine = openEngine(spec, {
  backend: 'cuda', deviceId: 0, pageSize: PAGE, numPages: (256 * (PROMPT + NEW)) / PAGE + MAX_TOKENS / PAGE + 16,
  memFractionStatic: 0.9, maxBatchTokens: MAX_TOKENS, maxSeqsPerStep: 256,
});
const mem = engine.memoryInfo();
console.log(JSON.stringify({ what: 'memory', ...mem }));

const H = spec.hiddenSize;
const layers = spec.numLayers;
const kvBytesPerToken = layers * 2 * spec.numKvHeads * spec.headDim * 2;
const params = mem.weightsBytes / 2;
const embedParams = spec.vocabSize * H;
let seed = 12345;
const rand = (): number => {
  seed = (seed * 1103515245 + 12345) % 2 ** 31;
  return seed / 2 ** 31;
};
const randomTokens = (n: number): number[] => Array.from({ length: n }, () => Math.floor(rand() * spec.vocabSize));

interface Row {
  what: string;
  value: number;
  unit: string;
  floor: number;
}
const rows: Row[] = [];

function decode(B: number): { tokS: number; itlMs: number } {
  const pages = Array.from({ length: B }, (_, s) => Array.from({ length: (PROMPT + NEW) / PAGE }, (_, i) => s * ((PROMPT + NEW) / PAGE) + i));
  const last: number[] = new Array<number>(B).fill(0);
  // Prefill in steps of at most MAX_TOKENS tokens.
  const perStep = Math.floor(MAX_TOKENS / PROMPT);
  for (let s0 = 0; s0 < B; s0 += perStep) {
    const batch: SeqStep[] = [];
    for (let s = s0; s < Math.min(B, s0 + perStep); s++)
      batch.push({ tokenIds: randomTokens(PROMPT), startPos: 0, pages: pages[s].slice(0, PROMPT / PAGE), sample: true, sampling: greedy, outputIndex: 0 });
    const r = engine.step(packFor(engine, batch));
    batch.forEach((_, j) => (last[s0 + j] = r.tokens[j]));
  }
  const decodeStep = (i: number, input: (s: number) => number): SeqStep[] => {
    const used = Math.ceil((PROMPT + i + 1) / PAGE);
    return last.map((_, s) => ({ tokenIds: [input(s)], startPos: PROMPT + i, pages: pages[s].slice(0, used), sample: true, sampling: greedy, outputIndex: i + 1 }));
  };
  // Pipelined, as the rank drives the engine: step i + 1 is begun before step i ends, its tokens fed from step i's
  // samples on the device (placeholders -(1 + row)); the timer runs from the first step's begin to the last one's end.
  const t0 = performance.now();
  engine.stepBegin!(packFor(engine, decodeStep(0, (s) => last[s]), { placeholders: true }));
  for (let i = 1; i < NEW - 1; i++) {
    engine.stepBegin!(packFor(engine, decodeStep(i, placeholderFor), { placeholders: true }));
    engine.stepEnd!();
  }
  engine.stepEnd!();
  const ms = performance.now() - t0;
  return { tokS: (B * (NEW - 1)) / (ms / 1e3), itlMs: ms / (NEW - 1) };
}

function prefill(N: number): number {
  const pages = Array.from({ length: N / PAGE }, (_, i) => i);
  const tokens = randomTokens(N);
  const once = (): number => {
    const t0 = performance.now();
    engine.step(packFor(engine, [{ tokenIds: tokens, startPos: 0, pages, sample: true, sampling: greedy, outputIndex: 0 }]));
    return performance.now() - t0;
  };
  once();
  const times = Array.from({ length: 5 }, once).sort((a, b) => a - b);
  return N / (times[2] / 1e3);
}

try {
  for (const B of [1, 8, 32, 64, 128, 256]) {
    decode(B); // warm-up: captures this batch size's graph
    const { tokS, itlMs } = decode(B);
    const ctx = PROMPT + NEW / 2;
    const stepFloor = Math.max((mem.weightsBytes + B * ctx * kvBytesPerToken) / bw, (2 * params * B) / rate);
    console.log(JSON.stringify({ what: 'decode', bs: B, out_tok_s: Math.round(tokS), itl_ms: +itlMs.toFixed(3), floor_tok_s: Math.round(B / stepFloor) }));
    if (B === 1) rows.push({ what: 'batch-1 ITL', value: itlMs, unit: 'ms', floor: stepFloor * 1e3 });
    rows.push({ what: `decode bs ${B}`, value: tokS, unit: 'tok/s', floor: B / stepFloor });
  }
  for (const N of [1024, 4096]) {
    const tokS = prefill(N);
    const flops = 2 * (params - embedParams) * N + 2 * embedParams + 2 * 2 * ((N * N) / 2) * spec.numHeads * spec.headDim * layers;
    console.log(JSON.stringify({ what: 'prefill', tokens: N, tok_s: Math.round(tokS), floor_tok_s: Math.round(N / (flops / rate)) }));
    rows.push({ what: `prefill ${N}`, value: tokS, unit: 'tok/s', floor: N / (flops / rate) });
  }
} finally {
  engine.close();
}
console.log('| figure | ours | floor | fraction of floor |');
console.log('|---|---|---|---|');
for (const r of rows) {
  const frac = r.unit === 'ms' ? r.floor / r.value : r.value / r.floor;
  const fmt = (x: number): string => (r.unit === 'ms' ? `${x.toFixed(3)} ms` : `${Math.round(x).toLocaleString('en-US')} tok/s`);
  console.log(`| ${r.what} | ${fmt(r.value)} | ${fmt(r.floor)} | ${(frac * 100).toFixed(1)}% |`);
}
