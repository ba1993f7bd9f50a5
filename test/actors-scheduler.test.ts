// The scheduler actor (its own worker_thread, owning the rank): faults in the scheduler thread, abort at every
// stage with the allocator's integrity checked, and the metrics actor's snapshot.
import t, { type Test } from 'tap';
import { Supervisor, type SupervisorConfig } from '../src/supervisor.js';
import type { PreprocessedRequest } from '../src/protocol/request.js';
import type { FakeEngineInit } from './fixtures/fake-engine-module.js';
import { referenceOutput } from './fixtures/fake-engine.js';
import type { SchedulerHookInit } from './fixtures/scheduler-hook.js';
import { collect } from './helpers/streams.js';

const VOCAB = 500;
const fakeModule = new URL('./fixtures/fake-engine-module.ts', import.meta.url).href;
const hookModule = new URL('./fixtures/scheduler-hook.ts', import.meta.url).href;

async function start(t: Test, fake: Partial<FakeEngineInit> = {}, extra: Partial<SupervisorConfig> = {}): Promise<Supervisor> {
  const init: FakeEngineInit = { numPages: 128, pageSize: 4, vocabSize: VOCAB, ...fake };
  const sup = await Supervisor.start({
    modelPath: 'fake', engineFactory: { module: fakeModule, init }, maxRunningRequests: 32, chunkedPrefillSize: 16, ...extra,
  });
  t.teardown(() => sup.stop());
  return sup;
}

const request = (tokenIds: number[], maxTokens: number): PreprocessedRequest => ({
  token_ids: tokenIds, stop_conditions: { max_tokens: maxTokens }, sampling_options: { temperature: 0 }, eos_token_ids: [],
});


const prompt = (seed: number, len: number) => Array.from({ length: len }, (_, i) => (seed * 31 + i * 7) % VOCAB);

for (const [fault, code, message] of [
  ['throwAtStep', 'LLM_ERR_ACTOR_CRASHED', /the scheduler crashed: fake scheduler fault/],
  ['exitAtStep', 'LLM_ERR_ACTOR_CRASHED', /the scheduler exited unexpectedly with code 5/],
  ['hangAtStep', 'LLM_ERR_ACTOR_HUNG', /the scheduler thread did not respond for \d+ ms \(limit 400 ms\)/],
] as const) {
  t.test(`a scheduler fault (${fault}) fails every in-flight stream with ${code}, then the core restarts`, async (t) => {
    const hook: SchedulerHookInit = { [fault]: 6 };
    const sup = await start(t, { stepDelayMs: 2 }, { schedulerHook: { module: hookModule, init: hook }, schedulerTimeoutMs: 400 });
    const t0 = Date.now();
    const streams = Array.from({ length: 6 }, (_, i) => collect(sup.generate(request(prompt(i, 12), 40))));
    const settled = await Promise.allSettled(streams);
    t.ok(Date.now() - t0 < 5000, `failed within ${Date.now() - t0} ms`);
    for (const s of settled) {
      t.equal(s.status, 'rejected');
      if (s.status === 'rejected') t.match(s.reason, { code, message });
    }
    // The restarted scheduler's own fault step comes after this one-step request.
    const after = await collect(sup.generate(request(prompt(9, 3), 1)));
    t.same(after.flatMap((c) => c.token_ids), referenceOutput(prompt(9, 3), { maxTokens: 1, vocabSize: VOCAB }));
    await sup.scheduler.checkIntegrity();
  });
}

t.test('abort frees pages at once: queued, before the first token, mid-stream', async (t) => {
  const sup = await start(t, { stepDelayMs: 3 }, { maxRunningRequests: 1, disableRadixCache: true });
  const running = new AbortController();
  const first = sup.generate(request(prompt(1, 10), 400), { signal: running.signal })[Symbol.asyncIterator]();
  t.ok((await first.next()).value.token_ids.length, 'the first request runs');
  // Two more wait in the queue (one slot); cancel one while queued.
  const queued = new AbortController();
  const queuedStream = collect(sup.generate(request(prompt(2, 40), 5), { signal: queued.signal }));
  const third = new AbortController();
  const thirdStream = collect(sup.generate(request(prompt(3, 40), 5), { signal: third.signal }));
  await new Promise((r) => setTimeout(r, 20));
  t.same(sup.load().queuedRequests, 2, 'both wait');
  queued.abort();
  t.same((await queuedStream).map((c) => [c.token_ids, c.finish_reason]), [[[], 'cancelled']]);
  await sup.scheduler.checkIntegrity();
  t.equal(sup.load().queuedRequests, 1);
  // The third is admitted when the first ends mid-stream; cancel it in its prefill (40 tokens in chunks of 16).
  running.abort();
  for (let r = await first.next(); !r.done; r = await first.next()) if (r.value.finish_reason) t.equal(r.value.finish_reason, 'cancelled');
  third.abort();
  const thirdChunks = await thirdStream;
  t.equal(thirdChunks.at(-1)!.finish_reason, 'cancelled');
  t.same(thirdChunks.flatMap((c) => c.token_ids), [], 'cancelled before its first token');
  await sup.scheduler.checkIntegrity();
  t.same(sup.load(), { kvTotalPages: 128, kvUsedPages: 0, kvEvictablePages: 0, runningRequests: 0, queuedRequests: 0 }, 'every page is free');
});

t.test('the metrics actor counts steps, tokens and requests', async (t) => {
  const sup = await start(t, { stepDelayMs: 0.5 });
  for (let i = 0; i < 3; i++) await collect(sup.generate(request(prompt(10 + i, 10), 5)));
  const ac = new AbortController();
  ac.abort();
  await collect(sup.generate(request(prompt(20, 10), 5), { signal: ac.signal }));
  const m = sup.metrics.snapshot();
  // Each request: one 10-token prefill step that samples its first token, then 4 decode steps.
  t.equal(m.steps, 15);
  t.equal(m.prefillTokens, 30);
  t.equal(m.decodeTokens, 12);
  t.equal(m.cacheHitTokens, 0);
  t.equal(m.maxBatchSize, 1);
  t.ok(m.engineBusyMs >= 15 * 0.5, `engine busy ${m.engineBusyMs} ms`);
  t.ok(m.stepMs >= m.engineBusyMs, 'a step lasts at least its engine time');
  t.same({ ...m.requests, firstTokenMs: 0, totalMs: 0 }, { finished: 3, cancelled: 1, failed: 0, promptTokens: 40, completionTokens: 15, cachedTokens: 0, firstTokenMs: 0, totalMs: 0 });
  t.ok(m.requests.firstTokenMs > 0 && m.requests.totalMs > m.requests.firstTokenMs);
  // The repeat of a prompt is served from the cache: 8 of its 10 tokens (2 full pages of 4).
  await collect(sup.generate(request(prompt(10, 10), 5)));
  t.equal(sup.metrics.snapshot().cacheHitTokens, 8);
  t.equal(sup.load().runningRequests, 0);
});
