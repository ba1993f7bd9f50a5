// Qwen2.5-VL checkpoints: make-model's qwen2.5-vl-tiny loads (hub layout, and the transformers 5 layout with
// text_config and model.language_model.* / model.visual.* names), its chat template puts the vision tokens, and a
// text-only request runs on the CPU engine exactly as the same decoder loaded as a plain Qwen2 checkpoint (M-RoPE with
// three equal positions is ordinary RoPE).
import t from 'tap';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { addonPath } from '../src/engine/addon.js';
import { openEngine } from '../src/engine/engine.js';
import { parseHfConfig } from '../src/engine/hf-config.js';
import { makeModel } from '../src/engine/make-model.js';
import { loadModelSpec } from '../src/engine/model.js';
import { packFor } from '../src/engine/step.js';
import type { ModelSpec, SeqStep } from '../src/engine/types.js';
import { loadTokenizer } from '../src/tokenizer/index.js';

const dir = mkdtempSync(join(tmpdir(), 'vl-model-test-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
const made = makeModel({ shape: 'qwen2.5-vl-tiny', seed: 3, outDir: join(dir, 'hub'), dtype: 'f32', std: 0.1 });
const hubConfig = JSON.parse(readFileSync(join(made.dir, 'config.json'), 'utf8')) as Record<string, unknown>;

/** Rewrites a safetensors file's header with renamed tensors (data unchanged). */
function renameSafetensors(src: string, dst: string, rename: (name: string) => string): void {
  const buf = readFileSync(src);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8')) as Record<string, unknown>;
  const out = Object.fromEntries(Object.entries(header).map(([k, v]) => [k === '__metadata__' ? k : rename(k), v]));
  let text = JSON.stringify(out);
  text += ' '.repeat((8 - (Buffer.byteLength(text) % 8)) % 8);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(Buffer.byteLength(text)));
  writeFileSync(dst, Buffer.concat([len, Buffer.from(text), buf.subarray(8 + n)]));
}

t.test('hub layout: the language model is the Qwen2 decoder with M-RoPE, plus the vision tower', async (t) => {
  t.match(hubConfig, { architectures: ['Qwen2_5_VLForConditionalGeneration'], model_type: 'qwen2_5_vl', rope_scaling: { type: 'mrope', mrope_section: [2, 3, 3] } });
  const spec = await loadModelSpec(made.dir);
  t.match(spec, { architecture: 'qwen2', qkvBias: true, hiddenSize: 64, headDim: 16, mropeSection: [2, 3, 3], ropeScaling: null });
  t.ok(spec.tensors.every((x) => !x.name.startsWith('visual.')), 'the decoder tensors alone in spec.tensors');
  const v = spec.vision!;
  t.match(v, { depth: 4, hiddenSize: 32, numHeads: 2, outHiddenSize: 64, patchSize: 14, spatialMergeSize: 2, temporalPatchSize: 2, windowSize: 112, fullAttBlockIndexes: [1, 3] });
  t.match(v.tensors.find((x) => x.name === 'visual.patch_embed.proj.weight'), { shape: [32, 3, 2, 14, 14] });
  t.match(v.tensors.find((x) => x.name === 'visual.merger.mlp.0.weight'), { shape: [128, 128] });
  const tok = loadTokenizer(made.dir);
  t.equal(tok.encode('<|image_pad|>', { addSpecialTokens: false })[0], v.imageTokenId);
  t.equal(tok.encode('<|vision_start|>', { addSpecialTokens: false })[0], v.visionStartTokenId);
  // The frontend hands content-part lists to the template as they come (the tokenizer's type says string).
  const parts = [{ type: 'text', text: 'What is ' }, { type: 'image_url' }, { type: 'text', text: '?' }] as unknown as string;
  const text = tok.applyChatTemplate([{ role: 'user', content: parts }]);
  t.equal(text, '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWhat is <|vision_start|><|image_pad|><|vision_end|>?<|im_end|>\n<|im_start|>assistant\n');
  t.equal(tok.applyChatTemplate([{ role: 'user', content: 'hi' }]), '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n');
  const pre = JSON.parse(readFileSync(join(made.dir, 'preprocessor_config.json'), 'utf8'));
  t.match(pre, { patch_size: 14, merge_size: 2, temporal_patch_size: 2, image_processor_type: 'Qwen2VLImageProcessor' });
});

t.test('transformers 5 layout: text_config, rope_parameters, model.language_model.* and model.visual.* names', async (t) => {
  const d = join(dir, 'tf5');
  mkdirSync(d);
  const textKeys = ['hidden_size', 'intermediate_size', 'num_attention_heads', 'num_hidden_layers', 'num_key_value_heads', 'vocab_size', 'rms_norm_eps', 'max_position_embeddings', 'head_dim'];
  const top: Record<string, unknown> = { ...hubConfig };
  const textConfig: Record<string, unknown> = { model_type: 'qwen2_5_vl_text', rope_parameters: { rope_type: 'default', rope_theta: hubConfig['rope_theta'], mrope_section: [2, 3, 3] } };
  for (const k of [...textKeys, 'rope_scaling', 'rope_theta']) {
    if (textKeys.includes(k)) textConfig[k] = top[k];
    delete top[k];
  }
  writeFileSync(join(d, 'config.json'), JSON.stringify({ ...top, text_config: textConfig }));
  copyFileSync(join(made.dir, 'generation_config.json'), join(d, 'generation_config.json'));
  renameSafetensors(join(made.dir, 'model.safetensors'), join(d, 'model.safetensors'), (n) =>
    n.startsWith('visual.') ? `model.${n}` : n.startsWith('model.') ? `model.language_model.${n.slice(6)}` : n,
  );
  const a = await loadModelSpec(made.dir);
  const b = await loadModelSpec(d);
  const strip = (s: ModelSpec) => ({ ...s, tensors: s.tensors.map((x) => ({ name: x.name, shape: x.shape, offset: x.offset })), vision: { ...s.vision!, tensors: s.vision!.tensors.map((x) => x.name) } });
  t.same(strip(b).vision, strip(a).vision);
  t.same(b.tensors.map((x) => x.name), a.tensors.map((x) => x.name));
  t.same({ ...b, tensors: [], vision: undefined }, { ...a, tensors: [], vision: undefined });
});

t.test('config errors name the field', async (t) => {
  const bad = (patch: Record<string, unknown>) => () => parseHfConfig({ ...hubConfig, ...patch }, 'x/config.json');
  t.throws(bad({ rope_scaling: { type: 'mrope', mrope_section: [2, 3, 4] } }), { code: 'LLM_ERR_CONFIG', message: /mrope_section \[2,3,4\] must sum to head_dim \/ 2 = 8/ });
  t.throws(bad({ rope_scaling: { type: 'mrope' } }), { code: 'LLM_ERR_CONFIG', message: /needs mrope_section/ });
  t.throws(bad({ rope_scaling: null }), { code: 'LLM_ERR_CONFIG', message: /mrope_section is missing/ });
  t.throws(bad({ vision_config: undefined }), { code: 'LLM_ERR_CONFIG', message: /vision_config is missing/ });
  const vc = hubConfig['vision_config'] as Record<string, unknown>;
  t.throws(bad({ vision_config: { ...vc, out_hidden_size: 32 } }), { message: /vision_config.out_hidden_size 32 must equal the language model's hidden_size 64/ });
  t.throws(bad({ vision_config: { ...vc, fullatt_block_indexes: [4] } }), { message: /fullatt_block_indexes must list block indexes below depth 4/ });
  t.throws(bad({ vision_config: { ...vc, hidden_act: 'quick_gelu' } }), { code: 'LLM_ERR_UNSUPPORTED_ARCH', message: /vision_config.hidden_act/ });
  t.throws(bad({ vision_config: { ...vc, num_heads: 0 } }), { message: /vision_config.num_heads must be a positive integer/ });
});

t.test('text-only: the VL checkpoint runs as the plain Qwen2 decoder of the same weights', { skip: existsSync(addonPath()) ? false : 'native addon not built' }, async (t) => {
  const d = join(dir, 'plain');
  mkdirSync(d);
  const { vision_config: _v, rope_scaling: _r, image_token_id: _i, video_token_id: _vi, vision_start_token_id: _s, vision_end_token_id: _e, ...plain } = hubConfig;
  writeFileSync(join(d, 'config.json'), JSON.stringify({ ...plain, architectures: ['Qwen2ForCausalLM'], model_type: 'qwen2' }));
  copyFileSync(join(made.dir, 'model.safetensors'), join(d, 'model.safetensors'));
  const prompt = [5, 900, 17, 33, 1025, 64, 200, 7, 9, 300, 11];
  const greedy = { temperature: 0, topP: 1, topK: 0, minP: 0, seed: null, logprobs: -1 };
  const run = async (path: string): Promise<Float32Array[]> => {
    const spec = await loadModelSpec(path);
    const engine = openEngine(spec, { backend: 'cpu', deviceId: 0, pageSize: 4, numPages: 8, memFractionStatic: 0.5, maxBatchTokens: 32, maxSeqsPerStep: 2, threads: 1 });
    try {
      const out: Float32Array[] = [];
      const ids = [...prompt];
      for (let k = 0; k < 3; k++) {
        const start = k === 0 ? 0 : ids.length - 1;
        const seq: SeqStep = { tokenIds: ids.slice(start), startPos: start, pages: [0, 1, 2, 3, 4].slice(0, Math.ceil(ids.length / 4)), sample: true, sampling: greedy, outputIndex: k };
        const r = engine.step(packFor(engine, [seq], { returnLogits: true }));
        out.push(Float32Array.from(r.logits!));
        ids.push(r.tokens[0]!);
      }
      return out;
    } finally {
      engine.close();
    }
  };
  const vl = await run(made.dir);
  const qwen2 = await run(d);
  t.same(vl, qwen2, 'same logits, prefill and two decode steps');
});
