import t from 'tap';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync, truncateSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16, makeModel } from '../src/engine/make-model.js';
import { loadModelSpec } from '../src/engine/model.js';
import { parseHfConfig } from '../src/engine/hf-config.js';
import { readSafetensorsDir } from '../src/engine/safetensors.js';
import { loadTokenizer } from '../src/tokenizer/index.js';
import { main } from '../src/cli/main.js';
import type { TensorRef } from '../src/engine/types.js';

const dir = mkdtempSync(join(tmpdir(), 'make-model-test-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));

function values(ref: TensorRef): Float32Array {
  const n = ref.shape.reduce((a, b) => a * b, 1);
  const buf = readFileSync(ref.file).subarray(ref.offset, ref.offset + n * (ref.dtype === 'f32' ? 4 : 2));
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    out[i] = ref.dtype === 'f32' ? buf.readFloatLE(i * 4) : ref.dtype === 'f16' ? f16ToF32(buf.readUInt16LE(i * 2)) : bf16ToF32(buf.readUInt16LE(i * 2));
  }
  return out;
}

t.test('half-precision conversions round to nearest even', async (t) => {
  t.equal(f32ToF16(1), 0x3c00);
  t.equal(f32ToF16(-2), 0xc000);
  t.equal(f32ToF16(65504), 0x7bff);
  t.equal(f32ToF16(1e6), 0x7c00);
  t.equal(f32ToF16(2 ** -24), 0x0001);
  t.equal(f32ToF16(1 + 2 ** -11), 0x3c00, 'tie to even');
  t.equal(f32ToF16(1 + 3 * 2 ** -11), 0x3c02, 'tie to even, up');
  t.equal(f16ToF32(0x3555), 0.333251953125);
  t.equal(f32ToBf16(1), 0x3f80);
  t.equal(bf16ToF32(f32ToBf16(3.14159)), 3.140625);
});

t.test('qwen3-tiny: deterministic, loads as HF and as GGUF with the same weights', async (t) => {
  const a = makeModel({ shape: 'qwen3-tiny', seed: 7, outDir: join(dir, 'a'), dtype: 'f32', gguf: true });
  const b = makeModel({ shape: 'qwen3-tiny', seed: 7, outDir: join(dir, 'b'), dtype: 'f32' });
  const c = makeModel({ shape: 'qwen3-tiny', seed: 8, outDir: join(dir, 'c'), dtype: 'f32' });
  const st = (d: string) => readFileSync(join(d, 'model.safetensors'));
  t.ok(st(a.dir).equals(st(b.dir)), 'same seed, same bytes');
  t.notOk(st(a.dir).equals(st(c.dir)), 'other seed, other bytes');

  const cfg = JSON.parse(readFileSync(join(a.dir, 'config.json'), 'utf8'));
  t.match(cfg, { architectures: ['Qwen3ForCausalLM'], dtype: 'float32', head_dim: 32, rope_parameters: { rope_theta: 1000000, rope_type: 'default' }, tie_word_embeddings: true });
  const hf = await loadModelSpec(a.dir);
  t.match(hf, { architecture: 'qwen3', qkNorm: true, headDim: 32, hiddenSize: 64, numHeads: 4, numKvHeads: 2, ropeLayout: 'half', ropeTheta: 1e6, tieWordEmbeddings: true, vocabSize: 1088 });
  const gg = await loadModelSpec(join(a.dir, 'model-f16.gguf'));
  t.match(gg, { architecture: 'qwen3', qkNorm: true, headDim: 32, ropeLayout: 'half', tieWordEmbeddings: true, vocabSize: 1088 });
  t.equal(gg.tensors.length, hf.tensors.length);
  for (const ref of hf.tensors) {
    const g = gg.tensors.find((x) => x.name === ref.name) as TensorRef;
    t.same(g.shape, ref.shape, ref.name);
    t.equal(g.dtype, ref.shape.length === 1 ? 'f32' : 'f16');
    const hv = values(ref);
    const gv = values(g);
    let maxErr = 0;
    for (let i = 0; i < hv.length; i++) maxErr = Math.max(maxErr, Math.abs((hv[i] as number) - (gv[i] as number)));
    t.ok(maxErr < 2e-3 * 4, `${ref.name} GGUF values match (max err ${maxErr})`);
  }
  // Norm weights are 1 + noise, other weights ~N(0, 0.02).
  const norm = values(hf.tensors.find((x) => x.name === 'model.layers.0.self_attn.q_norm.weight') as TensorRef);
  t.ok(norm.every((v) => Math.abs(v - 1) < 0.2));
  const emb = values(hf.tensors[0] as TensorRef);
  const mean = emb.reduce((s, v) => s + v, 0) / emb.length;
  const sd = Math.sqrt(emb.reduce((s, v) => s + (v - mean) ** 2, 0) / emb.length);
  t.ok(Math.abs(sd - 0.02) < 0.001, `std ${sd}`);

  const tok = loadTokenizer(a.dir);
  t.ok(tok.vocabSize <= hf.vocabSize, 'tokenizer ids fit the vocabulary');
  t.same(tok.eosTokenIds, [1026]);
  t.equal(tok.decode(tok.encode('The cat sat on the mat.')), 'The cat sat on the mat.');
  t.equal(tok.applyChatTemplate([{ role: 'user', content: 'hi' }]), '<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n');
  const ggTok = loadTokenizer(join(a.dir, 'model-f16.gguf'));
  t.same(ggTok.encode('The cat sat on the mat.'), tok.encode('The cat sat on the mat.'), 'GGUF BPE vocabulary encodes the same');
});

t.test('llama-tiny GGUF permutes Q/K rows for interleaved RoPE', async (t) => {
  const m = makeModel({ shape: 'llama-tiny', seed: 3, outDir: join(dir, 'llama'), dtype: 'bf16', gguf: true });
  const hf = await loadModelSpec(m.dir);
  const gg = await loadModelSpec(join(m.dir, 'model-f16.gguf'));
  t.equal(hf.ropeLayout, 'half');
  t.equal(gg.ropeLayout, 'interleaved');
  t.match(hf, { architecture: 'llama', tieWordEmbeddings: false, ropeTheta: 500000, numKvHeads: 2, headDim: 16 });
  const name = 'model.layers.1.self_attn.k_proj.weight';
  const h = values(hf.tensors.find((x) => x.name === name) as TensorRef);
  const g = values(gg.tensors.find((x) => x.name === name) as TensorRef);
  const cols = 64;
  const d = 16;
  for (let head = 0; head < 2; head++) {
    for (let j = 0; j < d / 2; j++) {
      for (let s = 0; s < 2; s++) {
        const src = head * d + s * (d / 2) + j;
        const dst = head * d + 2 * j + s;
        t.equal(g[dst * cols + 5], h[src * cols + 5]);
      }
    }
  }
  t.ok(statSync(join(m.dir, 'model.safetensors')).size > 0);
});

t.test('HF config parsing: transformers 4.x and 5.x spellings', async (t) => {
  const base = { architectures: ['LlamaForCausalLM'], hidden_size: 64, intermediate_size: 128, num_hidden_layers: 2, num_attention_heads: 4, vocab_size: 100 };
  const v4 = parseHfConfig({ ...base, rope_theta: 500000, torch_dtype: 'bfloat16', eos_token_id: [1, 2], rope_scaling: { rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 } }, 'c.json');
  t.match(v4, { ropeTheta: 500000, dtype: 'bf16', eosTokenIds: [1, 2], headDim: 16, numKvHeads: 4, tieWordEmbeddings: false, ropeScaling: { type: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 8192 } });
  const v5 = parseHfConfig({ ...base, dtype: 'float16', eos_token_id: 3, rope_parameters: { rope_theta: 1e6, rope_type: 'llama3', factor: 32, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 } }, 'c.json');
  t.match(v5, { ropeTheta: 1e6, dtype: 'f16', eosTokenIds: [3], ropeScaling: { factor: 32 } });
  t.match(parseHfConfig({ ...base, rope_parameters: { rope_theta: 1e4, rope_type: 'default' } }, 'c.json'), { ropeTheta: 1e4, ropeScaling: null });
  // saved from transformers' XxxConfig alone: architectures null, model_type names the family
  t.match(parseHfConfig({ ...base, architectures: null, model_type: 'qwen3', head_dim: 16 }, 'c.json'), { architecture: 'qwen3' });
  t.throws(() => parseHfConfig({ ...base, architectures: null, model_type: 'mistral' }, 'c.json'), { code: 'LLM_ERR_UNSUPPORTED_ARCH', message: /model_type "mistral"/ });
  t.throws(() => parseHfConfig({ ...base, architectures: ['MistralForCausalLM'] }, 'c.json'), { code: 'LLM_ERR_UNSUPPORTED_ARCH', message: /MistralForCausalLM.*LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM/ });
  t.throws(() => parseHfConfig({ ...base, rope_scaling: { type: 'yarn', factor: 4 } }, 'c.json'), { code: 'LLM_ERR_CONFIG', message: /yarn/ });
  t.throws(() => parseHfConfig({ ...base, hidden_size: -1 }, 'c.json'), { code: 'LLM_ERR_CONFIG', message: /c\.json: hidden_size/ });
  t.throws(() => parseHfConfig({ ...base, architectures: ['Qwen3ForCausalLM'], layer_types: ['full_attention', 'sliding_attention'] }, 'c.json'), { code: 'LLM_ERR_UNSUPPORTED_ARCH', message: /sliding/ });
  t.throws(() => parseHfConfig({ ...base, num_key_value_heads: 3 }, 'c.json'), { code: 'LLM_ERR_CONFIG', message: /not a multiple/ });
});

t.test('bad HF checkpoints give coded errors naming file and tensor', async (t) => {
  const m = makeModel({ shape: 'qwen2-tiny', seed: 1, outDir: join(dir, 'q2'), dtype: 'f16' });
  const spec = await loadModelSpec(m.dir);
  t.match(spec, { architecture: 'qwen2', qkvBias: true, tieWordEmbeddings: false });
  t.ok(spec.tensors.some((x) => x.name === 'model.layers.1.self_attn.v_proj.bias' && x.dtype === 'f16'));

  const cfgPath = join(m.dir, 'config.json');
  const cfg = JSON.parse(readFileSync(cfgPath, 'utf8'));
  writeFileSync(cfgPath, JSON.stringify({ ...cfg, intermediate_size: 150 }));
  await t.rejects(loadModelSpec(m.dir), { code: 'LLM_ERR_SHAPE_MISMATCH', message: /model\.layers\.0\.mlp\.gate_proj\.weight in .*model\.safetensors has shape \[160, 64\], the config expects \[150, 64\]/ });
  writeFileSync(cfgPath, JSON.stringify({ ...cfg, architectures: ['GPT2LMHeadModel'] }));
  await t.rejects(loadModelSpec(m.dir), { code: 'LLM_ERR_UNSUPPORTED_ARCH' });
  writeFileSync(cfgPath, JSON.stringify(cfg));

  // Sharded checkpoint: split the tensors over two shard files written from the single file's bytes.
  {
    const shardDir = join(dir, 'q2-sharded');
    const src = readSafetensorsDir(m.dir);
    const whole = readFileSync(join(m.dir, 'model.safetensors'));
    mkdirSync(shardDir);
    for (const f of ['config.json', 'generation_config.json']) writeFileSync(join(shardDir, f), readFileSync(join(m.dir, f)));
    const weightMap: Record<string, string> = {};
    [src.slice(0, 10), src.slice(10)].forEach((part, k) => {
      const shard = `model-0000${k + 1}-of-00002.safetensors`;
      const header: Record<string, unknown> = {};
      let off = 0;
      for (const x of part) {
        header[x.name] = { dtype: x.dtype, shape: x.shape, data_offsets: [off, off + x.byteSize] };
        off += x.byteSize;
        weightMap[x.name] = shard;
      }
      const h = Buffer.from(JSON.stringify(header));
      const len = Buffer.alloc(8);
      len.writeBigUInt64LE(BigInt(h.length));
      writeFileSync(join(shardDir, shard), Buffer.concat([len, h, ...part.map((x) => whole.subarray(x.offset, x.offset + x.byteSize))]));
    });
    writeFileSync(join(shardDir, 'model.safetensors.index.json'), JSON.stringify({ metadata: {}, weight_map: weightMap }));
    const sharded = await loadModelSpec(shardDir);
    t.equal(new Set(sharded.tensors.map((x) => x.file)).size, 2, 'tensors come from both shards');
    for (const ref of sharded.tensors) {
      const orig = spec.tensors.find((x) => x.name === ref.name)!;
      const n = ref.shape.reduce((a, b) => a * b, 1) * 2;
      t.ok(readFileSync(ref.file).subarray(ref.offset, ref.offset + n).equals(whole.subarray(orig.offset, orig.offset + n)), `${ref.name} bytes`);
    }
  }

  // Sharded checkpoint: an index naming a shard that lacks the tensor.
  writeFileSync(join(m.dir, 'model.safetensors.index.json'), JSON.stringify({ weight_map: { 'model.norm.weight': 'model.safetensors', 'lm_head.weight': 'other.safetensors' } }));
  await t.rejects(loadModelSpec(m.dir), { code: 'LLM_ERR_MODEL_NOT_FOUND', message: /other\.safetensors/ });
  writeFileSync(join(m.dir, 'model.safetensors.index.json'), JSON.stringify({ weight_map: Object.fromEntries(readSafetensorsDir(join(dir, 'a')).map(() => ['x', 'model.safetensors'])) }));
  await t.rejects(loadModelSpec(m.dir), { code: 'LLM_ERR_SHAPE_MISMATCH', message: /tensor x is listed/ });
  rmSync(join(m.dir, 'model.safetensors.index.json'));

  truncateSync(join(m.dir, 'model.safetensors'), statSync(join(m.dir, 'model.safetensors')).size - 10);
  await t.rejects(loadModelSpec(m.dir), { code: 'LLM_ERR_MODEL_FORMAT', message: /model\.safetensors: tensor .* lie outside/ });
  writeFileSync(join(m.dir, 'model.safetensors'), Buffer.from([1, 2, 3]));
  await t.rejects(loadModelSpec(m.dir), { code: 'LLM_ERR_MODEL_FORMAT', message: /truncated/ });
  rmSync(join(m.dir, 'model.safetensors'));
  await t.rejects(loadModelSpec(m.dir), { code: 'LLM_ERR_MODEL_NOT_FOUND', message: /model\.safetensors/ });
});

t.test('make-model CLI usage errors exit 2 naming the flag', async (t) => {
  const errs: string[] = [];
  const orig = process.stderr.write.bind(process.stderr);
  process.stderr.write = ((s: string) => { errs.push(String(s)); return true; }) as typeof process.stderr.write;
  try {
    t.equal(await main(['make-model', '--shape', 'gpt5', '--seed', '1', '--out', dir]), 2);
    t.equal(await main(['make-model', '--shape', 'qwen3-tiny', '--seed=-1', '--out', dir]), 2);
    t.equal(await main(['make-model', '--shape', 'qwen3-tiny', '--out', dir]), 2);
    t.equal(await main(['make-model', '--shape', 'qwen3-tiny', '--seed', '1', '--out', dir, '--bogus']), 2);
    t.equal(await main(['make-model', '--shape', 'qwen3-tiny', '--seed', '1', '--out', dir, '--dtype', 'int8']), 2);
  } finally {
    process.stderr.write = orig;
  }
  t.match(errs[0], /--shape: expected one of "qwen3-0\.6b", "qwen3-tiny", "qwen2-tiny", "llama-tiny", "qwen3-embedding-0\.6b", "qwen3-embedding-tiny", "bert-tiny", "qwen2\.5-vl-tiny", got "gpt5"/);
  t.match(errs[1], /--seed: expected an integer >= 0/);
  t.match(errs[2], /--seed is required/);
  t.match(errs[3], /unknown flag --bogus/);
  t.match(errs[4], /--dtype/);
});
