// Requests a worker receives (reference §2.1, §2.3, §2.4, §2.8, §7). Every object tolerates unknown extra fields
// (newer frontends add some); known fields have checked types. `Opt` = absent, null, or a value: the Rust frontend
// writes None either way depending on the field.
import { Type, type StaticDecode } from '@sinclair/typebox';
import { LlmError } from '../errors.js';
import { I32, JsonObject, Opt, Seed, U16, U32, U64, U64_MAX } from './common.js';

export const TokenIdsSchema = Type.Array(U32(), { title: 'TokenIds' });

export const StopConditionsSchema = Type.Object(
  {
    max_tokens: Opt(U32()),
    stop: Opt(Type.Array(Type.String())),
    stop_token_ids: Opt(Type.Array(U32())),
    stop_token_ids_hidden: Opt(Type.Array(U32())),
    min_tokens: Opt(U32()),
    ignore_eos: Opt(Type.Boolean()),
    max_thinking_tokens: Opt(U32()),
  },
  { title: 'StopConditions' },
);
export type StopConditions = StaticDecode<typeof StopConditionsSchema>;

export const GuidedDecodingSchema = Type.Object(
  {
    json: Opt(Type.Unknown({ description: 'JSON schema (object) or its text' })),
    regex: Opt(Type.String()),
    choice: Opt(Type.Array(Type.String())),
    grammar: Opt(Type.String()),
    backend: Opt(Type.String()),
    whitespace_pattern: Opt(Type.String()),
    structural_tag: Opt(Type.Unknown()),
  },
  { title: 'GuidedDecoding' },
);
export type GuidedDecoding = StaticDecode<typeof GuidedDecodingSchema>;

export const SamplingOptionsSchema = Type.Object(
  {
    n: Opt(Type.Integer({ minimum: 1 })),
    best_of: Opt(Type.Integer({ minimum: 1 })),
    presence_penalty: Opt(Type.Number()),
    frequency_penalty: Opt(Type.Number()),
    repetition_penalty: Opt(Type.Number({ exclusiveMinimum: 0 })),
    temperature: Opt(Type.Number({ minimum: 0 })),
    top_p: Opt(Type.Number({ minimum: 0, maximum: 1 })),
    top_k: Opt(Type.Integer({ minimum: -1, description: '-1 or 0 = disabled' })),
    min_p: Opt(Type.Number({ minimum: 0, maximum: 1 })),
    use_beam_search: Opt(Type.Boolean()),
    length_penalty: Opt(Type.Number()),
    seed: Opt(Seed()),
    include_stop_str_in_output: Opt(Type.Boolean()),
    guided_decoding: Opt(GuidedDecodingSchema),
  },
  { title: 'SamplingOptions' },
);
export type SamplingOptions = StaticDecode<typeof SamplingOptionsSchema>;

export const OutputOptionsSchema = Type.Object(
  {
    logprobs: Opt(Type.Integer({ description: 'top-N logprobs per token; negative values are ignored with a warning' })),
    prompt_logprobs: Opt(Type.Integer()),
    skip_special_tokens: Opt(Type.Boolean()),
    formatted_prompt: Opt(Type.Boolean()),
  },
  { title: 'OutputOptions' },
);
export type OutputOptions = StaticDecode<typeof OutputOptionsSchema>;

export const SessionControlSchema = Type.Object(
  { session_id: Type.String(), action: Opt(Type.String()) },
  { title: 'SessionControl' },
);

export const RoutingSchema = Type.Object(
  {
    backend_instance_id: Opt(U64()),
    prefill_worker_id: Opt(U64()),
    decode_worker_id: Opt(U64()),
    dp_rank: Opt(U32({ description: '4294967295 (u32::MAX) means unset' })),
    prefill_dp_rank: Opt(U32()),
    expected_output_tokens: Opt(U32()),
    lora_name: Opt(Type.String()),
    priority_jump: Opt(Type.Number()),
    priority: Opt(I32()),
    allowed_worker_ids: Opt(Type.Array(U64())),
    session_control: Opt(SessionControlSchema),
  },
  { title: 'Routing' },
);
export type Routing = StaticDecode<typeof RoutingSchema>;

export const BootstrapInfoSchema = Type.Object(
  {
    bootstrap_host: Type.String(),
    bootstrap_port: U16(),
    bootstrap_room: U64({ description: 'drawn uniformly in [0, 2^63-1]; pairs a prefill and a decode request' }),
  },
  { $id: 'BootstrapInfo', title: 'BootstrapInfo' },
);
export type BootstrapInfo = StaticDecode<typeof BootstrapInfoSchema>;

export const PrefillResultSchema = Type.Object(
  {
    disaggregated_params: Type.Unknown(),
    prompt_tokens_details: Opt(Type.Object({ cached_tokens: Opt(Type.Integer({ minimum: 0 })) })),
  },
  { title: 'PrefillResult' },
);

/** One media item: a URL string, `{"Url": "..."}`, or `{"Decoded": <rdma descriptor>}` (frontend decoding). */
export const MultimodalDataItemSchema = Type.Union(
  [
    Type.String(),
    Type.Object({ Url: Type.String() }, { additionalProperties: false }),
    Type.Object({ Decoded: Type.Unknown() }, { additionalProperties: false }),
  ],
  { title: 'MultimodalDataItem' },
);
export type MultimodalDataItem = StaticDecode<typeof MultimodalDataItemSchema>;

/** `{"image_url": [...], "video_url": [...]}` */
export const MultimodalDataSchema = Type.Record(Type.String(), Type.Array(MultimodalDataItemSchema), {
  title: 'MultimodalData',
});

/** The tokenized request from the frontend. `model` and `output_options` are optional because the reference's own
 * health-check payload omits them; `annotations` defaults to []. */
export const PreprocessedRequestSchema = Type.Object(
  {
    model: Type.Optional(Type.String()),
    token_ids: TokenIdsSchema,
    prompt_embeds: Opt(Type.String({ description: 'base64 tensor' })),
    multi_modal_data: Opt(MultimodalDataSchema),
    mm_routing_info: Opt(Type.Unknown()),
    stop_conditions: StopConditionsSchema,
    sampling_options: SamplingOptionsSchema,
    output_options: Type.Optional(OutputOptionsSchema),
    eos_token_ids: Type.Array(U32()),
    mdc_sum: Opt(Type.String()),
    annotations: Type.Optional(Type.Array(Type.String())),
    routing: Opt(RoutingSchema),
    router_config_override: Opt(JsonObject()),
    prefill_result: Opt(PrefillResultSchema),
    bootstrap_info: Opt(BootstrapInfoSchema),
    extra_args: Opt(JsonObject()),
    mm_processor_kwargs: Opt(JsonObject()),
    request_timestamp_ms: Opt(Type.Number()),
  },
  { $id: 'PreprocessedRequest', title: 'PreprocessedRequest' },
);
export type PreprocessedRequest = StaticDecode<typeof PreprocessedRequestSchema>;

/** SGLang-native sampling params as the legacy wrappers carry them (None values dropped by the sender). */
export const SglangSamplingParamsSchema = Type.Object(
  {
    max_new_tokens: Opt(U32()),
    min_new_tokens: Opt(U32()),
    temperature: Opt(Type.Number({ minimum: 0 })),
    top_p: Opt(Type.Number({ minimum: 0, maximum: 1 })),
    top_k: Opt(Type.Integer({ minimum: -1 })),
    min_p: Opt(Type.Number({ minimum: 0, maximum: 1 })),
    ignore_eos: Opt(Type.Boolean()),
    stop_token_ids: Opt(Type.Array(U32())),
    json_schema: Opt(Type.String()),
    structural_tag: Opt(Type.String()),
    regex: Opt(Type.String()),
  },
  { $id: 'SglangSamplingParams', title: 'SglangSamplingParams' },
);
export type SglangSamplingParams = StaticDecode<typeof SglangSamplingParamsSchema>;

/** Legacy prefill wrapper `{request, sampling_params}` (DisaggPreprocessedRequest). Its inner request may be as
 * small as `{token_ids}` (the legacy prefill health check), so every other field is optional there. */
export const DisaggPreprocessedRequestSchema = Type.Object(
  {
    request: Type.Object(
      { ...Type.Partial(PreprocessedRequestSchema).properties, token_ids: TokenIdsSchema },
      { title: 'LegacyInnerRequest' },
    ),
    sampling_params: SglangSamplingParamsSchema,
    data_parallel_rank: Opt(U32()),
  },
  { $id: 'DisaggPreprocessedRequest', title: 'DisaggPreprocessedRequest' },
);
export type DisaggPreprocessedRequest = StaticDecode<typeof DisaggPreprocessedRequestSchema>;

/** What a prefill worker's `generate` accepts: the legacy wrapper or a flat PreprocessedRequest. */
export const PrefillRequestSchema = Type.Union([DisaggPreprocessedRequestSchema, PreprocessedRequestSchema], {
  $id: 'PrefillRequest',
  title: 'PrefillRequest',
});
export type PrefillRequest = StaticDecode<typeof PrefillRequestSchema>;

/** `--use-sglang-tokenizer` (text mode): an OpenAI chat request, or a prompt string (`prompt`/`text`). */
export const TextModeRequestSchema = Type.Object(
  {
    model: Opt(Type.String()),
    messages: Opt(Type.Array(JsonObject())),
    prompt: Opt(Type.String()),
    text: Opt(Type.String()),
    temperature: Opt(Type.Number({ minimum: 0 })),
    top_p: Opt(Type.Number({ minimum: 0, maximum: 1 })),
    top_k: Opt(Type.Integer({ minimum: -1 })),
    max_tokens: Opt(U32()),
    guided_decoding: Opt(GuidedDecodingSchema),
    chat_template_kwargs: Opt(JsonObject()),
    chat_template_args: Opt(JsonObject()),
    stop_conditions: Opt(StopConditionsSchema),
    sampling_options: Opt(SamplingOptionsSchema),
  },
  { $id: 'TextModeRequest', title: 'TextModeRequest' },
);
export type TextModeRequest = StaticDecode<typeof TextModeRequestSchema>;

/** OpenAI `/v1/embeddings` body, as the embedding worker receives it. */
export const EmbeddingRequestSchema = Type.Object(
  {
    model: Type.String(),
    input: Type.Union([
      Type.String(),
      Type.Array(Type.String()),
      Type.Array(Type.Integer({ minimum: 0 })),
      Type.Array(Type.Array(Type.Integer({ minimum: 0 }))),
    ]),
    user: Opt(Type.String()),
    dimensions: Opt(Type.Integer({ minimum: 1 })),
    encoding_format: Opt(Type.String()),
    // embeddings (issue 19): vLLM's and SGLang's extension: keep the last n tokens of a longer input (-1: the context)
    truncate_prompt_tokens: Opt(Type.Integer({ minimum: -1 })),
  },
  { $id: 'EmbeddingRequest', title: 'EmbeddingRequest' },
);
export type EmbeddingRequest = StaticDecode<typeof EmbeddingRequestSchema>;

// ---------------------------------------------------------------------------------------------------------------
// multimodal (reference §7)

export const MultimodalInputSchema = Type.Object(
  { image_url: Opt(Type.String()), video_url: Opt(Type.String()) },
  { title: 'MultimodalInput' },
);

const GridThw = Type.Array(Type.Integer({ minimum: 0 }), { minItems: 3, maxItems: 3, description: '[t, h, w]' });

/** `serialized_request` of the nixl-write transfer mode (a JSON string on the wire). */
export const NixlWriteDescriptorSchema = Type.Object(
  {
    sender_agent_id: Type.String(),
    agent_metadata: Opt(Type.String({ description: 'base64' })),
    tensor_id: Type.Union([Type.String(), Type.Integer()]),
    tensor_size: Type.Integer({ minimum: 0 }),
  },
  { $id: 'NixlWriteDescriptor', title: 'NixlWriteDescriptor' },
);

export const EmbeddingTransferPayloadSchema = Type.Object(
  {
    embeddings_shape: Type.Array(Type.Integer({ minimum: 0 })),
    embedding_dtype_str: Type.String(),
    serialized_request: Type.Union([
      Type.String({ description: 'local: safetensors path (key "ec_cache"); nixl-write: JSON of NixlWriteDescriptor' }),
      JsonObject({ description: 'nixl-read: readable-operation metadata' }),
    ]),
  },
  { title: 'EmbeddingTransferPayload' },
);

/** Encoder → PD worker. Current shape uses `multimodal_inputs` + `transfer_payload`; the legacy single-image shape
 * used `multimodal_input`, `image_grid_thw` and `serialized_request` at the top level. */
export const SglangMultimodalRequestSchema = Type.Object(
  {
    request: PreprocessedRequestSchema,
    multimodal_inputs: Type.Optional(
      Type.Array(Type.Object({ multimodal_input: MultimodalInputSchema, image_grid_thw: Opt(GridThw) })),
    ),
    embeddings_shape: Opt(Type.Array(Type.Integer({ minimum: 0 }))),
    transfer_payload: Opt(EmbeddingTransferPayloadSchema),
    multimodal_input: Opt(MultimodalInputSchema),
    image_grid_thw: Opt(Type.Array(GridThw)),
    serialized_request: Opt(Type.Unknown()),
  },
  { $id: 'SglangMultimodalRequest', title: 'SglangMultimodalRequest' },
);
export type SglangMultimodalRequest = StaticDecode<typeof SglangMultimodalRequestSchema>;

/** Multimodal decode → multimodal prefill. */
export const DisaggSglangMultimodalRequestSchema = Type.Object(
  {
    request: SglangMultimodalRequestSchema,
    sampling_params: SglangSamplingParamsSchema,
    data_parallel_rank: Opt(U32()),
  },
  { $id: 'DisaggSglangMultimodalRequest', title: 'DisaggSglangMultimodalRequest' },
);
export type DisaggSglangMultimodalRequest = StaticDecode<typeof DisaggSglangMultimodalRequestSchema>;

// ---------------------------------------------------------------------------------------------------------------
// other endpoints on the worker component (reference §2.8)

export const LoadLoraRequestSchema = Type.Object(
  { lora_name: Type.String({ minLength: 1 }), source: Type.Object({ uri: Type.String() }) },
  { $id: 'LoadLoraRequest', title: 'LoadLoraRequest' },
);
export const UnloadLoraRequestSchema = Type.Object(
  { lora_name: Type.String({ minLength: 1 }) },
  { $id: 'UnloadLoraRequest', title: 'UnloadLoraRequest' },
);
export const SessionControlRequestSchema = Type.Object(
  {
    action: Type.Union([Type.Literal('open_session'), Type.Literal('close_session')]),
    session_id: Type.String(),
    timeout: Type.Optional(Type.Number({ minimum: 0, default: 120 })),
    capacity_of_str_len: Type.Optional(Type.Integer({ minimum: 0, default: 65536 })),
  },
  { $id: 'SessionControlRequest', title: 'SessionControlRequest' },
);

// ---------------------------------------------------------------------------------------------------------------
// image and video generation workers (reference §2.7)

export const ImageGenerationRequestSchema = Type.Object(
  {
    prompt: Type.String(),
    model: Type.String(),
    n: Type.Optional(Type.Integer({ minimum: 1, default: 1 })),
    size: Type.Optional(Type.String({ pattern: '^\\d+x\\d+$', default: '1024x1024' })),
    quality: Type.Optional(Type.String({ default: 'standard' })),
    response_format: Type.Optional(Type.Union([Type.Literal('url'), Type.Literal('b64_json')], { default: 'url' })),
    user: Opt(Type.String()),
    input_reference: Opt(Type.String()),
    nvext: Opt(
      Type.Object({
        seed: Opt(Type.Integer()),
        guidance_scale: Opt(Type.Number({ default: 7.5 })),
        num_inference_steps: Opt(Type.Integer({ minimum: 1, default: 50 })),
        negative_prompt: Opt(Type.String()),
      }),
    ),
  },
  { $id: 'ImageGenerationRequest', title: 'ImageGenerationRequest' },
);
export type ImageGenerationRequest = StaticDecode<typeof ImageGenerationRequestSchema>;

export const VideoGenerationRequestSchema = Type.Object(
  {
    prompt: Type.String(),
    model: Type.String(),
    input_reference: Opt(Type.String()),
    seconds: Type.Optional(Type.Number({ exclusiveMinimum: 0, default: 4 })),
    size: Type.Optional(Type.String({ pattern: '^\\d+x\\d+$', default: '832x480' })),
    response_format: Type.Optional(Type.Union([Type.Literal('url'), Type.Literal('b64_json')], { default: 'url' })),
    nvext: Opt(
      Type.Object({
        fps: Opt(Type.Integer({ minimum: 1, default: 24 })),
        num_frames: Opt(Type.Integer({ minimum: 1 })),
        negative_prompt: Opt(Type.String()),
        num_inference_steps: Opt(Type.Integer({ minimum: 1, default: 50 })),
        guidance_scale: Opt(Type.Number({ default: 5.0 })),
        seed: Opt(Type.Integer()),
      }),
    ),
  },
  { $id: 'VideoGenerationRequest', title: 'VideoGenerationRequest' },
);
export type VideoGenerationRequest = StaticDecode<typeof VideoGenerationRequestSchema>;

/**
 * The bootstrap room a router chose, from where the reference's prefill router puts it: `bootstrap_info.bootstrap_room`
 * (later main), else `extra_args.bootstrap_room` (Dynamo 0.8's PrefillRouter), a u64 as a JSON integer or a decimal
 * string. Null when neither names one (the prefill worker then draws its own). A value that is not a u64 is a
 * LLM_ERR_BAD_REQUEST naming it.
 */
export function requestedBootstrapRoom(request: { bootstrap_info?: { bootstrap_room: bigint } | null; extra_args?: Record<string, unknown> | null }): bigint | null {
  if (request.bootstrap_info) return request.bootstrap_info.bootstrap_room;
  const raw = request.extra_args?.bootstrap_room;
  if (raw === undefined || raw === null) return null;
  const text = typeof raw === 'bigint' || typeof raw === 'number' ? String(raw) : typeof raw === 'string' ? raw.trim() : '';
  if (!/^[0-9]{1,20}$/.test(text) || BigInt(text) > U64_MAX) {
    throw new LlmError('LLM_ERR_BAD_REQUEST', `extra_args.bootstrap_room ${JSON.stringify(typeof raw === 'bigint' ? String(raw) : raw)}: expected an integer 0..2^64-1`);
  }
  return BigInt(text);
}
