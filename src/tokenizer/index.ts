// loadTokenizer: the tokenizer for a model path (GGUF vocabulary or HF tokenizer.json), or an explicit one.

import { existsSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { LlmError } from '../errors.js';
import { readGguf } from '../engine/gguf.js';
import { HfTokenizer } from './hf.js';
import { SpmTokenizer } from './spm.js';
import type { Tokenizer } from './types.js';

export type { ChatMessage, ChatTemplateOptions, DecodeOptions, EncodeOptions, Tokenizer } from './types.js';
export { IncrementalDetokenizer } from './detokenizer.js';
export { HfTokenizer } from './hf.js';
export { SpmTokenizer } from './spm.js';

function loadFrom(path: string): Tokenizer {
  const abs = resolve(path);
  if (!existsSync(abs)) throw new LlmError('LLM_ERR_MODEL_NOT_FOUND', `tokenizer path ${path} does not exist`);
  if (statSync(abs).isDirectory()) {
    if (!existsSync(join(abs, 'tokenizer.json'))) {
      throw new LlmError('LLM_ERR_TOKENIZER', `directory ${path} has no tokenizer.json (only HF fast tokenizers are supported)`);
    }
    return HfTokenizer.fromPath(abs);
  }
  if (abs.endsWith('.json')) return HfTokenizer.fromPath(abs);
  const g = readGguf(abs);
  return g.metadata.get('tokenizer.ggml.model') === 'gpt2' ? HfTokenizer.fromGgufBpe(g) : SpmTokenizer.fromGguf(g);
}

/**
 * The tokenizer of a model: `tokenizerPath` when given (a directory with tokenizer.json, a tokenizer.json file
 * or a GGUF file), else the model's own (tokenizer.json in an HF directory, the vocabulary inside a GGUF file).
 */
export function loadTokenizer(modelPath: string, tokenizerPath?: string): Tokenizer {
  return loadFrom(tokenizerPath ?? modelPath);
}
