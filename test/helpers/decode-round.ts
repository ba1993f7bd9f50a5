// One round of concurrent decoding through a Supervisor over the fake engine, with per-step figures from the first
// stream: shared by the overlap test (test/actors-overhead.test.ts) and the overhead benchmark (bench/actors).
import type { Supervisor } from '../../src/supervisor.js';
import type { PreprocessedRequest } from '../../src/protocol/request.js';

/** The fake engine's busy-wait per step (the GPU engine's batch-1 decode step). */
export const STEP_MS = 1.6;

export interface DecodeRound {
  wallMs: number;
  engineMs: number;
  overheadMs: number;
  submitGapUs: number;
  /** Share of the steps submitted before the previous one had answered. */
  queuedShare: number;
}

const request = (vocab: number, seed: number, maxTokens: number): PreprocessedRequest => ({
  token_ids: Array.from({ length: 16 }, (_, i) => (seed * 31 + i * 7) % vocab),
  stop_conditions: { max_tokens: maxTokens }, sampling_options: { temperature: 0 }, eos_token_ids: [],
});

/** `batch` requests of `tokens` tokens at once; per-step figures over the decode steps of the first stream (its
 * chunk k arrives with step k's sample in the metrics, so both windows cover the same steps). */
export async function decodeRound(sup: Supervisor, vocab: number, batch: number, tokens: number, seed: number): Promise<DecodeRound> {
  const skip = 3; // the prefill step and the first decode steps
  const stamps: number[] = [];
  let m0 = sup.metrics.snapshot();
  let m1 = m0;
  await Promise.all(
    Array.from({ length: batch }, async (_, b) => {
      for await (const c of sup.generate(request(vocab, seed + b, tokens))) {
        if (b !== 0 || !c.token_ids.length) continue;
        stamps.push(performance.now());
        if (stamps.length === skip + 1) m0 = sup.metrics.snapshot();
        if (c.finish_reason) m1 = sup.metrics.snapshot();
      }
    }),
  );
  const wallMs = (stamps[stamps.length - 1] - stamps[skip]) / (stamps.length - 1 - skip);
  const engineMs = (m1.engineBusyMs - m0.engineBusyMs) / (m1.steps - m0.steps);
  const submitGapUs = (1000 * (m1.submitGapMs - m0.submitGapMs)) / Math.max(1, m1.gappedSteps - m0.gappedSteps);
  const queuedShare = (m1.queuedSteps - m0.queuedSteps) / (m1.steps - m0.steps);
  return { wallMs, engineMs, overheadMs: wallMs - engineMs, submitGapUs, queuedShare };
}
