// HF config.json → model hyper-parameters for LlamaForCausalLM, Qwen2ForCausalLM and Qwen3ForCausalLM.
// Accepts both the transformers 4.x spelling (rope_theta + rope_scaling, torch_dtype) and the 5.x one
// (rope_parameters holding rope_theta and the scaling, dtype).

import { LlmError } from '../errors.js';
import type { Architecture, DType, ModelSpec, RopeScaling } from './types.js';

export const SUPPORTED_HF_ARCHITECTURES: Readonly<Record<string, Architecture>> = {
  LlamaForCausalLM: 'llama',
  Qwen2ForCausalLM: 'qwen2',
  Qwen3ForCausalLM: 'qwen3',
  // The bare decoders, as transformers saves an AutoModel (embedding checkpoints such as Qwen3-Embedding): tensor
  // names without the "model." prefix and no LM head (tied, or unused by an embedding worker).
  LlamaModel: 'llama',
  Qwen2Model: 'qwen2',
  Qwen3Model: 'qwen3',
};

/** model_type values naming the same architectures, for configs without `architectures`. */
const SUPPORTED_MODEL_TYPES: Readonly<Record<string, Architecture>> = { llama: 'llama', qwen2: 'qwen2', qwen3: 'qwen3' };

/** A config.json read into the engine's hyper-parameters (ModelSpec without tensors and rope layout), plus what
 * only the HF side knows. */
export interface HfHyperParams extends Omit<ModelSpec, 'tensors' | 'ropeLayout'> {
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

/** rope_scaling (4.x) or rope_parameters (5.x): only "default" (none) and "llama3" are supported. */
function parseRope(cfg: Json, file: string): { ropeTheta: number; ropeScaling: RopeScaling | null } {
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

/** Parses a config.json object; `file` names it in errors. */
export function parseHfConfig(cfg: unknown, file: string): HfHyperParams {
  if (cfg === null || typeof cfg !== 'object' || Array.isArray(cfg)) throw cfgError(file, 'not a JSON object');
  const c = cfg as Json;
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
  const { ropeTheta, ropeScaling } = parseRope(c, file);
  const eps = c['rms_norm_eps'] ?? 1e-6;
  return {
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
