// One streamed OpenAI request, timed: when each content-bearing SSE chunk arrived, what the final usage chunk
// said, or why the request failed. Works against any OpenAI-compatible server (ours, vLLM, SGLang, llama.cpp).
// ITL is per token: the SSE events that arrive in one network read carry k tokens between them (by the
// cumulative usage when the server streams it with every chunk, else one per content event: OpenAI-compatible
// servers send one event per token otherwise), and the gap since the previous read is spread over those k
// tokens, so coalesced chunks never read as 0 ms gaps. (Re-encoding a chunk's text locally is no count: one
// decoded token often re-encodes to two.)
// Embeddings requests (/v1/embeddings) are not streamed: one latency per request.
import { Type, type Static } from '@sinclair/typebox';
import { Value } from '@sinclair/typebox/value';
import { LlmError } from '../errors.js';
import type { RequestRecord } from './results.js';

export type Endpoint = 'completions' | 'chat' | 'embeddings';


/** The parts of a streamed chunk the benchmark reads; everything else is ignored. */
const UsageSchema = Type.Object({ prompt_tokens: Type.Optional(Type.Integer()), completion_tokens: Type.Optional(Type.Integer()) });
// Some servers send the usage in a chunk without "choices"; a chunk needs at least one of the two.
const ChunkSchema = Type.Object({
  choices: Type.Optional(Type.Array(
    Type.Object({
      text: Type.Optional(Type.Union([Type.String(), Type.Null()])),
      delta: Type.Optional(Type.Object({
        content: Type.Optional(Type.Union([Type.String(), Type.Null()])),
        reasoning_content: Type.Optional(Type.Union([Type.String(), Type.Null()])),
      })),
    }),
  )),
  usage: Type.Optional(Type.Union([UsageSchema, Type.Null()])),
});
type Chunk = Static<typeof ChunkSchema>;
const ErrorBodySchema = Type.Object({ error: Type.Union([Type.Object({ message: Type.String() }), Type.String()]) });
const ModelListSchema = Type.Object({ data: Type.Array(Type.Object({ id: Type.String() })) });

export interface RequestParams {
  url: string;
  endpoint: Endpoint;
  model: string;
  prompt: string;
  maxTokens: number;
  temperature: number;
  seed: number;
  ignoreEos: boolean;
  timeoutMs: number;
}

function short(text: string): string {
  const flat = text.replace(/\s+/g, ' ').trim();
  return flat.length > 200 ? `${flat.slice(0, 200)}…` : flat;
}

function describeFetchError(err: unknown, where: string, timeoutMs: number): string {
  const e = err as { name?: string; message?: string; cause?: { code?: string; message?: string } };
  if (e.name === 'TimeoutError') return `${where}: no response within ${timeoutMs / 1000} s`;
  const cause = e.cause?.code ?? e.cause?.message;
  return `cannot reach ${where}: ${cause ?? e.message ?? String(err)}`;
}

/** The server's error message from an OpenAI-style error body, or the body itself. */
function errorText(status: number, body: string): string {
  try {
    const parsed: unknown = JSON.parse(body);
    if (Value.Check(ErrorBodySchema, parsed)) {
      return `HTTP ${status}: ${typeof parsed.error === 'string' ? parsed.error : parsed.error.message}`;
    }
  } catch {
    // not JSON: show the raw body
  }
  return `HTTP ${status}: ${short(body) || '(empty body)'}`;
}

/** A model list answers at once from any live server; a hung one should not cost the whole --timeout. */
const MODEL_LIST_TIMEOUT_MS = 30_000;

/** GET {url}/v1/models → the served model ids; errors name the URL and what was wrong. `stop` (Ctrl-C) aborts. */
export async function listModels(url: string, timeoutMs: number, stop?: AbortSignal): Promise<string[]> {
  const where = `${url}/v1/models`;
  const waitMs = Math.min(timeoutMs, MODEL_LIST_TIMEOUT_MS);
  const timeout = AbortSignal.timeout(waitMs);
  let res: Response;
  try {
    res = await fetch(where, { signal: stop ? AbortSignal.any([timeout, stop]) : timeout });
  } catch (err) {
    throw new LlmError('LLM_ERR_TRANSPORT', describeFetchError(err, where, waitMs));
  }
  let body: string;
  try {
    body = await res.text();
  } catch (err) {
    throw new LlmError('LLM_ERR_TRANSPORT', `GET ${where}: the response broke off: ${(err as Error).message}`);
  }
  if (res.status === 404) {
    throw new LlmError('LLM_ERR_PROTOCOL', `GET ${where}: HTTP 404: no OpenAI model list here; is ${url} the base URL of an OpenAI-compatible server?`);
  }
  if (!res.ok) throw new LlmError('LLM_ERR_PROTOCOL', `GET ${where}: ${errorText(res.status, body)}`);
  let parsed: unknown;
  try {
    parsed = JSON.parse(body);
  } catch {
    throw new LlmError('LLM_ERR_PROTOCOL', `GET ${where} did not return JSON (not an OpenAI-compatible server?): ${short(body) || '(empty body)'}`);
  }
  if (!Value.Check(ModelListSchema, parsed)) {
    throw new LlmError('LLM_ERR_PROTOCOL', `GET ${where}: expected an OpenAI model list {"data":[{"id":...}]}, got ${short(body)}`);
  }
  return parsed.data.map((m) => m.id);
}

function requestBody(p: RequestParams): Record<string, unknown> {
  const common = {
    model: p.model,
    max_tokens: p.maxTokens,
    temperature: p.temperature,
    seed: p.seed,
    stream: true,
    stream_options: { include_usage: true },
    ...(p.ignoreEos ? { ignore_eos: true } : {}),
  };
  return p.endpoint === 'chat' ? { ...common, messages: [{ role: 'user', content: p.prompt }] } : { ...common, prompt: p.prompt };
}

function chunkText(chunk: Chunk): string {
  let text = '';
  for (const c of chunk.choices ?? []) text += c.text ?? c.delta?.content ?? c.delta?.reasoning_content ?? '';
  return text;
}

// OpenAI's embeddings response: a list of {object, embedding, index}, the model and the usage.
const EmbeddingsResponseSchema = Type.Object({
  object: Type.Literal('list'),
  data: Type.Array(Type.Object({
    object: Type.Literal('embedding'),
    embedding: Type.Union([Type.Array(Type.Number()), Type.String()]),
    index: Type.Integer({ minimum: 0 }),
  }), { minItems: 1 }),
  model: Type.String(),
  usage: Type.Object({ prompt_tokens: Type.Integer({ minimum: 0 }), total_tokens: Type.Integer({ minimum: 0 }) }),
});

async function timedEmbedding(p: RequestParams, benchStart: number, stop?: AbortSignal): Promise<RequestRecord> {
  const where = `${p.url}/v1/embeddings`;
  const t0 = performance.now();
  const record: RequestRecord = {
    ok: false, error: null, startMs: t0 - benchStart, ttftMs: null, e2eMs: null, itlMs: [],
    promptTokens: null, outputTokens: 0, outputTokensFrom: 'usage',
  };
  const fail = (message: string): RequestRecord => ({ ...record, error: message });
  const signal = stop ? AbortSignal.any([AbortSignal.timeout(p.timeoutMs), stop]) : AbortSignal.timeout(p.timeoutMs);
  let res: Response;
  let body: string;
  try {
    res = await fetch(where, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: p.model, input: p.prompt, encoding_format: 'float' }),
      signal,
    });
    body = await res.text();
  } catch (err) {
    return fail(describeFetchError(err, where, p.timeoutMs));
  }
  const e2eMs = performance.now() - t0;
  if (!res.ok) return fail(`POST ${where}: ${errorText(res.status, body)}`);
  let parsed: unknown;
  try {
    parsed = JSON.parse(body);
  } catch {
    return fail(`POST ${where}: the response is not JSON: ${short(body) || '(empty body)'}`);
  }
  if (!Value.Check(EmbeddingsResponseSchema, parsed)) {
    const first = Value.Errors(EmbeddingsResponseSchema, parsed).First();
    return fail(`POST ${where}: not an OpenAI embeddings response (${first ? `${first.path || '/'}: ${first.message}` : 'unexpected shape'}): ${short(body)}`);
  }
  return { ...record, ok: true, e2eMs, promptTokens: parsed.usage.prompt_tokens };
}

/** Sends one request and times it; never throws (a failure is a record with ok=false). `stop` aborts it. */
export async function timedRequest(p: RequestParams, benchStart: number, stop?: AbortSignal): Promise<RequestRecord> {
  if (p.endpoint === 'embeddings') return timedEmbedding(p, benchStart, stop);
  const path = p.endpoint === 'chat' ? '/v1/chat/completions' : '/v1/completions';
  const where = `${p.url}${path}`;
  const t0 = performance.now();
  const record: RequestRecord = {
    ok: false, error: null, startMs: t0 - benchStart, ttftMs: null, e2eMs: null, itlMs: [],
    promptTokens: null, outputTokens: 0, outputTokensFrom: 'chunks',
  };
  const fail = (message: string): RequestRecord => ({ ...record, ok: false, error: message });
  const signal = stop ? AbortSignal.any([AbortSignal.timeout(p.timeoutMs), stop]) : AbortSignal.timeout(p.timeoutMs);
  let res: Response;
  try {
    res = await fetch(where, {
      method: 'POST',
      headers: { 'content-type': 'application/json', accept: 'text/event-stream' },
      body: JSON.stringify(requestBody(p)),
      signal,
    });
  } catch (err) {
    return fail(describeFetchError(err, where, p.timeoutMs));
  }
  if (!res.ok || res.body === null) {
    const body = await res.text().catch(() => '');
    return fail(`POST ${where}: ${errorText(res.status, body)}`);
  }
  const type = res.headers.get('content-type') ?? '';
  if (!type.includes('text/event-stream')) {
    const body = await res.text().catch(() => '');
    return fail(`POST ${where}: expected an SSE stream (content-type text/event-stream), got ${type || 'no content-type'}: ${short(body)}`);
  }

  let tokens = 0;
  let last = t0;
  let done = false;
  let pending = '';
  // cumulative completion_tokens of the last usage seen mid-stream (continuous usage stats), if any
  let usageSoFar: number | null = null;
  const decoder = new TextDecoder();
  try {
    for await (const bytes of res.body) {
      const now = performance.now();
      pending += decoder.decode(bytes as Uint8Array, { stream: true });
      let inRead = 0;
      let cut: number;
      while ((cut = pending.search(/\r?\n\r?\n/)) >= 0) {
        const event = pending.slice(0, cut);
        pending = pending.slice(cut).replace(/^\r?\n\r?\n/, '');
        const data = event.split(/\r?\n/).filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trimStart()).join('\n');
        if (data === '') continue;
        if (data === '[DONE]') {
          done = true;
          continue;
        }
        let parsed: unknown;
        try {
          parsed = JSON.parse(data);
        } catch {
          return fail(`POST ${where}: SSE event is not JSON: ${short(data)}`);
        }
        if (Value.Check(ErrorBodySchema, parsed)) return fail(`POST ${where}: error in stream: ${typeof parsed.error === 'string' ? parsed.error : parsed.error.message}`);
        if (!Value.Check(ChunkSchema, parsed) || (parsed.choices === undefined && !parsed.usage)) {
          return fail(`POST ${where}: SSE event is not an OpenAI ${p.endpoint === 'chat' ? 'chat.completion.chunk' : 'completion chunk'} (needs a "choices" array or "usage"): ${short(data)}`);
        }
        const text = chunkText(parsed);
        let fromUsage: number | null = null;
        if (parsed.usage) {
          if (parsed.usage.completion_tokens !== undefined) {
            record.outputTokens = parsed.usage.completion_tokens;
            record.outputTokensFrom = 'usage';
            if (text !== '') fromUsage = parsed.usage.completion_tokens - (usageSoFar ?? 0);
            usageSoFar = parsed.usage.completion_tokens;
          }
          if (parsed.usage.prompt_tokens !== undefined) record.promptTokens = parsed.usage.prompt_tokens;
        }
        if (text === '') continue;
        inRead += Math.max(1, fromUsage ?? 1);
      }
      if (inRead === 0) continue;
      if (record.ttftMs === null) {
        // tokens that came with the first one have no gap of their own to measure
        record.ttftMs = now - t0;
      } else {
        const gap = (now - last) / inRead;
        for (let k = 0; k < inRead; k++) record.itlMs.push(gap);
      }
      last = now;
      tokens += inRead;
    }
  } catch (err) {
    return fail(`POST ${where}: stream broke off: ${(err as Error).name === 'TimeoutError' ? `timed out after ${p.timeoutMs / 1000} s` : (err as Error).message}`);
  }
  if (!done) return fail(`POST ${where}: stream ended without "data: [DONE]"`);
  if (record.ttftMs === null) return fail(`POST ${where}: stream carried no generated text`);
  if (record.outputTokensFrom === 'chunks') record.outputTokens = tokens;
  return { ...record, ok: true, e2eMs: performance.now() - t0 };
}
