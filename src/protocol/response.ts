// What worker handlers yield (reference §2.2–§2.8). Each yielded object travels as `Annotated{data: <it>}`.
import { Type, type StaticDecode } from '@sinclair/typebox';
import { JsonObject, Nullable, Opt, U32, U64 } from './common.js';
import { BootstrapInfoSchema, TokenIdsSchema } from './request.js';

/** Finish reasons as the frontend reads them; SGLang's "abort*" types are reported as "cancelled". */
export const FinishReasonSchema = Type.Union(
  [
    Type.Literal('stop'),
    Type.Literal('length'),
    Type.Literal('eos'),
    Type.Literal('cancelled'),
    Type.Literal('error'),
    Type.Literal('content_filter'),
  ],
  { $id: 'FinishReason', title: 'FinishReason' },
);
export type FinishReason = StaticDecode<typeof FinishReasonSchema>;

export const TopLogprobSchema = Type.Object(
  {
    rank: Type.Integer({ minimum: 1, description: '1-based' }),
    token_id: U32(),
    token: Nullable(Type.String()),
    logprob: Type.Number(),
  },
  { title: 'TopLogprob' },
);
export type TopLogprob = StaticDecode<typeof TopLogprobSchema>;

export const CompletionUsageSchema = Type.Object(
  {
    prompt_tokens: Type.Integer({ minimum: 0 }),
    completion_tokens: Type.Integer({ minimum: 0 }),
    total_tokens: Type.Integer({ minimum: 0 }),
    prompt_tokens_details: Type.Optional(
      Nullable(Type.Object({ cached_tokens: Type.Integer({ minimum: 0 }) }, { title: 'PromptTokensDetails' })),
    ),
  },
  { $id: 'CompletionUsage', title: 'CompletionUsage' },
);
export type CompletionUsage = StaticDecode<typeof CompletionUsageSchema>;

/** One streamed LLM chunk (token mode). `token_ids` holds only the new tokens of this chunk. */
export const LlmResponseChunkSchema = Type.Object(
  {
    token_ids: TokenIdsSchema,
    tokens: Opt(Type.Array(Nullable(Type.String()))),
    text: Opt(Type.String()),
    cum_log_probs: Opt(Type.Number()),
    log_probs: Opt(Type.Array(Type.Number())),
    top_logprobs: Opt(Type.Array(Type.Array(TopLogprobSchema))),
    finish_reason: Opt(FinishReasonSchema),
    stop_reason: Opt(Type.Union([Type.String(), U32(), Type.Array(U32())])),
    index: Opt(U32()),
    completion_usage: Opt(CompletionUsageSchema),
    disaggregated_params: Opt(JsonObject({ description: 'e.g. {routed_experts: <base64>} or the prefill bootstrap' })),
    extra_args: Opt(JsonObject()),
  },
  { $id: 'LlmResponseChunk', title: 'LlmResponseChunk' },
);
export type LlmResponseChunk = StaticDecode<typeof LlmResponseChunkSchema>;

/** The prefill worker's first (and only) yield: where the decode worker fetches the KV pages. */
export const PrefillBootstrapChunkSchema = Type.Object(
  {
    token_ids: Type.Array(U32(), { maxItems: 0 }),
    text: Type.Null(),
    finish_reason: Type.Null(),
    disaggregated_params: BootstrapInfoSchema,
  },
  { $id: 'PrefillBootstrapChunk', title: 'PrefillBootstrapChunk' },
);
export type PrefillBootstrapChunk = StaticDecode<typeof PrefillBootstrapChunkSchema>;

export function prefillBootstrapChunk(info: StaticDecode<typeof BootstrapInfoSchema>): PrefillBootstrapChunk {
  return { token_ids: [], text: null, finish_reason: null, disaggregated_params: info };
}

/** Text mode (`--use-sglang-tokenizer`) chunk. */
export const ChatCompletionChunkSchema = Type.Object(
  {
    id: Type.String(),
    created: Type.Integer({ minimum: 0 }),
    model: Type.String(),
    object: Type.Literal('chat.completion.chunk'),
    choices: Type.Array(
      Type.Object({
        index: U32(),
        delta: Type.Object({ role: Opt(Type.Literal('assistant')), content: Opt(Type.String()) }),
        finish_reason: Nullable(Type.String()),
      }),
    ),
    nvext: Opt(JsonObject()),
  },
  { $id: 'ChatCompletionChunk', title: 'ChatCompletionChunk' },
);
export type ChatCompletionChunk = StaticDecode<typeof ChatCompletionChunkSchema>;

export const EmbeddingResponseSchema = Type.Object(
  {
    object: Type.Literal('list'),
    data: Type.Array(
      Type.Object({ object: Type.Literal('embedding'), embedding: Type.Array(Type.Number()), index: U32() }),
    ),
    model: Type.String(),
    usage: Type.Object({ prompt_tokens: Type.Integer({ minimum: 0 }), total_tokens: Type.Integer({ minimum: 0 }) }),
  },
  { $id: 'EmbeddingResponse', title: 'EmbeddingResponse' },
);
export type EmbeddingResponse = StaticDecode<typeof EmbeddingResponseSchema>;

/** Multimodal PD worker output: yielded as a JSON *string* of this object. */
export const MultimodalWorkerOutputSchema = Type.Object(
  {
    token_ids: TokenIdsSchema,
    text: Opt(Type.String()),
    finished: Type.Boolean(),
    finish_reason: Opt(FinishReasonSchema),
    error: Opt(Type.String()),
    bootstrap_room: Opt(U64()),
  },
  { $id: 'MultimodalWorkerOutput', title: 'MultimodalWorkerOutput' },
);
export type MultimodalWorkerOutput = StaticDecode<typeof MultimodalWorkerOutputSchema>;

/** LoRA endpoint replies. */
export const LoraResponseSchema = Type.Object(
  {
    status: Type.Union([Type.Literal('success'), Type.Literal('error')]),
    message: Opt(Type.String()),
    lora_name: Opt(Type.String()),
    lora_id: Opt(U64()),
    loras: Opt(Type.Record(Type.String(), U64())),
    count: Opt(Type.Integer({ minimum: 0 })),
  },
  { $id: 'LoraResponse', title: 'LoraResponse' },
);
export type LoraResponse = StaticDecode<typeof LoraResponseSchema>;

const MediaItemSchema = Type.Object(
  { url: Opt(Type.String()), b64_json: Opt(Type.String()), revised_prompt: Opt(Type.String()) },
  { title: 'MediaItem' },
);

export const ImageGenerationResponseSchema = Type.Object(
  { created: Type.Integer({ minimum: 0 }), data: Type.Array(MediaItemSchema) },
  { $id: 'ImageGenerationResponse', title: 'ImageGenerationResponse' },
);
export type ImageGenerationResponse = StaticDecode<typeof ImageGenerationResponseSchema>;

export const VideoGenerationResponseSchema = Type.Object(
  {
    id: Type.String(),
    object: Type.Literal('video'),
    model: Type.String(),
    status: Type.String({ description: '"completed" when done' }),
    progress: Type.Number({ minimum: 0, maximum: 100 }),
    created: Type.Integer({ minimum: 0 }),
    data: Type.Array(MediaItemSchema),
    error: Opt(Type.String()),
    inference_time_s: Opt(Type.Number({ minimum: 0 })),
  },
  { $id: 'VideoGenerationResponse', title: 'VideoGenerationResponse' },
);
export type VideoGenerationResponse = StaticDecode<typeof VideoGenerationResponseSchema>;
