// The programmatic API over a real rank worker_thread running a fake engine (faults on demand).
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { Supervisor, type SupervisorConfig } from '../src/supervisor.js';
import type { PreprocessedRequest } from '../src/protocol/request.js';
import type { LlmResponseChunk } from '../src/protocol/response.js';
import type { FakeEngineInit } from './fixtures/fake-engine-module.js';
import { referenceOutput } from './fixtures/fake-engine.js';
import { collect } from './helpers/streams.js';

const VOCAB = 500;
const fakeModule = new URL('./fixtures/fake-engine-module.ts', import.meta.url).href;

async function start(t: Test, fake: Partial<FakeEngineInit> = {}, extra: Partial<SupervisorConfig> = {}): Promise<Supervisor> {
  const init: FakeEngineInit = { numPages: 128, pageSize: 4, vocabSize: VOCAB, ...fake };
  const sup = await Supervisor.start({
    modelPath: 'fake', engineFactory: { module: fakeModule, init }, maxRunningRequests: 32, chunkedPrefillSize: 16,
    ...extra,
  });
  t.teardown(() => sup.stop());
  return sup;
}

function request(tokenIds: number[], maxTokens: number, extra: Partial<PreprocessedRequest> = {}): PreprocessedRequest {
  return {
    token_ids: tokenIds, stop_conditions: { max_tokens: maxTokens }, sampling_options: { temperature: 0 },
    eos_token_ids: [], ...extra,
  };
}


const prompt = (seed: number, len: number) => Array.from({ length: len }, (_, i) => (seed * 31 + i * 7) % VOCAB);

t.test('generate streams chunks in the reference shape; repeated prompts report cached tokens', async (t) => {
  const sup = await start(t);
  const stored: number[] = [];
  sup.onKvEvent((e) => stored.push(e.kind === 'stored' ? e.blocks.length : -1));
  const p = prompt(1, 21);
  const chunks = await collect(sup.generate(request(p, 6, { output_options: { logprobs: 1 } })));
  t.same(chunks.flatMap((c) => c.token_ids), referenceOutput(p, { maxTokens: 6, vocabSize: VOCAB }));
  t.equal(chunks.length, 6, 'one chunk per generated token');
  t.ok(chunks.every((c) => c.log_probs?.length === 1 && c.top_logprobs?.[0]?.[0]?.rank === 1));
  t.same(chunks.at(-1)!.finish_reason, 'length');
  t.same(chunks.at(-1)!.completion_usage, { prompt_tokens: 21, completion_tokens: 6, total_tokens: 27, prompt_tokens_details: null });
  t.notOk('completion_usage' in chunks[0], 'usage only on the final chunk');
  const again = await collect(sup.generate(request(p, 6)));
  t.same(again.at(-1)!.completion_usage!.prompt_tokens_details, { cached_tokens: 20 });
  t.notOk('log_probs' in again[0], 'no logprobs unless asked');
  t.equal(stored.reduce((a, b) => a + b, 0), 6, 'the first request stored its 6 full pages (21 prompt + 5 computed outputs = 26 tokens)');
  t.ok(stored.every((n) => n > 0), 'nothing removed');
  const load = sup.load();
  t.same(load, { kvTotalPages: 128, kvUsedPages: 6, kvEvictablePages: 6, runningRequests: 0, queuedRequests: 0 });
  await sup.scheduler.checkIntegrity();
});

for (const pipelined of [false, true]) {
  t.test(`concurrent requests through the rank worker match their solo outputs${pipelined ? ' (pipelined steps)' : ''}`, async (t) => {
    const sup = await start(t, { pipelined });
    const ps = Array.from({ length: 24 }, (_, i) => prompt(i + 3, 5 + ((i * 13) % 40)));
    const all = await Promise.all(ps.map((p) => collect(sup.generate(request(p, 12)))));
    all.forEach((chunks, i) => t.same(chunks.flatMap((c) => c.token_ids), referenceOutput(ps[i], { maxTokens: 12, vocabSize: VOCAB })));
    await sup.scheduler.checkIntegrity();
  });
}

t.test('abort through the signal: queued, and mid-stream', async (t) => {
  const sup = await start(t, { stepDelayMs: 5 });
  const early = new AbortController();
  early.abort();
  const pre = await collect(sup.generate(request(prompt(2, 10), 50), { signal: early.signal }));
  t.same(pre.map((c) => [c.token_ids, c.finish_reason]), [[[], 'cancelled']]);
  const ac = new AbortController();
  const got: LlmResponseChunk[] = [];
  for await (const c of sup.generate(request(prompt(3, 10), 500), { signal: ac.signal })) {
    got.push(c);
    if (got.length === 3) ac.abort();
  }
  t.equal(got.at(-1)!.finish_reason, 'cancelled');
  t.ok(got.length <= 5, `stopped promptly (${got.length} chunks)`);
  // A consumer that breaks out early also frees its request.
  for await (const c of sup.generate(request(prompt(4, 10), 500))) if (c.token_ids.length) break;
  await new Promise((r) => setTimeout(r, 30));
  t.equal(sup.scheduler.runningCount + sup.scheduler.queuedCount, 0);
  await sup.scheduler.checkIntegrity();
});

t.test('bad requests fail with specific messages', async (t) => {
  const sup = await start(t);
  // guided decoding compiles its grammar against the model's tokenizer: this test model has none, which is named
  await t.rejects(collect(sup.generate({ ...request([1], 4), sampling_options: { guided_decoding: { regex: 'a+' } } })), { code: 'LLM_ERR_MODEL_NOT_FOUND', message: /tokenizer/ });
  t.equal((await collect(sup.generate(request([1], 4)))).at(-1)?.finish_reason, 'length', 'and the worker goes on serving');
  await t.rejects(collect(sup.generate(request([1, VOCAB + 3], 4))), { code: 'LLM_ERR_BAD_REQUEST', message: /token_ids\[1\] = 503 is outside the vocabulary/ });
  await t.rejects(collect(sup.generate({ token_ids: 'x' } as unknown as PreprocessedRequest)), { code: 'LLM_ERR_BAD_REQUEST', message: /^request\.\w+: / });
});

for (const [fault, code, pipelined] of [
  ['exitAtStep', 'LLM_ERR_ACTOR_CRASHED', false],
  ['throwAtStep', 'LLM_ERR_ACTOR_CRASHED', false],
  ['hangAtStep', 'LLM_ERR_ACTOR_HUNG', false],
  ['failAtStep', 'LLM_ERR_DEVICE', false],
  // The rank's pipelined loop: a step failing as it is begun, or as it is ended while the next one is already begun.
  ['exitAtStep', 'LLM_ERR_ACTOR_CRASHED', true],
  ['failAtStep', 'LLM_ERR_DEVICE', true],
  ['failAtEnd', 'LLM_ERR_DEVICE', true],
] as const) {
  t.test(`a rank fault (${fault}${pipelined ? ', pipelined steps' : ''}) fails every in-flight stream with ${code}, then the rank restarts`, async (t) => {
    const sup = await start(t, { [fault]: 4, pipelined }, { stepTimeoutMs: 1500 });
    const streams = Array.from({ length: 6 }, (_, i) => collect(sup.generate(request(prompt(i, 12), 40))));
    const settled = await Promise.allSettled(streams);
    for (const s of settled) {
      t.equal(s.status, 'rejected');
      if (s.status === 'rejected') {
        t.equal(s.reason.code, code);
        if (fault !== 'failAtStep' && fault !== 'failAtEnd') t.equal(s.reason.rank, 0, 'the error names the rank');
      }
    }
    // A one-step request fits before the restarted rank's own fault step.
    const after = await collect(sup.generate(request(prompt(9, 3), 1)));
    t.same(after.flatMap((c) => c.token_ids), referenceOutput(prompt(9, 3), { maxTokens: 1, vocabSize: VOCAB }));
  });
}

t.test('DSG_STEP_TRACE: one line per engine step; a path that cannot be written fails the start naming it', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'step-trace-'));
  const saved = process.env.DSG_STEP_TRACE;
  t.teardown(() => {
    if (saved === undefined) delete process.env.DSG_STEP_TRACE;
    else process.env.DSG_STEP_TRACE = saved;
    rmSync(dir, { recursive: true, force: true });
  });
  process.env.DSG_STEP_TRACE = join(dir, 'missing', 'trace.tsv');
  await t.rejects(start(t), { code: 'LLM_ERR_CONFIG', message: /DSG_STEP_TRACE: cannot write .*missing\/trace\.tsv: ENOENT/ });
  const file = join(dir, 'trace.tsv');
  process.env.DSG_STEP_TRACE = file;
  const sup = await start(t);
  await collect(sup.generate(request(prompt(5, 10), 4)));
  const steps = sup.metrics.snapshot().steps;
  await sup.stop();
  const lines = readFileSync(file, 'utf8').trim().split('\n');
  t.equal(lines.length, steps, 'one line per step');
  t.match(lines[0], /^1\t10\t10\t\d+\.\d{3}$/, 'sequences, tokens, KV tokens, engine ms');
});

t.test('past maxRestarts the supervisor fails every later call, without hanging', async (t) => {
  const sup = await start(t, { exitAtStep: 1 }, { maxRestarts: 0 });
  await t.rejects(collect(sup.generate(request([1, 2, 3], 2))), { code: 'LLM_ERR_ACTOR_CRASHED' });
  await t.rejects(collect(sup.generate(request([1, 2, 3], 2))), { code: 'LLM_ERR_ACTOR_CRASHED', message: /exited unexpectedly with code 3/ });
});
