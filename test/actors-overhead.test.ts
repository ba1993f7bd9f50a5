// Host overhead per step through the whole actor path (supervisor ⇄ scheduler thread ⇄ rank thread), with a fake
// rank whose step busy-waits 1.6 ms (the GPU engine's batch-1 decode step): wall time per decode step as the
// consumer of a stream sees it, minus the engine's own time per step (measured inside the rank). Batch 1 is the
// inter-token-latency case; batch 64 adds the per-sequence work (packing, outputs, 64 streams on the main thread).
// The check takes the best of 5 rounds (other load on the machine only adds to a round). On the 2-core box, quiet,
// batch 1 measures 0.18-0.25 ms over the engine and 30-50 us from a result to the next step; with other jobs on
// the box the best round still reached 0.5 ms. The bounds leave that room and still catch a timer or a blocking
// stream on the step path (1 ms or more per step). Every round's figures are printed as comments.
import t from 'tap';
import { Supervisor } from '../src/supervisor.js';
import type { PreprocessedRequest } from '../src/protocol/request.js';
import type { FakeEngineInit } from './fixtures/fake-engine-module.js';

const VOCAB = 500;
const STEP_MS = 1.6;
const fakeModule = new URL('./fixtures/fake-engine-module.ts', import.meta.url).href;

const request = (seed: number, maxTokens: number): PreprocessedRequest => ({
  token_ids: Array.from({ length: 16 }, (_, i) => (seed * 31 + i * 7) % VOCAB),
  stop_conditions: { max_tokens: maxTokens }, sampling_options: { temperature: 0 }, eos_token_ids: [],
});

interface Round {
  wallMs: number;
  engineMs: number;
  overheadMs: number;
  submitGapUs: number;
}

/** `batch` requests of `tokens` tokens at once; per-step figures over the decode steps of the first stream. */
async function round(sup: Supervisor, batch: number, tokens: number, seed: number): Promise<Round> {
  const m0 = sup.metrics.snapshot();
  const stamps: number[][] = Array.from({ length: batch }, () => []);
  await Promise.all(
    stamps.map(async (st, b) => {
      for await (const c of sup.generate(request(seed + b, tokens))) if (c.token_ids.length) st.push(performance.now());
    }),
  );
  const m1 = sup.metrics.snapshot();
  const st = stamps[0];
  const skip = 3; // the prefill step and the first decode steps
  const wallMs = (st[st.length - 1] - st[skip]) / (st.length - 1 - skip);
  const engineMs = (m1.engineBusyMs - m0.engineBusyMs) / (m1.steps - m0.steps);
  const submitGapUs = (1000 * (m1.submitGapMs - m0.submitGapMs)) / Math.max(1, m1.gappedSteps - m0.gappedSteps);
  return { wallMs, engineMs, overheadMs: wallMs - engineMs, submitGapUs };
}


for (const [batch, tokens, boundMs, gapBoundUs] of [
  [1, 100, 0.6, 250],
  [64, 60, 2, 1000],
] as const) {
  t.test(`batch ${batch}: host overhead per step < ${boundMs} ms, result to next step < ${gapBoundUs} us`, async (t) => {
    const init: FakeEngineInit = { numPages: 4096, pageSize: 16, vocabSize: VOCAB, stepDelayMs: STEP_MS };
    const sup = await Supervisor.start({ modelPath: 'fake', engineFactory: { module: fakeModule, init }, maxRunningRequests: 64 });
    t.teardown(() => sup.stop());
    await round(sup, batch, 8, 1000); // warm-up
    const rounds: Round[] = [];
    for (let r = 0; r < 5; r++) rounds.push(await round(sup, batch, tokens, 100 * (r + 1)));
    for (const r of rounds) {
      t.comment(`batch ${batch}: wall/step ${r.wallMs.toFixed(3)} ms, engine ${r.engineMs.toFixed(3)} ms, host overhead ${r.overheadMs.toFixed(3)} ms ` +
        `(${((100 * r.overheadMs) / r.engineMs).toFixed(1)}%), result-to-next-step ${r.submitGapUs.toFixed(0)} us`);
    }
    const best = Math.min(...rounds.map((r) => r.overheadMs));
    t.ok(best < boundMs, `best round's host overhead ${best.toFixed(3)} ms per step`);
    const bestGap = Math.min(...rounds.map((r) => r.submitGapUs));
    t.ok(bestGap < gapBoundUs, `best round's result-to-next-step ${bestGap.toFixed(0)} us`);
  });
}
