// The addon boundary: every bad field of a step descriptor, and every bad model file or option, is a coded error
// naming what is wrong, and the engine keeps working afterwards. Also KV page export/import, embed, memory info.

import { copyFileSync, mkdtempSync, rmSync, truncateSync } from 'node:fs';
import { packFor } from '../src/engine/step.js';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { LlmError } from '../src/errors.js';
import { loadAddon } from '../src/engine/addon.js';
import { openEngine } from '../src/engine/engine.js';
import { Header, SeqField, STEP_HEADER_WORDS, STEP_SEQ_WORDS, packStep } from '../src/engine/step.js';
import type { EngineOptions, ModelSpec, SamplingParams, SeqStep } from '../src/engine/types.js';
import { referenceEmbedding, relError, writeTinyModel, type TinyShape } from './helpers/engine-tiny-model.js';
import { codeOf } from './helpers/thrown.js';

const shape: TinyShape = {
  architecture: 'qwen3', vocabSize: 64, hiddenSize: 32, intermediateSize: 48, numLayers: 2, numHeads: 4, numKvHeads: 2,
  headDim: 8, ropeLayout: 'half', ropeScaling: null, tieWordEmbeddings: false, dtype: 'f32',
};
const options: EngineOptions = {
  backend: 'cpu', deviceId: 0, pageSize: 4, numPages: 32, memFractionStatic: 0.5, maxBatchTokens: 64, maxSeqsPerStep: 4, threads: 2,
};
const greedy: SamplingParams = { temperature: 0, topP: 1, topK: 0, minP: 0, seed: 3, logprobs: 2 };

const dir = mkdtempSync(join(tmpdir(), 'native-step-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
const model = writeTinyModel(dir, shape, 5);

t.test('step descriptor: each bad field is LLM_ERR_STEP_INVALID naming it; the engine stays usable', async (t) => {
  const addon = loadAddon();
  const native = new addon.NativeEngine(model.spec, options);
  t.teardown(() => native.close());
  const seqs: SeqStep[] = [
    { tokenIds: [1, 2, 3, 4, 5], startPos: 0, pages: [3, 7], sample: true, sampling: greedy, outputIndex: 0 },
    { tokenIds: [9], startPos: 6, pages: [10, 11], sample: true, sampling: { ...greedy, temperature: 0.8, topP: 0.9 }, outputIndex: 4 },
  ];
  const good = packStep(seqs, options.pageSize);
  const ok = native.step(good);
  t.equal(ok.tokens.length, 2);
  t.equal(ok.topN, 2);
  const seqOff = STEP_HEADER_WORDS + 2 * 6;
  const rec = (s: number, f: number): number => seqOff + s * STEP_SEQ_WORDS + f;
  const pagesOff = seqOff + 2 * STEP_SEQ_WORDS;
  const f32bits = (x: number): number => new Int32Array(Float32Array.of(x).buffer)[0];
  const mutations: [string, (d: Int32Array) => void, RegExp][] = [
    ['magic', (d) => (d[Header.magic] = 0), /magic/],
    ['version', (d) => (d[Header.version] = 9), /version 9/],
    ['numSeqs too many', (d) => (d[Header.numSeqs] = 5), /numSeqs 5 out of range \[1, 4\]/],
    ['numTokens too many', (d) => (d[Header.numTokens] = 65), /numTokens 65/],
    ['pageSize', (d) => (d[Header.pageSize] = 8), /pageSize 8 differs/],
    ['flags', (d) => (d[Header.flags] = 6), /flags/],
    ['totalWords', (d) => (d[Header.totalWords] = 3), /totalWords/],
    ['tokensOffset', (d) => (d[Header.tokensOffset] = 17), /tokensOffset/],
    ['pagesOffset', (d) => (d[Header.pagesOffset] = 1), /pagesOffset/],
    ['token out of vocab', (d) => (d[STEP_HEADER_WORDS + 2] = 64), /seq 0: token 64 at index 2 out of range \[0, 64\)/],
    ['negative token', (d) => (d[STEP_HEADER_WORDS + 5] = -1), /seq 1: token -1/],
    ['position', (d) => (d[STEP_HEADER_WORDS + 6 + 1] = 7), /seq 0: position 7 at index 1/],
    ['qStart', (d) => (d[rec(1, SeqField.qStart)] = 4), /seq 1: qStart 4/],
    ['qLen', (d) => (d[rec(0, SeqField.qLen)] = 0), /seq 0: qLen 0/],
    ['kvLen < qLen', (d) => (d[rec(0, SeqField.kvLen)] = 4), /seq 0: kvLen 4 < qLen 5/],
    ['numPages', (d) => (d[rec(1, SeqField.numPages)] = 3), /seq 1: numPages 3/],
    ['lastPageLen', (d) => (d[rec(1, SeqField.lastPageLen)] = 4), /seq 1: lastPageLen 4 != 3/],
    ['pageStart', (d) => (d[rec(1, SeqField.pageStart)] = 0), /seq 1: pageStart 0/],
    ['page out of range', (d) => (d[pagesOff + 1] = 9999), /seq 0: page 9999 out of range \[0, 32\)/],
    ['page twice in a sequence', (d) => (d[pagesOff + 1] = 3), /seq 0: page 3 appears twice/],
    ['written page shared', (d) => (d[pagesOff + 3] = 7), /seq 1: page 7 is written this step and also used by seq 0/],
    ['seq flags', (d) => (d[rec(0, SeqField.flags)] = 4), /seq 0: flags/],
    ['temperature', (d) => (d[rec(0, SeqField.temperature)] = f32bits(-1)), /seq 0: temperature/],
    ['topP', (d) => (d[rec(1, SeqField.topP)] = f32bits(0)), /seq 1: topP/],
    ['minP', (d) => (d[rec(1, SeqField.minP)] = f32bits(1.5)), /seq 1: minP/],
    ['logprobs', (d) => (d[rec(0, SeqField.logprobs)] = 65), /seq 0: logprobs 65/],
    ['outputIndex', (d) => (d[rec(1, SeqField.outputIndex)] = -2), /seq 1: outputIndex -2/],
  ];
  for (const [name, mutate, pattern] of mutations) {
    const bad = good.slice();
    mutate(bad);
    const e = codeOf(() => native.step(bad));
    t.equal(e.code, 'LLM_ERR_STEP_INVALID', `${name}: coded error`);
    t.match(e.message, pattern, `${name}: message names it (${e.message})`);
  }
  t.equal(codeOf(() => native.step(good.subarray(0, 8))).code, 'LLM_ERR_STEP_INVALID', 'short buffer');
  t.equal(codeOf(() => native.step(new Float32Array(good.length) as unknown as Int32Array)).code, 'LLM_ERR_BAD_REQUEST', 'wrong array type');
  // The pool is intact: the good step still runs and gives the same greedy token for seq 0.
  t.equal(native.step(good).tokens[0], ok.tokens[0], 'engine still works after every rejected step');
});

t.test('packStep checks on the TS side', async (t) => {
  const base: SeqStep = { tokenIds: [1, 2], startPos: 0, pages: [0], sample: true, sampling: greedy, outputIndex: 0 };
  const bad: [string, SeqStep[], RegExp][] = [
    ['no sequences', [], /at least one/],
    ['empty tokens', [{ ...base, tokenIds: [] }], /seq 0: tokenIds is empty/],
    ['page count', [{ ...base, pages: [0, 1] }], /seq 0: 2 pages given, 1 needed/],
    ['page range', [{ ...base, pages: [40] }], /seq 0: page 40 out of range \[0, 32\)/],
    ['token range', [{ ...base, tokenIds: [1, 99] }], /seq 0: token 99 at index 1/],
    ['topP', [{ ...base, sampling: { ...greedy, topP: 1.5 } }], /seq 0: sampling.topP/],
    ['seed', [{ ...base, sampling: { ...greedy, seed: -1 } }], /seq 0: sampling.seed/],
  ];
  for (const [name, seqs, pattern] of bad) {
    const e = codeOf(() => packStep(seqs, 4, { vocabSize: 64, numPages: 32 }));
    t.equal(e.code, 'LLM_ERR_STEP_INVALID', name);
    t.match(e.message, pattern, name);
  }
});

t.test('model and option errors are coded and name the file, tensor or field', async (t) => {
  const withTensor = (name: string, patch: Partial<ModelSpec['tensors'][number]>): ModelSpec => ({
    ...model.spec,
    tensors: model.spec.tensors.map((x) => (x.name === name ? { ...x, ...patch } : x)),
  });
  const up = 'model.layers.1.mlp.up_proj.weight';
  const cases: [string, () => unknown, string, RegExp][] = [
    ['missing file', () => openEngine(withTensor(up, { file: join(dir, 'nope.bin') }), options), 'LLM_ERR_MODEL_NOT_FOUND', /nope\.bin/],
    ['shape mismatch', () => openEngine(withTensor(up, { shape: [32, 48] }), options), 'LLM_ERR_SHAPE_MISMATCH',
      /model\.layers\.1\.mlp\.up_proj\.weight in .*weights\.bin: expected \[48, 32\], got \[32, 48\]/],
    ['missing tensor', () => openEngine({ ...model.spec, tensors: model.spec.tensors.filter((x) => x.name !== up) }, options),
      'LLM_ERR_MODEL_FORMAT', /model\.layers\.1\.mlp\.up_proj\.weight is missing/],
    ['dtype', () => openEngine(withTensor(up, { dtype: 'q4_0' as 'f32' }), options), 'LLM_ERR_UNSUPPORTED_DTYPE', /up_proj.*q4_0/],
    ['architecture', () => openEngine({ ...model.spec, architecture: 'gpt2' as 'llama' }, options), 'LLM_ERR_UNSUPPORTED_ARCH', /gpt2/],
    ['heads', () => openEngine({ ...model.spec, numKvHeads: 3 }, options), 'LLM_ERR_MODEL_FORMAT', /numKvHeads 3/],
    ['cuda not built', () => openEngine(model.spec, { ...options, backend: 'cuda' }), 'LLM_ERR_NATIVE_BUILD', /cuda/],
    ['page size', () => openEngine(model.spec, { ...options, pageSize: 0 }), 'LLM_ERR_CONFIG', /pageSize/],
    ['mem fraction', () => openEngine(model.spec, { ...options, memFractionStatic: 2 }), 'LLM_ERR_CONFIG', /memFractionStatic/],
    ['workspace', () => openEngine(model.spec, { ...options, maxBatchTokens: 2_000_000_000 }), 'LLM_ERR_OUT_OF_MEMORY', /maxBatchTokens 2000000000/],
  ];
  if (loadAddon().backends.includes('cuda')) cases.splice(6, 1);
  for (const [name, fn, code, pattern] of cases) {
    const e = codeOf(fn);
    t.equal(e.code, code, `${name}: ${code}`);
    t.match(e.message, pattern, `${name}: ${e.message}`);
  }
  // A truncated copy of the weight file.
  const cut = join(dir, 'cut.bin');
  copyFileSync(model.spec.tensors[0].file, cut);
  truncateSync(cut, 1000);
  const spec: ModelSpec = { ...model.spec, tensors: model.spec.tensors.map((x) => ({ ...x, file: cut })) };
  const e = codeOf(() => openEngine(spec, options));
  t.equal(e.code, 'LLM_ERR_MODEL_FORMAT');
  t.match(e.message, /cut\.bin.*runs past the end of the file/);
  openEngine(model.spec, options).close();
  t.pass('the valid model still opens after all those failures');
});

t.test('KV export/import round trip, embed, memory info, close', async (t) => {
  const engine = openEngine(model.spec, options);
  const prompt = [5, 6, 7, 8, 9, 10];
  const a = engine.step(packFor(engine, [{ tokenIds: prompt, startPos: 0, pages: [0, 1], sample: true, sampling: greedy, outputIndex: 0 }], { returnLogits: true }));
  const data = engine.exportPages([0, 1]);
  t.equal(data.length, 2 * engine.kv.bytesPerPage);
  t.equal(engine.kv.bytesPerPage, shape.numLayers * 2 * options.pageSize * shape.numKvHeads * shape.headDim * 4);
  engine.importPages([20, 21], data);
  // Decoding on the imported copy equals decoding on the original pages.
  const next = a.tokens[0];
  const d1 = engine.step(packFor(engine, [{ tokenIds: [next], startPos: 6, pages: [0, 1], sample: true, sampling: greedy, outputIndex: 1 }], { returnLogits: true }));
  const d2 = engine.step(packFor(engine, [{ tokenIds: [next], startPos: 6, pages: [20, 21], sample: true, sampling: greedy, outputIndex: 1 }], { returnLogits: true }));
  t.same(Array.from(d2.logits as Float32Array), Array.from(d1.logits as Float32Array), 'imported pages give identical logits');
  t.equal(codeOf(() => engine.importPages([0], new Uint8Array(3))).code, 'LLM_ERR_KV_TRANSFER');
  t.equal(codeOf(() => engine.exportPages([32])).code, 'LLM_ERR_KV_TRANSFER');
  const emb = engine.embed(prompt);
  t.equal(emb.length, shape.hiddenSize);
  t.ok(Math.abs(Math.hypot(...emb) - 1) < 1e-5, 'embedding is L2-normalised');
  t.same(Array.from(engine.embed(prompt)), Array.from(emb), 'embedding is deterministic');
  const embErr = relError(emb, referenceEmbedding(model, prompt));
  t.ok(embErr < 1e-4, `embedding matches the float64 reference (relative error ${embErr.toExponential(2)})`);
  const m = engine.memoryInfo();
  t.equal(m.kvPoolBytes, options.numPages! * engine.kv.bytesPerPage);
  t.ok(m.weightsBytes > 0 && m.workspaceBytes > 0);
  t.equal(m.deviceFreeBytes, null);
  engine.close();
  const closed = codeOf(() => engine.step(packFor(engine, [{ tokenIds: [1], startPos: 0, pages: [0], sample: true, sampling: greedy, outputIndex: 0 }])));
  t.equal(closed.code, 'LLM_ERR_SHUTDOWN');
  t.ok(new LlmError('LLM_ERR_SHUTDOWN', 'x') instanceof Error);
});

t.test('KV pool sized from memFractionStatic when numPages is absent', async (t) => {
  const { numPages: _n, ...rest } = options;
  const engine = openEngine(model.spec, { ...rest, memFractionStatic: 0.01 });
  t.ok(engine.kv.numPages > 0, `numPages ${engine.kv.numPages}`);
  engine.close();
});

t.test('the addon loads and runs in a worker thread next to the main thread', async (t) => {
  const { Worker } = await import('node:worker_threads');
  const { addonPath } = await import('../src/engine/addon.js');
  const code = `
    const { parentPort, workerData } = require('node:worker_threads');
    const addon = require(workerData.path);
    const engine = new addon.NativeEngine(workerData.spec, workerData.options);
    const r = engine.step(Int32Array.from(workerData.desc));
    engine.close();
    parentPort.postMessage(Array.from(r.tokens));`;
  const desc = packStep([{ tokenIds: [1, 2, 3], startPos: 0, pages: [0], sample: true, sampling: greedy, outputIndex: 0 }], options.pageSize);
  const here = openEngine(model.spec, options);
  const mine = Array.from(here.step(packFor(here, [{ tokenIds: [1, 2, 3], startPos: 0, pages: [0], sample: true, sampling: greedy, outputIndex: 0 }])).tokens);
  const theirs = await new Promise<number[]>((resolve, reject) => {
    const w = new Worker(code, { eval: true, workerData: { path: addonPath(), spec: model.spec, options, desc: Array.from(desc) } });
    w.once('message', resolve);
    w.once('error', reject);
  });
  here.close();
  t.same(theirs, mine, 'same greedy token in the worker');
});

t.test('seeded sampling replays whatever the batch around it', async (t) => {
  const engine = openEngine(model.spec, options);
  t.teardown(() => engine.close());
  const hot: SamplingParams = { temperature: 1.0, topP: 0.95, topK: 0, minP: 0, seed: 123456789012, logprobs: 0 };
  // Sequence X: a cached 6-token prefix in pages [0, 1]; its next step is replayed inside different batches.
  engine.step(packFor(engine, [{ tokenIds: [3, 1, 4, 1, 5, 9], startPos: 0, pages: [0, 1], sample: false, sampling: hot, outputIndex: 0 }]));
  const x = (outputIndex: number): SeqStep => ({ tokenIds: [2], startPos: 6, pages: [0, 1], sample: true, sampling: hot, outputIndex });
  const other = (tokens: number[], page: number): SeqStep => ({
    tokenIds: tokens, startPos: 0, pages: Array.from({ length: Math.ceil(tokens.length / options.pageSize) }, (_, i) => page + i),
    sample: true, sampling: { ...hot, seed: 5 }, outputIndex: 0,
  });
  const inA: number[] = [];
  const inB: number[] = [];
  let logitsA: Float32Array | undefined;
  let logitsB: Float32Array | undefined;
  for (let i = 0; i < 24; i++) {
    const a = engine.step(packFor(engine, [x(i), other([7, 8], 10)], { returnLogits: true }));
    const b = engine.step(packFor(engine, [other([9, 9, 9, 9, 9], 12), other([1], 16), x(i)], { returnLogits: true }));
    inA.push(a.tokens[0]);
    inB.push(b.tokens[2]);
    logitsA = (a.logits as Float32Array).slice(0, shape.vocabSize);
    logitsB = (b.logits as Float32Array).slice(2 * shape.vocabSize, 3 * shape.vocabSize);
  }
  t.same(Array.from(logitsB as Float32Array), Array.from(logitsA as Float32Array), 'bitwise-equal logits in both batches');
  t.same(inB, inA, 'same sampled tokens for the same (seed, outputIndex)');
  t.ok(new Set(inA).size > 1, 'different output indices draw different tokens');
});
