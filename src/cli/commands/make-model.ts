// `dynamo-sglang make-model --shape S --seed N --out DIR [--dtype bf16|f16|f32] [--std X] [--gguf]`:
// writes a random-initialised HF checkpoint of a known shape (and, with --gguf, the same weights as GGUF F16).

import { parseArgs } from 'node:util';
import type { ParseArgsConfig } from 'node:util';
import { LlmError } from '../../errors.js';
import { MODEL_SHAPE_NAMES, makeModel } from '../../engine/make-model.js';
import type { ModelShapeName } from '../../engine/make-model.js';
import type { DType } from '../../engine/types.js';

type Options = NonNullable<ParseArgsConfig['options']>;

/** Strict node:util parseArgs whose failures become LLM_ERR_USAGE errors naming the flag. */
export function parseCommandArgs(command: string, argv: string[], options: Options): Record<string, string | boolean | undefined> {
  try {
    const { values } = parseArgs({ args: argv, options: { ...options, help: { type: 'boolean', short: 'h' } }, strict: true, allowPositionals: false });
    return values as Record<string, string | boolean | undefined>;
  } catch (err) {
    throw new LlmError('LLM_ERR_USAGE', `${command}: ${(err as Error).message}`);
  }
}

export function requireFlag(command: string, values: Record<string, string | boolean | undefined>, flag: string): string {
  const v = values[flag];
  if (typeof v !== 'string' || v === '') throw new LlmError('LLM_ERR_USAGE', `${command}: --${flag} is required`);
  return v;
}

export function numberFlag(command: string, values: Record<string, string | boolean | undefined>, flag: string, check: { integer?: boolean; min?: number; max?: number }): number | undefined {
  const raw = values[flag];
  if (raw === undefined) return undefined;
  const v = Number(raw);
  const ok = raw !== '' && Number.isFinite(v) && (!check.integer || Number.isSafeInteger(v)) && (check.min === undefined || v >= check.min) && (check.max === undefined || v <= check.max);
  if (!ok) {
    const range = [check.min !== undefined ? `>= ${check.min}` : '', check.max !== undefined ? `<= ${check.max}` : ''].filter(Boolean).join(' and ');
    throw new LlmError('LLM_ERR_USAGE', `${command}: --${flag} must be ${check.integer ? 'an integer' : 'a number'}${range ? ' ' + range : ''}, got ${JSON.stringify(raw)}`);
  }
  return v;
}

/** Runs a command body: usage errors print and return 2, other coded errors print and return 1. */
export async function runCommand(body: () => Promise<number>): Promise<number> {
  try {
    return await body();
  } catch (err) {
    if (!(err instanceof LlmError)) throw err;
    process.stderr.write(`dynamo-sglang: ${err.message} (${err.code})\n`);
    return err.code === 'LLM_ERR_USAGE' ? 2 : 1;
  }
}

export const MAKE_MODEL_HELP = `Usage: dynamo-sglang make-model --shape SHAPE --seed N --out DIR [options]

Writes a random-initialised HF checkpoint (config.json, model.safetensors, generation_config.json, Qwen tokenizer).
  --shape SHAPE   ${MODEL_SHAPE_NAMES.join(' | ')}
  --seed N        PRNG seed (non-negative integer); the same seed writes the same weights
  --out DIR       output directory (created)
  --dtype D       bf16 (default) | f16 | f32
  --std X         weight standard deviation (default 0.02; norm weights are 1 + noise)
  --gguf          also write model-f16.gguf: the same weights as GGUF F16 (llama.cpp naming)
`;

export async function makeModelCommand(argv: string[]): Promise<number> {
  return runCommand(async () => {
    const values = parseCommandArgs('make-model', argv, {
      shape: { type: 'string' },
      seed: { type: 'string' },
      out: { type: 'string' },
      dtype: { type: 'string' },
      std: { type: 'string' },
      gguf: { type: 'boolean' },
    });
    if (values['help'] === true) {
      process.stdout.write(MAKE_MODEL_HELP);
      return 0;
    }
    const shape = requireFlag('make-model', values, 'shape');
    if (!(MODEL_SHAPE_NAMES as readonly string[]).includes(shape)) {
      throw new LlmError('LLM_ERR_USAGE', `make-model: --shape must be one of ${MODEL_SHAPE_NAMES.join(', ')}, got ${JSON.stringify(shape)}`);
    }
    const dtype = (values['dtype'] as string | undefined) ?? 'bf16';
    if (!['bf16', 'f16', 'f32'].includes(dtype)) throw new LlmError('LLM_ERR_USAGE', `make-model: --dtype must be bf16, f16 or f32, got ${JSON.stringify(dtype)}`);
    requireFlag('make-model', values, 'seed');
    const seed = numberFlag('make-model', values, 'seed', { integer: true, min: 0, max: 2 ** 32 - 1 }) as number;
    const std = numberFlag('make-model', values, 'std', { min: 1e-6, max: 1 });
    const result = makeModel({
      shape: shape as ModelShapeName,
      seed,
      outDir: requireFlag('make-model', values, 'out'),
      dtype: dtype as DType,
      gguf: values['gguf'] === true,
      ...(std === undefined ? {} : { std }),
    });
    for (const f of result.files) process.stdout.write(`${f}\n`);
    return 0;
  });
}
