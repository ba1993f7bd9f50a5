// Overlap scheduling with token feedback (src/scheduler/placeholder.ts, scheduler G4): step N+1 is submitted while
// step N runs, its decode inputs that N samples being placeholders the executor resolves from N's tokens. These
// tests pin what that must not change: a request that stops or is aborted while its next step is already submitted
// streams no extra token and leaks no page; retraction and stop tokens under a tiny pool still give exact tokens;
// and on the rank a placeholder is resolved from the previous step, or fails the step with a coded error (it must
// never reach the engine).
import t, { type Test } from 'tap';
import { MessageChannel } from 'node:worker_threads';
import { RankActor, RankGroup } from '../actors/rank.js';
import { LlmError } from '../src/errors.js';
import { decodeStep, packStep } from '../src/engine/step.js';
import type { SamplingParams, SeqStep } from '../src/engine/types.js';
import { placeholderFor, resolvePlaceholders } from '../src/scheduler/placeholder.js';
import type { RequestOutput, SchedulerOptions, SchedulerRequest } from '../src/scheduler/scheduler.js';
import { nextToken, referenceOutput, type FakeEngineOptions } from './fixtures/fake-engine.js';
import { GREEDY, VOCAB, checkDrained as checkDrainedScheduler, runRequest, schedulerRequest, startScheduler, tokensOf, type SchedulerUnderTest } from './helpers/scheduler-harness.js';
import type { FakeEngineInit } from './fixtures/fake-engine-module.js';

const greedy: SamplingParams = GREEDY;

const request = schedulerRequest;

function promptOf(seed: number, len: number): number[] {
  return Array.from({ length: len }, (_, i) => (seed * 131 + i * 17 + ((seed * i) % 7)) % VOCAB);
}

interface Harness extends SchedulerUnderTest {
  /** Engine steps that started with the step after them already submitted (overlap at work). */
  submittedAhead(): number;
  run(req: SchedulerRequest, onOutput?: (o: RequestOutput) => void): Promise<RequestOutput[]>;
}

function harness(t: Test, engineOpts: Partial<FakeEngineOptions> = {}, opts: Partial<SchedulerOptions> = {}): Harness {
  let submittedAhead = 0;
  // With overlap on the scheduler has submitted the step after this one before this one runs.
  const h = startScheduler(t, engineOpts, opts, (n, sched) => {
    if (sched.stats.steps > n) submittedAhead++;
  });
  return { ...h, submittedAhead: () => submittedAhead, run: (req, onOutput) => runRequest(h.sched, req, onOutput) };
}

function checkDrained(t: Test, h: Harness) {
  t.ok(h.submittedAhead() > 0, `${h.submittedAhead()} steps were submitted while the step before them ran`);
  checkDrainedScheduler(t, h.sched);
}

t.test('placeholders resolve from the previous step, and fail with a coded error otherwise', async (t) => {
  const seq = (tokenIds: number[]): SeqStep => ({ tokenIds: Int32Array.from(tokenIds), startPos: 0, pages: [0], sample: true, sampling: greedy, outputIndex: 0 });
  const pack = (seqs: SeqStep[]) => packStep(seqs, 4, { placeholders: true });
  const tokensOfStep = (desc: Int32Array) => decodeStep(desc).seqs.map((s) => Array.from(s.tokenIds));
  const desc = pack([seq([5, 6]), seq([placeholderFor(1)]), seq([placeholderFor(0)])]);
  resolvePlaceholders(desc, Int32Array.from([40, 41]));
  t.same(tokensOfStep(desc), [[5, 6], [41], [40]], 'each placeholder took its row\'s token, in place');
  const plain = pack([seq([5, 6])]);
  resolvePlaceholders(plain, null);
  t.same(tokensOfStep(plain), [[5, 6]], 'a step without placeholders needs no previous step');
  const coded = (fn: () => unknown, re: RegExp, what: string) => {
    try {
      fn();
      t.fail(`${what}: no error`);
    } catch (e) {
      t.ok(e instanceof LlmError && e.code === 'LLM_ERR_STEP_INVALID' && re.test(e.message), `${what}: ${String(e)}`);
    }
  };
  const one = () => pack([seq([placeholderFor(1)])]);
  coded(() => resolvePlaceholders(one(), null), /row 1 of the previous step, which did not run/, 'no previous step');
  coded(() => resolvePlaceholders(one(), Int32Array.from([3])), /had 1 rows/, 'row beyond the previous step');
  coded(() => resolvePlaceholders(one(), Int32Array.from([3, -1])), /sampled no token there/, 'row that did not sample');
});

t.test('a request that stops on EOS while its next step is submitted streams no extra token and leaks no page', async (t) => {
  const h = harness(t);
  const prompt = promptOf(1, 9);
  const free = referenceOutput(prompt, { maxTokens: 20, vocabSize: VOCAB });
  const eos = free[5];
  const steps0 = h.engine.steps;
  const outs = await h.run(request('eos', prompt, { maxTokens: 20, eosTokenIds: [eos] }));
  t.same(tokensOf(outs), free.slice(0, free.indexOf(eos) + 1), 'stops on eos');
  t.ok(outs.every((o) => o.tokenIds.length === 1), 'one token per output, none after the stop');
  t.equal(outs.at(-1)!.finishReason, 'stop');
  t.equal(outs.at(-1)!.usage!.completionTokens, free.indexOf(eos) + 1);
  // Prefill chunks (at most 8 tokens each), then decodes: the step after the EOS one ran too.
  await new Promise((resolve) => setImmediate(resolve)); // the step already submitted runs
  const produced = free.indexOf(eos) + 1;
  const prefillSteps = Math.ceil(prompt.length / 8);
  t.equal(h.engine.steps - steps0, prefillSteps + produced, 'the step submitted after the EOS step ran, its output discarded');
  checkDrained(t, h);
});

t.test('max_tokens: no step is submitted past the pending token that reaches it', async (t) => {
  const h = harness(t);
  const prompt = promptOf(2, 5);
  const steps0 = h.engine.steps;
  const outs = await h.run(request('len', prompt, { maxTokens: 7 }));
  t.same(tokensOf(outs), referenceOutput(prompt, { maxTokens: 7, vocabSize: VOCAB }));
  t.equal(outs.at(-1)!.finishReason, 'length');
  await new Promise((resolve) => setImmediate(resolve));
  t.equal(h.engine.steps - steps0, 7, 'one prefill and six decode steps, nothing beyond');
  checkDrained(t, h);
});

t.test('abort from the stream while the next step is submitted: no token after it, pages freed, others exact', async (t) => {
  const h = harness(t);
  const pa = promptOf(3, 12);
  const pb = promptOf(4, 7);
  let streamed = 0;
  const runA = h.run(request('a', pa, { maxTokens: 30 }), (o) => {
    if (o.tokenIds.length && !o.finishReason && ++streamed === 4) h.sched.abort('a');
  });
  const runB = h.run(request('b', pb, { maxTokens: 25 }));
  const [outsA, outsB] = await Promise.all([runA, runB]);
  const refA = referenceOutput(pa, { maxTokens: 30, vocabSize: VOCAB });
  t.same(tokensOf(outsA), refA.slice(0, 4), 'a streamed up to the abort, then only its final (empty) output');
  t.same(outsA.at(-1)!.tokenIds, []);
  t.equal(outsA.at(-1)!.finishReason, 'cancelled');
  t.same(tokensOf(outsB), referenceOutput(pb, { maxTokens: 25, vocabSize: VOCAB }), 'b, which reuses a\'s freed pages, is exact');
  checkDrained(t, h);
});

for (const cache of [true, false]) {
  t.test(`tiny pool: retraction with stop tokens and min_tokens gives exact tokens (cache ${cache})`, async (t) => {
    const h = harness(t, { numPages: 20 }, { enablePrefixCache: cache, chunkedPrefillSize: 6 });
    const ps = Array.from({ length: 16 }, (_, i) => promptOf(10 + i, 5 + ((i * 7) % 24)));
    const reqs = ps.map((p, i) => {
      const free = referenceOutput(p, { maxTokens: 40, vocabSize: VOCAB });
      // a stop id that occurs early in the free output: min_tokens (odd requests) must carry past it
      return request(`r${i}`, p, { maxTokens: 40, stopTokenIds: [free[3 + (i % 5)]], minTokens: i % 2 ? 12 : 0 });
    });
    const results = await Promise.all(reqs.map((r) => h.run(r)));
    results.forEach((outs, i) => {
      const r = reqs[i];
      t.same(tokensOf(outs), referenceOutput(ps[i], { maxTokens: 40, vocabSize: VOCAB, stopTokenIds: r.stopTokenIds, minTokens: r.minTokens }), `request ${i}`);
      t.ok(outs.every((o) => o.tokenIds.length <= 1), 'at most one token per output');
    });
    t.ok(h.sched.stats.retractions > 0, `retracted ${h.sched.stats.retractions} times`);
    checkDrained(t, h);
  });
}

t.test('the rank resolves placeholders from its previous step, and fails a step whose placeholder it cannot', async (t) => {
  const init: FakeEngineInit = { numPages: 16, pageSize: 4, vocabSize: VOCAB };
  const channel = new MessageChannel();
  const progress = new SharedArrayBuffer(4);
  const actor = await RankActor.spawn({
    rank: 0, placement: { deviceId: 0 }, engineModule: new URL('./fixtures/fake-engine-module.ts', import.meta.url).href, engineInit: init,
    startTimeoutMs: 30_000, steps: channel.port2, progress,
  });
  // This thread stands in for the scheduler's.
  const rank = new RankGroup({ ports: [channel.port1], engine: actor.engine, progress, stepTimeoutMs: 10_000, tpGroup: null, onFailure: (e) => t.fail(e.message) });
  t.teardown(async () => {
    rank.close();
    await actor.stop();
  });
  const prompt = [3, 1, 4, 1, 5];
  const seq = (tokenIds: number[], startPos: number, pages: number[]): SeqStep =>
    ({ tokenIds: Int32Array.from(tokenIds), startPos, pages: Int32Array.from(pages), sample: true, sampling: greedy, outputIndex: Math.max(0, startPos - prompt.length + 1) });
  const pack = (s: SeqStep) => packStep([s], 4, { placeholders: true, vocabSize: VOCAB });
  await t.rejects(rank.execute(pack(seq([placeholderFor(0)], 0, [0]))), { code: 'LLM_ERR_STEP_INVALID' }, 'no step ran before: coded error');
  // Both steps go to the rank before the first answers, as overlap sends them.
  const first = rank.execute(pack(seq(prompt, 0, [0, 1])));
  const second = rank.execute(pack(seq([placeholderFor(0)], 5, [0, 1])));
  const t1 = (await first).tokens[0];
  const t2 = (await second).tokens[0];
  t.equal(t1, nextToken(prompt, VOCAB));
  t.equal(t2, nextToken([...prompt, t1], VOCAB), 'the placeholder took the previous step\'s token');
  await t.rejects(rank.execute(pack(seq([placeholderFor(3)], 6, [0, 1]))), { code: 'LLM_ERR_STEP_INVALID', message: /row 3/ }, 'a row the previous step lacks');
  const after = await rank.execute(pack(seq([t2], 6, [0, 1])));
  t.equal(after.tokens[0], nextToken([...prompt, t1, t2], VOCAB), 'the rank keeps working after a refused step');
});
