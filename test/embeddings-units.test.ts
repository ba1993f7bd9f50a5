// The embedding pieces on their own: make-model's embedding shapes, the pooling a checkpoint declares, the batcher's
// passes, and the worker's input, context and `dimensions` rules.
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { EmbedBatcher } from '../src/engine/embed-batcher.js';
import { readEmbeddingConfig, type EmbeddingModel } from '../src/engine/embedding-config.js';
import { makeModel } from '../src/engine/make-model.js';
import { loadModelSpec } from '../src/engine/model.js';
import { readSafetensorsDir } from '../src/engine/safetensors.js';
import { loadTokenizer } from '../src/tokenizer/index.js';
import { parseHfConfig } from '../src/engine/hf-config.js';
import { healthCheckPayload } from '../src/protocol/health.js';
import { applyDimensions, embeddingInputs, embeddingServing, fitContext } from '../src/worker/embedding.js';
import { codeOf } from './helpers/thrown.js';

const dir = mkdtempSync(join(tmpdir(), 'embeddings-units-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));

t.test('make-model writes a Qwen3-Embedding-style checkpoint', async (t) => {
  const out = join(dir, 'mean');
  makeModel({ shape: 'qwen3-embedding-tiny', seed: 1, outDir: out, pooling: 'mean' });
  const cfg = JSON.parse(readFileSync(join(out, 'config.json'), 'utf8')) as { architectures: string[] };
  t.same(cfg.architectures, ['Qwen3Model'], 'saved as the bare decoder');
  const names = readSafetensorsDir(out).map((x) => x.name);
  t.ok(names.includes('embed_tokens.weight') && names.includes('norm.weight') && !names.some((n) => n.startsWith('model.') || n === 'lm_head.weight'), 'tensor names without "model.", no LM head');
  t.same(JSON.parse(readFileSync(join(out, 'modules.json'), 'utf8')).map((m: { path: string }) => m.path), ['', '1_Pooling', '2_Normalize']);
  t.match(JSON.parse(readFileSync(join(out, '1_Pooling', 'config.json'), 'utf8')), { word_embedding_dimension: 64, pooling_mode_mean_tokens: true, pooling_mode_lasttoken: false });
  t.ok(existsSync(join(out, 'tokenizer.json')));
  const spec = await loadModelSpec(out);
  t.equal(spec.tensors[0]!.name, 'model.embed_tokens.weight', 'the loader maps the bare names to the canonical ones');
  t.match(readEmbeddingConfig(out, spec.architecture), { pooling: 'mean', normalize: true, matryoshka: true, matryoshkaDimensions: null });
  t.match(codeOf(() => makeModel({ shape: 'qwen3-tiny', seed: 1, outDir: join(dir, 'x'), pooling: 'mean' })), { code: 'LLM_ERR_USAGE', message: /pooling is for the embedding shapes/ });
});

t.test('readEmbeddingConfig: what the files declare, and what is refused', async (t) => {
  const out = join(dir, 'cfg');
  makeModel({ shape: 'qwen3-embedding-tiny', seed: 1, outDir: out });
  const pooling = join(out, '1_Pooling', 'config.json');
  const base = JSON.parse(readFileSync(pooling, 'utf8')) as Record<string, unknown>;
  t.match(readEmbeddingConfig(out, 'qwen3'), { pooling: 'last', normalize: true });
  writeFileSync(pooling, JSON.stringify({ ...base, pooling_mode_lasttoken: false, pooling_mode_cls_token: true }));
  t.match(readEmbeddingConfig(out, 'qwen3'), { pooling: 'cls' });
  writeFileSync(pooling, JSON.stringify({ ...base, pooling_mode_lasttoken: false, pooling_mode_max_tokens: true }));
  t.match(codeOf(() => readEmbeddingConfig(out, 'qwen3')), { code: 'LLM_ERR_UNSUPPORTED_ARCH', message: /pooling_mode_max_tokens is not supported/ });
  writeFileSync(pooling, JSON.stringify({ ...base, pooling_mode_mean_tokens: true }));
  t.match(codeOf(() => readEmbeddingConfig(out, 'qwen3')), { code: 'LLM_ERR_MODEL_FORMAT', message: /exactly one pooling_mode_\* must be true/ });
  writeFileSync(pooling, JSON.stringify(base));
  const cfgFile = join(out, 'config.json');
  const cfg = JSON.parse(readFileSync(cfgFile, 'utf8')) as Record<string, unknown>;
  writeFileSync(cfgFile, JSON.stringify({ ...cfg, is_matryoshka: false }));
  t.match(readEmbeddingConfig(out, 'qwen3'), { matryoshka: false });
  writeFileSync(cfgFile, JSON.stringify({ ...cfg, matryoshka_dimensions: [16, 32, 64] }));
  t.match(readEmbeddingConfig(out, 'llama'), { matryoshka: true, matryoshkaDimensions: [16, 32, 64] });
  writeFileSync(cfgFile, JSON.stringify(cfg));
  rmSync(join(out, 'modules.json'));
  t.match(readEmbeddingConfig(out, 'llama'), { pooling: 'last', normalize: true, matryoshka: false }, 'no modules.json: the decoder default');
});

t.test('the batcher packs passes within the limits, keeping each caller\'s order', async (t) => {
  const passes: number[][][] = [];
  let release: () => void = () => undefined;
  const batcher = new EmbedBatcher({ maxSeqs: 3, maxTokens: 10 }, async (seqs) => {
    passes.push(seqs);
    if (passes.length === 1) await new Promise<void>((r) => (release = r));
    return seqs.map((s) => Float32Array.of(s[0]!, s.length));
  });
  const first = batcher.embed([[1]], { pooling: 'last', normalize: true });
  // queued while the first pass runs: the next passes fill up to 3 sequences / 10 tokens
  const a = batcher.embed([[2, 2, 2, 2], [3, 3, 3]], { pooling: 'last', normalize: true });
  const b = batcher.embed([[4, 4, 4, 4], [5], [6]], { pooling: 'last', normalize: true });
  const c = batcher.embed([[7]], { pooling: 'mean', normalize: true });
  release();
  const [r1, ra, rb, rc] = await Promise.all([first, a, b, c]);
  t.same([r1, ra, rb, rc].map((r) => r.map((v) => v[0])), [[1], [2, 3], [4, 5, 6], [7]], 'each caller gets its own vectors in order');
  t.same(passes.map((p) => p.map((s) => s[0])), [[1], [2, 3], [4, 5, 6], [7]], 'passes: sequence and token limits, one pooling per pass');
  t.throws(() => batcher.embed([new Array(11).fill(1)], { pooling: 'last', normalize: true }), { code: 'LLM_ERR_CONTEXT_LENGTH' });
  t.throws(() => batcher.embed([[]], { pooling: 'last', normalize: true }), { code: 'LLM_ERR_BAD_REQUEST' });
  const failing = new EmbedBatcher({ maxSeqs: 4, maxTokens: 10 }, async () => {
    throw Object.assign(new Error('pass failed'), { code: 'LLM_ERR_INTERNAL' });
  });
  await t.rejects(failing.embed([[1], [2]], { pooling: 'last', normalize: true }), { message: 'pass failed' });
});

t.test('the worker\'s input, context and dimensions rules', async (t) => {
  const out = join(dir, 'cfg');
  const tok = loadTokenizer(out);
  t.same(embeddingInputs([1, 2, 3], tok), [[1, 2, 3]], 'one token array');
  t.same(embeddingInputs([[1], [2, 3]], tok), [[1], [2, 3]], 'token arrays');
  t.same(embeddingInputs('hi there', tok), [tok.encode('hi there', { parseSpecialTokens: false })], 'text, as user text');
  t.same(embeddingInputs('<|im_end|>', tok), [tok.encode('<|im_end|>', { parseSpecialTokens: false })], 'special-token text stays text');
  t.throws(() => embeddingInputs([], tok), { code: 'LLM_ERR_BAD_REQUEST', message: /input must not be empty/ });
  t.same(fitContext([[1, 2, 3, 4, 5]], 5, undefined), [[1, 2, 3, 4, 5]]);
  t.throws(() => fitContext([[1, 2, 3, 4, 5, 6]], 5, undefined), { code: 'LLM_ERR_CONTEXT_LENGTH', message: /maximum context length is 5 tokens, however you requested 6 tokens/ });
  t.same(fitContext([[1, 2, 3, 4, 5, 6]], 5, 2), [[5, 6]], 'truncate_prompt_tokens n: the last n');
  t.same(fitContext([[1, 2, 3, 4, 5, 6]], 5, 9), [[2, 3, 4, 5, 6]], 'never past the context');
  t.throws(() => fitContext([[1]], 5, 0), { message: /truncate_prompt_tokens 0/ });
  const model: EmbeddingModel = { pooling: 'last', normalize: true, matryoshka: true, matryoshkaDimensions: null, source: '', hiddenSize: 4, maxInputTokens: 5 };
  const v = [Float32Array.of(3, 4, 12, 0)];
  t.same(Array.from(applyDimensions(v, 2, model)[0]!).map((x) => Number(x.toFixed(6))), [0.6, 0.8], 'first n, re-normalised');
  t.equal(applyDimensions(v, 4, model), v, 'the full size: as it is');
  t.same(Array.from(applyDimensions(v, 2, { ...model, normalize: false })[0]!), [3, 4], 'a model that does not normalise: cut only');
  t.throws(() => applyDimensions(v, 2, { ...model, matryoshka: false }), { code: 'LLM_ERR_BAD_REQUEST', message: 'This model does not support specifying dimensions.' });
  t.throws(() => applyDimensions(v, 3, { ...model, matryoshkaDimensions: [2, 4] }), { message: /dimensions 3 is not supported by this model \(supported: 2, 4\)/ });
  t.throws(() => applyDimensions(v, 5, model), { message: /larger than the model's embedding size 4/ });
});

t.test('a BERT-style encoder other than BertModel is refused by name', async (t) => {
  const bert = { architectures: ['RobertaModel'], model_type: 'roberta', hidden_size: 32, num_attention_heads: 2, intermediate_size: 64, num_hidden_layers: 2, vocab_size: 100 };
  t.match(codeOf(() => parseHfConfig(bert, 'bert/config.json')), { code: 'LLM_ERR_UNSUPPORTED_ARCH', message: /RobertaModel is a BERT-style encoder, which this build does not serve yet/ });
});

t.test('the embedding endpoint: one response per request, the runtime\'s canary served too', async (t) => {
  const out = join(dir, 'cfg');
  const tok = loadTokenizer(out);
  const calls: number[][][] = [];
  const model: EmbeddingModel = { pooling: 'last', normalize: true, matryoshka: false, matryoshkaDimensions: null, source: '', hiddenSize: 2, maxInputTokens: 8 };
  const core = {
    embeddingModel: async () => model,
    embed: async (inputs: readonly (readonly number[])[]) => {
      calls.push(inputs.map((x) => [...x]));
      return inputs.map((x) => Float32Array.of(x.length, 0));
    },
  };
  const serving = embeddingServing({ core, tokenizer: tok });
  const collect = async (raw: unknown) => {
    const chunks: unknown[] = [];
    for await (const c of serving.accept(raw)({ signal: new AbortController().signal, requestId: 'r' })) chunks.push(c);
    return chunks;
  };
  t.same(await collect({ model: 'm', input: [[1, 2], [3]] }), [{
    object: 'list', model: 'm', usage: { prompt_tokens: 3, total_tokens: 3 },
    data: [{ object: 'embedding', embedding: [2, 0], index: 0 }, { object: 'embedding', embedding: [1, 0], index: 1 }],
  }]);
  t.same(calls, [[[1, 2], [3]]], 'every input of the request in one call to the batcher');
  const canary = await collect(healthCheckPayload({ bos: 7 }));
  t.match(canary, [{ object: 'list', data: [{ index: 0 }], usage: { prompt_tokens: 1 } }], 'the health-check payload embeds its one token');
  t.throws(() => serving.accept({ model: 'm' }), { code: 'LLM_ERR_BAD_REQUEST' }, 'a body without input');
  await t.rejects(collect({ model: 'm', input: [1], dimensions: 1 }), { message: 'This model does not support specifying dimensions.' });
  t.equal(calls.length, 2, 'a refused request runs no pass');
});
