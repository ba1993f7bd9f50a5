// The model deployment card (MDC) a worker publishes under `v1/mdc/...` (reference §4.1), and its runtime config.
import { Type, type Static } from '@sinclair/typebox';
import { LlmError } from '../errors.js';
import { JsonObject, Opt, U16, U32 } from './common.js';

/** Model capability bitflags, values as in Dynamo's `ModelType`. */
export const ModelTypeFlag = {
  Chat: 1,
  Completions: 2,
  Embedding: 4,
  TensorBased: 8,
  Prefill: 16,
  Images: 32,
  Audios: 64,
  Videos: 128,
} as const;
export type ModelTypeName = keyof typeof ModelTypeFlag;
const MODEL_TYPE_NAMES = Object.keys(ModelTypeFlag) as ModelTypeName[];

/** `model_type` on the wire: Dynamo's bitflags serialise in JSON as names joined by " | " ("Chat | Completions");
 * the raw bit value is accepted too. */
export const ModelTypeWireSchema = Type.Union(
  [
    Type.String({ pattern: `^(${MODEL_TYPE_NAMES.join('|')})( \\| (${MODEL_TYPE_NAMES.join('|')}))*$` }),
    Type.Integer({ minimum: 1, maximum: 255 }),
  ],
  { $id: 'ModelType', title: 'ModelType', description: 'bitflags: Chat=1 Completions=2 Embedding=4 TensorBased=8 Prefill=16 Images=32 Audios=64 Videos=128' },
);
export type ModelTypeWire = Static<typeof ModelTypeWireSchema>;

/** Bits → "Chat | Completions" (flag order). */
export function modelTypeToWire(bits: number): string {
  const names = MODEL_TYPE_NAMES.filter((n) => (bits & ModelTypeFlag[n]) !== 0);
  const known = names.reduce((acc, n) => acc | ModelTypeFlag[n], 0);
  if (names.length === 0 || known !== bits) throw new LlmError('LLM_ERR_PROTOCOL', `model_type: invalid bit value ${bits}`);
  return names.join(' | ');
}

/** "Chat | Completions" or 3 → 3. */
export function modelTypeFromWire(wire: ModelTypeWire): number {
  if (typeof wire === 'number') return wire;
  let bits = 0;
  for (const part of wire.split('|')) {
    const name = part.trim();
    if (!(name in ModelTypeFlag)) {
      throw new LlmError('LLM_ERR_PROTOCOL', `model_type: unknown flag "${name}" (known: ${MODEL_TYPE_NAMES.join(', ')})`);
    }
    bits |= ModelTypeFlag[name as ModelTypeName];
  }
  return bits;
}

export const ModelInputSchema = Type.Union([Type.Literal('Text'), Type.Literal('Tokens'), Type.Literal('Tensor')], {
  $id: 'ModelInput',
  title: 'ModelInput',
});
export type ModelInput = Static<typeof ModelInputSchema>;

/** A file the card refers to: a local path or `hf://<repo>/<file>` URL plus its checksum ("blake3:<hex>"). */
export const CheckedFileSchema = Type.Object({ path: Type.String(), checksum: Type.String() }, { title: 'CheckedFile' });

export const DisaggregatedEndpointSchema = Type.Object(
  { bootstrap_host: Type.String(), bootstrap_port: U16() },
  { title: 'DisaggregatedEndpoint' },
);

/** `ModelRuntimeConfig` as SGLang workers publish it (reference §4.1). Counts are plain numbers (far below 2^53). */
export const ModelRuntimeConfigSchema = Type.Object(
  {
    total_kv_blocks: Opt(Type.Integer({ minimum: 0 })),
    max_num_seqs: Opt(Type.Integer({ minimum: 0 })),
    max_num_batched_tokens: Opt(Type.Integer({ minimum: 0 })),
    tool_call_parser: Opt(Type.String()),
    reasoning_parser: Opt(Type.String()),
    exclude_tools_when_tool_choice_none: Type.Optional(Type.Boolean()),
    enable_local_indexer: Type.Optional(Type.Boolean()),
    data_parallel_size: Type.Optional(U32()),
    data_parallel_start_rank: Type.Optional(U32()),
    disaggregated_endpoint: Opt(DisaggregatedEndpointSchema),
    enable_eagle: Type.Optional(Type.Boolean()),
    runtime_data: Type.Optional(JsonObject()),
    tensor_model_config: Opt(Type.Unknown()),
  },
  { $id: 'ModelRuntimeConfig', title: 'ModelRuntimeConfig' },
);
export type ModelRuntimeConfig = Static<typeof ModelRuntimeConfigSchema>;

export const LoraInfoSchema = Type.Object(
  { name: Type.String(), max_gpu_lora_count: Opt(U32()) },
  { title: 'LoraInfo' },
);

/** One-of artifact reference, serialised like a Rust enum: `{"<variant>": <CheckedFile or path>}`. */
const artifact = (title: string, variants: string[]) =>
  Type.Record(Type.String(), Type.Union([CheckedFileSchema, Type.String()]), {
    title,
    minProperties: 1,
    maxProperties: 1,
    description: `known variants: ${variants.join(', ')}`,
  });

/** The card as a worker describes its model, before registration (src/runtime/model-card.ts) turns it into the wire
 * form below: file references may be bare paths, `migration_limit` and a valid slug may be missing. Never on a wire. */
export const ModelDeploymentCardSchema = Type.Object(
  {
    display_name: Type.String(),
    slug: Type.String(),
    source_path: Opt(Type.String()),
    model_info: Opt(artifact('ModelInfo', ['hf_config_json'])),
    tokenizer: Opt(artifact('TokenizerKind', ['hf_tokenizer_json', 'gguf'])),
    prompt_formatter: Opt(artifact('PromptFormatterArtifact', ['hf_tokenizer_config_json', 'gguf'])),
    chat_template_file: Opt(artifact('ChatTemplateArtifact', ['hf_chat_template'])),
    gen_config: Opt(artifact('GenerationConfig', ['hf_generation_config_json'])),
    prompt_context: Opt(Type.Array(Type.String())),
    context_length: U32(),
    kv_cache_block_size: U32(),
    migration_limit: Type.Optional(U32()),
    model_type: ModelTypeWireSchema,
    model_input: ModelInputSchema,
    lora: Opt(LoraInfoSchema),
    user_data: Opt(Type.Unknown()),
    runtime_config: ModelRuntimeConfigSchema,
    media_decoder: Opt(JsonObject()),
    media_fetcher: Opt(JsonObject()),
  },
  { $id: 'ModelDeploymentCard', title: 'ModelDeploymentCard' },
);
export type ModelDeploymentCard = Static<typeof ModelDeploymentCardSchema>;

// ---------------------------------------------------------------------------------------------------------------
// The card on the wire (`card_json` under v1/mdc/...), by the reference's field rules, which are the same in Dynamo
// 0.8 and later main (lib/llm/src/model_card.rs `ModelDeploymentCard`, lib/llm/src/common/checked_file.rs,
// lib/runtime/src/slug.rs): a card that breaks one is dropped by a Dynamo frontend as undeserializable.
//   - required: display_name, slug, context_length, kv_cache_block_size, migration_limit, model_type, model_input
//   - slug: only a-z, 0-9, "-" and "_"
//   - every file reference: `{path, checksum: "<algorithm>:<hex>"}` where the only algorithm is blake3
//   - file artifacts are one-variant enums ({"hf_tokenizer_json": {...}}); there is no gguf variant

export const SLUG_PATTERN = '^[a-z0-9_-]+$';
export const CHECKSUM_PATTERN = '^blake3:[0-9a-f]+$';

export const WireCheckedFileSchema = Type.Object(
  {
    path: Type.String({ minLength: 1, description: 'a local path or a URL (hf://<repo>/<file>)' }),
    checksum: Type.String({ pattern: CHECKSUM_PATTERN, description: 'blake3:<hex of the file contents>' }),
    size: Type.Optional(Type.Integer({ minimum: 0, description: 'file size in bytes (later main writes it; 0.8 ignores it)' })),
  },
  { title: 'CheckedFile', additionalProperties: false },
);
export type WireCheckedFile = Static<typeof WireCheckedFileSchema>;

/** `{"<variant>": CheckedFile}`: a Rust enum of one CheckedFile variant. */
const wireArtifact = <V extends string>(title: string, variant: V) =>
  Type.Object({ [variant]: WireCheckedFileSchema } as Record<V, typeof WireCheckedFileSchema>, { title, additionalProperties: false });

export const WireModelCardSchema = Type.Object(
  {
    display_name: Type.String(),
    slug: Type.String({ pattern: SLUG_PATTERN }),
    source_path: Opt(Type.String()),
    model_info: Opt(wireArtifact('ModelInfoType', 'hf_config_json')),
    tokenizer: Opt(wireArtifact('TokenizerKind', 'hf_tokenizer_json')),
    prompt_formatter: Opt(wireArtifact('PromptFormatterArtifact', 'hf_tokenizer_config_json')),
    chat_template_file: Opt(Type.Unknown({ description: 'PromptFormatterArtifact of a separate chat template file' })),
    gen_config: Opt(wireArtifact('GenerationConfig', 'hf_generation_config_json')),
    prompt_context: Opt(Type.Array(Type.String())),
    context_length: U32(),
    kv_cache_block_size: U32(),
    migration_limit: U32(),
    model_type: ModelTypeWireSchema,
    model_input: ModelInputSchema,
    lora: Opt(LoraInfoSchema),
    user_data: Opt(Type.Unknown()),
    runtime_config: Type.Optional(ModelRuntimeConfigSchema),
    media_decoder: Opt(JsonObject()),
    media_fetcher: Opt(JsonObject()),
  },
  { $id: 'WireModelCard', title: 'WireModelCard', description: 'card_json as a Dynamo frontend (0.8 and later) decodes it' },
);
export type WireModelCard = Static<typeof WireModelCardSchema>;
