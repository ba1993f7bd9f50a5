// What an embedding worker's endpoint runs (reference §2.4): the OpenAI /v1/embeddings body (text or token ids) in,
// one response out ({object: "list", data: [{object: "embedding", embedding, index}], model, usage}). Text is
// tokenized here (the model card says ModelInput.Text); inputs longer than the model's context are refused as OpenAI
// does unless the request asks to truncate (truncate_prompt_tokens: the last n tokens); `dimensions` keeps the first
// n of each vector and re-normalises it, where the model supports it (Matryoshka). Every input of the request goes
// to the core's batcher at once, so they share passes with each other and with other requests.
import type { EmbeddingModel } from '../engine/embedding-config.js';
import type { EmbedOptions } from '../engine/types.js';
import { LlmError } from '../errors.js';
import { EmbeddingRequestSchema, type EmbeddingRequest } from '../protocol/request.js';
import type { EmbeddingResponse } from '../protocol/response.js';
import { parseWire } from '../protocol/validate.js';
import type { Tokenizer } from '../tokenizer/index.js';
import type { ModeServing } from './serving.js';

/** The core an embedding worker serves over (the Supervisor). */
export interface EmbeddingCore {
  embed(inputs: readonly (readonly number[])[], options?: Partial<EmbedOptions>): Promise<Float32Array[]>;
  embeddingModel(): Promise<EmbeddingModel>;
}

export interface EmbeddingServingDeps {
  core: EmbeddingCore;
  tokenizer: Tokenizer;
}

/** The request's inputs as token ids (strings tokenized as user text). */
export function embeddingInputs(input: EmbeddingRequest['input'], tokenizer: Tokenizer): number[][] {
  const bad = (m: string) => new LlmError('LLM_ERR_BAD_REQUEST', m);
  if (typeof input === 'string') input = [input];
  if (input.length === 0) throw bad('input must not be empty');
  const first = input[0];
  const lists: (string | number[])[] = typeof first === 'number' ? [input as number[]] : (input as (string | number[])[]);
  return lists.map((x, i) => {
    const ids = typeof x === 'string' ? tokenizer.encode(x, { parseSpecialTokens: false }) : x;
    if (ids.length === 0) throw bad(`input[${i}] is empty`);
    return ids;
  });
}

/** OpenAI's refusal of an input longer than the context, or the input cut to its last tokens when asked. */
export function fitContext(ids: number[][], maxTokens: number, truncate: number | undefined): number[][] {
  return ids.map((x) => {
    if (truncate !== undefined) {
      const keep = truncate === -1 ? maxTokens : Math.min(truncate, maxTokens);
      if (keep < 1) throw new LlmError('LLM_ERR_BAD_REQUEST', `truncate_prompt_tokens ${truncate}: expected -1 or at least 1`);
      return x.length > keep ? x.slice(x.length - keep) : x;
    }
    if (x.length > maxTokens) {
      throw new LlmError('LLM_ERR_CONTEXT_LENGTH', `This model's maximum context length is ${maxTokens} tokens, however you requested ${x.length} tokens (${x.length} in your prompt; 0 for the completion). Please reduce your prompt; or completion length.`);
    }
    return x;
  });
}

/** The first `dimensions` of each vector, re-normalised when the model normalises; refused where not supported. */
export function applyDimensions(vectors: Float32Array[], dimensions: number | undefined, model: EmbeddingModel): Float32Array[] {
  if (dimensions === undefined || dimensions === model.hiddenSize) return vectors;
  const bad = (m: string) => new LlmError('LLM_ERR_BAD_REQUEST', m);
  if (!model.matryoshka) throw bad('This model does not support specifying dimensions.');
  if (model.matryoshkaDimensions !== null && !model.matryoshkaDimensions.includes(dimensions)) {
    throw bad(`dimensions ${dimensions} is not supported by this model (supported: ${model.matryoshkaDimensions.join(', ')})`);
  }
  if (dimensions > model.hiddenSize) throw bad(`dimensions ${dimensions} is larger than the model's embedding size ${model.hiddenSize}`);
  return vectors.map((v) => {
    const cut = v.slice(0, dimensions);
    if (!model.normalize) return cut;
    let norm = 0;
    for (const x of cut) norm += x * x;
    norm = Math.sqrt(norm);
    return norm > 0 ? cut.map((x) => x / norm) : cut;
  });
}

export function embeddingServing({ core, tokenizer }: EmbeddingServingDeps): ModeServing {
  return {
    accept: (raw) => {
      const request = parseWire(EmbeddingRequestSchema, healthCheckAsEmbedding(raw), 'embedding request');
      return async function* serve({ signal }) {
        const model = await core.embeddingModel();
        // checked before any work, so a bad request costs no pass
        applyDimensions([], request.dimensions ?? undefined, model);
        const ids = fitContext(embeddingInputs(request.input, tokenizer), model.maxInputTokens, request.truncate_prompt_tokens ?? undefined);
        if (signal.aborted) return; // the caller went away before its inputs were queued: no pass for them
        const vectors = applyDimensions(await core.embed(ids), request.dimensions ?? undefined, model);
        const promptTokens = ids.reduce((n, x) => n + x.length, 0);
        const response: EmbeddingResponse = {
          object: 'list',
          data: vectors.map((v, index) => ({ object: 'embedding', embedding: Array.from(v), index })),
          model: request.model,
          usage: { prompt_tokens: promptTokens, total_tokens: promptTokens },
        };
        yield response;
      };
    },
  };
}

/** The runtime's canary (src/protocol/health.ts: token_ids [bos] or prompt "Test") embeds its one input. */
function healthCheckAsEmbedding(raw: unknown): unknown {
  if (raw === null || typeof raw !== 'object' || 'input' in raw) return raw;
  const r = raw as { token_ids?: unknown; prompt?: unknown };
  const input = r.token_ids ?? r.prompt;
  return input === undefined ? raw : { model: 'health-check', input };
}
