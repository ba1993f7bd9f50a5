// The disaggregated hand-over (SGLang's KV + first token): the prefill side parks the KV of every prompt position
// (the partial last page included) with its first output token, the decode side adopts both and starts decoding
// without any prefill step. First in two schedulers over fake engines (the KV really copied between them): outputs
// equal a lone request's for 32 concurrent prompts of every length, the decode scheduler runs no prefill token,
// stop conditions on the first token end the stream at once, cancellation and retraction of handed-over requests,
// a decode pool too small to take the KV, and no page leaked anywhere (integrity checks at every step). Then two
// real CPU workers (stories260K, tcp transfer) against an aggregated one: chunks equal for prompts that fill their
// last page and that don't, max_tokens 1, a first token that is EOS, logprobs, logprobs the prefill side did not
// compute (the decode side recomputes the tail, the older path), and a cancelled decode stream.
import t, { type Test } from 'tap';
import { fileURLToPath } from 'node:url';
import { exportParked, importPrefix, type PageCopier } from '../src/scheduler/kv-transfer.js';
import type { HandOver, Scheduler, SchedulerOptions, SchedulerRequest } from '../src/scheduler/scheduler.js';
import { fakeLogprob, referenceOutput, type FakeEngine } from './fixtures/fake-engine.js';
import { runRequest, schedulerRequest, startScheduler, tokensOf } from './helpers/scheduler-harness.js';
import { finalizeConfig, resolveConfig } from '../src/config/resolve.js';
import type { PreprocessedRequest } from '../src/protocol/request.js';
import type { LlmResponseChunk } from '../src/protocol/response.js';
import { startWorker, type WorkerHandle } from '../src/worker/worker.js';
import { randomBootstrapRoom } from '../src/disagg/service.js';

const VOCAB = 1000;
const PS = 4;

interface Side {
  engine: FakeEngine;
  sched: Scheduler;
  copier: PageCopier;
}

function side(t: Test, numPages: number, opts: Partial<SchedulerOptions> = {}): Side {
  const { engine, sched } = startScheduler(t, { numPages, pageSize: PS }, { maxPrefillTokens: 64, ...opts });
  return {
    engine,
    sched,
    copier: { exportPages: async (p) => engine.exportPages(p), importPages: async (p, d) => engine.importPages(p, d) },
  };
}

function req(id: string, prompt: number[], over: Partial<SchedulerRequest> = {}): SchedulerRequest {
  return schedulerRequest(id, prompt, { maxTokens: 8, ...over });
}

const run = runRequest;

const tokens = tokensOf;

/** No page held beyond what the radix cache keeps, nothing running or parked. */
function clean(t: Test, s: Side, name: string): void {
  t.doesNotThrow(() => s.sched.checkIntegrity(), `${name}: integrity`);
  t.equal(s.sched.allocator.usedCount, s.sched.cache?.cachedPages ?? 0, `${name}: only cached pages in use`);
  t.equal(s.sched.runningCount + s.sched.queuedCount, 0, `${name}: idle`);
}

/** Prefill on P (max_tokens 1, KV parked), export to the host, import on D parked under a fresh key: the decode
 * request's handOver. */
async function prefillAndMove(p: Side, d: Side, id: string, prompt: number[], logprobs = -1): Promise<HandOver> {
  const key = `p-${id}`;
  const outs = await run(p.sched, req(`prefill-${id}`, prompt, { maxTokens: 1, parkKvAs: key, sampling: { ...req('', []).sampling, logprobs } }));
  const first = outs.at(-1)!;
  const host = await exportParked(p.sched, p.copier, key, prompt);
  t.equal(host.pageCount, Math.ceil(prompt.length / PS), `${id}: every prompt page moves, the partial last one too`);
  await importPrefix(d.sched, d.copier, host, `d-${id}`);
  return {
    kvKey: `d-${id}`, tokenId: first.tokenIds[0], logprob: first.logprobs?.[0] ?? null,
    topLogprobs: first.topLogprobs?.[0] ?? null, cachedTokens: first.usage!.cachedTokens,
  };
}

function prompts(n: number): number[][] {
  let x = 777;
  const next = () => (x = (x * 1103515245 + 12345) % 2 ** 31);
  return Array.from({ length: n }, (_, i) => Array.from({ length: 1 + (i % 13) + (i >= 16 ? 8 : 0) }, () => 1 + (next() % 900)));
}

t.test('schedulers: 32 concurrent hand-overs equal lone requests, with no prefill on the decode side', async (t) => {
  const p = side(t, 256);
  const d = side(t, 256);
  const ps = prompts(32);
  const got = await Promise.all(
    ps.map(async (prompt, i) => {
      const handOver = await prefillAndMove(p, d, String(i), prompt);
      return tokens(await run(d.sched, req(`d${i}`, prompt, { handOver })));
    }),
  );
  for (let i = 0; i < ps.length; i++) t.same(got[i], referenceOutput(ps[i], { maxTokens: 8, vocabSize: VOCAB }), `prompt of ${ps[i].length} tokens`);
  t.equal(d.sched.stats.prefillTokens, 0, 'the decode scheduler ran no prefill token');
  t.equal(d.sched.stats.handedOverTokens, ps.reduce((n, x) => n + x.length, 0));
  clean(t, p, 'prefill');
  clean(t, d, 'decode');
});

t.test('schedulers: the first token ends the request at once (stop token, max_tokens 1); usage and logprobs', async (t) => {
  const p = side(t, 64);
  const d = side(t, 64);
  const prompt = [5, 6, 7, 8, 9, 10];
  const ref = referenceOutput(prompt, { maxTokens: 8, vocabSize: VOCAB });
  const steps0 = d.engine.steps;
  const h1 = await prefillAndMove(p, d, 'eos', prompt);
  const eos = await run(d.sched, req('eos', prompt, { handOver: { ...h1, cachedTokens: 3 }, eosTokenIds: [ref[0]] }));
  t.same(eos.map((o) => [o.tokenIds, o.finishReason]), [[[ref[0]], 'stop']], 'one output: the first token, finish stop');
  t.same(eos[0].usage, { promptTokens: 6, completionTokens: 1, cachedTokens: 3 }, 'cached tokens are the prefill side\'s');
  const h2 = await prefillAndMove(p, d, 'one', prompt);
  const one = await run(d.sched, req('one', prompt, { handOver: h2, maxTokens: 1 }));
  t.same(one.map((o) => [o.tokenIds, o.finishReason]), [[[ref[0]], 'length']]);
  await new Promise((r) => setTimeout(r, 20));
  t.equal(d.engine.steps, steps0, 'no engine step ran for them');
  const h3 = await prefillAndMove(p, d, 'lp', prompt, 2);
  t.equal(h3.logprob, Math.fround(fakeLogprob(ref[0])));
  const lp = await run(d.sched, req('lp', prompt, { handOver: h3, maxTokens: 3, sampling: { ...req('', []).sampling, logprobs: 2 } }));
  t.same(lp[0].logprobs, [Math.fround(fakeLogprob(ref[0]))], 'the first output carries the prefill side\'s logprob');
  t.same(lp[0].topLogprobs, [h3.topLogprobs]);
  t.same(tokens(lp), ref.slice(0, 3));
  clean(t, p, 'prefill');
  clean(t, d, 'decode');
});

t.test('schedulers: cancellation before admission, after it, and of parked KV nobody claims', async (t) => {
  const p = side(t, 64);
  const d = side(t, 64, { maxRunningRequests: 1 });
  const prompt = [11, 12, 13, 14, 15, 16, 17];
  // a long request holds the only slot, so the handed-over one waits queued with its KV
  const blocker = run(d.sched, req('blocker', [1, 2, 3], { maxTokens: 200 }));
  const h = await prefillAndMove(p, d, 'queued', prompt);
  const outs = run(d.sched, req('queued', prompt, { handOver: h }));
  t.equal(d.sched.queuedCount, 1);
  d.sched.checkIntegrity(); // the queued request's KV is counted
  d.sched.abort('queued');
  t.same((await outs).map((o) => o.finishReason), [null, 'cancelled'], 'its first token, then cancelled');
  d.sched.abort('blocker');
  await blocker;
  // after admission: cancelled mid-decode
  const h2 = await prefillAndMove(p, d, 'running', prompt);
  let seen = 0;
  const outs2 = run(d.sched, req('running', prompt, { handOver: h2, maxTokens: 50 }), () => {
    if (++seen === 3) d.sched.abort('running'); // the first token came with the hand-over, two were decoded
  });
  t.equal((await outs2).at(-1)!.finishReason, 'cancelled');
  // parked on both sides and never claimed: dropped
  await run(p.sched, req('orphan', prompt, { maxTokens: 1, parkKvAs: 'orphan' }));
  t.not(p.sched.allocator.usedCount, p.sched.cache!.cachedPages, 'the partial page stays parked');
  p.sched.checkIntegrity();
  p.sched.dropParked('orphan');
  await importPrefix(d.sched, d.copier, await exportParked(p.sched, p.copier, 'nothing', prompt), 'd-orphan');
  d.sched.dropParked('d-orphan');
  clean(t, p, 'prefill');
  clean(t, d, 'decode');
});

t.test('schedulers: a request that does not fit while KV is parked waits for its release', async (t) => {
  const p = side(t, 4);
  await run(p.sched, req('parked', Array.from({ length: 14 }, (_, i) => 100 + i), { maxTokens: 1, parkKvAs: 'k' }));
  t.equal(p.sched.allocator.freeCount, 0, 'the parked prompt holds the whole pool');
  const prompt = [7, 8, 9, 10, 11];
  const waiting = run(p.sched, req('waiting', prompt, { maxTokens: 3 }));
  await new Promise((r) => setTimeout(r, 20));
  t.equal(p.sched.queuedCount, 1, 'queued, and the scheduler did not give up');
  p.sched.dropParked('k');
  t.same(tokens(await waiting), referenceOutput(prompt, { maxTokens: 3, vocabSize: VOCAB }));
  clean(t, p, 'prefill');
});

t.test('schedulers: retraction of handed-over requests and a decode pool too small to take the KV', async (t) => {
  const p = side(t, 256);
  const d = side(t, 12, { chunkedPrefillSize: 4 }); // 48 token slots for 6 requests of up to 27 tokens
  const ps = prompts(6).map((x, i) => [...x, ...x].slice(0, 9 + i * 3));
  const got = await Promise.all(
    ps.map(async (prompt, i) => {
      const handOver = await prefillAndMove(p, d, `r${i}`, prompt);
      return tokens(await run(d.sched, req(`r${i}`, prompt, { handOver, maxTokens: 12 })));
    }),
  );
  for (let i = 0; i < ps.length; i++) t.same(got[i], referenceOutput(ps[i], { maxTokens: 12, vocabSize: VOCAB }), `prompt of ${ps[i].length} tokens`);
  t.ok(d.sched.stats.retractions > 0, 'handed-over requests were retracted (and recomputed)');
  t.ok(d.sched.stats.handedOverTokens < ps.reduce((n, x) => n + x.length, 0), 'some KV did not fit: those requests recomputed their prompt');
  clean(t, p, 'prefill');
  clean(t, d, 'decode');
});

// ---- two real CPU workers (stories260K) and an aggregated one ----

const MODEL = fileURLToPath(new URL('../models/stories260K.gguf', import.meta.url));

async function worker(ns: string, extra: string[]): Promise<WorkerHandle> {
  const config = await finalizeConfig(
    resolveConfig(
      ['--model-path', MODEL, '--served-model-name', 'stories260K', '--device', 'cpu', '--cpu-threads', '1', '--mem-fraction-static', '0.01',
        '--tcp-rpc-host', '127.0.0.1', '--discovery-backend', 'mem', '--namespace', ns, '--page-size', '4',
        '--kv-transfer-timeout', '3', '--graceful-shutdown-grace-period', '0.5', ...extra],
      {},
    ),
  );
  return startWorker(config, { log: () => undefined });
}

async function chunks(stream: AsyncIterable<unknown>, onChunk?: (c: LlmResponseChunk) => void): Promise<LlmResponseChunk[]> {
  const out: LlmResponseChunk[] = [];
  for await (const c of stream) {
    const chunk = c as LlmResponseChunk;
    if (chunk.disaggregated_params) continue;
    out.push(chunk);
    onChunk?.(chunk);
  }
  return out;
}

t.test('CPU workers over tcp: hand-over chunks equal the aggregated worker\'s', async (t) => {
  // Each worker is shut down at teardown as soon as it started: one that fails to start must not leave the others
  // holding the process open.
  const started: WorkerHandle[] = [];
  t.teardown(async () => {
    for (const w of started.reverse()) await w.shutdown();
  });
  const start = async (ns: string, extra: string[]): Promise<WorkerHandle> => {
    const w = await worker(ns, extra);
    started.push(w);
    return w;
  };
  const agg = await start('ho-agg', []);
  const prefill = await start('ho', ['--disaggregation-mode', 'prefill']);
  const decode = await start('ho', ['--disaggregation-mode', 'decode']);
  const bootstrap = prefill.disagg!.endpoint!;
  let n = 0;
  /** One request through both workers as the prefill router sends it; the decode side's chunks. */
  const disagg = async (body: PreprocessedRequest, onChunk?: (c: LlmResponseChunk) => void, signal = new AbortController().signal, prefillBody = body) => {
    const info = { ...bootstrap, bootstrap_room: randomBootstrapRoom() };
    const id = `ho-${n++}`;
    const pre = chunks(prefill.disagg!.generate({ ...prefillBody, bootstrap_info: info }, { signal: new AbortController().signal, requestId: `${id}-p` }));
    const dec = chunks(decode.disagg!.generate({ ...body, bootstrap_info: info }, { signal, requestId: `${id}-d` }), onChunk);
    const [, got] = await Promise.all([pre, dec]);
    return got;
  };
  const aggregated = (body: PreprocessedRequest) => chunks(agg.supervisor.generate(body));
  const body = (tokenIds: number[], maxTokens: number, extra: Partial<PreprocessedRequest> = {}): PreprocessedRequest => ({
    token_ids: tokenIds, stop_conditions: { max_tokens: maxTokens }, sampling_options: { temperature: 0 }, eos_token_ids: [2], ...extra,
  });
  const strip = (cs: LlmResponseChunk[]) => cs.map((c) => ({ ...c, completion_usage: c.completion_usage ? { ...c.completion_usage, prompt_tokens_details: null } : undefined }));
  const stats = () => ({ ...decode.supervisor.scheduler.stats });

  const s0 = stats();
  for (const len of [8, 12, 9, 14, 3]) {
    const b = body([1, ...Array.from({ length: len - 1 }, (_, i) => 20 + ((i * 31) % 400))], 10);
    t.same(strip(await disagg(b)), strip(await aggregated(b)), `${len} prompt tokens (${len % 4 ? 'partial last page' : 'whole pages'})`);
  }
  t.equal(stats().prefillTokens - s0.prefillTokens, 0, 'the decode worker ran no prefill step');
  t.equal(stats().handedOverTokens - s0.handedOverTokens, 8 + 12 + 9 + 14 + 3);

  const prompt = [1, 40, 41, 42, 43, 44, 45];
  const expected = await aggregated(body(prompt, 10));
  const first = expected[0].token_ids[0];
  const s1 = stats();
  const one = await disagg(body(prompt, 1));
  t.same(one.map((c) => [c.token_ids, c.finish_reason]), [[[first], 'length']], 'max_tokens 1: one chunk');
  t.match(one[0].completion_usage, { prompt_tokens: 7, completion_tokens: 1, total_tokens: 8 });
  const eos = await disagg(body(prompt, 10, { eos_token_ids: [first] }));
  t.same(eos.map((c) => [c.token_ids, c.finish_reason]), [[[first], 'stop']], 'a first token that is EOS: one chunk');
  t.equal(stats().steps, s1.steps, 'no decode step ran for either');

  const lp = body(prompt, 5, { output_options: { logprobs: 3 } });
  const lpGot = await disagg(lp);
  t.same(strip(lpGot), strip(await aggregated(lp)), 'logprobs and top logprobs, the first token\'s from the prefill worker');
  t.equal(lpGot[0].top_logprobs?.[0].length, 3);
  // a prefill request that asked for no logprobs: the decode worker computes the prompt's tail and first token itself
  const s2 = stats();
  const fallback = await disagg(lp, undefined, undefined, body(prompt, 5));
  t.same(strip(fallback), strip(await aggregated(lp)), 'logprobs the hand-over lacks: recomputed on the decode side');
  t.equal(stats().prefillTokens - s2.prefillTokens, prompt.length % 4 || 4, 'only the partial last page was recomputed');
  t.equal(stats().handedOverTokens, s2.handedOverTokens);

  // cancelled after the hand-over, mid-stream
  const ac = new AbortController();
  const cancelled = await disagg(body(prompt, 200, { stop_conditions: { max_tokens: 200, ignore_eos: true } }), (c) => c.token_ids.length && ac.abort(), ac.signal);
  t.equal(cancelled.at(-1)?.finish_reason, 'cancelled');
  const deadline = Date.now() + 5000;
  while (prefill.disagg!.sender!.pending.rooms && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  for (const [w, name] of [[prefill, 'prefill'], [decode, 'decode'], [agg, 'agg']] as const) {
    await t.resolves(w.supervisor.scheduler.checkIntegrity(), `${name}: integrity`);
  }
  t.same(prefill.disagg!.sender!.pending, { rooms: 0, bytes: 0 });
});
