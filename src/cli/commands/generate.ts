// `dynamo-sglang generate --model-path PATH --prompt TEXT --max-tokens N [...]`: one prompt, offline, through the
// engine; the continuation streams to stdout through the incremental detokenizer (or, with --json, one JSON
// object with the token ids and text).

import { LlmError } from '../../errors.js';
import { loadAddon } from '../../engine/addon.js';
import { openEngine } from '../../engine/engine.js';
import { loadModelSpec } from '../../engine/model.js';
import type { BackendKind, Engine, ModelSpec, SamplingParams } from '../../engine/types.js';
import { IncrementalDetokenizer, loadTokenizer } from '../../tokenizer/index.js';
import { numberFlag, parseCommandArgs, requireFlag, runCommand } from './make-model.js';

export interface GenerationOptions {
  maxTokens: number;
  sampling: SamplingParams;
  /** Token ids that end generation (the stop token itself is part of the output, as in SGLang). */
  stopTokenIds: readonly number[];
}

export interface GenerationResult {
  outputTokenIds: number[];
  finishReason: 'stop' | 'length';
}

/** Pages a single sequence needs for `tokens` positions. */
function pagesFor(tokens: number, pageSize: number): number[] {
  return Array.from({ length: Math.ceil(tokens / pageSize) }, (_, i) => i);
}

/**
 * Runs one sequence on an engine that it has to itself: one prefill step over the prompt, then one decode step
 * per token, with KV pages 0..n in order. `onToken` sees each sampled token as it comes.
 */
export function generateTokens(engine: Engine, promptIds: readonly number[], options: GenerationOptions, onToken?: (id: number) => void): GenerationResult {
  if (promptIds.length === 0) throw new LlmError('LLM_ERR_BAD_REQUEST', 'the prompt has no tokens');
  const pageSize = engine.kv.pageSize;
  const needed = Math.ceil((promptIds.length + options.maxTokens) / pageSize);
  if (needed > engine.kv.numPages) {
    throw new LlmError('LLM_ERR_CONTEXT_LENGTH', `prompt (${promptIds.length} tokens) + max tokens (${options.maxTokens}) need ${needed} KV pages; the pool has ${engine.kv.numPages}`);
  }
  const stop = new Set(options.stopTokenIds);
  const out: number[] = [];
  let tokenIds: number[] = [...promptIds];
  let startPos = 0;
  while (out.length < options.maxTokens) {
    const r = engine.step([{
      tokenIds,
      startPos,
      pages: pagesFor(startPos + tokenIds.length, pageSize),
      sample: true,
      sampling: options.sampling,
      outputIndex: out.length,
    }]);
    const id = r.tokens[0] as number;
    out.push(id);
    onToken?.(id);
    if (stop.has(id)) return { outputTokenIds: out, finishReason: 'stop' };
    startPos += tokenIds.length;
    tokenIds = [id];
  }
  return { outputTokenIds: out, finishReason: 'length' };
}

/** Opens an engine sized for one sequence of `maxTokensTotal` tokens; 'auto' takes CUDA when built and present. */
export function openEngineFor(spec: ModelSpec, device: 'cpu' | 'cuda' | 'auto', maxTokensTotal: number, maxBatchTokens: number, pageSize = 16): Engine {
  const options = (backend: BackendKind) => ({
    backend,
    deviceId: 0,
    pageSize,
    numPages: Math.ceil(maxTokensTotal / pageSize) + 1,
    memFractionStatic: 0.9,
    maxBatchTokens: Math.max(1, maxBatchTokens),
    maxSeqsPerStep: 1,
  });
  if (device !== 'auto') return openEngine(spec, options(device));
  if (loadAddon().backends.includes('cuda')) {
    try {
      return openEngine(spec, options('cuda'));
    } catch (err) {
      if (!(err instanceof LlmError) || (err.code !== 'LLM_ERR_NO_DEVICE' && err.code !== 'LLM_ERR_DEVICE')) throw err;
    }
  }
  return openEngine(spec, options('cpu'));
}

export const GENERATE_HELP = `Usage: dynamo-sglang generate --model-path PATH --prompt TEXT [options]

Runs one prompt offline through the engine and prints the continuation as it is generated.
  --model-path PATH      GGUF file or HF checkpoint directory
  --tokenizer-path PATH  tokenizer.json directory/file or GGUF (default: the model's own)
  --prompt TEXT          the prompt (BOS is added when the tokenizer asks for it)
  --chat                 wrap the prompt as a user message with the model's chat template
  --max-tokens N         tokens to generate (default 64)
  --temperature T        0 (default) = greedy
  --top-p P  --top-k K  --min-p P
  --seed S               sampling seed (reproducible)
  --ignore-eos           do not stop at end-of-sequence tokens
  --device D             cpu | cuda | auto (default auto)
  --json                 print {prompt, prompt_token_ids, output_token_ids, text, finish_reason}
`;

export async function generateCommand(argv: string[]): Promise<number> {
  return runCommand(async () => {
    const c = 'generate';
    const v = parseCommandArgs(c, argv, {
      'model-path': { type: 'string' },
      'tokenizer-path': { type: 'string' },
      prompt: { type: 'string' },
      chat: { type: 'boolean' },
      'max-tokens': { type: 'string' },
      temperature: { type: 'string' },
      'top-p': { type: 'string' },
      'top-k': { type: 'string' },
      'min-p': { type: 'string' },
      seed: { type: 'string' },
      'ignore-eos': { type: 'boolean' },
      device: { type: 'string' },
      json: { type: 'boolean' },
    });
    if (v['help'] === true) {
      process.stdout.write(GENERATE_HELP);
      return 0;
    }
    const modelPath = requireFlag(c, v, 'model-path');
    const prompt = v['prompt'];
    if (typeof prompt !== 'string') throw new LlmError('LLM_ERR_USAGE', `${c}: --prompt is required`);
    const maxTokens = numberFlag(c, v, 'max-tokens', { integer: true, min: 1, max: 1 << 20 }) ?? 64;
    const device = (v['device'] as string | undefined) ?? 'auto';
    if (device !== 'cpu' && device !== 'cuda' && device !== 'auto') throw new LlmError('LLM_ERR_USAGE', `${c}: --device must be cpu, cuda or auto, got ${JSON.stringify(device)}`);
    const sampling: SamplingParams = {
      temperature: numberFlag(c, v, 'temperature', { min: 0, max: 100 }) ?? 0,
      topP: numberFlag(c, v, 'top-p', { min: 0, max: 1 }) ?? 1,
      topK: numberFlag(c, v, 'top-k', { integer: true, min: -1 }) ?? -1,
      minP: numberFlag(c, v, 'min-p', { min: 0, max: 1 }) ?? 0,
      seed: numberFlag(c, v, 'seed', { integer: true, min: 0, max: Number.MAX_SAFE_INTEGER }) ?? null,
      logprobs: -1,
    };
    if (sampling.topP === 0) throw new LlmError('LLM_ERR_USAGE', `${c}: --top-p must be in (0, 1]`);

    const spec = await loadModelSpec(modelPath);
    const tokenizer = loadTokenizer(modelPath, v['tokenizer-path'] as string | undefined);
    const text = v['chat'] === true ? tokenizer.applyChatTemplate([{ role: 'user', content: prompt }]) : prompt;
    // A chat template writes its own special tokens (BOS included where the template wants it).
    const promptIds = tokenizer.encode(text, { addSpecialTokens: v['chat'] !== true });
    const tooBig = promptIds.find((id) => id >= spec.vocabSize);
    if (tooBig !== undefined) throw new LlmError('LLM_ERR_TOKENIZER', `tokenizer produced id ${tooBig}, outside the model's vocabulary of ${spec.vocabSize}`);
    const stopTokenIds = v['ignore-eos'] === true ? [] : [...new Set([...spec.eosTokenIds, ...tokenizer.eosTokenIds])];

    const engine = openEngineFor(spec, device, promptIds.length + maxTokens, promptIds.length);
    try {
      const detok = new IncrementalDetokenizer(tokenizer);
      const json = v['json'] === true;
      const result = generateTokens(engine, promptIds, { maxTokens, sampling, stopTokenIds }, (id) => {
        const piece = detok.push(id);
        if (!json && piece !== '') process.stdout.write(piece);
      });
      const tail = detok.flush();
      if (json) {
        process.stdout.write(JSON.stringify({
          prompt: text,
          prompt_token_ids: promptIds,
          output_token_ids: result.outputTokenIds,
          text: detok.output,
          finish_reason: result.finishReason,
        }) + '\n');
      } else {
        process.stdout.write(tail + '\n');
      }
    } finally {
      engine.close();
    }
    return 0;
  });
}
