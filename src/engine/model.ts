// loadModelSpec: a GGUF file or an HF checkpoint directory → ModelSpec (hyper-parameters plus, for every weight,
// file + byte offset + dtype + HF-order shape). Every expected tensor is checked for presence, shape and dtype
// here, once, so the native side can memory-map without re-validating names.

import { existsSync, readFileSync, statSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { LlmError } from '../errors.js';
import { GGML_TYPE_BF16, GGML_TYPE_F16, GGML_TYPE_F32, readGguf, ggufArray, ggufNumber, ggufString } from './gguf.js';
import type { GgufFile } from './gguf.js';
import { parseEosIds, parseHfConfig } from './hf-config.js';
import type { HfHyperParams } from './hf-config.js';
import { readSafetensorsDir } from './safetensors.js';
import type { Architecture, DType, ModelSpec, TensorRef, VisionHyperParams } from './types.js';

export const SUPPORTED_GGUF_ARCHITECTURES: readonly Architecture[] = ['llama', 'qwen2', 'qwen3'];

type HyperParams = Omit<ModelSpec, 'tensors' | 'ropeLayout' | 'vision'>;

/** Canonical HF tensor names and shapes the model needs, in load order. */
export function expectedTensors(p: HyperParams): { name: string; shape: number[] }[] {
  if (p.architecture === 'bert') return bertTensors(p);
  const H = p.hiddenSize;
  const q = p.numHeads * p.headDim;
  const kv = p.numKvHeads * p.headDim;
  const out: { name: string; shape: number[] }[] = [{ name: 'model.embed_tokens.weight', shape: [p.vocabSize, H] }];
  for (let l = 0; l < p.numLayers; l++) {
    const b = `model.layers.${l}`;
    out.push(
      { name: `${b}.input_layernorm.weight`, shape: [H] },
      { name: `${b}.self_attn.q_proj.weight`, shape: [q, H] },
      { name: `${b}.self_attn.k_proj.weight`, shape: [kv, H] },
      { name: `${b}.self_attn.v_proj.weight`, shape: [kv, H] },
    );
    if (p.qkvBias) {
      out.push(
        { name: `${b}.self_attn.q_proj.bias`, shape: [q] },
        { name: `${b}.self_attn.k_proj.bias`, shape: [kv] },
        { name: `${b}.self_attn.v_proj.bias`, shape: [kv] },
      );
    }
    if (p.qkNorm) {
      out.push({ name: `${b}.self_attn.q_norm.weight`, shape: [p.headDim] }, { name: `${b}.self_attn.k_norm.weight`, shape: [p.headDim] });
    }
    out.push(
      { name: `${b}.self_attn.o_proj.weight`, shape: [H, q] },
      { name: `${b}.post_attention_layernorm.weight`, shape: [H] },
      { name: `${b}.mlp.gate_proj.weight`, shape: [p.intermediateSize, H] },
      { name: `${b}.mlp.up_proj.weight`, shape: [p.intermediateSize, H] },
      { name: `${b}.mlp.down_proj.weight`, shape: [H, p.intermediateSize] },
    );
  }
  out.push({ name: 'model.norm.weight', shape: [H] });
  if (!p.tieWordEmbeddings) out.push({ name: 'lm_head.weight', shape: [p.vocabSize, H] });
  return out;
}

/** BertModel's tensors (its own names; the pooler is not used). */
function bertTensors(p: HyperParams): { name: string; shape: number[] }[] {
  const H = p.hiddenSize;
  const I = p.intermediateSize;
  const out = [
    { name: 'embeddings.word_embeddings.weight', shape: [p.vocabSize, H] },
    { name: 'embeddings.position_embeddings.weight', shape: [p.maxPositionEmbeddings, H] },
    { name: 'embeddings.token_type_embeddings.weight', shape: [p.typeVocabSize ?? 2, H] },
    { name: 'embeddings.LayerNorm.weight', shape: [H] },
    { name: 'embeddings.LayerNorm.bias', shape: [H] },
  ];
  for (let l = 0; l < p.numLayers; l++) {
    const b = `encoder.layer.${l}`;
    for (const n of ['query', 'key', 'value']) out.push({ name: `${b}.attention.self.${n}.weight`, shape: [H, H] }, { name: `${b}.attention.self.${n}.bias`, shape: [H] });
    out.push(
      { name: `${b}.attention.output.dense.weight`, shape: [H, H] },
      { name: `${b}.attention.output.dense.bias`, shape: [H] },
      { name: `${b}.attention.output.LayerNorm.weight`, shape: [H] },
      { name: `${b}.attention.output.LayerNorm.bias`, shape: [H] },
      { name: `${b}.intermediate.dense.weight`, shape: [I, H] },
      { name: `${b}.intermediate.dense.bias`, shape: [I] },
      { name: `${b}.output.dense.weight`, shape: [H, I] },
      { name: `${b}.output.dense.bias`, shape: [H] },
      { name: `${b}.output.LayerNorm.weight`, shape: [H] },
      { name: `${b}.output.LayerNorm.bias`, shape: [H] },
    );
  }
  return out;
}

/** Canonical names and shapes of the Qwen2.5-VL vision tower's tensors (hub checkpoint names). */
export function expectedVisionTensors(v: VisionHyperParams): { name: string; shape: number[] }[] {
  const H = v.hiddenSize;
  const I = v.intermediateSize;
  const merged = H * v.spatialMergeSize * v.spatialMergeSize;
  const out: { name: string; shape: number[] }[] = [
    { name: 'visual.patch_embed.proj.weight', shape: [H, v.inChannels, v.temporalPatchSize, v.patchSize, v.patchSize] },
  ];
  for (let l = 0; l < v.depth; l++) {
    const b = `visual.blocks.${l}`;
    out.push(
      { name: `${b}.norm1.weight`, shape: [H] },
      { name: `${b}.attn.qkv.weight`, shape: [3 * H, H] },
      { name: `${b}.attn.qkv.bias`, shape: [3 * H] },
      { name: `${b}.attn.proj.weight`, shape: [H, H] },
      { name: `${b}.attn.proj.bias`, shape: [H] },
      { name: `${b}.norm2.weight`, shape: [H] },
      { name: `${b}.mlp.gate_proj.weight`, shape: [I, H] },
      { name: `${b}.mlp.gate_proj.bias`, shape: [I] },
      { name: `${b}.mlp.up_proj.weight`, shape: [I, H] },
      { name: `${b}.mlp.up_proj.bias`, shape: [I] },
      { name: `${b}.mlp.down_proj.weight`, shape: [H, I] },
      { name: `${b}.mlp.down_proj.bias`, shape: [H] },
    );
  }
  out.push(
    { name: 'visual.merger.ln_q.weight', shape: [H] },
    { name: 'visual.merger.mlp.0.weight', shape: [merged, merged] },
    { name: 'visual.merger.mlp.0.bias', shape: [merged] },
    { name: 'visual.merger.mlp.2.weight', shape: [v.outHiddenSize, merged] },
    { name: 'visual.merger.mlp.2.bias', shape: [v.outHiddenSize] },
  );
  return out;
}

/** Qwen2.5-VL tensor names as transformers 5 saves them (model.language_model.*, model.visual.*) → the hub
 * checkpoints' names (model.*, visual.*), which are canonical here. */
export function canonicalVlTensorName(name: string): string {
  if (name.startsWith('model.language_model.')) return `model.${name.slice('model.language_model.'.length)}`;
  if (name.startsWith('model.visual.')) return `visual.${name.slice('model.visual.'.length)}`;
  return name;
}

interface FoundTensor {
  file: string;
  offset: number;
  dtype: DType | null;
  dtypeName: string;
  shape: number[];
  sourceName: string; // the name inside the file (GGUF names differ from canonical ones)
}

function collectTensors(expected: { name: string; shape: number[] }[], found: Map<string, FoundTensor>, where: string): TensorRef[] {
  return expected.map(({ name, shape }) => {
    const t = found.get(name);
    if (t === undefined) throw new LlmError('LLM_ERR_SHAPE_MISMATCH', `tensor ${name} is missing from ${where}`);
    const sameShape = t.shape.length === shape.length && t.shape.every((d, i) => d === shape[i]);
    if (!sameShape) {
      throw new LlmError(
        'LLM_ERR_SHAPE_MISMATCH',
        `tensor ${t.sourceName} in ${t.file} has shape [${t.shape.join(', ')}], the config expects [${shape.join(', ')}]`,
      );
    }
    if (t.dtype === null) {
      throw new LlmError(
        'LLM_ERR_UNSUPPORTED_DTYPE',
        `tensor ${t.sourceName} in ${t.file} has type ${t.dtypeName}; only F32, F16 and BF16 are supported (no quantized weights)`,
      );
    }
    return { name, file: t.file, offset: t.offset, dtype: t.dtype, shape };
  });
}

// ---------------------------------------------------------------- GGUF

const GGUF_LAYER_NAMES: Readonly<Record<string, string>> = {
  'attn_norm.weight': 'input_layernorm.weight',
  'attn_q.weight': 'self_attn.q_proj.weight',
  'attn_k.weight': 'self_attn.k_proj.weight',
  'attn_v.weight': 'self_attn.v_proj.weight',
  'attn_q.bias': 'self_attn.q_proj.bias',
  'attn_k.bias': 'self_attn.k_proj.bias',
  'attn_v.bias': 'self_attn.v_proj.bias',
  'attn_q_norm.weight': 'self_attn.q_norm.weight',
  'attn_k_norm.weight': 'self_attn.k_norm.weight',
  'attn_output.weight': 'self_attn.o_proj.weight',
  'ffn_norm.weight': 'post_attention_layernorm.weight',
  'ffn_gate.weight': 'mlp.gate_proj.weight',
  'ffn_up.weight': 'mlp.up_proj.weight',
  'ffn_down.weight': 'mlp.down_proj.weight',
};
const GGUF_GLOBAL_NAMES: Readonly<Record<string, string>> = {
  'token_embd.weight': 'model.embed_tokens.weight',
  'output_norm.weight': 'model.norm.weight',
  'output.weight': 'lm_head.weight',
};

/** GGUF tensor name → canonical HF name (undefined for tensors we do not use, e.g. rope_freqs). */
export function ggufToHfName(name: string): string | undefined {
  const g = GGUF_GLOBAL_NAMES[name];
  if (g !== undefined) return g;
  const m = /^blk\.(\d+)\.(.+)$/.exec(name);
  if (m === null) return undefined;
  const rest = GGUF_LAYER_NAMES[m[2] as string];
  return rest === undefined ? undefined : `model.layers.${m[1]}.${rest}`;
}

function ggmlDtype(type: number): DType | null {
  if (type === GGML_TYPE_F32) return 'f32';
  if (type === GGML_TYPE_F16) return 'f16';
  if (type === GGML_TYPE_BF16) return 'bf16';
  return null;
}

export function ggufModelSpec(g: GgufFile): ModelSpec {
  const arch = ggufString(g, 'general.architecture');
  if (arch === undefined || !(SUPPORTED_GGUF_ARCHITECTURES as readonly string[]).includes(arch)) {
    throw new LlmError(
      'LLM_ERR_UNSUPPORTED_ARCH',
      `GGUF file ${g.path}: architecture ${JSON.stringify(arch ?? null)} is not supported (supported: ${SUPPORTED_GGUF_ARCHITECTURES.join(', ')})`,
    );
  }
  const architecture = arch as Architecture;
  const found = new Map<string, FoundTensor>();
  for (const t of g.tensors) {
    const hf = ggufToHfName(t.name);
    if (hf === undefined) continue;
    found.set(hf, {
      file: g.path,
      offset: t.offset,
      dtype: ggmlDtype(t.type),
      dtypeName: t.typeName,
      shape: [...t.dims].reverse(),
      sourceName: t.name,
    });
  }
  const embd = found.get('model.embed_tokens.weight');
  if (embd === undefined) throw new LlmError('LLM_ERR_SHAPE_MISMATCH', `tensor token_embd.weight is missing from GGUF file ${g.path}`);
  const hiddenSize = ggufNumber(g, `${arch}.embedding_length`);
  const numHeads = ggufNumber(g, `${arch}.attention.head_count`);
  const tokens = ggufArray(g, 'tokenizer.ggml.tokens');
  const eos = g.metadata.get('tokenizer.ggml.eos_token_id');
  const bos = g.metadata.get('tokenizer.ggml.bos_token_id');
  const p: HyperParams = {
    architecture,
    vocabSize: ggufNumber(g, `${arch}.vocab_size`, tokens?.length ?? (embd.shape[0] as number)),
    hiddenSize,
    intermediateSize: ggufNumber(g, `${arch}.feed_forward_length`),
    numLayers: ggufNumber(g, `${arch}.block_count`),
    numHeads,
    numKvHeads: ggufNumber(g, `${arch}.attention.head_count_kv`, numHeads),
    headDim: ggufNumber(g, `${arch}.attention.key_length`, hiddenSize / numHeads),
    rmsNormEps: ggufNumber(g, `${arch}.attention.layer_norm_rms_epsilon`),
    ropeTheta: ggufNumber(g, `${arch}.rope.freq_base`, 10000),
    ropeScaling: null,
    maxPositionEmbeddings: ggufNumber(g, `${arch}.context_length`, 4096),
    tieWordEmbeddings: !found.has('lm_head.weight'),
    qkvBias: architecture === 'qwen2',
    qkNorm: architecture === 'qwen3',
    bosTokenId: typeof bos === 'number' ? bos : null,
    eosTokenIds: typeof eos === 'number' ? [eos] : [],
  };
  const tensors = collectTensors(expectedTensors(p), found, `GGUF file ${g.path}`);
  const ropeType = ggufString(g, `${arch}.rope.scaling.type`);
  if (ropeType !== undefined && ropeType !== 'none') {
    throw new LlmError('LLM_ERR_UNSUPPORTED_ARCH', `GGUF file ${g.path}: ${arch}.rope.scaling.type ${ropeType} is not supported`);
  }
  const ropeDims = ggufNumber(g, `${arch}.rope.dimension_count`, p.headDim);
  if (ropeDims !== p.headDim) {
    throw new LlmError('LLM_ERR_UNSUPPORTED_ARCH', `GGUF file ${g.path}: partial rotary (rope.dimension_count ${ropeDims} < head_dim ${p.headDim}) is not supported`);
  }
  if (p.numHeads % p.numKvHeads !== 0) {
    throw new LlmError('LLM_ERR_MODEL_FORMAT', `GGUF file ${g.path}: head_count ${p.numHeads} is not a multiple of head_count_kv ${p.numKvHeads}`);
  }
  // llama.cpp's converter permutes llama Q/K rows for interleaved RoPE; qwen2/qwen3 GGUFs keep the HF (NeoX) order.
  return { ...p, ropeLayout: architecture === 'llama' ? 'interleaved' : 'half', tensors };
}

// ---------------------------------------------------------------- HF directory

const SAFETENSORS_DTYPES: Readonly<Record<string, DType>> = { F32: 'f32', F16: 'f16', BF16: 'bf16' };

function readJson(file: string): unknown {
  try {
    return JSON.parse(readFileSync(file, 'utf8'));
  } catch (err) {
    throw new LlmError('LLM_ERR_MODEL_FORMAT', `${file} is not valid JSON: ${(err as Error).message}`);
  }
}

export function hfModelSpec(dir: string): ModelSpec {
  const configPath = join(dir, 'config.json');
  if (!existsSync(configPath)) throw new LlmError('LLM_ERR_MODEL_NOT_FOUND', `model directory ${dir} has no config.json`);
  const hp: HfHyperParams = parseHfConfig(readJson(configPath), configPath);
  const genPath = join(dir, 'generation_config.json');
  let eosTokenIds = hp.eosTokenIds;
  let bosTokenId = hp.bosTokenId;
  if (existsSync(genPath)) {
    const gen = readJson(genPath) as Record<string, unknown> | null;
    if (gen !== null && typeof gen === 'object') {
      eosTokenIds = [...new Set([...eosTokenIds, ...parseEosIds(gen['eos_token_id'], 'eos_token_id', genPath)])];
      if (bosTokenId === null && Number.isSafeInteger(gen['bos_token_id'])) bosTokenId = gen['bos_token_id'] as number;
    }
  }
  const found = new Map<string, FoundTensor>();
  for (const t of readSafetensorsDir(dir)) {
    found.set(hp.vision === undefined ? t.name : canonicalVlTensorName(t.name), {
      file: t.file,
      offset: t.offset,
      dtype: SAFETENSORS_DTYPES[t.dtype] ?? null,
      dtypeName: t.dtype,
      shape: t.shape,
      sourceName: t.name,
    });
  }
  // A bare decoder (LlamaModel, Qwen3Model, ...) names its tensors without the "model." prefix.
  // A BERT checkpoint saved from a task model (BertForMaskedLM, ...) prefixes the encoder's names with "bert.".
  for (const [name, t] of [...found]) {
    if (!name.startsWith('model.') && name !== 'lm_head.weight' && !found.has(`model.${name}`)) found.set(`model.${name}`, t);
    if (name.startsWith('bert.') && !found.has(name.slice(5))) found.set(name.slice(5), t);
  }
  const { hfArchitecture: _arch, dtype: _dtype, vision: visionParams, ...rest } = hp;
  const p: HyperParams = { ...rest, bosTokenId, eosTokenIds };
  const where = `model directory ${dir}`;
  const tensors = collectTensors(expectedTensors(p), found, where);
  if (visionParams === undefined) return { ...p, ropeLayout: 'half', tensors };
  const vision = { ...visionParams, tensors: collectTensors(expectedVisionTensors(visionParams), found, where) };
  return { ...p, ropeLayout: 'half', tensors, vision };
}

// ---------------------------------------------------------------- entry point

/** Resolves a model path: a GGUF file, an HF checkpoint directory, or that directory's config.json. */
export function resolveModelPath(path: string): { kind: 'gguf' | 'hf'; path: string } {
  const abs = resolve(path);
  if (!existsSync(abs)) throw new LlmError('LLM_ERR_MODEL_NOT_FOUND', `model path ${path} does not exist`);
  const st = statSync(abs);
  if (st.isDirectory()) return { kind: 'hf', path: abs };
  if (basename(abs) === 'config.json') return { kind: 'hf', path: dirname(abs) };
  return { kind: 'gguf', path: abs };
}

export async function loadModelSpec(path: string): Promise<ModelSpec> {
  const m = resolveModelPath(path);
  return m.kind === 'hf' ? hfModelSpec(m.path) : ggufModelSpec(readGguf(m.path));
}
