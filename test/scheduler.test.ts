import t, { type Test } from 'tap';
import type { RequestOutput, SchedulerOptions, SchedulerRequest } from '../src/scheduler/scheduler.js';
import { referenceOutput, fakeLogprob, type FakeEngineOptions } from './fixtures/fake-engine.js';
import { VOCAB, checkDrained as checkDrainedScheduler, runRequest, schedulerRequest, startScheduler, tokensOf, type SchedulerUnderTest } from './helpers/scheduler-harness.js';

function rng(seed: number) {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

const makeRequest = schedulerRequest;

interface Harness extends SchedulerUnderTest {
  run(req: SchedulerRequest, onOutput?: (o: RequestOutput) => void): Promise<RequestOutput[]>;
}

function harness(t: Test, engineOpts: Partial<FakeEngineOptions>, opts: Partial<SchedulerOptions> = {}): Harness {
  const h = startScheduler(t, engineOpts, opts);
  return { ...h, run: (req, onOutput) => runRequest(h.sched, req, onOutput) };
}

/** After all requests ended: no request holds a page; only the radix cache does. */
const checkDrained = (t: Test, h: Harness): void => checkDrainedScheduler(t, h.sched);

function prompts(n: number, seed: number, minLen: number, maxLen: number, sharedPrefix: number[] = []): number[][] {
  const r = rng(seed);
  return Array.from({ length: n }, () => {
    const len = minLen + Math.floor(r() * (maxLen - minLen + 1));
    return sharedPrefix.concat(Array.from({ length: len }, () => Math.floor(r() * VOCAB)));
  });
}

for (const overlap of [true, false]) {
  t.test(`64 concurrent greedy requests match their solo outputs (overlap ${overlap})`, async (t) => {
    const h = harness(t, {}, { enableOverlap: overlap });
    const shared = [7, 7, 7, 7, 8, 8, 8, 8, 9]; // a common prefix so the radix cache is exercised concurrently
    const ps = prompts(64, 42, 1, 40, shared);
    const r = rng(7);
    const maxes = ps.map(() => 1 + Math.floor(r() * 30));
    const results = await Promise.all(ps.map((p, i) => h.run(makeRequest(`r${i}`, p, { maxTokens: maxes[i] }))));
    results.forEach((outs, i) => {
      t.same(tokensOf(outs), referenceOutput(ps[i], { maxTokens: maxes[i], vocabSize: VOCAB }), `request ${i}`);
      t.ok(outs.every((o) => o.tokenIds.length === 1), 'exactly one new token per streamed output');
      const last = outs.at(-1)!;
      t.equal(last.finishReason, 'length');
      t.same(last.usage?.completionTokens, maxes[i]);
      t.same(last.usage?.promptTokens, ps[i].length);
    });
    t.ok(h.engine.maxSeqsSeen > 8, `steps batched many sequences (max ${h.engine.maxSeqsSeen})`);
    t.ok(h.sched.stats.cacheHitTokens > 0, 'shared prefix served from cache');
    // The solo run through the scheduler agrees too.
    const solo = harness(t, {}, { enableOverlap: overlap });
    t.same(tokensOf(await solo.run(makeRequest('solo', ps[5], { maxTokens: maxes[5] }))), tokensOf(results[5]));
    checkDrained(t, h);
  });
}

t.test('a repeated prompt reports cached tokens and skips their recompute', async (t) => {
  const h = harness(t, {}, { chunkedPrefillSize: 0 });
  const prompt = prompts(1, 3, 30, 30)[0];
  const first = await h.run(makeRequest('a', prompt, { maxTokens: 5 }));
  t.equal(first.at(-1)!.usage!.cachedTokens, 0);
  const before = h.engine.tokensProcessed;
  const second = await h.run(makeRequest('b', prompt, { maxTokens: 5 }));
  const processed = h.engine.tokensProcessed - before;
  // 30 prompt tokens, page size 4: 7 whole pages (28 tokens) reused, the last token must still be computed.
  t.equal(second.at(-1)!.usage!.cachedTokens, 28);
  t.equal(processed, 2 + 4, 'only 2 prompt tokens computed, then 4 decode inputs');
  t.same(tokensOf(second), tokensOf(first));
  // A prompt extending the cached one reuses the cache for output pages too.
  const longer = prompt.concat(tokensOf(first).slice(0, 4));
  const third = await h.run(makeRequest('c', longer, { maxTokens: 3 }));
  t.equal(third.at(-1)!.usage!.cachedTokens, 32);
  t.same(tokensOf(third), referenceOutput(longer, { maxTokens: 3, vocabSize: VOCAB }));
  checkDrained(t, h);
});

t.test('pages join the cache as they complete: a concurrent request reuses a prefix still being computed', async (t) => {
  const prompt = prompts(1, 31, 40, 40)[0];
  let second: Promise<RequestOutput[]> | null = null;
  const h: Harness = harness(t, {
    onStep: (n) => {
      if (n === 3) second = h.run(makeRequest('b', prompt, { maxTokens: 5 }));
    },
  }, { chunkedPrefillSize: 8, maxPrefillTokens: 8 });
  const events: number[] = [];
  h.sched.cache!.onEvent((e) => events.push(e.kind === 'stored' ? e.blocks.length : -e.blocks.length));
  const first = await h.run(makeRequest('a', prompt, { maxTokens: 5 }));
  const b = await second!;
  t.same(tokensOf(first), referenceOutput(prompt, { maxTokens: 5, vocabSize: VOCAB }));
  t.same(tokensOf(b), tokensOf(first));
  const cached = b.at(-1)!.usage!.cachedTokens;
  t.ok(cached >= 16 && cached < 40, `b reused ${cached} tokens that a had computed by then`);
  t.ok(events.length > 1 && events.every((n) => n > 0), `pages stored step by step: ${events.join(',')}`);
  checkDrained(t, h);
});

for (const [overlap, cache] of [[true, true], [false, true], [true, false], [false, false]] as const) {
  t.test(`tiny KV pool: retraction finishes every request with the right tokens (overlap ${overlap}, cache ${cache})`, async (t) => {
    const h = harness(t, { numPages: 24 }, { enableOverlap: overlap, enablePrefixCache: cache, chunkedPrefillSize: 6 });
    const ps = prompts(16, 11, 5, 30);
    const results = await Promise.all(ps.map((p, i) => h.run(makeRequest(`r${i}`, p, { maxTokens: 40 }))));
    results.forEach((outs, i) => t.same(tokensOf(outs), referenceOutput(ps[i], { maxTokens: 40, vocabSize: VOCAB }), `request ${i}`));
    t.ok(h.sched.stats.retractions > 0, `retracted ${h.sched.stats.retractions} times`);
    checkDrained(t, h);
  });
}

t.test('stop conditions: eos, ignore_eos, min_tokens, stop token ids, max_tokens', async (t) => {
  const h = harness(t, {});
  const prompt = [1, 2, 3, 4, 5];
  const free = referenceOutput(prompt, { maxTokens: 12, vocabSize: VOCAB });
  const eos = free[3];
  const stopped = await h.run(makeRequest('eos', prompt, { maxTokens: 12, eosTokenIds: [eos] }));
  t.same(tokensOf(stopped), free.slice(0, free.indexOf(eos) + 1), 'stops on eos, which stays in the output');
  t.equal(stopped.at(-1)!.finishReason, 'stop');
  const ignored = await h.run(makeRequest('ign', prompt, { maxTokens: 12, eosTokenIds: [eos], ignoreEos: true }));
  t.same(tokensOf(ignored), free);
  t.equal(ignored.at(-1)!.finishReason, 'length');
  const hidden = await h.run(makeRequest('hid', prompt, { maxTokens: 12, stopTokenIds: [free[6]] }));
  t.same(tokensOf(hidden), free.slice(0, free.indexOf(free[6]) + 1));
  const minTok = await h.run(makeRequest('min', prompt, { maxTokens: 12, stopTokenIds: [free[1]], minTokens: 5 }));
  t.same(tokensOf(minTok), referenceOutput(prompt, { maxTokens: 12, vocabSize: VOCAB, stopTokenIds: [free[1]], minTokens: 5 }));
  t.ok(tokensOf(minTok).length >= 5);
  const one = await h.run(makeRequest('one', prompt, { maxTokens: 1 }));
  t.same(tokensOf(one), free.slice(0, 1));
  t.equal(one.at(-1)!.finishReason, 'length');
  checkDrained(t, h);
});

t.test('logprobs are passed through: chosen token and top-n', async (t) => {
  const h = harness(t, {});
  const req = makeRequest('lp', [9, 8, 7], { maxTokens: 3 });
  req.sampling = { ...req.sampling, logprobs: 2 };
  const outs = await h.run(req);
  for (const o of outs) {
    const tok = o.tokenIds[0];
    t.same(o.logprobs, [Math.fround(fakeLogprob(tok))]);
    t.same(o.topLogprobs, [[{ tokenId: tok, logprob: Math.fround(fakeLogprob(tok)) }, { tokenId: (tok + 1) % VOCAB, logprob: Math.fround(fakeLogprob(tok) - 1) }]]);
  }
  const plain = await h.run(makeRequest('nolp', [9, 8, 7], { maxTokens: 1 }));
  t.equal(plain[0].logprobs, null);
  t.equal(plain[0].topLogprobs, null);
});

t.test('cancellation at every stage frees pages at once', async (t) => {
  // One running slot so the second request stays queued; small chunks so the first has a long prefill.
  let abortAt: { step: number; id: string } | null = null;
  const h: Harness = harness(
    t,
    { onStep: (n) => { if (abortAt && n === abortAt.step) h.sched.abort(abortAt.id); } },
    { maxRunningRequests: 1, chunkedPrefillSize: 4 },
  );
  const long = prompts(1, 5, 40, 40)[0];
  // queued: abort before it is ever admitted
  const running = h.run(makeRequest('run', long, { maxTokens: 6 }));
  const queuedOuts = h.run(makeRequest('queued', prompts(1, 6, 10, 10)[0]));
  h.sched.abort('queued');
  const q = await queuedOuts;
  t.same(q.map((o) => [o.tokenIds, o.finishReason]), [[[], 'cancelled']]);
  t.equal(q[0].usage!.completionTokens, 0);
  await running;
  checkDrained(t, h);

  // before the first token: aborted during its third prefill chunk (step 3 of this engine's life from now)
  abortAt = { step: h.engine.steps + 3, id: 'pre' };
  const pre = await h.run(makeRequest('pre', prompts(1, 8, 40, 40)[0], { maxTokens: 6 }));
  t.same(tokensOf(pre), []);
  t.equal(pre.at(-1)!.finishReason, 'cancelled');
  checkDrained(t, h);

  // mid-decode: aborted from its own output callback after 3 tokens
  let seen = 0;
  const mid = await h.run(makeRequest('mid', prompts(1, 9, 12, 12)[0], { maxTokens: 50 }), (o) => {
    if (++seen === 3 && !o.finishReason) h.sched.abort('mid');
  });
  t.equal(tokensOf(mid).length, 3);
  t.equal(mid.at(-1)!.finishReason, 'cancelled');
  t.equal(mid.at(-1)!.usage!.completionTokens, 3);
  checkDrained(t, h);
  h.sched.abort('mid'); // finished ids are ignored
});

t.test('an engine error surfaces to every in-flight request and fails later submits', async (t) => {
  const h = harness(t, { failAtStep: 4 });
  const ps = prompts(10, 13, 5, 20);
  const results = await Promise.all(ps.map((p, i) => h.run(makeRequest(`r${i}`, p, { maxTokens: 30 }))));
  for (const outs of results) {
    const last = outs.at(-1)!;
    t.equal(last.finishReason, 'error');
    t.same(last.error, { code: 'LLM_ERR_DEVICE', message: 'fake device fault at step 4' });
  }
  t.throws(() => h.sched.submit(makeRequest('late', [1, 2]), () => {}), { code: 'LLM_ERR_DEVICE' });
  checkDrained(t, h);
});

for (const overlap of [true, false]) {
  t.test(`a sequence that outgrows the whole pool alone ends with "length" (overlap ${overlap})`, async (t) => {
    const h = harness(t, { numPages: 8 }, { enableOverlap: overlap });
    const prompt = prompts(1, 21, 10, 10)[0];
    const outs = await h.run(makeRequest('long', prompt, { maxTokens: 100 }));
    // 8 pages x 4 tokens hold positions 0..31: the 10 prompt tokens and the inputs of 22 decode steps, 23 tokens.
    t.same(tokensOf(outs), referenceOutput(prompt, { maxTokens: 23, vocabSize: VOCAB }));
    t.equal(outs.at(-1)!.finishReason, 'length');
    checkDrained(t, h);
  });
}

t.test('requests that can never fit are refused with a clear error', async (t) => {
  const h = harness(t, { numPages: 4 });
  t.throws(() => h.sched.submit(makeRequest('big', prompts(1, 1, 20, 20)[0], { maxTokens: 10 }), () => {}), {
    code: 'LLM_ERR_CONTEXT_LENGTH',
    message: /20 prompt tokens need 5 KV pages, the pool has 4/,
  });
  t.throws(() => h.sched.submit(makeRequest('empty', []), () => {}), { code: 'LLM_ERR_BAD_REQUEST', message: /token_ids is empty/ });
});
