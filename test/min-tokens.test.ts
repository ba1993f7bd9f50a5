// min_tokens really prevents stopping: while a request has fewer than min_tokens outputs, the scheduler bans its
// stop and EOS ids in the engine (their logits become -inf), so the first min_tokens tokens hold none of them.
// Real model: stories260K on the CPU backend. It never samples its GGUF EOS (2): llama2.c trained stories
// separated by BOS (1), which it emits where a story ends. Requests therefore carry eos_token_ids [2] and the
// separator as stop_token_ids_hidden [1], and the prompt is a story a few tokens before its end.
import t from 'tap';
import { packFor } from '../src/engine/step.js';
import { openEngine } from '../src/engine/engine.js';
import { loadModelSpec } from '../src/engine/model.js';
import type { Engine, SamplingParams } from '../src/engine/types.js';
import { LlmError } from '../src/errors.js';
import { Scheduler, engineExecutor, type RequestOutput, type SchedulerRequest } from '../src/scheduler/scheduler.js';
import { Supervisor } from '../src/supervisor.js';
import { loadTokenizer } from '../src/tokenizer/index.js';
import { streamTokens } from './helpers/streams.js';

const MODEL = new URL('../models/stories260K.gguf', import.meta.url).pathname;
const EOS = 2;
const SEPARATOR = 1;
const greedy: SamplingParams = { temperature: 0, topP: 1, topK: -1, minP: 0, seed: null, logprobs: -1 };

const spec = await loadModelSpec(MODEL);
const tokenizer = loadTokenizer(MODEL);

/** Greedy continuation of one sequence, token by token, until a stop id or maxTokens. */
function greedyRun(engine: Engine, prompt: number[], maxTokens: number, stops: number[]): number[] {
  const pageSize = engine.kv.pageSize;
  const out: number[] = [];
  let ids = prompt;
  let start = 0;
  while (out.length < maxTokens) {
    const end = start + ids.length;
    const pages = Array.from({ length: Math.ceil(end / pageSize) }, (_, i) => i);
    const tok = engine.step(packFor(engine, [{ tokenIds: ids, startPos: start, pages, sample: true, sampling: greedy, outputIndex: out.length }])).tokens[0];
    out.push(tok);
    if (stops.includes(tok)) break;
    start = end;
    ids = [tok];
  }
  return out;
}

// A prompt whose greedy continuation ends its story (emits the separator) after a few tokens.
const engine = openEngine(spec, { backend: 'cpu', deviceId: 0, pageSize: 16, numPages: 64, memFractionStatic: 0.5, maxBatchTokens: 512, maxSeqsPerStep: 8, threads: 2 });
t.teardown(() => engine.close());
const story = tokenizer.encode('Once upon a time, there was a dog. The dog was happy. The end.', { addSpecialTokens: true });
const full = greedyRun(engine, story, 300, [SEPARATOR, EOS]);
const PROMPT = [...story, ...full.slice(0, Math.max(0, full.length - 6))];

const request = (id: string, over: Partial<SchedulerRequest> = {}): SchedulerRequest => ({
  id, tokenIds: PROMPT, maxTokens: 48, minTokens: 0, ignoreEos: false, eosTokenIds: [EOS], stopTokenIds: [SEPARATOR],
  sampling: greedy, ...over,
});

function startScheduler(): Scheduler {
  const sched = new Scheduler(engineExecutor(engine), {
    maxRunningRequests: 8, chunkedPrefillSize: 64, maxPrefillTokens: 512, maxBatchTokens: 512, maxSeqsPerStep: 8,
    enableOverlap: true, enablePrefixCache: true,
  });
  sched.start();
  return sched;
}

function run(sched: Scheduler, req: SchedulerRequest): Promise<{ ids: number[]; last: RequestOutput }> {
  return new Promise((resolve) => {
    const ids: number[] = [];
    sched.submit(req, (o) => {
      ids.push(...o.tokenIds);
      if (o.finishReason) resolve({ ids, last: o });
    });
  });
}

const isStop = (tok: number) => tok === SEPARATOR || tok === EOS;

t.test('the scheduler bans stop and EOS ids until min_tokens are out', async (t) => {
  const sched = startScheduler();
  t.teardown(() => sched.stop());
  const base = await run(sched, request('base'));
  t.equal(base.last.finishReason, 'stop', 'without min_tokens the story ends early');
  const k = base.ids.length;
  t.ok(k >= 2 && k <= 10, `separator reached after ${k} tokens`);
  t.equal(base.ids.at(-1), SEPARATOR);

  for (const N of [k, k + 1, 20]) {
    const r = await run(sched, request(`min${N}`, { minTokens: N }));
    t.ok(r.ids.length >= N, `min_tokens ${N}: ${r.ids.length} tokens (finish ${r.last.finishReason})`);
    t.notOk(r.ids.slice(0, N).some(isStop), `min_tokens ${N}: no stop or EOS id among the first ${N}`);
    t.same(r.ids.slice(0, k - 1), base.ids.slice(0, k - 1), 'tokens before the ban mattered are unchanged');
    t.not(r.ids[k - 1], SEPARATOR, 'where greedy wanted the separator, the best allowed token comes instead');
    if (r.last.finishReason === 'stop') t.ok(isStop(r.ids.at(-1)!) && r.ids.length > N, 'a later stop still ends it');
  }
  sched.checkIntegrity();
});

t.test('ignore_eos keeps EOS allowed but still bans the stop ids; logprobs stay finite', async (t) => {
  const sched = startScheduler();
  t.teardown(() => sched.stop());
  const plain = await run(sched, request('plain', { maxTokens: 12, ignoreEos: true, stopTokenIds: [] }));
  t.ok(plain.ids.includes(SEPARATOR), 'with nothing to stop it, the model still emits the separator');
  const outs: RequestOutput[] = [];
  const banned = await new Promise<number[]>((resolve) => {
    const ids: number[] = [];
    sched.submit(request('banned', { maxTokens: 12, minTokens: 12, ignoreEos: true, sampling: { ...greedy, logprobs: 0 } }), (o) => {
      outs.push(o);
      ids.push(...o.tokenIds);
      if (o.finishReason) resolve(ids);
    });
  });
  t.notOk(banned.includes(SEPARATOR), 'the stop id is banned with ignore_eos too');
  t.equal(banned.length, 12);
  t.ok(outs.every((o) => o.logprobs === null || o.logprobs.every((x) => Number.isFinite(x) && x <= 0)), 'chosen-token logprobs are finite');
});

t.test('admission: more banned ids than the engine takes is a clear error; ids outside the vocabulary are left out', async (t) => {
  const sched = startScheduler();
  t.teardown(() => sched.stop());
  const many = Array.from({ length: 17 }, (_, i) => 100 + i);
  const err = (() => {
    try {
      sched.submit(request('many', { minTokens: 4, stopTokenIds: many }), () => {});
    } catch (e) {
      return e as LlmError;
    }
    return null;
  })();
  t.equal(err?.code, 'LLM_ERR_BAD_REQUEST');
  t.match(err?.message, /request many: stop_conditions.min_tokens 4 bans the request's 18 stop and EOS token ids .* at most 16/);
  const noMin = await run(sched, request('many-no-min', { stopTokenIds: many, maxTokens: 4 }));
  t.equal(noMin.ids.length > 0, true, 'without min_tokens the same stop list is fine');
  const outside = await run(sched, request('outside', { minTokens: 20, stopTokenIds: [SEPARATOR, spec.vocabSize, spec.vocabSize + 7] }));
  t.equal(outside.last.error, null, 'stop ids beyond the vocabulary do not reach the engine');
  t.ok(outside.ids.length >= 20);
  t.notOk(outside.ids.slice(0, 20).some(isStop));
  sched.checkIntegrity();
});

t.test('through the Supervisor (scheduler and rank actors): min_tokens holds end to end', async (t) => {
  const sup = await Supervisor.start({ modelPath: MODEL, device: 'cpu', cpuThreads: 2, numPages: 64, maxRunningRequests: 8, chunkedPrefillSize: 64 });
  t.teardown(() => sup.stop());
  const wire = (minTokens: number | null) => ({
    token_ids: PROMPT,
    stop_conditions: { max_tokens: 40, stop_token_ids_hidden: [SEPARATOR], ...(minTokens === null ? {} : { min_tokens: minTokens }) },
    sampling_options: { temperature: 0 },
    eos_token_ids: [EOS],
  });
  const base = await streamTokens(sup.generate(wire(null)));
  t.equal(base.last.finish_reason, 'stop');
  t.ok(base.ids.length <= 10, `ends after ${base.ids.length} tokens without min_tokens`);
  const N = 24;
  const held = await streamTokens(sup.generate(wire(N)));
  t.ok(held.ids.length >= N, `${held.ids.length} tokens with min_tokens ${N}`);
  t.notOk(held.ids.slice(0, N).some(isStop), `no stop or EOS id among the first ${N}`);
  const concurrent = await Promise.all([0, 8, 16, 30].map((n) => streamTokens(sup.generate(wire(n)))));
  concurrent.forEach((r, i) => {
    const n = [0, 8, 16, 30][i];
    t.ok(r.ids.length >= Math.min(n, 40) && !r.ids.slice(0, n).some(isStop), `batched with others: min_tokens ${n} holds`);
  });
});
