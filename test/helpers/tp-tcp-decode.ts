// The fixed greedy run the cross-process TP tests compare (tp-tcp.test.ts): a prefill of two sequences, then decode
// steps of both, each step packed once as the scheduler does. Every rank of a group runs the same steps; the
// tokens come from the gathered logits, so every rank follows the same path.
import { packStep } from '../../src/engine/step.js';
import type { Engine, SamplingParams, SeqStep } from '../../src/engine/types.js';

export interface DecodeRun {
  tokens: number[][]; // per sequence
  logits: Float32Array[]; // per step
}

const greedy: SamplingParams = { temperature: 0, topP: 1, topK: 0, minP: 0, seed: 7, logprobs: 0 };
const PROMPTS = [[5, 17, 3, 42, 8, 1, 77, 23, 11], [9, 60, 2, 31, 4, 88]];
const DECODE_STEPS = 10;

export function decodeRun(engine: Engine, pageSize: number): DecodeRun {
  const pagesOf = (first: number, tokens: number): number[] => Array.from({ length: Math.ceil(tokens / pageSize) }, (_, i) => first + i);
  const run: DecodeRun = { tokens: [[], []], logits: [] };
  const step = (seqs: SeqStep[]): number[] => {
    const r = engine.step(packStep(seqs, pageSize, { returnLogits: true }));
    run.logits.push(r.logits as Float32Array);
    return Array.from(r.tokens);
  };
  const first = step(PROMPTS.map((p, s) => ({ tokenIds: p, startPos: 0, pages: pagesOf(s * 16, p.length), sample: true, sampling: greedy, outputIndex: 0 })));
  first.forEach((tok, s) => run.tokens[s].push(tok));
  const lens = PROMPTS.map((p) => p.length);
  for (let i = 0; i < DECODE_STEPS; i++) {
    const next = step([0, 1].map((s) => ({
      tokenIds: [run.tokens[s][run.tokens[s].length - 1]], startPos: lens[s], pages: pagesOf(s * 16, lens[s] + 1), sample: true,
      sampling: greedy, outputIndex: run.tokens[s].length,
    })));
    next.forEach((tok, s) => {
      run.tokens[s].push(tok);
      lens[s] += 1;
    });
  }
  return run;
}
