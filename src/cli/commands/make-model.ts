// `dynamo-sglang make-model --shape S --seed N --out DIR [--dtype bf16|f16|f32] [--std X] [--gguf]`:
// writes a random-initialised HF checkpoint of a known shape (and, with --gguf, the same weights as GGUF F16).

import { mkdirSync } from 'node:fs';
import { Type } from '@sinclair/typebox';
import { parseCommandLine, renderHelp, usageError } from '../args.js';
import type { FlagSpec } from '../args.js';
import { MAKE_MODEL_POOLINGS, MODEL_SHAPE_NAMES, makeModel, type MakeModelPooling } from '../../engine/make-model.js';
import type { ModelShapeName } from '../../engine/make-model.js';
import type { DType } from '../../engine/types.js';
import { logger } from '../../runtime/log.js';
import { ProgressReport } from '../../runtime/progress.js';

const FLAGS: readonly FlagSpec[] = [
  { name: 'shape', kind: 'string', schema: Type.Union(MODEL_SHAPE_NAMES.map((s) => Type.Literal(s))), valueName: 'SHAPE', help: 'model shape to write' },
  { name: 'seed', kind: 'int', schema: Type.Integer({ minimum: 0, maximum: 2 ** 32 - 1 }), valueName: 'N', help: 'PRNG seed; the same seed writes the same weights' },
  { name: 'out', kind: 'string', schema: Type.String({ minLength: 1 }), valueName: 'DIR', help: 'output directory (created)' },
  { name: 'dtype', kind: 'string', schema: Type.Union([Type.Literal('bf16'), Type.Literal('f16'), Type.Literal('f32')]), valueName: 'D', default: 'bf16', defaultText: 'bf16', help: 'weight dtype of model.safetensors' },
  { name: 'std', kind: 'number', schema: Type.Number({ exclusiveMinimum: 0, maximum: 1 }), valueName: 'X', default: 0.02, defaultText: '0.02', help: 'standard deviation of the weights (norm weights are 1 + noise of this size)' },
  { name: 'pooling', kind: 'string', schema: Type.Union(MAKE_MODEL_POOLINGS.map((s) => Type.Literal(s))), valueName: 'P', help: 'embedding shapes: the pooling the sentence-transformers files declare (default last)' },
  { name: 'gguf', kind: 'bool', schema: Type.Boolean(), default: false, help: 'also write model-f16.gguf: the same weights as GGUF F16 with llama.cpp naming' },
];

export function makeModelHelp(): string {
  return renderHelp(
    'dynamo-sglang make-model --shape SHAPE --seed N --out DIR [flags]',
    'Writes a random-initialised HF checkpoint of a real model shape: config.json (as transformers 5.x writes it), ' +
      'model.safetensors, generation_config.json and a Qwen tokenizer (tiny shapes keep its first 1024 tokens).',
    [{ title: 'Flags', flags: FLAGS }],
  );
}

/** Throws a usage error naming a required flag that is absent. */
export function required<T>(value: T | undefined, flag: string): T {
  if (value === undefined) throw usageError(`--${flag} is required (see --help)`);
  return value;
}

export async function main(argv: string[]): Promise<number> {
  const { values, help } = parseCommandLine(argv, FLAGS);
  if (help) {
    process.stdout.write(makeModelHelp());
    return 0;
  }
  const shape = required(values['shape'], 'shape') as ModelShapeName;
  const seed = required(values['seed'], 'seed') as number;
  const outDir = required(values['out'], 'out') as string;
  try {
    mkdirSync(outDir, { recursive: true });
  } catch (err) {
    throw usageError(`--out ${outDir}: cannot create the output directory: ${(err as Error).message}`);
  }
  // progress per weight file: a live line on a terminal, a log record every few seconds otherwise
  const log = logger('make-model');
  let report: { file: string; progress: ProgressReport } | null = null;
  const result = makeModel({
    shape,
    seed,
    outDir,
    dtype: values['dtype'] as DType,
    std: values['std'] as number,
    gguf: values['gguf'] === true,
    ...(values['pooling'] !== undefined ? { pooling: values['pooling'] as MakeModelPooling } : {}),
    onProgress: (file, written, total) => {
      if (report?.file !== file) {
        report?.progress.end();
        report = { file, progress: new ProgressReport({ label: `writing ${file}`, total, unit: 'bytes', log }) };
      }
      report.progress.update(written);
      if (written === total) report.progress.end();
    },
  });
  for (const f of result.files) process.stdout.write(`${f}\n`);
  return 0;
}
