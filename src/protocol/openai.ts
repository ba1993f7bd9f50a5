// The OpenAI-compatible HTTP surface of the frontend: request bodies of /v1/completions and
// /v1/chat/completions (with the usual extensions: top_k, min_p, ignore_eos, min_tokens), and the error body.
// Unknown fields are tolerated (clients send many we do not use); known fields have checked types.
import { Type, type StaticDecode } from '@sinclair/typebox';
import { Nullable, Opt, Seed, U32 } from './common.js';

const Stop = Opt(Type.Union([Type.String(), Type.Array(Type.String(), { maxItems: 16 })]));
const StreamOptions = Opt(Type.Object({ include_usage: Opt(Type.Boolean()) }));

/** Sampling and stopping fields shared by both request bodies. */
const samplingFields = {
  model: Type.String({ minLength: 1 }),
  max_tokens: Opt(Type.Integer({ minimum: 1 })),
  temperature: Opt(Type.Number({ minimum: 0, maximum: 2 })),
  top_p: Opt(Type.Number({ exclusiveMinimum: 0, maximum: 1 })),
  top_k: Opt(Type.Integer({ minimum: -1 })),
  min_p: Opt(Type.Number({ minimum: 0, maximum: 1 })),
  n: Opt(Type.Integer({ minimum: 1, maximum: 16 })),
  stream: Opt(Type.Boolean()),
  stream_options: StreamOptions,
  stop: Stop,
  stop_token_ids: Opt(Type.Array(U32())),
  seed: Opt(Seed()),
  ignore_eos: Opt(Type.Boolean()),
  min_tokens: Opt(Type.Integer({ minimum: 0 })),
  presence_penalty: Opt(Type.Number({ minimum: -2, maximum: 2 })),
  frequency_penalty: Opt(Type.Number({ minimum: -2, maximum: 2 })),
  user: Opt(Type.String()),
  skip_special_tokens: Opt(Type.Boolean()),
  include_stop_str_in_output: Opt(Type.Boolean()),
  // Structured output (src/guided/openai.ts): OpenAI's response_format, and the guided_* extensions.
  response_format: Opt(
    Type.Object({
      type: Type.String(),
      json_schema: Opt(Type.Object({ name: Opt(Type.String()), schema: Opt(Type.Unknown()), strict: Opt(Type.Boolean()) })),
    }),
  ),
  guided_json: Opt(Type.Unknown({ description: 'JSON schema (object) or its text' })),
  guided_regex: Opt(Type.String()),
  guided_choice: Opt(Type.Array(Type.String(), { minItems: 1 })),
  guided_grammar: Opt(Type.String()),
};

export const CompletionRequestSchema = Type.Object(
  {
    ...samplingFields,
    prompt: Type.Union([
      Type.String(),
      Type.Array(Type.String(), { minItems: 1 }),
      Type.Array(U32(), { minItems: 1 }),
      Type.Array(Type.Array(U32(), { minItems: 1 }), { minItems: 1 }),
    ]),
    echo: Opt(Type.Boolean()),
    logprobs: Opt(Type.Integer({ minimum: 0, maximum: 20 })),
    suffix: Opt(Type.String()),
  },
  { $id: 'OpenAiCompletionRequest', title: 'OpenAiCompletionRequest' },
);
export type CompletionRequest = StaticDecode<typeof CompletionRequestSchema>;

const ContentPart = Type.Object({ type: Type.String(), text: Opt(Type.String()) });

// Tools (parsed out of the model's text by the model's --dyn-tool-call-parser; see src/frontend/chat-output.ts)
const ToolSchema = Type.Object({
  type: Type.Literal('function'),
  function: Type.Object({
    name: Type.String({ minLength: 1, maxLength: 64, pattern: '^[A-Za-z0-9_.-]+$' }),
    description: Opt(Type.String()),
    parameters: Opt(Type.Record(Type.String(), Type.Unknown())),
    strict: Opt(Type.Boolean()),
  }),
});
const ToolChoiceSchema = Type.Union([
  Type.Literal('none'),
  Type.Literal('auto'),
  Type.Literal('required'),
  Type.Object({ type: Type.Literal('function'), function: Type.Object({ name: Type.String({ minLength: 1 }) }) }),
]);

export const ChatMessageSchema = Type.Object(
  {
    role: Type.Union([Type.Literal('system'), Type.Literal('user'), Type.Literal('assistant'), Type.Literal('tool'), Type.Literal('developer')]),
    content: Nullable(Type.Union([Type.String(), Type.Array(ContentPart)])),
    name: Opt(Type.String()),
    // an assistant turn's earlier tool calls, and the call a tool turn answers (rendered by the chat template)
    tool_calls: Opt(Type.Array(Type.Object({
      id: Type.String(),
      type: Type.Literal('function'),
      function: Type.Object({ name: Type.String({ minLength: 1 }), arguments: Type.String() }),
    }))),
    tool_call_id: Opt(Type.String()),
  },
  { title: 'ChatMessage' },
);

export const ChatCompletionRequestSchema = Type.Object(
  {
    ...samplingFields,
    messages: Type.Array(ChatMessageSchema, { minItems: 1 }),
    max_completion_tokens: Opt(Type.Integer({ minimum: 1 })),
    logprobs: Opt(Type.Boolean()),
    top_logprobs: Opt(Type.Integer({ minimum: 0, maximum: 20 })),
    chat_template_kwargs: Opt(Type.Record(Type.String(), Type.Unknown())),
    tools: Opt(Type.Array(ToolSchema, { maxItems: 128 })),
    tool_choice: Opt(ToolChoiceSchema),
  },
  { $id: 'OpenAiChatCompletionRequest', title: 'OpenAiChatCompletionRequest' },
);
export type ChatCompletionRequest = StaticDecode<typeof ChatCompletionRequestSchema>;

export const OpenAiErrorSchema = Type.Object(
  {
    error: Type.Object({
      message: Type.String(),
      type: Type.String(),
      param: Nullable(Type.String()),
      code: Nullable(Type.Union([Type.String(), Type.Integer()])),
    }),
  },
  { $id: 'OpenAiError', title: 'OpenAiError' },
);
export type OpenAiError = StaticDecode<typeof OpenAiErrorSchema>;
