// The shape of `bench --json` output: the config that produced it, and per load point the summary and every
// request's timings. These schemas are the source of the types the runner fills in.
import { Type, type Static } from '@sinclair/typebox';
import { Nullable } from '../protocol/common.js';

export const DistributionSchema = Type.Object({
  mean: Type.Number(),
  p50: Type.Number(),
  p90: Type.Number(),
  p99: Type.Number(),
  count: Type.Integer({ minimum: 1 }),
});
export type Distribution = Static<typeof DistributionSchema>;

export const RequestRecordSchema = Type.Object({
  ok: Type.Boolean(),
  error: Type.Union([Type.String(), Type.Null()]),
  startMs: Type.Number({ description: 'ms from the run start to sending the request' }),
  ttftMs: Nullable(Type.Number()),
  e2eMs: Nullable(Type.Number()),
  itlMs: Type.Array(Type.Number(), { description: 'per-token gaps: the time between network reads spread over the tokens that read carried' }),
  promptTokens: Type.Union([Type.Integer(), Type.Null()], { description: 'from the usage chunk; null without one' }),
  outputTokens: Type.Integer({ minimum: 0 }),
  outputTokensFrom: Type.Union([Type.Literal('usage'), Type.Literal('chunks')]),
});
export type RequestRecord = Static<typeof RequestRecordSchema>;

const OptDistribution = Nullable(DistributionSchema);

export const RunSummarySchema = Type.Object({
  completed: Type.Integer({ minimum: 0 }),
  failed: Type.Integer({ minimum: 0 }),
  durationS: Type.Number(),
  requestThroughput: Type.Number({ description: 'completed requests / s' }),
  outputThroughput: Type.Number({ description: 'output tokens / s' }),
  totalThroughput: Type.Number({ description: '(input + output tokens) / s' }),
  totalInputTokens: Type.Integer({ minimum: 0 }),
  totalOutputTokens: Type.Integer({ minimum: 0 }),
  inputTokensFromUsage: Type.Boolean({ description: 'false when some prompt counts are the local estimate' }),
  ttftMs: OptDistribution,
  tpotMs: OptDistribution,
  itlMs: OptDistribution,
  e2eMs: OptDistribution,
  errors: Type.Array(Type.Object({ message: Type.String(), count: Type.Integer({ minimum: 1 }) })),
});
export type RunSummary = Static<typeof RunSummarySchema>;

export const LoadShapeSchema = Type.Object({
  concurrency: Type.Union([Type.Integer({ minimum: 1 }), Type.Null()], { description: 'null = unbounded' }),
  requestRate: Type.Union([Type.Number({ exclusiveMinimum: 0 }), Type.Null()], { description: 'Poisson req/s; null = as fast as slots free up' }),
  traceTimeScale: Type.Optional(Type.Number({ exclusiveMinimum: 0, description: 'replaying a trace: recorded gaps times this factor' })),
});
export type LoadShape = Static<typeof LoadShapeSchema>;

/** Lengths uniform in [max(1, floor(len * ratio)), len]; ratio 1 = fixed. */
export const LengthSpecSchema = Type.Object({ len: Type.Integer({ minimum: 1 }), ratio: Type.Number({ minimum: 0, maximum: 1 }) });
export type LengthSpec = Static<typeof LengthSpecSchema>;

export const BenchConfigSchema = Type.Object({
  url: Type.String(),
  model: Type.String(),
  endpoint: Type.Union([Type.Literal('completions'), Type.Literal('chat'), Type.Literal('embeddings')]),
  dataset: Type.Union([Type.Literal('random'), Type.Literal('sharegpt'), Type.Literal('trace')]),
  datasetPath: Type.Optional(Type.Union([Type.String(), Type.Null()])),
  numPrompts: Type.Integer({ minimum: 1 }),
  input: LengthSpecSchema,
  output: LengthSpecSchema,
  tokenizer: Type.Union([Type.String(), Type.Null()], { description: 'where prompt tokens were counted (a tokenizer or model path)' }),
  ignoreEos: Type.Boolean(),
  temperature: Type.Number(),
  seed: Type.Integer(),
  warmup: Type.Integer({ minimum: 0 }),
  timeoutS: Type.Number(),
  /** Mean prompt length by the local tokenizer; null without one. */
  promptTokensMean: Type.Union([Type.Number(), Type.Null()]),
});
export type BenchConfig = Static<typeof BenchConfigSchema>;

export const BenchResultsSchema = Type.Object(
  {
    tool: Type.Literal('dynamo-sglang bench'),
    version: Type.String(),
    date: Type.String({ description: 'ISO time the benchmark started' }),
    label: Type.Optional(Type.String({ description: 'the name of this run in charts (--label)' })),
    card: Type.Optional(Type.Union([Type.String(), Type.Null()], { description: 'the accelerator or machine of the server (--card)' })),
    commit: Type.Optional(Type.Union([Type.String(), Type.Null()], { description: 'git commit of the bench\'s checkout, when it is one' })),
    config: BenchConfigSchema,
    runs: Type.Array(
      Type.Object({
        load: LoadShapeSchema,
        interrupted: Type.Boolean({ description: 'stopped (Ctrl-C) before every prompt was answered' }),
        summary: RunSummarySchema,
        requests: Type.Array(RequestRecordSchema),
      }),
      { minItems: 1 },
    ),
  },
  { $id: 'BenchResults', title: 'BenchResults' },
);
export type BenchResults = Static<typeof BenchResultsSchema>;
