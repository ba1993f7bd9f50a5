// Host overhead per step through the whole actor path (supervisor ⇄ scheduler thread ⇄ rank thread), with a fake
// rank whose step busy-waits 1.6 ms (the GPU engine's batch-1 decode step): wall time per decode step as the
// consumer of a stream sees it, minus the engine's own time per step (measured inside the rank). Batch 1 is the
// inter-token-latency case; batch 64 adds the per-sequence work (packing, outputs, 64 streams on the main thread).
// Result-to-next-step is the rank's own wait between the end of one engine step and the start of the next (timed in
// the rank thread). A round in which the fake engine's busy-wait itself took over 15% longer had the rank starved of
// its core by other work: it is printed and marked, and left out of the best figures.
// Run: npx tsx bench/actors/overhead.ts [rounds]
import { Supervisor } from '../../src/supervisor.js';
import type { FakeEngineInit } from '../../test/fixtures/fake-engine-module.js';
import { decodeRound, STEP_MS } from '../../test/helpers/decode-round.js';

const VOCAB = 500;
const fakeModule = new URL('../../test/fixtures/fake-engine-module.ts', import.meta.url).href;
const rounds = Number(process.argv[2] ?? 8);
const clean = (engineMs: number) => engineMs < STEP_MS * 1.15 + 0.25;

for (const [batch, tokens] of [[1, 100], [64, 60]] as const) {
  const init: FakeEngineInit = { numPages: 4096, pageSize: 16, vocabSize: VOCAB, stepDelayMs: STEP_MS };
  const sup = await Supervisor.start({ modelPath: 'fake', engineFactory: { module: fakeModule, init }, maxRunningRequests: 64 });
  try {
    await decodeRound(sup, VOCAB, batch, 8, 1000); // warm-up
    const kept: { overheadMs: number; submitGapUs: number }[] = [];
    for (let r = 0; r < rounds; r++) {
      const x = await decodeRound(sup, VOCAB, batch, tokens, 100 * (r + 1));
      const ok = clean(x.engineMs);
      if (ok) kept.push(x);
      console.log(
        `batch ${batch}: wall/step ${x.wallMs.toFixed(3)} ms, engine ${x.engineMs.toFixed(3)} ms, host overhead ${x.overheadMs.toFixed(3)} ms ` +
          `(${((100 * x.overheadMs) / x.engineMs).toFixed(1)}%), result-to-next-step ${x.submitGapUs.toFixed(0)} us, ` +
          `${(100 * x.queuedShare).toFixed(0)}% of steps queued behind the previous one${ok ? '' : ' (rank starved: not counted)'}`,
      );
    }
    if (kept.length) {
      console.log(`batch ${batch}: best host overhead ${Math.min(...kept.map((k) => k.overheadMs)).toFixed(3)} ms per step, ` +
        `best result-to-next-step ${Math.min(...kept.map((k) => k.submitGapUs)).toFixed(0)} us (${kept.length} clean rounds)`);
    } else console.log(`batch ${batch}: every round had the rank starved of CPU: no figure`);
  } finally {
    await sup.stop();
  }
}
