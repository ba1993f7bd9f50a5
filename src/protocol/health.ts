// Health-check payloads (reference §6): what the runtime sends to an idle endpoint as a canary request.
import { Type, type Static } from '@sinclair/typebox';
import { U16, U32 } from './common.js';

/** SGLang's FAKE_BOOTSTRAP_HOST: a bootstrap host that makes the engine skip the real KV transfer. */
export const FAKE_BOOTSTRAP_HOST = '2.2.2.2';

const HealthStopConditions = Type.Object({ max_tokens: Type.Literal(1), ignore_eos: Type.Literal(false) });
const HealthSamplingOptions = Type.Object({ temperature: Type.Number(), top_p: Type.Number(), top_k: Type.Integer() });

/** Aggregated / decode-aggregated, embedding and multimodal aggregated workers. In text mode `prompt: "Test"`
 * replaces `token_ids`. */
export const SglangHealthCheckPayloadSchema = Type.Object(
  {
    stop_conditions: HealthStopConditions,
    sampling_options: HealthSamplingOptions,
    eos_token_ids: Type.Array(U32(), { maxItems: 0 }),
    annotations: Type.Array(Type.String(), { maxItems: 0 }),
    token_ids: Type.Optional(Type.Array(U32(), { minItems: 1, maxItems: 1 })),
    prompt: Type.Optional(Type.Literal('Test')),
  },
  { $id: 'SglangHealthCheckPayload', title: 'SglangHealthCheckPayload' },
);
export type SglangHealthCheckPayload = Static<typeof SglangHealthCheckPayloadSchema>;

/** Disaggregated decode and prefill workers (`SglangPrefillHealthCheckPayload` is the same): a fake transfer. */
export const SglangDisaggHealthCheckPayloadSchema = Type.Object(
  {
    ...SglangHealthCheckPayloadSchema.properties,
    bootstrap_info: Type.Object({
      bootstrap_host: Type.String(),
      bootstrap_port: U16(),
      bootstrap_room: Type.Literal(0),
    }),
  },
  { $id: 'SglangDisaggHealthCheckPayload', title: 'SglangDisaggHealthCheckPayload' },
);
export type SglangDisaggHealthCheckPayload = Static<typeof SglangDisaggHealthCheckPayloadSchema>;

/** Prefill payload before 2026-03 (legacy `{request, sampling_params}` wrapper). */
export const LegacyPrefillHealthCheckPayloadSchema = Type.Object(
  {
    request: Type.Object({ token_ids: Type.Array(U32(), { minItems: 1, maxItems: 1 }) }),
    sampling_params: Type.Object({
      max_new_tokens: Type.Literal(1),
      temperature: Type.Number(),
      top_p: Type.Number(),
      top_k: Type.Integer(),
      ignore_eos: Type.Literal(false),
    }),
  },
  { $id: 'LegacyPrefillHealthCheckPayload', title: 'LegacyPrefillHealthCheckPayload' },
);
export type LegacyPrefillHealthCheckPayload = Static<typeof LegacyPrefillHealthCheckPayloadSchema>;

export const ImageHealthCheckPayloadSchema = Type.Object(
  {
    prompt: Type.String(),
    model: Type.String(),
    n: Type.Integer(),
    size: Type.String(),
    num_inference_steps: Type.Integer(),
    guidance_scale: Type.Number(),
    response_format: Type.Literal('b64_json'),
  },
  { $id: 'ImageHealthCheckPayload', title: 'ImageHealthCheckPayload' },
);
export type ImageHealthCheckPayload = Static<typeof ImageHealthCheckPayloadSchema>;

export const VideoHealthCheckPayloadSchema = Type.Object(
  {
    prompt: Type.String(),
    model: Type.String(),
    seconds: Type.Integer(),
    size: Type.String(),
    response_format: Type.Literal('b64_json'),
    nvext: Type.Object({
      fps: Type.Integer(),
      num_frames: Type.Integer(),
      num_inference_steps: Type.Integer(),
      guidance_scale: Type.Number(),
    }),
  },
  { $id: 'VideoHealthCheckPayload', title: 'VideoHealthCheckPayload' },
);
export type VideoHealthCheckPayload = Static<typeof VideoHealthCheckPayloadSchema>;

export interface HealthCheckPayloadOptions {
  /** tokenizer.bos_token_id; 1 when the tokenizer has none. */
  bos?: number | null;
  /** Disaggregated decode or prefill worker: adds the fake-transfer bootstrap_info. */
  disagg?: boolean;
  /** This worker's bootstrap port (0 when it has none). */
  bootstrapPort?: number | null;
  /** `--use-sglang-tokenizer`: `prompt: "Test"` instead of token_ids. */
  textMode?: boolean;
}

/** The default payload of an LLM worker's generate endpoint, key order as the reference writes it. */
export function healthCheckPayload(opts: HealthCheckPayloadOptions = {}): SglangHealthCheckPayload | SglangDisaggHealthCheckPayload {
  const bos = opts.bos ?? 1;
  const base: SglangHealthCheckPayload = {
    stop_conditions: { max_tokens: 1, ignore_eos: false },
    sampling_options: { temperature: 0.0, top_p: 1.0, top_k: -1 },
    eos_token_ids: [],
    annotations: [],
    ...(opts.textMode ? { prompt: 'Test' as const } : { token_ids: [bos] }),
  };
  if (!opts.disagg) return base;
  return {
    ...base,
    bootstrap_info: { bootstrap_host: FAKE_BOOTSTRAP_HOST, bootstrap_port: opts.bootstrapPort ?? 0, bootstrap_room: 0 },
  };
}

export function legacyPrefillHealthCheckPayload(bos: number | null = 1): LegacyPrefillHealthCheckPayload {
  return {
    request: { token_ids: [bos ?? 1] },
    sampling_params: { max_new_tokens: 1, temperature: 0.0, top_p: 1.0, top_k: -1, ignore_eos: false },
  };
}

export function imageHealthCheckPayload(model: string): ImageHealthCheckPayload {
  return { prompt: 'test', model, n: 1, size: '512x512', num_inference_steps: 1, guidance_scale: 7.5, response_format: 'b64_json' };
}

export function videoHealthCheckPayload(model: string): VideoHealthCheckPayload {
  return {
    prompt: 'test',
    model,
    seconds: 1,
    size: '256x256',
    response_format: 'b64_json',
    nvext: { fps: 8, num_frames: 8, num_inference_steps: 1, guidance_scale: 5.0 },
  };
}
