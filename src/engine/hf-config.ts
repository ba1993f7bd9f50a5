// HF config.json → model hyper-parameters for LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM and
// Qwen2_5_VLForConditionalGeneration (a Qwen2 decoder with M-RoPE plus the vision tower of its vision_config).
// Accepts both the transformers 4.x spelling (rope_theta + rope_scaling, torch_dtype) and the 5.x one
// (rope_parameters holding rope_theta and the scaling, dtype).

import { LlmError } from '../errors.js';
import type { Architecture, DType, ModelSpec, RopeScaling, VisionHyperParams } from './types.js';

export const SUPPORTED_HF_ARCHITECTURES: Readonly<Record<string, Architecture>> = {
  LlamaForCausalLM: 'llama',
  Qwen2ForCausalLM: 'qwen2',
  Qwen3ForCausalLM: 'qwen3',
  // The bare decoders, as transformers saves an AutoModel (embedding checkpoints such as Qwen3-Embedding): tensor
  // names without the "model." prefix and no LM head (tied, or unused by an embedding worker).
  LlamaModel: 'llama',
  Qwen2Model: 'qwen2',
  Qwen3Model: 'qwen3',
  Qwen2_5_VLForConditionalGeneration: 'qwen2',
};

/** Vision-language architectures: their language model is the Qwen2 decoder, plus a vision tower. */
const VISION_LANGUAGE_ARCHITECTURES: ReadonlySet<string> = new Set(['Qwen2_5_VLForConditionalGeneration']);
const VISION_LANGUAGE_MODEL_TYPES: ReadonlySet<string> = new Set(['qwen2_5_vl']);

/** model_type values naming the same architectures, for configs without `architectures`. */
const SUPPORTED_MODEL_TYPES: Readonly<Record<string, Architecture>> = { llama: 'llama', qwen2: 'qwen2', qwen3: 'qwen3', qwen2_5_vl: 'qwen2' };

/** A config.json read into the engine's hyper-parameters (ModelSpec without tensors and rope layout), plus what
 * only the HF side knows. */
export interface HfHyperParams extends Omit<ModelSpec, 'tensors' | 'ropeLayout' | 'vision'> {
  /** Vision-language checkpoints: the vision tower's hyper-parameters. */
  vision?: VisionHyperParams;
  hfArchitecture: string;
  /** The checkpoint's declared dtype (torch_dtype / dtype), null when absent or not one of ours. */
  dtype: DType | null;
}

type Json = Record<string, unknown>;

function cfgError(file: string, what: string): LlmError {
  return new LlmError('LLM_ERR_CONFIG', `model config ${file}: ${what}`);
}

function posInt(cfg: Json, key: string, file: string, fallback?: number): number {
  const v = cfg[key] ?? fallback;
  if (v === undefined || v === null) throw cfgError(file, `${key} is missing`);
  if (!Number.isSafeInteger(v) || (v as number) <= 0) throw cfgError(file, `${key} must be a positive integer, got ${JSON.stringify(v)}`);
  return v as number;
}

function posNum(v: unknown, key: string, file: string): number {
  if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) throw cfgError(file, `${key} must be a positive number, got ${JSON.stringify(v)}`);
  return v;
}

function optTokenId(v: unknown, key: string, file: string): number | null {
  if (v === undefined || v === null) return null;
  if (!Number.isSafeInteger(v) || (v as number) < 0) throw cfgError(file, `${key} must be a token id, got ${JSON.stringify(v)}`);
  return v as number;
}

/** eos_token_id may be one id or a list of ids. */
export function parseEosIds(v: unknown, key: string, file: string): number[] {
  if (v === undefined || v === null) return [];
  const list = Array.isArray(v) ? v : [v];
  return list.map((x, i) => {
    const id = optTokenId(x, `${key}[${i}]`, file);
    if (id === null) throw cfgError(file, `${key}[${i}] is null`);
    return id;
  });
}

export function parseDtype(v: unknown): DType | null {
  switch (v) {
    case 'float32': case 'float': return 'f32';
    case 'float16': case 'half': return 'f16';
    case 'bfloat16': return 'bf16';
    default: return null;
  }
}

/** mrope_section: three positive integers summing to head_dim / 2. */
function parseMropeSection(v: unknown, key: string, headDim: number, file: string): [number, number, number] {
  if (!Array.isArray(v) || v.length !== 3 || !v.every((x) => Number.isSafeInteger(x) && (x as number) > 0)) {
    throw cfgError(file, `${key} must be three positive integers, got ${JSON.stringify(v)}`);
  }
  const section = v as [number, number, number];
  if (section[0] + section[1] + section[2] !== headDim / 2) {
    throw cfgError(file, `${key} ${JSON.stringify(section)} must sum to head_dim / 2 = ${headDim / 2}`);
  }
  return section;
}

/** rope_scaling (4.x) or rope_parameters (5.x): "default" (none), "llama3", and for vision-language models M-RoPE
 * (rope_type "mrope", or "default" with an mrope_section, as transformers 4.x rewrites it). */
function parseRope(cfg: Json, file: string, headDim: number): { ropeTheta: number; ropeScaling: RopeScaling | null; mropeSection?: [number, number, number] } {
  const params = cfg['rope_parameters'];
  const scaling = cfg['rope_scaling'];
  const block = (params !== undefined && params !== null ? params : scaling) as Json | null | undefined;
  const blockKey = params !== undefined && params !== null ? 'rope_parameters' : 'rope_scaling';
  if (block !== undefined && block !== null && (typeof block !== 'object' || Array.isArray(block))) {
    throw cfgError(file, `${blockKey} must be an object`);
  }
  const thetaRaw = block?.['rope_theta'] ?? cfg['rope_theta'] ?? 10000;
  const ropeTheta = posNum(thetaRaw, 'rope_theta', file);
  const ropeType = block ? (block['rope_type'] ?? block['type'] ?? 'default') : 'default';
  const mrope = block?.['mrope_section'];
  if ((ropeType === 'default' || ropeType === 'mrope') && mrope !== undefined && mrope !== null) {
    return { ropeTheta, ropeScaling: null, mropeSection: parseMropeSection(mrope, `${blockKey}.mrope_section`, headDim, file) };
  }
  if (ropeType === 'mrope') throw cfgError(file, `${blockKey}.rope_type "mrope" needs mrope_section`);
  if (ropeType === 'default') return { ropeTheta, ropeScaling: null };
  if (ropeType !== 'llama3') {
    throw cfgError(file, `${blockKey}.rope_type ${JSON.stringify(ropeType)} is not supported (supported: default, llama3)`);
  }
  const b = block as Json;
  return {
    ropeTheta,
    ropeScaling: {
      type: 'llama3',
      factor: posNum(b['factor'], `${blockKey}.factor`, file),
      lowFreqFactor: posNum(b['low_freq_factor'], `${blockKey}.low_freq_factor`, file),
      highFreqFactor: posNum(b['high_freq_factor'], `${blockKey}.high_freq_factor`, file),
      originalMaxPositionEmbeddings: posNum(b['original_max_position_embeddings'], `${blockKey}.original_max_position_embeddings`, file),
    },
  };
}

function sub(c: Json, key: string, file: string): Json | undefined {
  const v = c[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'object' || Array.isArray(v)) throw cfgError(file, `${key} must be an object`);
  return v as Json;
}

/** vision_config of a Qwen2.5-VL checkpoint, plus the vision token ids (top level or text_config). */
function parseVisionConfig(top: Json, text: Json, lmHidden: number, file: string): VisionHyperParams {
  const v = sub(top, 'vision_config', file);
  if (v === undefined) throw cfgError(file, 'vision_config is missing (a Qwen2.5-VL checkpoint has one)');
  const key = (k: string): string => `vision_config.${k}`;
  const int = (k: string, fallback?: number): number => {
    try {
      return posInt(v, k, file, fallback);
    } catch {
      throw cfgError(file, `${key(k)} must be a positive integer, got ${JSON.stringify(v[k] ?? null)}`);
    }
  };
  const act = v['hidden_act'] ?? 'silu';
  if (act !== 'silu') throw new LlmError('LLM_ERR_UNSUPPORTED_ARCH', `model config ${file}: ${key('hidden_act')} ${JSON.stringify(act)} is not supported (supported: silu)`);
  const hiddenSize = int('hidden_size');
  const numHeads = int('num_heads');
  const headDim = hiddenSize / numHeads;
  if (!Number.isInteger(headDim) || headDim % 4 !== 0) {
    throw cfgError(file, `${key('hidden_size')} ${hiddenSize} / ${key('num_heads')} ${numHeads} must be a multiple of 4 (2-D rotary halves)`);
  }
  const depth = int('depth');
  const fullRaw = v['fullatt_block_indexes'] ?? [];
  if (!Array.isArray(fullRaw) || !fullRaw.every((x) => Number.isSafeInteger(x) && (x as number) >= 0 && (x as number) < depth)) {
    throw cfgError(file, `${key('fullatt_block_indexes')} must list block indexes below depth ${depth}, got ${JSON.stringify(fullRaw)}`);
  }
  const outHiddenSize = int('out_hidden_size');
  if (outHiddenSize !== lmHidden) throw cfgError(file, `${key('out_hidden_size')} ${outHiddenSize} must equal the language model's hidden_size ${lmHidden}`);
  const inChannels = int('in_chans', (v['in_channels'] as number | undefined) ?? 3);
  if (inChannels !== 3) throw cfgError(file, `${key('in_chans')} must be 3 (RGB), got ${inChannels}`);
  const patchSize = int('patch_size');
  const spatialMergeSize = int('spatial_merge_size');
  const windowSize = int('window_size');
  if (windowSize % (patchSize * spatialMergeSize) !== 0) {
    throw cfgError(file, `${key('window_size')} ${windowSize} must be a multiple of patch_size * spatial_merge_size = ${patchSize * spatialMergeSize}`);
  }
  const tokenId = (k: string, fallback: number): number => {
    const raw = top[k] ?? text[k] ?? fallback;
    const id = optTokenId(raw, k, file);
    return id ?? fallback;
  };
  return {
    depth,
    hiddenSize,
    intermediateSize: int('intermediate_size'),
    numHeads,
    inChannels,
    outHiddenSize,
    patchSize,
    spatialMergeSize,
    temporalPatchSize: int('temporal_patch_size'),
    windowSize,
    fullAttBlockIndexes: [...new Set(fullRaw as number[])].sort((a, b) => a - b),
    rmsNormEps: 1e-6,
    // Qwen2.5-VL's ids; configs carry them (image_token_id etc.), older ones do not.
    imageTokenId: tokenId('image_token_id', 151655),
    visionStartTokenId: tokenId('vision_start_token_id', 151652),
    visionEndTokenId: tokenId('vision_end_token_id', 151653),
  };
}

/** Parses a config.json object; `file` names it in errors. */
export function parseHfConfig(cfg: unknown, file: string): HfHyperParams {
  if (cfg === null || typeof cfg !== 'object' || Array.isArray(cfg)) throw cfgError(file, 'not a JSON object');
  const top = cfg as Json;
  const topType = typeof top['model_type'] === 'string' ? top['model_type'] : undefined;
  const topArchs = top['architectures'];
  const topArch = Array.isArray(topArchs) && typeof topArchs[0] === 'string' ? topArchs[0] : undefined;
  const visionLanguage = topArch !== undefined ? VISION_LANGUAGE_ARCHITECTURES.has(topArch) : VISION_LANGUAGE_MODEL_TYPES.has(topType ?? '');
  // Vision-language configs keep the language model's fields at the top level (transformers 4.x) or in text_config
  // (5.x); text_config wins, except for what 5.x keeps at the top (architectures, model_type, tie_word_embeddings).
  const text = visionLanguage ? (sub(top, 'text_config', file) ?? {}) : {};
  const c: Json = visionLanguage ? { ...top, ...text, architectures: topArchs, model_type: topType } : top;
  if (visionLanguage && top['tie_word_embeddings'] !== undefined) c['tie_word_embeddings'] = top['tie_word_embeddings'];
  const archs = c['architectures'];
  const hfArchitecture = Array.isArray(archs) && typeof archs[0] === 'string' ? archs[0] : undefined;
  // A config saved straight from transformers' XxxConfig (no model class) has architectures null: model_type names it.
  const modelType = typeof c['model_type'] === 'string' ? c['model_type'] : undefined;
  const architecture =
    hfArchitecture !== undefined
      ? SUPPORTED_HF_ARCHITECTURES[hfArchitecture]
      : archs === undefined || archs === null
        ? SUPPORTED_MODEL_TYPES[modelType ?? '']
        : undefined;
  if (hfArchitecture === 'BertModel' || (hfArchitecture === undefined && (archs === undefined || archs === null) && modelType === 'bert')) {
    return parseBertConfig(c, hfArchitecture ?? 'BertModel', file);
  }
  if (architecture === undefined && /^(Bert|Roberta|XLMRoberta|NomicBert|NewModel|ModernBert)/.test(hfArchitecture ?? modelType ?? '')) {
    // a BERT-style encoder (bidirectional, post-LN, WordPiece vocabulary) is a model family of its own
    throw new LlmError('LLM_ERR_UNSUPPORTED_ARCH', `model config ${file}: ${hfArchitecture ?? modelType} is a BERT-style encoder, which this build does not serve yet; embedding workers serve BertModel encoders and decoder embedding models (Qwen3-Embedding style: Qwen3Model, Qwen2Model, LlamaModel or *ForCausalLM)`);
  }
  if (architecture === undefined) {
    throw new LlmError(
      'LLM_ERR_UNSUPPORTED_ARCH',
      `model config ${file}: architecture ${JSON.stringify(hfArchitecture ?? archs ?? null)}${hfArchitecture === undefined ? ` (model_type ${JSON.stringify(modelType ?? null)})` : ''} is not supported (supported: ${Object.keys(SUPPORTED_HF_ARCHITECTURES).join(', ')})`,
    );
  }
  if (architecture === 'llama' && (c['attention_bias'] === true || c['mlp_bias'] === true)) {
    throw new LlmError('LLM_ERR_UNSUPPORTED_ARCH', `model config ${file}: LlamaForCausalLM with attention_bias/mlp_bias is not supported`);
  }
  if (architecture !== 'llama' && c['use_sliding_window'] === true) {
    throw new LlmError('LLM_ERR_UNSUPPORTED_ARCH', `model config ${file}: use_sliding_window is not supported`);
  }
  const layerTypes = c['layer_types'];
  if (Array.isArray(layerTypes) && layerTypes.some((x) => x !== 'full_attention')) {
    throw new LlmError('LLM_ERR_UNSUPPORTED_ARCH', `model config ${file}: layer_types other than full_attention (sliding-window layers) are not supported`);
  }
  const hiddenSize = posInt(c, 'hidden_size', file);
  const numHeads = posInt(c, 'num_attention_heads', file);
  const numKvHeads = posInt(c, 'num_key_value_heads', file, numHeads);
  if (numHeads % numKvHeads !== 0) throw cfgError(file, `num_attention_heads ${numHeads} is not a multiple of num_key_value_heads ${numKvHeads}`);
  const headDimRaw = c['head_dim'];
  const headDim = headDimRaw === undefined || headDimRaw === null ? hiddenSize / numHeads : posInt(c, 'head_dim', file);
  if (!Number.isInteger(headDim) || headDim % 2 !== 0) throw cfgError(file, `head_dim ${headDim} must be an even integer`);
  const { ropeTheta, ropeScaling, mropeSection } = parseRope(c, file, headDim);
  if (visionLanguage && mropeSection === undefined) throw cfgError(file, 'rope_scaling.mrope_section is missing (a Qwen2.5-VL language model uses M-RoPE)');
  const eps = c['rms_norm_eps'] ?? 1e-6;
  const vision = visionLanguage ? parseVisionConfig(top, text, hiddenSize, file) : undefined;
  return {
    ...(mropeSection === undefined ? {} : { mropeSection }),
    ...(vision === undefined ? {} : { vision }),
    architecture,
    hfArchitecture: hfArchitecture as string,
    vocabSize: posInt(c, 'vocab_size', file),
    hiddenSize,
    intermediateSize: posInt(c, 'intermediate_size', file),
    numLayers: posInt(c, 'num_hidden_layers', file),
    numHeads,
    numKvHeads,
    headDim,
    rmsNormEps: posNum(eps, 'rms_norm_eps', file),
    ropeTheta,
    ropeScaling,
    maxPositionEmbeddings: posInt(c, 'max_position_embeddings', file, 4096),
    // LlamaConfig, Qwen2Config and Qwen3Config all default tie_word_embeddings to false.
    tieWordEmbeddings: c['tie_word_embeddings'] === true,
    qkvBias: architecture === 'qwen2',
    qkNorm: architecture === 'qwen3',
    bosTokenId: optTokenId(c['bos_token_id'], 'bos_token_id', file),
    eosTokenIds: parseEosIds(c['eos_token_id'], 'eos_token_id', file),
    dtype: parseDtype(c['dtype'] ?? c['torch_dtype']),
  };
}

/** BertModel's config: absolute positions, token types, GELU (erf), LayerNorm. Heads are full multi-head attention. */
function parseBertConfig(c: Json, hfArchitecture: string, file: string): HfHyperParams {
  const act = c['hidden_act'] ?? 'gelu';
  if (act !== 'gelu') throw new LlmError('LLM_ERR_UNSUPPORTED_ARCH', `model config ${file}: hidden_act ${JSON.stringify(act)} is not supported for BertModel (gelu only)`);
  const posType = c['position_embedding_type'] ?? 'absolute';
  if (posType !== 'absolute') throw new LlmError('LLM_ERR_UNSUPPORTED_ARCH', `model config ${file}: position_embedding_type ${JSON.stringify(posType)} is not supported (absolute only)`);
  const hiddenSize = posInt(c, 'hidden_size', file);
  const numHeads = posInt(c, 'num_attention_heads', file);
  const headDim = hiddenSize / numHeads;
  if (!Number.isInteger(headDim)) throw cfgError(file, `hidden_size ${hiddenSize} is not a multiple of num_attention_heads ${numHeads}`);
  return {
    architecture: 'bert',
    hfArchitecture,
    vocabSize: posInt(c, 'vocab_size', file),
    hiddenSize,
    intermediateSize: posInt(c, 'intermediate_size', file),
    numLayers: posInt(c, 'num_hidden_layers', file),
    numHeads,
    numKvHeads: numHeads,
    headDim,
    rmsNormEps: posNum(c['layer_norm_eps'] ?? 1e-12, 'layer_norm_eps', file),
    ropeTheta: 10000,
    ropeScaling: null,
    maxPositionEmbeddings: posInt(c, 'max_position_embeddings', file, 512),
    tieWordEmbeddings: true,
    qkvBias: false,
    qkNorm: false,
    typeVocabSize: posInt(c, 'type_vocab_size', file, 2),
    bosTokenId: null,
    eosTokenIds: [],
    dtype: parseDtype(c['dtype'] ?? c['torch_dtype']),
  };
}
