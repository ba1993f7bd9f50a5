// Correctness of the CUDA backend on the Qwen3-0.6B shape (issue 4), on the GPU machine, after hf_logits.py:
// our bf16 logits vs HF transformers float32 on the same weights, for 4 sequences of mixed prompt lengths (the
// longest prefilled in two chunks, the second over a cached prefix) and 32 teacher-forced decode steps, at page
// sizes 1 and 16; the bar is HF's own bf16 run from the same script. Per row: relative error ||x - ref|| / ||ref||;
// reported: median and max over rows, top-1 agreement with the float32 argmax.
// Pass: median and max <= 1.25x HF-bf16's; top-1 agreement >= HF-bf16's minus 1 point.
// Usage: npx tsx bench/engine/qwen3-check.ts DIR   (DIR as written by hf_logits.py). Exit code 1 on a miss.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { openEngine } from '../../src/engine/engine.js';
import { loadModelSpec } from '../../src/engine/model.js';
import type { SamplingParams, SeqStep } from '../../src/engine/types.js';

const dir = process.argv[2];
if (!dir) throw new Error('usage: qwen3-check.ts DIR');
const meta = JSON.parse(readFileSync(join(dir, 'tokens.json'), 'utf8')) as {
  prompts: number[][];
  continuations: number[][];
  rows: number;
  vocab: number;
};
const V = meta.vocab;
const numSeqs = meta.prompts.length;
const load = (f: string): Float32Array => {
  const b = readFileSync(join(dir, f));
  return new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4);
};
const ref = load('ref_fp32.bin');
const hfBf16 = load('hf_bf16.bin');
const row = (a: Float32Array, s: number, r: number): Float32Array => a.subarray((s * meta.rows + r) * V, (s * meta.rows + r + 1) * V);

function relErr(x: ArrayLike<number>, y: ArrayLike<number>): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < y.length; i++) {
    const d = x[i] - y[i];
    num += d * d;
    den += y[i] * y[i];
  }
  return Math.sqrt(num / den);
}
function argmax(x: ArrayLike<number>): number {
  let b = 0;
  for (let i = 1; i < x.length; i++) if (x[i] > x[b]) b = i;
  return b;
}
interface Stats {
  median: number;
  max: number;
  top1: number;
}
function stats(get: (s: number, r: number) => ArrayLike<number>): Stats {
  const errs: number[] = [];
  let agree = 0;
  for (let s = 0; s < numSeqs; s++)
    for (let r = 0; r < meta.rows; r++) {
      const x = get(s, r);
      const y = row(ref, s, r);
      errs.push(relErr(x, y));
      if (argmax(x) === argmax(y)) agree++;
    }
  errs.sort((a, b) => a - b);
  return { median: errs[Math.floor(errs.length / 2)], max: errs[errs.length - 1], top1: (100 * agree) / errs.length };
}

const greedy: SamplingParams = { temperature: 0, topP: 1, topK: 0, minP: 0, seed: null, logprobs: -1 };
const spec = await loadModelSpec(join(dir, 'model'));

function runOurs(pageSize: number, chunked: boolean, backend: 'cuda' | 'cpu' = 'cuda'): Float32Array {
  const engine = openEngine(spec, {
    backend, deviceId: 0, threads: 16, pageSize, numPages: Math.ceil(4096 / pageSize) * 2, memFractionStatic: 0.5,
    maxBatchTokens: 1024, maxSeqsPerStep: 16,
  });
  const mem = engine.memoryInfo();
  console.error(`page ${pageSize}: weights ${mem.weightsBytes} B, KV ${mem.kvPoolBytes} B, workspace ${mem.workspaceBytes} B`);
  const ours = new Float32Array(numSeqs * meta.rows * V);
  try {
    const full = meta.prompts.map((p, s) => [...p, ...meta.continuations[s]]);
    const fed = full.map(() => 0);
    const got = full.map(() => 0);
    let nextPage = numSeqs; // scattered page tables: sequence s takes pages s, s + numSeqs, ... after a reversal
    const pages: number[][] = full.map(() => []);
    while (got.some((g) => g < meta.rows)) {
      const batch: SeqStep[] = [];
      const idx: number[] = [];
      for (let s = 0; s < numSeqs; s++) {
        if (got[s] >= meta.rows) continue;
        const promptLen = meta.prompts[s].length;
        let n = fed[s] === 0 ? promptLen : 1;
        if (chunked && s === 0 && fed[s] === 0) n = Math.floor(promptLen / 2); // chunked prefill: second half over a cached prefix
        else if (chunked && s === 0 && fed[s] < promptLen) n = promptLen - fed[s];
        const end = fed[s] + n;
        while (pages[s].length * pageSize < end) pages[s].push(pages[s].length === 0 ? s : nextPage++);
        batch.push({
          tokenIds: full[s].slice(fed[s], end), startPos: fed[s], pages: pages[s].slice(),
          sample: end >= promptLen, sampling: greedy, outputIndex: 0,
        });
        idx.push(s);
      }
      const r = engine.step(batch, { returnLogits: true });
      const logits = r.logits as Float32Array;
      batch.forEach((b, j) => {
        const s = idx[j];
        fed[s] = b.startPos + b.tokenIds.length;
        if (fed[s] >= meta.prompts[s].length) {
          ours.set(logits.subarray(j * V, (j + 1) * V), (s * meta.rows + got[s]) * V);
          got[s]++;
        }
      });
    }
  } finally {
    engine.close();
  }
  return ours;
}

const bar = stats((s, r) => row(hfBf16, s, r));
const lines = [`| run | median rel err | max rel err | top-1 agreement | pass |`, `|---|---|---|---|---|`];
lines.push(`| HF transformers bf16 (bar) | ${(bar.median * 100).toFixed(3)}% | ${(bar.max * 100).toFixed(3)}% | ${bar.top1.toFixed(1)}% | |`);
let ok = true;
const perSeq = (get: (s: number, r: number) => ArrayLike<number>): string =>
  Array.from({ length: numSeqs }, (_, s) => {
    const e = Array.from({ length: meta.rows }, (_, r) => relErr(get(s, r), row(ref, s, r))).sort((a, b) => a - b);
    return `${(e[Math.floor(e.length / 2)] * 100).toFixed(2)}/${(e[e.length - 1] * 100).toFixed(2)}`;
  }).join(' ');
const seqLines = [`per sequence (median/max %): HF bf16 ${perSeq((s, r) => row(hfBf16, s, r))}`];
// DSG_CHECK_CPU=1 adds the CPU backend (f32) as a control: it shows whether HF and our engine agree on the model.
const runs: [number, boolean, 'cuda' | 'cpu'][] = [[1, true, 'cuda'], [16, true, 'cuda'], [16, false, 'cuda']];
if (process.env.DSG_CHECK_CPU === '1') runs.push([16, true, 'cpu']);
for (const [pageSize, chunked, backend] of runs) {
  const ours = runOurs(pageSize, chunked, backend);
  const st = stats((s, r) => row(ours, s, r));
  const pass = st.median <= 1.25 * bar.median && st.max <= 1.25 * bar.max && st.top1 >= bar.top1 - 1;
  ok &&= pass;
  const label = `ours (${backend}), page size ${pageSize}${chunked ? ', seq 0 prefilled in 2 chunks' : ', no chunking'}`;
  seqLines.push(`per sequence (median/max %): ${label}: ${perSeq((s, r) => row(ours, s, r))}`);
  lines.push(`| ${label} | ${(st.median * 100).toFixed(3)}% | ${(st.max * 100).toFixed(3)}% | ${st.top1.toFixed(1)}% | ${pass ? 'yes' : 'NO'} |`);
}
console.log(`Qwen3-0.6B shape, random bf16 weights, ${numSeqs} seqs (prompts ${meta.prompts.map((p) => p.length).join('/')}) x ${meta.rows} rows vs HF float32`);
console.log(lines.join('\n'));
console.log(seqLines.join('\n'));
process.exitCode = ok ? 0 : 1;
