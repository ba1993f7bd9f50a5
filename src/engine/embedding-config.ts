// How a checkpoint's embeddings are made: the pooling and normalisation it declares through the sentence-transformers
// files beside it (modules.json naming a Pooling module whose config.json sets one pooling_mode_*, and a Normalize
// module), or, without them, the decoder embedding default (Qwen3-Embedding: last token, L2-normalised).

import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { LlmError } from '../errors.js';
import { resolveModelPath } from './model.js';
import type { Architecture, EmbedPooling } from './types.js';

export interface EmbeddingModelConfig {
  pooling: EmbedPooling;
  normalize: boolean;
  /** Whether a request may ask for fewer `dimensions` (Matryoshka: the first n, re-normalised): as config.json
   * declares (`is_matryoshka`, or a `matryoshka_dimensions` list), else for Qwen3 (Qwen3-Embedding is trained for it). */
  matryoshka: boolean;
  /** The dimensions a request may ask for (config.json's `matryoshka_dimensions`); null: any up to the hidden size. */
  matryoshkaDimensions: number[] | null;
  /** Where the pooling came from, for the start-up line. */
  source: string;
}

/** What a running worker tells about its embeddings (Supervisor.embeddingModel). */
export interface EmbeddingModel extends EmbeddingModelConfig {
  hiddenSize: number;
  /** The longest input one pass takes: the context (--context-length, else the model's), within a pass's tokens. */
  maxInputTokens: number;
}

type Json = Record<string, unknown>;

function readJson(file: string): unknown {
  try {
    return JSON.parse(readFileSync(file, 'utf8'));
  } catch (err) {
    throw new LlmError('LLM_ERR_MODEL_FORMAT', `${file} is not valid JSON: ${(err as Error).message}`);
  }
}

/** sentence-transformers pooling modes and ours; the ones we do not compute are refused by name. */
const POOLING_MODES: readonly [key: string, pooling: EmbedPooling | null][] = [
  ['pooling_mode_lasttoken', 'last'],
  ['pooling_mode_mean_tokens', 'mean'],
  ['pooling_mode_cls_token', 'cls'],
  ['pooling_mode_max_tokens', null],
  ['pooling_mode_mean_sqrt_len_tokens', null],
  ['pooling_mode_weightedmean_tokens', null],
];

export function readEmbeddingConfig(modelPath: string, architecture: Architecture): EmbeddingModelConfig {
  const m = resolveModelPath(modelPath);
  const { matryoshka, matryoshkaDimensions } = matryoshkaOf(m.kind === 'hf' ? join(m.path, 'config.json') : null, architecture);
  const modulesFile = m.kind === 'hf' ? join(m.path, 'modules.json') : null;
  if (modulesFile === null || !existsSync(modulesFile)) {
    return architecture === 'bert'
      ? { pooling: 'cls', normalize: true, matryoshka, matryoshkaDimensions, source: 'encoder default (no modules.json)' }
      : { pooling: 'last', normalize: true, matryoshka, matryoshkaDimensions, source: 'decoder default (no modules.json)' };
  }
  const modules = readJson(modulesFile);
  if (!Array.isArray(modules)) throw new LlmError('LLM_ERR_MODEL_FORMAT', `${modulesFile}: expected a list of modules`);
  const typeOf = (x: unknown): string => (x !== null && typeof x === 'object' && typeof (x as Json)['type'] === 'string' ? ((x as Json)['type'] as string) : '');
  const poolingModule = modules.find((x) => typeOf(x).endsWith('.Pooling')) as Json | undefined;
  const normalize = modules.some((x) => typeOf(x).endsWith('.Normalize'));
  if (poolingModule === undefined) return { pooling: 'last', normalize, matryoshka, matryoshkaDimensions, source: `${modulesFile} (no Pooling module: last token)` };
  const dir = typeof poolingModule['path'] === 'string' ? poolingModule['path'] : '';
  const poolingFile = join(m.path, dir, 'config.json');
  if (!existsSync(poolingFile)) throw new LlmError('LLM_ERR_MODEL_FORMAT', `${modulesFile} names a Pooling module in ${dir || '.'}, which has no config.json`);
  const cfg = readJson(poolingFile);
  if (cfg === null || typeof cfg !== 'object' || Array.isArray(cfg)) throw new LlmError('LLM_ERR_MODEL_FORMAT', `${poolingFile}: not a JSON object`);
  const on = POOLING_MODES.filter(([key]) => (cfg as Json)[key] === true);
  if (on.length !== 1) {
    throw new LlmError('LLM_ERR_MODEL_FORMAT', `${poolingFile}: exactly one pooling_mode_* must be true (${on.length ? on.map(([k]) => k).join(', ') : 'none'} is)`);
  }
  const [key, pooling] = on[0]!;
  if (pooling === null) {
    throw new LlmError('LLM_ERR_UNSUPPORTED_ARCH', `${poolingFile}: ${key} is not supported (supported: pooling_mode_lasttoken, pooling_mode_mean_tokens, pooling_mode_cls_token)`);
  }
  return { pooling, normalize, matryoshka, matryoshkaDimensions, source: poolingFile };
}

function matryoshkaOf(configFile: string | null, architecture: Architecture): { matryoshka: boolean; matryoshkaDimensions: number[] | null } {
  const cfg = configFile !== null && existsSync(configFile) ? (readJson(configFile) as Json | null) : null;
  const dims = cfg?.['matryoshka_dimensions'];
  if (dims !== undefined && dims !== null) {
    if (!Array.isArray(dims) || dims.length === 0 || !dims.every((d) => Number.isSafeInteger(d) && (d as number) > 0)) {
      throw new LlmError('LLM_ERR_MODEL_FORMAT', `${configFile}: matryoshka_dimensions must be a list of positive integers`);
    }
    return { matryoshka: true, matryoshkaDimensions: dims as number[] };
  }
  const declared = cfg?.['is_matryoshka'];
  return { matryoshka: typeof declared === 'boolean' ? declared : architecture === 'qwen3', matryoshkaDimensions: null };
}
