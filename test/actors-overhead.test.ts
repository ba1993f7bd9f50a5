// Host overhead per step through the whole actor path (supervisor ⇄ scheduler thread ⇄ rank thread), with a fake
// rank whose step busy-waits 1.6 ms (the GPU engine's batch-1 decode step): wall time per decode step as the
// consumer of a stream sees it, minus the engine's own time per step (measured inside the rank). Batch 1 is the
// inter-token-latency case; batch 64 adds the per-sequence work (packing, outputs, 64 streams on the main thread).
// The check takes the best round (other load on the machine only adds to a round; it runs up to 12 rounds while
// none is within the bounds), and only rounds in which the
// rank got its core: when the fake engine's 1.6 ms busy-wait itself took over 15% longer, the machine was
// oversubscribed and the wall times say nothing about our overhead (the test runs more rounds, and reports rather
// than fails if none is clean). Result-to-next-step is the rank's own wait between the end of one engine step and
// the start of the next (timed in the rank thread). On the 2-core box, with other jobs on it, batch 1 measured
// 0.31-0.38 ms over the engine and a 310-384 us rank wait when each step went to the rank only after the previous
// result had crossed to the scheduler; with overlap's token feedback (the next step is already queued on the rank,
// its decode inputs resolved there) 0.03-0.07 ms and 25-73 us; run side by side under a load of about 4, 0.43-0.87
// ms and 433-866 us before, 0.08-0.24 ms and 77-234 us after. Under heavier load a whole run can land with the
// scheduler's thread sharing the rank's core, and its wake-up after each result costs the rank ~300 us whatever the
// step order. So the timing bounds leave room for a loaded box and still catch a timer or a blocking stream on the
// step path (1 ms or more per step), and the check that overlap works is structural: at batch 1 (nearly) every
// decode step reaches the rank while the one before it runs. Every round's figures are printed as comments.
import t from 'tap';
import { Supervisor } from '../src/supervisor.js';
import type { PreprocessedRequest } from '../src/protocol/request.js';
import type { FakeEngineInit } from './fixtures/fake-engine-module.js';

const VOCAB = 500;
const STEP_MS = 1.6;
const fakeModule = new URL('./fixtures/fake-engine-module.ts', import.meta.url).href;

/** The rank had its core: the engine's own time per step stayed near the busy-wait (batch 64 adds the fake
 * engine's per-sequence work, about 0.2 ms). */
const clean = (r: Round) => r.engineMs < STEP_MS * 1.15 + 0.25;

const request = (seed: number, maxTokens: number): PreprocessedRequest => ({
  token_ids: Array.from({ length: 16 }, (_, i) => (seed * 31 + i * 7) % VOCAB),
  stop_conditions: { max_tokens: maxTokens }, sampling_options: { temperature: 0 }, eos_token_ids: [],
});

interface Round {
  wallMs: number;
  engineMs: number;
  overheadMs: number;
  submitGapUs: number;
  /** Share of the steps submitted before the previous one had answered. */
  queuedShare: number;
}

/** `batch` requests of `tokens` tokens at once; per-step figures over the decode steps of the first stream (its
 * chunk k arrives with step k's sample in the metrics, so both windows cover the same steps). */
async function round(sup: Supervisor, batch: number, tokens: number, seed: number): Promise<Round> {
  const skip = 3; // the prefill step and the first decode steps
  const stamps: number[] = [];
  let m0 = sup.metrics.snapshot();
  let m1 = m0;
  await Promise.all(
    Array.from({ length: batch }, async (_, b) => {
      for await (const c of sup.generate(request(seed + b, tokens))) {
        if (b !== 0 || !c.token_ids.length) continue;
        stamps.push(performance.now());
        if (stamps.length === skip + 1) m0 = sup.metrics.snapshot();
        if (c.finish_reason) m1 = sup.metrics.snapshot();
      }
    }),
  );
  const st = stamps;
  const wallMs = (st[st.length - 1] - st[skip]) / (st.length - 1 - skip);
  const engineMs = (m1.engineBusyMs - m0.engineBusyMs) / (m1.steps - m0.steps);
  const submitGapUs = (1000 * (m1.submitGapMs - m0.submitGapMs)) / Math.max(1, m1.gappedSteps - m0.gappedSteps);
  const queuedShare = (m1.queuedSteps - m0.queuedSteps) / (m1.steps - m0.steps);
  return { wallMs, engineMs, overheadMs: wallMs - engineMs, submitGapUs, queuedShare };
}


for (const [batch, tokens, boundMs, gapBoundUs] of [
  [1, 100, 0.8, 1000],
  [64, 60, 2, 1000],
] as const) {
  t.test(`batch ${batch}: host overhead per step < ${boundMs} ms, result to next step < ${gapBoundUs} us`, async (t) => {
    const init: FakeEngineInit = { numPages: 4096, pageSize: 16, vocabSize: VOCAB, stepDelayMs: STEP_MS };
    const sup = await Supervisor.start({ modelPath: 'fake', engineFactory: { module: fakeModule, init }, maxRunningRequests: 64 });
    t.teardown(() => sup.stop());
    await round(sup, batch, 8, 1000); // warm-up
    const rounds: Round[] = [];
    let queuedShare = 0;
    // At least 5 rounds; then more (up to 12) while no clean round is within both bounds: under a burst of other
    // work a clean round can still see the scheduler's thread preempted, while a real regression fails every round.
    const within = (x: Round) => x.overheadMs < boundMs && x.submitGapUs < gapBoundUs;
    for (let r = 0; r < 12 && (r < 5 || !rounds.some(within)); r++) {
      const x = await round(sup, batch, tokens, 100 * (r + 1));
      t.comment(`batch ${batch}: wall/step ${x.wallMs.toFixed(3)} ms, engine ${x.engineMs.toFixed(3)} ms, host overhead ${x.overheadMs.toFixed(3)} ms ` +
        `(${((100 * x.overheadMs) / x.engineMs).toFixed(1)}%), result-to-next-step ${x.submitGapUs.toFixed(0)} us, ` +
        `${(100 * x.queuedShare).toFixed(0)}% of steps queued behind the previous one${clean(x) ? '' : ' (rank starved: not counted)'}`);
      if (clean(x)) rounds.push(x);
      queuedShare = Math.max(queuedShare, x.queuedShare);
    }
    // Overlap: each decode step goes to the rank while the one before it runs, whatever the load on the machine.
    if (batch === 1) t.ok(queuedShare >= 0.9, `${(100 * queuedShare).toFixed(0)}% of the decode steps were queued on the rank behind the previous one`);
    if (!rounds.length) {
      t.comment('every round had the rank starved of CPU by other work on the machine: nothing to check');
      return;
    }
    const best = Math.min(...rounds.map((r) => r.overheadMs));
    t.ok(best < boundMs, `best round's host overhead ${best.toFixed(3)} ms per step`);
    const bestGap = Math.min(...rounds.map((r) => r.submitGapUs));
    t.ok(bestGap < gapBoundUs, `best round's result-to-next-step ${bestGap.toFixed(0)} us`);
  });
}
