// `dynamo-sglang generate --model-path PATH --prompt TEXT --max-tokens N [...]`: one prompt, offline, through the
// engine; the continuation streams to stdout through the incremental detokenizer (or, with --json, one JSON
// object with the token ids and text).

import { Type } from '@sinclair/typebox';
import { LlmError } from '../../errors.js';
import { parseCommandLine, renderHelp } from '../args.js';
import type { FlagSpec } from '../args.js';
import { loadAddon } from '../../engine/addon.js';
import { openEngine } from '../../engine/engine.js';
import { packFor } from '../../engine/step.js';
import { loadModelSpec } from '../../engine/model.js';
import type { BackendKind, Engine, ModelSpec, SamplingParams } from '../../engine/types.js';
import { IncrementalDetokenizer, loadTokenizer } from '../../tokenizer/index.js';
import { required } from './make-model.js';

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
    const r = engine.step(packFor(engine, [{
      tokenIds,
      startPos,
      pages: pagesFor(startPos + tokenIds.length, pageSize),
      sample: true,
      sampling: options.sampling,
      outputIndex: out.length,
    }]));
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

const FLAGS: readonly FlagSpec[] = [
  { name: 'model-path', kind: 'string', schema: Type.String({ minLength: 1 }), valueName: 'PATH', help: 'GGUF file or HF checkpoint directory' },
  { name: 'tokenizer-path', kind: 'string', schema: Type.String({ minLength: 1 }), valueName: 'PATH', help: "tokenizer.json directory or file, or a GGUF file (default: the model's own tokenizer)" },
  { name: 'prompt', kind: 'string', schema: Type.String(), valueName: 'TEXT', help: 'the prompt (BOS is added when the tokenizer asks for it)' },
  { name: 'chat', kind: 'bool', schema: Type.Boolean(), default: false, help: "wrap the prompt as a user message with the model's chat template" },
  { name: 'max-tokens', kind: 'int', schema: Type.Integer({ minimum: 1, maximum: 1 << 20 }), valueName: 'N', default: 64, defaultText: '64', help: 'tokens to generate' },
  { name: 'temperature', kind: 'number', schema: Type.Number({ minimum: 0, maximum: 100 }), valueName: 'T', default: 0, defaultText: '0 (greedy)', help: 'sampling temperature' },
  { name: 'top-p', kind: 'number', schema: Type.Number({ exclusiveMinimum: 0, maximum: 1 }), valueName: 'P', default: 1, defaultText: '1 (off)', help: 'nucleus sampling mass' },
  { name: 'top-k', kind: 'int', schema: Type.Integer({ minimum: -1 }), valueName: 'K', default: -1, defaultText: '-1 (off)', help: 'sample among the K most likely tokens' },
  { name: 'min-p', kind: 'number', schema: Type.Number({ minimum: 0, maximum: 1 }), valueName: 'P', default: 0, defaultText: '0 (off)', help: 'drop tokens below P times the top probability' },
  { name: 'seed', kind: 'int', schema: Type.Integer({ minimum: 0, maximum: Number.MAX_SAFE_INTEGER }), valueName: 'S', help: 'sampling seed (the same seed replays exactly)' },
  { name: 'ignore-eos', kind: 'bool', schema: Type.Boolean(), default: false, help: 'do not stop at end-of-sequence tokens' },
  { name: 'device', kind: 'string', schema: Type.Union([Type.Literal('cpu'), Type.Literal('cuda'), Type.Literal('auto')]), valueName: 'D', default: 'auto', defaultText: 'auto', help: 'engine backend; auto takes CUDA when it is built and a GPU is present' },
  { name: 'json', kind: 'bool', schema: Type.Boolean(), default: false, help: 'print one JSON object {prompt, prompt_token_ids, output_token_ids, text, finish_reason}' },
];

export function generateHelp(): string {
  return renderHelp(
    'dynamo-sglang generate --model-path PATH --prompt TEXT [flags]',
    'Runs one prompt offline through the engine and prints the continuation as it is generated.',
    [{ title: 'Flags', flags: FLAGS }],
  );
}

export async function main(argv: string[]): Promise<number> {
  const { values: v, help } = parseCommandLine(argv, FLAGS);
  if (help) {
    process.stdout.write(generateHelp());
    return 0;
  }
  const modelPath = required(v['model-path'], 'model-path') as string;
  const prompt = required(v['prompt'], 'prompt') as string;
  const maxTokens = v['max-tokens'] as number;
  const device = v['device'] as 'cpu' | 'cuda' | 'auto';
  const chat = v['chat'] === true;
  const sampling: SamplingParams = {
    temperature: v['temperature'] as number,
    topP: v['top-p'] as number,
    topK: v['top-k'] as number,
    minP: v['min-p'] as number,
    seed: (v['seed'] as number | undefined) ?? null,
    logprobs: -1,
  };

  const spec = await loadModelSpec(modelPath);
  const tokenizer = loadTokenizer(modelPath, v['tokenizer-path'] as string | undefined);
  const text = chat ? tokenizer.applyChatTemplate([{ role: 'user', content: prompt }]) : prompt;
  // A chat template writes its own special tokens (BOS included where the template wants it).
  const promptIds = tokenizer.encode(text, { addSpecialTokens: !chat });
  const tooBig = promptIds.find((id) => id >= spec.vocabSize);
  if (tooBig !== undefined) throw new LlmError('LLM_ERR_TOKENIZER', `tokenizer produced id ${tooBig}, outside the model's vocabulary of ${spec.vocabSize}`);
  // past the trained positions the output is noise, and a huge --max-tokens would run for minutes
  const room = spec.maxPositionEmbeddings - promptIds.length;
  if (maxTokens > room) {
    throw new LlmError(
      'LLM_ERR_USAGE',
      room <= 0
        ? `--prompt: ${promptIds.length} tokens leave no room in the model's context length of ${spec.maxPositionEmbeddings}`
        : `--max-tokens ${maxTokens}: with the prompt's ${promptIds.length} tokens this exceeds the model's context length of ${spec.maxPositionEmbeddings} (at most ${room})`,
    );
  }
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
}
