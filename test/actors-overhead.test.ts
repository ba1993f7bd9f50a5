// Overlap through the whole actor path (supervisor ⇄ scheduler thread ⇄ rank thread), with a fake rank whose step
// busy-waits 1.6 ms: at batch 1 (nearly) every decode step reaches the rank while the one before it runs, so the
// rank never waits for the host between steps. Structural, whatever the load on the machine; the time figures
// (host overhead per step, the rank's wait between steps) are measured by bench/actors/overhead.ts, not asserted here.
import t from 'tap';
import { Supervisor } from '../src/supervisor.js';
import type { FakeEngineInit } from './fixtures/fake-engine-module.js';
import { decodeRound, STEP_MS } from './helpers/decode-round.js';

const VOCAB = 500;
const fakeModule = new URL('./fixtures/fake-engine-module.ts', import.meta.url).href;

t.test('batch 1: each decode step is queued on the rank behind the previous one', async (t) => {
  const init: FakeEngineInit = { numPages: 4096, pageSize: 16, vocabSize: VOCAB, stepDelayMs: STEP_MS };
  const sup = await Supervisor.start({ modelPath: 'fake', engineFactory: { module: fakeModule, init }, maxRunningRequests: 64 });
  t.teardown(() => sup.stop());
  await decodeRound(sup, VOCAB, 1, 8, 1000); // warm-up
  let queuedShare = 0;
  for (let r = 0; r < 3 && queuedShare < 0.9; r++) queuedShare = Math.max(queuedShare, (await decodeRound(sup, VOCAB, 1, 100, 100 * (r + 1))).queuedShare);
  t.ok(queuedShare >= 0.9, `${(100 * queuedShare).toFixed(0)}% of the decode steps were queued on the rank behind the previous one`);
});

t.test('batch 64: every stream completes through the overlapped path', async (t) => {
  const init: FakeEngineInit = { numPages: 4096, pageSize: 16, vocabSize: VOCAB, stepDelayMs: STEP_MS };
  const sup = await Supervisor.start({ modelPath: 'fake', engineFactory: { module: fakeModule, init }, maxRunningRequests: 64 });
  t.teardown(() => sup.stop());
  const x = await decodeRound(sup, VOCAB, 64, 30, 7);
  t.ok(Number.isFinite(x.wallMs) && x.wallMs > 0, 'the first stream saw its decode steps');
  t.ok(x.queuedShare > 0, 'steps were queued behind running ones');
});
