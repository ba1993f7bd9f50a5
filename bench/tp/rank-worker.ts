// One tensor-parallel rank of bench/tp/tp-check.ts, in a worker_thread: opens the engine as rank `rank` of `size`
// (EngineOptions.tp; no tp option when size is 1), runs the task with the same step descriptors as every other rank
// of its group, and posts its result. Rank 0's figures stand for the group; every rank posts digests of what it
// produced, so the caller can see that the ranks agree bit for bit.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { parentPort, workerData } from 'node:worker_threads';
import { openEngine } from '../../src/engine/engine.js';
import { loadModelSpec } from '../../src/engine/model.js';
import { packFor } from '../../src/engine/step.js';
import type { Engine, EngineOptions, ModelSpec, SamplingParams, SeqStep } from '../../src/engine/types.js';
import { placeholderFor } from '../../src/scheduler/placeholder.js';

/** A correctness run: qwen3-check's teacher-forced batches (page size, seq 0 prefilled in two chunks or not, every
 *  sequence repeated `copies` times in one batch). */
export interface CheckRun {
  pageSize: number;
  chunked: boolean;
  copies: number;
}
export type RankTask =
  | { kind: 'check'; refDir: string; runs: CheckRun[] }
  | { kind: 'timing'; modelDir: string; batches: number[]; prompt: number; newTokens: number };
export interface RankInput {
  backend: 'cuda' | 'cpu';
  rank: number;
  size: number;
  group: string;
  deviceId: number;
  timeoutMs: number;
  task: RankTask;
}
export interface RowStatsOut {
  median: number;
  max: number;
  top1: number;
}
export interface CheckRunOut {
  run: CheckRun;
  stats: RowStatsOut | null; // rank 0 only
  digest: string; // tokens and sampled logits of every step
}
export interface SampledOut {
  tokens: number[][];
  digest: string;
}
export interface TimingOut {
  batch: number;
  itlMs: number;
  tokS: number;
  weightsBytes: number;
}
export type RankOutput =
  | { rank: number; kind: 'check'; runs: CheckRunOut[]; sampled: SampledOut }
  | { rank: number; kind: 'timing'; rows: TimingOut[] }
  | { rank: number; kind: 'error'; code: string; message: string };

const input = workerData as RankInput;
const greedy: SamplingParams = { temperature: 0, topP: 1, topK: 0, minP: 0, seed: null, logprobs: -1 };

/** FNV-1a over 32-bit words: tokens, and every 101st logit's bits. */
class Digest {
  private h = 0x811c9dc5;
  word(x: number): void {
    this.h = Math.imul(this.h ^ (x >>> 0), 0x01000193) >>> 0;
  }
  tokens(t: ArrayLike<number>): void {
    for (let i = 0; i < t.length; i++) this.word(t[i]);
  }
  logits(l: Float32Array): void {
    const bits = new Uint32Array(l.buffer, l.byteOffset, l.length);
    for (let i = 0; i < bits.length; i += 101) this.word(bits[i]);
  }
  hex(): string {
    return this.h.toString(16).padStart(8, '0');
  }
}

function open(spec: ModelSpec, options: Omit<EngineOptions, 'backend' | 'deviceId' | 'tp'>, run: number): Engine {
  const tp = input.size > 1 ? { rank: input.rank, size: input.size, group: `${input.group}-${run}`, timeoutMs: input.timeoutMs } : undefined;
  return openEngine(spec, { backend: input.backend, deviceId: input.deviceId, ...options, ...(tp ? { tp } : {}) });
}

interface RefMeta {
  prompts: number[][];
  continuations: number[][];
  rows: number;
  vocab: number;
}

/** Relative error and top-1 agreement of our rows against hf_logits.py's float32 reference (qwen3-check's figures). */
class RowStats {
  private readonly errs: number[] = [];
  private agree = 0;
  constructor(private readonly ref: Float32Array, private readonly meta: RefMeta) {}
  add(s: number, r: number, x: Float32Array): void {
    const V = this.meta.vocab;
    const y = this.ref.subarray((s * this.meta.rows + r) * V, (s * this.meta.rows + r + 1) * V);
    let num = 0;
    let den = 0;
    let bx = 0;
    let by = 0;
    for (let i = 0; i < V; i++) {
      const d = x[i] - y[i];
      num += d * d;
      den += y[i] * y[i];
      if (x[i] > x[bx]) bx = i;
      if (y[i] > y[by]) by = i;
    }
    this.errs.push(Math.sqrt(num / den));
    if (bx === by) this.agree++;
  }
  stats(): RowStatsOut {
    const e = [...this.errs].sort((a, b) => a - b);
    return { median: e[Math.floor(e.length / 2)], max: e[e.length - 1], top1: (100 * this.agree) / e.length };
  }
}

function loadF32(path: string): Float32Array {
  const b = readFileSync(path);
  return new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4);
}

/** qwen3-check's teacher-forced run: every prompt, then its continuation one token per step, logits of each row. */
function checkRun(spec: ModelSpec, meta: RefMeta, ref: Float32Array | null, run: CheckRun, index: number): CheckRunOut {
  const numSeqs = meta.prompts.length;
  const seqs = numSeqs * run.copies;
  const V = meta.vocab;
  const P = run.pageSize;
  const tokensPerSeq = Math.max(...meta.prompts.map((p, s) => p.length + meta.continuations[s].length));
  const engine = open(spec, {
    pageSize: P, numPages: Math.max(Math.ceil(4096 / P) * 2, seqs * Math.ceil(tokensPerSeq / P) + 1), memFractionStatic: 0.5,
    maxBatchTokens: Math.max(1024, run.copies * meta.prompts.reduce((a, p) => a + p.length, 0)), maxSeqsPerStep: Math.max(16, seqs),
  }, index);
  const stats = ref ? new RowStats(ref, meta) : null;
  const digest = new Digest();
  try {
    const full = Array.from({ length: seqs }, (_, i) => [...meta.prompts[i % numSeqs], ...meta.continuations[i % numSeqs]]);
    const fed = full.map(() => 0);
    const got = full.map(() => 0);
    let nextPage = seqs;
    const pages: number[][] = full.map(() => []);
    while (got.some((g) => g < meta.rows)) {
      const batch: SeqStep[] = [];
      const idx: number[] = [];
      for (let s = 0; s < seqs; s++) {
        if (got[s] >= meta.rows) continue;
        const promptLen = meta.prompts[s % numSeqs].length;
        let n = fed[s] === 0 ? promptLen : 1;
        if (run.chunked && s === 0 && fed[s] === 0) n = Math.floor(promptLen / 2);
        else if (run.chunked && s === 0 && fed[s] < promptLen) n = promptLen - fed[s];
        const end = fed[s] + n;
        while (pages[s].length * P < end) pages[s].push(pages[s].length === 0 ? s : nextPage++);
        batch.push({ tokenIds: full[s].slice(fed[s], end), startPos: fed[s], pages: pages[s].slice(), sample: end >= promptLen, sampling: greedy, outputIndex: 0 });
        idx.push(s);
      }
      const r = engine.step(packFor(engine, batch, { returnLogits: true }));
      const logits = r.logits as Float32Array;
      digest.tokens(r.tokens);
      digest.logits(logits);
      batch.forEach((b, j) => {
        const s = idx[j];
        fed[s] = b.startPos + b.tokenIds.length;
        if (fed[s] >= meta.prompts[s % numSeqs].length) {
          stats?.add(s % numSeqs, got[s], logits.subarray(j * V, (j + 1) * V));
          got[s]++;
        }
      });
    }
  } finally {
    engine.close();
  }
  return { run, stats: stats ? stats.stats() : null, digest: digest.hex() };
}

/** Seeded sampling (temperature 0.8, top-p 0.9, top-k 50) of 32 tokens after each prompt, pipelined with
 *  placeholders: the tokens every rank draws from the gathered logits. */
function sampledRun(spec: ModelSpec, meta: RefMeta, index: number): SampledOut {
  const P = 16;
  const NEW = 32;
  const prompts = meta.prompts;
  const B = prompts.length;
  const pagesPer = Math.ceil((Math.max(...prompts.map((p) => p.length)) + NEW) / P);
  const engine = open(spec, { pageSize: P, numPages: B * pagesPer + 16, memFractionStatic: 0.5, maxBatchTokens: 1024, maxSeqsPerStep: 16 }, index);
  const digest = new Digest();
  const tokens: number[][] = prompts.map(() => []);
  try {
    const pages = prompts.map((_, s) => Array.from({ length: pagesPer }, (_, i) => s * pagesPer + i));
    const sampling = (s: number): SamplingParams => ({ temperature: 0.8, topP: 0.9, topK: 50, minP: 0, seed: 1000 + s, logprobs: -1 });
    const used = (len: number): number[][] => pages.map((p) => p.slice(0, Math.ceil(len / P)));
    const r0 = engine.step(packFor(engine, prompts.map((p, s) => ({ tokenIds: p, startPos: 0, pages: used(p.length)[s], sample: true, sampling: sampling(s), outputIndex: 0 }))));
    r0.tokens.forEach((t, s) => tokens[s].push(t));
    const step = (i: number, input: (s: number) => number): SeqStep[] =>
      prompts.map((p, s) => ({ tokenIds: [input(s)], startPos: p.length + i, pages: used(p.length + i + 1)[s], sample: true, sampling: sampling(s), outputIndex: i + 1 }));
    engine.stepBegin!(packFor(engine, step(0, (s) => tokens[s][0]), { placeholders: true }));
    for (let i = 1; i < NEW; i++) {
      engine.stepBegin!(packFor(engine, step(i, placeholderFor), { placeholders: true }));
      engine.stepEnd!().tokens.forEach((t, s) => tokens[s].push(t));
    }
    engine.stepEnd!().tokens.forEach((t, s) => tokens[s].push(t));
  } finally {
    engine.close();
  }
  for (const t of tokens) digest.tokens(t);
  return { tokens, digest: digest.hex() };
}

/** bench/engine/bench.ts's decode measurement: prefill B random prompts, then newTokens pipelined greedy steps. */
function timing(spec: ModelSpec, batches: number[], PROMPT: number, NEW: number): TimingOut[] {
  const PAGE = 16;
  const MAX_TOKENS = 4096;
  const maxB = Math.max(...batches);
  const pagesPerSeq = Math.ceil((PROMPT + NEW) / PAGE);
  const engine = open(spec, {
    pageSize: PAGE, numPages: maxB * pagesPerSeq + MAX_TOKENS / PAGE + 16, memFractionStatic: 0.9, maxBatchTokens: MAX_TOKENS,
    maxSeqsPerStep: Math.max(256, maxB),
  }, 0);
  const weightsBytes = engine.memoryInfo().weightsBytes;
  let seed = 12345;
  const rand = (): number => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    return seed / 2 ** 31;
  };
  const randomTokens = (n: number): number[] => Array.from({ length: n }, () => Math.floor(rand() * spec.vocabSize));
  const rows: TimingOut[] = [];
  try {
    for (const B of batches) {
      const pages = Array.from({ length: B }, (_, s) => Array.from({ length: pagesPerSeq }, (_, i) => s * pagesPerSeq + i));
      const last = new Array<number>(B).fill(0);
      const perStep = Math.max(1, Math.floor(MAX_TOKENS / PROMPT));
      for (let s0 = 0; s0 < B; s0 += perStep) {
        const batch: SeqStep[] = [];
        for (let s = s0; s < Math.min(B, s0 + perStep); s++)
          batch.push({ tokenIds: randomTokens(PROMPT), startPos: 0, pages: pages[s].slice(0, Math.ceil(PROMPT / PAGE)), sample: true, sampling: greedy, outputIndex: 0 });
        const r = engine.step(packFor(engine, batch));
        batch.forEach((_, j) => (last[s0 + j] = r.tokens[j]));
      }
      const decodeStep = (i: number, tokenOf: (s: number) => number): SeqStep[] =>
        last.map((_, s) => ({ tokenIds: [tokenOf(s)], startPos: PROMPT + i, pages: pages[s].slice(0, Math.ceil((PROMPT + i + 1) / PAGE)), sample: true, sampling: greedy, outputIndex: i + 1 }));
      // Untimed: the first 4 steps; then the timer runs from the next begin to the last end, as bench.ts does.
      const WARM = 4;
      engine.stepBegin!(packFor(engine, decodeStep(0, (s) => last[s]), { placeholders: true }));
      for (let i = 1; i < WARM; i++) {
        engine.stepBegin!(packFor(engine, decodeStep(i, placeholderFor), { placeholders: true }));
        engine.stepEnd!();
      }
      engine.stepEnd!().tokens.forEach((t, s) => (last[s] = t));
      const t0 = performance.now();
      engine.stepBegin!(packFor(engine, decodeStep(WARM, (s) => last[s]), { placeholders: true }));
      for (let i = WARM + 1; i < NEW - 1; i++) {
        engine.stepBegin!(packFor(engine, decodeStep(i, placeholderFor), { placeholders: true }));
        engine.stepEnd!();
      }
      engine.stepEnd!();
      const ms = performance.now() - t0;
      const steps = NEW - 1 - WARM;
      rows.push({ batch: B, itlMs: ms / steps, tokS: (B * steps) / (ms / 1e3), weightsBytes });
    }
  } finally {
    engine.close();
  }
  return rows;
}

async function main(): Promise<RankOutput> {
  const t = input.task;
  if (t.kind === 'check') {
    const meta = JSON.parse(readFileSync(join(t.refDir, 'tokens.json'), 'utf8')) as RefMeta;
    const ref = input.rank === 0 ? loadF32(join(t.refDir, 'ref_fp32.bin')) : null;
    const spec = await loadModelSpec(join(t.refDir, 'model'));
    const runs = t.runs.map((run, i) => checkRun(spec, meta, ref, run, i));
    const sampled = sampledRun(spec, meta, t.runs.length);
    return { rank: input.rank, kind: 'check', runs, sampled };
  }
  const spec = await loadModelSpec(t.modelDir);
  return { rank: input.rank, kind: 'timing', rows: timing(spec, t.batches, t.prompt, t.newTokens) };
}

const started = performance.now();
main()
  .then((out) => parentPort!.postMessage(out))
  .catch((err: unknown) => {
    const e = err as { code?: string; message?: string };
    const out: RankOutput = { rank: input.rank, kind: 'error', code: e.code ?? 'ERROR', message: `${e.message ?? String(err)} (after ${((performance.now() - started) / 1e3).toFixed(1)} s)` };
    parentPort!.postMessage(out);
  });
