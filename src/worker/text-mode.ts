// Text in, text out (`--use-sglang-tokenizer`, reference §2.1-2.2): the worker registers as a Chat model with Text
// input, so the frontend forwards the OpenAI chat request as it came; the worker applies the model's chat template,
// tokenizes, generates through the aggregated path and streams OpenAI `chat.completion.chunk` objects whose deltas
// are the decoded text. The request fields the reference reads: messages, temperature, top_p, top_k, max_tokens
// (also max_completion_tokens), seed, stop token ids, ignore_eos, guided_decoding, chat_template_kwargs /
// chat_template_args; a bare `prompt` or `text` string is tokenized as it is (no template).
import { randomUUID } from 'node:crypto';
import { Type, type Static } from '@sinclair/typebox';
import { chatPromptIds } from '../../actors/tokenizer.js';
import { LlmError } from '../errors.js';
import { PreprocessedRequestSchema, type PreprocessedRequest } from '../protocol/request.js';
import type { FinishReason, LlmResponseChunk } from '../protocol/response.js';
import { parseWire } from '../protocol/validate.js';
import { IncrementalDetokenizer, type ChatMessage, type Tokenizer } from '../tokenizer/index.js';
import type { AcceptedRequest, ModeServing } from './serving.js';
import type { KvPort } from '../disagg/port.js';

const TextContentPart = Type.Object({ type: Type.String(), text: Type.Optional(Type.String()) });
const TextMessage = Type.Object({
  role: Type.String({ minLength: 1 }),
  content: Type.Union([Type.String(), Type.Array(TextContentPart), Type.Null()]),
});

/** The text-mode request body (an OpenAI chat request as a Dynamo frontend forwards it); other fields are ignored. */
export const TextModeRequestSchema = Type.Object({
  messages: Type.Optional(Type.Array(TextMessage, { minItems: 1 })),
  prompt: Type.Optional(Type.String()),
  text: Type.Optional(Type.String()),
  temperature: Type.Optional(Type.Number({ minimum: 0 })),
  top_p: Type.Optional(Type.Number({ exclusiveMinimum: 0, maximum: 1 })),
  top_k: Type.Optional(Type.Integer()),
  max_tokens: Type.Optional(Type.Integer({ minimum: 1 })),
  max_completion_tokens: Type.Optional(Type.Integer({ minimum: 1 })),
  seed: Type.Optional(Type.Integer()),
  ignore_eos: Type.Optional(Type.Boolean()),
  stop_token_ids: Type.Optional(Type.Array(Type.Integer({ minimum: 0 }))),
  guided_decoding: Type.Optional(Type.Union([Type.Record(Type.String(), Type.Unknown()), Type.Null()])),
  chat_template_kwargs: Type.Optional(Type.Record(Type.String(), Type.Unknown())),
  chat_template_args: Type.Optional(Type.Record(Type.String(), Type.Unknown())),
}, { additionalProperties: true, title: 'TextModeRequest' });
export type TextModeRequest = Static<typeof TextModeRequestSchema>;

/** One streamed chunk, as the reference's text mode yields it. */
export interface TextModeChunk {
  id: string;
  created: number;
  model: string;
  object: 'chat.completion.chunk';
  choices: { index: 0; delta: { role: 'assistant'; content: string }; finish_reason: FinishReason | null }[];
}

export interface TextModeDeps {
  /** The aggregated path the token requests go through. */
  router: Pick<KvPort, 'generate'>;
  tokenizer: Tokenizer;
  /** The served model name the chunks carry. */
  model: string;
  /** End-of-sequence ids of the model (the engine's). */
  eosTokenIds: readonly number[];
}

function messagesOf(request: TextModeRequest): ChatMessage[] {
  return (request.messages ?? []).map((m, i) => {
    if (typeof m.content === 'string' || m.content === null) return { role: m.role, content: m.content ?? '' };
    const parts = m.content.map((p, j) => {
      if (p.type !== 'text' || p.text === undefined) throw new LlmError('LLM_ERR_BAD_REQUEST', `messages[${i}].content[${j}]: text mode takes text parts only, got "${p.type}"`);
      return p.text;
    });
    return { role: m.role, content: parts.join('') };
  });
}

/** The token request a text-mode body becomes. */
export function tokenRequestOf(request: TextModeRequest, deps: Pick<TextModeDeps, 'tokenizer' | 'eosTokenIds'>): PreprocessedRequest {
  const sources = [request.messages, request.prompt, request.text].filter((s) => s !== undefined).length;
  if (sources !== 1) throw new LlmError('LLM_ERR_BAD_REQUEST', 'a text-mode request takes exactly one of messages, prompt and text');
  const tok = deps.tokenizer;
  const tokenIds = request.messages !== undefined
    ? chatPromptIds(tok, messagesOf(request), { extraContext: { ...request.chat_template_args, ...request.chat_template_kwargs } })
    : tok.encode((request.prompt ?? request.text)!, { addSpecialTokens: true, parseSpecialTokens: false });
  const maxTokens = request.max_completion_tokens ?? request.max_tokens;
  return {
    token_ids: tokenIds,
    stop_conditions: {
      ...(maxTokens === undefined ? {} : { max_tokens: maxTokens }),
      ...(request.ignore_eos === undefined ? {} : { ignore_eos: request.ignore_eos }),
      ...(request.stop_token_ids === undefined ? {} : { stop_token_ids: request.stop_token_ids }),
    },
    sampling_options: {
      ...(request.temperature === undefined ? {} : { temperature: request.temperature }),
      ...(request.top_p === undefined ? {} : { top_p: request.top_p }),
      ...(request.top_k === undefined ? {} : { top_k: request.top_k }),
      ...(request.seed === undefined ? {} : { seed: request.seed }),
      ...(request.guided_decoding ? { guided_decoding: request.guided_decoding as PreprocessedRequest['sampling_options']['guided_decoding'] } : {}),
    },
    eos_token_ids: [...deps.eosTokenIds],
  };
}

/** Wraps the aggregated serving: accepts text-mode bodies, streams chat.completion.chunk objects. */
export function textModeServing(deps: TextModeDeps): ModeServing {
  return {
    accept(raw): AcceptedRequest {
      const request = parseWire(TextModeRequestSchema, raw, 'text-mode request');
      // the token request is checked like any other before it runs (guided_decoding's fields among them)
      const tokens = parseWire(PreprocessedRequestSchema, tokenRequestOf(request, deps), 'text-mode request');
      return (options) => textChunks(deps, tokens, options);
    },
  };
}

async function* textChunks(deps: TextModeDeps, request: PreprocessedRequest, options: Parameters<AcceptedRequest>[0]): AsyncGenerator<TextModeChunk> {
  const id = `chatcmpl-${options.requestId ?? randomUUID()}`;
  const created = Math.floor(Date.now() / 1000);
  const text = new IncrementalDetokenizer(deps.tokenizer);
  for await (const chunk of deps.router.generate(request, options) as AsyncIterable<LlmResponseChunk>) {
    let content = '';
    for (const t of chunk.token_ids) content += text.push(t);
    const finish = chunk.finish_reason ?? null;
    if (finish !== null) content += text.flush();
    if (content === '' && finish === null) continue;
    yield { id, created, model: deps.model, object: 'chat.completion.chunk', choices: [{ index: 0, delta: { role: 'assistant', content }, finish_reason: finish }] };
  }
}
