// Tensor parallelism on the CPU backend: N ranks (worker_threads of this process, one engine each) hold slices of
// the model and meet in the native TpGroup. For every family and TP 1, 2, 4 the group's logits equal TP=1's within
// 1e-5 relative (per row: max |a - b| / max |a|, a from TP=1) and greedy decoding picks the same tokens; every rank
// reports the same tokens and logits. Also: KV pages hold the rank's KV heads, embed works, bad sizes are refused
// naming the numbers, and a group with a missing rank or an abort fails with LLM_ERR_TP_ABORTED instead of hanging.
import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { loadAddon } from '../src/engine/addon.js';
import { openEngine } from '../src/engine/engine.js';
import type { EngineOptions, ModelSpec, SamplingParams, SeqStep, StepResult } from '../src/engine/types.js';
import { relError, writeTinyModel, type TinyShape } from './helpers/engine-tiny-model.js';
import { codeOf } from './helpers/thrown.js';
import { TpRanks } from './helpers/tp-ranks.js';

// 8 query heads so TP 4 divides them; llama has 4 KV heads (split), qwen2 and qwen3 2 (replicated at TP 4); no
// vocabulary is a multiple of 4, so the last rank's vocab shard is short.
const FAMILIES: Record<'llama' | 'qwen2' | 'qwen3', TinyShape> = {
  llama: {
    architecture: 'llama', vocabSize: 99, hiddenSize: 64, intermediateSize: 128, numLayers: 2, numHeads: 8, numKvHeads: 4,
    headDim: 8, ropeLayout: 'interleaved', ropeScaling: { type: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 64 },
    tieWordEmbeddings: false, dtype: 'f32',
  },
  qwen2: {
    architecture: 'qwen2', vocabSize: 94, hiddenSize: 64, intermediateSize: 96, numLayers: 2, numHeads: 8, numKvHeads: 2,
    headDim: 8, ropeLayout: 'half', ropeScaling: null, tieWordEmbeddings: true, dtype: 'bf16',
  },
  qwen3: {
    architecture: 'qwen3', vocabSize: 101, hiddenSize: 48, intermediateSize: 64, numLayers: 2, numHeads: 8, numKvHeads: 2,
    headDim: 16, ropeLayout: 'half', ropeScaling: null, tieWordEmbeddings: false, dtype: 'f16',
  },
};

const options: EngineOptions = {
  backend: 'cpu', deviceId: 0, pageSize: 4, numPages: 32, memFractionStatic: 0.5, maxBatchTokens: 32, maxSeqsPerStep: 4, threads: 1,
};
const greedy: SamplingParams = { temperature: 0, topP: 1, topK: 0, minP: 0, seed: 7, logprobs: 0 };
const DECODE_STEPS = 14;
let groups = 0;
const groupName = (what: string): string => `tp-cpu-${process.pid}-${what}-${groups++}`;

const dir = mkdtempSync(join(tmpdir(), 'tp-cpu-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));

function modelOf(family: keyof typeof FAMILIES, shape: TinyShape = FAMILIES[family]): ModelSpec {
  const d = join(dir, `${family}-${shape.numHeads}-${shape.numKvHeads}-${shape.intermediateSize}`);
  mkdirSync(d, { recursive: true });
  return writeTinyModel(d, shape, 11).spec;
}

const pagesOf = (first: number, tokens: number): number[] =>
  Array.from({ length: Math.ceil(tokens / options.pageSize) }, (_, i) => first + i);

interface Run {
  logits: Float32Array[]; // per step, [numSeqs * vocab]
  tokens: number[][]; // per sequence, greedy
  embedding: Float32Array;
  pages: Uint8Array[]; // per rank: pages 0..2 (sequence 0's prompt)
  bytesPerPage: number;
}

/** A prefill, a batch mixing a prefill chunk with a decode token, then DECODE_STEPS steps decoding both sequences. */
async function runGroup(t: Test, spec: ModelSpec, size: number): Promise<Run> {
  const { ranks, opened } = await TpRanks.start(spec, options, { size, group: groupName(spec.architecture) });
  t.teardown(() => ranks.close());
  t.same(opened.errors, new Array(size).fill(undefined), `TP ${size}: every rank opened`);
  const run: Run = { logits: [], tokens: [[], []], embedding: new Float32Array(), pages: [], bytesPerPage: 0 };
  const step = async (seqs: SeqStep[]): Promise<StepResult> => {
    const r = await ranks.step(seqs, { returnLogits: true });
    t.same(r.errors, new Array(size).fill(undefined), 'no rank failed');
    const first = r.value as StepResult;
    for (let rank = 1; rank < size; rank++) {
      const other = r.values[rank] as StepResult;
      if (!sameArray(other.tokens, first.tokens) || !sameArray(other.logits, first.logits))
        t.fail(`rank ${rank} reports other tokens or logits than rank 0`);
    }
    run.logits.push(first.logits as Float32Array);
    return first;
  };
  const prompt0 = [5, 17, 3, 42, 8, 1, 77, 23, 11];
  const prompt1 = [9, 60, 2, 31, 4, 88];
  const a = await step([{ tokenIds: prompt0, startPos: 0, pages: pagesOf(0, prompt0.length), sample: true, sampling: greedy, outputIndex: 0 }]);
  run.tokens[0].push(a.tokens[0]);
  let len0 = prompt0.length;
  let len1 = 0;
  const decode = (seq: 0 | 1, len: number): SeqStep => ({
    tokenIds: [run.tokens[seq][run.tokens[seq].length - 1]], startPos: len, pages: pagesOf(seq * 16, len + 1), sample: true,
    sampling: greedy, outputIndex: run.tokens[seq].length,
  });
  const b = await step([
    { tokenIds: prompt1, startPos: 0, pages: pagesOf(16, prompt1.length), sample: true, sampling: greedy, outputIndex: 0 },
    decode(0, len0),
  ]);
  run.tokens[1].push(b.tokens[0]);
  run.tokens[0].push(b.tokens[1]);
  len0 += 1;
  len1 = prompt1.length;
  for (let i = 0; i < DECODE_STEPS; i++) {
    const r = await step([decode(0, len0), decode(1, len1)]);
    run.tokens[0].push(r.tokens[0]);
    run.tokens[1].push(r.tokens[1]);
    len0 += 1;
    len1 += 1;
  }
  const e = await ranks.embed([3, 14, 15, 92, 65]);
  t.same(e.errors, new Array(size).fill(undefined), 'embed on every rank');
  run.embedding = e.value as Float32Array;
  const kv = await ranks.kvInfo();
  run.bytesPerPage = (kv.value as { bytesPerPage: number }).bytesPerPage;
  const exported = await ranks.exportPages([0, 1, 2]);
  run.pages = exported.values as Uint8Array[];
  // A round trip through other pages gives back the same bytes on every rank.
  await ranks.importPages([20, 21, 22], run.pages);
  const back = await ranks.exportPages([20, 21, 22]);
  t.ok(back.values.every((p, r) => sameArray(p, run.pages[r])), 'exported pages import back unchanged on every rank');
  return run;
}

function sameArray(a: ArrayLike<number> | undefined, b: ArrayLike<number> | undefined): boolean {
  if (!a || !b || a.length !== b.length) return a === b;
  for (let i = 0; i < a.length; i++) if (!Object.is(a[i], b[i])) return false;
  return true;
}

/** The largest per-row relative error of the group's logits against TP=1's. */
function worstRowError(ref: Float32Array[], got: Float32Array[], vocab: number): number {
  let worst = 0;
  for (let s = 0; s < ref.length; s++)
    for (let row = 0; row < ref[s].length / vocab; row++)
      worst = Math.max(worst, relError(got[s].subarray(row * vocab, (row + 1) * vocab), ref[s].subarray(row * vocab, (row + 1) * vocab)));
  return worst;
}

/** Rank `rank`'s KV heads of TP=1's exported pages (per page, layer, K/V: [pageSize, kvHeads * headDim] f32). */
function localHeads(full: Uint8Array, spec: ModelSpec, size: number, rank: number): Float32Array {
  const f = new Float32Array(full.buffer, full.byteOffset, full.byteLength / 4);
  const KV = spec.numKvHeads;
  const local = KV >= size ? KV / size : 1;
  const start = KV >= size ? rank * local : Math.floor((rank * KV) / size);
  const D = spec.headDim;
  const rows = f.length / (KV * D);
  const out = new Float32Array(rows * local * D);
  for (let r = 0; r < rows; r++) out.set(f.subarray(r * KV * D + start * D, r * KV * D + (start + local) * D), r * local * D);
  return out;
}

for (const family of Object.keys(FAMILIES) as (keyof typeof FAMILIES)[]) {
  t.test(`${family}: TP 2 and 4 match TP 1`, async (t) => {
    const spec = modelOf(family);
    const ref = await runGroup(t, spec, 1);
    for (const size of [2, 4]) {
      const got = await runGroup(t, spec, size);
      const err = worstRowError(ref.logits, got.logits, spec.vocabSize);
      t.ok(err < 1e-5, `TP ${size}: logits within 1e-5 relative of TP 1 (worst row ${err.toExponential(2)})`);
      t.same(got.tokens, ref.tokens, `TP ${size}: the same ${got.tokens[0].length + got.tokens[1].length} greedy tokens`);
      const embErr = relError(got.embedding, ref.embedding);
      t.ok(embErr < 1e-5, `TP ${size}: embedding within 1e-5 (${embErr.toExponential(2)})`);
      const localKv = spec.numKvHeads >= size ? spec.numKvHeads / size : 1;
      t.equal(got.bytesPerPage, (ref.bytesPerPage * localKv) / spec.numKvHeads, `TP ${size}: a page holds ${localKv} KV head(s)`);
      let pageErr = 0;
      for (let rank = 0; rank < size; rank++) {
        const mine = got.pages[rank];
        pageErr = Math.max(pageErr, relError(new Float32Array(mine.buffer, mine.byteOffset, mine.byteLength / 4), localHeads(ref.pages[0], spec, size, rank)));
      }
      t.ok(pageErr < 1e-5, `TP ${size}: each rank's pages are its KV heads of TP 1's (${pageErr.toExponential(2)})`);
    }
  });
}

t.test('sizes that do not divide the model are refused, naming the numbers', async (t) => {
  // 6 heads, 3 KV heads, FFN 100: TP 4 splits no heads, TP 2 no KV heads, TP 3 no FFN.
  const spec = modelOf('llama', { ...FAMILIES.llama, numHeads: 6, numKvHeads: 3, intermediateSize: 100 });
  const open = (tp: unknown): { code: string; message: string } =>
    codeOf(() => openEngine(spec, { ...options, tp } as EngineOptions).close());
  const cases: [unknown, RegExp][] = [
    [{ rank: 0, size: 4, group: 'g' }, /tp size 4 does not divide the 6 attention heads/],
    [{ rank: 0, size: 2, group: 'g' }, /tp size 2 does not divide the 3 KV heads/],
    [{ rank: 0, size: 3, group: 'g' }, /tp size 3 does not divide the FFN size \(intermediateSize\) 100/],
    [{ rank: 0, size: 0, group: 'g' }, /EngineOptions\.tp\.size must be >= 1, got 0/],
    [{ rank: 2, size: 2, group: 'g' }, /EngineOptions\.tp\.rank 2 out of range \[0, 2\)/],
    [{ rank: 0, size: 2, group: '' }, /EngineOptions\.tp\.group must be non-empty/],
    [{ rank: 0, size: 2 }, /EngineOptions\.tp\.group is missing/],
    [{ rank: 0, size: 2, group: 'g', timeoutMs: 0 }, /EngineOptions\.tp\.timeoutMs must be > 0/],
    [3, /EngineOptions\.tp must be an object/],
  ];
  for (const [tp, pattern] of cases) {
    const e = open(tp);
    t.equal(e.code, 'LLM_ERR_CONFIG', `${JSON.stringify(tp)}: LLM_ERR_CONFIG`);
    t.match(e.message, pattern, e.message);
  }
});

t.test('a rank that never joins: the others fail with LLM_ERR_TP_ABORTED naming it, at the timeout', async (t) => {
  const spec = modelOf('qwen3');
  const started = Date.now();
  const { ranks, opened } = await TpRanks.start(spec, options, { size: 4, group: groupName('missing'), timeoutMs: 300, ranks: [0, 1, 2] });
  t.teardown(() => ranks.close());
  t.ok(Date.now() - started < 20_000, 'no hang');
  for (const e of opened.errors) {
    t.equal(e?.code, 'LLM_ERR_TP_ABORTED');
    // Ranks start at different times: the first to wait out the timeout names every rank it still missed.
    t.match(e?.message, /for rank\(s\) (\d, )*3$/, e?.message ?? 'no error');
  }
});

t.test('tpAbort from the main thread wakes a rank blocked in join, and the name stays dead', async (t) => {
  const spec = modelOf('qwen3');
  const group = groupName('abort');
  const started = Date.now();
  const timer = setTimeout(() => loadAddon().tpAbort(group, 'the supervisor stops the group'), 300);
  const first = await TpRanks.start(spec, options, { size: 2, group, timeoutMs: 120_000, ranks: [0] });
  clearTimeout(timer);
  t.teardown(() => first.ranks.close());
  t.ok(Date.now() - started < 20_000, 'woken long before the timeout');
  t.equal(first.opened.errors[0]?.code, 'LLM_ERR_TP_ABORTED');
  t.match(first.opened.errors[0]?.message, /the supervisor stops the group/);
  const late = await TpRanks.start(spec, options, { size: 2, group, timeoutMs: 120_000, ranks: [1] });
  t.teardown(() => late.ranks.close());
  t.equal(late.opened.errors[0]?.code, 'LLM_ERR_TP_ABORTED', 'a rank joining the aborted name fails at once');
});

t.test('a rank that leaves fails the others\' next step with LLM_ERR_TP_ABORTED naming it', async (t) => {
  const spec = modelOf('llama');
  const { ranks, opened } = await TpRanks.start(spec, options, { size: 2, group: groupName('leave') });
  t.teardown(() => ranks.close());
  t.same(opened.errors, [undefined, undefined]);
  await ranks.closeRank(1);
  const r = await ranks.step([{ tokenIds: [1, 2, 3], startPos: 0, pages: [0], sample: true, sampling: greedy, outputIndex: 0 }]);
  t.equal(r.errors[0]?.code, 'LLM_ERR_TP_ABORTED');
  t.match(r.errors[0]?.message, /rank 1 left the group/, r.errors[0]?.message ?? 'no error');
});
