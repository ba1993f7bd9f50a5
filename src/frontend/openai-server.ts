// The OpenAI-compatible HTTP frontend: /v1/models, /v1/completions and /v1/chat/completions, streamed over SSE
// or returned whole. It tokenizes prompts and renders chat templates in the tokenizer pool (off this thread),
// builds the reference PreprocessedRequest, drives a ServedModel, detokenizes the stream and applies stop strings.
// Errors use OpenAI's body shape: 400 naming the field, 404 for an unknown model or path, 413 for an oversized body,
// 429/503 when the backend is overloaded or absent. The work one request may cost is bounded before any is spent
// (RequestLimits): body bytes while reading, choices (prompts x n) and prompt bytes before tokenizing, tokenizing
// time while it runs, so one hostile request cannot starve /health or every other client.
import { serveEmbeddings } from './embeddings.js';
import { EmbeddingRequestSchema, type EmbeddingRequest } from '../protocol/request.js';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createHash, randomUUID, timingSafeEqual } from 'node:crypto';
import type { TSchema } from '@sinclair/typebox';
import { LlmError, toErrorPayload, type ErrorCode } from '../errors.js';
import { parseWire } from '../protocol/validate.js';
import {
  ChatCompletionRequestSchema,
  CompletionRequestSchema,
  type ChatCompletionRequest,
  type CompletionRequest,
  type OpenAiError,
} from '../protocol/openai.js';
import type { GuidedDecoding, PreprocessedRequest } from '../protocol/request.js';
import { checkGuided, guidedDecodingOf, GuidedFieldError, type OpenAiGuidedFields } from '../guided/openai.js';
import type { FinishReason, LlmResponseChunk } from '../protocol/response.js';
import { IncrementalDetokenizer, type ChatMessage, type Tokenizer } from '../tokenizer/index.js';
import type { ModelDirectory, ServedModel } from './models.js';
import { ChoiceOutput, chatParsers, NO_PARSERS, specialTextInToolCalls, type ChoiceParsers, type ToolCallDeltaOut, type ToolCallOut } from './chat-output.js';
import { chatPromptIds, type TokenizerPool } from '../../actors/tokenizer.js';
import { acquireTokenizerPool, releaseTokenizerPool } from './tokenizer-pool.js';
import { errorTypeOf, FrontendMetrics, type FrontendRequest } from './frontend-metrics.js';

const DEFAULT_COMPLETION_MAX_TOKENS = 16; // OpenAI's default for /v1/completions

/** What one request may cost; each refusal names its limit (and the flag that sets it). */
export interface RequestLimits {
  /** Request body, in bytes: more is a 413, counted while reading (the rest is not read). */
  maxRequestBytes: number;
  /** Prompt text of one request (all prompts, or all message contents), in UTF-8 bytes: more is a 400 before any
   * tokenizing (a token is at least one byte of text, so no prompt within a context length needs more than a few
   * bytes per token). */
  maxPromptBytes: number;
  /** Choices of one request, prompts x n: more is a 400 before any tokenizing. */
  maxChoices: number;
  /** Tokenizing one request's prompts (or chat template) taking longer is a 400. */
  tokenizeTimeoutMs: number;
}

export const DEFAULT_REQUEST_LIMITS: RequestLimits = {
  maxRequestBytes: 8 * 1024 * 1024,
  maxPromptBytes: 1024 * 1024,
  maxChoices: 128,
  tokenizeTimeoutMs: 10_000,
};

export interface OpenAiServerOptions {
  models: ModelDirectory;
  host?: string;
  port?: number; // 0 = ephemeral
  /** Requests in flight beyond this are refused with 429 (default: no limit). */
  maxInflight?: number;
  /** Bounds on one request's work (DEFAULT_REQUEST_LIMITS for any left out). */
  limits?: Partial<RequestLimits>;
  /** When not empty, every request but /health and /live must carry one of these keys (`Authorization: Bearer
   * KEY`); others get a 401. */
  apiKeys?: readonly string[];
}

export class OpenAiServer {
  private readonly server: Server;
  private readonly inflight = new Set<AbortController>();
  private closed = false;
  /** The dynamo_frontend_* families served at /metrics. */
  readonly metrics = new FrontendMetrics();

  private constructor(
    private readonly models: ModelDirectory,
    private readonly maxInflight: number,
    /** Encodes prompts and renders chat templates off this thread (held from listen to close). */
    private readonly tokenizerPool: TokenizerPool,
    private readonly limits: RequestLimits,
    /** SHA-256 digests of the accepted API keys (compared in constant time); empty = no authentication. */
    private readonly apiKeyDigests: readonly Buffer[],
  ) {
    this.server = createServer((req, res) => {
      this.route(req, res).catch((err: unknown) => {
        const status = errorStatus(err);
        // an oversized body is not read to its end: close the connection rather than read on to the next request
        if (status === 413 && !res.headersSent) res.setHeader('connection', 'close');
        sendError(res, status, toErrorPayload(err).message, undefined, err);
      });
    });
    this.server.keepAliveTimeout = 65_000;
  }

  static async listen(options: OpenAiServerOptions): Promise<OpenAiServer> {
    const limits = { ...DEFAULT_REQUEST_LIMITS, ...options.limits };
    const keys = (options.apiKeys ?? []).map(sha256);
    const s = new OpenAiServer(options.models, options.maxInflight ?? Infinity, acquireTokenizerPool(), limits, keys);
    await new Promise<void>((resolve, reject) => {
      s.server.once('error', (err: NodeJS.ErrnoException) =>
        reject(new LlmError('LLM_ERR_USAGE', `--http-port ${options.port ?? 0}: cannot listen on ${options.host ?? '0.0.0.0'}:${options.port ?? 0}: ${err.message}`)),
      );
      // a burst of clients beyond Node's default backlog (511) would wait 1 s for a SYN retry (the kernel clamps this)
      s.server.listen(options.port ?? 0, options.host ?? '0.0.0.0', 65_535, () => resolve());
    }).catch(async (err: unknown) => {
      await releaseTokenizerPool();
      throw err;
    });
    return s;
  }

  get port(): number {
    return (this.server.address() as AddressInfo).port;
  }

  /** Stops accepting connections and cancels in-flight requests. */
  async close(): Promise<void> {
    for (const c of this.inflight) c.abort();
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    if (!this.closed) await releaseTokenizerPool();
    this.closed = true;
  }

  private async route(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = (req.url ?? '/').split('?')[0];
    if (path === '/health' || path === '/live') {
      return sendJson(res, 200, { status: 'healthy', models: this.models.list().map((m) => m.name) });
    }
    if (path === '/metrics') {
      const { contentType, body } = await this.metrics.text();
      res.writeHead(200, { 'content-type': contentType });
      return void res.end(body);
    }
    if (!this.authorized(req)) {
      res.setHeader('www-authenticate', 'Bearer');
      const given = req.headers.authorization !== undefined;
      return sendJson(res, 401, openAiErrorBody(401,
        given ? 'Incorrect API key provided.' : "You didn't provide an API key. Provide it in the Authorization header (Authorization: Bearer YOUR_KEY).",
        null, given ? 'invalid_api_key' : null, 'invalid_request_error'));
    }
    if (path === '/v1/models' || path === '/v1/models/') {
      if (req.method !== 'GET') return sendError(res, 405, `method ${req.method} not allowed on ${path}`);
      return sendJson(res, 200, {
        object: 'list',
        data: this.models.list().map((m) => ({ id: m.name, object: 'model', created: m.created, owned_by: 'dynamo-sglang' })),
      });
    }
    if (path.startsWith('/v1/models/')) {
      if (req.method !== 'GET') return sendError(res, 405, `method ${req.method} not allowed on ${path}`);
      let id: string;
      try {
        id = decodeURIComponent(path.slice('/v1/models/'.length));
      } catch {
        return sendError(res, 400, `${path}: the model id is not valid percent-encoding`);
      }
      const m = this.models.get(id);
      if (m === undefined) return sendError(res, 404, `model "${id}" does not exist`, 'invalid_request_error', new HttpError(404, '', 'model', 'model_not_found'));
      return sendJson(res, 200, { id: m.name, object: 'model', created: m.created, owned_by: 'dynamo-sglang' });
    }
    if (path === '/v1/completions' || path === '/v1/chat/completions' || path === '/v1/embeddings') {
      if (req.method !== 'POST') return sendError(res, 405, `method ${req.method} not allowed on ${path}; use POST`);
      if (this.inflight.size >= this.maxInflight) {
        res.setHeader('retry-after', '1');
        return sendError(res, 429, `the server is at its limit of ${this.maxInflight} requests in flight; retry later`);
      }
      // client went away: cancel the work. Listened to before the body is read: a client that goes while it is read
      // or parsed would otherwise have closed already, and its request would run to the end for no one.
      const controller = new AbortController();
      res.on('close', () => controller.abort());
      this.inflight.add(controller);
      try {
        const body = await readJsonBody(req, this.limits.maxRequestBytes);
        const kind = path === '/v1/embeddings' ? 'embeddings' : path === '/v1/completions' ? 'completions' : 'chat_completions';
        const parsed = kind === 'embeddings' ? parseBody(EmbeddingRequestSchema, body) : kind === 'completions' ? parseBody(CompletionRequestSchema, body) : parseBody(ChatCompletionRequestSchema, body);
        const observed = this.metrics.start(parsed.model, kind, 'stream' in parsed && parsed.stream === true);
        try {
          if (kind === 'embeddings') await serveEmbeddings(parsed as EmbeddingRequest, this.model(parsed.model), res, controller.signal);
          else if (kind === 'completions') await this.completions(parsed as CompletionRequest, res, controller.signal, observed);
          else await this.chat(parsed as ChatCompletionRequest, res, controller.signal, observed);
          observed.finish(controller.signal.aborted ? 'cancelled' : 'none');
        } catch (err) {
          observed.finish(errorTypeOf(errorStatus(err), controller.signal.aborted));
          throw err;
        }
      } finally {
        this.inflight.delete(controller);
      }
      return;
    }
    sendError(res, 404, `no route for ${req.method} ${path}`, 'not_found_error');
  }

  private authorized(req: IncomingMessage): boolean {
    if (this.apiKeyDigests.length === 0) return true;
    const m = /^Bearer\s+(\S+)\s*$/i.exec(req.headers.authorization ?? '');
    if (m === null) return false;
    const digest = sha256(m[1] as string);
    let ok = false;
    for (const key of this.apiKeyDigests) ok = timingSafeEqual(key, digest) || ok; // every key compared, always
    return ok;
  }

  private model(name: string): ServedModel {
    const m = this.models.get(name);
    if (m === undefined) {
      const known = this.models.list().map((x) => x.name);
      throw new HttpError(404, `model "${name}" does not exist; served: ${known.length ? known.join(', ') : 'none'}`, 'model', 'model_not_found');
    }
    return m;
  }

  private async completions(body: CompletionRequest, res: ServerResponse, signal: AbortSignal, observed: FrontendRequest): Promise<void> {
    const model = this.model(body.model);
    const n = body.n ?? 1;
    this.checkChoices(promptCount(body.prompt), n);
    this.checkPromptBytes(typeof body.prompt === 'string' ? [body.prompt] : body.prompt.filter((p): p is string => typeof p === 'string'), 'prompt');
    const prompts = await completionPrompts(body.prompt, body.echo === true, this.promptWork(model));
    const choices: ChoiceSpec[] = [];
    for (const [p, prompt] of prompts.entries()) {
      for (let i = 0; i < n; i++) {
        choices.push({ index: p * n + i, tokenIds: prompt.ids, echo: body.echo ? prompt.text : '', seedOffset: i });
      }
    }
    const logprobs = body.logprobs ?? null;
    await this.run(model, body, choices, res, signal, observed, {
      kind: 'completion',
      defaultMaxTokens: DEFAULT_COMPLETION_MAX_TOKENS,
      logprobs: logprobs === null ? -1 : logprobs,
      parsers: NO_PARSERS,
    });
  }

  private async chat(body: ChatCompletionRequest, res: ServerResponse, signal: AbortSignal, observed: FrontendRequest): Promise<void> {
    const model = this.model(body.model);
    const n = body.n ?? 1;
    this.checkChoices(1, n);
    const messages: ChatMessage[] = body.messages.map((m, i) => ({
      role: m.role,
      content: messageText(m.content, i),
      ...(m.tool_calls ? { tool_calls: m.tool_calls } : {}),
      ...(m.tool_call_id ? { tool_call_id: m.tool_call_id } : {}),
    }));
    this.checkPromptBytes(messages.flatMap((m) => [m.content, ...(m.tool_calls ?? []).map((c) => c.function.arguments)]), 'messages');
    const special = specialTextInToolCalls(messages, model.tokenizer);
    if (special !== null) {
      throw new HttpError(400, `messages[${special.index}].tool_calls holds the special token text "${special.text}", which the chat template would turn into that token`, 'messages');
    }
    const tools = chatTools(body);
    // tool_choice "none": the template still shows the tools when the worker asks for that (the parser stays off)
    const shown = tools ?? (body.tool_choice === 'none' && model.excludeToolsWhenToolChoiceNone === false ? body.tools ?? undefined : undefined);
    const kwargs = shown === undefined ? body.chat_template_kwargs ?? undefined : { ...body.chat_template_kwargs, tools: shown };
    const ids = await this.promptWork(model).chat(messages, kwargs);
    const choices: ChoiceSpec[] = Array.from({ length: n }, (_, i) => ({ index: i, tokenIds: ids, echo: '', seedOffset: i }));
    const logprobs = body.logprobs ? (body.top_logprobs ?? 0) : -1;
    const maxTokens = body.max_completion_tokens ?? body.max_tokens ?? null;
    await this.run(model, { ...body, max_tokens: maxTokens }, choices, res, signal, observed, {
      kind: 'chat',
      defaultMaxTokens: null,
      logprobs,
      parsers: chatParsers(model, tools, body.tool_choice ?? undefined),
    });
  }

  private checkChoices(prompts: number, n: number): void {
    if (prompts * n > this.limits.maxChoices) {
      const param = prompts > 1 ? 'prompt' : 'n';
      throw new HttpError(400, `${prompts} prompt(s) x n=${n} asks for ${prompts * n} choices; this server takes at most ${this.limits.maxChoices} per request (--max-choices)`, param, 'too_many_choices');
    }
  }

  private checkPromptBytes(texts: readonly string[], field: string): void {
    let bytes = 0;
    for (const text of texts) bytes += Buffer.byteLength(text, 'utf8');
    if (bytes > this.limits.maxPromptBytes) {
      throw new HttpError(400, `${field}: ${bytes} bytes of prompt text; this server takes at most ${this.limits.maxPromptBytes} per request (--max-prompt-bytes)`, field, 'prompt_too_large');
    }
  }

  private promptWork(model: ServedModel): PromptWork {
    return promptWork(model, this.tokenizerPool, this.limits.tokenizeTimeoutMs);
  }

  /** Runs every choice of one request and writes the response (SSE chunks or one JSON body). */
  private async run(
    model: ServedModel,
    body: CompletionRequest | (ChatCompletionRequest & { max_tokens: number | null }),
    choices: ChoiceSpec[],
    res: ServerResponse,
    signal: AbortSignal,
    observed: FrontendRequest,
    mode: RunMode,
  ): Promise<void> {
    const id = `${mode.kind === 'chat' ? 'chatcmpl' : 'cmpl'}-${randomUUID().replace(/-/g, '')}`;
    const created = Math.floor(Date.now() / 1000);
    const stream = body.stream === true;
    const includeUsage = stream ? body.stream_options?.include_usage === true : true;
    const stop = body.stop === undefined || body.stop === null ? [] : typeof body.stop === 'string' ? [body.stop] : body.stop;
    const guided = await guidedDecodingFor(body);
    const requests = choices.map((c) => buildRequest(model, body, c, stop, mode, guided));
    const writer = stream ? new SseWriter(res) : null;
    const objectName = mode.kind === 'chat' ? (stream ? 'chat.completion.chunk' : 'chat.completion') : 'text_completion';
    const envelope = (extra: Record<string, unknown>) => ({ id, object: objectName, created, model: model.name, ...extra });

    const results = await Promise.all(
      choices.map(async (choice, k): Promise<ChoiceResult> => {
        const output = new ChoiceOutput(model.tokenizer, {
          stop,
          includeStopStr: body.include_stop_str_in_output === true,
          skipSpecialTokens: body.skip_special_tokens ?? true,
        }, mode.parsers);
        const lp = new LogprobCollector(model.tokenizer, mode.kind, output.detokenizerOptions, [...choice.echo].length);
        const result: ChoiceResult = { text: choice.echo, reasoning: output.parsesReasoning ? '' : null, toolCalls: [], finish: null, usage: null, logprobs: lp };
        const emit = (delta: { content: string; reasoning?: string; toolCalls?: ToolCallDeltaOut[] }, finish: string | null) => {
          const reasoning = delta.reasoning ?? '';
          const toolCalls = delta.toolCalls ?? [];
          if (writer === null || (delta.content === '' && reasoning === '' && toolCalls.length === 0 && finish === null)) return;
          if (mode.kind === 'chat') {
            const d: Record<string, unknown> = {};
            if (delta.content !== '') d['content'] = delta.content;
            if (reasoning !== '') d['reasoning_content'] = reasoning;
            if (toolCalls.length > 0) d['tool_calls'] = toolCalls;
            writer.send(envelope({ choices: [{ index: choice.index, delta: d, logprobs: lp.takeChatDelta(), finish_reason: finish }] }));
          } else {
            writer.send(envelope({ choices: [{ index: choice.index, text: delta.content, logprobs: lp.takeCompletionDelta(), finish_reason: finish }] }));
          }
        };
        const keep = (delta: { content: string; reasoning: string }) => {
          result.text += delta.content;
          if (result.reasoning !== null) result.reasoning += delta.reasoning;
        };
        if (writer !== null && mode.kind === 'chat') {
          writer.send(envelope({ choices: [{ index: choice.index, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null }] }));
        }
        if (writer !== null && choice.echo !== '') emit({ content: choice.echo }, null);
        const local = new AbortController();
        const onAbort = () => local.abort();
        signal.addEventListener('abort', onAbort, { once: true });
        // the client may have gone while its prompt was tokenized: the listener above will never fire then
        if (signal.aborted) local.abort();
        try {
          for await (const chunk of model.generate(requests[k], { signal: local.signal })) {
            writer?.commit();
            observed.tokens(chunk.token_ids.length);
            if (chunk.completion_usage) result.usage = chunk.completion_usage;
            // OpenAI has no finish reason for these: the choice fails (an error event, or a 5xx for a whole body)
            if (chunk.finish_reason === 'error') throw new LlmError('LLM_ERR_INTERNAL', 'the worker failed this request (finish_reason "error")');
            if (chunk.finish_reason === 'cancelled') throw new LlmError('LLM_ERR_CANCELLED', 'the worker cancelled this request (finish_reason "cancelled")');
            lp.add(chunk);
            const delta = output.push(chunk.token_ids);
            keep(delta);
            if (delta.stopped !== null) {
              result.finish = 'stop';
              emit(delta, null);
              local.abort(); // a stop string ended the choice: the engine can stop too
              break;
            }
            if (chunk.finish_reason) {
              const tail = output.end();
              keep(tail);
              result.finish = openAiFinish(chunk.finish_reason);
              emit({ content: delta.content + tail.content, reasoning: delta.reasoning + tail.reasoning, toolCalls: [...delta.toolCalls, ...tail.toolCalls] }, null);
              break;
            }
            emit(delta, null);
          }
        } catch (err) {
          if (signal.aborted) throw err;
          if (local.signal.aborted && result.finish !== null) {
            // we cancelled it ourselves after a stop string
          } else if (writer !== null && writer.committed) {
            writer.send({ error: openAiErrorBody(errorStatus(err), toErrorPayload(err).message).error });
            return result;
          } else {
            throw err;
          }
        } finally {
          signal.removeEventListener('abort', onAbort);
        }
        if (signal.aborted) return result; // the client is gone: nothing more to write
        if (result.finish === null) {
          // the stream ended without a finish reason
          const tail = output.end();
          keep(tail);
          emit(tail, null);
          result.finish = 'stop';
        }
        // a choice that called tools and ended by itself says so
        result.toolCalls = [...output.toolCalls];
        if (result.finish === 'stop' && result.toolCalls.length > 0) result.finish = 'tool_calls';
        emit({ content: '' }, result.finish);
        if (result.usage === null) {
          const completion = lp.tokenCount;
          result.usage = { prompt_tokens: choice.tokenIds.length, completion_tokens: completion, total_tokens: choice.tokenIds.length + completion };
        }
        return result;
      }),
    );

    const usage = sumUsage(results.map((r) => r.usage));
    observed.sequence(usage.prompt_tokens, usage.completion_tokens);
    if (writer !== null) {
      if (includeUsage) writer.send(envelope({ choices: [], usage }));
      writer.done();
      return;
    }
    sendJson(res, 200, envelope({
      choices: results.map((r, k) =>
        mode.kind === 'chat'
          ? { index: choices[k].index, message: messageOut(r), logprobs: r.logprobs.chatFull(), finish_reason: r.finish }
          : { index: choices[k].index, text: r.text, logprobs: r.logprobs.completionFull(), finish_reason: r.finish },
      ),
      usage,
    }));
  }
}

interface RunMode {
  kind: 'chat' | 'completion';
  defaultMaxTokens: number | null;
  logprobs: number; // -1 = none
  parsers: ChoiceParsers;
}

interface ChoiceSpec {
  index: number;
  tokenIds: number[];
  echo: string;
  seedOffset: number;
}

interface ChoiceResult {
  text: string;
  reasoning: string | null; // null: the model has no reasoning parser
  toolCalls: ToolCallOut[];
  finish: OpenAiFinishReason | null;
  usage: UsageLike | null;
  logprobs: LogprobCollector;
}

interface UsageLike {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  prompt_tokens_details?: { cached_tokens: number } | null;
}

class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly param: string | null = null,
    readonly code: string | null = null,
  ) {
    super(message);
  }
}

function buildRequest(
  model: ServedModel,
  body: CompletionRequest | (ChatCompletionRequest & { max_tokens: number | null }),
  choice: ChoiceSpec,
  stop: readonly string[],
  mode: RunMode,
  guided: GuidedDecoding | null,
): PreprocessedRequest {
  const room = model.contextLength - choice.tokenIds.length;
  const field = mode.kind === 'chat' ? 'messages' : 'prompt';
  if (room <= 0) {
    throw new HttpError(400, `${field}: the prompt has ${choice.tokenIds.length} tokens, which leaves no room in the model's context length of ${model.contextLength}`, field, 'context_length_exceeded');
  }
  const asked = body.max_tokens ?? mode.defaultMaxTokens;
  if (asked !== null && asked > room) {
    throw new HttpError(400, `max_tokens: ${asked} plus the prompt's ${choice.tokenIds.length} tokens exceeds the context length of ${model.contextLength}`, 'max_tokens', 'context_length_exceeded');
  }
  const seed = body.seed === undefined || body.seed === null ? null : body.seed + choice.seedOffset;
  return {
    model: model.name,
    token_ids: choice.tokenIds,
    stop_conditions: {
      max_tokens: asked ?? room,
      stop: stop.length > 0 ? [...stop] : null,
      stop_token_ids_hidden: body.stop_token_ids ?? null,
      min_tokens: body.min_tokens ?? null,
      ignore_eos: body.ignore_eos ?? null,
    },
    sampling_options: {
      temperature: body.temperature ?? 1.0,
      top_p: body.top_p ?? null,
      top_k: body.top_k ?? null,
      min_p: body.min_p ?? null,
      seed,
      presence_penalty: body.presence_penalty ?? null,
      frequency_penalty: body.frequency_penalty ?? null,
      include_stop_str_in_output: body.include_stop_str_in_output ?? null,
      guided_decoding: guided,
    },
    output_options: { logprobs: mode.logprobs >= 0 ? mode.logprobs : null, skip_special_tokens: body.skip_special_tokens ?? null },
    eos_token_ids: [...model.tokenizer.eosTokenIds],
    annotations: [],
  };
}

/** A request's prompt work: encoding, chat templates and decoding prompt ids for echo. It runs in the tokenizer pool,
 * by the model's tokenizer source; a model without a source (an in-memory tokenizer, as tests build) runs it on this
 * thread. A tokenizer's refusal (a template that fails, text it cannot encode) is a 400 naming the field. */
interface PromptWork {
  vocabSize: number;
  encode(text: string): Promise<number[]>;
  decode(ids: number[]): Promise<string>;
  chat(messages: ChatMessage[], kwargs: Record<string, unknown> | undefined): Promise<number[]>;
}

function promptWork(model: ServedModel, pool: TokenizerPool, timeoutMs: number): PromptWork {
  const tok = model.tokenizer;
  const source = model.tokenizerSource;
  const chatOptions = (kwargs: Record<string, unknown> | undefined) => ({ addGenerationPrompt: true, extraContext: kwargs });
  return {
    vocabSize: tok.vocabSize,
    // a prompt is user text: a special token's text in it stays text (parseSpecialTokens false)
    encode: (text) => inField('prompt', timeoutMs, async () => (source ? pool.encode(source, text, true, false) : tok.encode(text, { addSpecialTokens: true, parseSpecialTokens: false }))),
    decode: (ids) => inField('prompt', timeoutMs, async () => (source ? pool.decode(source, ids) : tok.decode(ids))),
    chat: (messages, kwargs) =>
      inField('messages', timeoutMs, async () => (source ? pool.encodeChat(source, messages, chatOptions(kwargs)) : chatPromptIds(tok, messages, chatOptions(kwargs)))),
  };
}

/** Runs one piece of prompt work with a time bound: the request gets its answer when the bound passes. (The pool
 * thread itself finishes the task; the prompt-bytes limit is what bounds that.) */
async function inField<T>(field: string, timeoutMs: number, work: () => Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new HttpError(400, `${field}: tokenizing took longer than ${timeoutMs} ms (--tokenize-timeout-ms)`, field, 'tokenize_timeout')),
      timeoutMs,
    );
  });
  try {
    return await Promise.race([work(), late]);
  } catch (err) {
    if (err instanceof LlmError && (err.code === 'LLM_ERR_BAD_REQUEST' || err.code === 'LLM_ERR_TOKENIZER')) {
      throw new HttpError(400, err.message.startsWith(`${field}`) ? err.message : `${field}: ${err.message}`, field);
    }
    throw err;
  } finally {
    clearTimeout(timer);
  }
}

function promptCount(prompt: CompletionRequest['prompt']): number {
  if (typeof prompt === 'string') return 1;
  if (prompt.length === 0 || typeof prompt[0] === 'number') return 1;
  return prompt.length;
}

async function completionPrompts(prompt: CompletionRequest['prompt'], echo: boolean, work: PromptWork): Promise<{ ids: number[]; text: string }[]> {
  const check = (ids: number[], where: string) => {
    const bad = ids.findIndex((t) => t >= work.vocabSize);
    if (bad !== -1) throw new HttpError(400, `${where}[${bad}]: token id ${ids[bad]} is outside the vocabulary (size ${work.vocabSize})`, 'prompt');
    return ids;
  };
  const fromText = async (text: string, where: string) => {
    if (text.length === 0) throw new HttpError(400, `${where}: empty prompt`, 'prompt');
    return { ids: await work.encode(text), text };
  };
  const fromIds = async (ids: number[], where: string) => ({ ids: check(ids, where), text: echo ? await work.decode(ids) : '' });
  if (typeof prompt === 'string') return [await fromText(prompt, 'prompt')];
  if (prompt.length > 0 && typeof prompt[0] === 'number') return [await fromIds(prompt as number[], 'prompt')];
  if (prompt.length > 0 && typeof prompt[0] === 'string') return Promise.all((prompt as string[]).map((p, i) => fromText(p, `prompt[${i}]`)));
  return Promise.all((prompt as number[][]).map((ids, i) => fromIds(ids, `prompt[${i}]`)));
}

function messageText(content: ChatCompletionRequest['messages'][number]['content'], index: number): string {
  if (content === null) return '';
  if (typeof content === 'string') return content;
  return content
    .map((part, j) => {
      if (part.type !== 'text') throw new HttpError(400, `messages[${index}].content[${j}].type: "${part.type}" is not supported by this text model`, 'messages');
      return part.text ?? '';
    })
    .join('');
}

/** The finish reasons OpenAI's API has; no other goes out. */
type OpenAiFinishReason = 'stop' | 'length' | 'tool_calls' | 'content_filter' | 'function_call';

/** The engine's ending as OpenAI's; "error" and "cancelled" never get here (they fail the choice). */
function openAiFinish(reason: Exclude<FinishReason, 'error' | 'cancelled'>): OpenAiFinishReason {
  switch (reason) {
    case 'eos':
    case 'stop':
      return 'stop';
    case 'length':
      return 'length';
    case 'content_filter':
      return 'content_filter';
  }
}

/** A whole chat choice's message: content null when the model only called tools. */
function messageOut(r: ChoiceResult): Record<string, unknown> {
  const message: Record<string, unknown> = { role: 'assistant', content: r.text === '' && r.toolCalls.length > 0 ? null : r.text };
  if (r.reasoning !== null) message['reasoning_content'] = r.reasoning === '' ? null : r.reasoning;
  if (r.toolCalls.length > 0) message['tool_calls'] = r.toolCalls;
  return message;
}

/** The tools a chat request gives its template and parser: none for tool_choice "none", only the named one for a
 * named choice (the model is shown nothing else; forcing the call itself would need constrained decoding). */
function chatTools(body: ChatCompletionRequest): NonNullable<ChatCompletionRequest['tools']> | undefined {
  const tools = body.tools ?? undefined;
  const choice = body.tool_choice ?? undefined;
  if (choice !== undefined && (tools === undefined || tools.length === 0)) {
    throw new HttpError(400, 'tool_choice: given without tools; list the functions in "tools"', 'tool_choice', 'invalid_request');
  }
  if (tools === undefined || tools.length === 0 || choice === 'none') return undefined;
  if (typeof choice === 'object') {
    const named = tools.filter((t) => t.function.name === choice.function.name);
    if (named.length === 0) throw new HttpError(400, `tool_choice.function.name: "${choice.function.name}" is not one of the request's tools`, 'tool_choice', 'invalid_request');
    return named;
  }
  return tools;
}

function sumUsage(all: (UsageLike | null)[]): UsageLike {
  const u: UsageLike = { prompt_tokens: 0, completion_tokens: 0, total_tokens: 0 };
  let cached = 0;
  for (const x of all) {
    if (x === null) continue;
    u.prompt_tokens += x.prompt_tokens;
    u.completion_tokens += x.completion_tokens;
    u.total_tokens += x.total_tokens;
    cached += x.prompt_tokens_details?.cached_tokens ?? 0;
  }
  if (cached > 0) u.prompt_tokens_details = { cached_tokens: cached };
  return u;
}

/** Gathers per-token logprobs from engine chunks and renders them in either OpenAI shape. A token's string is its
 * exact contribution to the output text (from a detokenizer of its own with the text's settings: a leading space
 * stays, a character split over byte tokens belongs to the token that completes it, a skipped special token is ""),
 * so the strings join to the text and `text_offset` is their running length in characters; an alternative's string
 * is what it would have added at that point; `bytes` are always the token's own. One-token decodes measured
 * 0.4-1.4 us each (stories260K, Qwen3), so even 20 top logprobs per token cost less than the 70-110 us of a round
 * trip to the tokenizer pool (see text-stream.ts). */
class LogprobCollector {
  private readonly entries: { token: string; bytes: number[]; offset: number; logprob: number; top: { token: string; bytes: number[]; logprob: number }[] }[] = [];
  private readonly detok: IncrementalDetokenizer;
  private offset: number;
  private sent = 0;
  tokenCount = 0;

  /** `textOffset`: characters before the first generated token (an echoed prompt). */
  constructor(
    private readonly tokenizer: Tokenizer,
    private readonly kind: 'chat' | 'completion',
    detokenizer: { skipSpecialTokens: boolean; keepTokenIds: ReadonlySet<number> },
    textOffset: number,
  ) {
    this.detok = new IncrementalDetokenizer(tokenizer, detokenizer);
    this.offset = textOffset;
  }

  add(chunk: LlmResponseChunk): void {
    this.tokenCount += chunk.token_ids.length;
    if (!chunk.log_probs) return;
    chunk.token_ids.forEach((id, i) => {
      const top = (chunk.top_logprobs?.[i] ?? []).map((t) => ({ token: this.detok.peek(t.token_id), bytes: this.bytes(t.token_id), logprob: t.logprob }));
      const token = this.detok.push(id);
      this.entries.push({ token, bytes: this.bytes(id), offset: this.offset, logprob: chunk.log_probs?.[i] ?? 0, top });
      this.offset += [...token].length;
    });
  }

  private bytes(id: number): number[] {
    return id < this.tokenizer.vocabSize ? [...this.tokenizer.tokenBytes(id)] : [];
  }

  private chatEntries(from: number) {
    return this.entries.slice(from).map((e) => ({
      token: e.token,
      logprob: e.logprob,
      bytes: e.bytes,
      top_logprobs: e.top.map((t) => ({ token: t.token, logprob: t.logprob, bytes: t.bytes })),
    }));
  }

  private completionEntries(from: number) {
    const tokens = this.entries.slice(from);
    return {
      tokens: tokens.map((e) => e.token),
      token_logprobs: tokens.map((e) => e.logprob),
      top_logprobs: tokens.map((e) => Object.fromEntries(e.top.map((t) => [t.token, t.logprob]))),
      text_offset: tokens.map((e) => e.offset),
    };
  }

  takeChatDelta(): { content: unknown[] } | null {
    if (this.entries.length === this.sent) return null;
    const out = { content: this.chatEntries(this.sent) };
    this.sent = this.entries.length;
    return out;
  }

  takeCompletionDelta(): unknown {
    if (this.entries.length === this.sent) return null;
    const out = this.completionEntries(this.sent);
    this.sent = this.entries.length;
    return out;
  }

  chatFull(): { content: unknown[] } | null {
    return this.kind === 'chat' && this.entries.length > 0 ? { content: this.chatEntries(0) } : null;
  }

  completionFull(): unknown {
    return this.entries.length === 0 ? null : this.completionEntries(0);
  }
}

/** Server-sent events. Nothing is written until `commit()` (the backend's first chunk): a request that fails
 * before then still gets a real HTTP error status and an OpenAI error body instead of a 200 stream. */
class SseWriter {
  private held: string[] | null = [];

  constructor(private readonly res: ServerResponse) {}

  get committed(): boolean {
    return this.held === null;
  }

  send(obj: unknown): void {
    const event = `data: ${JSON.stringify(obj)}\n\n`;
    if (this.held !== null) this.held.push(event);
    else if (!this.res.writableEnded) this.res.write(event);
  }

  commit(): void {
    if (this.held === null) return;
    const held = this.held;
    this.held = null;
    // no Connection header of our own: Node's keeps the connection alive unless the client sent `Connection: close`
    this.res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
    for (const event of held) this.res.write(event);
  }

  done(): void {
    this.commit();
    if (!this.res.writableEnded) this.res.end('data: [DONE]\n\n');
  }
}

/** response_format / guided_* as the worker's guided_decoding, its grammar checked: a bad one is a 400 naming the field. */
async function guidedDecodingFor(body: OpenAiGuidedFields): Promise<GuidedDecoding | null> {
  try {
    const asked = guidedDecodingOf(body);
    if (!asked) return null;
    await checkGuided(asked.guided, asked.param);
    return asked.guided;
  } catch (err) {
    if (err instanceof GuidedFieldError) throw new HttpError(400, err.message, err.param, 'invalid_request');
    throw err;
  }
}

function parseBody<T extends TSchema>(schema: T, body: unknown) {
  try {
    return parseWire(schema, body, 'body');
  } catch (err) {
    const message = toErrorPayload(err).message.replace(/^body\./, '');
    const param = /^body\.([A-Za-z_]+)/.exec(toErrorPayload(err).message)?.[1] ?? null;
    throw new HttpError(400, message, param, 'invalid_request');
  }
}

/** Strict: invalid bytes are refused rather than silently replaced by U+FFFD in the prompt. */
const UTF8 = new TextDecoder('utf-8', { fatal: true });

async function readJsonBody(req: IncomingMessage, maxBytes: number): Promise<unknown> {
  const declared = Number(req.headers['content-length'] ?? 0);
  if (declared > maxBytes) throw new HttpError(413, `request body of ${declared} bytes exceeds this server's limit of ${maxBytes} (--max-request-bytes)`, null, 'request_too_large');
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > maxBytes) throw new HttpError(413, `request body exceeds this server's limit of ${maxBytes} bytes (--max-request-bytes)`, null, 'request_too_large');
    chunks.push(chunk as Buffer);
  }
  let text: string;
  try {
    text = UTF8.decode(Buffer.concat(chunks));
  } catch {
    throw new HttpError(400, 'request body is not valid UTF-8 (JSON text must be UTF-8; escape other bytes as \\uXXXX)');
  }
  if (text.trim() === '') throw new HttpError(400, 'request body is empty; expected a JSON object');
  try {
    return JSON.parse(text) as unknown;
  } catch (err) {
    throw new HttpError(400, `request body is not valid JSON: ${(err as Error).message}`);
  }
}

const STATUS_BY_CODE: Partial<Record<ErrorCode, number>> = {
  LLM_ERR_BAD_REQUEST: 400,
  LLM_ERR_CONTEXT_LENGTH: 400,
  LLM_ERR_TOKENIZER: 400,
  LLM_ERR_OVERLOADED: 429,
  LLM_ERR_SHUTDOWN: 503,
  LLM_ERR_DISCOVERY: 503,
  LLM_ERR_TRANSPORT: 503, // no worker reachable (all marked down, or the one picked refused the connection)
  LLM_ERR_TIMEOUT: 504,
  LLM_ERR_CANCELLED: 503, // reaches a response only when the worker ended a request no client cancelled
};

function sha256(text: string): Buffer {
  return createHash('sha256').update(text, 'utf8').digest();
}

function errorStatus(err: unknown): number {
  if (err instanceof HttpError) return err.status;
  return STATUS_BY_CODE[toErrorPayload(err).code] ?? 500;
}

function openAiErrorBody(status: number, message: string, param: string | null = null, code: string | null = null, type?: string): OpenAiError {
  const t = type ?? (status === 400 || status === 405 || status === 413 ? 'invalid_request_error' : status === 404 ? 'not_found_error' : status === 429 ? 'rate_limit_error' : status === 503 ? 'service_unavailable' : 'internal_error');
  return { error: { message, type: t, param, code } };
}

function sendError(res: ServerResponse, status: number, message: string, type?: string, err?: unknown): void {
  const h = err instanceof HttpError ? err : null;
  if (res.headersSent) {
    if (!res.writableEnded) res.end();
    return;
  }
  // an outage (no worker, all unreachable, shutting down): tell the client when to try again
  if (status === 503) res.setHeader('retry-after', String(OUTAGE_RETRY_AFTER_S));
  sendJson(res, status, openAiErrorBody(status, message, h?.param ?? null, h?.code ?? null, type));
}

/** Seconds a client is told to wait after a 503: about a worker's restart or a discovery lease's expiry. */
const OUTAGE_RETRY_AFTER_S = 2;

function sendJson(res: ServerResponse, status: number, body: unknown): void {
  if (res.headersSent) {
    if (!res.writableEnded) res.end();
    return;
  }
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}
