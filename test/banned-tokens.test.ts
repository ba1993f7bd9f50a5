// Banned token ids in the step descriptor (min_tokens): the packed layout, the addon's boundary checks, and the CPU
// backend's masking: a banned id is never sampled in any mode, and logprobs come from the masked distribution.

import { mkdtempSync, rmSync } from 'node:fs';
import { packFor } from '../src/engine/step.js';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { loadAddon } from '../src/engine/addon.js';
import { openEngine } from '../src/engine/engine.js';
import { Header, MAX_BANNED_TOKENS, SeqField, STEP_HEADER_WORDS, STEP_SEQ_WORDS, packStep } from '../src/engine/step.js';
import type { EngineOptions, SamplingParams, SeqStep } from '../src/engine/types.js';
import { writeTinyModel, type TinyShape } from './helpers/engine-tiny-model.js';
import { codeOf } from './helpers/thrown.js';

const VOCAB = 64;
const shape: TinyShape = {
  architecture: 'llama', vocabSize: VOCAB, hiddenSize: 32, intermediateSize: 48, numLayers: 2, numHeads: 4, numKvHeads: 2,
  headDim: 8, ropeLayout: 'half', ropeScaling: null, tieWordEmbeddings: false, dtype: 'f32',
};
const options: EngineOptions = {
  backend: 'cpu', deviceId: 0, pageSize: 4, numPages: 32, memFractionStatic: 0.5, maxBatchTokens: 64, maxSeqsPerStep: 8, threads: 2,
};
const greedy: SamplingParams = { temperature: 0, topP: 1, topK: 0, minP: 0, seed: 7, logprobs: -1 };

const dir = mkdtempSync(join(tmpdir(), 'banned-tokens-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
const model = writeTinyModel(dir, shape, 11);

/** A one-token sequence on its own page (a fresh context each time: no KV shared between draws). */
function oneToken(page: number, sampling: SamplingParams, outputIndex: number, bannedTokenIds?: number[]): SeqStep {
  return { tokenIds: [5], startPos: 0, pages: [page], sample: true, sampling, outputIndex, ...(bannedTokenIds ? { bannedTokenIds } : {}) };
}

function logSoftmax(z: ArrayLike<number>): number[] {
  const xs = Array.from(z);
  const m = Math.max(...xs);
  const lse = m + Math.log(xs.reduce((a, x) => a + Math.exp(x - m), 0));
  return xs.map((x) => x - lse);
}

/** Token ids by logit, descending (ties to the lower id). */
function ranked(z: ArrayLike<number>): number[] {
  return Array.from(z, (_, i) => i).sort((a, b) => z[b] - z[a] || a - b);
}

t.test('packStep writes the banned section after the pages, seq by seq', async (t) => {
  const seqs: SeqStep[] = [
    { tokenIds: [1, 2, 3], startPos: 0, pages: [0], sample: true, sampling: greedy, outputIndex: 0, bannedTokenIds: [9, 3] },
    { tokenIds: [4], startPos: 4, pages: [1, 2], sample: true, sampling: greedy, outputIndex: 2 },
    { tokenIds: [6], startPos: 0, pages: [3], sample: true, sampling: greedy, outputIndex: 0, bannedTokenIds: [63] },
  ];
  const d = packStep(seqs, 4, { vocabSize: VOCAB, numPages: 32 });
  const seqOff = STEP_HEADER_WORDS + 2 * 5;
  const pagesOff = seqOff + 3 * STEP_SEQ_WORDS;
  t.equal(d[Header.pagesOffset], pagesOff);
  t.equal(d[Header.bannedOffset], pagesOff + 4, 'banned section right after the 4 page entries');
  t.equal(d[Header.numBannedEntries], 3);
  t.equal(d[Header.totalWords], pagesOff + 4 + 3);
  t.equal(d.length, pagesOff + 4 + 3);
  t.same([0, 1, 2].map((s) => d[seqOff + s * STEP_SEQ_WORDS + SeqField.bannedCount]), [2, 0, 1]);
  t.same(Array.from(d.subarray(pagesOff + 4)), [9, 3, 63]);
  t.equal(packStep([seqs[1]], 4)[Header.numBannedEntries], 0, 'no bans: empty section');
});

t.test('packStep refuses bad banned ids, naming the sequence', async (t) => {
  const base: SeqStep = { tokenIds: [1], startPos: 0, pages: [0], sample: true, sampling: greedy, outputIndex: 0 };
  const many = Array.from({ length: MAX_BANNED_TOKENS + 1 }, (_, i) => i);
  const bad: [string, number[], RegExp][] = [
    ['too many', many, /seq 1: 17 bannedTokenIds, at most 16 \(MAX_BANNED_TOKENS\)/],
    ['out of vocab', [3, VOCAB], /seq 1: banned token 64 at index 1 out of range \[0, 64\)/],
    ['negative', [-1], /seq 1: banned token -1 at index 0/],
    ['fraction', [1.5], /seq 1: banned token 1.5/],
    ['duplicate', [4, 8, 4], /seq 1: banned token 4 appears twice/],
  ];
  for (const [name, ids, pattern] of bad) {
    const e = codeOf(() => packStep([base, { ...base, pages: [1], bannedTokenIds: ids }], 4, { vocabSize: VOCAB }));
    t.equal(e.code, 'LLM_ERR_STEP_INVALID', name);
    t.match(e.message, pattern, `${name}: ${e.message}`);
  }
  t.ok(packStep([{ ...base, bannedTokenIds: many.slice(1) }], 4, { vocabSize: VOCAB }), 'exactly the cap is fine');
});

t.test('the addon checks every banned field and stays usable', async (t) => {
  const addon = loadAddon();
  const native = new addon.NativeEngine(model.spec, options);
  t.teardown(() => native.close());
  const seqs: SeqStep[] = [
    { tokenIds: [1, 2], startPos: 0, pages: [0], sample: true, sampling: greedy, outputIndex: 0, bannedTokenIds: [10, 20] },
    { tokenIds: [3], startPos: 0, pages: [1], sample: true, sampling: greedy, outputIndex: 0, bannedTokenIds: [30] },
  ];
  const good = packStep(seqs, 4);
  const ok = native.step(good);
  const seqOff = STEP_HEADER_WORDS + 2 * 3;
  const rec = (s: number, f: number): number => seqOff + s * STEP_SEQ_WORDS + f;
  const bannedOff = good[Header.bannedOffset];
  const grow = (d: Int32Array, extra: number[]): Int32Array => {
    const out = new Int32Array(d.length + extra.length);
    out.set(d);
    out.set(extra, d.length);
    out[Header.totalWords] = out.length;
    return out;
  };
  const mutations: [string, (d: Int32Array) => Int32Array, RegExp][] = [
    ['id out of vocab', (d) => ((d[bannedOff + 1] = VOCAB), d), /seq 0: banned token 64 at index 1 out of range \[0, 64\)/],
    ['negative id', (d) => ((d[bannedOff + 2] = -3), d), /seq 1: banned token -3 at index 0 out of range/],
    ['duplicate id', (d) => ((d[bannedOff + 1] = 10), d), /seq 0: banned token 10 appears twice/],
    ['bannedCount above the cap', (d) => ((d[rec(1, SeqField.bannedCount)] = 17), d), /seq 1: bannedCount 17 out of range \[0, 16\]/],
    ['negative bannedCount', (d) => ((d[rec(0, SeqField.bannedCount)] = -1), d), /seq 0: bannedCount -1/],
    ['bannedCount past the section', (d) => ((d[rec(1, SeqField.bannedCount)] = 2), d), /seq 1: banned ids run past header.numBannedEntries 3/],
    ['bannedCount short of the section', (d) => ((d[rec(1, SeqField.bannedCount)] = 0), d), /header.numBannedEntries 3 != sum of bannedCount 2/],
    ['numBannedEntries beyond the buffer', (d) => ((d[Header.numBannedEntries] = 4), d), /header\.maskOffset \d+ != \d+/], // the sections after it no longer line up
    ['numBannedEntries negative', (d) => ((d[Header.numBannedEntries] = -1), d), /header.numBannedEntries -1 out of range \[0, 32\]/],
    ['numBannedEntries above seqs * cap', (d) => ((d[Header.numBannedEntries] = 33), d), /header.numBannedEntries 33 out of range \[0, 32\]/],
    ['bannedOffset', (d) => ((d[Header.bannedOffset] = bannedOff - 1), d), /header.bannedOffset/],
    ['extra words after the section', (d) => grow(d, [5]), /header counts imply/],
  ];
  for (const [name, mutate, pattern] of mutations) {
    const e = codeOf(() => native.step(mutate(good.slice())));
    t.equal(e.code, 'LLM_ERR_STEP_INVALID', `${name}: coded error`);
    t.match(e.message, pattern, `${name}: message names it (${e.message})`);
  }
  t.same(Array.from(native.step(good).tokens), Array.from(ok.tokens), 'engine still works after every rejected step');
});

t.test('CPU engine: a banned argmax is skipped; the returned logits are masked, other sequences untouched', async (t) => {
  const engine = openEngine(model.spec, options);
  t.teardown(() => engine.close());
  const free = engine.step(packFor(engine, [oneToken(0, greedy, 0), oneToken(1, greedy, 0)], { returnLogits: true }));
  const z = free.logits!.subarray(0, VOCAB);
  const order = ranked(z);
  const x = order[0];
  t.equal(free.tokens[0], x, 'greedy picks the argmax X without a ban');
  const banned = engine.step(packFor(engine, [oneToken(0, greedy, 0, [x]), oneToken(1, greedy, 0)], { returnLogits: true }));
  t.not(banned.tokens[0], x, 'X banned: greedy picks something else');
  t.equal(banned.tokens[0], order[1], 'the best allowed token');
  t.equal(banned.tokens[1], x, 'the other sequence in the step is not affected');
  t.equal(banned.logits![x], -Infinity, 'returned logits carry the mask');
  const rest = Array.from(banned.logits!.subarray(0, VOCAB)).map((v, i) => (i === x ? z[i] : v));
  t.same(rest, Array.from(z), 'every other logit unchanged');
  t.same(Array.from(banned.logits!.subarray(VOCAB)), Array.from(free.logits!.subarray(VOCAB)));
  const top1 = engine.step(packFor(engine, [oneToken(0, { ...greedy, temperature: 1, topK: 1 }, 0, [x, order[1]])]));
  t.equal(top1.tokens[0], order[2], 'top-k 1 (greedy) skips both banned leaders');
});

t.test('CPU engine: every sampling mode respects the ban; frequencies follow the masked distribution', async (t) => {
  const engine = openEngine(model.spec, options);
  t.teardown(() => engine.close());
  const z = engine.step(packFor(engine, [oneToken(0, greedy, 0)], { returnLogits: true })).logits!;
  const order = ranked(z);
  const ban = order.slice(0, 4); // the four most likely tokens
  const modes: [string, SamplingParams][] = [
    ['temperature 1', { ...greedy, temperature: 1 }],
    ['temperature 0.3', { ...greedy, temperature: 0.3 }],
    ['top-k 3', { ...greedy, temperature: 1, topK: 3 }],
    ['top-p 0.3', { ...greedy, temperature: 1, topP: 0.3 }],
    ['min-p 0.2', { ...greedy, temperature: 1, minP: 0.2 }],
    ['top-k 10 + top-p 0.8 + min-p 0.1', { ...greedy, temperature: 0.8, topK: 10, topP: 0.8, minP: 0.1 }],
  ];
  const DRAWS = 16000; // sampling noise in total variation over ~60 tokens: about 0.02
  for (const [name, sampling] of modes) {
    // The distribution sampling.h defines over the masked logits (banned ids at -inf).
    const masked = Array.from(z, (v, i) => (ban.includes(i) ? -Infinity : v));
    const allowed = ranked(masked).filter((i) => !ban.includes(i));
    const m = masked[allowed[0]];
    const prob = masked.map((v) => Math.exp((v - m) / sampling.temperature));
    let kept = sampling.topK > 0 ? allowed.slice(0, sampling.topK) : allowed.slice();
    if (sampling.topP < 1) {
      const mass = kept.reduce((a, i) => a + prob[i], 0);
      let cum = 0;
      let n = 0;
      while (n < kept.length) {
        cum += prob[kept[n++]];
        if (cum >= sampling.topP * mass) break;
      }
      kept = kept.slice(0, n);
    }
    if (sampling.minP > 0) kept = kept.filter((i) => prob[i] >= sampling.minP * prob[kept[0]]);
    const total = kept.reduce((a, i) => a + prob[i], 0);
    const expected = new Array<number>(VOCAB).fill(0);
    for (const i of kept) expected[i] = prob[i] / total;

    const counts = new Array<number>(VOCAB).fill(0);
    for (let d = 0; d < DRAWS; d += 8) {
      const seqs = Array.from({ length: 8 }, (_, s) => oneToken(s, sampling, d + s, ban));
      const r = engine.step(packFor(engine, seqs));
      for (const tok of r.tokens) counts[tok]++;
    }
    t.same(ban.map((i) => counts[i]), [0, 0, 0, 0], `${name}: no banned id drawn in ${DRAWS} draws`);
    const tv = counts.reduce((a, c, i) => a + Math.abs(c / DRAWS - expected[i]), 0) / 2;
    t.ok(tv < 0.05, `${name}: total variation from the masked distribution ${tv.toFixed(4)} < 0.05`);
  }
});

t.test('CPU engine: logprobs come from the masked distribution', async (t) => {
  const engine = openEngine(model.spec, options);
  t.teardown(() => engine.close());
  const z = engine.step(packFor(engine, [oneToken(0, greedy, 0)], { returnLogits: true })).logits!;
  const order = ranked(z);
  const ban = [order[0], order[2]];
  const masked = Array.from(z, (v, i) => (ban.includes(i) ? -Infinity : v));
  const lp = logSoftmax(masked);
  const r = engine.step(packFor(engine, [oneToken(0, { ...greedy, logprobs: 3 }, 0, ban)]));
  t.equal(r.tokens[0], order[1]);
  t.ok(Math.abs(r.logprobs[0] - lp[order[1]]) < 1e-5, `chosen logprob ${r.logprobs[0]} is the masked log-softmax ${lp[order[1]]}`);
  t.ok(r.logprobs[0] > logSoftmax(z)[order[1]], 'renormalised over the allowed tokens: higher than the raw logprob');
  t.same(Array.from(r.topIds), [order[1], order[3], order[4]], 'top-n skips the banned ids');
  Array.from(r.topLogprobs).forEach((v, j) => t.ok(Math.abs(v - lp[r.topIds[j]]) < 1e-5, `top ${j} logprob`));
  const sampled = engine.step(packFor(engine, [oneToken(0, { ...greedy, temperature: 1, seed: 3, logprobs: 0 }, 5, ban)]));
  t.notOk(ban.includes(sampled.tokens[0]));
  t.ok(Math.abs(sampled.logprobs[0] - lp[sampled.tokens[0]]) < 1e-5, 'a sampled token reports its masked logprob too');
});
