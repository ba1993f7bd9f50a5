// Pipelined stepping (Engine.stepBegin / stepEnd): step N + 1 begun before step N ended, its decode inputs given as
// placeholders for N's samples, produces exactly what the same steps produce one at a time with the tokens filled
// in; and every misuse (placeholders with nothing to name, too many steps in flight, other calls while steps are
// begun) is a coded error that leaves the engine usable.
import { mkdtempSync, rmSync } from 'node:fs';
import { packFor } from '../src/engine/step.js';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { openEngine } from '../src/engine/engine.js';
import type { Engine, EngineOptions, SamplingParams, SeqStep, StepResult } from '../src/engine/types.js';
import { placeholderFor } from '../src/scheduler/placeholder.js';
import { TINY_SHAPES, writeTinyModel } from './helpers/engine-tiny-model.js';
import { codeOf } from './helpers/thrown.js';

const options: EngineOptions = {
  backend: 'cpu', deviceId: 0, pageSize: 4, numPages: 64, memFractionStatic: 0.5, maxBatchTokens: 64, maxSeqsPerStep: 4, threads: 2,
};
const greedy: SamplingParams = { temperature: 0, topP: 1, topK: 0, minP: 0, seed: null, logprobs: 2 };
const sampled: SamplingParams = { temperature: 0.9, topP: 0.95, topK: 0, minP: 0, seed: 11, logprobs: -1 };

const dir = mkdtempSync(join(tmpdir(), 'engine-pipelined-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
const model = writeTinyModel(dir, TINY_SHAPES.qwen3, 7);
const open = (): Engine => openEngine(model.spec, options);

const prompts = [[3, 9, 27, 5, 14], [8, 1], [40, 41, 42, 43, 44, 45, 46]];
const sampling = [greedy, sampled, greedy];
const pagesOf = (s: number, len: number): number[] => Array.from({ length: Math.ceil(len / options.pageSize) }, (_, i) => s * 16 + i);
const DECODE_STEPS = 6;

/** Step k (0: prefill of every prompt; k >= 1: one decode token per sequence); `input(s)` gives sequence s's token. */
function stepAt(k: number, input: (s: number) => number): SeqStep[] {
  return prompts.map((p, s) => {
    if (k === 0) return { tokenIds: p, startPos: 0, pages: pagesOf(s, p.length), sample: true, sampling: sampling[s], outputIndex: 0 };
    const pos = p.length + k - 1;
    return { tokenIds: [input(s)], startPos: pos, pages: pagesOf(s, pos + 1), sample: true, sampling: sampling[s], outputIndex: k };
  });
}

t.test('two steps in flight with placeholders = the same steps one at a time', async (t) => {
  const one = open();
  t.teardown(() => one.close());
  const expected: StepResult[] = [];
  for (let k = 0; k <= DECODE_STEPS; k++) expected.push(one.step(packFor(one, stepAt(k, (s) => expected[k - 1].tokens[s]))));

  const piped = open();
  t.teardown(() => piped.close());
  const got: StepResult[] = [];
  piped.stepBegin!(packFor(piped, stepAt(0, () => -1), { placeholders: true }));
  for (let k = 1; k <= DECODE_STEPS; k++) {
    piped.stepBegin!(packFor(piped, stepAt(k, (s) => placeholderFor(s)), { placeholders: true })); // begun while step k - 1 is still in flight
    t.equal(typeof piped.stepReady!(), 'boolean');
    got.push(piped.stepEnd!());
  }
  got.push(piped.stepEnd!());
  for (let k = 0; k <= DECODE_STEPS; k++) {
    t.same(Array.from(got[k].tokens), Array.from(expected[k].tokens), `step ${k} tokens`);
    t.same(Array.from(got[k].logprobs), Array.from(expected[k].logprobs), `step ${k} logprobs`);
    t.same(Array.from(got[k].topIds), Array.from(expected[k].topIds), `step ${k} top ids`);
  }
});

t.test('misuse is LLM_ERR_STEP_INVALID naming the problem, and the engine keeps working', async (t) => {
  const e = open();
  t.teardown(() => e.close());
  const decodeWith = (tok: number): SeqStep[] => [
    { tokenIds: [tok], startPos: 4, pages: pagesOf(0, 5), sample: true, sampling: greedy, outputIndex: 1 },
  ];
  const invalid = (fn: () => unknown, re: RegExp, what: string) => {
    const r = codeOf(fn);
    t.equal(r.code, 'LLM_ERR_STEP_INVALID', what);
    t.match(r.message, re, what);
  };
  invalid(() => e.stepBegin!(packFor(e, decodeWith(placeholderFor(0)), { placeholders: true })), /seq 0: token placeholder -1 at index 0 names row 0 of the previous step, which did not run/, 'placeholder before any step');
  invalid(() => e.stepEnd!(), /no step was begun/, 'stepEnd with nothing begun');
  invalid(() => e.stepReady!(), /no step was begun/, 'stepReady with nothing begun');
  invalid(() => e.step(packFor(e, decodeWith(-1))), /seq 0: token -1 at index 0 out of range/, 'step() takes no placeholders');

  // Row 1 of this step does not sample; row 2 does not exist.
  e.stepBegin!(packFor(e, [
    { tokenIds: [3, 9, 27, 5], startPos: 0, pages: pagesOf(0, 4), sample: true, sampling: greedy, outputIndex: 0 },
    { tokenIds: [8, 1], startPos: 0, pages: pagesOf(1, 2), sample: false, sampling: greedy, outputIndex: 0 },
  ], { placeholders: true }));
  invalid(() => e.stepBegin!(packFor(e, decodeWith(placeholderFor(1)), { placeholders: true })), /names row 1 of the previous step, which had 2 rows and sampled no token there/, 'non-sampling row');
  // A failed begin leaves nothing a placeholder may name.
  invalid(() => e.stepBegin!(packFor(e, decodeWith(placeholderFor(0)), { placeholders: true })), /names row 0 of the previous step, which did not run \(or failed\)/, 'after a failed begin');
  const first = e.stepEnd!();
  t.equal(first.tokens[1], -1, 'the non-sampling row has no token');

  e.stepBegin!(packFor(e, decodeWith(first.tokens[0]), { placeholders: true }));
  e.stepBegin!(packFor(e, [{ tokenIds: [placeholderFor(0)], startPos: 5, pages: pagesOf(0, 6), sample: true, sampling: greedy, outputIndex: 2 }], { placeholders: true }));
  invalid(() => e.stepBegin!(packFor(e, decodeWith(1), { placeholders: true })), /2 steps begun and not ended \(at most 2\)/, 'a third step in flight');
  invalid(() => e.step(packFor(e, decodeWith(1))), /2 step\(s\) begun and not ended: call stepEnd first/, 'step() while steps are begun');
  invalid(() => e.exportPages([0]), /begun and not ended/, 'exportPages while steps are begun');
  invalid(() => e.embed([[1, 2]], { pooling: 'last', normalize: true }), /begun and not ended/, 'embed while steps are begun');
  const a = e.stepEnd!();
  const b = e.stepEnd!();
  t.equal(a.tokens.length, 1);
  t.equal(b.tokens.length, 1);
  // Idle again: every call works.
  t.equal(e.exportPages([0]).length, e.kv.bytesPerPage);
  t.equal(e.step(packFor(e, decodeWith(b.tokens[0]))).tokens.length, 1);
});
