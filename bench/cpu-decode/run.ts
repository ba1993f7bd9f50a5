// Batch-1 greedy decode speed of our CPU engine against llama.cpp (node-llama-cpp, CPU) on the same weights and
// thread count, rounds alternating in one command so both see the same machine load. Models: stories260K (GGUF
// F32) and the Qwen3-0.6B shape (random weights, GGUF F16 for both engines; our engine also on the bf16
// safetensors of the same checkpoint).
// Setup: npm ci; cd bench/reference && npm i -E node-llama-cpp@3.21.1
// Run:   npx tsx bench/cpu-decode/run.ts [--qwen-dir DIR] [--threads 1,2] [--rounds 3] [--new 32]
//        (--qwen-dir: a make-model qwen3-0.6b directory written with --gguf; made in a temp dir when absent)

import { execFileSync } from 'node:child_process';
import { packFor } from '../../src/engine/step.js';
import { existsSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { openEngine } from '../../src/engine/engine.js';
import { makeModel } from '../../src/engine/make-model.js';
import { loadModelSpec } from '../../src/engine/model.js';
import type { SamplingParams } from '../../src/engine/types.js';

const { values: a } = parseArgs({
  options: {
    'qwen-dir': { type: 'string' },
    threads: { type: 'string', default: '1,2' },
    rounds: { type: 'string', default: '3' },
    new: { type: 'string', default: '32' },
  },
});
const root = new URL('../..', import.meta.url).pathname;
const threadCounts = (a.threads as string).split(',').map(Number);
const rounds = Number(a.rounds);
const newTokens = Number(a.new);
const PROMPT = 16;

let qwenDir = a['qwen-dir'] as string | undefined;
if (!qwenDir) {
  qwenDir = join(mkdtempSync(join(tmpdir(), 'cpu-decode-')), 'qwen3-0.6b');
  makeModel({ shape: 'qwen3-0.6b', seed: 1, outDir: qwenDir, gguf: true });
}
const stories = join(root, 'models', 'stories260K.gguf');
const qwenGguf = join(qwenDir, 'model-f16.gguf');
if (!existsSync(qwenGguf)) throw new Error(`${qwenGguf} missing: write the checkpoint with make-model --gguf`);

const greedy: SamplingParams = { temperature: 0, topP: 1, topK: 0, minP: 0, seed: null, logprobs: -1 };

interface Speed {
  tokS: number;
  msPerToken: number;
  cpuMsPerToken: number;
}

async function ours(path: string, threads: number, n: number): Promise<Speed> {
  const spec = await loadModelSpec(path);
  const pageSize = 16;
  const engine = openEngine(spec, { backend: 'cpu', deviceId: 0, pageSize, numPages: 64, memFractionStatic: 0.5, maxBatchTokens: 64, maxSeqsPerStep: 1, threads });
  try {
    const pages = Array.from({ length: 64 }, (_, i) => i);
    const prompt = Array.from({ length: PROMPT }, (_, i) => 100 + i);
    let r = engine.step(packFor(engine, [{ tokenIds: prompt, startPos: 0, pages: [0], sample: true, sampling: greedy, outputIndex: 0 }]));
    let pos = PROMPT;
    let last = r.tokens[0];
    const t0 = performance.now();
    const c0 = process.cpuUsage();
    for (let i = 1; i <= n; i++) {
      r = engine.step(packFor(engine, [{ tokenIds: [last], startPos: pos, pages: pages.slice(0, Math.ceil((pos + 1) / pageSize)), sample: true, sampling: greedy, outputIndex: i }]));
      last = r.tokens[0];
      pos++;
    }
    const ms = performance.now() - t0;
    const c = process.cpuUsage(c0);
    return { tokS: (n / ms) * 1000, msPerToken: ms / n, cpuMsPerToken: (c.user + c.system) / 1000 / n };
  } finally {
    engine.close();
  }
}

function llamaCpp(path: string, threads: number, n: number): Speed {
  const out = execFileSync(process.execPath, [join(root, 'bench/reference/llamacpp-decode.mjs'), path, String(threads), String(n), String(PROMPT)], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'ignore'],
    timeout: 600_000,
  });
  return JSON.parse(out.trim().split('\n').pop() as string) as Speed;
}

const cases: { model: string; oursPath: string; peerPath: string; n: number }[] = [
  { model: 'stories260K (F32)', oursPath: stories, peerPath: stories, n: 256 },
  { model: 'Qwen3-0.6B shape (F16 GGUF)', oursPath: qwenGguf, peerPath: qwenGguf, n: newTokens },
  { model: 'Qwen3-0.6B shape (ours: bf16 safetensors; llama.cpp: F16 GGUF)', oursPath: qwenDir, peerPath: qwenGguf, n: newTokens },
];
const median = (xs: number[]): number => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)];
console.log('| model | threads | ours tok/s (median of rounds) | llama.cpp tok/s | ratio | ours / llama.cpp CPU ms per token |');
console.log('|---|---|---|---|---|---|');
for (const c of cases) {
  for (const threads of threadCounts) {
    const mine: Speed[] = [];
    const peer: Speed[] = [];
    for (let i = 0; i < rounds; i++) {
      mine.push(await ours(c.oursPath, threads, c.n));
      peer.push(llamaCpp(c.peerPath, threads, c.n));
    }
    const m = median(mine.map((s) => s.tokS));
    const p = median(peer.map((s) => s.tokS));
    const mc = median(mine.map((s) => s.cpuMsPerToken));
    const pc = median(peer.map((s) => s.cpuMsPerToken));
    console.log(`| ${c.model} | ${threads} | ${m.toFixed(1)} | ${p.toFixed(1)} | ${(m / p).toFixed(2)}x | ${mc.toFixed(3)} / ${pc.toFixed(3)} |`);
  }
}
