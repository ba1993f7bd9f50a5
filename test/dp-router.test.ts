// Data parallelism inside one worker (--dp-size N), on the fake engine: the topology starts N independent groups
// (each a supervisor over its own scheduler, ranks and KV pool); the router sends a request that names a dp rank
// (routing.dp_rank) to that group, refuses a rank the worker does not have, treats u32::MAX as unset, and balances
// the others by KV usage first, then by the requests it has in each group; a group that fails restarts alone while
// the other keeps serving.
import t, { type Test } from 'tap';
import { buildTopology } from '../src/topology/topology.js';
import { startTopology, type RunningTopology } from '../src/topology/start.js';
import { DP_RANK_UNSET } from '../actors/dp-router.js';
import { mergeSnapshots, MetricsActor } from '../actors/metrics.js';
import type { SupervisorConfig } from '../src/supervisor.js';
import type { PreprocessedRequest } from '../src/protocol/request.js';
import type { FakeEngineInit } from './fixtures/fake-engine-module.js';
import { referenceOutput } from './fixtures/fake-engine.js';
import { collect } from './helpers/streams.js';

const VOCAB = 500;
const fakeModule = new URL('./fixtures/fake-engine-module.ts', import.meta.url).href;

async function start(t: Test, fake: Partial<FakeEngineInit> = {}, extra: Partial<SupervisorConfig> = {}): Promise<RunningTopology> {
  const init: FakeEngineInit = { numPages: 64, pageSize: 4, vocabSize: VOCAB, ...fake };
  const graph = buildTopology({ modelPath: 'fake', engineFactory: { module: fakeModule, init }, dpSize: 2, maxRunningRequests: 16, chunkedPrefillSize: 64, ...extra });
  const running = await startTopology(graph, null);
  t.teardown(() => running.stop());
  return running;
}

const request = (tokenIds: number[], maxTokens: number, dpRank?: number): PreprocessedRequest => ({
  token_ids: tokenIds, stop_conditions: { max_tokens: maxTokens }, sampling_options: { temperature: 0 }, eos_token_ids: [],
  ...(dpRank === undefined ? {} : { routing: { dp_rank: dpRank } }),
});
const prompt = (seed: number, len: number) => Array.from({ length: len }, (_, i) => (seed * 31 + i * 7) % VOCAB);
const finished = (running: RunningTopology) => running.groups.map((g) => g.metrics.snapshot().requests.finished);

async function until(what: string, cond: () => boolean, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

t.test('dp 2: two groups on their own devices; a named dp_rank goes to its group, a rank out of range is refused', async (t) => {
  const running = await start(t);
  t.same(running.groups.map((g) => [g.dpRank, g.core.ranks.length]), [[0, 1], [1, 1]]);
  t.not(running.groups[0].engine, running.groups[1].engine, 'each group opened its own engine (its own KV pool)');
  for (const d of [1, 1, 0]) {
    const p = prompt(d + 3, 6);
    const out = (await collect(running.router.generate(request(p, 4, d)))).flatMap((c) => c.token_ids);
    t.same(out, referenceOutput(p, { maxTokens: 4, vocabSize: VOCAB }));
  }
  t.same(finished(running), [1, 2], 'the requests ran where they named');
  await t.rejects(collect(running.router.generate(request(prompt(1, 4), 2, 2))), { code: 'LLM_ERR_BAD_REQUEST', message: /routing.dp_rank 2: this worker has data-parallel ranks 0..1/ });
  await collect(running.router.generate(request(prompt(1, 4), 2, DP_RANK_UNSET)));
  t.equal(finished(running).reduce((a, b) => a + b), 4, 'u32::MAX is unset: served by either group');
});

t.test('dp 2: requests without a dp_rank spread over the idle groups', async (t) => {
  const running = await start(t, { stepDelayMs: 2 });
  const ps = Array.from({ length: 6 }, (_, i) => prompt(i + 1, 5));
  const outs = await Promise.all(ps.map((p) => collect(running.router.generate(request(p, 6)))));
  outs.forEach((o, i) => t.same(o.flatMap((c) => c.token_ids), referenceOutput(ps[i], { maxTokens: 6, vocabSize: VOCAB }), `request ${i}`));
  t.same(finished(running), [3, 3], 'three each');
});

t.test('dp 2: without a dp_rank, the group with less KV in use wins over the one with fewer requests', async (t) => {
  const running = await start(t, { stepDelayMs: 5 });
  const stop = new AbortController();
  // group 0: one request holding many pages; group 1: two requests holding few
  const streams = [request(prompt(1, 120), 10_000, 0), request(prompt(2, 3), 10_000, 1), request(prompt(3, 3), 10_000, 1)]
    .map((r) => collect(running.router.generate(r, { signal: stop.signal })));
  await until('the loads of both groups', () => running.groups.every((g) => g.load().runningRequests > 0) && running.groups[1].load().runningRequests === 2);
  t.ok(running.groups[0].load().kvUsedPages > running.groups[1].load().kvUsedPages, 'group 0 holds more KV');
  t.equal(running.router.pick(request(prompt(4, 3), 1)).dpRank, 1, 'the less used group, though it has more requests');
  t.equal(running.router.pick(request(prompt(4, 3), 1, 0)).dpRank, 0, 'a named rank still wins');
  stop.abort();
  await Promise.all(streams);
});

t.test('dp 2: a failing group fails its own requests and restarts; the other group keeps serving', async (t) => {
  // the fake engine on device 1 (dp rank 1's only rank) fails its 6th step, and so does the restarted one
  const running = await start(t, { failAtStep: 6, faultDeviceId: 1, stepDelayMs: 2 });
  const [g0, g1] = running.groups;
  const group1 = g1.core.group;
  const onGroup = (d: number) => Array.from({ length: 2 }, (_, i) => collect(running.router.generate(request(prompt(10 * d + i, 5), 20, d))));
  const [ok, failed] = await Promise.all([Promise.allSettled(onGroup(0)), Promise.allSettled(onGroup(1))]);
  t.ok(ok.every((s) => s.status === 'fulfilled'), 'group 0 served all of its requests');
  for (const s of failed) {
    t.equal(s.status, 'rejected');
    if (s.status === 'rejected') t.match(s.reason, { code: 'LLM_ERR_DEVICE' });
  }
  const group0 = g0.core.group;
  const p = prompt(7, 4);
  t.same((await collect(running.router.generate(request(p, 3, 0)))).flatMap((c) => c.token_ids), referenceOutput(p, { maxTokens: 3, vocabSize: VOCAB }), 'group 0 serves');
  t.equal(g0.core.group, group0, 'group 0 was not restarted');
  t.same((await collect(running.router.generate(request(p, 1, 1)))).flatMap((c) => c.token_ids), referenceOutput(p, { maxTokens: 1, vocabSize: VOCAB }), 'the restarted group 1 serves');
  t.not(g1.core.group, group1, 'group 1 is a new group');
});

t.test('mergeSnapshots: the worker\'s totals over its groups (sums; the largest batch; the load summed)', async (t) => {
  const a = new MetricsActor();
  const b = new MetricsActor();
  const step = { batchSize: 3, prefillTokens: 10, decodeTokens: 2, queued: 0, running: 3, kvUsedPages: 4, cacheHitTokens: 1, stepMs: 1, engineMs: 1, submitGapMs: null, queuedBehind: false };
  a.send({ kind: 'steps', samples: [step, { ...step, batchSize: 5 }] });
  b.send({ kind: 'steps', samples: [{ ...step, batchSize: 2 }] });
  a.send({ kind: 'load', load: { kvTotalPages: 64, kvUsedPages: 8, kvEvictablePages: 2, runningRequests: 2, queuedRequests: 1 } });
  b.send({ kind: 'load', load: { kvTotalPages: 64, kvUsedPages: 4, kvEvictablePages: 0, runningRequests: 1, queuedRequests: 0 } });
  b.send({ kind: 'request', sample: { finishReason: 'length', promptTokens: 7, completionTokens: 3, cachedTokens: 4, firstTokenMs: 2, totalMs: 9 } });
  const m = mergeSnapshots([a.snapshot(), b.snapshot()]);
  t.match(m, {
    steps: 3, prefillTokens: 30, decodeTokens: 6, cacheHitTokens: 3, lastBatchSize: 7, maxBatchSize: 5,
    load: { kvTotalPages: 128, kvUsedPages: 12, kvEvictablePages: 2, runningRequests: 3, queuedRequests: 1 },
    requests: { finished: 1, promptTokens: 7, completionTokens: 3, cachedTokens: 4 },
  });
});
