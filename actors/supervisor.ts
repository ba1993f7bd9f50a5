// The supervisor (main thread): starts and stops the core of a topology (src/topology: the scheduler actor and one
// rank actor per tensor-parallel rank) as its graph lists it, and is the KV port a disaggregated worker's KV transfer
// is attached to. It turns wire requests into scheduler requests and the scheduler's outputs into response chunks,
// and feeds the metrics recorder. When the scheduler or any rank fails to start, crashes or hangs, every in-flight
// request fails with the coded error (naming the rank), then the supervisor aborts the whole group and starts a fresh
// one (scheduler + every rank) from the same graph, up to maxRestarts times; past that it shuts down and every later
// call fails with the last error. Requests that arrive during a restart wait for it.
import { randomUUID } from 'node:crypto';
import { LlmError } from '../src/errors.js';
import { MAX_TOP_LOGPROBS } from '../src/engine/step.js';
import { grammarSpecOf } from '../src/guided/guides.js';
import type { GuidedDecoding } from '../src/protocol/request.js';
import { PreprocessedRequestSchema, type PreprocessedRequest } from '../src/protocol/request.js';
import type { LlmResponseChunk } from '../src/protocol/response.js';
import { parseWire } from '../src/protocol/validate.js';
import type { HandOver, RadixEvent, RequestOutput, SchedulerRequest } from '../src/scheduler/scheduler.js';
import type { ResolvedSupervisorConfig, SupervisorConfig } from '../src/config/supervisor.js';
import type { EngineSummary } from '../src/engine/summary.js';
import type { DisaggKvOp, DisaggKvReply, PrefixPages } from '../src/scheduler/kv-transfer.js';
import { buildTopology, startCore, type CoreGraph, type RunningCore } from '../src/topology/topology.js';
import { EmbedBatcher } from '../src/engine/embed-batcher.js';
import { readEmbeddingConfig, type EmbeddingModel } from '../src/engine/embedding-config.js';
import { loadModelSpec } from '../src/engine/model.js';
import type { EmbedOptions } from '../src/engine/types.js';
import { IDLE_LOAD, MetricsActor, type SchedulerLoad } from './metrics.js';
import type { SchedulerHandle } from './scheduler.js';
import { loggerFrom, type LogDestination, type Logger } from '../src/runtime/log.js';
import { watchModelLoad } from '../src/runtime/progress.js';
import { IncrementalDetokenizer, loadTokenizer, type ChatMessage, type Tokenizer } from '../src/tokenizer/index.js';
import { chatPromptIds } from './tokenizer.js';

/** A load snapshot for metrics and routing (reference §5.2: KV usage, requests). kvUsedPages counts pages held by
 * requests or the prefix cache; kvEvictablePages, the cached ones no request uses (reclaimable). */
export type SupervisorLoad = SchedulerLoad;

export interface GenerateOptions {
  signal?: AbortSignal;
  /** Defaults to a random UUID. */
  requestId?: string;
  /** Disaggregated prefill: park the prompt's KV under this key when the request stops at its first token. */
  parkKvAs?: string;
  /** Disaggregated decode: the request arrives prefilled (src/scheduler/request.ts Q5). */
  handOver?: HandOver;
}

/** Text in: a `prompt` (encoded with the model's special tokens, BOS where it has one; what the user wrote stays
 * literal text) or chat `messages` (the model's chat template). Sampling and stop fields as in the OpenAI API. */
export interface TextRequest {
  prompt?: string;
  messages?: ChatMessage[];
  max_tokens?: number;
  min_tokens?: number;
  temperature?: number;
  top_p?: number;
  top_k?: number;
  seed?: number;
  ignore_eos?: boolean;
  /** Extra chat-template variables (e.g. Qwen3's enable_thinking). */
  chat_template_kwargs?: Record<string, unknown>;
}

/** Text out: each chunk's newly completed text beside the token ids it came from. */
export type TextChunk = LlmResponseChunk & { text: string };

export interface SupervisorOptions {
  /** Where the supervisor logs (group starts, failures, restarts): a Logger, or a destination that gets the records
   * as lines (JSON lines under DYN_LOGGING_JSONL=1). Default: the process's logger (stderr, DYN_LOG levels). Actor
   * threads log through the process's settings (DYN_LOG, DYN_LOGGING_JSONL), which they inherit. */
  logger?: Logger | LogDestination;
}

export class Supervisor {
  /** The config every start of the core follows, every default applied. */
  private readonly config: ResolvedSupervisorConfig;
  /** The group in service (a new one after each restart). */
  private running: RunningCore | null = null;
  /** Resolves when the current (re)start is done. */
  private ready: Promise<void>;
  private failure: LlmError | null = null;
  private restarts = 0;
  private stopped = false;
  private readonly kvListeners: ((e: RadixEvent) => void)[] = [];
  private readonly servingListeners: ((serving: boolean) => void)[] = [];
  private embedBatcher: EmbedBatcher | null = null;
  private embedding: Promise<EmbeddingModel> | null = null;
  private loadedTokenizer: Tokenizer | null = null;

  private constructor(
    private readonly graph: CoreGraph,
    /** Step, request and load samples from every scheduler this supervisor started. */
    readonly metrics: MetricsActor,
    private readonly log: Logger,
  ) {
    this.config = graph.config;
    this.ready = Promise.resolve();
  }

  /** Builds the topology of the config (src/topology) and starts its core with a recorder of its own: the rank
   * actors (opening their engines) and the scheduler actor over them. */
  static start(config: SupervisorConfig, options: SupervisorOptions = {}): Promise<Supervisor> {
    const { cores } = buildTopology(config);
    if (cores.length !== 1) {
      throw new LlmError('LLM_ERR_CONFIG', `dp size ${cores.length}: a Supervisor runs one data-parallel group; start the topology (src/topology/start.ts) for several`);
    }
    return Supervisor.supervise(cores[0], new MetricsActor(), options);
  }

  /** Starts a topology's core, feeding the given metrics recorder, and supervises it (restarts from the same graph). */
  static async supervise(core: CoreGraph, metrics: MetricsActor, options: SupervisorOptions = {}): Promise<Supervisor> {
    const sup = new Supervisor(core, metrics, loggerFrom(options.logger, 'worker.supervisor'));
    const t0 = performance.now();
    // a caller's own logger gets the progress as records; the process's logger also draws it on a terminal
    const loading = watchModelLoad(core.config.modelPath, sup.log, options.logger ? { isTTY: false, write: () => undefined } : undefined);
    try {
      sup.running = await sup.startGroup();
    } catch (err) {
      loading.done(false);
      throw err;
    }
    loading.done(true);
    sup.log.info('group started', { dpRank: core.dpRank, ranks: sup.running.ranks.length, seconds: Number(((performance.now() - t0) / 1000).toFixed(2)) });
    return sup;
  }

  /** The data-parallel rank of the group this supervisor runs. */
  get dpRank(): number {
    return this.graph.dpRank;
  }

  /** Whether a group is in service now (false while it restarts, after a failure it gave up on, and once stopped). */
  get serving(): boolean {
    return this.running !== null;
  }

  /** The engine rank 0 opened (KV pool, vocabulary, EOS ids). Throws during a restart. */
  get engine(): EngineSummary {
    return this.scheduler.engine;
  }

  /** The scheduler actor now in service (a new one after each restart): its counters, load and integrity checks. */
  get scheduler(): SchedulerHandle {
    if (!this.running) throw this.failure ?? new LlmError('LLM_ERR_SHUTDOWN', 'the supervisor is not running');
    return this.running.scheduler;
  }

  /** The core in service: its graph, group name, scheduler, ranks and KV port. Throws during a restart. */
  get core(): RunningCore {
    if (!this.running) throw this.failure ?? new LlmError('LLM_ERR_SHUTDOWN', 'the supervisor is not running');
    return this.running;
  }

  /** KV-cache events (blocks stored in / removed from the prefix cache, with their token ids) for the KV-event
   * publisher. After a restart the cache starts empty; no "removed" events are sent for the lost one. */
  onKvEvent(listener: (e: RadixEvent) => void): void {
    this.kvListeners.push(listener);
    this.running?.scheduler.onKvEvent(listener);
  }

  /** Called with false when the group fails (it restarts, or stays down after its last restart) and with true when
   * a restarted group serves again; never for stop(). */
  onServingChange(listener: (serving: boolean) => void): void {
    this.servingListeners.push(listener);
  }

  /** KV usage and request counts as of the last step's outputs (zeros while restarting). */
  load(): SupervisorLoad {
    return this.running ? this.metrics.snapshot().load : { ...IDLE_LOAD };
  }

  /** Streams the response chunks of one request (reference §2.2 shapes). Aborting the signal ends the stream with
   * a "cancelled" chunk; an engine or actor failure throws its coded LlmError. */
  async *generate(request: PreprocessedRequest, options: GenerateOptions = {}): AsyncGenerator<LlmResponseChunk> {
    const req = parseWire(PreprocessedRequestSchema, request, 'request');
    await this.ready;
    if (this.failure) throw this.failure;
    if (this.stopped || !this.running) throw new LlmError('LLM_ERR_SHUTDOWN', 'the supervisor has stopped');
    const scheduler = this.running.scheduler;
    const id = options.requestId ?? randomUUID();
    const input = this.toSchedulerRequest(id, req);
    if (options.parkKvAs !== undefined) input.parkKvAs = options.parkKvAs;
    if (options.handOver) input.handOver = options.handOver;
    const t0 = performance.now();
    let firstTokenMs: number | null = null;
    const outputs = new OutputQueue();
    scheduler.submit(input, (o) => outputs.push(o), options.signal?.aborted === true);
    let done = false;
    let completionTokens = 0;
    const onAbort = () => scheduler.abort(id);
    options.signal?.addEventListener('abort', onAbort, { once: true });
    try {
      for (;;) {
        const o = await outputs.next();
        if (firstTokenMs === null && o.tokenIds.length) firstTokenMs = performance.now() - t0;
        completionTokens += o.tokenIds.length;
        if (o.finishReason) {
          done = true;
          const u = o.usage;
          this.metrics.send({
            kind: 'request',
            sample: {
              finishReason: o.finishReason, promptTokens: u?.promptTokens ?? input.tokenIds.length, completionTokens: u?.completionTokens ?? 0,
              cachedTokens: u?.cachedTokens ?? 0, firstTokenMs, totalMs: performance.now() - t0,
            },
          });
        }
        if (o.finishReason === 'error') throw LlmError.fromPayload(o.error ?? { code: 'LLM_ERR_INTERNAL', message: 'request failed' });
        yield toChunk(o);
        if (done) return;
      }
    } finally {
      options.signal?.removeEventListener('abort', onAbort);
      if (!done) {
        // the consumer stopped early (a disconnect): the request ends cancelled, and the metrics hear of it
        scheduler.abort(id);
        this.metrics.send({
          kind: 'request',
          sample: {
            finishReason: 'cancelled', promptTokens: input.tokenIds.length, completionTokens, cachedTokens: 0, firstTokenMs,
            totalMs: performance.now() - t0,
          },
        });
      }
    }
  }

  /**
   * Embeddings of token-id inputs: one vector per input, pooled and normalised as the checkpoint declares
   * (embeddingModel()) unless `options` says otherwise. Inputs of all callers are batched into engine passes
   * (src/engine/embed-batcher.ts); an input longer than embeddingModel().maxInputTokens is LLM_ERR_CONTEXT_LENGTH.
   */
  async embed(inputs: readonly (readonly number[])[], options: Partial<EmbedOptions> = {}): Promise<Float32Array[]> {
    const model = await this.embeddingModel();
    const vocab = this.engine.vocabSize;
    // Checked here, before any rank sees it: a rank refusing what its peers ran would break a TP group.
    inputs.forEach((tokens, i) => {
      if (tokens.length > model.maxInputTokens) {
        throw new LlmError('LLM_ERR_CONTEXT_LENGTH', `embedding input ${i} has ${tokens.length} tokens; the model takes at most ${model.maxInputTokens}`);
      }
      tokens.forEach((tok, j) => {
        if (!Number.isInteger(tok) || tok < 0 || tok >= vocab) {
          throw new LlmError('LLM_ERR_BAD_REQUEST', `embedding input ${i}: token ${tok} at index ${j} is outside the vocabulary (size ${vocab})`);
        }
      });
    });
    this.embedBatcher ??= new EmbedBatcher(
      { maxSeqs: this.graph.scheduler.options.maxSeqsPerStep, maxTokens: this.graph.scheduler.options.maxBatchTokens },
      async (seqs, o) => {
        await this.ready;
        return this.scheduler.embed(seqs, o);
      },
    );
    return this.embedBatcher.embed(inputs, { pooling: options.pooling ?? model.pooling, normalize: options.normalize ?? model.normalize });
  }

  /** How this model embeds (its pooling files, read once) and the longest input it takes. */
  async embeddingModel(): Promise<EmbeddingModel> {
    await this.ready;
    const engine = this.engine;
    this.embedding ??= loadModelSpec(this.config.modelPath).then((spec) => {
      const longest = Math.min(this.config.contextLength ?? engine.maxPositionEmbeddings, engine.maxPositionEmbeddings, this.graph.scheduler.options.maxBatchTokens);
      return { ...readEmbeddingConfig(this.config.modelPath, spec.architecture), hiddenSize: spec.hiddenSize, maxInputTokens: longest };
    });
    return this.embedding;
  }

  /** The model's tokenizer (its tokenizer.json, or the vocabulary in its GGUF file), loaded on first use. */
  get tokenizer(): Tokenizer {
    this.loadedTokenizer ??= loadTokenizer(this.config.modelPath);
    return this.loadedTokenizer;
  }

  /** Streams a text request's chunks (see TextRequest): each chunk of generate() with the text its tokens completed;
   * the last chunk also carries any bytes of an unfinished character. */
  async *generateText(request: TextRequest, options: GenerateOptions = {}): AsyncGenerator<TextChunk> {
    const tok = this.tokenizer;
    if ((request.prompt === undefined) === (request.messages === undefined)) {
      throw new LlmError('LLM_ERR_BAD_REQUEST', 'a text request takes exactly one of prompt and messages');
    }
    const tokenIds = request.messages !== undefined
      ? chatPromptIds(tok, request.messages, { extraContext: request.chat_template_kwargs })
      : tok.encode(request.prompt!, { addSpecialTokens: true, parseSpecialTokens: false });
    await this.ready;
    const eos = this.running?.scheduler.engine.eosTokenIds ?? tok.eosTokenIds;
    const wire: PreprocessedRequest = {
      token_ids: tokenIds,
      stop_conditions: definedOnly({ max_tokens: request.max_tokens, min_tokens: request.min_tokens, ignore_eos: request.ignore_eos }),
      sampling_options: definedOnly({ temperature: request.temperature, top_p: request.top_p, top_k: request.top_k, seed: request.seed }),
      eos_token_ids: [...eos],
    };
    const text = new IncrementalDetokenizer(tok);
    for await (const chunk of this.generate(wire, options)) {
      let piece = '';
      for (const id of chunk.token_ids) piece += text.push(id);
      if (chunk.finish_reason) piece += text.flush();
      yield { ...chunk, text: piece };
    }
  }

  /** Disaggregated prefill: copies the KV a request generated with `parkKvAs: key` left parked (its prompt
   * tokenIds' pages) to the host, ordered after every step already submitted, and releases it (src/scheduler/kv-transfer.ts,
   * run in the scheduler's thread). */
  exportParked(key: string, tokenIds: number[]): Promise<PrefixPages> {
    if (!this.running) return Promise.reject(this.failure ?? new LlmError('LLM_ERR_SHUTDOWN', 'the supervisor is not running'));
    return this.running.kv.exportParked(key, tokenIds);
  }

  /** Disaggregated decode: imports transferred KV, ordered before every step submitted later: as a cached prefix,
   * or (parkAs) parked for the request then generated with `handOver.kvKey` = parkAs. Returns the pages written. */
  async importPrefix(prefix: PrefixPages, parkAs: string | null): Promise<number> {
    if (!this.running) throw this.failure ?? new LlmError('LLM_ERR_SHUTDOWN', 'the supervisor is not running');
    return this.running.kv.importPrefix(prefix, parkAs);
  }

  /** Disaggregated GPU-path KV ops (holds, pulls, pool export/open/close), in the scheduler's thread. */
  async disaggKv(op: DisaggKvOp): Promise<DisaggKvReply> {
    if (!this.running) throw this.failure ?? new LlmError('LLM_ERR_SHUTDOWN', 'the supervisor is not running');
    return this.running.kv.disaggKv(op);
  }

  /** Fails in-flight requests with LLM_ERR_SHUTDOWN, stops the scheduler and closes the ranks. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    await this.ready.catch(() => undefined);
    const core = this.running;
    this.running = null;
    await core?.stop();
  }

  private async startGroup(): Promise<RunningCore> {
    const core = await startCore(this.graph, {
      metrics: this.metrics,
      onFailure: (err, failed) => this.onCoreFailure(failed, err),
    });
    for (const l of this.kvListeners) core.scheduler.onKvEvent(l);
    return core;
  }

  /** The group failed: every request it had already got the error; abort it, then restart it or give up. */
  private onCoreFailure(core: RunningCore, error: LlmError): void {
    if (this.stopped || this.running !== core) return;
    this.running = null;
    for (const l of this.servingListeners) l(false);
    this.ready = (async () => {
      await core.abort(error.message);
      if (this.restarts >= (this.config.maxRestarts) || this.stopped) {
        if (!this.stopped) this.log.error('group failed; no restarts left', { code: error.code, error: error.message, restarts: this.restarts });
        this.failure = error;
        return;
      }
      this.restarts++;
      this.log.warn('group failed; restarting it', { code: error.code, error: error.message, restart: this.restarts, maxRestarts: this.config.maxRestarts });
      try {
        this.running = await this.startGroup();
        if (this.stopped) return;
        this.log.info('group restarted', { restart: this.restarts });
        for (const l of this.servingListeners) l(true);
      } catch (err) {
        this.failure = err instanceof LlmError ? err : new LlmError('LLM_ERR_ACTOR_CRASHED', String(err));
        this.log.error('group restart failed', { code: this.failure.code, error: this.failure.message });
      }
    })();
  }

  private toSchedulerRequest(id: string, req: PreprocessedRequest): SchedulerRequest {
    const engine = this.running!.scheduler.engine;
    const bad = (m: string) => new LlmError('LLM_ERR_BAD_REQUEST', `request ${id}: ${m}`);
    const so = req.sampling_options;
    if ((so.n ?? 1) > 1 || so.use_beam_search) throw bad('sampling_options.n > 1 and beam search are not supported');
    if (req.multi_modal_data && Object.values(req.multi_modal_data).some((v) => v.length)) {
      throw bad('multi_modal_data needs a multimodal worker');
    }
    if (req.prompt_embeds) throw bad('prompt_embeds is not supported');
    req.token_ids.forEach((t, i) => {
      if (t >= engine.vocabSize) throw bad(`token_ids[${i}] = ${t} is outside the vocabulary (size ${engine.vocabSize})`);
    });
    const contextLength = this.config.contextLength ?? engine.maxPositionEmbeddings;
    const promptLength = req.token_ids.length;
    if (promptLength >= contextLength) {
      throw new LlmError('LLM_ERR_CONTEXT_LENGTH', `request ${id}: ${promptLength} prompt tokens leave no room in the context length ${contextLength}`);
    }
    const sc = req.stop_conditions;
    const logprobs = req.output_options?.logprobs ?? -1;
    if (logprobs > MAX_TOP_LOGPROBS) throw bad(`output_options.logprobs ${logprobs} is above the maximum ${MAX_TOP_LOGPROBS}`);
    return {
      id,
      tokenIds: req.token_ids,
      maxTokens: Math.min(sc.max_tokens ?? Number.MAX_SAFE_INTEGER, contextLength - promptLength),
      minTokens: sc.min_tokens ?? 0,
      ignoreEos: sc.ignore_eos ?? false,
      eosTokenIds: req.eos_token_ids,
      stopTokenIds: [...(sc.stop_token_ids_hidden ?? []), ...(sc.stop_token_ids ?? [])],
      sampling: {
        temperature: so.temperature ?? 1,
        topP: so.top_p ?? 1,
        topK: so.top_k ?? -1,
        minP: so.min_p ?? 0,
        seed: so.seed ?? this.config.seed ?? null,
        logprobs: logprobs < 0 ? -1 : logprobs, // negative: ignored, as the reference does
      },
      ...guidedOf(id, so.guided_decoding),
    };
  }
}

/** The request's grammar (sampling_options.guided_decoding), checked for shape here; the scheduler's thread compiles
 * it. A malformed one is LLM_ERR_BAD_REQUEST naming the field. */
function guidedOf(id: string, g: GuidedDecoding | null | undefined): Pick<SchedulerRequest, 'guided'> {
  try {
    const guided = grammarSpecOf(g);
    return guided ? { guided } : {};
  } catch (err) {
    throw err instanceof LlmError ? new LlmError(err.code, `request ${id}: ${err.message}`) : err;
  }
}

function toChunk(o: RequestOutput): LlmResponseChunk {
  const chunk: LlmResponseChunk = { token_ids: o.tokenIds };
  if (o.logprobs) chunk.log_probs = o.logprobs;
  if (o.topLogprobs) {
    chunk.top_logprobs = o.topLogprobs.map((tops) =>
      tops.map((t, j) => ({ rank: j + 1, token_id: t.tokenId, token: null, logprob: t.logprob })),
    );
  }
  if (o.finishReason) chunk.finish_reason = o.finishReason;
  if (o.usage) {
    const u = o.usage;
    chunk.completion_usage = {
      prompt_tokens: u.promptTokens,
      completion_tokens: u.completionTokens,
      total_tokens: u.promptTokens + u.completionTokens,
      prompt_tokens_details: u.cachedTokens > 0 ? { cached_tokens: u.cachedTokens } : null,
    };
  }
  return chunk;
}

/** Outputs of one request, pushed by the scheduler, pulled by the stream. */
class OutputQueue {
  private readonly items: RequestOutput[] = [];
  private waiter: ((o: RequestOutput) => void) | null = null;

  push(o: RequestOutput): void {
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = null;
      w(o);
    } else this.items.push(o);
  }

  next(): Promise<RequestOutput> {
    const o = this.items.shift();
    if (o) return Promise.resolve(o);
    return new Promise((resolve) => (this.waiter = resolve));
  }
}

/** The fields of `o` that are set (wire objects leave unset optional fields out). */
function definedOnly<T extends object>(o: T): T {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as T;
}
